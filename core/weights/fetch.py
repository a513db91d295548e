"""Fetch one published model: its dependencies first, the file from the Hub (or ``--from``), the
conversion into a temporary sibling folder, the model card, then one rename. A failure at any
step leaves no folder behind (the temporary one is removed); an existing conversion is replaced
only after the new one is complete."""
from __future__ import annotations

import datetime
import hashlib
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from core.checkpoint import CONFIG_NAME, WEIGHTS_NAME, CheckpointError
from core.weights import hub
from core.weights.convert import CONVERTERS
from core.weights.registry import Entry, entry, models_dir

# Reference equivalence, measured once: the same seeded random weights, in the published file layouts
# at the published sizes, loaded into the reference code (VAR/ArchonView, TripoSR with transformers
# 4.35) and, through these converters, into Vantage; same inputs, fp32 on CPU (torch 2.13), 2026-12-06,
# 2-core Intel Xeon (AMX). Reproduce with scripts/verify_weights.py. Written into each converted model's card.
_ARCHONVIEW = ("Verified on depth 16 (the converter is the same for every depth): teacher-forced logits "
               "(680 x 4096) max abs diff 1.3e-06, argmax identical; its VAR tokenizer as below.")
VERIFIED: dict[str, str] = {
    "var-tokenizer-256": "Token indices of two 256 px images identical (1,360 of 1,360); decoded image max abs diff "
                         "4.3e-06; teacher-forcing input identical.",
    **{f"archonview-d{d}": _ARCHONVIEW for d in (12, 16, 20, 24, 30)},
    "triposr": "Triplanes (3 x 40 x 64 x 64, values up to 85) max abs diff 1.5e-04; density at 4,096 points max abs "
               "diff 1.5e-05 (relative 1.7e-05); colour 3.3e-06. The ViT position embedding is resampled as "
               "transformers 4.35 (TripoSR's pin) does it.",
}


def is_converted(folder: Path) -> bool:
    return (folder / CONFIG_NAME).is_file() and (folder / WEIGHTS_NAME).is_file()


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def locate_source(e: Entry, source: str | Path | None, repo_file: str | None) -> tuple[Path, dict, str]:
    """(weights file, companion files by name, where it came from)."""
    if source is not None:
        src = Path(source)
        if not src.is_file():
            raise CheckpointError(f"{src}: missing (--from must name the downloaded {e.filename or 'weights file'})")
        extras = {n: src.parent / n for n in e.extra_files if (src.parent / n).is_file()}
        return src, extras, f"local file {src.name} (placed by hand; published as {hub.file_url(e, e.filename or src.name)})"
    name = repo_file or e.filename or e.pick(hub.list_files(e))
    src = hub.download(e, name)
    extras = {n: p for n in e.extra_files if (p := hub.download(e, n, optional=True)) is not None}
    return src, extras, hub.file_url(e, name)


def write_card(folder: Path, e: Entry, src: Path, origin: str, facts: dict) -> None:
    lines = [f"# {e.name}", "", e.note, "",
             "Converted by `python -m core.weights fetch` into Vantage's checkpoint format (config.json + "
             "model.safetensors); the published file was read with `torch.load(weights_only=True)` (no code runs) "
             "and every tensor checked by name and shape.", "",
             "## Provenance", "",
             f"- repository: https://huggingface.co/{'datasets/' if e.repo_type == 'dataset' else ''}{e.repo} ({e.repo_type})",
             f"- file: {origin}",
             f"- size: {src.stat().st_size:,} bytes, sha256 `{sha256(src)}`",
             f"- converted: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
             f"- licence: {e.licence}",
             *(f"- {k}: {v}" for k, v in facts.items()),
             *([f"- uses: {', '.join(e.requires)} (fetched and converted first, by the same command)"] if e.requires else []),
             "", "## Use", "", f"    python app.py --models {e.name}",
             f"    python -m core.weights path {e.name}", ""]
    if e.name in VERIFIED:
        lines += ["## Equivalence with the reference code", "", VERIFIED[e.name], ""]
    (folder / "README.md").write_text("\n".join(lines))


def fetch(name: str, root: str | Path | None = None, source: str | Path | None = None, repo_file: str | None = None,
          force: bool = False, log: Callable[[str], None] = print) -> Path:
    """Converted folder of ``name`` under ``root`` (default ``models_dir()``), fetching it if needed."""
    e = entry(name)
    root = Path(root) if root else models_dir()
    final = root / name
    if is_converted(final) and not force:
        log(f"{name}: already converted at {final}")
        return final
    deps = {d: fetch(d, root, log=log) for d in e.requires}
    src, extras, origin = locate_source(e, source, repo_file)
    log(f"{name}: converting {src.name} ...")
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=root))
    try:
        facts = CONVERTERS[e.kind](src, extras, tmp, e, deps)
        write_card(tmp, e, src, origin, facts)
        for f in [tmp, *tmp.rglob("*")]:   # mkdtemp/mkstemp make private files; models are for every user
            f.chmod(0o755 if f.is_dir() else 0o644)
        old = None
        if final.exists():
            old = final.with_name(f".{name}.old")
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
        tmp.rename(final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"{name}: wrote {final}")
    return final
