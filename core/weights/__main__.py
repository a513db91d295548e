"""`python -m core.weights list | fetch NAME... [--to DIR] [--from FILE] [--file PATH] [--force] | path NAME`

list   JSON: every known model, its Hub repository, licence, download size, whether it is converted
fetch  download (huggingface_hub, with a progress bar), convert once, write a model card; offline or
       without network: one `error:` line naming what could not be reached and the by-hand route
       (`fetch NAME --from FILE`), exit code 2, nothing written
path   the converted folder of NAME (exit code 2 and the fetch command when it is not converted)

Converted models go to --to DIR, else $VANTAGE_MODELS_DIR, else ~/.cache/vantage/models.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from core.weights import NotConverted, model_path
from core.weights.registry import REGISTRY, models_dir


def cmd_list(a) -> int:
    from core.weights.fetch import is_converted
    root = Path(a.to) if a.to else models_dir()
    models = {e.name: {"role": e.role, "repo": e.repo, "repo_type": e.repo_type, "licence": e.licence,
                       "file": e.filename or "picked from the repository listing by depth",
                       "size_bytes": e.size_bytes, "size_exact": e.size_exact, "requires": list(e.requires),
                       "converted": is_converted(root / e.name), "path": str(root / e.name), "about": e.note}
              for e in REGISTRY.values()}
    print(json.dumps({"models_dir": str(root), "models": models}, indent=2))
    return 0


def cmd_fetch(a) -> int:
    from core.checkpoint import CheckpointError
    from core.weights.fetch import fetch
    from core.weights.hub import HubFileMissing, HubUnreachable
    unknown = [n for n in a.names if n not in REGISTRY]
    if unknown:
        raise NotConverted(f"unknown model(s) {unknown}; known: {', '.join(REGISTRY)}")
    if (a.source or a.file) and len(a.names) != 1:
        raise NotConverted("--from and --file apply to one model: name exactly one")
    try:
        done = {n: str(fetch(n, a.to, a.source, a.file, a.force, log=lambda m: print(m, file=sys.stderr)))
                for n in a.names}
    except (HubUnreachable, HubFileMissing, CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"converted": done}, indent=2))
    return 0


def cmd_path(a) -> int:
    print(model_path(a.name, a.to))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m core.weights", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="known models as JSON")
    f = sub.add_parser("fetch", help="download and convert")
    f.add_argument("names", nargs="+", metavar="NAME")
    f.add_argument("--from", dest="source", metavar="FILE", help="convert this local file instead of downloading "
                   "(the published file, placed by hand; a config.yaml next to it is read for triposr)")
    f.add_argument("--file", metavar="PATH", help="the file inside the repository (overrides the pick rule)")
    f.add_argument("--force", action="store_true", help="convert again even if converted")
    p = sub.add_parser("path", help="converted folder of a model")
    p.add_argument("name", metavar="NAME")
    for s in (ls, f, p):
        s.add_argument("--to", metavar="DIR", help="models folder (default $VANTAGE_MODELS_DIR or ~/.cache/vantage/models)")
    a = ap.parse_args(argv)
    try:
        return {"list": cmd_list, "fetch": cmd_fetch, "path": cmd_path}[a.command](a)
    except NotConverted as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
