"""The Gradio app: handlers called directly, then one in-process launch driven by gradio_client."""
import io
import re
from pathlib import Path
import struct
import zlib

import gradio as gr
import numpy as np
import pytest
import trimesh
from PIL import Image, ImageDraw

from viewer.backend import Backend, SessionStore, UserError
from viewer.ui import Handlers, build_demo
from viewer_fakes import FakeNVS, FakeRecon, viewer_backend

LABEL = re.compile(r"scale (\d+)/(\d+)")


def object_png(path, size=(160, 120)):
    im = Image.new("RGB", size, (70, 90, 110))
    ImageDraw.Draw(im).ellipse((50, 20, 110, 100), fill=(230, 200, 40))
    im.save(path)
    return path


def bomb_png(path, w=20000, h=20000):
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    raw = buf.getvalue()
    chunk = b"IHDR" + struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    path.write_bytes(raw[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + raw[33:])
    return path


def bad_inputs(tmp):
    (tmp / "notes.png").write_text("this is a text file, not a picture")
    good = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good, "PNG")
    (tmp / "truncated.png").write_bytes(good.getvalue()[:400])
    Image.new("RGBA", (64, 64), (0, 0, 0, 0)).save(tmp / "empty_alpha.png")
    return {"notes.png": "not an image", "truncated.png": "damaged|truncated|unreadable",
            "huge.png": "too large", "empty_alpha.png": "transparent"}


# ----------------------------------------------------------------------------- handlers

@pytest.fixture
def handlers(tmp_path):
    b = Backend(FakeNVS(), FakeRecon(), sessions=SessionStore(tmp_path / "sessions"))
    return Handlers(b, extra_read_roots=[tmp_path])


def test_handlers_end_to_end(handlers, tmp_path):
    token, iframe, code = handlers.new_session()
    assert f"/viser/s/{token}/" in iframe and token in code
    img, text = handlers.process(token, {"path": str(object_png(tmp_path / "obj.png"))}, True, 0.8, 25)
    assert img.size == (256, 256) and "background removed" in text
    frames = list(handlers.generate(token, 90, 20, 2.0, 0, 3.0, 900, 0.95))
    scales = [int(LABEL.search(lbl).group(1)) for _, lbl in frames]
    assert len(frames) >= 3 and scales == sorted(scales) and "final" in frames[-1][1]
    strip = handlers.views_around(token, 4, 0, 3.0, 900, 0.95)
    assert len(strip) == 4 and all(isinstance(im, Image.Image) for im, _ in strip)
    pipe = handlers.backend.nvs
    assert pipe.last_samples == 1  # the default: one draw
    list(handlers.generate(token, 90, 20, 2.0, 0, 3.0, 900, 0.95, 4))
    assert pipe.last_samples == 4
    handlers.views_around(token, 4, 0, 3.0, 900, 0.95, 16)
    assert pipe.last_samples == 16  # the slider's end is the knob's
    with pytest.raises(gr.Error, match=r"samples must be an integer in \[1, 16\]"):
        handlers.views_around(token, 4, 0, 3.0, 900, 0.95, 99)  # the same rule as the command line
    glb, files, status = handlers.lift(token, True, progress=None)
    orbit = handlers.orbit(token)
    session = handlers.backend.sessions.get(token)
    assert all(str(session.folder) in f for f in files + [glb, orbit]) and "Mesh ready" in status
    assert len(trimesh.load(glb, force="mesh").vertices) > 0 and Image.open(orbit).n_frames > 1
    handlers.backend.sessions.close(token)
    assert not session.folder.exists()


