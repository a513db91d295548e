"""Faults and hostile input: pickles/corrupt checkpoints, missing models, out-of-memory while
rendering, bad cameras and sampling knobs, crafted file names and session tokens.

(A client disconnecting mid-stream frees the work: tests/test_viser_proxy.py::
test_disconnect_mid_stream_frees_the_work for Viser, tests/test_app.py::
test_abandoned_stream_does_not_block_others for a Gradio stream that is never read again.)"""
import os
import pickle

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from core import cameras
from core.checkpoint import CheckpointError
from core.mesh import MeshError
from viewer.backend import Backend, SessionStore, UserError
from viewer.ui import Handlers, build_demo
from viewer_fakes import FakeNVS, FakeRecon, tiny_real_pipelines

SRC = cameras.pose_from_spherical(0, 20, 2.0)
TGT = cameras.pose_from_spherical(60, 20, 2.0)


def disc(size=48, colour=(200, 60, 40)):
    im = Image.new("RGB", (size, size), "white")
    ImageDraw.Draw(im).ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4), fill=colour)
    return im


class _Boom:
    """Unpickling this runs os.system: a checkpoint loader that unpickles would create ``marker``."""
    marker = None

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def tiny():
    nvs, recon = tiny_real_pipelines()
    return nvs, recon


@pytest.fixture
def ckpts(tiny, tmp_path):
    """A --checkpoints folder with the tiny untrained models saved by their own save_pretrained."""
    nvs, recon = tiny
    root = tmp_path / "ck"
    nvs.model.save_pretrained(root / "nvs")
    nvs.tok.save_pretrained(root / "tokenizer")
    recon.save_pretrained(root / "recon")
    return root


def loaders():
    from core.nvs import NVSPipeline, NVSTransformer
    from core.recon import ReconPipeline
    from core.tokenizer import MultiScaleVQVAE
    return {"tokenizer": MultiScaleVQVAE.from_pretrained, "nvs": NVSTransformer.from_pretrained,
            "nvs-pipeline": lambda f: NVSPipeline.from_pretrained(f, tokenizer=f.parent / "tokenizer"),
            "recon": ReconPipeline.from_pretrained}


# ----------------------------------------------------------------------------- safe loading

@pytest.mark.parametrize("name", ["tokenizer", "nvs", "nvs-pipeline", "recon"])
@pytest.mark.parametrize("kind", ["pickle", "torch_save", "truncated", "garbage"])
def test_from_pretrained_refuses_pickles_and_corrupt_files(ckpts, tmp_path, name, kind):
    folder = ckpts / name.split("-")[0]
    load = loaders()[name]
    load(folder)                                            # the untouched checkpoint loads
    target = folder / "model.safetensors"
    marker = tmp_path / "pwned"
    _Boom.marker = marker
    if kind == "pickle":
        target.write_bytes(pickle.dumps({"w": _Boom()}, protocol=2))
    elif kind == "torch_save":
        torch.save({"w": _Boom()}, target)
    elif kind == "truncated":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    else:
        target.write_bytes(b"\x00" * 3)
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        load(folder)
    assert not marker.exists(), "a pickle was executed"


