"""Camera conventions of Vantage (see DESIGN.md), in one place.

World frame: right-handed, +Z up. Extrinsics are 3x4 world-to-camera ``[R|t]`` with
OpenGL/Blender camera axes (x right, y up, the camera looks along -z), so the camera
centre is ``C = -R^T t``. Spherical cameras look at the origin with no roll:
azimuth ``atan2(Cy, Cx)``, elevation ``asin(Cz/|C|)``, radius ``|C|``.

Pixels: ``(u, v)`` with the origin at the top-left *corner* of the image, u to the right,
v down; pixel ``(row i, col j)`` has its centre at ``(j + 0.5, i + 0.5)``. ``K`` is the
usual OpenCV-style matrix ``[[f, 0, W/2], [0, f, H/2], [0, 0, 1]]`` applied to the
camera-space point with y and z flipped (OpenGL -> OpenCV).
"""
from __future__ import annotations

import math

import numpy as np
import torch

DEFAULT_FOV_DEG = 49.1  # vertical FOV of a 35 mm lens on a 32 mm sensor
WORLD_UP = np.array([0.0, 0.0, 1.0])
_MAX_ELEVATION_DEG = 89.9  # look-at with world up is singular at the poles


class CameraError(ValueError):
    """A camera that cannot be used (not finite, not a rotation, zero radius...)."""


def _finite(name: str, *values: float) -> None:
    for v in values:
        if not np.all(np.isfinite(v)):
            raise CameraError(f"{name} must be finite, got {v!r}")


def camera_center(w2c: np.ndarray) -> np.ndarray:
    """Camera centre ``C = -R^T t`` of a 3x4 (or 4x4) world-to-camera matrix."""
    w2c = np.asarray(w2c, dtype=np.float64)
    R, t = w2c[:3, :3], w2c[:3, 3]
    return -R.T @ t


def at_distance(w2c, radius: float) -> np.ndarray:
    """The same camera slid along its ray through the origin (the object's centre) to ``radius``:
    same rotation, ``t`` scaled, so the origin projects to the same pixel."""
    a = np.asarray(w2c, dtype=np.float64)[:3, :4].copy()
    r = float(np.linalg.norm(camera_center(a)))
    if not (r > 1e-9 and math.isfinite(radius) and radius > 0):
        raise CameraError(f"cannot move a camera at distance {r:.3g} to distance {radius!r}")
    a[:, 3] *= radius / r
    return a


def at_source_distance(source_w2c, target_w2c) -> tuple[np.ndarray, float]:
    """``target_w2c`` slid to the source's distance, and the image scale r_source / r_target that
    turns the view from there into the target's (``NVSConfig.distance_zoom``)."""
    r_s = float(np.linalg.norm(camera_center(source_w2c)))
    r_t = float(np.linalg.norm(camera_center(target_w2c)))
    return at_distance(target_w2c, r_s), r_s / r_t


def origin_ndc(w2c, fov_deg: float = DEFAULT_FOV_DEG) -> tuple[float, float]:
    """Where the world origin projects, in the [-1, 1] image coordinates of ``grid_sample``
    (x right, y down; (0, 0) = the image centre, which it is for every look-at camera).
    A camera with the origin behind it gets the centre."""
    t = np.asarray(w2c, dtype=np.float64)[:3, 3]
    depth = -t[2]
    if depth <= 1e-9:
        return 0.0, 0.0
    k = math.tan(math.radians(fov_deg) / 2) * depth
    return float(t[0] / k), float(-t[1] / k)


def look_at(center: np.ndarray, target: np.ndarray = (0.0, 0.0, 0.0), up: np.ndarray = WORLD_UP) -> np.ndarray:
    """3x4 world-to-camera matrix of a camera at ``center`` looking at ``target`` with no roll."""
    center = np.asarray(center, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    _finite("camera centre", center)
    back = center - target  # camera +z points away from what it looks at
    norm = np.linalg.norm(back)
    if norm < 1e-9:
        raise CameraError("camera centre coincides with its target")
    z = back / norm
    x = np.cross(np.asarray(up, dtype=np.float64), z)
    if np.linalg.norm(x) < 1e-9:  # looking straight up or down: pick +Y as "up" instead
        x = np.cross(np.array([0.0, 1.0, 0.0]), z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])  # rows: camera axes expressed in world coordinates
    return np.concatenate([R, (-R @ center)[:, None]], axis=1).astype(np.float32)


def spherical_to_center(azimuth_deg: float, elevation_deg: float, radius: float) -> np.ndarray:
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    return radius * np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])