@pytest.mark.parametrize("max_views", [8, 3])
def test_lift_with_a_full_strip_takes_what_the_loaded_model_takes(tmp_path, max_views):
    """A strip of 12 views (the most the UI makes) plus the photo is 13 images; the lift must hand
    the model no more than its checkpoint's ``max_views``, spread around the orbit."""
    from core.recon import ReconConfig
    recon = FakeRecon(ReconConfig(max_views=max_views))
    h = Handlers(Backend(FakeNVS(), recon, sessions=SessionStore(tmp_path / "s")), extra_read_roots=[tmp_path])
    token = h.new_session()[0]
    h.process(token, {"path": str(object_png(tmp_path / "obj.png"))}, True, 0.85, 20)
    assert len(h.views_around(token, 12, 0, 3.0, 900, 0.95)) == 12
    list(h.generate(token, 10, 20, 2.0, 0, 3.0, 900, 0.95))   # one more single view on top of the strip
    glb, files, status = h.lift(token, True, progress=None)
    assert recon.last_views == max_views and "Mesh ready" in status


def test_handlers_refuse_paths_outside_upload_folders(handlers):
    token = handlers.new_session()[0]
    with pytest.raises(gr.Error, match="outside"):
        handlers.process(token, {"path": "/etc/passwd"}, True, 0.85, 20)


@pytest.mark.parametrize("name", ["notes.png", "truncated.png", "huge.png", "empty_alpha.png"])
def test_handlers_bad_input_is_a_clear_error(handlers, tmp_path, name):
    expected = bad_inputs(tmp_path)[name]
    bomb_png(tmp_path / "huge.png")
    token = handlers.new_session()[0]
    with pytest.raises(gr.Error, match=expected):
        handlers.process(token, {"path": str(tmp_path / name)}, True, 0.85, 20)


def test_missing_models_disable_only_their_features(tmp_path):
    b = Backend.load(tmp_path / "no-such-folder", sessions=SessionStore(tmp_path / "s"))
    assert not b.nvs_ready and not b.recon_ready
    text = b.status_markdown()
    assert "does not exist" in text and "python -m core.train nvs" in text and "checkpoints/recon" in text
    (tmp_path / "ck" / "nvs").mkdir(parents=True)
    (tmp_path / "ck" / "nvs" / "model.safetensors").write_bytes(b"not a safetensors file")
    (tmp_path / "ck" / "tokenizer").mkdir()
    (tmp_path / "ck" / "tokenizer" / "model.safetensors").write_bytes(b"junk")
    b2 = Backend.load(tmp_path / "ck", sessions=SessionStore(tmp_path / "s2"))
    assert not b2.nvs_ready and "nvs" in b2.problems and "recon" in b2.problems
    h = Handlers(b2, extra_read_roots=[tmp_path])
    token = h.new_session()[0]
    img, _ = h.process(token, {"path": str(object_png(tmp_path / "o.png"))}, True, 0.85, 20)
    assert img is not None                      # input still works without models
    with pytest.raises(gr.Error, match="unavailable"):
        list(h.generate(token, 30, 20, 2.0, 0, 3, 900, 0.95))
    with pytest.raises(gr.Error, match="unavailable"):
        h.lift(token, False, progress=None)
    demo = build_demo(b2)
    buttons = [blk for blk in demo.blocks.values() if isinstance(blk, gr.Button)]
    assert buttons and all(not btn.interactive for btn in buttons)


def test_session_files_are_atomic_and_named_by_us(tmp_path):
    store = SessionStore(tmp_path / "root")
    s = store.new()
    p = s.write_atomic("object.glb", lambda path: path.write_bytes(b"x"))
    assert p.parent == s.folder and p.read_bytes() == b"x"
    assert [q.name for q in s.folder.iterdir()] == ["object.glb"]     # no temp file left behind
    for bad in ("../evil.glb", "/etc/passwd", "a/b.glb", "x.sh"):
        with pytest.raises(ValueError):
            s.path(bad)

    def boom(path):
        path.write_bytes(b"half")
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError):
        s.write_atomic("object.ply", boom)
    assert sorted(q.name for q in s.folder.iterdir()) == ["object.glb"]
    store.ttl_s = 0.0
    store.sweep()
    assert not s.folder.exists() and len(store) == 0


