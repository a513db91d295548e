"""`python -m core.eval nvs --data DIR --checkpoint checkpoints/nvs --out FILE.json`

For each object the source view (default ``000``) generates every other view from the
cameras in its ``.npy`` files (FOV from meta.json when present). PSNR/SSIM at the model
resolution against the ground truth resized with an area filter, on white. The copy
baseline scores the source image itself as the prediction; ``zero_pose_psnr`` scores
generating the source camera itself against the source. ``baseline_scaled_copy_*`` (ours,
beyond the contract) scores the source scaled by r_source / r_target about the object's
centre: what the camera distance alone explains (``NVSConfig.distance_zoom``).
``--samples N`` scores the pixel mean of N sampled views per camera (``NVSPipeline``'s
posterior-mean estimate) instead of one sample; the JSON's ``settings`` records N.

``silhouette_iou`` scores the prediction's object mask (its not-white pixels) against the
ground-truth alpha, as the reconstruction eval does; the baselines get the same. With a
reconstruction model (``--recon-checkpoint``, default the shipped one; ``--no-guide`` skips it)
each source is lifted once and ``guide_*`` score the guide alone (the lifted object rasterised at
each target camera, ``core.nvs.guide``) as the prediction: what the app shows first, and what a
guide model is conditioned on. A photo that cannot be lifted scores its guide as an empty (white)
view and counts in ``guide_failures``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from core import cameras, metrics
from core.cli import device_arg
from core.data.io import DataError, image_to_tensor, index_objects, read_view, tensor_to_image, zoom_images
from core.nvs.sampling import SamplingParams
from core.report import emit_json


def scaled_copy(src, targets: list, fov_deg: float, mask=None):
    """The source view as each target camera's distance would show it (no rotation); with ``mask`` (the
    source's boolean object mask) also that mask scaled the same way: (images, masks)."""
    scales = [cameras.at_source_distance(src.w2c, t.w2c)[1] for t in targets]
    centres = [cameras.origin_ndc(t.w2c, fov_deg) for t in targets]
    x = image_to_tensor(src.image)[None].expand(len(targets), -1, -1, -1)
    images = [tensor_to_image(v) for v in zoom_images(x, scales, centres)]
    if mask is None:
        return images
    m = torch.from_numpy(1 - 2 * np.asarray(mask, np.float32))[None, None].expand(len(targets), 3, -1, -1)
    return images, [((1 - v[0]) / 2 > 0.5).numpy() for v in zoom_images(m, scales, centres)]  # black on white


