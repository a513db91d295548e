"""`python -m core.train recon --data DIR --out FOLDER`: train the triplane reconstruction model.

Each step takes a batch of objects, encodes 1..``--views-in`` of their views with their
cameras, and supervises renders of *other* views of the same objects on random rays
(half on the object, half anywhere) with colour MSE on white, a mask loss on the
accumulated opacity and, where the dataset has depth, an L1 depth loss. ``--w-occ`` adds
direct 3-D supervision: points labelled occupied or empty by the depth hull of all the
object's views (``depth_hull_occupancy``); ``--w-pixel-depth`` supervises a ``pixel_depth``
model's depth channel with the input view's depth. A folder corpus is decoded once into
memory at the model's resolution; a shards folder is memory-mapped. The run folder is
``core.train.common.RunFolder``'s (``ckpt-latest/`` with the optimizer state, ``ckpt-best/``,
``log.jsonl``, the final model in ``--out``); ``--resume`` continues exactly where it stopped.
"""
from __future__ import annotations

import argparse
import json
import math

import numpy as np
import torch
import torch.nn.functional as F

from core import cameras
from core.checkpoint import CheckpointError, config_from_dict, load_config
from core.data.io import index_objects, read_view
from core.recon.config import ReconConfig
from core.recon.model import ReconModel
from core.recon.pipeline import prepare_views
from core.recon.render import dense_render
from core.train.common import Clock, StopSignal, add_runtime_args, autocast, check_resume_args, lr_at, start_run

EMPTY_DENSITY = 0.2   # what the occupancy loss calls empty (see losses)
SCHEDULE = ("steps", "lr", "warmup", "time_limit", "batch", "w_mask", "w_depth", "w_occ", "occ_points",
            "w_pixel_depth")  # what --force-schedule may change on --resume


# ----------------------------------------------------------------------------- data

class ViewCache:
    """All views of all objects at one resolution, in memory (uint8 images, uint8 masks, fp16 depth).

    ``refresh()`` adds objects that appeared since: with ``growing`` (a corpus still being built)
    only folders with ``meta.json``, which the corpus writer writes last, count as complete."""

    def __init__(self, root, size: int, split: str | None, max_objects: int | None = None, log=print,
                 growing: bool = False):
        self.root, self.size, self.split, self.max_objects, self.log = root, size, split, max_objects, log
        self.growing = growing
        self.objects, self._seen = [], set()
        from core.data.shards import is_shards
        if is_shards(root):
            self._from_shards()
        else:
            self.refresh()
        if not self.objects:
            raise SystemExit(f"{root}: no usable objects (split={split})")

    def _from_shards(self) -> None:
        """Objects as views into memory-mapped shards (``core.data.shards``): nothing decoded, nothing
        copied until a batch reads it."""
        from core.data.shards import open_shards
        try:
            index, arr = open_shards(self.root, self.split)
        except Exception as e:  # a missing split is "no objects", like an empty folder
            self.log(f"shards: {e}")
            return
        if index["size"] != self.size:
            raise SystemExit(f"{self.root}: shards are {index['size']} px, the model takes {self.size}; "
                             f"rebuild with python -m core.data shards --size {self.size}")
        n = len(index["names"]) if self.max_objects is None else min(self.max_objects, len(index["names"]))
        for i in range(n):
            self.objects.append({"name": index["names"][i], "rgb": arr["rgb"][i], "alpha": arr["alpha"][i],
                                 "depth": arr["depth"][i] if "depth" in arr else None, "w2c": arr["w2c"][i],
                                 "fov": float(arr["fov"][i])})
        self.log(f"mapped {len(self.objects)} objects from shards {self.root} ({self.split})")

    def refresh(self) -> int:
        try:
            objs = index_objects(self.root, self.split, min_views=2)
        except Exception as e:  # a folder mid-write: try again next time
            self.log(f"refresh: {e}")
            return 0
        added = 0
        for o in objs:
            if self.max_objects is not None and len(self.objects) >= self.max_objects:
                break
            if o.folder in self._seen or (self.growing and not (o.folder / "meta.json").is_file()):
                continue
            self._seen.add(o.folder)
            try:
                views = [read_view(o.folder, v, self.size, fov_deg=o.fov_deg) for v in o.views]
            except Exception as e:  # noqa: BLE001 - one bad object must not stop a long run
                self.log(f"skipped {o.folder}: {e}")
                continue
            rgb = np.stack([np.asarray(v.image) for v in views])
            alpha = np.stack([v.alpha if v.alpha is not None else
                              ((255 - np.asarray(v.image, np.int16)).max(-1) > 6).astype(np.float32) for v in views])
            depth = np.stack([v.depth for v in views]).astype(np.float16) if all(v.depth is not None for v in views) else None
            self.objects.append({"name": o.folder.name, "rgb": rgb, "alpha": (alpha * 255).round().astype(np.uint8),
                                 "depth": depth, "w2c": np.stack([v.w2c for v in views]), "fov": o.fov_deg})
            added += 1
        self.log(f"cached {len(self.objects)} objects (+{added}) from {self.root} ({self.split or 'all'}) at {self.size}px")
        return added

    def elevation_stats(self) -> tuple[float, float]:
        els = [cameras.spherical_from_pose(o["w2c"][0])[1:] for o in self.objects]
        return float(np.median([e for e, _ in els])), float(np.median([r for _, r in els]))