def test_parameters_validated(handlers, tmp_path):
    token = handlers.new_session()[0]
    handlers.process(token, {"path": str(object_png(tmp_path / "obj.png"))}, True, 0.85, 20)
    with pytest.raises(gr.Error, match=r"azimuth must be a number in \[-180, 180\], got nan"):
        list(handlers.generate(token, float("nan"), 20, 2.0, 0, 3, 900, 0.95))
    with pytest.raises(gr.Error, match="distance must be"):   # out of range: refused, as on the command line
        list(handlers.generate(token, 30, 20, 99.0, 0, 3, 900, 0.95))
    assert list(handlers.generate(token, 30, 20, 4.0, 0, 3, 900, 1.0))
    with pytest.raises(UserError):
        handlers.backend.set_elevation(handlers.backend.sessions.get(token), float("inf"))


# ----------------------------------------------------------------------------- live server

@pytest.fixture(scope="module")
def live(tmp_path_factory):
    import app
    from core.bench.app import free_port
    tmp = tmp_path_factory.mktemp("live")
    backend = viewer_backend(SessionStore(tmp / "sessions"))
    run = app.launch(port=free_port(), backend=backend, quiet=True)
    yield run, tmp
    run.close()


def test_live_stream_glb_and_bad_inputs(live):
    from gradio_client import Client, handle_file
    run, tmp = live
    client = Client(run.url, verbose=False)
    html, _ = client.predict(api_name="/new_session")
    assert "/viser/s/" in html

    # bad inputs: a clear message each, and the server keeps serving
    expected = bad_inputs(tmp)
    bomb_png(tmp / "huge.png")
    for name, words in expected.items():
        with pytest.raises(Exception, match=words):
            client.predict(handle_file(str(tmp / name)), True, 0.85, 20, api_name="/process")

    processed, text = client.predict(handle_file(str(object_png(tmp / "obj.png"))), True, 0.85, 20,
                                     api_name="/process")
    assert Image.open(processed).size == (256, 256) and "Processed" in text

    job = client.submit(60, 20, 2.0, 0, 3.0, 900, 0.95, api_name="/generate")
    outs = list(job)
    labels = [lbl for _, lbl in job.outputs()]
    scales = [int(LABEL.search(lbl).group(1)) for lbl in labels]
    assert len(outs) >= 3 and len(set(scales)) >= 3 and scales == sorted(scales) and "final" in labels[-1]
    sizes = {Image.open(p).size for p, _ in job.outputs()}
    assert len(sizes) == 1
    png = b"\x89PNG\r\n\x1a\n"   # lossless, as users compare views (Gradio's default is WebP)
    assert all(Path(p).read_bytes()[:8] == png for p, _ in job.outputs()) and Path(processed).read_bytes()[:8] == png
    strip = client.predict(3, 0, 3.0, 900, 0.95, 1, api_name="/views_around")
    assert len(strip) == 3 and all(Path(item["image"]).read_bytes()[:8] == png for item in strip)
    client.predict(60, 20, 2.0, 0, 3.0, 900, 0.95, 3, api_name="/generate")  # Advanced: average of 3 samples
    if hasattr(run.backend.nvs, "last_samples"):
        assert run.backend.nvs.last_samples == 3

    glb, files, status = client.predict(True, api_name="/lift")
    assert Image.open(client.predict(api_name="/orbit")).n_frames > 1
    assert {p.rsplit(".", 1)[1] for p in files} == {"glb", "ply", "obj"}
    mesh = trimesh.load(glb, force="mesh")
    colours = np.asarray(mesh.visual.vertex_colors)
    assert len(mesh.vertices) > 0 and colours.shape[1] == 4 and len(np.unique(colours[:, :3], axis=0)) > 1
    if isinstance(run.backend.recon, FakeRecon):
        # DESIGN.md: world (x, y, z) -> glTF (y, z, x); the fake box is 0.5 x 0.4 x 1.0 (tall along world +Z)
        # with its +X face red, so in glTF it is tall along +Y and red towards +Z.
        assert np.allclose(mesh.extents, (0.4, 1.0, 0.5), atol=1e-5)
        red = (colours[:, 0] == 255) & (colours[:, 1] == 0)
        assert red.any() and (mesh.vertices[red, 2] > 0.2).all()


