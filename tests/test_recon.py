"""Reconstruction model, renderer, scene, meshing, training/eval commands on tiny configs."""
import json

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from core import cameras
from core.checkpoint import CheckpointError
from core.mesh import MeshError
from core.recon import ReconConfig, ReconInputError, ReconModel, ReconPipeline, TriplaneScene, save_orbit
from core.recon.model import canonical_rotation, to_canonical
from core.recon.render import dense_render, ray_box

TINY = dict(image_size=32, patch_size=8, enc_dim=32, enc_depth=1, enc_heads=2, cam_dim=16, tri_tokens=4,
            tri_dim=32, tri_depth=1, tri_heads=2, upsample_channels=(16,), mlp_hidden=16, mlp_layers=1, n_samples=24)


def tiny_pipe(seed=0, **kw) -> ReconPipeline:
    torch.manual_seed(seed)
    return ReconPipeline(ReconModel(ReconConfig(**{**TINY, **kw})))


def disc_image(size=64, colour=(200, 60, 40)):
    from PIL import ImageDraw
    img = Image.new("RGB", (size, size), "white")
    ImageDraw.Draw(img).ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4), fill=colour)
    return img


class BallModel(torch.nn.Module):
    """Analytic stand-in for ReconModel.query: a dense ball at ``centre`` (canonical frame),
    red where x > centre_x, green elsewhere. Lets scene/mesh code be tested exactly."""

    def __init__(self, centre=(0.2, 0.0, 0.0), radius=0.25):
        super().__init__()
        self.config = ReconConfig(**TINY)
        self.centre, self.radius = torch.tensor(centre), radius

    def query(self, planes, pts, with_rgb=True):
        d = (pts - self.centre).norm(dim=-1)
        sigma = 50.0 * torch.sigmoid((self.radius - d) * 60)
        rgb = torch.where((pts[..., :1] > self.centre[0]), torch.tensor([1.0, 0, 0]), torch.tensor([0, 1.0, 0]))
        return sigma, (rgb.expand(*pts.shape[:-1], 3) if with_rgb else None)


def ball_scene(az_deg=0.0, **kw):
    rot = canonical_rotation(cameras.pose_from_spherical(az_deg, 20, 2))
    return TriplaneScene(BallModel(**kw), torch.zeros(1), rot)


# ----------------------------------------------------------------------------- model

def test_model_shapes_one_and_many_views():
    pipe = tiny_pipe()
    m, c = pipe.model, pipe.config
    for V in (1, 3):
        x = torch.randn(2, V, 3, 32, 32)
        cams = torch.randn(2, V, 16)
        rays = torch.randn(2, V, 6, 32, 32)
        assert m.encode(x, cams, rays).shape == (2, V * 16, c.enc_dim)  # tokens of all views concatenated
        state = m(x, cams, rays)
        assert state.planes.shape == (2, 3, c.plane_channels, c.plane_res, c.plane_res)
        assert state.feat.shape == (2, V, c.pixel_channels, 4, 4)
        sigma, rgb = m.query(state, torch.rand(2, 50, 3) - 0.5)
        assert sigma.shape == (2, 50) and rgb.shape == (2, 50, 3)
        assert (sigma >= 0).all() and (rgb >= 0).all() and (rgb <= 1).all()


def test_pixel_cnn_features_are_half_resolution_and_local():
    """With ``pixel_cnn`` the pixel-aligned features are a half-resolution map, and a pixel changed in one
    corner moves the features near it more than those across the image (local detail survives)."""
    pipe = tiny_pipe(pixel_cnn=8)
    m = pipe.model
    assert m.pix_proj is None and m.pix_cnn is not None
    x, cams, rays = torch.randn(1, 2, 3, 32, 32), torch.randn(1, 2, 16), torch.randn(1, 2, 6, 32, 32)
    state = m(x, cams, rays)
    assert state.feat.shape == (1, 2, pipe.config.pixel_channels, 16, 16)
    y = x.clone()
    y[0, 0, :, :3, :3] += 2.0
    d = (m(y, cams, rays).feat - state.feat)[0, 0].abs().sum(0)
    assert d[:2, :2].mean() > 5 * d[12:, 12:].mean()
    sigma, rgb = m.query(state, torch.rand(1, 20, 3) - 0.5)
    assert sigma.shape == (1, 20) and rgb.shape == (1, 20, 3)
    with pytest.raises(ValueError, match="pixel_cnn needs pixel_channels"):
        ReconConfig(**{**TINY, "pixel_cnn": 8, "pixel_channels": 0})


