"""`python -m core.{train,eval,bench} NAME [args]`: one dispatcher for the three command groups,
and the ``--device`` argument every command (and the app) shares.

A command's bad input (a missing folder, a wrong or broken checkpoint, a bad camera, a device this
machine lacks) is one ``error: ...`` line and exit code 2, whichever command met it; a bug keeps
its traceback.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

NAMES = ("data", "tokenizer", "nvs", "recon", "app", "train", "status")


def is_input_error(e: BaseException) -> bool:
    """The project's own input errors (CheckpointError, DataError, CameraError, ... all ValueError
    subclasses defined under core/ or viewer/) and missing files; not a ValueError from a bug."""
    if isinstance(e, FileNotFoundError):
        return True
    return isinstance(e, ValueError) and type(e).__module__.split(".")[0] in ("core", "viewer")


def device_arg(name: str) -> str:
    """argparse ``type`` for ``--device``: ``auto`` becomes ``cuda`` when there is one, else ``cpu``;
    a device this machine lacks (``cuda`` on a CPU-only torch, ``cuda:3`` with one GPU) is a usage
    error here, not an assertion deep in torch after the models load."""
    import torch
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{name!r} is not a torch device (cpu, cuda, cuda:1, auto)") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise argparse.ArgumentTypeError(f"{name}: this machine's torch ({torch.__version__}) sees no CUDA device; "
                                             "use cpu or auto")
        if dev.index is not None and dev.index >= n:
            raise argparse.ArgumentTypeError(f"{name}: there are {n} CUDA device(s) here (cuda:0..cuda:{n - 1})")
    elif dev.type != "cpu":
        raise argparse.ArgumentTypeError(f"{name}: only cpu and cuda devices are supported")
    return name


def dispatch(group: str, argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    modules = {n: f"core.{group}.{n}" for n in NAMES if importlib.util.find_spec(f"core.{group}.{n}") is not None}
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in modules:
        print(f"usage: python -m core.{group} {{{','.join(modules)}}} [options]  (each has --help)")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return report_input_errors(lambda: importlib.import_module(modules[argv[0]]).main(expand_models(argv)[1:]))


def expand_models(argv: list[str]) -> list[str]:
    """``COMMAND ... --models NAMES`` -> ``COMMAND ... --checkpoint FOLDER``: the converted published
    model (``core.weights``) that plays COMMAND's role (nvs, recon, tokenizer; an NVS import bundles
    its tokenizer). Other commands, or no ``--models``, pass through unchanged."""
    i = next((j for j, a in enumerate(argv) if a == "--models" or a.startswith("--models=")), None)
    if i is None or argv[0] not in ("nvs", "recon", "tokenizer"):
        return argv
    names = argv[i].split("=", 1)[1] if "=" in argv[i] else (argv[i + 1] if i + 1 < len(argv) else "")
    rest = argv[:i] + argv[i + (1 if "=" in argv[i] else 2):]
    from core import weights
    folders = weights.resolve(names)
    if argv[0] == "tokenizer" and "tokenizer" not in folders and "nvs" in folders:
        folders["tokenizer"] = folders["nvs"] / "tokenizer"
    if argv[0] not in folders:
        raise weights.NotConverted(f"--models {names}: none of them is a {argv[0]} model "
                                   "(python -m core.weights list shows each model's role)")
    return rest + ["--checkpoint", str(folders[argv[0]])]


def report_input_errors(command, *also: type) -> int:
    """``command()``'s exit code, or 2 after one ``error:`` line when it fails on bad input
    (``is_input_error``, or one of the exception types ``also``)."""
    try:
        return command()
    except (ValueError, FileNotFoundError) as e:
        if not (is_input_error(e) or isinstance(e, also)):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
