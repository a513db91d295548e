"""`python -m core.data {check,render,procedural,corpus} ...`: dataset tools.

  check DIR                          validate a dataset root, folder of objects or one object
  render --meshes PATHS_OR_GLOB --out DIR [--views 12 --size 128 ...]
  procedural --out DIR --objects N   seeded procedural objects, rendered
  corpus --out DIR [--procedural 1500 --sources NAME,... --unseen-sources NAME,...]   the training-corpus recipe
  sources [--check]                  the real mesh sources (Debian packages): installed, candidates, loadable
  sheet DIR --out sheet.png          a labelled contact sheet of random objects per source
  shards DIR --out SHARDS --size 64  the corpus decoded once into memory-mapped arrays (core.train recon --data SHARDS)
"""
from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

from core import cameras


def _render_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--views", type=int, default=12, help="views per object")
    p.add_argument("--size", type=int, default=128, help="image size in pixels (square)")
    p.add_argument("--fov", type=float, default=cameras.DEFAULT_FOV_DEG, help="vertical field of view, degrees")
    p.add_argument("--elevation-range", type=float, nargs=2, default=(-10.0, 45.0), metavar=("LO", "HI"))
    p.add_argument("--radius-range", type=float, nargs=2, default=(1.5, 2.2), metavar=("LO", "HI"))
    p.add_argument("--seed", type=int, default=0, help="seed of view sampling (and of procedural objects)")
    p.add_argument("--workers", type=int, default=2, help="worker processes, one EGL context each")
    p.add_argument("--depth-dtype", choices=("float16", "float32"), default="float16")
    p.add_argument("--compress-depth", action="store_true", help="write {i}_depth.npz (compressed) instead of .npy")
    p.add_argument("--no-mesh", action="store_true", help="do not write mesh.ply")
    p.add_argument("--lighting", choices=("fixed", "random"), default="fixed",
                   help="random: a photo-like light rig per object (direction, balance, exposure, colour "
                        "temperature), the same for all its views; fixed: the v1 corpus's rig")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _settings(a):
    from core.data.corpus import RenderSettings
    for name, (lo, hi) in (("--elevation-range", a.elevation_range), ("--radius-range", a.radius_range)):
        if lo > hi:
            raise SystemExit(f"{name}: low {lo} > high {hi}")
    if a.radius_range[0] <= 0:
        raise SystemExit("--radius-range must be positive")
    if a.views < 1 or a.size < 8:
        raise SystemExit("--views must be >= 1 and --size >= 8")
    return RenderSettings(a.size, a.views, a.fov, tuple(a.elevation_range), tuple(a.radius_range), a.seed,
                          a.depth_dtype, not a.no_mesh, a.lighting, a.compress_depth)