def test_camera_modulates_image_tokens():
    pipe = tiny_pipe(plucker=False)
    for blk in pipe.model.encoder:  # AdaLN is zero-initialised; give it weights to see the path
        torch.nn.init.normal_(blk.ada.weight, std=0.5)
    x = torch.randn(1, 1, 3, 32, 32)
    a = pipe.model.encode(x, torch.zeros(1, 1, 16), None)
    b = pipe.model.encode(x, torch.ones(1, 1, 16), None)
    assert not torch.allclose(a, b)
    # each view modulated by its own camera: swapping the cameras of two views changes the tokens per view
    x2 = torch.randn(1, 2, 3, 32, 32)
    c2 = torch.stack([torch.zeros(16), torch.ones(16)])[None]
    t1 = pipe.model.encode(x2, c2, None)
    t2 = pipe.model.encode(x2, c2.flip(1), None)
    assert not torch.allclose(t1[:, :16], t2[:, :16])


def test_pixel_aligned_lookup_projects_through_the_camera():
    """A point on the camera's right samples the right half of the input image (and the same for up)."""
    from core.recon.pipeline import prepare_views
    pipe = tiny_pipe()
    img = torch.zeros(1, 3, 32, 32)
    img[:, 0, :, 16:] = 1.0   # right half: red channel up
    img[:, 1, :16, :] = 1.0   # top half: green channel up
    w = cameras.pose_from_spherical(30, 10, 2.0)
    x, cams, rays, rot = prepare_views(img, [w], [cameras.DEFAULT_FOV_DEG], 32)
    state = pipe.model(x[None], cams[None], rays[None])
    R = to_canonical(w, rot)[:, :3]  # rows: camera right, up, back in canonical coordinates
    pts = torch.from_numpy(np.stack([0.3 * R[0] + 0.2 * R[1], -0.3 * R[0] - 0.2 * R[1]])).float()[None]
    B, V = 1, 1
    c2w = state.cams[..., :12].reshape(B, V, 3, 4)
    cam = torch.einsum("bvnk,bvkj->bvnj", pts[:, None] - c2w[..., 3][:, :, None], c2w[..., :3])
    f = state.cams[..., 12]
    uv = torch.stack([cam[..., 0], -cam[..., 1]], -1) * (2 * f)[:, :, None, None] / (-cam[..., 2:3])
    rgb = torch.nn.functional.grid_sample(x, uv.view(1, 1, 2, 2), align_corners=False).view(3, 2)
    assert rgb[0, 0] > 0.9 and rgb[1, 0] > 0.9       # right and up -> red and green
    assert rgb[0, 1] < 0.1 and rgb[1, 1] < 0.1       # left and down -> neither
    feat, skip = pipe.model.pixel_features(state, pts)
    assert feat.shape == (1, 2, pipe.config.plane_channels) and skip.shape == (1, 2, 4)
    assert skip[0, 0, 0] > 0.9 and skip[0, 1, 0] < 0.1 and (skip[0, :, 3] == 1).all()  # red right, in frame


def test_canonical_frame_rotation():
    w = cameras.pose_from_spherical(70, 25, 1.8)
    rot = canonical_rotation(w)
    assert np.isclose(np.linalg.det(rot), 1.0)
    az, el, r = cameras.spherical_from_pose(to_canonical(w, rot))
    assert abs(az) < 1e-4 and abs(el - 25) < 1e-4 and abs(r - 1.8) < 1e-5


