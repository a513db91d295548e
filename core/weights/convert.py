"""Published files -> Vantage checkpoint folders (config.json + model.safetensors).

``load_published`` is the one place in Vantage that reads a pickle-based ``.pth``/``.ckpt``/``.bin``:
``torch.load(..., weights_only=True)``, which rebuilds only tensors, dicts, lists and numbers and
runs no code; a file that needs any other Python object is refused, naming the objects it asks
for. Each converter takes the loaded object, finds the model's tensors in the training-checkpoint
layout its project saves, checks every name and shape, and writes the folder it is given.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Callable

import torch

from core.checkpoint import CheckpointError, read_third_party, save_checkpoint
from core.weights.registry import Entry

PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")


def load_published(path: str | Path):
    """A published weights file, read without running code (see module doc)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    if path.suffix == ".safetensors":
        return read_third_party(path)
    if path.suffix not in PICKLE_SUFFIXES:
        raise CheckpointError(f"{path}: expected a .safetensors, .pth, .pt, .ckpt or .bin weights file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        needs = _unsafe_globals(path)
        raise CheckpointError(f"{path}: refused: it needs Python objects beyond tensors and plain containers "
                              f"({', '.join(needs) if needs else str(e).splitlines()[0]}); loading those could run "
                              "code, so it is never unpickled") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable or truncated torch file ({str(e).splitlines()[0]})") from None


def _unsafe_globals(path: Path) -> list[str]:
    try:  # lists the classes the pickle names, without unpickling it
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))[:6]
    except Exception:
        return []


def link_or_copy_tree(src: Path, dst: Path) -> None:
    """A converted dependency bundled into another folder: hard links where possible (no extra disk)."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file():
            try:
                os.link(f, dst / f.name)
            except OSError:
                shutil.copy2(f, dst / f.name)


# ----------------------------------------------------------------------------- converters
# each: (source file, extra files by name, output folder, entry, converted dependencies) -> facts for the card

def convert_var_tokenizer(src: Path, extras: dict, out: Path, e: Entry, deps: dict) -> dict:
    from core.tokenizer.config import TokenizerConfig
    from core.tokenizer.importer import convert_var_state_dict
    cfg = e.options.get("config") or TokenizerConfig.var_published()
    state = convert_var_state_dict(load_published(src), cfg, source=str(src))
    save_checkpoint(out, state, cfg.to_dict(), metadata={"source": f"{e.repo}/{src.name}"})
    return {"parameters": sum(v.numel() for v in state.values())}


def convert_open_clip(src: Path, extras: dict, out: Path, e: Entry, deps: dict) -> dict:
    from core.checkpoint import validate_state_dict
    from core.compat import ensure_torchvision
    ensure_torchvision()
    import open_clip
    name = e.options["model_name"]
    sd = load_published(src)
    sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        raise CheckpointError(f"{src}: expected a dict of tensors (open_clip {name} weights)")
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    with torch.device("meta"):  # names and shapes only: no memory, no init
        model = open_clip.create_model(name, pretrained=None, device="meta")
    validate_state_dict(model, sd, source=f"{src} (open_clip {name})")
    save_checkpoint(out, sd, {"model_type": "open_clip", "model_name": name}, metadata={"source": f"{e.repo}/{src.name}"})
    return {"parameters": sum(v.numel() for v in sd.values())}


def convert_archonview(src: Path, extras: dict, out: Path, e: Entry, deps: dict) -> dict:
    """ArchonView's transformer + VAR's tokenizer bundled at ``out/tokenizer`` + the CLIP text
    embedding of '' (its unconditional image embedding), with CLIP referenced by relative path."""
    from core.nvs.embedders import OpenCLIPEmbedder
    from core.nvs.importer import archonview_state_dict, convert, infer_config
    from core.nvs.pipeline import tokenizer_fingerprint
    from core.tokenizer import MultiScaleVQVAE
    sd = archonview_state_dict(load_published(src), source=str(src))
    depth = 1 + max((int(k.split(".")[1]) for k in sd if k.startswith("blocks.")), default=-1)
    if e.options.get("depth", depth) != depth:
        raise CheckpointError(f"{src}: holds a depth-{depth} model, not the depth {e.options['depth']} of {e.name}")
    link_or_copy_tree(deps["var-tokenizer-256"], out / "tokenizer")
    tok = MultiScaleVQVAE.from_pretrained(out / "tokenizer")
    cfg = infer_config(sd, tok.config.resolution, tok.config.patch_nums, source=str(src))
    cfg.tokenizer_hash = tokenizer_fingerprint(tok)
    clip_dir = deps["clip-vit-l-14"]
    cfg.clip_model = json.loads((clip_dir / "config.json").read_text())["model_name"]
    cfg.clip_weights = os.path.relpath(clip_dir / "model.safetensors", out)  # out and its final name are siblings
    null = OpenCLIPEmbedder(cfg.clip_model, clip_dir / "model.safetensors").null_text_embedding()
    model = convert(sd, cfg, null, source=str(src))
    model.save_pretrained(out)
    return {"parameters": sum(p.numel() for p in model.parameters()), "depth": cfg.depth}


def convert_triposr(src: Path, extras: dict, out: Path, e: Entry, deps: dict) -> dict:
    from core.recon.triposr import TripoSRModel
    from core.recon.triposr_importer import convert_state_dict
    yaml_cfg = read_yaml(extras["config.yaml"]) if extras.get("config.yaml") else None
    cfg, state = convert_state_dict(load_published(src), yaml_cfg, source=str(src))
    model = TripoSRModel(cfg)
    model.load_state_dict(state, strict=True)
    model.save_pretrained(out)
    return {"parameters": model.num_parameters(), "config.yaml": "read" if yaml_cfg else "absent: published defaults"}


def read_yaml(path: Path) -> dict:
    """TripoSR's config.yaml (OmegaConf syntax; only ``${a.b}`` references need resolving)."""
    import re
    import yaml
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a YAML mapping")

    def lookup(ref: str):
        v = data
        for part in ref.split("."):
            v = v[part]
        return v

    def resolve(v):
        if isinstance(v, dict):
            return {k: resolve(x) for k, x in v.items()}
        if isinstance(v, str) and (m := re.fullmatch(r"\$\{([\w.]+)\}", v.strip())):
            return lookup(m.group(1))
        return v
    return resolve(data)


CONVERTERS: dict[str, Callable] = {"var_tokenizer": convert_var_tokenizer, "open_clip": convert_open_clip,
                                   "archonview": convert_archonview, "triposr": convert_triposr}
