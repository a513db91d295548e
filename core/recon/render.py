"""Volume rendering of a triplane field with nerfacc's math, white background.

nerfacc's samplers are CUDA kernels, but its rendering functions work on dense
``[n_rays, n_samples]`` tensors on any device. So on CPU (and in training) rays are cut
to the field's box and sampled uniformly (stratified while training) by ``dense_render``;
on CUDA ``occgrid_render`` lets nerfacc's ``OccGridEstimator`` skip empty space, using an
occupancy grid filled from the scene's own density grid. Both work in chunks of rays so
memory stays bounded whatever the image size.
"""
from __future__ import annotations

from typing import Callable

import nerfacc
import torch

FieldFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # pts [..., N, 3] -> sigma [..., N], rgb [..., N, 3]


class RenderOOMError(RuntimeError):
    """Rendering ran out of device memory even with the smallest chunk of rays."""


def is_oom(err: BaseException) -> bool:
    oom_type = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", ())
    return bool(oom_type and isinstance(err, oom_type)) or (isinstance(err, RuntimeError) and "out of memory" in str(err))


def with_smaller_chunks(render: Callable[[int], tuple], chunk: int, floor: int = 256):
    """Call ``render(chunk)``; on an out-of-memory error free the cache and retry with half
    the rays per chunk, down to ``floor``, then raise a RenderOOMError that says what to do.
    A big chunk is fastest, but another user's work may hold the memory it needs right now."""
    while True:
        try:
            return render(chunk)
        except (RuntimeError, MemoryError) as e:
            if not is_oom(e):
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if chunk <= floor:
                raise RenderOOMError(f"out of memory while rendering, even with {chunk} rays per chunk: "
                                     "lower the render size or free the device") from e
            chunk = max(floor, chunk // 2)


def ray_box(origins: torch.Tensor, dirs: torch.Tensor, radius: float):
    """Entry/exit distances of rays through the cube [-radius, radius]^3 and whether they hit it."""
    inv = 1.0 / torch.where(dirs.abs() < 1e-9, torch.full_like(dirs, 1e-9), dirs)
    t0, t1 = (-radius - origins) * inv, (radius - origins) * inv
    near = torch.minimum(t0, t1).amax(-1).clamp(min=0.0)
    far = torch.maximum(t0, t1).amin(-1)
    hit = far > near
    return near, torch.where(hit, far, near), hit


def dense_samples(near: torch.Tensor, far: torch.Tensor, n: int, stratified: bool = False,
                  jitter: torch.Tensor | None = None):
    """n equal intervals between near and far (jittered as a whole per ray when stratified, by
    ``jitter`` [...] in [0, 1) when given: drawn with the batch, the same however it is split)."""
    u = torch.linspace(0.0, 1.0, n + 1, device=near.device)
    if stratified or jitter is not None:
        j = torch.rand(*near.shape, device=near.device) if jitter is None else jitter.to(near)
        u = (u[:-1] + j[..., None] / n).clamp(max=1.0)
        u = torch.cat([u, u[..., -1:] + 1.0 / n], dim=-1).clamp(max=1.0)
    else:
        u = u.expand(*near.shape, n + 1)
    t = near[..., None] + (far - near)[..., None] * u
    return t[..., :-1], t[..., 1:]


def composite(t_starts, t_ends, sigmas, rgbs, background: float = 1.0):
    """nerfacc weights from density on dense samples -> rgb (on background), opacity, depth."""
    shape = t_starts.shape
    ts, te, sg = t_starts.reshape(-1, shape[-1]), t_ends.reshape(-1, shape[-1]), sigmas.reshape(-1, shape[-1])
    weights, _, _ = nerfacc.render_weight_from_density(ts, te, sg)
    rgb = nerfacc.accumulate_along_rays(weights, rgbs.reshape(-1, shape[-1], 3))
    opacity = nerfacc.accumulate_along_rays(weights, None)
    depth = nerfacc.accumulate_along_rays(weights, ((ts + te) / 2)[..., None])
    rgb = rgb + background * (1.0 - opacity)
    return rgb.view(*shape[:-1], 3), opacity.view(shape[:-1]), depth.view(shape[:-1])


def dense_render(field: FieldFn, origins: torch.Tensor, dirs: torch.Tensor, radius: float, n_samples: int,
                 stratified: bool = False, chunk: int = 8192, jitter: torch.Tensor | None = None):
    """Render rays [..., R, 3] (leading dims are passed to ``field`` unchanged, e.g. a batch).

    Returns rgb [..., R, 3] on white, opacity [..., R], depth (ray distance) [..., R]."""
    near, far, _ = ray_box(origins, dirs, radius)
    outs = []
    R = origins.shape[-2]
    for s in range(0, R, chunk):
        o, d = origins[..., s:s + chunk, :], dirs[..., s:s + chunk, :]
        nr, fr = near[..., s:s + chunk], far[..., s:s + chunk]
        jr = None if jitter is None else jitter[..., s:s + chunk]
        ts, te = dense_samples(nr, fr, n_samples, stratified, jr)
        mid = (ts + te) / 2
        pts = o[..., None, :] + d[..., None, :] * mid[..., None]  # [..., r, n, 3]
        sigma, rgb = field(pts.flatten(-3, -2))
        sigma = sigma.view(mid.shape)
        rgb = rgb.view(*mid.shape, 3)
        outs.append(composite(ts, te, sigma, rgb))
    rgb, opacity, depth = zip(*outs)
    return torch.cat(rgb, -2), torch.cat(opacity, -1), torch.cat(depth, -1)


class OccupancyRenderer:
    """CUDA path: nerfacc's OccGridEstimator over the box, its grid set from a density grid."""

    def __init__(self, density_grid: torch.Tensor, radius: float, threshold: float):
        res = density_grid.shape[-1]
        self.estimator = nerfacc.OccGridEstimator([-radius] * 3 + [radius] * 3, resolution=res, levels=1)
        self.estimator = self.estimator.to(density_grid.device)
        occ = (density_grid > threshold).float()[None, None]
        occ = torch.nn.functional.max_pool3d(occ, 3, 1, 1)[0, 0] > 0  # dilate: never cut a thin surface
        self.estimator.binaries = occ.view(self.estimator.binaries.shape)
        self.radius = radius

    @torch.no_grad()
    def render(self, field: FieldFn, origins: torch.Tensor, dirs: torch.Tensor, n_samples: int, chunk: int = 65536):
        step = 2 * 3 ** 0.5 * self.radius / n_samples
        outs = []
        for s in range(0, origins.shape[0], chunk):
            o, d = origins[s:s + chunk], dirs[s:s + chunk]

            def sigma_fn(ts, te, ri):
                return field((o[ri] + d[ri] * ((ts + te) / 2)[:, None])[None])[0][0]

            def rgb_sigma_fn(ts, te, ri):
                sigma, rgb = field((o[ri] + d[ri] * ((ts + te) / 2)[:, None])[None])
                return rgb[0], sigma[0]

            ri, ts, te = self.estimator.sampling(o, d, sigma_fn=sigma_fn, render_step_size=step,
                                                 stratified=False, alpha_thre=1e-3)
            rgb, opacity, depth, _ = nerfacc.rendering(ts, te, ri, n_rays=o.shape[0], rgb_sigma_fn=rgb_sigma_fn,
                                                       render_bkgd=torch.ones(3, device=o.device))
            outs.append((rgb, opacity[:, 0], depth[:, 0]))
        return tuple(torch.cat(x) for x in zip(*outs))