def has_split(root, split: str) -> bool:
    """A corpus folder or shards folder with this split."""
    from pathlib import Path
    return (Path(root) / split).is_dir()


def depth_hull_occupancy(pts: np.ndarray, w2c: np.ndarray, fov: float, alpha: np.ndarray,
                         depth: np.ndarray | None, margin: float = 0.03) -> np.ndarray:
    """Occupancy labels [N] (bool) of world points from an object's rendered views: a point is empty
    when some view sees background there (alpha under 10 %) or sees a surface more than ``margin``
    behind it; every other point is occupied. The depth hull of all views: exact outside, and inside
    it only cavities no view looks into are filled. Depth 0 (a background sample in a nearest-resized
    map) carves nothing; points outside a view's frame are left to the other views."""
    S = alpha.shape[-1]
    K = cameras.intrinsics(fov, S)
    empty = np.zeros(len(pts), bool)
    for v in range(len(w2c)):
        uv, z = cameras.project(pts, w2c[v], K)
        seen = (z > 1e-6) & np.isfinite(uv).all(1) & (uv >= 0).all(1) & (uv < S).all(1)
        ui, vi = (np.clip(np.nan_to_num(uv[:, k]).astype(np.int64), 0, S - 1) for k in (0, 1))
        e = alpha[v][vi, ui] < 26
        if depth is not None:
            d = depth[v][vi, ui].astype(np.float32)
            e |= (d > 0) & (z < d - margin)
        empty |= seen & e
    return ~empty


def occupancy_points(o: dict, rng: np.random.Generator, n: int, radius: float, noise: float = 0.03,
                     rot: np.ndarray | None = None) -> np.ndarray:
    """``n`` world points for occupancy supervision: half uniform in the field's box, half near the
    surface (random foreground pixels of random views lifted by their depth, plus Gaussian noise).
    With ``rot`` (world -> canonical) the uniform half fills the canonical box the model queries."""
    def uniform(m):
        u = rng.uniform(-radius, radius, (m, 3))
        return u if rot is None else u @ rot  # canonical -> world (rot is orthonormal)
    n_near = n // 2 if o["depth"] is not None else 0
    pts = [uniform(n - n_near)]
    if n_near:
        V, S = o["depth"].shape[:2]
        vs, ii, jj = rng.integers(0, V, 4 * n_near), rng.integers(0, S, 4 * n_near), rng.integers(0, S, 4 * n_near)
        z = o["depth"][vs, ii, jj].astype(np.float32)
        ok = np.flatnonzero((z > 0) & (o["alpha"][vs, ii, jj] > 127))[:n_near]
        if len(ok):
            vs, ii, jj, z = vs[ok], ii[ok], jj[ok], z[ok]
            uv = np.stack([jj + 0.5, ii + 0.5], -1)
            surf = cameras.unproject(uv, z, np.asarray(o["w2c"])[vs], cameras.intrinsics(o["fov"], S))
            pts.append(np.clip(surf + rng.normal(0, noise, surf.shape), -radius, radius))
        pts.append(uniform(n_near - len(ok)))
    return np.concatenate(pts).astype(np.float32)


