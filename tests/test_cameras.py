"""Pins every camera convention of DESIGN.md with hand-checked numbers."""
import math

import numpy as np
import pytest
import torch

from core import cameras as C


def test_azimuth0_elevation0_radius2_sits_on_plus_x_looking_at_minus_x():
    w2c = C.pose_from_spherical(0.0, 0.0, 2.0)
    assert w2c.shape == (3, 4) and w2c.dtype == np.float32
    np.testing.assert_allclose(C.camera_center(w2c), [2, 0, 0], atol=1e-6)
    R = w2c[:, :3]
    np.testing.assert_allclose(-R[2], [-1, 0, 0], atol=1e-6)  # looks along its -z = world -X
    np.testing.assert_allclose(R[1], [0, 0, 1], atol=1e-6)  # camera up = world +Z (no roll)
    np.testing.assert_allclose(R[0], [0, 1, 0], atol=1e-6)  # right = world +Y
    np.testing.assert_allclose(w2c[:, 3], [0, 0, -2], atol=1e-6)


def test_azimuth_is_counter_clockwise_from_above_and_elevation_lifts():
    np.testing.assert_allclose(C.camera_center(C.pose_from_spherical(90, 0, 1)), [0, 1, 0], atol=1e-6)
    c = C.camera_center(C.pose_from_spherical(0, 30, 2))
    np.testing.assert_allclose(c, [2 * math.cos(math.radians(30)), 0, 1.0], atol=1e-6)


@pytest.mark.parametrize("az,el,r", [(0, 0, 2), (37.5, 12, 1.7), (-120, -8, 2.2), (179, 44, 1.5), (90, 89, 3)])
def test_spherical_round_trip_and_rotation(az, el, r):
    w2c = C.pose_from_spherical(az, el, r)
    R = w2c[:, :3].astype(np.float64)
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-6)
    assert np.linalg.det(R) == pytest.approx(1.0, abs=1e-6)
    az2, el2, r2 = C.spherical_from_pose(w2c)
    assert (az2 - az + 180) % 360 - 180 == pytest.approx(0, abs=1e-4)
    assert el2 == pytest.approx(el, abs=1e-4) and r2 == pytest.approx(r, abs=1e-5)
    assert C.validate_w2c(w2c) == []
    # no roll: the camera's x axis is horizontal
    assert abs(R[0, 2]) < 1e-6


def test_pole_is_clamped_not_singular():
    w2c = C.pose_from_spherical(0, 90, 2)
    assert np.all(np.isfinite(w2c)) and C.spherical_from_pose(w2c)[1] == pytest.approx(89.9, abs=1e-3)


def test_bad_cameras_raise_clear_errors():
    with pytest.raises(C.CameraError, match="finite"):
        C.pose_from_spherical(float("nan"), 0, 2)
    with pytest.raises(C.CameraError, match="radius"):
        C.pose_from_spherical(0, 0, 0)
    with pytest.raises(C.CameraError, match="fov"):
        C.intrinsics(180.0, 64)


def test_relative_pose_encoding():
    src, tgt = C.pose_from_spherical(10, 20, 2.0), C.pose_from_spherical(100, 5, 1.5)
    d = C.relative_pose(src, tgt)
    # theta is the polar angle: 90-5 minus 90-20 = +15 deg
    np.testing.assert_allclose(d, [math.radians(15), 1.0, 0.0, -0.5], atol=1e-5)
    np.testing.assert_allclose(C.relative_pose(src, src), [0, 0, 1, 0], atol=1e-6)


def test_intrinsics_from_fov():
    K = C.intrinsics(90.0, 128)
    np.testing.assert_allclose(K, [[64, 0, 64], [0, 64, 64], [0, 0, 1]], atol=1e-4)
    assert C.fov_from_intrinsics(C.intrinsics(C.DEFAULT_FOV_DEG, 256)) == pytest.approx(C.DEFAULT_FOV_DEG)


