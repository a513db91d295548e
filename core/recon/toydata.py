"""Tiny analytic multi-view objects (coloured spheres and boxes) for tests and smoke runs.

Rendered by sphere tracing their exact SDF, so a test can build a dataset in the DESIGN.md
format (png + w2c npy + alpha + depth + mesh.ply) in a fraction of a second without any
GL stack or the real corpus."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import trimesh
from PIL import Image

from core import cameras
from core.data.io import write_meta, write_view


def random_object(rng: np.random.Generator, max_parts: int = 3) -> list[dict]:
    parts = []
    for _ in range(rng.integers(1, max_parts + 1)):
        kind = "sphere" if rng.random() < 0.5 else "box"
        size = rng.uniform(0.15, 0.4, 3 if kind == "box" else 1)
        parts.append({"kind": kind, "center": rng.uniform(-0.3, 0.3, 3), "size": size,
                      "color": rng.uniform(0.1, 0.9, 3)})
    lo = np.min([p["center"] - (p["size"] if p["kind"] == "box" else p["size"][0]) for p in parts], axis=0)
    hi = np.max([p["center"] + (p["size"] if p["kind"] == "box" else p["size"][0]) for p in parts], axis=0)
    scale, mid = 1.0 / (hi - lo).max(), (hi + lo) / 2
    for p in parts:  # DESIGN.md normalisation: box centre at origin, largest extent 1
        p["center"] = (p["center"] - mid) * scale
        p["size"] = p["size"] * scale
    return parts


def _sdf(parts, x: torch.Tensor):
    ds = []
    for p in parts:
        c = torch.as_tensor(p["center"], dtype=x.dtype)
        if p["kind"] == "sphere":
            ds.append((x - c).norm(dim=-1) - float(p["size"][0]))
        else:
            q = (x - c).abs() - torch.as_tensor(p["size"], dtype=x.dtype)
            ds.append(q.clamp(min=0).norm(dim=-1) + q.amax(-1).clamp(max=0))
    d = torch.stack(ds, -1)
    return d.min(-1)


def render_views(parts, w2cs, size: int, fov_deg: float = cameras.DEFAULT_FOV_DEG):
    """[(RGB-on-white PIL, alpha [S,S], z-depth [S,S])] of an analytic object, all views in one batch."""
    K = cameras.intrinsics(fov_deg, size)
    rays = [cameras.get_rays(w, K, size) for w in w2cs]
    o = torch.cat([r[0].reshape(-1, 3) for r in rays]).double()
    d = torch.cat([r[1].reshape(-1, 3) for r in rays]).double()
    t = torch.full((o.shape[0],), 1.0, dtype=torch.float64)
    for _ in range(64):
        dist = _sdf(parts, o + d * t[:, None])[0]
        t = t + dist.clamp(min=0) * 0.9
    p = o + d * t[:, None]
    dist, which = _sdf(parts, p)
    hit = dist.abs() < 2e-3
    eps = 1e-4
    n = torch.stack([_sdf(parts, p + eps * e)[0] - _sdf(parts, p - eps * e)[0] for e in torch.eye(3, dtype=p.dtype)], -1)
    n = n / n.norm(dim=-1, keepdim=True).clamp(min=1e-9)
    light = torch.tensor([0.4, 0.3, 0.85], dtype=p.dtype)
    shade = 0.55 + 0.45 * (n @ (light / light.norm())).clamp(min=0)
    col = torch.as_tensor(np.stack([q["color"] for q in parts]))[which] * shade[:, None]
    rgb = torch.where(hit[:, None], col, torch.ones_like(col)).view(-1, size, size, 3)
    fwd = torch.as_tensor(np.stack([-np.asarray(w, dtype=np.float64)[2, :3] for w in w2cs]))
    zdepth = torch.where(hit, t * (d.view(len(w2cs), -1, 3) @ fwd[:, :, None]).reshape(-1), torch.zeros_like(t))
    zdepth, hit = zdepth.view(-1, size, size), hit.view(-1, size, size)
    return [(Image.fromarray((rgb[i].clamp(0, 1).numpy() * 255).round().astype(np.uint8)),
             hit[i].float().numpy(), zdepth[i].float().numpy()) for i in range(len(w2cs))]


def object_mesh(parts) -> trimesh.Trimesh:
    meshes = []
    for p in parts:
        if p["kind"] == "sphere":
            m = trimesh.creation.icosphere(subdivisions=3, radius=float(p["size"][0]))
        else:
            m = trimesh.creation.box(extents=2 * np.asarray(p["size"]))
        m.apply_translation(p["center"])
        meshes.append(m)
    return trimesh.util.concatenate(meshes)


def write_object(folder: str | Path, parts, n_views: int = 12, size: int = 64, elevation_deg: float = 20.0,
                 radius: float = 2.0, rng: np.random.Generator | None = None) -> Path:
    """One object folder: views evenly spaced in azimuth (view 000 at azimuth 0), varied elevation."""
    rng = rng or np.random.default_rng(0)
    folder = Path(folder)
    els = [elevation_deg] + [float(rng.uniform(-10, 45)) for _ in range(n_views - 1)]
    w2cs = [cameras.pose_from_spherical(360.0 * i / n_views, el, radius) for i, el in enumerate(els)]
    for i, (w2c, (img, alpha, depth)) in enumerate(zip(w2cs, render_views(parts, w2cs, size))):
        write_view(folder, i, img, w2c, alpha=alpha, depth=depth)
    write_meta(folder, {"fov_deg": cameras.DEFAULT_FOV_DEG, "image_size": size, "source": "toydata"})
    object_mesh(parts).export(folder / "mesh.ply")
    return folder


def write_dataset(root: str | Path, n_train: int, n_val: int, seed: int = 0, **kw) -> Path:
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for k in range(n):
            write_object(Path(root) / split / f"toy{k:05d}", random_object(rng), rng=rng, **kw)
    return Path(root)
