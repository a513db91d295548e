"""`python -m core.eval recon --data DIR --checkpoint FOLDER --out FILE.json`

For each object: the input view(s) and their cameras give a triplane; every other view is
rendered at the model's resolution on white and scored with PSNR/SSIM (core.metrics).
Where the object has ``mesh.ply``, the extracted mesh is compared with it in the world
frame: Chamfer distance (mean of the two directions' mean nearest-neighbour distances
between 10,000 surface samples each) and F-score at 0.1. The "copy" baseline scores the
input image itself against every other view (what an NVS model that ignores the camera
would get).
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
import trimesh
from scipy.spatial import cKDTree

from core import metrics
from core.cli import device_arg
from core.data.io import DataError, list_objects, load_image, object_fov, read_view, view_ids
from core.mesh import MeshError
from core.report import emit_json


def mesh_metrics(pred: trimesh.Trimesh, gt: trimesh.Trimesh, n: int = 10000, threshold: float = 0.1,
                 seed: int = 0) -> dict:
    """Chamfer distance and F-score between two surfaces (uniform area samples, cKDTree)."""
    p = trimesh.sample.sample_surface(pred, n, seed=seed)[0]
    g = trimesh.sample.sample_surface(gt, n, seed=seed + 1)[0]
    d_pg = cKDTree(g).query(p)[0]
    d_gp = cKDTree(p).query(g)[0]
    precision, recall = float((d_pg < threshold).mean()), float((d_gp < threshold).mean())
    f = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return {"chamfer": float((d_pg.mean() + d_gp.mean()) / 2), "fscore": f, "precision": precision, "recall": recall}


def _load_gt_mesh(path: Path) -> trimesh.Trimesh:
    m = trimesh.load(path, force="mesh", process=False)
    if not isinstance(m, trimesh.Trimesh) or len(m.faces) == 0:
        raise DataError(f"{path}: not a triangle mesh")
    return m


def _mean(xs):
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return float(np.mean(xs)) if xs else None


def evaluate(pipe, objects: list[Path], input_views: list[str], mc_resolution: int, log=print) -> dict:
    S = pipe.config.image_size
    per, t_rec, t_mesh = {}, [], []
    for obj in objects:
        ids = view_ids(obj)
        missing = [v for v in input_views if v not in ids]
        if missing:
            log(f"{obj.name}: input view(s) {missing} missing, skipped")
            continue
        fov = object_fov(obj)
        ins = [read_view(obj, v, extras=False, fov_deg=fov) for v in input_views]
        t0 = time.perf_counter()
        scene = pipe.reconstruct([v.image for v in ins], [v.w2c for v in ins], fov_deg=[fov] * len(ins))
        t_rec.append(time.perf_counter() - t0)
        src = load_image(obj / f"{input_views[0]}.png", S)
        ps, ss, bp, bs = [], [], [], []
        for v in ids:
            if v in input_views:
                continue
            gt = load_image(obj / f"{v}.png", S)
            pred = scene.render(read_view(obj, v, extras=False, fov_deg=fov).w2c, S, fov)
            ps.append(metrics.psnr(pred, gt))
            ss.append(metrics.ssim(pred, gt))
            bp.append(metrics.psnr(src, gt))
            bs.append(metrics.ssim(src, gt))
        rec = {"psnr": _mean(ps), "ssim": _mean(ss), "copy_psnr": _mean(bp), "copy_ssim": _mean(bs),
               "n_views": len(ps), "seconds_reconstruct": t_rec[-1]}
        if (obj / "mesh.ply").is_file():
            t0 = time.perf_counter()
            try:
                mesh = scene.extract_mesh(resolution=mc_resolution)
                t_mesh.append(time.perf_counter() - t0)
                rec.update(mesh_metrics(mesh, _load_gt_mesh(obj / "mesh.ply")))
                rec["seconds_mesh"] = t_mesh[-1]
            except MeshError as e:  # no surface: the worst F-score, Chamfer undefined
                rec.update({"chamfer": None, "fscore": 0.0, "mesh_error": str(e)})
        per[obj.name] = rec
        log(f"{obj.name}: psnr {rec['psnr']:.2f} (copy {rec['copy_psnr']:.2f}) ssim {rec['ssim']:.3f}"
            + (f" chamfer {rec['chamfer']:.4f} F {rec['fscore']:.3f}" if rec.get("chamfer") is not None else ""))
    vals = list(per.values())
    return {"psnr": _mean([r["psnr"] for r in vals]), "ssim": _mean([r["ssim"] for r in vals]),
            "chamfer": _mean([r.get("chamfer") for r in vals]),
            "fscore": _mean([r["fscore"] for r in vals if "fscore" in r]),
            "seconds_reconstruct": _mean(t_rec), "seconds_mesh": _mean(t_mesh), "n_objects": len(per),
            "copy_baseline": {"psnr": _mean([r["copy_psnr"] for r in vals]), "ssim": _mean([r["copy_ssim"] for r in vals])},
            "mesh_failures": sum(1 for r in vals if "mesh_error" in r),
            "input_views": input_views, "mc_resolution": mc_resolution, "image_size": pipe.config.image_size,
            "per_object": per}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m core.eval recon", description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="dataset root (its --split is used) or a folder of object folders")
    ap.add_argument("--split", default="val", help="split of a dataset root: val, val_unseen, train")
    ap.add_argument("--checkpoint", default="checkpoints/recon")
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--input-views", default="000", help="comma-separated view ids used as input, e.g. 000,006")
    ap.add_argument("--mc-resolution", type=int, default=256)
    ap.add_argument("--max-objects", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", type=device_arg, default="auto")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from core.recon import ReconPipeline

    pipe = ReconPipeline.from_pretrained(args.checkpoint, device=args.device)
    root = Path(args.data)
    if (root / "train").is_dir() and not (root / args.split).is_dir():
        raise SystemExit(f"error: {root} has no {args.split}/ split")
    objects = list_objects(root, args.split if (root / args.split).is_dir() else None)[: args.max_objects]
    if not objects:
        raise SystemExit(f"{root}: no object folders found")
    views = [v.strip() for v in args.input_views.split(",") if v.strip()]
    res = evaluate(pipe, objects, views, args.mc_resolution)
    res.update({"checkpoint": str(args.checkpoint), "data": str(root), "split": args.split})
    emit_json(res, args.out, hide_in_print=("per_object",))
    return 0
