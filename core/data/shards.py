"""Pre-processed training shards: a corpus split decoded once into memory-mapped arrays.

    python -m core.data shards DATA --out SHARDS --size 64 [--split train] [--views 12]

Writes ``SHARDS/<split>/`` with ``rgb.npy`` uint8 [N, V, S, S, 3], ``alpha.npy`` uint8 [N, V, S, S],
``w2c.npy`` float32 [N, V, 3, 4], ``fov.npy`` float32 [N], ``depth.npy`` float16 [N, V, S, S] (when every
object has depth) and ``index.json`` (object names, size, views, the corpus it came from). Images are
composited on white and area-resized as ``core.data.io.read_view`` does, so a trainer reads exactly
what it would have decoded, without decoding: ``open_shards`` maps the arrays (``np.load(mmap_mode="r")``)
and hands out per-object views of them. A split is written into a temp folder and renamed when complete.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from core.data.io import DataError, depth_path, index_objects, read_view

ARRAYS = ("rgb", "alpha", "w2c", "fov")


def write_shards(data, out, split: str = "train", size: int = 64, views: int | None = None, log=print) -> Path:
    objs = index_objects(Path(data), split)
    if not objs:
        raise DataError(f"{data}: no objects in split {split!r}")
    V = views or min(len(o.views) for o in objs)
    objs = [o for o in objs if len(o.views) >= V]
    final = Path(out) / split
    tmp = final.with_name(f".{split}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    mm = np.lib.format.open_memmap
    N, S = len(objs), size
    rgb = mm(tmp / "rgb.npy", "w+", np.uint8, (N, V, S, S, 3))
    alpha = mm(tmp / "alpha.npy", "w+", np.uint8, (N, V, S, S))
    w2c = mm(tmp / "w2c.npy", "w+", np.float32, (N, V, 3, 4))
    fov = mm(tmp / "fov.npy", "w+", np.float32, (N,))
    has_depth = all(depth_path(o.folder, v) is not None for o in objs for v in o.views[:V])
    depth = mm(tmp / "depth.npy", "w+", np.float16, (N, V, S, S)) if has_depth else None
    t0 = time.perf_counter()
    for i, o in enumerate(objs):
        vs = [read_view(o.folder, v, S, fov_deg=o.fov_deg) for v in o.views[:V]]
        rgb[i] = np.stack([np.asarray(v.image) for v in vs])
        alpha[i] = np.stack([(v.alpha if v.alpha is not None else
                              ((255 - np.asarray(v.image, np.int16)).max(-1) > 6).astype(np.float32)) * 255
                             for v in vs]).round().astype(np.uint8)
        w2c[i] = np.stack([v.w2c for v in vs])
        fov[i] = o.fov_deg
        if depth is not None:
            depth[i] = np.stack([v.depth for v in vs]).astype(np.float16)
        if (i + 1) % 500 == 0:
            log(f"shards {split}: {i + 1}/{N} objects, {time.perf_counter() - t0:.0f} s")
    for a in (rgb, alpha, w2c, fov) + ((depth,) if depth is not None else ()):
        a.flush()
    (tmp / "index.json").write_text(json.dumps({"names": [o.folder.name for o in objs], "size": S, "views": V,
                                                "split": split, "source": str(Path(data).resolve()),
                                                "depth": depth is not None}, indent=1) + "\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def is_shards(path) -> bool:
    return (Path(path) / "index.json").is_file() or any((Path(path) / s / "index.json").is_file()
                                                        for s in ("train", "val", "val_unseen"))


def open_shards(root, split: str | None) -> tuple[dict, dict[str, np.ndarray]]:
    """(index, arrays memory-mapped read-only) of one split; a missing or damaged file is a DataError
    naming it, before any training step."""
    folder = Path(root) / split if split and (Path(root) / split).is_dir() else Path(root)
    try:
        index = json.loads((folder / "index.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{folder / 'index.json'}: unreadable shard index ({e})") from None
    arrays = {}
    for name in ARRAYS + (("depth",) if index.get("depth") else ()):
        path = folder / f"{name}.npy"
        try:
            arrays[name] = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: damaged shard ({e}); rebuild with python -m core.data shards") from None
        if len(arrays[name]) != len(index["names"]):
            raise DataError(f"{path}: {len(arrays[name])} objects, the index names {len(index['names'])}")
    return index, arrays


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m core.data shards", description=__doc__.split("\n\n")[0])
    ap.add_argument("data")
    ap.add_argument("--out", required=True)
    ap.add_argument("--size", type=int, default=64, help="image size the trainer uses (ReconConfig.image_size)")
    ap.add_argument("--split", action="append", help="split(s) to write (default train and val)")
    ap.add_argument("--views", type=int, default=None, help="views per object (default: the fewest any object has)")
    a = ap.parse_args(argv)
    for s in a.split or ["train", "val"]:
        if (Path(a.data) / s).is_dir():
            print(f"wrote {write_shards(a.data, a.out, s, a.size, a.views)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
