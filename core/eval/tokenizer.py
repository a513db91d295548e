"""Evaluate a tokenizer checkpoint on a folder in the dataset format.

    python -m core.eval tokenizer --data data/corpus --checkpoint checkpoints/tokenizer --out val.json

Prints and writes {"psnr", "ssim", "codebook_usage", "preview_psnr_per_scale", "n_images", ...}.
A dataset root is evaluated on its ``val`` split (``--split``); a folder of object folders or
one object folder is used whole. Images are area-resized to the model's resolution.
``codebook_usage`` is the fraction of codes used at least once over all scales of all
evaluated images; ``preview_psnr_per_scale[k]`` is the PSNR against the original of the
decode of the partial ``f_hat`` after scale k+1 (the coarse-to-fine previews the viewer
streams); ``preview_psnr_per_scale_fast`` the same with ``decode_preview(fast=True)``
(coarse scales decoded at a lower grid and upsampled: cheaper, blurrier).
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from core.checkpoint import CheckpointError
from core.cli import device_arg
from core.data.io import DataError, image_to_tensor, list_objects, load_image, tensor_to_image, view_ids
from core.metrics import psnr, ssim
from core.tokenizer import MultiScaleVQVAE
from core.report import emit_json


def eval_paths(data, split: str, max_images: int | None, seed: int = 0) -> list[Path]:
    root = Path(data)
    objs = list_objects(root, split if (root / split).is_dir() else None)
    paths = [o / f"{v}.png" for o in objs for v in view_ids(o)]
    if max_images and len(paths) > max_images:
        paths = sorted(random.Random(seed).sample(paths, max_images))
    return paths


@torch.no_grad()
def evaluate(model: MultiScaleVQVAE, paths: list[Path], batch_size: int = 16, preview_images: int = 64,
             progress: bool = True) -> dict:
    R, S, V = model.config.resolution, len(model.config.patch_nums), model.config.vocab_size
    hits = torch.zeros(V)
    ps, ss, prev, prev_fast = [], [], [[] for _ in range(S)], [[] for _ in range(S)]
    n_prev = 0
    t0 = time.time()
    for i in range(0, len(paths), batch_size):
        imgs = [load_image(p, R) for p in paths[i:i + batch_size]]
        x = torch.stack([image_to_tensor(im) for im in imgs]).to(model.device)
        idxs, fhats = model.encode_fhats(x)
        for t in idxs:
            hits += torch.bincount(t.flatten().cpu(), minlength=V).float()
        rec = model.decode_fhat(fhats[-1])
        for r, im in zip(rec, imgs):
            out = tensor_to_image(r)
            ps.append(psnr(out, im))
            ss.append(ssim(out, im))
        k = min(len(imgs), preview_images - n_prev)
        if k > 0:
            for si, pn in enumerate(model.config.patch_nums):
                for out, fast in ((prev, False), (prev_fast, True)):
                    dec = rec if si == S - 1 else model.decode_preview(fhats[si][:k], pn, fast=fast)
                    out[si] += [psnr(tensor_to_image(d), im) for d, im in zip(dec[:k], imgs[:k])]
            n_prev += k
        if progress:
            print(f"\r{min(i + batch_size, len(paths))}/{len(paths)} images, psnr {np.mean(ps):.2f}", end="",
                  file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    means = [float(np.mean(p)) for p in prev]
    means_fast = [float(np.mean(p)) for p in prev_fast]
    return {
        "psnr": float(np.mean(ps)), "ssim": float(np.mean(ss)),
        "codebook_usage": float((hits > 0).float().mean()),
        "preview_psnr_per_scale": means,
        "preview_monotonic": all(b >= a for a, b in zip(means, means[1:])),
        "preview_psnr_per_scale_fast": means_fast,
        "preview_fast_monotonic": all(b >= a for a, b in zip(means_fast, means_fast[1:])),
        "n_images": len(ps), "n_preview_images": n_prev,
        "patch_nums": list(model.config.patch_nums), "vocab_size": V, "resolution": R,
        "seconds": round(time.time() - t0, 1),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m core.eval tokenizer", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="dataset root (uses --split), folder of objects, or one object")
    ap.add_argument("--checkpoint", required=True, help="tokenizer checkpoint folder")
    ap.add_argument("--out", help="write the JSON here too")
    ap.add_argument("--split", default="val")
    ap.add_argument("--max-images", type=int, default=None, help="random subset (seed 0) of this many views")
    ap.add_argument("--preview-images", type=int, default=64, help="images used for the per-scale preview PSNR")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--device", type=device_arg, default="auto")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        model = MultiScaleVQVAE.from_pretrained(a.checkpoint, device=a.device)
        paths = eval_paths(a.data, a.split, a.max_images)
        if not paths:
            raise DataError(f"{a.data}: no images found (split {a.split!r})")
        res = evaluate(model, paths, a.batch_size, a.preview_images)
    except (CheckpointError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    res.update(data=str(a.data), split=a.split, checkpoint=str(a.checkpoint))
    emit_json(res, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