def _summary(summary: dict, what: str) -> int:
    c = summary["counts"]
    print(f"{what}: {c['ok']} rendered, {c['existing']} already complete, {c['error']} failed "
          f"in {summary['seconds']:.1f} s")
    for e in summary["errors"]:
        print(f"  failed: {e}")
    return 1 if c["error"] else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m core.data", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("check", help="validate a dataset; exit 1 if any problem")
    p.add_argument("dir")
    p.add_argument("--max-problems", type=int, default=200, help="print at most this many problems")
    p = sub.add_parser("render", help="render mesh files (OBJ/GLB/GLTF/PLY/STL/DAE/URDF) into the dataset format")
    p.add_argument("--meshes", nargs="+", required=True, help="paths or glob patterns (quote globs)")
    p.add_argument("--up", choices=("z", "y"), default=None,
                   help="up axis of non-glTF meshes (default z; GLB/GLTF are always +Y up)")
    _render_args(p)
    p = sub.add_parser("procedural", help="render N seeded procedural objects")
    p.add_argument("--objects", type=int, required=True)
    p.add_argument("--start", type=int, default=0, help="index of the first object")
    p.add_argument("--val-fraction", type=float, default=0.0, help="> 0: write train/ and val/ subfolders")
    _render_args(p)
    p = sub.add_parser("corpus", help="the training corpus: procedural + pybullet_data (+ --sources)")
    p.add_argument("--procedural", type=int, default=1500, help="number of procedural objects")
    p.add_argument("--no-pybullet", action="store_true")
    p.add_argument("--limit-pybullet", type=int, default=None, help="use only the first N pybullet models")
    p.add_argument("--zero-ad", default=None, help=argparse.SUPPRESS)  # deprecated: --sources 0ad-data
    p.add_argument("--val-fraction", type=float, default=0.05)
    p.add_argument("--sources", default="", help="real mesh sources to add, comma-separated (python -m core.data "
                   "sources lists them)")
    p.add_argument("--unseen-sources", default="", help="sources whose every object goes to val_unseen/ (none in train)")
    p.add_argument("--max-per-source", type=int, default=None, help="at most N objects from each source (a stable sample)")
    _render_args(p)
    p = sub.add_parser("shards", help="decode a corpus once into memory-mapped training arrays")
    p.add_argument("dir")
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--split", action="append")
    p.add_argument("--views", type=int, default=None)
    p = sub.add_parser("sheet", help="a contact sheet: random objects per source, labelled (PNG)")
    p.add_argument("dir")
    p.add_argument("--out", required=True)
    p.add_argument("--per-source", type=int, default=8)
    p.add_argument("--split", default=None, help="train, val or val_unseen (default: all)")
    p = sub.add_parser("sources", help="the real mesh sources: package, installed, candidates (JSON)")
    p.add_argument("--check", action="store_true", help="also load every candidate and count what loads")
    p.add_argument("--limit", type=int, default=None, help="with --check: only the first N candidates of each source")
    a = ap.parse_args(argv)

    if a.cmd == "shards":
        from core.data.shards import main as shards_main
        return shards_main([a.dir, "--out", a.out, "--size", str(a.size)] + sum((["--split", x] for x in a.split or []), [])
                           + (["--views", str(a.views)] if a.views else []))
    if a.cmd == "sheet":
        from core.data.sheet import contact_sheet
        print(json.dumps(contact_sheet(a.dir, a.out, a.per_source, a.split)))
        return 0
    if a.cmd == "sources":
        from core.data.sources import describe
        print(json.dumps(describe(a.check, a.limit), indent=2))
        return 0

    if a.cmd == "check":
        from core.data.check import main as check_main
        return check_main([a.dir, "--max-problems", str(a.max_problems)])

    from core.data import corpus
    settings = _settings(a)
    log = print if not a.quiet else (lambda *x: None)
    if a.cmd == "render":
        paths = []
        for m in a.meshes:
            hits = sorted(glob.glob(m, recursive=True)) if any(ch in m for ch in "*?[") else [m]
            if not hits:
                print(f"no file matches {m!r}")
            paths += hits
        if not paths:
            print("render: no mesh files given")
            return 1
        jobs = corpus.mesh_jobs(paths, a.up)
        return _summary(corpus.run_jobs(jobs, a.out, settings, a.workers, not a.quiet, log), "render")
    if a.cmd == "procedural":
        if a.objects < 1:
            raise SystemExit("--objects must be >= 1")
        jobs = corpus.procedural_jobs(a.objects, a.seed, a.start)
        if a.val_fraction > 0:
            corpus.assign_splits(jobs, a.val_fraction, a.seed)
        return _summary(corpus.run_jobs(jobs, a.out, settings, a.workers, not a.quiet, log), "procedural")
    if a.cmd == "corpus":
        split = lambda v: tuple(x for x in v.split(",") if x)  # noqa: E731
        if a.zero_ad is not None:  # it searched for .dae files the package does not hold; PMD is read now
            print("warning: --zero-ad is deprecated and goes in the next release; use --sources 0ad-data",
                  file=sys.stderr)
            a.sources = ",".join(filter(None, [a.sources, "0ad-data"]))
        rep = corpus.build_corpus(a.out, a.procedural, not a.no_pybullet, a.val_fraction, a.seed,
                                  a.workers, settings, a.limit_pybullet, log=log, sources=split(a.sources),
                                  max_per_source=a.max_per_source, unseen_sources=split(a.unseen_sources))
        print(json.dumps({k: rep[k] for k in ("counts", "size_bytes", "seconds")}, indent=2))
        print(f"corpus: {rep['counts']['objects']} objects ({rep['counts']['train']} train, {rep['counts']['val']} val, "
              f"{rep['counts']['val_unseen']} val_unseen), "
              f"{rep['size_bytes'] / 2**20:.0f} MiB, {rep['seconds']:.0f} s, {rep['counts']['failed']} failed "
              f"-> {Path(a.out) / 'corpus.json'}")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
