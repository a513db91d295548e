"""Per-token camera rays (Plücker coordinates) for the NVS transformer's ``ray_embed`` option.

ArchonView conditions on the camera only through one global vector (relative pose in AdaLN
and the start token). Our small CPU-trained models learned to use that vector as a switch
between "copy the source" (zero pose) and "any other camera", and not for where the object
lands (teacher-forced loss with the poses shuffled within a batch was within 0.3 % of the
true poses'). A ray per token tells each source and target token where it looks, so which
source tokens a target token should read is a matter of comparing rays in attention.

Frame: the world (z up) rotated about z so the *source* camera sits at azimuth 0. The rays
then carry the relative azimuth and both elevations and radii, not the source's arbitrary
azimuth, and the source's rays depend only on its elevation, radius and FOV.
"""
from __future__ import annotations

import math

import numpy as np

from core import cameras


def _rot_z(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def plucker_grid(w2c: np.ndarray, fov_deg: float, pn: int, frame: np.ndarray) -> np.ndarray:
    """Rays through the centres of a pn x pn grid, row-major, as [pn*pn, 6] = (d, o x d) in ``frame``
    (a 3x3 rotation applied to world vectors)."""
    w2c = np.asarray(w2c, dtype=np.float64)
    R, t = w2c[:3, :3], w2c[:3, 3]
    K = cameras.intrinsics(fov_deg, pn).astype(np.float64)
    j, i = np.meshgrid(np.arange(pn) + 0.5, np.arange(pn) + 0.5, indexing="xy")
    d_cam = np.stack([(j - K[0, 2]) / K[0, 0], -(i - K[1, 2]) / K[1, 1], -np.ones_like(j)], -1).reshape(-1, 3)
    d = d_cam @ R  # camera -> world: R^T d, row-vector form
    d = (d / np.linalg.norm(d, axis=1, keepdims=True)) @ frame.T
    o = np.broadcast_to((-R.T @ t) @ frame.T, d.shape)
    return np.concatenate([d, np.cross(o, d)], axis=1)


def token_rays(w2c: np.ndarray, fov_deg: float, patch_nums, source_w2c: np.ndarray) -> np.ndarray:
    """[L, 6] float32 rays of every token of every scale (coarse first) of a view seen by camera
    ``w2c``, in the frame where ``source_w2c`` has azimuth 0."""
    az, _, _ = cameras.spherical_from_pose(source_w2c)
    frame = _rot_z(-az)
    return np.concatenate([plucker_grid(w2c, fov_deg, pn, frame) for pn in patch_nums]).astype(np.float32)
