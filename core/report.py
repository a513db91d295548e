"""The JSON that every eval/bench command prints and (with ``--out``) writes."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable


def emit_json(result: dict[str, Any], out: str | Path | None = None, hide_in_print: Iterable[str] = ()) -> None:
    """Write the whole ``result`` to ``out`` (parents created); print it without ``hide_in_print``
    keys (e.g. a long ``per_object`` table that the file keeps)."""
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
    hidden = set(hide_in_print)
    print(json.dumps({k: v for k, v in result.items() if k not in hidden}, indent=2))


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB (for benchmark JSON)."""
    import resource
    import sys
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(rss / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)   # macOS: bytes, Linux: KiB