def test_every_slider_spans_its_knobs_range(tmp_path):
    """One rule per knob: the page's controls span exactly core's ranges (so the page, the API and the
    command line accept the same values)."""
    from core import cameras
    from core.nvs.sampling import KNOBS
    from core.preprocess import FOREGROUND_RANGE
    demo = build_demo(Backend(FakeNVS(), FakeRecon(), sessions=SessionStore(tmp_path / "s")))
    by_label = {getattr(b, "label", None): b for b in demo.blocks.values()}
    expect = {"Guidance (CFG)": KNOBS["cfg"], "Top-k (0 = off)": KNOBS["top_k"], "Top-p (0 or 1 = off)": KNOBS["top_p"],
              "Average of N samples": KNOBS["samples"], "Seed": KNOBS["seed"]}
    for label, k in expect.items():
        assert (by_label[label].minimum, by_label[label].maximum) == (k.lo, k.hi), label
    for label, rng in (("Azimuth (degrees)", cameras.VIEW_RANGES["azimuth"]),
                       ("Elevation (degrees)", cameras.VIEW_RANGES["elevation"]),
                       ("Input view elevation (estimate, degrees)", cameras.VIEW_RANGES["elevation"]),
                       ("Distance", cameras.VIEW_RANGES["distance"]), ("Foreground ratio", FOREGROUND_RANGE)):
        assert (by_label[label].minimum, by_label[label].maximum) == rng, label


def test_live_api_refusals_use_cores_words_and_log_one_line(live, capfd, caplog):
    """Out-of-range values through the API get core's message (the command line's words), and the
    server log gets one line per refusal, not a traceback (tracebacks are for bugs)."""
    from gradio_client import Client, handle_file
    run, tmp = live
    client = Client(run.url, verbose=False)
    client.predict(api_name="/new_session")
    capfd.readouterr()
    caplog.set_level("INFO", logger="vantage.viewer")
    with pytest.raises(Exception, match="not an image"):
        client.predict(handle_file(str(bad_inputs(tmp) and tmp / "notes.png")), True, 0.85, 20, api_name="/process")
    client.predict(handle_file(str(object_png(tmp / "obj2.png"))), True, 0.85, 20, api_name="/process")
    for args, says in (((1e9, 20, 2.0, 0, 3.0, 900, 0.95), r"azimuth must be a number in \[-180, 180\]"),
                       ((30, 20, 2.0, -1, 3.0, 900, 0.95), r"seed must be an integer in \[0, 2147483647\]"),
                       ((30, 20, 2.0, 0, 1e6, 900, 0.95), r"cfg must be a number in \[0, 10\]"),
                       ((30, 20, 2.0, 0, 3.0, 900, 2.0), r"top_p must be a number in \[0, 1\]")):
        with pytest.raises(Exception, match=says):
            client.predict(*args, api_name="/generate")
    with pytest.raises(Exception, match=r"input elevation must be a number in \[-60, 80\]"):
        client.predict(1e9, api_name="/set_elevation")
    assert "Traceback" not in capfd.readouterr().err
    refused = [r for r in caplog.records if r.getMessage().startswith("refused: ")]
    assert len(refused) >= 6 and all(r.exc_info is None and "\n" not in r.getMessage() for r in refused)


def test_closing_a_session_removes_gradios_copies_of_its_exports(live):
    """'Removed when the tab closes' holds for every copy: Gradio serves a handler's files from its own
    cache, and those copies stop being served when the session closes (not at Gradio's hourly sweep)."""
    import re as _re

    import httpx
    from gradio_client import Client, handle_file
    run, tmp = live
    for t in run.backend.sessions.tokens():   # no other tab holds the same bytes (copies are shared by content)
        run.backend.sessions.close(t)
    client = Client(run.url, verbose=False, download_files=False)   # file outputs as the server's URLs
    html, _ = client.predict(api_name="/new_session")
    token = _re.search(r"/viser/s/([A-Za-z0-9_\-]+)/", html).group(1)
    client.predict(handle_file(str(object_png(tmp / "obj3.png"))), True, 0.85, 20, api_name="/process")
    glb, files, status = client.predict(False, api_name="/lift")
    urls = [f["url"] for f in [glb, *files]]
    assert len(urls) == 4 and all(httpx.get(u, timeout=10).status_code == 200 for u in urls)
    run.backend.sessions.close(token)
    assert all(httpx.get(u, timeout=10).status_code in (403, 404) for u in urls)
    assert not any(Path(f["path"]).exists() for f in [glb, *files])