def evaluate(pipe, data, sampling=None, source_view: str = "000", max_objects: int | None = None,
             zero_pose: bool = True, max_views: int | None = None, progress: bool = False, split: str | None = "val",
             batch: int = 12, figure_rows: list | None = None, figure_objects: int = 4,
             sample: int | None = None) -> dict:
    """Scores of ``pipe`` (an NVSPipeline) on the objects under ``data`` with ``sampling`` (a
    ``SamplingParams``, default one sample at the demo settings); when ``figure_rows`` is a list,
    (source, [(generated, ground truth), ...]) of the first objects are appended."""
    sampling = SamplingParams.of(sampling)
    objs = index_objects(Path(data), split)  # a plain folder of objects has no split: all of it
    objs = objs[:max_objects] if max_objects else objs
    if sample and sample < len(objs):  # spread over the split: every source of a mixed split is seen
        objs = [objs[i] for i in np.linspace(0, len(objs) - 1, sample).round().astype(int)]
    if not objs:
        raise DataError(f"{data}: no object folders with at least two posed views")
    R = pipe.resolution
    per, P, S, BP, BS, Z, secs, nviews = {}, [], [], [], [], [], 0.0, 0
    SP, SS = [], []
    ious = {k: [] for k in ("silhouette_iou", "baseline_copy_silhouette_iou", "baseline_scaled_copy_silhouette_iou")}
    G = {k: [] for k in ("guide_psnr", "guide_ssim", "guide_silhouette_iou")}
    guide_failures, lift_s = 0, []
    it = objs
    if progress:
        from tqdm import tqdm
        it = tqdm(objs, desc="eval nvs")
    for o in it:
        if source_view not in o.views:
            print(f"skip {o.folder}: no source view {source_view}", file=sys.stderr)
            continue
        src = read_view(o.folder, source_view, R, fov_deg=o.fov_deg, extras=True)
        targets = [v for v in o.views if v != source_view][:max_views]
        gts = [read_view(o.folder, v, R, fov_deg=o.fov_deg, extras=True) for v in targets]
        t0 = time.perf_counter()
        handle = pipe.encode_source(src.image, src.w2c, o.fov_deg,
                                    embedding=src.embedding if pipe.model.config.embedder != "cnn" else None)
        preds = []
        for i in range(0, len(gts), batch):
            preds += pipe.generate(handle, None, [g.w2c for g in gts[i:i + batch]], sampling)
        # an unguided model's views do not wait for the lift (it is timed apart); a guide model's do
        secs += time.perf_counter() - t0 - (0.0 if pipe.model.config.guide else handle.lift_s)
        lift_s.append(handle.lift_s)
        nviews += len(preds)
        ps = [metrics.psnr(p, g.image) for p, g in zip(preds, gts)]
        ss = [metrics.ssim(p, g.image) for p, g in zip(preds, gts)]
        bp = [metrics.psnr(src.image, g.image) for g in gts]
        bs = [metrics.ssim(src.image, g.image) for g in gts]
        src_mask = metrics.object_mask(src.image, src.alpha)
        scaled, scaled_masks = scaled_copy(src, gts, src.fov_deg, mask=src_mask)
        sp = [metrics.psnr(c, g.image) for c, g in zip(scaled, gts)]
        sc = [metrics.ssim(c, g.image) for c, g in zip(scaled, gts)]
        gt_masks = [metrics.object_mask(g.image, g.alpha) for g in gts]
        iou = {"silhouette_iou": [metrics.silhouette_iou(metrics.object_mask(p), m) for p, m in zip(preds, gt_masks)],
               "baseline_copy_silhouette_iou": [metrics.silhouette_iou(src_mask, m) for m in gt_masks],
               "baseline_scaled_copy_silhouette_iou": [metrics.silhouette_iou(a, m) for a, m in zip(scaled_masks, gt_masks)]}
        rec = {"psnr": float(np.mean(ps)), "ssim": float(np.mean(ss)), "baseline_copy_psnr": float(np.mean(bp)),
               "baseline_copy_ssim": float(np.mean(bs)), "baseline_scaled_copy_psnr": float(np.mean(sp)),
               "baseline_scaled_copy_ssim": float(np.mean(sc)), **{k: float(np.mean(v)) for k, v in iou.items()},
               "n_views": len(preds), "views": targets}
        for k, v in iou.items():
            ious[k] += v
        guides = [None] * len(gts)
        if pipe.recon is not None:
            g, guides = guide_scores(pipe, handle, gts, gt_masks)
            rec.update({k: float(np.mean(v)) for k, v in g.items()})
            if handle.guide is None:
                guide_failures += 1
                rec["guide_note"] = handle.guide_note
            for k, v in g.items():
                G[k] += v
        if zero_pose:
            z = pipe.generate(handle, None, [src.w2c], sampling)[0]
            rec["zero_pose_psnr"] = metrics.psnr(z, src.image)
            Z.append(rec["zero_pose_psnr"])
        per[o.folder.name] = rec
        if figure_rows is not None and len(figure_rows) < figure_objects:
            figure_rows.append((src.image, [(p, g.image, gd) for p, g, gd in zip(preds, gts, guides)]))
        P += ps
        S += ss
        BP += bp
        BS += bs
        SP += sp
        SS += sc
    if not P:
        raise DataError(f"{data}: no object had source view {source_view} and another view")
    out = {"psnr": float(np.mean(P)), "ssim": float(np.mean(S)), "baseline_copy_psnr": float(np.mean(BP)),
           "baseline_copy_ssim": float(np.mean(BS)), "baseline_scaled_copy_psnr": float(np.mean(SP)),
           "baseline_scaled_copy_ssim": float(np.mean(SS)), **{k: float(np.mean(v)) for k, v in ious.items()},
           "seconds_per_view": secs / max(nviews, 1), "n_objects": len(per), "n_views": nviews}
    if pipe.recon is not None:
        out.update({k: float(np.mean(v)) for k, v in G.items()})
        out.update(guide_failures=guide_failures, seconds_lift=float(np.mean(lift_s)))
    if Z:
        out["zero_pose_psnr"] = float(np.mean(Z))
    out["settings"] = {"source_view": source_view, **sampling.to_dict(), "resolution": R,
                       "guided_model": pipe.model.config.guide, "guide": pipe.recon is not None}
    out["per_object"] = per
    return out