def test_projection_up_is_up_and_right_is_right():
    w2c, K = C.pose_from_spherical(0, 0, 2), C.intrinsics(C.DEFAULT_FOV_DEG, 128)
    uv, depth = C.project(np.array([[0, 0, 0], [0, 0, 0.3], [0, 0.3, 0]]), w2c, K)
    np.testing.assert_allclose(uv[0], [64, 64], atol=1e-4)  # origin at the image centre
    assert depth[0] == pytest.approx(2.0)
    assert uv[1, 1] < 64 and uv[1, 0] == pytest.approx(64)  # above the origin -> above the centre (v down)
    assert uv[2, 0] > 64  # camera on +X sees +Y on its right
    f = K[0, 0]
    assert uv[1, 1] == pytest.approx(64 - f * 0.3 / 2.0, abs=1e-4)


def test_rays_hit_projected_points_and_plucker():
    w2c, K = C.pose_from_spherical(30, 15, 1.8), C.intrinsics(40.0, 16)
    o, d = C.get_rays(w2c, K, 16)
    assert o.shape == d.shape == (16, 16, 3)
    torch.testing.assert_close(d.norm(dim=-1), torch.ones(16, 16))
    # a point on the ray of pixel (row 3, col 11) projects back to that pixel centre
    p = (o[3, 11] + 1.3 * d[3, 11]).numpy()[None]
    uv, depth = C.project(p, w2c, K)
    np.testing.assert_allclose(uv[0], [11.5, 3.5], atol=1e-3)
    assert depth[0] > 0
    pl = C.plucker(w2c, K, 16)
    assert pl.shape == (6, 16, 16)
    # moment is orthogonal to direction and independent of the point chosen on the ray
    torch.testing.assert_close((pl[:3] * pl[3:]).sum(0), torch.zeros(16, 16), atol=1e-5, rtol=0)
    moved = torch.cross(o[3, 11] + 0.7 * d[3, 11], d[3, 11], dim=-1)
    torch.testing.assert_close(moved, pl[3:, 3, 11], atol=1e-5, rtol=0)


def test_orbit_is_counter_clockwise_and_evenly_spaced():
    poses = C.orbit(4, elevation_deg=10, radius=2, start_azimuth_deg=0)
    azs = [C.spherical_from_pose(p)[0] for p in poses]
    wrapped = [(a - e + 180) % 360 - 180 for a, e in zip(azs, [0, 90, 180, 270])]
    np.testing.assert_allclose(wrapped, 0, atol=1e-4)
    assert all(C.validate_w2c(p) == [] for p in poses)


def test_validate_w2c_reports_problems():
    w2c = C.pose_from_spherical(0, 0, 2)
    assert "shape" in C.validate_w2c(np.zeros((2, 2)))[0]
    mirrored = w2c.copy(); mirrored[0] *= -1
    assert any("mirror" in p for p in C.validate_w2c(mirrored))
    off = C.look_at([2, 0, 0], target=[0, 0.5, 0])
    assert any("look at the origin" in p for p in C.validate_w2c(off))
    assert any("finite" in p for p in C.validate_w2c(np.full((3, 4), np.nan)))
    skewed = np.eye(4)
    skewed[:3] = w2c
    skewed[3, 3] = 51.0
    assert any("bottom row" in p for p in C.validate_w2c(skewed))


def test_unproject_inverts_project_for_one_camera_and_one_per_point():
    rng = np.random.default_rng(0)
    pts = rng.uniform(-0.5, 0.5, (50, 3))
    w2cs = [C.pose_from_spherical(az, el, r) for az, el, r in ((30, 20, 2.0), (-120, -15, 1.6))]
    K = C.intrinsics(40.0, 64)
    for w in w2cs:
        uv, d = C.project(pts, w, K)
        assert np.allclose(C.unproject(uv, d, w, K), pts, atol=1e-6)
    per = np.stack([w2cs[i % 2] for i in range(len(pts))])
    uv = np.stack([C.project(p[None], w, K)[0][0] for p, w in zip(pts, per)])
    d = np.array([C.project(p[None], w, K)[1][0] for p, w in zip(pts, per)])
    assert np.allclose(C.unproject(uv, d, per, K), pts, atol=1e-6)