def make_batch(cache: ViewCache, rng: np.random.Generator, batch: int, views_in: int, targets: int, rays: int,
               occ_points: int = 0, box_radius: float = 0.6, input_depth: bool = False):
    """Inputs and supervision rays (canonical frame) for ``batch`` random objects; with ``occ_points``,
    also that many 3-D points per object (canonical frame) with depth-hull occupancy labels; with
    ``input_depth``, the input views' own depth maps (what a ``pixel_depth`` model learns to predict)."""
    S = cache.size
    xs, cams, plk, ro, rd, cols, alphas, depths, cosines = [], [], [], [], [], [], [], [], []
    occ_p, occ_y, in_depth = [], [], []
    for k in rng.integers(0, len(cache.objects), batch):
        o = cache.objects[k]
        V = len(o["w2c"])
        n_in = int(rng.integers(1, min(views_in, V - 1) + 1))
        perm = rng.permutation(V)
        vin, vt = perm[:n_in], perm[n_in:n_in + targets]
        if len(vt) < targets:
            vt = rng.choice(perm[n_in:], targets)
        img = torch.from_numpy(o["rgb"][vin]).permute(0, 3, 1, 2).float() / 127.5 - 1
        fovs = [o["fov"]] * n_in
        x, c, p, rot = prepare_views(img, list(o["w2c"][vin]), fovs, S)
        pad = views_in - n_in  # pad to a fixed view count by repeating view 0 (same camera: harmless)
        xs.append(torch.cat([x, x[:1].repeat(pad, 1, 1, 1)]))
        cams.append(torch.cat([c, c[:1].repeat(pad, 1)]))
        if input_depth and o["depth"] is not None:
            dz = torch.from_numpy(np.asarray(o["depth"][vin], dtype=np.float32))
            in_depth.append(torch.cat([dz, dz[:1].repeat(pad, 1, 1)]))
        plk.append(torch.cat([p, p[:1].repeat(pad, 1, 1, 1)]))
        K = cameras.intrinsics(o["fov"], S)
        rot_t = torch.from_numpy(rot)
        r_o, r_d, r_c, r_a, r_z, r_cos = [], [], [], [], [], []
        for v in vt:
            og, dg = cameras.get_rays(o["w2c"][v], K, S)
            a = o["alpha"][v].reshape(-1)
            fg = np.flatnonzero(a > 127)
            n_fg = min(len(fg), rays // 2)
            pick = np.concatenate([rng.choice(fg, n_fg, replace=False) if n_fg else np.zeros(0, np.int64),
                                   rng.integers(0, S * S, rays - n_fg)])
            dg = dg.reshape(-1, 3)[pick]
            r_o.append(og.reshape(-1, 3)[pick] @ rot_t.T)
            r_d.append(dg @ rot_t.T)
            r_c.append(torch.from_numpy(o["rgb"][v].reshape(-1, 3)[pick]).float() / 255)
            r_a.append(torch.from_numpy(a[pick]).float() / 255)
            z = o["depth"][v].reshape(-1)[pick].astype(np.float32) if o["depth"] is not None else np.zeros(rays, np.float32)
            r_z.append(torch.from_numpy(z))
            r_cos.append(dg @ torch.from_numpy(-o["w2c"][v][2, :3]))  # ray distance -> z-depth factor
        for lst, r in ((ro, r_o), (rd, r_d), (cols, r_c), (alphas, r_a), (depths, r_z), (cosines, r_cos)):
            lst.append(torch.cat(r))
        if occ_points:
            pw = occupancy_points(o, rng, occ_points, box_radius * 0.95, rot=rot)
            depth_maps = None if o["depth"] is None else np.asarray(o["depth"])
            occ_y.append(torch.from_numpy(depth_hull_occupancy(pw, np.asarray(o["w2c"]), o["fov"], np.asarray(o["alpha"]),
                                                               depth_maps)).float())
            occ_p.append(torch.from_numpy(pw) @ rot_t.T)
    st = torch.stack
    jitter = torch.from_numpy(rng.random((batch, targets * rays), dtype=np.float32))  # stratified sampling, per ray
    out = {"images": st(xs), "cams": st(cams), "rays": st(plk), "o": st(ro), "d": st(rd), "rgb": st(cols),
           "alpha": st(alphas), "depth": st(depths), "cos": st(cosines), "jitter": jitter}
    if occ_points:
        out.update(occ_pts=st(occ_p), occ=st(occ_y))
    if len(in_depth) == batch:
        out["in_depth"] = st(in_depth)
    return out


# ----------------------------------------------------------------------------- loss

def losses(model: ReconModel, b: dict, n_samples: int, w_mask: float, w_depth: float, w_occ: float = 0.0,
           w_pixel_depth: float = 0.0):
    planes = model(b["images"], b["cams"], b["rays"])
    field = lambda pts: model.query(planes, pts)  # noqa: E731
    rgb, opacity, dist = dense_render(field, b["o"], b["d"], model.config.box_radius, n_samples,
                                      chunk=1 << 30, jitter=b["jitter"])
    out = {"rgb": torch.mean((rgb - b["rgb"]) ** 2),
           "mask": torch.mean((opacity - b["alpha"]) ** 2)}
    valid = ((b["depth"] > 0) & (b["alpha"] > 0.5)).float()
    if w_depth > 0 and valid.any():
        zpred = dist / opacity.clamp(min=1e-3) * b["cos"]
        # per object, then over objects: the same loss however the batch is split over processes
        per = ((zpred - b["depth"]).abs() * valid).sum(-1) / valid.sum(-1).clamp(min=1)
        out["depth"] = per.mean()
    else:
        out["depth"] = torch.zeros((), device=rgb.device)
    out["loss"] = out["rgb"] + w_mask * out["mask"] + w_depth * out["depth"]
    if w_occ > 0 and "occ" in b:
        # occupied points: density above the marching-cubes level (sigma / (sigma + level) > 1/2); empty points:
        # below EMPTY_DENSITY, low enough that a ray through a whole box of it stays clear (1.2 x 0.2 -> 21 %
        # opacity), since a haze under the mesh level still renders as a smear
        sigma, _ = model.query(planes, b["occ_pts"], with_rgb=False)
        level = torch.where(b["occ"] > 0.5, math.log(model.config.mc_level), math.log(EMPTY_DENSITY))
        logit = torch.log(sigma.clamp(min=1e-6)) - level
        out["occ"] = F.binary_cross_entropy_with_logits(logit, b["occ"])
        out["loss"] = out["loss"] + w_occ * out["occ"]
    if w_pixel_depth > 0 and model.config.pixel_depth and "in_depth" in b:
        # the CNN's depth channel against the input views' own depth (offset from the camera's distance),
        # each half-resolution cell against the mean of the object pixels in its block
        pred = planes.feat[:, :, -2]                                        # [B, V, S/2, S/2]
        k = b["in_depth"].shape[-1] // pred.shape[-1]
        d = b["in_depth"].flatten(0, 1)[:, None]
        valid = F.avg_pool2d((d > 0).float(), k)
        gt = (F.avg_pool2d(d, k) / valid.clamp(min=1e-6)).view(pred.shape)
        ok = (valid > 0).float().view(pred.shape)
        err = (pred.float() - (gt - ReconModel.camera_radius(b["cams"])[..., None, None])).abs() * ok
        out["pixel_depth"] = (err.flatten(1).sum(-1) / ok.flatten(1).sum(-1).clamp(min=1)).mean()
        out["loss"] = out["loss"] + w_pixel_depth * out["pixel_depth"]
    out["psnr"] = -10 * torch.log10(out["rgb"].detach().clamp(min=1e-10))
    return out


# ----------------------------------------------------------------------------- main

@torch.no_grad()
def quick_val(model, cache: ViewCache, n_samples: int, max_objects: int = 8) -> float:
    """Mean PSNR of view 000 -> every third other view on ``max_objects`` val objects spread evenly over
    the split (cheap progress signal; the same objects every time)."""
    from core.recon.scene import TriplaneScene

    model.eval()
    vals = []
    picks = np.unique(np.linspace(0, len(cache.objects) - 1, min(max_objects, len(cache.objects))).round().astype(int))
    for o in (cache.objects[i] for i in picks):
        img = torch.from_numpy(o["rgb"][:1]).permute(0, 3, 1, 2).float() / 127.5 - 1
        x, c, p, rot = prepare_views(img, [o["w2c"][0]], [o["fov"]], cache.size)
        scene = TriplaneScene(model, model(x[None], c[None], p[None]), rot, o["fov"])
        for v in range(1, len(o["w2c"]), 3):
            rgb = scene.render_tensors(o["w2c"][v], cache.size, o["fov"], n_samples)[0]
            mse = torch.mean((rgb - torch.from_numpy(o["rgb"][v]).float() / 255) ** 2).item()
            vals.append(-10 * math.log10(max(mse, 1e-10)))
    model.train()
    return float(np.mean(vals))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m core.train recon", description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="dataset root (train/ val/) or a folder of object folders")
    ap.add_argument("--out", required=True, help="run folder: ckpt-latest/, ckpt-best/, log.jsonl, final model")
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--views-in", type=int, default=1, help="train with 1..N input views per object")
    ap.add_argument("--targets", type=int, default=2, help="supervised views per object")
    ap.add_argument("--rays", type=int, default=256, help="rays per supervised view")
    ap.add_argument("--samples", type=int, default=48, help="samples per ray in training")
    ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--w-mask", type=float, default=0.5)
    ap.add_argument("--w-depth", type=float, default=0.1)
    ap.add_argument("--w-occ", type=float, default=0.0, help="weight of the 3-D occupancy loss (depth-hull labels "
                    "from all of an object's views; see depth_hull_occupancy)")
    ap.add_argument("--occ-points", type=int, default=1024, help="3-D points per object for the occupancy loss")
    ap.add_argument("--w-pixel-depth", type=float, default=0.5, help="weight of the input views' depth loss "
                    "(models with pixel_depth only)")
    ap.add_argument("--init", default=None, help="fresh run: copy every tensor whose name and shape match from this checkpoint")
    ap.add_argument("--config", default=None, help="JSON of ReconConfig overrides for a fresh run")
    ap.add_argument("--max-objects", type=int, default=None)
    ap.add_argument("--save-every", type=int, default=500)
    ap.add_argument("--val-every", type=int, default=1000)
    ap.add_argument("--val-split", default=None, help="split that picks ckpt-best (default: val_unseen where the "
                    "corpus has one, else val): objects unlike the training set are what counts")
    ap.add_argument("--val-objects", type=int, default=8, help="objects in the periodic val PSNR")
    ap.add_argument("--growing", action="store_true", help="--data is still being built: use objects with meta.json "
                    "and re-scan every --refresh-every steps until its READY file appears")
    ap.add_argument("--refresh-every", type=int, default=500)
    add_runtime_args(ap, batch=4)
    args = ap.parse_args(argv)

    from tqdm import tqdm

    rt = start_run(args)
    run, dev, resuming, dist = rt.run, rt.device, rt.resuming, rt.dist
    try:
        dist.check_divisible(args.batch)
        if resuming:
            check_resume_args(run.state().get("args", {}), vars(args), SCHEDULE, ("config", "views_in", "targets",
                                                                               "rays", "samples"), args.force_schedule)
    except (ValueError, CheckpointError) as e:
        raise SystemExit(f"error: {e}")
    if resuming:
        cfg = config_from_dict(ReconConfig, load_config(run.latest), source=str(run.latest / "config.json"))
    else:
        try:
            cfg = ReconConfig(**json.loads(args.config)) if args.config else ReconConfig()
        except (TypeError, ValueError) as e:
            raise SystemExit(f"error: --config: {e}")
    train = ViewCache(args.data, cfg.image_size, "train", args.max_objects, growing=args.growing)
    val_split = args.val_split or ("val_unseen" if has_split(args.data, "val_unseen") else "val")
    try:
        val = ViewCache(args.data, cfg.image_size, val_split, None, growing=args.growing)
    except SystemExit:
        val = None
    if not resuming:  # the single-photo default camera follows the corpus's first views
        cfg.default_elevation_deg = round(train.elevation_stats()[0], 1)  # radius stays 2.0 (the app default)
    model = ReconModel(cfg).to(dev)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "tokens" not in n and "pos" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "tokens" not in n and "pos" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    state = {"step": 0, "wall_s": 0.0, "best_val_psnr": -1.0, "samples_seen": 0}
    if args.init and not resuming:
        from core.checkpoint import load_state_dict
        src, own = load_state_dict(args.init), model.state_dict()
        match = {k: v for k, v in src.items() if k in own and own[k].shape == v.shape}
        model.load_state_dict(match, strict=False)
        print(f"init: {len(match)}/{len(own)} tensors from {args.init}")
    if resuming:
        try:
            state.update(run.resume(model, opt))
        except (CheckpointError, OSError, KeyError, ValueError) as e:
            raise SystemExit(f"--resume: cannot load {run.latest}: {e}")
        print(f"resumed from {run.latest} at step {state['step']}")
    occ_n = args.occ_points if args.w_occ > 0 else 0
    want_depth = cfg.pixel_depth and args.w_pixel_depth > 0
    probe_batch = {k: v[:max(1, args.batch // dist.world)].to(dev) for k, v in
                   make_batch(train, np.random.default_rng(12345), args.batch, args.views_in, args.targets,
                              args.rays, occ_n, cfg.box_radius, want_depth).items()}

    def probe(prec: str) -> None:  # one forward + backward on one local batch, for --precision auto
        with autocast(prec, dev):
            losses(model, probe_batch, args.samples, args.w_mask, args.w_depth, args.w_occ,
                   args.w_pixel_depth)["loss"].backward()
        opt.zero_grad(set_to_none=True)
    precision = rt.choose_precision(probe, resumed=state.get("precision"))
    print(f"model {model.num_parameters() / 1e6:.2f}M params, planes 3x{cfg.plane_channels}x{cfg.plane_res}^2, "
          f"default camera el {cfg.default_elevation_deg:.1f} r {cfg.default_radius:.2f}, precision {precision} "
          f"{rt.measured or ''}, processes {dist.world}", flush=True)
    state.update(precision=precision, args=vars(args))
    run.open_segment(state, precision, dist.world, {"precision_measured": rt.measured or None})

    rng = np.random.default_rng(args.seed + state["step"])
    clock, stop = Clock(state["wall_s"], args.time_limit), StopSignal()

    def save(folder, with_opt: bool = True):
        state["wall_s"] = clock.wall_s
        run.save(folder, model, opt if with_opt else None, state)

    model.train()
    step = state["step"]
    bar = tqdm(total=args.steps, initial=step, mininterval=20, dynamic_ncols=False)
    while step < args.steps and not dist.agree_to_stop(stop.requested or clock.over):
        # the global batch (the same on every process), then this process's rows of it
        b = {k: v[dist.shard(args.batch)].to(dev)
             for k, v in make_batch(train, rng, args.batch, args.views_in, args.targets, args.rays, occ_n,
                                    cfg.box_radius, want_depth).items()}
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.lr, args.warmup, args.steps, time_progress=clock.progress)
        with autocast(precision, dev):
            L = losses(model, b, args.samples, args.w_mask, args.w_depth, args.w_occ, args.w_pixel_depth)
        opt.zero_grad(set_to_none=True)
        L["loss"].backward()
        dist.all_reduce_grads(model.parameters())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step = state["step"] = step + 1
        state["samples_seen"] += args.batch
        bar.update(1)
        bar.set_postfix(loss=f"{L['loss'].item():.4f}", psnr=f"{L['psnr'].item():.2f}", mask=f"{L['mask'].item():.4f}",
                        depth=f"{L['depth'].item():.3f}", refresh=False)
        rec = {"step": step, "lr": opt.param_groups[0]["lr"], "wall_s": round(clock.wall_s, 1),
               **{k: round(v.item(), 5) for k, v in L.items()}}
        if args.growing and step % args.refresh_every == 0 and len(train.objects) < (args.max_objects or 1 << 30):
            train.refresh()
        if step % args.val_every == 0 and val is not None and dist.is_main:
            rec["val_psnr"] = vp = quick_val(model, val, cfg.n_samples, args.val_objects)
            print(f"\nstep {step}: {val_split} psnr {vp:.2f} (train batch psnr {L['psnr'].item():.2f})", flush=True)
            if vp > state["best_val_psnr"]:
                state["best_val_psnr"] = vp
                save(run.best, with_opt=False)
        if step % 20 == 0 or "val_psnr" in rec:
            run.log(rec)
        if step % args.save_every == 0:
            save(run.latest)
    bar.close()
    if clock.over:
        print("time limit reached", flush=True)
    save(run.latest)
    run.save_final(model)
    run.update_segment(state, ended=True)
    run.close()
    dist.close()
    print(f"done: {step} steps, {clock.wall_s:.0f} s wall, checkpoint {run.root}", flush=True)
    return 0
