"""`python -m core.eval recon --data DIR --checkpoint FOLDER --out FILE.json [--split val_unseen]`

For each object: the input view(s) and their cameras give a triplane (with the photos projected
onto the surfaces they saw, as the app shows it; ``--no-photo-projection`` scores the field
alone); every other view is rendered at ``--size`` (default 128 px) on white and scored with
PSNR/SSIM and the silhouette IoU of the render's object mask (opacity > 0.5) against the
ground-truth alpha (the not-white pixels where a view has no alpha). Baselines, scored the same
way: ``copy`` shows the input image itself for every view; ``scaled_copy`` shows it scaled by
r_input / r_target about the object's centre (what the camera distance alone explains).
Where the object has ``mesh.ply``, the extracted mesh is compared with it in the world frame:
Chamfer distance (mean of the two directions' mean nearest-neighbour distances between 10,000
surface samples each) and F-score at 0.1 (``fscore``) and 0.05 (``fscore_005``); without
``mesh.ply`` the shape metrics are omitted, never estimated.

``--with-generated-views N --nvs-checkpoint DIR`` measures multi-view consistency: each object is
lifted from its input plus N views that the NVS model generates from it (one sample each, at the
input's elevation and distance, azimuths spread evenly around the object), as the app's "lift with
generated views" does; views that agree with each other and with the object improve the lift.
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
from core.data.io import DataError, list_objects, object_fov, read_view, view_ids
from core.eval.nvs import scaled_copy
from core.mesh import MeshError
from core.report import emit_json


def mesh_metrics(pred: trimesh.Trimesh, gt: trimesh.Trimesh, n: int = 10000, thresholds=(0.1, 0.05),
                 seed: int = 0) -> dict:
    """Chamfer distance and F-scores between two surfaces (uniform area samples, cKDTree)."""
    p = trimesh.sample.sample_surface(pred, n, seed=seed)[0]
    g = trimesh.sample.sample_surface(gt, n, seed=seed + 1)[0]
    d_pg = cKDTree(g).query(p)[0]
    d_gp = cKDTree(p).query(g)[0]
    out = {"chamfer": float((d_pg.mean() + d_gp.mean()) / 2)}
    for t in thresholds:
        precision, recall = float((d_pg < t).mean()), float((d_gp < t).mean())
        f = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
        key = "fscore" if t == 0.1 else f"fscore_{round(t * 100):03d}"  # 0.05 -> fscore_005
        out[key] = f
        if t == 0.1:
            out.update(precision=precision, recall=recall)
    return out


def _load_gt_mesh(path: Path) -> trimesh.Trimesh:
    m = trimesh.load(path, force="mesh", process=False)
    if not isinstance(m, trimesh.Trimesh) or len(m.faces) == 0:
        raise DataError(f"{path}: not a triangle mesh")
    return m


def _mean(xs):
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return float(np.mean(xs)) if xs else None


SCORES = ("psnr", "ssim", "silhouette_iou", "baseline_copy_psnr", "baseline_copy_ssim", "baseline_copy_silhouette_iou",
          "baseline_scaled_copy_psnr", "baseline_scaled_copy_ssim", "baseline_scaled_copy_silhouette_iou")
SHAPE_SCORES = ("chamfer", "fscore", "fscore_005")


def generated_cameras(w2c, n: int) -> list[np.ndarray]:
    """``n`` cameras at ``w2c``'s elevation and distance, azimuths spread evenly after its own."""
    from core import cameras
    az, el, r = cameras.spherical_from_pose(w2c)
    return [cameras.pose_from_spherical(az + 360.0 * k / (n + 1), el, r) for k in range(1, n + 1)]