def pose_from_spherical(azimuth_deg: float, elevation_deg: float, radius: float) -> np.ndarray:
    """World-to-camera 3x4 matrix of a camera on a sphere looking at the origin.

    Elevation is clamped to +-89.9 deg (the look-at is undefined at the poles)."""
    _finite("azimuth/elevation/radius", azimuth_deg, elevation_deg, radius)
    if radius <= 0:
        raise CameraError(f"radius must be positive, got {radius}")
    el = float(np.clip(elevation_deg, -_MAX_ELEVATION_DEG, _MAX_ELEVATION_DEG))
    return look_at(spherical_to_center(azimuth_deg, el, radius))


def spherical_from_pose(w2c: np.ndarray) -> tuple[float, float, float]:
    """(azimuth_deg, elevation_deg, radius) of a camera's centre; azimuth in (-180, 180]."""
    C = camera_center(w2c)
    r = float(np.linalg.norm(C))
    if r < 1e-9:
        raise CameraError("camera centre is at the origin")
    az = math.degrees(math.atan2(C[1], C[0]))
    el = math.degrees(math.asin(float(np.clip(C[2] / r, -1.0, 1.0))))
    return az, el, r


def relative_pose(source_w2c: np.ndarray, target_w2c: np.ndarray) -> np.ndarray:
    """Zero123/ArchonView conditioning ``[d_theta, sin d_phi, cos d_phi, d_r]``, target minus source.

    theta is the polar angle (90 deg - elevation), phi the azimuth, both in radians."""
    az_s, el_s, r_s = spherical_from_pose(source_w2c)
    az_t, el_t, r_t = spherical_from_pose(target_w2c)
    d_theta = math.radians((90.0 - el_t) - (90.0 - el_s))
    d_phi = math.radians(az_t - az_s)
    return np.array([d_theta, math.sin(d_phi), math.cos(d_phi), r_t - r_s], dtype=np.float32)


def relative_pose_spherical(source: tuple[float, float, float], target: tuple[float, float, float]) -> np.ndarray:
    """Same encoding from (azimuth_deg, elevation_deg, radius) tuples."""
    return relative_pose(pose_from_spherical(*source), pose_from_spherical(*target))


# The camera a user asks for (the app's sliders and API, the photo command line): one documented
# range per knob, and one rule: a value that is not a finite number or lies outside is refused.
VIEW_RANGES: dict[str, tuple[float, float]] = {
    "azimuth": (-180.0, 180.0),        # degrees, counter-clockwise seen from above, 0 = the photo's side
    "elevation": (-60.0, 80.0),        # degrees above the object's equator: the photo's and a target's
    "distance": (1.2, 4.0),            # camera distance; the object's largest extent is 1
}


def check_view_knob(name: str, value, error: type[ValueError] = CameraError, label: str | None = None) -> float:
    """``value`` as a float when it lies in ``VIEW_RANGES[name]``, else ``error`` saying the range."""
    from core.ranges import checked
    return checked(label or name, value, *VIEW_RANGES[name], error=error)


def check_fov(fov_deg, name: str = "fov_deg", error: type[ValueError] = CameraError) -> float:
    """A vertical field of view in degrees as a float, or ``error`` (a CameraError) naming ``name``."""
    if isinstance(fov_deg, bool) or not isinstance(fov_deg, (int, float, np.integer, np.floating)) \
            or not (math.isfinite(fov_deg) and 0.0 < fov_deg < 180.0):
        raise error(f"{name} must be a finite number of degrees in (0, 180), got {fov_deg!r}")
    return float(fov_deg)


def intrinsics(fov_deg: float = DEFAULT_FOV_DEG, size: int | tuple[int, int] = 256) -> np.ndarray:
    """3x3 pinhole matrix for a vertical FOV; square pixels, principal point at the centre."""
    fov_deg = check_fov(fov_deg, "fov")
    h, w = (size, size) if isinstance(size, int) else size
    f = 0.5 * h / math.tan(math.radians(fov_deg) / 2)
    return np.array([[f, 0.0, w / 2], [0.0, f, h / 2], [0.0, 0.0, 1.0]], dtype=np.float32)


def fov_from_intrinsics(K: np.ndarray) -> float:
    K = np.asarray(K, dtype=np.float64)
    return math.degrees(2 * math.atan(K[1, 2] / K[1, 1]))


