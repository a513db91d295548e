"""`python -m core.data check DIR`: validate a dataset and report every problem by file.

DIR may be a dataset root (``train/``, ``val/``), a folder of object folders or one object
folder. Checked: every view has a readable square image and a (3, 4) finite pose that is a
rotation and looks at the origin (``cameras.validate_w2c``); image sizes agree within an
object; a view with a mask shows the object; optional alpha/depth/embedding files are readable
and the right size; ``meta.json`` is valid; stray poses have images. Nothing raises on bad data: problems are collected and
the exit code is 1 when there are any.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from core import cameras
from core.data import io
from core.data.render import MIN_OBJECT_FRACTION

_POSE = re.compile(r"^(\d+)\.npy$")


def _image(path: Path, problems: list) -> tuple[int, int] | None:
    """Size of a fully decodable image, else record the problem and return None."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.size
    except FileNotFoundError:
        problems.append((path, "missing"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        problems.append((path, f"unreadable image ({e})"))
    return None


def _array(path: Path, problems: list) -> np.ndarray | None:
    try:
        a = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        problems.append((path, "missing"))
        return None
    except (ValueError, OSError, EOFError) as e:
        problems.append((path, f"unreadable .npy ({e})"))
        return None
    if not isinstance(a, np.ndarray) or not np.issubdtype(a.dtype, np.number):
        problems.append((path, f"not a numeric array (dtype {getattr(a, 'dtype', type(a))})"))
        return None
    return a


def _check_not_empty(path: Path, problems: list) -> None:
    """A view whose mask (``_alpha.png`` or the image's own alpha) shows no object cannot be lifted
    or paired: flag it. Views without a mask are not judged."""
    try:
        with Image.open(path) as im:
            if path.name.endswith("_alpha.png"):
                a = np.asarray(im.convert("L"))
            elif im.mode in ("LA", "RGBA"):
                a = np.asarray(im.getchannel("A"))
            else:
                return
    except (UnidentifiedImageError, OSError, ValueError):
        return  # reported by _image
    if (a > 127).mean() < MIN_OBJECT_FRACTION:
        problems.append((path, f"empty view: under {MIN_OBJECT_FRACTION:.1%} of its pixels show the object"))


def check_view(obj: Path, vid: str, problems: list) -> tuple[int, int] | None:
    """Check one view's files; returns the image size (or None if unreadable)."""
    size = _image(obj / f"{vid}.png", problems)
    if size is not None and size[0] != size[1]:
        problems.append((obj / f"{vid}.png", f"not square ({size[0]}x{size[1]})"))
    pose_path = obj / f"{vid}.npy"
    a = _array(pose_path, problems)
    if a is not None:
        if a.shape not in ((3, 4), (4, 4)):
            problems.append((pose_path, f"shape {a.shape}, expected (3, 4) world-to-camera"))
        else:
            for msg in cameras.validate_w2c(a):
                problems.append((pose_path, msg))
    a_path = obj / f"{vid}_alpha.png"
    if a_path.exists():
        a_size = _image(a_path, problems)
        if a_size is not None and size is not None and a_size != size:
            problems.append((a_path, f"size {a_size[0]}x{a_size[1]} differs from the image's {size[0]}x{size[1]}"))
    if size is not None:
        _check_not_empty(a_path if a_path.exists() else obj / f"{vid}.png", problems)
    d_path = io.depth_path(obj, vid)
    if d_path is not None:
        try:
            d = io.load_depth(d_path)
        except io.DataError as e:
            problems.append((d_path, str(e)))
            d = None
        if d is not None:
            if d.ndim != 2 or (size is not None and d.shape != (size[1], size[0])):
                problems.append((d_path, f"shape {d.shape}, expected {(size[1], size[0]) if size else '(H, W)'}"))
            elif not np.all(np.isfinite(d)) or float(d.min()) < 0:
                problems.append((d_path, "depth must be finite and non-negative"))
    e_path = obj / f"{vid}e.npy"
    if e_path.exists():
        e = _array(e_path, problems)
        if e is not None and (e.size == 0 or not np.all(np.isfinite(e))):
            problems.append((e_path, "embedding is empty or not finite"))
    return size


def check_object(obj: str | Path) -> tuple[list[tuple[Path, str]], int, Counter]:
    """(problems, number of views, image sizes) of one object folder."""
    obj = Path(obj)
    problems: list[tuple[Path, str]] = []
    ids = io.view_ids(obj)
    sizes = Counter()
    for vid in ids:
        s = check_view(obj, vid, problems)
        if s is not None:
            sizes[s] += 1
    if len(sizes) > 1:
        common = sizes.most_common(1)[0][0]
        for vid in ids:
            try:
                with Image.open(obj / f"{vid}.png") as im:
                    if im.size != common:
                        problems.append((obj / f"{vid}.png", f"size {im.size[0]}x{im.size[1]}, other views are "
                                                             f"{common[0]}x{common[1]}"))
            except (UnidentifiedImageError, OSError):
                pass  # already reported
    for p in obj.iterdir():
        m = _POSE.match(p.name)
        if m and m.group(1) not in ids:
            problems.append((p, f"pose without an image ({m.group(1)}.png missing)"))
    if len(ids) < 2:
        problems.append((obj, f"{len(ids)} view(s); pairs need at least 2"))
    try:
        meta = io.read_meta(obj)
        if "fov_deg" in meta:
            io.object_fov(obj)
        if "image_size" in meta and sizes:
            s = sizes.most_common(1)[0][0]
            if meta["image_size"] != s[0]:
                problems.append((obj / "meta.json", f"image_size {meta['image_size']} but images are {s[0]}x{s[1]}"))
        if isinstance(meta.get("views"), list) and len(meta["views"]) != len(ids):
            problems.append((obj / "meta.json", f"lists {len(meta['views'])} views, folder has {len(ids)}"))
    except io.DataError as e:
        problems.append((obj / "meta.json", str(e).split(": ", 1)[-1]))
    return problems, len(ids), sizes


def check_dataset(root: str | Path) -> dict:
    """Check every object under ``root``; returns problems and counts (never raises on bad data)."""
    root = Path(root)
    try:
        objs = io.list_objects(root)
    except io.DataError as e:
        return {"objects": 0, "views": 0, "problems": [(root, str(e).split(": ", 1)[-1])], "sizes": {}}
    if not objs:
        return {"objects": 0, "views": 0, "problems": [(root, "no object folders (folders with 000.png, 000.npy, ...)")],
                "sizes": {}}
    problems, views, sizes = [], 0, Counter()
    for o in objs:
        p, n, s = check_object(o)
        problems += p
        views += n
        sizes.update(s)
    return {"objects": len(objs), "views": views, "problems": problems,
            "sizes": {f"{w}x{h}": c for (w, h), c in sizes.items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m core.data check", description=__doc__.split("\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--max-problems", type=int, default=200, help="print at most this many problems")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    a = ap.parse_args(argv)
    rep = check_dataset(a.dir)
    probs = rep["problems"]
    for path, msg in probs[: a.max_problems]:
        print(f"{path}: {msg}")
    if len(probs) > a.max_problems:
        print(f"... and {len(probs) - a.max_problems} more problems")
    bad_objects = len({Path(p).parent if Path(p).suffix else Path(p) for p, _ in probs})
    sizes = ", ".join(f"{k} ({v})" for k, v in rep["sizes"].items()) or "none"
    status = "OK" if not probs else "FAILED"
    print(f"check {status}: {rep['objects']} objects, {rep['views']} views, image sizes {sizes}; "
          f"{len(probs)} problems in {bad_objects if probs else 0} objects")
    if a.json:
        print(json.dumps({"objects": rep["objects"], "views": rep["views"], "problems": len(probs), "sizes": rep["sizes"]}))
    return 1 if probs else 0


if __name__ == "__main__":
    sys.exit(main())