def test_session_cap_evicts_the_longest_idle(tmp_path):
    store = SessionStore(tmp_path / "s", max_sessions=3)
    made = []
    import time
    for i in range(5):
        made.append(store.new())
        made[-1].last_used = time.time() - 100 + i   # made[0] idle the longest
    store.get(made[2].token)                   # touched now: the most recently used
    assert len(store) == 3
    assert store.get(made[0].token) is None and store.get(made[1].token) is None
    assert not made[0].folder.exists() and made[4].folder.exists()
    store.new()
    assert len(store) == 3 and store.get(made[3].token) is None and store.get(made[2].token) is not None


def test_janitor_sweeps_expired_sessions_while_idle(tmp_path, monkeypatch):
    """Expired sessions go even when nobody opens a new one, and freed memory is handed back then."""
    import time
    import viewer.backend as vb
    trims = []
    monkeypatch.setattr(vb, "release_memory", lambda: trims.append(1))
    b = Backend(FakeNVS(), FakeRecon(), sessions=SessionStore(tmp_path / "s", ttl_s=0.2))
    s = b.sessions.new()
    stop = b.start_janitor(0.05)
    try:
        t_end = time.time() + 5
        while (len(b.sessions) or s.folder.exists() or not trims) and time.time() < t_end:
            time.sleep(0.05)   # the janitor thread closes the session, removes its folder, then trims
    finally:
        stop.set()
    assert len(b.sessions) == 0 and not s.folder.exists() and trims


