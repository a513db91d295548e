"""A real browser (Debian's chromium via Playwright) loads the app: the Gradio UI and the proxied,
connected Viser view both appear, an example upload reaches the 3D view; a screenshot is saved.

Set VANTAGE_SCREENSHOT_DIR to keep the screenshot somewhere other than pytest's tmp folder.
"""
import os
import shutil
import time
from pathlib import Path

import pytest

from core.bench.app import free_port
from viewer.backend import SessionStore
from viewer_fakes import viewer_backend

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed "
                                "(apt-get install -y chromium); .ci/run installs it")
ASSETS = Path(__file__).resolve().parents[1] / "assets"


def test_page_gradio_and_viser(tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    import app
    run = app.launch(port=free_port(), backend=viewer_backend(SessionStore(tmp_path / "s")), quiet=True)
    shot = Path(os.environ.get("VANTAGE_SCREENSHOT_DIR", tmp_path)) / "app_screenshot.png"
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
                "--no-sandbox", "--disable-dev-shm-usage", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"])
            page = browser.new_page(viewport={"width": 1280, "height": 1700})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(run.url, wait_until="domcontentloaded", timeout=60_000)
            page.get_by_text("Vantage", exact=False).first.wait_for(timeout=60_000)
            page.get_by_role("button", name="Generate", exact=True).wait_for(timeout=30_000)

            # the Viser iframe is pinned to this tab's session and its client connects through the proxy
            frame_el = page.locator("#viser-frame")
            frame_el.wait_for(timeout=30_000)
            src = ""
            for _ in range(100):
                src = frame_el.get_attribute("src") or ""
                if "/viser/s/" in src:
                    break
                time.sleep(0.2)
            assert "/viser/s/" in src, src
            token = src.split("/viser/s/")[1].strip("/")
            viser_frame = page.frame_locator("#viser-frame")
            viser_frame.locator("canvas").first.wait_for(timeout=60_000)
            t_end = time.time() + 60
            while time.time() < t_end and not any(c.token == token for c in run.scene.clients.values()):
                time.sleep(0.2)
            assert any(c.token == token for c in run.scene.clients.values()), "the Viser view never connected"

            # upload a photo: the processed image appears and the 3D view streams the source view
            page.locator("#input-image input[type=file]").set_input_files(str(ASSETS / "render_car.png"))
            page.locator("#processed-image img").first.wait_for(timeout=60_000)
            client = next(c for c in run.scene.clients.values() if c.token == token)
            t_end = time.time() + 60
            while time.time() < t_end and client.frames_sent == 0:
                time.sleep(0.2)
            assert client.frames_sent > 0, "no frame reached the browser's Viser view"
            viser_frame.get_by_text("scale", exact=False).first.wait_for(timeout=30_000)

            # drag the 3D view: the browser's own camera moves and a view for the new azimuth streams in
            box = frame_el.bounding_box()
            cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
            page.mouse.move(cx, cy)
            page.mouse.down()
            for k in range(1, 11):
                page.mouse.move(cx + 25 * k, cy, steps=2)
            page.mouse.up()
            t_end = time.time() + 60
            while time.time() < t_end and not (client.last_request and abs(client.last_request[0]) > 5
                                               and client.timings and client.timings[-1]["view"] == client.last_request
                                               and client.timings[-1]["final_s"] is not None):
                time.sleep(0.2)
            assert client.last_request and abs(client.last_request[0]) > 5, "dragging did not move the camera"
            assert client.timings[-1]["view"] == client.last_request and client.timings[-1]["final_s"] is not None
            time.sleep(1.0)
            page.screenshot(path=str(shot), full_page=True)
            folder = run.backend.sessions.get(token).folder
            assert folder.is_dir()
            browser.close()
        t_end = time.time() + 30                  # tab closed -> Gradio's unload -> session files removed
        while time.time() < t_end and folder.exists():
            time.sleep(0.5)
        assert not folder.exists() and run.backend.sessions.get(token) is None
        assert shot.stat().st_size > 10_000
        assert not [e for e in errors if "viser" in e.lower()], errors
    finally:
        run.close()