def test_reconstruct_is_azimuth_equivariant():
    """The same photo taken from azimuth 90 gives the same object, rotated by 90 deg about +Z."""
    pipe = tiny_pipe()
    img = disc_image()
    s0 = pipe.reconstruct(img, [cameras.pose_from_spherical(0, 20, 2)])
    s1 = pipe.reconstruct(img, [cameras.pose_from_spherical(90, 20, 2)])
    pts = np.random.default_rng(0).uniform(-0.5, 0.5, (200, 3)).astype(np.float32)
    Rz = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]], np.float32)
    d0, c0 = s0.query_world(pts)
    d1, c1 = s1.query_world(pts @ Rz.T)
    np.testing.assert_allclose(d0, d1, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(c0, c1, atol=1e-4)


# ----------------------------------------------------------------------------- rendering

def test_ray_box_and_empty_field_is_white():
    o = torch.tensor([[2.0, 0, 0], [2.0, 2.0, 0]])
    d = torch.tensor([[-1.0, 0, 0], [-1.0, 0, 0]])
    near, far, hit = ray_box(o, d, 0.5)
    assert hit.tolist() == [True, False]
    assert torch.allclose(near[0], torch.tensor(1.5)) and torch.allclose(far[0], torch.tensor(2.5))
    empty = lambda p: (torch.zeros(p.shape[:-1]), torch.zeros(*p.shape[:-1], 3))  # noqa: E731
    rgb, op, _ = dense_render(empty, o, d, 0.5, 16)
    assert torch.allclose(rgb, torch.ones_like(rgb)) and torch.allclose(op, torch.zeros_like(op))


def test_dense_render_opaque_ball_depth_and_colour():
    ball = BallModel(centre=(0, 0, 0), radius=0.3)
    o = torch.tensor([[[2.0, 0, 0], [2.0, 0.0, 0.55]]])
    d = torch.tensor([[[-1.0, 0, 0], [-1.0, 0, 0]]])
    rgb, op, depth = dense_render(lambda p: ball.query(None, p), o, d, 0.6, 256, chunk=1)  # chunking too
    assert op[0, 0] > 0.99 and op[0, 1] < 0.01
    assert abs(depth[0, 0] / op[0, 0] - 1.7) < 0.02  # surface at x = 0.3
    assert rgb[0, 0, 0] > 0.95 and rgb[0, 0, 1] < 0.05  # the +X half is red
    assert torch.allclose(rgb[0, 1], torch.ones(3), atol=0.02)  # white background


def test_scene_render_world_frame_and_orbit(tmp_path):
    scene = ball_scene(az_deg=90)  # canonical +X is world +Y: the ball sits on +Y, its red half faces +Y
    front = np.asarray(scene.render(cameras.pose_from_spherical(90, 0, 2), 32))
    back = np.asarray(scene.render(cameras.pose_from_spherical(-90, 0, 2), 32))
    assert front[16, 16, 0] > 200 and front[16, 16, 1] < 60
    assert back[16, 16, 1] > 200 and back[16, 16, 0] < 60
    assert tuple(front[0, 0]) == (255, 255, 255)
    frames = scene.render_orbit(n=4, elevation_deg=20, radius=2.0, size=24)
    assert len(frames) == 4 and frames[0].size == (24, 24)
    gif = save_orbit(frames, tmp_path / "orbit.gif")
    assert Image.open(gif).n_frames == 4
    with pytest.raises(cameras.CameraError):
        scene.render(np.full((3, 4), np.nan), 16)


# ----------------------------------------------------------------------------- meshing

def test_extract_mesh_world_frame_colours_and_coarse_to_fine():
    scene = ball_scene(az_deg=90, centre=(0.2, 0, 0))
    mesh = scene.extract_mesh(resolution=96)
    assert isinstance(mesh, trimesh.Trimesh) and mesh.is_watertight and mesh.volume > 0
    np.testing.assert_allclose(mesh.bounds.mean(0), [0, 0.2, 0], atol=0.02)  # canonical +X -> world +Y
    np.testing.assert_allclose(mesh.extents, [2 * (0.25 + np.log(4) / 60)] * 3, atol=0.01)  # sigma = level there
    col = np.asarray(mesh.visual.vertex_colors)
    red = col[:, 0] > 200
    assert mesh.vertices[red, 1].mean() > 0.2 > mesh.vertices[~red, 1].mean()
    dense = scene.density_grid(48).numpy()
    fine = scene.density_grid(96).numpy()  # coarse-to-fine must agree with the dense field at shared nodes
    exact = scene._density(scene._grid(97)).numpy()
    level = scene.config.mc_level
    assert np.array_equal(fine > level, exact > level) and dense.shape == (49,) * 3 and fine.shape == (97,) * 3


def test_extract_mesh_no_surface_is_value_error():
    scene = ball_scene()
    with pytest.raises(MeshError, match="no surface") as e:
        scene.extract_mesh(resolution=32, level=1e6)
    assert isinstance(e.value, ValueError)


# ----------------------------------------------------------------------------- pipeline

def test_bad_inputs_are_clear_errors():
    pipe = tiny_pipe()
    with pytest.raises(ReconInputError, match="no object"):
        pipe.reconstruct(Image.new("RGB", (40, 40), "white"))
    with pytest.raises(ReconInputError, match="no object"):
        pipe.reconstruct(Image.new("RGB", (40, 40), (30, 30, 30)))
    bad = cameras.pose_from_spherical(0, 20, 2).copy()
    bad[0, 3] = np.inf
    with pytest.raises(cameras.CameraError, match="finite"):
        pipe.reconstruct(disc_image(), [bad])
    with pytest.raises(ReconInputError, match="cameras"):
        pipe.reconstruct([disc_image(), disc_image()])
    with pytest.raises(ReconInputError, match="fov"):
        pipe.reconstruct(disc_image(), fov_deg=float("nan"))


def test_rgba_input_and_multiview(tmp_path):
    pipe = tiny_pipe()
    rgba = disc_image().convert("RGBA")
    scene = pipe.reconstruct([rgba, disc_image()], [cameras.pose_from_spherical(a, 20, 2) for a in (0, 90)])
    assert scene.render(cameras.pose_from_spherical(45, 20, 2), 16).size == (16, 16)


def test_checkpoint_roundtrip(tmp_path):
    pipe = tiny_pipe()
    pipe.save_pretrained(tmp_path / "ck")
    again = ReconPipeline.from_pretrained(tmp_path / "ck")
    img = disc_image()
    a, b = pipe.reconstruct(img).planes, again.reconstruct(img).planes
    assert torch.allclose(a, b)
    (tmp_path / "ck" / "model.safetensors").write_bytes(b"\x80\x04junk")
    with pytest.raises(CheckpointError):
        ReconPipeline.from_pretrained(tmp_path / "ck")


# ----------------------------------------------------------------------------- commands

@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    from core.recon.toydata import write_dataset
    return write_dataset(tmp_path_factory.mktemp("toy"), n_train=2, n_val=1, size=32, n_views=4)


def test_train_resume_and_eval_commands(toy_data, tmp_path):
    from core.eval.recon import main as eval_main
    from core.train.recon import main as train_main

    out = tmp_path / "run"
    base = ["--data", str(toy_data), "--out", str(out), "--config", json.dumps(TINY), "--batch", "2",
            "--rays", "32", "--samples", "12", "--save-every", "2", "--val-every", "100"]
    assert train_main(base + ["--steps", "2"]) == 0
    state = json.loads((out / "ckpt-latest" / "train_state.json").read_text())
    assert state["step"] == 2 and (out / "ckpt-latest" / "optimizer.safetensors").is_file()
    # --precision auto on a CPU: measured here (a tiny model under load may go either way), recorded, kept on resume
    first = json.loads((out / "manifest.json").read_text())["segments"][0]
    assert first["precision_measured"]["measured"] and state["precision"] == first["precision_measured"]["choice"]
    chosen = state["precision"]
    w2 = ReconPipeline.from_pretrained(out).model.state_dict()
    with pytest.raises(SystemExit, match=r"schedule differs from the run's: --steps 2 -> 4"):
        train_main(base + ["--steps", "4", "--resume"])
    assert train_main(base + ["--steps", "4", "--resume", "--force-schedule"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert [(g["step_from"], g["step_to"]) for g in manifest["segments"]] == [(0, 2), (2, 4)]
    assert manifest["samples_seen"] == 8 and all(g["ended"] and g["machine"]["cpu"] for g in manifest["segments"])
    from core.train.status import main as status_main
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert status_main([str(out)]) == 0
    st = json.loads(buf.getvalue())
    assert st["step"] == 4 and st["finished"] and len(st["segments"]) == 2 and st["precision"] == chosen
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert status_main([str(out), "--markdown"]) == 0
    card = buf.getvalue()
    assert "| 1 | " in card and "| 2 | " in card and "| 0-2 |" in card and "| 2-4 |" in card and chosen in card
    assert "Total: 4 steps, 8 samples" in card
    from core.cli import dispatch
    assert dispatch("train", ["status", str(tmp_path)]) == 2      # not a run folder: one error line
    assert json.loads((out / "ckpt-latest" / "train_state.json").read_text())["step"] == 4
    w4 = ReconPipeline.from_pretrained(out).model.state_dict()
    assert torch.equal(ReconPipeline.from_pretrained(out / "ckpt-latest").model.state_dict()["head.weight"],
                       w4["head.weight"])
    assert any(not torch.equal(w2[k], w4[k]) for k in w2)

    res_path = tmp_path / "eval.json"
    assert eval_main(["--data", str(toy_data), "--checkpoint", str(out), "--out", str(res_path),
                      "--mc-resolution", "32"]) == 0
    res = json.loads(res_path.read_text())
    for k in ("psnr", "ssim", "silhouette_iou", "chamfer", "fscore", "fscore_005", "baseline_copy_psnr",
              "baseline_scaled_copy_psnr", "baseline_copy_silhouette_iou", "seconds_reconstruct", "seconds_mesh",
              "n_objects", "per_object"):
        assert k in res, k
    assert res["n_objects"] == 1 and len(res["per_object"]) == 1 and res["size"] == 128
    assert np.isfinite(res["psnr"]) and res["per_object"]["toy00000"]["n_views"] == 3
    assert 0 <= res["silhouette_iou"] <= 1 and res["fscore_005"] <= res["fscore"]


def test_eval_baselines_and_a_folder_without_meshes(toy_data, tmp_path):
    """Every view a copy of the input (same camera, same pixels): both baselines are exact; without
    mesh.ply the shape metrics are left out, not estimated."""
    import shutil
    from core.eval.recon import main as eval_main

    obj = tmp_path / "objects" / "same"
    shutil.copytree(next((toy_data / "val").iterdir()), obj)
    (obj / "mesh.ply").unlink()
    for v in ("001", "002", "003"):
        for suffix in (".png", ".npy", "_alpha.png", "_depth.npy"):
            shutil.copy(obj / f"000{suffix}", obj / f"{v}{suffix}")
    ckpt = tmp_path / "model"
    ReconPipeline(ReconModel(ReconConfig(**TINY))).save_pretrained(ckpt)
    out = tmp_path / "eval.json"
    assert eval_main(["--data", str(tmp_path / "objects"), "--checkpoint", str(ckpt), "--out", str(out),
                      "--size", "32", "--sample", "1"]) == 0
    res = json.loads(out.read_text())
    assert res["baseline_copy_psnr"] == 100.0 and res["baseline_copy_silhouette_iou"] == 1.0
    assert res["baseline_scaled_copy_psnr"] == 100.0 and res["baseline_scaled_copy_silhouette_iou"] == 1.0
    assert not {"chamfer", "fscore", "fscore_005"} & set(res) and res["size"] == 32 and res["n_objects"] == 1


def test_eval_skips_and_names_an_object_whose_input_view_is_empty(toy_data, tmp_path):
    """A corpus object whose input view shows nothing (an edge-on cloth) is skipped with its reason in
    the JSON; the other objects are still scored."""
    import shutil
    from core.eval.recon import main as eval_main

    objs = tmp_path / "objects"
    for src in list((toy_data / "train").iterdir())[:2]:
        shutil.copytree(src, objs / src.name)
    empty = sorted(objs.iterdir())[0]
    Image.new("RGB", Image.open(empty / "000.png").size, "white").save(empty / "000.png")
    alpha = Image.open(empty / "000_alpha.png")
    Image.new(alpha.mode, alpha.size, 0).save(empty / "000_alpha.png")
    ckpt = tmp_path / "model"
    ReconPipeline(ReconModel(ReconConfig(**TINY))).save_pretrained(ckpt)
    out = tmp_path / "eval.json"
    assert eval_main(["--data", str(objs), "--checkpoint", str(ckpt), "--out", str(out), "--size", "32",
                      "--mc-resolution", "32"]) == 0
    res = json.loads(out.read_text())
    assert list(res["skipped"]) == [empty.name] and "no object" in res["skipped"][empty.name]
    assert res["n_objects"] == 1 and empty.name not in res["per_object"]


def test_silhouette_iou():
    from core.metrics import object_mask, silhouette_iou
    a = np.zeros((4, 4), bool)
    a[:2] = True
    b = np.zeros((4, 4), bool)
    b[1:3] = True
    assert silhouette_iou(a, b) == pytest.approx(4 / 12) and silhouette_iou(a, a) == 1.0
    img = np.full((4, 4, 3), 255, np.uint8)
    img[0, 0] = (0, 0, 0)
    assert object_mask(img).sum() == 1 and object_mask(img, alpha=np.ones((4, 4))).all()


def test_mesh_metrics_sanity():
    from core.eval.recon import mesh_metrics
    a = trimesh.creation.icosphere(subdivisions=3, radius=0.4)
    same = mesh_metrics(a, a.copy())
    assert same["chamfer"] < 0.01 and same["fscore"] > 0.99
    b = a.copy()
    b.apply_translation((0.5, 0, 0))
    far = mesh_metrics(a, b)
    assert far["chamfer"] > 0.2 and far["fscore"] < 0.5


def test_time_limit_stops_and_saves(toy_data, tmp_path, capsys):
    """--time-limit (minutes, resumed segments included) ends the run early with a checkpoint."""
    from core.train.recon import main as train_main
    out = tmp_path / "run"
    assert train_main(["--data", str(toy_data), "--out", str(out), "--config", json.dumps(TINY), "--batch", "1",
                       "--rays", "16", "--samples", "8", "--steps", "100000", "--time-limit", "0.002"]) == 0
    assert "time limit reached" in capsys.readouterr().out
    state = json.loads((out / "ckpt-latest" / "train_state.json").read_text())
    assert state["step"] < 100000 and state["wall_s"] >= 0.12 and (out / "model.safetensors").is_file()


def test_training_from_shards_equals_training_from_the_folders(toy_data, tmp_path):
    """core.data shards decodes the corpus once into memory-mapped arrays; a run on them sees exactly
    the batches a run on the object folders sees (same weights after the same steps)."""
    from core.data.shards import open_shards, write_shards
    from core.train.recon import main as train_main
    from safetensors.torch import load_file
    for split in ("train", "val"):
        write_shards(toy_data, tmp_path / "shards", split, size=32)
    index, arr = open_shards(tmp_path / "shards", "train")
    assert arr["rgb"].shape[1:] == (index["views"], 32, 32, 3) and isinstance(arr["rgb"], np.memmap)
    common = ["--config", json.dumps(TINY), "--batch", "2", "--rays", "16", "--samples", "8", "--steps", "2",
              "--save-every", "2", "--val-every", "100", "--precision", "fp32"]
    assert train_main(["--data", str(toy_data), "--out", str(tmp_path / "a")] + common) == 0
    assert train_main(["--data", str(tmp_path / "shards"), "--out", str(tmp_path / "b")] + common) == 0
    wa, wb = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    (tmp_path / "shards" / "train" / "rgb.npy").write_bytes(b"not a numpy file")
    with pytest.raises(Exception, match="rgb.npy: damaged shard"):
        open_shards(tmp_path / "shards", "train")


def test_bench_recon_reports_no_mesh_timings_for_a_field_without_surface(tmp_path, capsys):
    """A field that never reaches the level (random weights, a very negative density bias) still gets
    its reconstruct/render timings; the mesh ones are null with the reason, not a crash."""
    from core.bench.recon import main as bench_main
    ckpt = tmp_path / "empty"
    ReconPipeline(ReconModel(ReconConfig(**{**TINY, "density_bias": -30.0}))).save_pretrained(ckpt)
    assert bench_main(["--checkpoint", str(ckpt), "--repeat", "1", "--threads", "1", "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["image_to_triplane_ms"] > 0 and out["render_128px_fps"] > 0
    assert out["mesh_128_ms"] is None and "no surface" in out["mesh_note"]


def test_depth_hull_occupancy_labels_match_the_true_shape():
    """Labels from 12 rendered views agree with the analytic inside/outside test away from the surface,
    and the near-surface samples straddle it (both labels present)."""
    from core.recon.toydata import _sdf, random_object, render_views
    from core.train.recon import depth_hull_occupancy, occupancy_points

    rng = np.random.default_rng(3)
    parts = random_object(rng)
    w2cs = [cameras.pose_from_spherical(az, el, 2.0) for az, el in zip(np.arange(12) * 30.0, [-15, 20, 50] * 4)]
    views = render_views(parts, w2cs, 64)
    o = {"w2c": np.stack(w2cs).astype(np.float32), "fov": cameras.DEFAULT_FOV_DEG,
         "alpha": np.stack([(v[1] * 255).astype(np.uint8) for v in views]),
         "depth": np.stack([v[2] for v in views]).astype(np.float16)}
    pts = occupancy_points(o, rng, 4000, 0.57)
    labels = depth_hull_occupancy(pts, o["w2c"], o["fov"], o["alpha"], o["depth"])
    sdf = _sdf(parts, torch.from_numpy(pts).double())[0].numpy()
    far = np.abs(sdf) > 0.04
    assert ((sdf < 0) == labels)[far].mean() > 0.97
    near = pts[2000:][np.abs(sdf[2000:]) < 0.05]
    assert len(near) > 1000                                 # half the points sit near the surface
    near_labels = labels[2000:][np.abs(sdf[2000:]) < 0.05]
    assert 0.2 < near_labels.mean() < 0.8
    # without depth the labels are the visual hull: a superset of the shape
    hull = depth_hull_occupancy(pts, o["w2c"], o["fov"], o["alpha"], None)
    assert hull[labels].all() and hull.sum() >= labels.sum()


def test_train_with_occupancy_and_pixel_depth(toy_data, tmp_path):
    """The v2 losses run through the trainer: depth-hull occupancy on 3-D points and the pixel CNN's
    depth channel against the input view's depth; both are logged and finite, and the depth channel
    gets gradient only from its own loss when the others are off."""
    from core.train.recon import ViewCache, losses, make_batch, main as train_main

    cfg = {**TINY, "pixel_cnn": 8, "pixel_depth": True}
    out = tmp_path / "run"
    assert train_main(["--data", str(toy_data), "--out", str(out), "--config", json.dumps(cfg), "--batch", "2",
                       "--rays", "16", "--samples", "8", "--steps", "20", "--val-every", "100", "--w-occ", "0.5",
                       "--occ-points", "64", "--precision", "fp32"]) == 0
    rec = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert rec and all(np.isfinite(r[k]) for r in rec for k in ("occ", "pixel_depth", "loss"))
    model = ReconPipeline.from_pretrained(out).model
    assert model.config.pixel_depth and model.config.pixel_cnn == 8
    cache = ViewCache(toy_data, 32, "train")
    b = make_batch(cache, np.random.default_rng(0), 2, 1, 2, 16, occ_points=32, input_depth=True)
    assert b["occ_pts"].shape == (2, 32, 3) and b["occ"].shape == (2, 32) and b["in_depth"].shape == (2, 1, 32, 32)
    model.zero_grad()
    L = losses(model, b, 8, 0.0, 0.0, 0.0, 1.0)
    (L["pixel_depth"]).backward()
    assert model.pix_cnn.out[-1].weight.grad[-2].abs().sum() > 0        # the depth channel learns
    assert model.pix_cnn.out[-1].weight.grad[-1].abs().sum() == 0       # thickness: no direct target
    # the occupancy loss points the right way: with every point labelled occupied, more density is less loss
    b["occ"] = torch.ones_like(b["occ"])
    with torch.no_grad():
        low = losses(model, b, 8, 0.0, 0.0, 1.0)["occ"]
        model.config.density_bias += 5.0
        high = losses(model, b, 8, 0.0, 0.0, 1.0)["occ"]
        b["occ"] = torch.zeros_like(b["occ"])
        high_empty = losses(model, b, 8, 0.0, 0.0, 1.0)["occ"]
        model.config.density_bias -= 5.0
        low_empty = losses(model, b, 8, 0.0, 0.0, 1.0)["occ"]
    assert high < low and low_empty < high_empty
