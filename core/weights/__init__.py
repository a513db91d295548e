"""Published weights in one command: ``python -m core.weights list | fetch NAME... | path NAME``.

``resolve(names)`` turns model names (``--models archonview-d16,triposr``, or ``$VANTAGE_MODELS``)
into converted folders by role (``nvs``, ``recon``, ``tokenizer``, ``clip``) for the app and the
command lines, or raises ``NotConverted`` saying which fetch command makes them.
"""
from __future__ import annotations

import os
from pathlib import Path

from core.weights.registry import REGISTRY, ROLES, Entry, entry, models_dir

__all__ = ["REGISTRY", "ROLES", "Entry", "NotConverted", "entry", "models_dir", "model_path", "resolve", "parse_names"]


class NotConverted(ValueError):
    """A named model that is unknown or has no converted folder yet; the message says what to run."""


def model_path(name: str, root: str | Path | None = None) -> Path:
    """Converted folder of ``name`` (NotConverted when it is not there)."""
    from core.weights.fetch import is_converted
    try:
        entry(name)
    except KeyError as e:
        raise NotConverted(str(e.args[0])) from None
    folder = (Path(root) if root else models_dir()) / name
    if not is_converted(folder):
        to = f" --to {root}" if root else ""
        raise NotConverted(f"{name} is not converted in {folder.parent}: run `python -m core.weights fetch {name}{to}` "
                           "(downloads it from the Hugging Face Hub once; offline, see its --from)")
    return folder


def parse_names(text: str | None) -> list[str]:
    """'archonview-d16, triposr' -> ['archonview-d16', 'triposr']; None/'' -> $VANTAGE_MODELS or []."""
    text = os.environ.get("VANTAGE_MODELS", "") if text is None else text
    return [n.strip() for n in text.split(",") if n.strip()]


def resolve(names: list[str] | str | None, root: str | Path | None = None) -> dict[str, Path]:
    """Role -> converted folder for each name; two names with one role are refused."""
    names = parse_names(names) if names is None or isinstance(names, str) else list(names)
    out: dict[str, Path] = {}
    for n in names:
        folder = model_path(n, root)
        role = REGISTRY[n].role
        if role in out:
            raise NotConverted(f"--models: {n} and {out[role].name} are both {role} models; name one")
        out[role] = folder
    return out