def test_sigterm_removes_every_sessions_files(tmp_path):
    """Stopping the server with SIGTERM (Spaces, systemd) cleans up as Ctrl+C does."""
    import os
    import signal
    import subprocess
    import sys
    from gradio_client import Client
    from core.bench.app import free_port, wait_http
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    port = free_port()
    env = dict(os.environ, TMPDIR=str(tmpdir), GRADIO_TEMP_DIR=str(tmp_path / "gradio"), HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--checkpoints", str(tmp_path / "none")],
                            cwd=Path(__file__).resolve().parents[1], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        wait_http(f"http://127.0.0.1:{port}/", 120, proc)
        Client(f"http://127.0.0.1:{port}/", verbose=False).predict(api_name="/new_session")
        roots = list(tmpdir.glob("vantage-*"))
        sessions = [p for r in roots for p in r.iterdir()]
        assert len(roots) == 1 and len(sessions) == 1
        (sessions[0] / "object.glb").write_bytes(b"glTF")    # stands for an export
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not list(tmpdir.glob("vantage-*")), "a session's files were left behind"


def test_readme_api_example_runs(live):
    """The README's gradio_client example, run as written (server address and photo path swapped)."""
    import re as _re
    run, tmp = live
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = _re.search(r"<!-- api-example:.*?-->\n```python\n(.*?)```", readme, _re.S).group(1)
    code = code.replace("http://127.0.0.1:7860/", run.url).replace('"photo.png"', repr(str(object_png(tmp / "api.png"))))
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert Path(scope["view"]).read_bytes()[:4] == b"\x89PNG" and "final" in scope["label"]
    assert Path(scope["glb"]).stat().st_size > 0 and "Mesh ready" in scope["status"]


def test_live_upload_size_limit(live):
    import httpx
    run, _ = live
    big = b"\0" * (21 * 1024 * 1024)
    r = httpx.post(run.url + "gradio_api/upload", files={"files": ("big.png", big, "image/png")}, timeout=60)
    assert r.status_code in (400, 413) and "size" in r.text.lower()


def test_handlers_with_real_untrained_pipelines(tmp_path):
    """The adapter against the real NVS/recon classes (tiny, untrained): frames stream coarse to
    fine; the untrained field may have no surface, which must be a clear message, not a crash."""
    from viewer_fakes import tiny_real_pipelines
    nvs, recon = tiny_real_pipelines()
    h = Handlers(Backend(nvs, recon, sessions=SessionStore(tmp_path / "s")), extra_read_roots=[tmp_path])
    token = h.new_session()[0]
    h.process(token, {"path": str(object_png(tmp_path / "obj.png"))}, True, 0.85, 20)
    frames = list(h.generate(token, 45, 20, 2.0, 0, 3.0, 50, 0.95))
    scales = [int(LABEL.search(lbl).group(1)) for _, lbl in frames]
    assert scales == list(range(1, nvs.num_scales + 1)) and frames[-1][0].size == (nvs.resolution,) * 2
    try:
        glb, files, status = h.lift(token, False, progress=None)
    except gr.Error as e:
        assert "surface" in str(e)
    else:
        assert trimesh.load(glb, force="mesh").vertices.shape[1] == 3


def test_abandoned_stream_does_not_block_others(handlers, tmp_path):
    """A consumer that stops reading (a closed tab) must not hold the model lock."""
    t1, t2 = handlers.new_session()[0], handlers.new_session()[0]
    for t in (t1, t2):
        handlers.process(t, {"path": str(object_png(tmp_path / "obj.png"))}, True, 0.85, 20)
    abandoned = handlers.generate(t1, 10, 20, 2.0, 0, 3, 900, 0.95)
    next(abandoned)                                        # one preview, then never read again
    frames = list(handlers.generate(t2, 50, 20, 2.0, 0, 3, 900, 0.95))
    assert "final" in frames[-1][1] and not handlers.backend.compute.locked()


def test_cli_flags_and_exposure_warning(capsys):
    import app
    with pytest.raises(SystemExit):
        app.parse_args(["--help"])
    out = capsys.readouterr().out
    for flag in ("--host", "--port", "--device", "--checkpoints", "--share"):
        assert flag in out
    args = app.parse_args([])
    assert args.host == "127.0.0.1" and not args.share
    assert app.exposure_warning("127.0.0.1", False) is None and app.exposure_warning("localhost", False) is None
    assert "0.0.0.0" in app.exposure_warning("0.0.0.0", False)
    assert "public link" in app.exposure_warning("127.0.0.1", True)


def test_busy_port_is_refused_in_the_apps_words_before_any_model_loads(monkeypatch, capsys):
    import socket

    import app
    from viewer.backend import Backend

    def must_not_load(*a, **k):
        raise AssertionError("models loaded although the port is taken")

    monkeypatch.setattr(Backend, "load", must_not_load)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert app.main(["--port", str(port), "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert f"port {port} on 127.0.0.1 is not available" in err and "--port" in err
        assert "Traceback" not in err and "GRADIO_SERVER_PORT" not in err
    for bad in ("0", "65536", "http"):
        with pytest.raises(SystemExit):
            app.parse_args(["--port", bad])
    assert "--port" in capsys.readouterr().err


def test_a_copy_two_live_sessions_share_outlives_one_of_them(tmp_path, monkeypatch):
    """Gradio keys its copies by content: the same photo lifted in two tabs gives one cached copy, which
    must stay while either tab is open."""
    from viewer import ui
    cache = tmp_path / "cache"
    monkeypatch.setattr(ui, "get_upload_folder", lambda: str(cache))
    from gradio import processing_utils
    store = SessionStore(tmp_path / "s")
    a, b = store.new(), store.new()
    for s in (a, b):
        (s.folder / "object.glb").write_bytes(b"same bytes")
    copy = cache / processing_utils.hash_file(a.folder / "object.glb") / "object.glb"
    copy.parent.mkdir(parents=True)
    copy.write_bytes(b"same bytes")
    store.before_remove.append(ui._purge_closed(store))
    store.close(a.token)
    assert copy.is_file()                     # b still serves it
    store.close(b.token)
    assert not copy.exists()                  # the last holder closed: gone
