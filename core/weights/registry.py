"""The published models Vantage knows how to fetch and convert, and where their converted copies live.

Each ``Entry`` names its source repository on the Hugging Face Hub, its licence, the file to take
from it (fixed, or picked at run time from the repository's listing by ``pick``, a documented
rule), the models it needs converted first, and the role it plays in the app (``nvs``, ``recon``,
``tokenizer``, ``clip``). Sizes are the download sizes (``size_exact`` false: estimated from the
parameter count in fp32, the published file may hold more, e.g. optimizer state).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

ROLES = ("nvs", "recon", "tokenizer", "clip")
# ArchonView's parameter counts by depth (width 64 x depth; REFERENCE.md)
ARCHONVIEW_PARAMS = {12: 133_000_000, 16: 309_000_000, 20: 599_000_000, 24: 1_030_000_000, 30: 2_000_000_000}
WEIGHT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".safetensors")


@dataclass(frozen=True)
class Entry:
    name: str
    role: str                      # what the app uses it as (ROLES)
    kind: str                      # which converter (core.weights.convert.CONVERTERS)
    repo: str
    licence: str
    size_bytes: int
    size_exact: bool
    repo_type: str = "model"       # "dataset" for ArchonView: its checkpoints live in a dataset repo
    filename: str | None = None    # fixed file in the repo; None: ``pick`` chooses from the listing
    extra_files: tuple[str, ...] = ()   # small companions (TripoSR's config.yaml), optional
    requires: tuple[str, ...] = ()      # converted first; this model's folder refers to them
    options: dict = field(default_factory=dict)   # converter options (depth, model name, ...)
    note: str = ""

    def pick(self, files: list[str]) -> str:
        """The repository file holding this model's weights; ValueError naming the candidates otherwise."""
        if self.filename:
            return self.filename
        return pick_depth_file(files, self.options["depth"], self.repo)


def pick_depth_file(files: list[str], depth: int, repo: str) -> str:
    """ArchonView's rule: among weight files (``WEIGHT_SUFFIXES``) whose path names the depth as a
    token ``d16`` / ``depth16`` / ``depth_16`` (not followed by another digit) and not the tokenizer
    (``vae``), take the only one; if several, the ones named ``best``; if still several, refuse and
    list them (``fetch --file`` chooses)."""
    pat = re.compile(rf"(?i)(?<![a-z0-9])d(?:epth)?[-_]?{depth}(?![0-9])")
    cands = sorted(f for f in files if f.lower().endswith(WEIGHT_SUFFIXES) and "vae" not in f.lower()
                   and pat.search(f))
    if len(cands) > 1:
        cands = [f for f in cands if "best" in Path(f).name.lower()] or cands
    if len(cands) == 1:
        return cands[0]
    weights = [f for f in files if f.lower().endswith(WEIGHT_SUFFIXES)]
    if not cands:
        raise ValueError(f"{repo} has no weights file for depth {depth} (weight files there: "
                         f"{weights[:12] or 'none'}): this depth is not published")
    raise ValueError(f"{repo}: several files could be depth {depth}: {cands}; choose one with --file PATH")


def _archonview(depth: int) -> Entry:
    return Entry(
        name=f"archonview-d{depth}", role="nvs", kind="archonview", repo="anon8567671/ArchonView", repo_type="dataset",
        licence="see the repository (code: github.com/Shiran-Yuan/ArchonView, built on VAR, MIT)",
        size_bytes=4 * ARCHONVIEW_PARAMS[depth], size_exact=False,
        requires=("var-tokenizer-256", "clip-vit-l-14"), options={"depth": depth},
        note=f"ArchonView next-scale NVS, depth {depth} (~{ARCHONVIEW_PARAMS[depth] / 1e6:.0f}M parameters); "
             "file picked from the repository listing by depth (core.weights.registry.pick_depth_file)")


REGISTRY: dict[str, Entry] = {e.name: e for e in [
    *(_archonview(d) for d in ARCHONVIEW_PARAMS),
    Entry(name="var-tokenizer-256", role="tokenizer", kind="var_tokenizer", repo="FoundationVision/var",
          filename="vae_ch160v4096z32.pth", licence="MIT", size_bytes=436_000_000, size_exact=False,
          note="VAR's multi-scale residual VQ-VAE (vocab 4096, z 32, 16x downsampling, 256 px), ~109M parameters"),
    Entry(name="clip-vit-l-14", role="clip", kind="open_clip", repo="timm/vit_large_patch14_clip_224.openai",
          filename="open_clip_model.safetensors", licence="MIT (OpenAI CLIP)", size_bytes=1_710_000_000,
          size_exact=False, options={"model_name": "ViT-L-14-quickgelu"},
          note="OpenAI CLIP ViT-L/14 in open_clip's layout (QuickGELU), the image embedder ArchonView conditions on"),
    Entry(name="triposr", role="recon", kind="triposr", repo="stabilityai/TripoSR", filename="model.ckpt",
          extra_files=("config.yaml",), licence="MIT", size_bytes=1_680_000_000, size_exact=False,
          note="TripoSR single-image triplane reconstruction (DINO ViT-B/16 + 16-layer triplane transformer), "
               "~419M parameters"),
]}


def models_dir() -> Path:
    """Where converted models live: ``$VANTAGE_MODELS_DIR``, else ``~/.cache/vantage/models``."""
    env = os.environ.get("VANTAGE_MODELS_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "vantage" / "models"


def entry(name: str) -> Entry:
    if name not in REGISTRY:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(REGISTRY)}")
    return REGISTRY[name]
