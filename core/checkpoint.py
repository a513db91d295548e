"""Checkpoints are a folder: ``config.json`` + ``model.safetensors`` (+ ``README.md``).

Nothing here unpickles: tensors come only through safetensors, and every load checks
the file's header, the config and each tensor's name, shape and dtype against the
model the config builds, with an error that names the mismatch.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import struct
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_PICKLE_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be loaded; the message says which file and why."""


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_checkpoint(folder: str | Path, state_dict: dict[str, torch.Tensor], config: dict[str, Any],
                    metadata: dict[str, str] | None = None) -> Path:
    """Write config.json and model.safetensors atomically (a crash never leaves half a file)."""
    folder = Path(folder)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    _atomic_write(folder / WEIGHTS_NAME, lambda p: save_file(tensors, p, metadata=metadata or {}))
    _atomic_write(folder / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n"))
    return folder


def check_safetensors_file(path: str | Path) -> None:
    """Refuse anything that is not a safetensors file *before* any library parses it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    with open(path, "rb") as f:
        head = f.read(8)
        if any(head.startswith(m) for m in _PICKLE_MAGIC):
            raise CheckpointError(f"{path}: this is a pickle/torch.save file, not safetensors; "
                                  "Vantage never unpickles checkpoints (convert it with an importer)")
        if len(head) < 8:
            raise CheckpointError(f"{path}: truncated (not a safetensors file)")
        n = struct.unpack("<Q", head)[0]
        size = path.stat().st_size
        if n == 0 or n > min(size - 8, 100_000_000):
            raise CheckpointError(f"{path}: not a safetensors file (bad header length)")
        header = f.read(min(n, 64))
        if not header.lstrip().startswith(b"{"):
            raise CheckpointError(f"{path}: not a safetensors file (header is not JSON)")


def refuse_pickle_file(path: str | Path) -> CheckpointError:
    """The error for a third-party ``.pth``/``.bin``/``.ckpt``: those are pickles, and loading a
    pickle can run code, so Vantage never opens one (not even with ``weights_only``)."""
    return CheckpointError(
        f"{path}: .pth/.bin/.ckpt files are pickles and Vantage never unpickles; convert it to safetensors "
        "first, in an environment you trust, e.g. python -c \"import torch, safetensors.torch as s; "
        "sd = torch.load('IN.pth', weights_only=True); s.save_file(sd.get('state_dict', sd), 'OUT.safetensors')\" "
        "(nested wrappers: pick the dict of tensors), then pass the .safetensors file; for the published models, "
        "python -m core.weights fetch NAME --from FILE converts the original file safely")


def read_third_party(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a third-party weights file for an importer: ``.safetensors`` only, header checked."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    if path.suffix != ".safetensors":
        raise refuse_pickle_file(path)
    check_safetensors_file(path)
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: unreadable safetensors file ({e})") from None


def unwrap_state_dict(obj, marker: str, wrappers: tuple[str, ...], source: str, what: str,
                      depth: int = 4) -> dict[str, torch.Tensor]:
    """The model's tensors out of what a project's training saved: descend through ``wrappers`` keys
    (``{'trainer': {'var_wo_ddp': ...}}``, ``{'state_dict': ...}``) until a dict holds ``marker`` (a key
    the model always has, possibly behind a ``module.`` prefix), then drop DDP / compile prefixes."""
    for _ in range(depth):
        if not isinstance(obj, dict) or marker in obj or any(k.endswith("." + marker) for k in obj):
            break
        key = next((k for k in wrappers if isinstance(obj.get(k), dict)), None)
        if key is None:
            break
        obj = obj[key]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{source}: expected {what} state dict, got {type(obj).__name__}")
    return {re.sub(r"^(module\.|_orig_mod\.)+", "", k): v for k, v in obj.items() if torch.is_tensor(v)}


def load_config(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / CONFIG_NAME
    if not Path(folder).is_dir():
        raise CheckpointError(f"{folder}: checkpoint folder not found")
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (a checkpoint is config.json + model.safetensors)")
    try:
        cfg = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return cfg


def load_state_dict(folder: str | Path) -> dict[str, torch.Tensor]:
    path = Path(folder) / WEIGHTS_NAME
    check_safetensors_file(path)
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: unreadable safetensors file ({e})") from None


def config_from_dict(cls, data: dict[str, Any], source: str = "config"):
    """Build a config dataclass, naming unknown or ill-typed fields instead of a TypeError."""
    expected, got = getattr(cls, "model_type", None), data.get("model_type")
    if expected and got and got != expected:  # e.g. the tokenizer's folder given as the NVS checkpoint
        raise CheckpointError(f"{source}: a {got!r} checkpoint, not the {expected!r} one {cls.__name__} needs "
                              "(wrong folder?)")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names - {"model_type", "format_version"})
    if unknown:
        raise CheckpointError(f"{source}: unknown field(s) {unknown} for {cls.__name__}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            v = data[f.name]
            kwargs[f.name] = tuple(v) if isinstance(v, list) else v
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: invalid {cls.__name__}: {e}") from None


def validate_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Every expected key present with the model's shape and a floating/int dtype that matches."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    bad = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
           for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    bad += [f"{k}: dtype {state[k].dtype} vs model {v.dtype}"
            for k, v in expected.items() if k in state and state[k].is_floating_point() != v.is_floating_point()]
    msgs = []
    if missing:
        msgs.append(f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''} ({len(missing)})")
    if unexpected:
        msgs.append(f"unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''} ({len(unexpected)})")
    if bad:
        msgs.append("shape/dtype mismatch: " + "; ".join(bad[:8]) + (" ..." if len(bad) > 8 else ""))
    if msgs:
        raise CheckpointError(f"{source}: config does not match tensors: " + " | ".join(msgs))


def load_into(model: torch.nn.Module, folder: str | Path) -> torch.nn.Module:
    """Validate then load ``model.safetensors`` from ``folder`` into ``model`` (strict)."""
    state = load_state_dict(folder)
    validate_state_dict(model, state, source=str(Path(folder) / WEIGHTS_NAME))
    expected = model.state_dict()
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)
    return model


class Pretrained:
    """``from_pretrained`` / ``save_pretrained`` for a module built from one config dataclass
    (``config_class``, with ``to_dict``): config.json + model.safetensors, validated on load."""
    config_class: type

    @classmethod
    def from_pretrained(cls, folder: str | Path):
        cfg = config_from_dict(cls.config_class, load_config(folder), source=str(Path(folder) / CONFIG_NAME))
        return load_into(cls(cfg), folder)

    def save_pretrained(self, folder: str | Path) -> Path:
        return save_checkpoint(folder, self.state_dict(), self.config.to_dict())
