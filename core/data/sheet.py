"""`python -m core.data sheet DIR --out sheet.png [--per-source 8] [--split train]`: a contact sheet.

One row per source (from each object's ``meta.json``: ``source`` for the real collections, else
``procedural`` / ``pybullet``), a few random objects each, their first view labelled with the
object's name: what a corpus holds, at a glance.
"""
from __future__ import annotations

import argparse
import random
import sys
from collections import defaultdict
from pathlib import Path

from PIL import Image, ImageDraw

from core.data.io import DataError, index_objects, read_meta


def source_of(folder: Path) -> str:
    meta = read_meta(folder)
    if meta.get("kind") == "source" and meta.get("source"):   # a core.data.sources collection
        return str(meta["source"])
    name = folder.name
    return "procedural" if name.startswith("proc_") else "pybullet" if name.startswith("pb_") else "other"


def contact_sheet(root, out, per_source: int = 8, split: str | None = None, tile: int = 128, seed: int = 0) -> dict:
    objs = index_objects(Path(root), split)
    if not objs:
        raise DataError(f"{root}: no objects")
    groups: dict[str, list] = defaultdict(list)
    for o in objs:
        groups[source_of(o.folder)].append(o)
    rng = random.Random(seed)
    label_w, rows = 150, sorted(groups)
    sheet = Image.new("RGB", (label_w + per_source * tile, len(rows) * (tile + 14)), "white")
    d = ImageDraw.Draw(sheet)
    for r, src in enumerate(rows):
        y = r * (tile + 14)
        d.text((4, y + tile // 2), f"{src}\n({len(groups[src])})", fill=(0, 0, 0))
        for k, o in enumerate(rng.sample(groups[src], min(per_source, len(groups[src])))):
            with Image.open(o.folder / f"{o.views[0]}.png") as im:
                sheet.paste(im.convert("RGB").resize((tile, tile), Image.Resampling.BOX), (label_w + k * tile, y))
            d.text((label_w + k * tile + 2, y + tile), o.folder.name[:22], fill=(60, 60, 60))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return {"out": str(out), "sources": {s: len(g) for s, g in groups.items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m core.data sheet", description=__doc__.split("\n\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--out", required=True)
    ap.add_argument("--per-source", type=int, default=8)
    ap.add_argument("--split", default=None, help="train, val or val_unseen (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    print(contact_sheet(a.dir, a.out, a.per_source, a.split, seed=a.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