def project(points: np.ndarray, w2c: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project world points [N,3] to pixels [N,2] (u right, v down) and return their depth
    along the viewing direction [N] (positive in front of the camera)."""
    points = np.asarray(points, dtype=np.float64)
    w2c = np.asarray(w2c, dtype=np.float64)
    cam = points @ w2c[:3, :3].T + w2c[:3, 3]
    depth = -cam[:, 2]
    cv = np.stack([cam[:, 0], -cam[:, 1], depth], axis=1)  # OpenGL -> OpenCV axes
    uvw = cv @ np.asarray(K, dtype=np.float64).T
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = uvw[:, :2] / uvw[:, 2:3]
    return uv, depth


def unproject(uv: np.ndarray, depth: np.ndarray, w2c: np.ndarray, K: np.ndarray) -> np.ndarray:
    """The inverse of ``project``: pixels [N,2] (u right, v down) at depth [N] along the viewing
    direction -> world points [N,3]. ``w2c`` is one camera [3,4] or one per point [N,3,4]."""
    uv, depth = np.asarray(uv, dtype=np.float64), np.asarray(depth, dtype=np.float64)
    K, w2c = np.asarray(K, dtype=np.float64), np.asarray(w2c, dtype=np.float64)
    x = (uv[:, 0] - K[0, 2]) / K[0, 0] * depth
    y = (uv[:, 1] - K[1, 2]) / K[1, 1] * depth
    cam = np.stack([x, -y, -depth], axis=1)  # OpenCV -> OpenGL axes
    R, t = w2c[..., :3, :3], w2c[..., :3, 3]
    return np.einsum("...ji,...j->...i", R, cam - t)  # R^T (p_cam - t)


def get_rays(w2c, K, size: int | tuple[int, int], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel ray origins and unit directions in world space, each [H, W, 3] float32."""
    h, w = (size, size) if isinstance(size, int) else size
    w2c = torch.as_tensor(np.asarray(w2c, dtype=np.float32), device=device)
    K = torch.as_tensor(np.asarray(K, dtype=np.float32), device=device)
    R, t = w2c[:3, :3], w2c[:3, 3]
    j, i = torch.meshgrid(torch.arange(w, device=device) + 0.5, torch.arange(h, device=device) + 0.5, indexing="xy")
    dirs_cam = torch.stack([(j - K[0, 2]) / K[0, 0], -(i - K[1, 2]) / K[1, 1], -torch.ones_like(j)], dim=-1)
    dirs = dirs_cam @ R  # R^T d for each pixel (row-vector form)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    origins = (-R.T @ t).expand_as(dirs)
    return origins.contiguous(), dirs


def plucker(w2c, K, size: int | tuple[int, int], device=None) -> torch.Tensor:
    """Plücker ray embedding [6, H, W]: (d, o x d) with unit d."""
    o, d = get_rays(w2c, K, size, device)
    return torch.cat([d, torch.cross(o, d, dim=-1)], dim=-1).permute(2, 0, 1).contiguous()


def orbit(n: int, elevation_deg: float = 20.0, radius: float = 2.0, start_azimuth_deg: float = 0.0) -> list[np.ndarray]:
    """``n`` world-to-camera matrices evenly spaced in azimuth, counter-clockwise from above."""
    if n < 1:
        raise CameraError(f"orbit needs at least one view, got {n}")
    return [pose_from_spherical(start_azimuth_deg + 360.0 * k / n, elevation_deg, radius) for k in range(n)]


def validate_w2c(w2c, *, tol: float = 1e-3, look_at_tol_deg: float = 2.0) -> list[str]:
    """Problems with a world-to-camera matrix under the conventions; empty when it is fine."""
    a = np.asarray(w2c)
    if a.shape not in ((3, 4), (4, 4)):
        return [f"shape {a.shape}, expected (3, 4)"]
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)):
        return ["not finite"]
    problems = []
    if a.shape == (4, 4) and np.abs(a[3] - (0, 0, 0, 1)).max() > tol:
        problems.append(f"bottom row {a[3].tolist()} is not [0, 0, 0, 1] (not a rigid transform)")
    R = a[:3, :3]
    if np.abs(R @ R.T - np.eye(3)).max() > tol:
        problems.append("rotation is not orthonormal")
    elif np.linalg.det(R) < 0:
        problems.append("rotation has determinant -1 (a mirror)")
    C = camera_center(a)
    if np.linalg.norm(C) < 1e-6:
        problems.append("camera centre at the origin")
    elif not problems:
        forward = -R[2]  # the camera looks along its -z axis
        cosang = float(np.dot(forward, -C / np.linalg.norm(C)))
        ang = math.degrees(math.acos(np.clip(cosang, -1.0, 1.0)))
        if ang > look_at_tol_deg:
            problems.append(f"camera does not look at the origin (off by {ang:.1f} deg)")
    return problems
