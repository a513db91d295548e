"""TripoSR-compatible reconstruction: the frame mapping (TripoSR's camera geometry written out
here from its public code, against ours), an asymmetric known field through the scene's render
and GLB export, the grey background, and the importer on a tiny stand-in of model.ckpt."""
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
import yaml

from core import cameras
from core.recon.model import TriplaneState, canonical_rotation
from core.recon.scene import TriplaneScene
from core.recon.triposr import TRIPOSR_FROM_CANONICAL, TripoSRModel, grey_background, triposr_camera
from core.recon.triposr_config import TripoSRConfig

sys.path.insert(0, str(Path(__file__).parent))
from published_standins import TINY_TRIPOSR_YAML, triposr_state_dict  # noqa: E402

torch.set_num_threads(1)

# asymmetric object in TripoSR's frame: a body, a red knob toward the photo's camera (+X), a green
# one to the image's right (+Y), a blue one on top (+Z)
BLOBS = [((0.0, 0.0, 0.0), 0.22, (0.8, 0.8, 0.8)), ((0.3, 0.0, 0.0), 0.1, (1.0, 0.0, 0.0)),
         ((0.0, 0.3, 0.0), 0.1, (0.0, 1.0, 0.0)), ((0.0, 0.0, 0.3), 0.1, (0.0, 0.0, 1.0))]


def field_triposr(p: torch.Tensor):
    """Density (TripoSR's units) and colour (the nearest blob's, so surface points have it) at points
    in TripoSR's frame."""
    gap = torch.stack([(p - torch.tensor(c)).norm(dim=-1) - r for c, r, _ in BLOBS], -1)   # < 0 inside
    dens = torch.where(gap.amin(-1) < 0, 400.0, 0.0)
    rgb = torch.tensor([col for _, _, col in BLOBS])[gap.argmin(-1)]
    return dens, rgb


class KnownField:
    """Stands in for TripoSRModel in a TriplaneScene: same config, same query contract, the field
    defined in TripoSR's frame and reached through ``TRIPOSR_FROM_CANONICAL``."""

    def __init__(self):
        self.config = TripoSRConfig(n_samples=96, mc_query_resolution=64)

    def query(self, state, pts, with_rgb=True):
        p = pts @ torch.from_numpy(TRIPOSR_FROM_CANONICAL).T
        dens, rgb = field_triposr(p)
        return dens * self.config.density_scale, (rgb if with_rgb else None)


def triposr_render(size=48, fov=40.0, n=256):
    """The field as TripoSR renders it from its own camera (azimuth 0, elevation 0, distance 1.9):
    its ray geometry (pixel centres, y flipped, -z forward) and its compositing (step 1/n per ray)."""
    c2w = triposr_camera(0.0, 0.0, 1.9)
    f = 0.5 * size / math.tan(math.radians(fov) / 2)
    i, j = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="xy")
    d = np.stack([(i - size / 2) / f, -(j - size / 2) / f, -np.ones_like(i)], -1) @ c2w[:, :3].T
    d = torch.tensor(d / np.linalg.norm(d, axis=-1, keepdims=True), dtype=torch.float32).reshape(-1, 3)
    o = torch.tensor(c2w[:, 3], dtype=torch.float32).expand_as(d)
    t = torch.linspace(1.9 - 0.87, 1.9 + 0.87, n)
    dens, rgb = field_triposr(o[:, None] + d[:, None] * t[None, :, None])
    alpha = 1 - torch.exp(-dens / n)
    w = alpha * torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha[:, :-1]], 1), 1)
    return ((w[..., None] * rgb).sum(1) + 1 - w.sum(1, keepdim=True)).view(size, size, 3)


def centroid(img: torch.Tensor, channel: int) -> np.ndarray:
    """(column, row) centre of the pixels where ``channel`` dominates (one knob's colour)."""
    others = [c for c in range(3) if c != channel]
    m = (img[..., channel] > 0.6) & (img[..., others].amax(-1) < 0.3)
    assert m.sum() > 3, f"knob of channel {channel} not visible"
    rows, cols = torch.nonzero(m, as_tuple=True)
    return np.array([cols.float().mean().item(), rows.float().mean().item()])


def test_triposr_camera_is_ours():
    """TripoSR's render camera and ours at the same (azimuth, elevation, distance) are the same
    camera: axes (right, up, back) and centre; so TripoSR's frame is our canonical frame."""
    assert np.array_equal(TRIPOSR_FROM_CANONICAL, np.eye(3))
    for az, el, r in ((0, 0, 1.9), (70, 15, 2.0), (-120, -30, 1.5)):
        c2w = triposr_camera(el, az, r)
        w2c = cameras.pose_from_spherical(az, el, r)
        assert np.allclose(c2w[:, :3], w2c[:3, :3].T, atol=1e-6)
        assert np.allclose(c2w[:, 3], cameras.camera_center(w2c), atol=1e-5)
    # image right is +Y and image up is +Z for the photo's camera
    c2w = triposr_camera(0.0, 0.0, 1.9)
    assert np.allclose(c2w[:, 0], [0, 1, 0]) and np.allclose(c2w[:, 1], [0, 0, 1]) and np.allclose(c2w[:, 2], [1, 0, 0])


