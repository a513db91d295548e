"""The photo on the object: surfaces an input view saw carry that view's own pixels.

The field's colour is a 2-3 px-blurred guess (its planes hold 32-64 texels); the input photo
is exact where it saw the surface. ``PhotoProjector`` projects surface points into each input
view, keeps the ones the view actually sees (the point is no farther than the field's own depth
along that view's ray: occlusion-tested), weights each view by how squarely it saw the surface
(no weight at grazing angles, full weight facing it) and by the photo's object mask, and blends
the photos over the field colour with that weight. The mesh export (per-vertex colour on the
marching-cubes mesh) and every render (``TriplaneScene.render``: orbit, eval) use the same
projector, so the GLB and the orbit show the same object.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from core import cameras, metrics
from core.data.io import composite_on_white, resize_area

PHOTO_MAX_SIDE = 512     # photos are kept at most this size for projection (the detail a 2 s lift can use)
GRAZING_COS = (0.15, 0.5)  # weight 0 below the first cosine (view nearly edge-on), 1 above the second
DEPTH_TOLERANCE = 0.04   # world units (objects span ~1): a point this far behind the view's depth is hidden


@dataclass
class InputPhoto:
    """One input view as the projector needs it: the photo and its object mask at projection
    resolution, the camera, and the field's depth seen from that camera (for the occlusion test)."""
    rgb: torch.Tensor        # [3, H, W] in [0, 1]
    mask: torch.Tensor       # [1, H, W] in [0, 1]
    w2c: np.ndarray          # 3x4 world-to-camera
    fov_deg: float
    depth: torch.Tensor | None = None   # [1, h, w] ray distance to the field's surface (inf where none)


def photo_tensors(image: Image.Image, max_side: int = PHOTO_MAX_SIDE) -> tuple[torch.Tensor, torch.Tensor]:
    """A PIL photo -> (rgb [3,S,S] on white, mask [1,S,S]); the mask is the alpha channel where the
    photo has one, else "not white" (what the app's preprocessing leaves around the object)."""
    side = min(max_side, max(image.size))
    if image.mode in ("RGBA", "LA"):
        alpha = np.asarray(resize_area(image.getchannel("A"), side), np.float32) / 255
    else:
        alpha = None
    on_white = resize_area(composite_on_white(image), side)
    if alpha is None:
        alpha = metrics.object_mask(on_white).astype(np.float32)
    rgb = np.asarray(on_white, np.float32) / 255
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous(), torch.from_numpy(alpha)[None]


def _grid(points: torch.Tensor, w2c: np.ndarray, fov_deg: float):
    """World points [N,3] -> grid_sample coordinates [N,2] in the view (x right, y down, [-1, 1])
    and their distance to the camera centre [N] (the renders' ray distance); in front flag [N]."""
    w2c_t = torch.as_tensor(np.asarray(w2c, np.float32), device=points.device)
    cam = points @ w2c_t[:3, :3].T + w2c_t[:3, 3]
    z = -cam[:, 2]
    k = float(np.tan(np.radians(fov_deg) / 2))
    zc = z.clamp(min=1e-6)
    uv = torch.stack([cam[:, 0] / (zc * k), -cam[:, 1] / (zc * k)], -1)
    return uv, cam.norm(dim=-1), z > 1e-3


def _sample(img: torch.Tensor, uv: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """img [C,H,W], uv [N,2] -> [N,C] (outside the frame: zeros)."""
    out = F.grid_sample(img[None].float(), uv[None, None].float(), mode=mode, padding_mode="zeros",
                        align_corners=False)
    return out[0, :, 0].T


def grazing_weight(cos: torch.Tensor, lo: float = GRAZING_COS[0], hi: float = GRAZING_COS[1]) -> torch.Tensor:
    """0 for surfaces seen edge-on (or from behind), rising smoothly to 1 for surfaces facing the view."""
    t = ((cos - lo) / (hi - lo)).clamp(0, 1)
    return t * t * (3 - 2 * t)


class PhotoProjector:
    """Blends the input photos over field colours at surface points (world frame, torch tensors)."""

    def __init__(self, photos: list[InputPhoto], tolerance: float = DEPTH_TOLERANCE):
        self.photos, self.tolerance = photos, tolerance

    def weights(self, points: torch.Tensor, normals: torch.Tensor):
        """Per view: (colour [N,3], weight [N]) of every surface point with unit outward normal."""
        out = []
        for ph in self.photos:
            uv, dist, front = _grid(points, ph.w2c, ph.fov_deg)
            centre = torch.as_tensor(cameras.camera_center(ph.w2c), dtype=points.dtype, device=points.device)
            to_cam = F.normalize(centre - points, dim=-1)
            w = grazing_weight((normals * to_cam).sum(-1)) * front.float()
            w = w * (uv.abs() <= 1).all(-1).float() * _sample(ph.mask, uv)[:, 0]
            if ph.depth is not None:  # occlusion: the view's first surface along this ray is (about) here
                seen = _sample(ph.depth, uv, mode="nearest")[:, 0]
                w = w * (dist <= seen + self.tolerance).float()
            out.append((_sample(ph.rgb, uv), w))
        return out

    def blend(self, points: torch.Tensor, normals: torch.Tensor, colours: torch.Tensor) -> torch.Tensor:
        """Field colours [N,3] -> colours with the photos' pixels where a photo saw the surface."""
        if not self.photos or len(points) == 0:
            return colours
        per = self.weights(points, normals)
        wsum = sum(w for _, w in per)
        photo = sum(c * w[:, None] for c, w in per) / wsum.clamp(min=1e-6)[:, None]
        strength = torch.stack([w for _, w in per]).amax(0)[:, None]
        return colours * (1 - strength) + photo * strength


def normals_from_depth(points: torch.Tensor, opacity: torch.Tensor, toward: torch.Tensor) -> torch.Tensor:
    """Unit normals [H,W,3] of a rendered surface from its per-pixel points [H,W,3]: central
    differences across the image, oriented toward the viewer (``toward``: unit directions to the
    camera [H,W,3]); pixels without a surface neighbour get the view direction itself."""
    p = F.pad(points.permute(2, 0, 1)[None], (1, 1, 1, 1), mode="replicate")[0].permute(1, 2, 0)
    dx = p[1:-1, 2:] - p[1:-1, :-2]
    dy = p[2:, 1:-1] - p[:-2, 1:-1]
    n = torch.cross(dx, dy, dim=-1)
    ok = (n.norm(dim=-1) > 1e-9) & (opacity > 0.5)
    n = F.normalize(n, dim=-1)
    n = torch.where(((n * toward).sum(-1) < 0)[..., None], -n, n)
    return torch.where(ok[..., None], n, toward)
