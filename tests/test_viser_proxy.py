"""Viser behind Gradio's port: a headless websocket client sends cameras through the proxy and
gets rendered frames back; clients never see each other's state; newer moves cancel stale work."""
import io
import time

import httpx
import numpy as np
import pytest
import viser
from PIL import Image, ImageDraw
from websockets.sync.client import connect

from core.bench.app import ViserWireClient, free_port
from viewer.backend import SessionStore
from viewer.viser_scene import fit_to_viewport, opencv_pose, spherical_from_position
from viewer_fakes import viewer_backend


def coloured_object(colour):
    im = Image.new("RGB", (120, 120), (80, 80, 80))
    ImageDraw.Draw(im).rectangle((30, 20, 90, 100), fill=colour)
    return im


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    import app
    backend = viewer_backend(SessionStore(tmp_path_factory.mktemp("s")), delay_s=0.05)
    run = app.launch(port=free_port(), backend=backend, quiet=True)
    yield run
    run.close()


def ws_url(run, token=None):
    port = run.url.rstrip("/").rsplit(":", 1)[1]
    return f"ws://127.0.0.1:{port}/viser" + (f"/s/{token}" if token else "")


def new_source(run, colour):
    s = run.backend.sessions.new()
    run.backend.set_source(s, coloured_object(colour))
    return s


def settle(ws, timeout=15.0):
    """Connect handshake: send a camera, then wait for the source view's final frame."""
    ws.send_camera(0.0, 20.0, 2.0)
    r = ws.view(0.0, 20.0, 2.0, timeout=timeout)
    assert r["final_s"] is not None, "no final frame for the source view"
    return r


def test_http_is_proxied(live):
    r = httpx.get(live.url + "viser/", timeout=30)
    assert r.status_code == 200 and "<html" in r.text.lower() and len(r.content) > 10_000
    r = httpx.get(live.url + "viser/s/abcdefgh1234", timeout=30, follow_redirects=False)
    assert r.status_code in (302, 307) and r.headers["location"].endswith("/viser/s/abcdefgh1234/")


def test_camera_through_proxy_gets_frames(live):
    s = new_source(live, (230, 30, 30))
    ws = ViserWireClient(ws_url(live, s.token))
    try:
        settle(ws)
        r = ws.view(90.0, 30.0, 2.2)
        assert r["first_s"] is not None and r["final_s"] is not None and len(r["frames"]) >= 3
        scales = [int(t.split("scale ")[1].split("/")[0]) for t in r["labels"]]
        assert scales == sorted(scales) and "azimuth 90°" in r["labels"][-1]
        img = Image.open(io.BytesIO(r["frames"][-1][1]))
        assert img.format == "JPEG" and img.size[0] >= img.size[1] > 0
        # the frame is the backend's view for that camera (the fake rolls the source by the azimuth)
        fake = live.backend.nvs
        expect = fake._target(fake.encode_source(s.source.image, s.source_w2c), s.source_w2c,
                              __import__("core.cameras", fromlist=["x"]).pose_from_spherical(90, 30, 2.2))
        got = np.asarray(img.convert("RGB").resize(expect.size)).astype(int)
        assert np.abs(got - np.asarray(expect).astype(int)).mean() < 20
    finally:
        ws.close()


def test_clients_are_isolated(live):
    a, b = new_source(live, (230, 30, 30)), new_source(live, (30, 30, 230))
    wa, wb = ViserWireClient(ws_url(live, a.token)), ViserWireClient(ws_url(live, b.token))
    try:
        settle(wa)
        settle(wb)
        ra = wa.view(120.0, 10.0, 2.0)
        # b sends nothing new: it must not receive a's frames or a's status
        leaked = [m for _, m in wb.messages(timeout=1.0)
                  if m.get("type") == "BackgroundImageMessage" or "120°" in (wb.status_text(m) or "")]
        assert ra["final_s"] is not None and not leaked
        rb = wb.view(-60.0, 25.0, 2.0)
        ca = np.asarray(Image.open(io.BytesIO(ra["frames"][-1][1])).convert("RGB")).reshape(-1, 3).mean(0)
        cb = np.asarray(Image.open(io.BytesIO(rb["frames"][-1][1])).convert("RGB")).reshape(-1, 3).mean(0)
        assert ca[0] > ca[2] and cb[2] > cb[0]          # each sees its own object
    finally:
        wa.close()
        wb.close()