@pytest.mark.parametrize("photo_azimuth", [0.0, 70.0])
def test_known_field_renders_where_triposr_shows_it(photo_azimuth):
    """The scene, rendered from the photo's camera in the world, shows each knob where TripoSR's
    own render of its input view does (a mirror or a wrong rotation would move red/green/blue)."""
    w2c = cameras.pose_from_spherical(photo_azimuth, 0.0, 1.9)
    scene = TriplaneScene(KnownField(), TriplaneState(torch.zeros(1, 3, 1, 2, 2)), canonical_rotation(w2c), fov_deg=40.0)
    ours = scene.render_tensors(w2c, 48, 40.0)[0]
    ref = triposr_render(48)
    for ch in range(3):
        assert np.abs(centroid(ours, ch) - centroid(ref, ch)).max() < 1.5, ch
    # in the world, the red knob points at the photo's camera and the blue one up
    toward = cameras.camera_center(w2c) / np.linalg.norm(cameras.camera_center(w2c))
    dens, rgb = scene.query_world(np.stack([0.3 * toward, [0, 0, 0.3]]))
    assert (dens > 1).all() and rgb[0].argmax() == 0 and rgb[1].argmax() == 2


def test_known_field_glb_orientation(tmp_path):
    """Photo at azimuth 0: in the GLB (+Y up), the knob facing the photo's camera faces the glTF
    viewer's default camera (+Z), the top knob is up (+Y) and the image's right is +X."""
    from core.mesh import export_glb
    w2c = cameras.pose_from_spherical(0.0, 0.0, 1.9)
    scene = TriplaneScene(KnownField(), TriplaneState(torch.zeros(1, 3, 1, 2, 2)), canonical_rotation(w2c), fov_deg=40.0)
    mesh = scene.extract_mesh(resolution=48, keep_largest=False)
    export_glb(mesh, tmp_path / "o.glb")
    g = trimesh.load(tmp_path / "o.glb", force="mesh")
    v, col = np.asarray(g.vertices), np.asarray(g.visual.vertex_colors)[:, :3].astype(int)
    for ch, axis in ((0, 2), (1, 0), (2, 1)):   # red -> +Z, green -> +X, blue -> +Y
        others = [c for c in range(3) if c != ch]
        sel = (col[:, ch] > 150) & (col[:, others].max(1) < 90)
        centre = v[sel].mean(0)
        assert centre[axis] > 0.2 and np.abs(np.delete(centre, axis)).max() < 0.08, (ch, centre)


def test_grey_background_keeps_enclosed_white():
    x = torch.ones(1, 3, 20, 20)
    x[:, :, 5:15, 5:15] = 0.2
    x[:, :, 8:12, 8:12] = 1.0      # a white part inside the object
    y = grey_background(x, 0.5)
    assert torch.allclose(y[0, :, 0, 0], torch.full((3,), 0.5)) and torch.allclose(y[0, :, 10, 10], torch.ones(3))
    assert torch.allclose(y[0, :, 6, 6], torch.full((3,), 0.2))


def test_importer_tiny_standin_builds_and_runs():
    from core.recon.triposr_importer import convert_state_dict, resample_pos_embed
    cfg, sd = convert_state_dict(triposr_state_dict(), yaml.safe_load(TINY_TRIPOSR_YAML), "model.ckpt")
    assert (cfg.image_size, cfg.heads, cfg.head_dim, cfg.depth, cfg.plane_channels, cfg.mlp_layers, cfg.n_samples) == \
        (64, 2, 16, 2, 8, 3, 16)
    assert sd["image_encoder.pos_embed"].shape == (1, 1 + 16, 64)
    m = TripoSRModel(cfg)
    m.load_state_dict(sd, strict=True)
    with torch.no_grad():
        st = m(torch.rand(1, 1, 3, 64, 64) * 2 - 1)
        sigma, rgb = m.query(st, torch.rand(1, 50, 3) * 2 - 1)
    assert st.planes.shape == (1, 3, 8, 8, 8) and sigma.shape == (1, 50) and rgb.shape == (1, 50, 3)
    with torch.no_grad():
        outside, _ = m.query(st, torch.tensor([[[0.9, 0.0, 0.0], [0.0, -1.2, 0.3]]]))
    assert (outside == 0).all()   # nothing outside TripoSR's box
    pos = torch.randn(1, 5, 8)
    assert resample_pos_embed(pos, 2) is pos and resample_pos_embed(pos, 3).shape == (1, 10, 8)