def test_config_mismatch_names_the_tensor(ckpts):
    import json
    from core.recon import ReconPipeline
    cfg = json.loads((ckpts / "recon" / "config.json").read_text())
    cfg["mlp_hidden"] = cfg["mlp_hidden"] * 2
    (ckpts / "recon" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*mismatch"):
        ReconPipeline.from_pretrained(ckpts / "recon")


@pytest.mark.parametrize("name", ["tokenizer", "nvs", "recon"])
def test_another_models_checkpoint_is_named_as_such(ckpts, name):
    other = {"tokenizer": "recon", "nvs": "tokenizer", "recon": "nvs"}[name]
    with pytest.raises(CheckpointError, match=r"a '\w+' checkpoint, not the '\w+' one .*wrong folder"):
        loaders()[name](ckpts / other)


def test_cli_input_errors_are_one_line_and_bugs_keep_their_traceback(ckpts, tmp_path, capsys, monkeypatch):
    from core import cli
    from core.data.io import DataError
    assert cli.dispatch("bench", ["recon", "--checkpoint", str(tmp_path / "missing")]) == 2
    assert cli.dispatch("eval", ["nvs", "--data", str(tmp_path / "missing"), "--checkpoint", str(ckpts / "nvs"),
                                 "--out", str(tmp_path / "x.json")]) == 2
    assert cli.dispatch("eval", ["recon", "--data", str(tmp_path), "--checkpoint", str(ckpts / "tokenizer"),
                                 "--out", str(tmp_path / "x.json")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["error"] * 3 and "checkpoint folder not found" in lines[0]
    assert "wrong folder" in lines[2] and not (tmp_path / "x.json").exists()
    assert cli.is_input_error(DataError("x")) and cli.is_input_error(FileNotFoundError("x"))
    assert not cli.is_input_error(ValueError("a bug")) and not cli.is_input_error(KeyError("a bug"))
    import core.bench.recon
    monkeypatch.setattr(core.bench.recon, "main", lambda argv: int("not a number"))
    with pytest.raises(ValueError, match="invalid literal"):
        cli.dispatch("bench", ["recon"])


def test_a_device_this_machine_lacks_is_a_usage_error(capsys):
    import argparse

    import app
    from core.cli import device_arg
    has_cuda = torch.cuda.is_available()
    assert device_arg("auto") == ("cuda" if has_cuda else "cpu") and device_arg("cpu") == "cpu"
    for bad in ["foo", "mps", "cuda:99"] + ([] if has_cuda else ["cuda"]):
        with pytest.raises(argparse.ArgumentTypeError):
            device_arg(bad)
    with pytest.raises(SystemExit):
        app.parse_args(["--device", "cuda:99"])
    assert "argument --device: cuda:99" in capsys.readouterr().err


def test_importers_and_open_clip_never_unpickle(tmp_path):
    from core.nvs.embedders import OpenCLIPEmbedder
    from core.nvs.importer import read_archonview
    from core.tokenizer.importer import read_state_dict
    marker = tmp_path / "pwned"
    _Boom.marker = marker
    for ext in (".pth", ".bin", ".pt", ".ckpt"):
        f = tmp_path / f"weights{ext}"
        torch.save({"w": _Boom()}, f)
        for read in (read_state_dict, read_archonview, lambda p: OpenCLIPEmbedder("ViT-B-32", p)):
            with pytest.raises(CheckpointError, match=rf"weights\{ext}.*never unpickles.*safetensors"):
                read(f)
    f = tmp_path / "disguised.safetensors"                 # a pickle renamed to .safetensors
    torch.save({"w": _Boom()}, f)
    for read in (read_state_dict, read_archonview, lambda p: OpenCLIPEmbedder("ViT-B-32", p)):
        with pytest.raises(CheckpointError, match="disguised.safetensors.*pickle"):
            read(f)
    assert not marker.exists()


# ----------------------------------------------------------------------------- missing / corrupt models in the app

def _buttons(demo):
    return {b.value: b.interactive for b in demo.blocks.values() if isinstance(b, gr.Button)}


def test_missing_checkpoint_disables_only_its_feature(ckpts, tmp_path):
    import shutil
    shutil.rmtree(ckpts / "recon")
    b = Backend.load(ckpts, sessions=SessionStore(tmp_path / "s"))
    assert b.nvs_ready and not b.recon_ready
    text = b.status_markdown()
    assert "Novel views**: ready" in text
    assert "recon/model.safetensors is missing" in text and "python -m core.train recon" in text
    buttons = _buttons(build_demo(b))
    assert buttons["Generate"] and buttons["Generate strip"] and not buttons["Lift to 3D"]
    h = Handlers(b, extra_read_roots=[tmp_path])
    disc(64).save(tmp_path / "o.png")
    token = h.new_session()[0]
    h.process(token, {"path": str(tmp_path / "o.png")}, True, 0.85, 20)
    frames = list(h.generate(token, 40, 20, 2.0, 0, 3.0, 900, 0.95))
    assert frames and "final" in frames[-1][1]               # novel views still work
    with pytest.raises(gr.Error, match="Reconstruction model unavailable.*missing.*core.train recon"):
        h.lift(token, False, progress=None)


def test_corrupt_checkpoint_is_named_and_the_rest_serves(ckpts, tmp_path):
    _Boom.marker = tmp_path / "pwned"
    torch.save({"w": _Boom()}, ckpts / "tokenizer" / "model.safetensors")   # nvs needs it; recon does not
    b = Backend.load(ckpts, sessions=SessionStore(tmp_path / "s"))
    assert not b.nvs_ready and b.recon_ready
    assert "tokenizer/model.safetensors" in b.problems["nvs"] and "pickle" in b.problems["nvs"]
    assert "tokenizer/model.safetensors" in b.status_markdown() and "checkpoints/tokenizer" in b.status_markdown()
    buttons = _buttons(build_demo(b))
    assert not buttons["Generate"] and buttons["Lift to 3D"]
    assert not (tmp_path / "pwned").exists()


# ----------------------------------------------------------------------------- out of memory while rendering

@pytest.fixture(scope="module")
def scene(tiny):
    return tiny[1].reconstruct(disc(32))


def _oom_above(scene, monkeypatch, max_rays, error):
    """Make the field raise ``error`` whenever one chunk holds more than ``max_rays`` rays."""
    real, seen = scene.sparse_field, []
    n = scene.config.n_samples

    def field(pts):
        rays = pts.shape[-2] // n
        seen.append(rays)
        if rays > max_rays:
            raise error
        return real(pts)
    monkeypatch.setattr(scene, "sparse_field", field)
    return seen


@pytest.mark.parametrize("error", [torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"),
                                   RuntimeError("CUDA error: out of memory")])
def test_render_retries_with_smaller_chunks_on_oom(scene, monkeypatch, error):
    want = np.asarray(scene.render(TGT, size=48))            # 2304 rays: one 4096-ray chunk normally
    seen = _oom_above(scene, monkeypatch, 600, error)
    got = np.asarray(scene.render(TGT, size=48))
    assert seen[:4] == [2304, 2048, 1024, 512]               # chunk 4096 -> 2048 -> 1024 -> 512 (<= 600)
    assert max(seen[4:]) <= 512 and np.array_equal(got, want)


def test_render_gives_up_clearly_at_the_floor(scene, monkeypatch):
    from core.recon.render import RenderOOMError
    seen = _oom_above(scene, monkeypatch, 10, torch.cuda.OutOfMemoryError("CUDA out of memory"))
    with pytest.raises(RenderOOMError, match="out of memory.*256 rays per chunk.*lower the render size"):
        scene.render(TGT, size=48)
    assert seen[-1] == 256
    seen = _oom_above(scene, monkeypatch, 0, RuntimeError("shape mismatch"))   # not OOM: no retry
    with pytest.raises(RuntimeError, match="shape mismatch"):
        scene.render(TGT, size=48)


# ----------------------------------------------------------------------------- cameras and parameters

def _nan_pose():
    w = TGT.copy()
    w[0, 3] = np.nan
    return w


def _first(it):
    return next(iter(it))


def test_nvs_cameras_and_sampling_knobs(tiny):
    nvs = tiny[0]
    src = nvs.encode_source(disc(), SRC)
    bad_inf = TGT.copy()
    bad_inf[1, 1] = np.inf
    for bad in (_nan_pose(), bad_inf, np.zeros((3, 4)), np.eye(3)):
        with pytest.raises(cameras.CameraError, match="target_w2c"):
            _first(nvs.stream(src, SRC, bad))
        with pytest.raises(cameras.CameraError, match="target_w2c"):
            nvs.generate(src, SRC, [TGT, bad])
    with pytest.raises(cameras.CameraError, match="source_w2c"):
        nvs.encode_source(disc(), _nan_pose())
    with pytest.raises(ValueError, match="fov_deg"):
        nvs.encode_source(disc(), SRC, fov_deg=float("nan"))
    for kw, name in ((dict(cfg=float("nan")), "cfg"), (dict(cfg=-1.0), "cfg"), (dict(top_k=-5), "top_k"),
                     (dict(top_k=2.5), "top_k"), (dict(top_p=float("inf")), "top_p"), (dict(top_p=-0.1), "top_p"),
                     (dict(seed=-1), "seed"), (dict(seed=2 ** 64), "seed"), (dict(seed=1.5), "seed"),
                     (dict(seed="7"), "seed"), (dict(temperature=float("nan")), "temperature")):
        with pytest.raises(ValueError, match=name):
            _first(nvs.stream(src, SRC, TGT, **kw))
        with pytest.raises(ValueError, match=name):
            nvs.generate(src, SRC, [TGT], **kw)
    V = nvs.model.config.vocab_size
    same = lambda a, b: np.array_equal(np.asarray(a), np.asarray(b))  # noqa: E731
    for kw, name in ((dict(cfg=1e6), "cfg"), (dict(top_p=7.0), "top_p"), (dict(samples=17), "samples"),
                     (dict(top_k=4097), "top_k"), (dict(seed=2 ** 31), "seed"),
                     (dict(temperature=11.0), "temperature")):  # past the range: refused, never clamped
        with pytest.raises(ValueError, match=name + " must be"):
            nvs.generate(src, SRC, [TGT], **kw)
    ref = nvs.generate(src, SRC, [TGT], seed=3, top_k=V, top_p=1.0, cfg=10.0)[0]
    assert same(nvs.generate(src, SRC, [TGT], seed=3, top_k=4096, top_p=1.0, cfg=10.0)[0], ref)  # k >= V: off
    frames = list(nvs.stream(src, SRC, TGT, seed=3, top_k=4096, top_p=1.0, cfg=10.0))
    assert frames[-1].is_final and same(frames[-1].image, ref)


def test_recon_cameras_sizes_and_resolutions(tiny, scene):
    recon = tiny[1]
    with pytest.raises(cameras.CameraError, match=r"cameras\[1\]"):
        recon.reconstruct([disc(), disc()], [SRC, _nan_pose()])
    with pytest.raises(ValueError, match="fov_deg"):
        recon.reconstruct([disc()], [SRC], fov_deg=float("inf"))
    with pytest.raises(cameras.CameraError, match="render camera"):
        scene.render(_nan_pose(), size=16)
    for size in (0, -3, 10 ** 6, 2.5, float("nan"), True, "64"):
        with pytest.raises(ValueError, match="size"):
            scene.render(TGT, size=size)
    for fov in (0.0, 180.0, float("nan")):
        with pytest.raises(ValueError, match="fov_deg"):
            scene.render(TGT, size=16, fov_deg=fov)
    assert scene.render(TGT, size=np.int64(16)).size == (16, 16)
    for res in (0, 4, 5000, float("nan"), 64.5):
        with pytest.raises(MeshError, match="resolution"):
            scene.extract_mesh(resolution=res)


def test_ui_knobs_clamp_or_say_what_is_wrong(tmp_path):
    b = Backend(FakeNVS(), FakeRecon(), sessions=SessionStore(tmp_path / "s"))
    h = Handlers(b, extra_read_roots=[tmp_path])
    disc(64).save(tmp_path / "o.png")
    token = h.new_session()[0]
    h.process(token, {"path": str(tmp_path / "o.png")}, True, 0.85, 20)
    for args, name in (((float("nan"), 20, 2.0, 0, 3, 900, 0.95), "azimuth"),
                       ((30, 20, 2.0, float("nan"), 3, 900, 0.95), "seed"),
                       ((30, 20, 2.0, 0, 3, float("inf"), 0.95), "top_k"),
                       ((30, 20, float("-inf"), 0, 3, 900, 0.95), "distance"),
                       ((1e9, 20, 2.0, 0, 3, 900, 0.95), r"azimuth must be a number in \[-180, 180\]"),
                       ((30, -1e9, 2.0, 0, 3, 900, 0.95), r"elevation must be a number in \[-60, 80\]"),
                       ((30, 20, 1e9, 0, 3, 900, 0.95), r"distance must be a number in \[1.2, 4\]"),
                       ((30, 20, 2.0, -5, 3, 900, 0.95), "seed must be"),
                       ((30, 20, 2.0, 0, 1e9, 900, 0.95), r"cfg must be a number in \[0, 10\]"),
                       ((30, 20, 2.0, 0, 3, -3, 0.95), "top_k must be"),
                       ((30, 20, 2.0, 0, 3, 900, 9.0), r"top_p must be a number in \[0, 1\]")):
        with pytest.raises(gr.Error, match=name):  # out of range: the same refusal as the command line's
            list(h.generate(token, *args))
    assert list(h.generate(token, 180, 80, 4.0, 2 ** 31 - 1, 10, 4096, 1.0))   # every knob at its range's end
    with pytest.raises(gr.Error, match="seed"):
        h.views_around(token, 3, float("nan"), 3, 900, 0.95)
    with pytest.raises(gr.Error, match=r"number of views must be an integer in \[2, 12\]"):
        h.views_around(token, 1e6, 1, 3, 900, 0.95)
    assert len(h.views_around(token, 12, 2 ** 31 - 1, 3, 900, 0.95)) == 12
    for bad in (1e9, float("nan")):  # /process and /set_elevation: one rule for the input elevation
        with pytest.raises(gr.Error, match=r"input elevation must be a number in \[-60, 80\]"):
            h.process(token, {"path": str(tmp_path / "o.png")}, True, 0.85, bad)
        with pytest.raises(gr.Error, match=r"input elevation must be a number in \[-60, 80\]"):
            h.set_elevation(token, bad)
    with pytest.raises(gr.Error, match=r"number of views must be an integer in \[2, 12\]"):
        h.views_around(token, 1, 1, 3, 900, 0.95)
    with pytest.raises(UserError, match="mesh resolution"):
        b.lift(b.sessions.get(token), mesh_resolution=float("nan"))


# ----------------------------------------------------------------------------- serving: no user-controlled path is written

def test_crafted_tokens_and_names_cannot_escape_the_session_folder(tmp_path):
    store = SessionStore(tmp_path / "root")
    b = Backend(FakeNVS(), FakeRecon(), sessions=store)
    h = Handlers(b, extra_read_roots=[tmp_path / "uploads"])
    real = h.new_session()[0]
    for token in ("../../etc", "..", "/tmp", real + "/../x", "", None, ["a"], real.upper() + "x"):
        assert store.get(token) is None
        with pytest.raises(gr.Error, match="session expired"):
            h.lift(token, False, progress=None)
    s = store.get(real)
    for name in ("../object.glb", "..\\object.glb", "/tmp/object.glb", "object.glb/../../x.glb", "object.glb\x00.png",
                 ".object.glb", "object.GLB", "object.sh", "a" * 300, "sub/object.glb", "~/object.glb"):
        with pytest.raises(ValueError):
            s.write_atomic(name, lambda p: p.write_bytes(b"x"))
    (tmp_path / "uploads").mkdir()
    outside = tmp_path / "secret.png"
    disc().save(outside)
    for payload in ({"path": str(outside)}, {"path": str(tmp_path / "uploads" / ".." / "secret.png")}):
        with pytest.raises(gr.Error, match="outside the upload folder"):
            h.process(real, payload, True, 0.85, 20)
    disc(64).save(tmp_path / "uploads" / "o.png")
    h.process(real, {"path": str(tmp_path / "uploads" / "o.png")}, True, 0.85, 20)
    _, files, _ = h.lift(real, False, progress=None)
    h.orbit(real)
    written = {p for p in (tmp_path).rglob("*") if p.is_file()}
    assert {p for p in written if store.root not in p.parents} == {outside, tmp_path / "uploads" / "o.png"}
    assert all(s.folder in p.parents for p in written if store.root in p.parents)
    assert all(s.folder in type(s.folder)(f).parents for f in files)
    store.close(real)
    assert not s.folder.exists()