def test_newer_move_cancels_stale_work(live):
    s = new_source(live, (30, 200, 30))
    ws = ViserWireClient(ws_url(live, s.token))
    try:
        settle(ws)
        calls = live.backend.nvs.calls
        for k in range(6):
            ws.send_camera(10.0 + 12 * k, 20.0, 2.0)
            time.sleep(0.02)
        ws.send_camera(150.0, 20.0, 2.0)
        texts, deadline = [], time.time() + 20
        while time.time() < deadline and not any("final" in t and "azimuth 150°" in t for t in texts):
            texts += [t for _, m in ws.messages(timeout=0.5) if (t := ws.status_text(m))]
        finals = [t for t in texts if "final" in t]
        assert finals and "azimuth 150°" in finals[-1]
        assert len(finals) == 1                                   # stale moves were cancelled mid-stream
        assert any("preview" in t and "azimuth 150°" in t for t in texts)   # the newest one streamed coarse first
        assert live.backend.nvs.calls - calls <= 7
    finally:
        ws.close()


def test_lifted_mesh_reaches_only_its_own_client(live):
    a, b = new_source(live, (200, 100, 30)), new_source(live, (30, 100, 200))
    wa, wb = ViserWireClient(ws_url(live, a.token)), ViserWireClient(ws_url(live, b.token))
    try:
        settle(wa)
        settle(wb)
        live.backend.lift(a, mesh_resolution=32)
        got_a = [m for _, m in wa.messages(timeout=1.5) if m.get("name") == "/object_mesh"]
        got_b = [m for _, m in wb.messages(timeout=0.5) if m.get("name") == "/object_mesh"]
        assert got_a and not got_b
    finally:
        wa.close()
        wb.close()


def test_disconnect_mid_stream_frees_the_work(live):
    import threading
    s = new_source(live, (120, 120, 30))
    ws = ViserWireClient(ws_url(live, s.token))
    settle(ws)
    ids = [cid for cid, c in live.scene.clients.items() if c.token == s.token]
    ws.send_camera(77.0, 20.0, 2.0)
    time.sleep(0.08)                                   # mid-stream (the fake takes 6 x 50 ms)
    ws.close()
    t_end = time.time() + 10
    alive = lambda: [t for t in threading.enumerate() if t.name in {f"viser-client-{i}" for i in ids}]  # noqa: E731
    while time.time() < t_end and (alive() or any(i in live.scene.clients for i in ids)):
        time.sleep(0.05)
    assert ids and not alive() and not any(i in live.scene.clients for i in ids)
    assert not live.backend.compute.locked()


def test_unknown_session_and_wrong_protocol(live):
    ws = ViserWireClient(ws_url(live))          # no token: connects, but has nothing to show
    try:
        ws.send_camera(30.0, 20.0, 2.0)
        texts = [ws.status_text(m) for _, m in ws.messages(timeout=1.5)]
        assert any(t and "Open this view from the app page" in t for t in texts)
    finally:
        ws.close()
    with connect(ws_url(live), subprotocols=["viser-v0.0.0"], open_timeout=10) as bad:
        with pytest.raises(Exception):
            bad.recv(timeout=5)                 # viser closes a mismatched client (1002)
    assert viser.__version__ == "1.1.1"


def test_pose_helpers():
    from core import cameras
    w2c = cameras.pose_from_spherical(35.0, 20.0, 2.0)
    wxyz, pos = opencv_pose(w2c)
    az, el, r = spherical_from_position(pos)
    assert np.allclose((az, el, r), (35.0, 20.0, 2.0), atol=1e-4)
    R = __import__("viser.transforms", fromlist=["SO3"]).SO3(wxyz).as_matrix()
    assert np.allclose(R[:, 2], -pos / np.linalg.norm(pos), atol=1e-5)   # OpenCV +z looks at the origin
    assert fit_to_viewport(Image.new("RGB", (64, 64)), 200, 100).shape == (64, 128, 3)
    assert fit_to_viewport(Image.new("RGB", (64, 64)), 100, 200).shape == (64, 32, 3)
