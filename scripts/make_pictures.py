"""Regenerate the README's pictures from the shipped checkpoints.

  python scripts/make_pictures.py            # both
  python scripts/make_pictures.py orbit      # assets/readme/orbit.gif: the photo, the volume render, the mesh; one turn
  python scripts/make_pictures.py app        # assets/readme/app.png: the running app in headless chromium

``orbit`` lifts ``--photo`` (default assets/render_car.png) the way ``python -m core.photo lift`` does
(the app's preprocessing and input camera) and draws one turn around it: the photo, the triplane
volume-rendered by ``TriplaneScene.render``, and the extracted mesh (what the GLB holds) rasterised
as the app's orbit animation is. ``app`` starts ``app.launch`` on a free loopback port with the
shipped checkpoints, drops the photo in, presses *Generate*, drags the 3D view until a generated view
streams there, and saves the page from the title to the bottom of the 3D view. It needs Debian's
``chromium`` and Playwright (``tests/test_browser.py`` drives the page the same way).
Both run on one CPU thread; the whole thing takes a minute or two.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def orbit_gif(photo: Path, checkpoints: Path, out: Path, frames: int = 24, size: int = 144) -> dict:
    """Photo / volume render / mesh raster (top to bottom), ``frames`` cameras evenly around the object."""
    from PIL import Image

    from core import cameras
    from core.data.render import Renderer, parts_from_trimesh
    from core.photo import load_photo
    from core.recon import ReconPipeline

    pipe = ReconPipeline.from_pretrained(checkpoints / "recon")
    el, r = pipe.config.default_elevation_deg, pipe.config.default_radius
    image = load_photo(str(photo), True, 0.85).image
    scene = pipe.reconstruct([image], [cameras.pose_from_spherical(0.0, el, r)])
    mesh = scene.extract_mesh(resolution=128)
    w2cs = cameras.orbit(frames, el, r)
    renders = [scene.render(w, size) for w in w2cs]
    raster = Renderer(size=size)
    try:
        raster.set_asset(parts_from_trimesh(mesh))
        meshes = [raster.render(w).image.convert("RGB") for w in w2cs]
    finally:
        raster.release()
    top = image.convert("RGB").resize((size, size), Image.LANCZOS)
    sheets = []
    for a, b in zip(renders, meshes):     # a column: the photo, the volume render, the mesh
        s = Image.new("RGB", (size, 3 * size), "white")
        for i, im in enumerate((top, a, b)):
            s.paste(im, (0, i * size))
        sheets.append(s)
    # one palette for every frame: smaller, and no colour flicker between frames
    strip = Image.new("RGB", (size * len(sheets), 3 * size))
    for i, s in enumerate(sheets):
        strip.paste(s, (i * size, 0))
    palette = strip.quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    gif = [s.quantize(palette=palette, dither=Image.Dither.NONE) for s in sheets]
    out.parent.mkdir(parents=True, exist_ok=True)
    gif[0].save(out, format="GIF", save_all=True, append_images=gif[1:], duration=100, loop=0, optimize=True)
    return {"out": str(out), "frames": len(gif), "size": list(sheets[0].size), "bytes": out.stat().st_size,
            "elevation": el, "radius": r}


def wait(cond, timeout: float, what: str, step: float = 0.25) -> None:
    t_end = time.time() + timeout
    while time.time() < t_end:
        if cond():
            return
        time.sleep(step)
    raise TimeoutError(f"waited {timeout:.0f} s for {what}")


def app_screenshot(photo: Path, checkpoints: Path, out: Path, width: int = 960) -> dict:
    """The app in a headless chromium: input processed, a generated view, the 3D view after a drag."""
    from PIL import Image, ImageChops
    from playwright.sync_api import sync_playwright

    import app
    from core.bench.app import free_port

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    run = app.launch(port=free_port(), checkpoints=str(checkpoints), quiet=True)
    try:
        with sync_playwright() as p, tempfile.TemporaryDirectory() as tmp:
            browser = p.chromium.launch(executable_path=chromium, headless=True, args=[
                "--no-sandbox", "--disable-dev-shm-usage", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"])
            page = browser.new_page(viewport={"width": 1700, "height": 1400})
            page.goto(run.url, wait_until="domcontentloaded", timeout=120_000)
            page.get_by_role("button", name="Generate", exact=True).wait_for(timeout=120_000)
            frame_el = page.locator("#viser-frame")
            wait(lambda: "/viser/s/" in (frame_el.get_attribute("src") or ""), 60, "the 3D view's session")
            token = frame_el.get_attribute("src").split("/viser/s/")[1].strip("/")
            page.frame_locator("#viser-frame").locator("canvas").first.wait_for(timeout=120_000)
            wait(lambda: any(c.token == token for c in run.scene.clients.values()), 120, "the 3D view to connect")
            client = next(c for c in run.scene.clients.values() if c.token == token)

            page.locator("#input-image input[type=file]").set_input_files(str(photo))
            page.locator("#processed-image img").first.wait_for(timeout=120_000)
            page.get_by_role("button", name="Generate", exact=True).click()
            label = page.locator("#novel-view-label")
            wait(lambda: "final" in label.inner_text(), 180, "the generated view")

            # drag the 3D view sideways: its camera orbits and a view for the new azimuth streams in
            wait(lambda: client.timings and client.timings[-1]["final_s"] is not None, 120, "the 3D view's first view")
            frame_el.scroll_into_view_if_needed()
            box = frame_el.bounding_box()
            cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
            page.mouse.move(cx, cy)
            page.mouse.down()
            for k in range(1, 9):
                page.mouse.move(cx + 10 * k, cy, steps=2)
            page.mouse.up()
            try:
                wait(lambda: client.last_request and abs(client.last_request[0]) > 5 and client.timings
                     and client.timings[-1]["view"] == client.last_request
                     and client.timings[-1]["final_s"] is not None, 180, "the dragged view")
            except TimeoutError:
                failed = Path(tempfile.gettempdir()) / "make_pictures_failed.png"
                page.screenshot(path=str(failed), full_page=True)
                print(f"page at the timeout: {failed}; 3D view's last request {client.last_request}, "
                      f"timings {client.timings[-2:]}", file=sys.stderr)
                raise
            # Viser's "software WebGL" notice (swiftshader, no GPU here) would cover part of the view
            viser = next(f for f in page.frames if "/viser/s/" in f.url)
            close = viser.locator(".mantine-Notification-closeButton")
            for _ in range(close.count()):
                close.first.click(timeout=10_000)   # as a user would
            time.sleep(2.0)                      # the last frame reaches the canvas
            raw = Path(tmp) / "page.png"
            page.screenshot(path=str(raw), full_page=True)
            bottom = page.evaluate("() => { const r = document.querySelector('#viser-frame')"
                                   ".getBoundingClientRect(); return r.bottom + window.scrollY + 8; }")
            browser.close()
            shot = Image.open(raw).convert("RGB")
            shot = shot.crop((0, 0, shot.width, min(shot.height, int(bottom))))
            # the page is centred in a wide window: keep its content, not the white margins
            ink = ImageChops.difference(shot, Image.new("RGB", shot.size, "white")).convert("L")
            left, _, right, _ = ink.point(lambda v: 255 if v > 8 else 0).getbbox()
            shot = shot.crop((max(0, left - 16), 0, min(shot.width, right + 16), shot.height))
    finally:
        run.close()
    shot = shot.resize((width, round(shot.height * width / shot.width)), Image.LANCZOS)
    out.parent.mkdir(parents=True, exist_ok=True)
    shot.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(out, optimize=True)
    return {"out": str(out), "size": list(shot.size), "bytes": out.stat().st_size,
            "dragged_view": [round(v, 1) for v in client.last_request]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python scripts/make_pictures.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", nargs="?", choices=["all", "orbit", "app"], default="all")
    ap.add_argument("--photo", type=Path, default=ROOT / "assets" / "render_car.png")
    ap.add_argument("--checkpoints", type=Path, default=ROOT / "checkpoints")
    # a sub-folder: the app offers every image directly in assets/ as an example photo
    ap.add_argument("--out", type=Path, default=ROOT / "assets" / "readme", help="folder for orbit.gif and app.png")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    a = ap.parse_args(argv)
    import torch
    torch.set_num_threads(a.threads)
    from core.report import emit_json
    report = {}
    if a.what in ("all", "orbit"):
        report["orbit"] = orbit_gif(a.photo, a.checkpoints, a.out / "orbit.gif")
    if a.what in ("all", "app"):
        report["app"] = app_screenshot(a.photo, a.checkpoints, a.out / "app.png")
    emit_json(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
