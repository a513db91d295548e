"""The photo on the object (core.recon.texture): projection, occlusion, grazing weights, and the
scene's renders and meshes that use it."""
import math

import numpy as np
import torch
from PIL import Image

from core import cameras, metrics
from core.recon.texture import InputPhoto, PhotoProjector, grazing_weight, normals_from_depth, photo_tensors

FOV = 40.0


def _sphere_depth(w2c, size, radius):
    """Ray distance to a sphere at the origin for every pixel of a camera (inf where missed)."""
    o, d = cameras.get_rays(w2c, cameras.intrinsics(FOV, size), size)
    b = (o * d).sum(-1)
    c = (o * o).sum(-1) - radius ** 2
    disc = b * b - c
    t = -b - torch.sqrt(disc.clamp(min=0))
    return torch.where(disc > 0, t, torch.full_like(t, float("inf")))


def _photo(size=64):
    """Left half red, right half blue, a white border (the background)."""
    rgb = np.ones((size, size, 3), np.uint8) * 255
    rgb[8:-8, 8:size // 2] = (255, 0, 0)
    rgb[8:-8, size // 2:-8] = (0, 0, 255)
    return Image.fromarray(rgb)


def test_front_takes_the_photo_back_keeps_the_field_and_grazing_fades():
    w2c = cameras.pose_from_spherical(0.0, 0.0, 2.0)  # camera on +x looking at the origin
    rgb, mask = photo_tensors(_photo())
    proj = PhotoProjector([InputPhoto(rgb, mask, w2c, FOV, _sphere_depth(w2c, 64, 0.3)[None])])
    # points on a sphere of radius 0.3, outward normals: front centre, front off-centre, back, top
    normals = torch.tensor([[1.0, 0, 0], [math.cos(0.3), -math.sin(0.3), 0.0], [-1.0, 0, 0], [0.0, 0.0, 1.0]])
    pts = 0.3 * normals
    field = torch.full((4, 3), 0.5)
    out = proj.blend(pts, normals, field)
    (c0, w0), = [(c, w) for c, w in proj.weights(pts, normals)]
    assert w0[0] > 0.99 and w0[1] > 0.99       # facing the camera, visible
    assert w0[2] == 0                          # the back: hidden behind the front surface
    assert w0[3] < 0.05                        # the top, seen edge-on
    assert torch.allclose(out[2], field[2]) and torch.allclose(out[3], field[3], atol=0.05)
    # the visible points take a photo colour (red or blue: one channel near 0), never the background's white
    assert min(out[0].tolist()) < 0.1 and min(out[1].tolist()) < 0.1


def test_the_photos_left_and_right_land_on_the_objects_left_and_right():
    """Which half of the photo a world point gets is what ``cameras.project`` says its pixel is."""
    w2c = cameras.pose_from_spherical(0.0, 0.0, 2.0)
    K = cameras.intrinsics(FOV, 64)
    left_world = np.array([[0.3, 0.1, 0.0]])
    uv, _ = cameras.project(left_world, w2c, K)
    expected = "red" if uv[0, 0] < 32 else "blue"
    rgb, mask = photo_tensors(_photo())
    proj = PhotoProjector([InputPhoto(rgb, mask, w2c, FOV, None)])
    got = proj.blend(torch.tensor(left_world, dtype=torch.float32), torch.tensor([[1.0, 0, 0]]), torch.zeros(1, 3))[0]
    assert (got[0] > 0.9 and got[2] < 0.1) if expected == "red" else (got[2] > 0.9 and got[0] < 0.1)


def test_background_pixels_never_paint_the_surface():
    w2c = cameras.pose_from_spherical(0.0, 0.0, 2.0)
    rgb, mask = photo_tensors(Image.new("RGB", (32, 32), "white"))
    assert mask.sum() == 0
    proj = PhotoProjector([InputPhoto(rgb, mask, w2c, FOV, None)])
    out = proj.blend(torch.tensor([[0.3, 0.0, 0.0]]), torch.tensor([[1.0, 0, 0]]), torch.full((1, 3), 0.2))
    assert torch.allclose(out, torch.full((1, 3), 0.2))


def test_rgba_photos_use_their_alpha():
    im = Image.new("RGBA", (16, 16), (255, 255, 255, 0))
    im.paste((250, 250, 250, 255), (4, 4, 12, 12))  # a near-white object: alpha, not whiteness, says object
    _, mask = photo_tensors(im)
    assert mask[0, 8, 8] == 1 and mask[0, 0, 0] == 0


def test_grazing_weight_is_monotone_from_zero_to_one():
    c = torch.linspace(-1, 1, 101)
    w = grazing_weight(c)
    assert w[0] == 0 and w[-1] == 1 and bool((w[1:] >= w[:-1]).all())


def test_normals_from_depth_of_a_plane_face_the_viewer():
    H = 8
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, H), torch.linspace(-1, 1, H), indexing="ij")
    pts = torch.stack([xs, -ys, torch.zeros_like(xs)], -1)  # the plane z = 0
    toward = torch.tensor([0.0, 0.0, 1.0]).expand(H, H, 3)
    n = normals_from_depth(pts, torch.ones(H, H), toward)
    assert torch.allclose(n, toward, atol=1e-5)


def test_scene_with_photos_matches_the_photo_better_at_its_own_camera():
    from core.recon import ReconConfig, ReconModel, ReconPipeline
    torch.manual_seed(0)
    cfg = ReconConfig(image_size=32, patch_size=8, enc_dim=32, enc_depth=1, enc_heads=2, cam_dim=16, tri_tokens=4,
                      tri_dim=32, tri_depth=1, tri_heads=2, upsample_channels=(16,), mlp_hidden=16, n_samples=24,
                      density_bias=2.0)
    pipe = ReconPipeline(ReconModel(cfg))
    photo = _photo(64)
    w2c = cameras.pose_from_spherical(0.0, 10.0, 2.0)
    plain = pipe.reconstruct([photo], [w2c], FOV, project_photos=False)
    textured = pipe.reconstruct([photo], [w2c], FOV)
    assert textured.projector is not None and plain.projector is None
    gt = photo.resize((32, 32))
    assert metrics.psnr(textured.render(w2c, 32, FOV), gt) > metrics.psnr(plain.render(w2c, 32, FOV), gt) + 1
    m0, m1 = plain.extract_mesh(32), textured.extract_mesh(32)
    assert np.array_equal(m0.vertices, m1.vertices)
    assert not np.array_equal(m0.visual.vertex_colors, m1.visual.vertex_colors)