def guide_scores(pipe, handle, gts, gt_masks) -> tuple[dict[str, list[float]], list]:
    """The guide alone as the prediction at each ground-truth camera (an empty view when the
    source could not be lifted): its scores, and its images for the figure (None: no guide)."""
    out = {"guide_psnr": [], "guide_ssim": [], "guide_silhouette_iou": []}
    R, images = pipe.resolution, []
    for g, m in zip(gts, gt_masks):
        if handle.guide is not None:
            r = handle.guide.render(g.w2c)
            img, mask = r.image, r.alpha > 127
        else:
            img, mask = np.full((R, R, 3), 255, np.uint8), np.zeros((R, R), bool)
        images.append(r.image if handle.guide is not None else None)
        out["guide_psnr"].append(metrics.psnr(img, g.image))
        out["guide_ssim"].append(metrics.ssim(img, g.image))
        out["guide_silhouette_iou"].append(metrics.silhouette_iou(mask, m))
    return out, images


def make_figure(rows, path, max_views: int = 4) -> None:
    """Grid: each row is one object: source, then per view (guide,) generated, ground truth."""
    from PIL import Image, ImageDraw
    R = rows[0][0].size[0]
    with_guide = any(t[2] is not None for _, views in rows for t in views)
    names = (["guide"] if with_guide else []) + ["generated", "ground truth"]
    n = min(max_views, max(len(r[1]) for r in rows))
    cols = 1 + len(names) * n
    fig = Image.new("RGB", (cols * R, len(rows) * R + 14), "white")
    d = ImageDraw.Draw(fig)
    for j, name in enumerate(["source"] + names * n):
        d.text((j * R + 3, 1), name, fill=(0, 0, 0))
    for i, (src, views) in enumerate(rows):
        fig.paste(src, (0, 14 + i * R))
        for k, (p, g, gd) in enumerate(views[:max_views]):
            tiles = ([gd] if with_guide else []) + [p, g]
            for j, im in enumerate(tiles):
                if im is not None:
                    fig.paste(im, ((1 + len(names) * k + j) * R, 14 + i * R))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.save(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m core.eval nvs", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="dataset root (its val/ is used) or a folder of object folders")
    ap.add_argument("--checkpoint", default="checkpoints/nvs")
    ap.add_argument("--tokenizer", default=None, help="tokenizer folder (default: next to the checkpoint)")
    ap.add_argument("--out", required=True, help="output JSON file")
    ap.add_argument("--source-view", default="000")
    ap.add_argument("--max-objects", type=int, default=None)
    ap.add_argument("--max-views", type=int, default=None, help="at most this many target views per object")
    ap.add_argument("--sample", type=int, default=None, metavar="N",
                    help="N objects spread evenly over the split (every source of a mixed split is seen)")
    SamplingParams.add_arguments(ap)
    ap.add_argument("--no-zero-pose", action="store_true", help="skip the zero-relative-pose reproduction check")
    ap.add_argument("--split", default="val", help="split used when --data is a dataset root")
    ap.add_argument("--clip-weights", default=None, help="local open_clip weights (open_clip-embedder models)")
    ap.add_argument("--figure", default=None, help="also write a PNG grid of source / generated / ground truth")
    ap.add_argument("--recon-checkpoint", default=None,
                    help="reconstruction model that lifts each source for the guide (guide_* scores); default: a guide "
                         "model's own (its recon/, else the one beside it), else checkpoints/recon when present")
    ap.add_argument("--no-guide", action="store_true", help="no lift: skip the guide_* scores (an unguided model only)")
    ap.add_argument("--device", type=device_arg, default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args(argv)
    import torch
    if a.threads:
        torch.set_num_threads(a.threads)
    from core.nvs import NVSPipeline
    rows = [] if a.figure else None
    try:
        sampling = SamplingParams.from_args(a)  # a bad knob is refused before the models load
        recon = None if a.no_guide else a.recon_checkpoint
        if recon is not None and not (Path(recon) / "config.json").is_file():
            raise FileNotFoundError(f"--recon-checkpoint {recon}: no config.json there (or pass --no-guide)")
        if recon is None and not a.no_guide and (Path("checkpoints/recon") / "config.json").is_file():
            from core.checkpoint import load_config
            if not load_config(a.checkpoint).get("guide"):  # a guide model finds its own in from_pretrained
                recon = "checkpoints/recon"
        pipe = NVSPipeline.from_pretrained(a.checkpoint, tokenizer=a.tokenizer, device=a.device,
                                           clip_weights=a.clip_weights, recon=recon)
        if a.no_guide and pipe.model.config.guide:
            raise ValueError(f"{a.checkpoint} is a guide model: it needs its reconstruction model (drop --no-guide)")
        res = evaluate(pipe, a.data, sampling, a.source_view, a.max_objects, zero_pose=not a.no_zero_pose,
                       max_views=a.max_views, progress=True, split=a.split, figure_rows=rows, sample=a.sample)
        if a.figure and rows:
            make_figure(rows, a.figure)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    emit_json(res, a.out, hide_in_print=("per_object",))
    return 0


if __name__ == "__main__":
    sys.exit(main())