def evaluate(pipe, objects: list[Path], input_views: list[str], mc_resolution: int, size: int = 128,
             project_photos: bool = True, log=print, nvs=None, generated_views: int = 0) -> dict:
    """Scores of ``pipe`` (a ReconPipeline) per object and overall; with ``nvs`` (an NVSPipeline) and
    ``generated_views`` > 0, each lift also takes that many views generated from the first input."""
    from core.recon.pipeline import ReconInputError
    per, t_rec, t_mesh, t_gen, skipped = {}, [], [], [], {}
    for obj in objects:
        ids = view_ids(obj)
        missing = [v for v in input_views if v not in ids]
        if missing:
            log(f"{obj.name}: input view(s) {missing} missing, skipped")
            continue
        fov = object_fov(obj)
        ins = [read_view(obj, v, extras=False, fov_deg=fov) for v in input_views]
        images, cams = [v.image for v in ins], [v.w2c for v in ins]
        if nvs is not None and generated_views > 0:
            t0 = time.perf_counter()
            extra = generated_cameras(ins[0].w2c, generated_views)
            handle = nvs.encode_source(ins[0].image, ins[0].w2c, fov)
            images += nvs.generate(handle, None, extra)
            cams += [c.astype(np.float32) for c in extra]
            t_gen.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        try:
            scene = pipe.reconstruct(images, cams, fov_deg=[fov] * len(images), project_photos=project_photos)
        except ReconInputError as e:  # e.g. an input view with nothing on it: counted, never scored as a guess
            skipped[obj.name] = str(e)
            log(f"{obj.name}: skipped, {e}")
            continue
        t_rec.append(time.perf_counter() - t0)
        src = read_view(obj, input_views[0], size, fov_deg=fov)
        src_mask = metrics.object_mask(src.image, src.alpha)
        gts = [read_view(obj, v, size, fov_deg=fov) for v in ids if v not in input_views]
        if not gts:
            log(f"{obj.name}: no view besides the input, skipped")
            continue
        scaled, scaled_masks = scaled_copy(src, gts, fov, mask=src_mask)
        sc = {k: [] for k in SCORES}
        for gt, sc_img, sc_mask in zip(gts, scaled, scaled_masks):
            rgb, opacity, _ = scene.render_tensors(gt.w2c, size, fov)
            pred = (rgb.clamp(0, 1) * 255).round().byte().cpu().numpy()
            gt_mask = metrics.object_mask(gt.image, gt.alpha)
            for name, img, mask in (("", pred, opacity.cpu().numpy() > 0.5), ("baseline_copy_", src.image, src_mask),
                                    ("baseline_scaled_copy_", sc_img, sc_mask)):
                sc[f"{name}psnr"].append(metrics.psnr(img, gt.image))
                sc[f"{name}ssim"].append(metrics.ssim(img, gt.image))
                sc[f"{name}silhouette_iou"].append(metrics.silhouette_iou(mask, gt_mask))
        rec = {k: _mean(v) for k, v in sc.items()}
        rec.update(n_views=len(gts), seconds_reconstruct=t_rec[-1])
        if (obj / "mesh.ply").is_file():
            t0 = time.perf_counter()
            try:
                mesh = scene.extract_mesh(resolution=mc_resolution)
                t_mesh.append(time.perf_counter() - t0)
                rec.update(mesh_metrics(mesh, _load_gt_mesh(obj / "mesh.ply")))
                rec["seconds_mesh"] = t_mesh[-1]
            except MeshError as e:  # no surface: the worst F-score, Chamfer undefined
                rec.update({"chamfer": None, "fscore": 0.0, "fscore_005": 0.0, "mesh_error": str(e)})
        per[obj.name] = rec
        log(f"{obj.name}: psnr {rec['psnr']:.2f} (scaled copy {rec['baseline_scaled_copy_psnr']:.2f}) "
            f"iou {rec['silhouette_iou']:.3f} (scaled copy {rec['baseline_scaled_copy_silhouette_iou']:.3f})"
            + (f" chamfer {rec['chamfer']:.4f} F {rec['fscore']:.3f}" if rec.get("chamfer") is not None else ""))
    vals = list(per.values())
    out = {k: _mean([r[k] for r in vals]) for k in SCORES}
    if any(k in r for r in vals for k in SHAPE_SCORES):  # shape metrics only from objects with mesh.ply
        out.update({k: _mean([r.get(k) for r in vals if k in r]) for k in SHAPE_SCORES})
        out["n_objects_with_mesh"] = sum(1 for r in vals if "fscore" in r)
        out["mesh_failures"] = sum(1 for r in vals if "mesh_error" in r)
    out.update({"seconds_reconstruct": _mean(t_rec), "seconds_mesh": _mean(t_mesh), "n_objects": len(per),
                "input_views": input_views, "mc_resolution": mc_resolution, "size": size,
                "photo_projection": project_photos, "image_size": pipe.config.image_size,
                "generated_views": generated_views if nvs is not None else 0,
                "seconds_generate": _mean(t_gen), "skipped": skipped, "per_object": per})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m core.eval recon", description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="dataset root (its --split is used) or a folder of object folders")
    ap.add_argument("--split", default="val", help="split of a dataset root: val, val_unseen, train")
    ap.add_argument("--checkpoint", default="checkpoints/recon")
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--input-views", default="000", help="comma-separated view ids used as input, e.g. 000,006")
    ap.add_argument("--mc-resolution", type=int, default=256)
    ap.add_argument("--size", type=int, default=128, help="render and score at this many pixels")
    ap.add_argument("--no-photo-projection", action="store_true", help="score the field's colours alone")
    ap.add_argument("--max-objects", type=int, default=None, help="the first N objects (by name)")
    ap.add_argument("--sample", type=int, default=None, metavar="N",
                    help="N objects spread evenly over the split (every source of a mixed split is seen)")
    ap.add_argument("--with-generated-views", type=int, default=0, metavar="N",
                    help="lift from the input plus N views the NVS model generates around it (consistency)")
    ap.add_argument("--nvs-checkpoint", default="checkpoints/nvs", help="NVS model for --with-generated-views")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", type=device_arg, default="auto")
    args = ap.parse_args(argv)
    if args.with_generated_views < 0:
        ap.error(f"--with-generated-views must be >= 0, got {args.with_generated_views}")
    if args.threads:
        torch.set_num_threads(args.threads)
    from core.recon import ReconPipeline

    pipe = ReconPipeline.from_pretrained(args.checkpoint, device=args.device)
    nvs = None
    if args.with_generated_views:
        from core.checkpoint import CheckpointError, load_config
        from core.nvs import NVSPipeline
        views_in = len([v for v in args.input_views.split(",") if v.strip()]) + args.with_generated_views
        if views_in > pipe.config.max_views:
            ap.error(f"{views_in} views in (input + --with-generated-views) but {args.checkpoint} takes at most "
                     f"{pipe.config.max_views}")
        try:  # a guide model is lifted by this same reconstruction model (its pairing is checked)
            guided = bool(load_config(args.nvs_checkpoint).get("guide"))
            nvs = NVSPipeline.from_pretrained(args.nvs_checkpoint, device=args.device, recon=pipe if guided else None)
        except (CheckpointError, FileNotFoundError) as e:
            raise SystemExit(f"error: --nvs-checkpoint {args.nvs_checkpoint}: {e}")
    root = Path(args.data)
    if (root / "train").is_dir() and not (root / args.split).is_dir():
        raise SystemExit(f"error: {root} has no {args.split}/ split")
    objects = list_objects(root, args.split if (root / args.split).is_dir() else None)[: args.max_objects]
    if args.sample and args.sample < len(objects):
        objects = [objects[i] for i in np.linspace(0, len(objects) - 1, args.sample).round().astype(int)]
    if not objects:
        raise SystemExit(f"{root}: no object folders found")
    views = [v.strip() for v in args.input_views.split(",") if v.strip()]
    res = evaluate(pipe, objects, views, args.mc_resolution, args.size, not args.no_photo_projection,
                   nvs=nvs, generated_views=args.with_generated_views)
    res.update({"checkpoint": str(args.checkpoint), "data": str(root), "split": args.split, "sample": args.sample,
                "max_objects": args.max_objects, "nvs_checkpoint": args.nvs_checkpoint if nvs is not None else None})
    emit_json(res, args.out, hide_in_print=("per_object",))
    return 0
