"""Hostile and careless clients against a running app, with a canary client streaming views throughout.

    python -m viewer.hostile --url http://127.0.0.1:7860/ [--sessions 300 --clients 8] [--out FILE.json]
    python -m viewer.loadtest --soak ...     # starts a server, runs this, reports its memory

Each case sends what a careless or hostile client might (bad files, values outside every knob's range,
wrong types, a path outside the upload folder, endpoints called before ``/new_session``, a flood of
sessions, concurrent clients, streams abandoned half way) and checks the answer: a clear refusal that
names the problem, or a normal result. Meanwhile a canary session keeps generating views; the run
passes only when every case got its expected answer and the canary never failed. Prints JSON.
The full sizes above are the documented run; ``tests/test_hostile.py`` runs it small.
"""
from __future__ import annotations

import argparse
import io
import json
import random
import re
import struct
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

TOKEN = re.compile(r"/viser/s/([A-Za-z0-9_\-]+)/")
GENERATE = (30, 20, 2.0, 0, 3.0, 900, 0.95, 1)   # azimuth, elevation, distance, seed, cfg, top-k, top-p, samples


def client(url: str):
    from gradio_client import Client
    return Client(url, verbose=False, download_files=False)


def new_session(url: str):
    c = client(url)
    html, _ = c.predict(api_name="/new_session")
    return c, TOKEN.search(html).group(1)


def object_photo(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (200, 160), (110, 120, 130))
    ImageDraw.Draw(im).ellipse((50, 20, 150, 140), fill=tuple(int(v) for v in rng.integers(40, 230, 3)))
    im.save(path)
    return path


def bad_files(tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, words the refusal must contain)."""
    good = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good, "PNG")
    (tmp / "truncated.png").write_bytes(good.getvalue()[:300])
    (tmp / "empty.png").write_bytes(b"")
    (tmp / "notes.png").write_text("a text file, not a picture")
    png = io.BytesIO()
    Image.new("L", (1, 1)).save(png, "PNG")
    raw = png.getvalue()
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)
    (tmp / "bomb.png").write_bytes(raw[:8] + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + raw[33:])
    Image.new("RGBA", (64, 64), (0, 0, 0, 0)).save(tmp / "transparent.png")
    Image.new("RGB", (40000, 1), (200, 40, 40)).save(tmp / "thin_40000x1.png")
    Image.new("RGB", (8000, 1), (200, 40, 40)).save(tmp / "thin_8000x1.png")
    (tmp / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * (21 * 2 ** 20))
    return {"truncated": (tmp / "truncated.png", "damaged|truncated|unreadable|not an image"),
            "empty": (tmp / "empty.png", "empty"), "text": (tmp / "notes.png", "not an image"),
            "bomb": (tmp / "bomb.png", "too large"), "transparent": (tmp / "transparent.png", "transparent"),
            "thin_40000x1": (tmp / "thin_40000x1.png", "longer than wide"),
            "thin_8000x1": (tmp / "thin_8000x1.png", "longer than wide"),
            "huge_upload": (tmp / "huge.png", "size|large|exceed")}


@dataclass
class Outcome:
    cases: dict = field(default_factory=dict)
    canary_views: int = 0
    canary_errors: list = field(default_factory=list)

    def record(self, name: str, ok: bool, detail: str) -> None:
        self.cases[name] = {"ok": bool(ok), "detail": detail[:200]}


def refused(call: Callable, words: str) -> tuple[bool, str]:
    """(True, message) when ``call()`` raises with a message matching ``words``."""
    try:
        call()
    except Exception as e:  # gradio_client raises AppError / ValueError with the server's message
        msg = str(e)
        return bool(re.search(words, msg, re.I)), msg
    return False, "accepted"


def canary(url: str, photo: Path, stop: threading.Event, out: Outcome) -> None:
    """One well-behaved user, generating views at random cameras until told to stop."""
    from gradio_client import handle_file
    rng = random.Random(7)
    try:
        c, _ = new_session(url)
        c.predict(handle_file(str(photo)), True, 0.85, 20, api_name="/process")
    except Exception as e:
        out.canary_errors.append(f"start: {e}")
        return
    while not stop.is_set():
        try:
            _, label = c.predict(rng.randrange(-180, 181), rng.randrange(-10, 41), 2.0, rng.randrange(100), 3.0, 900,
                                 0.95, 1, api_name="/generate")
            if "final" not in label:
                raise RuntimeError(f"no final frame: {label}")
            out.canary_views += 1
        except Exception as e:
            out.canary_errors.append(f"{type(e).__name__}: {e}"[:200])
            time.sleep(0.5)


def raw_path_call(url: str, path: str) -> tuple[bool, str]:
    """/process called over plain HTTP with a file path the server must not read."""
    import httpx
    payload = {"data": [{"path": path, "meta": {"_type": "gradio.FileData"}}, True, 0.85, 20]}
    r = httpx.post(url.rstrip("/") + "/gradio_api/call/process", json=payload, timeout=30)
    if r.status_code != 200:
        return True, f"HTTP {r.status_code}"
    event = r.json()["event_id"]
    text = httpx.get(url.rstrip("/") + f"/gradio_api/call/process/{event}", timeout=60).text
    return "event: error" in text and "root:" not in text, text.replace("\n", " ")[:200]


def run_cases(url: str, tmp: Path, sessions: int, clients: int, out: Outcome) -> None:
    from gradio_client import handle_file
    photo = object_photo(tmp / "object.png")

    # endpoints before /new_session
    out.record("generate_before_new_session",
               *refused(lambda: client(url).predict(*GENERATE, api_name="/generate"), "session expired"))

    c, _ = new_session(url)
    for name, (f, words) in bad_files(tmp).items():
        out.record(f"image_{name}", *refused(lambda: c.predict(handle_file(str(f)), True, 0.85, 20,
                                                               api_name="/process"), words))
    strip = tmp / "strip_4000x200.png"
    Image.new("RGB", (4000, 200), (200, 200, 200)).save(strip)
    ImageDraw.Draw(im := Image.open(strip)).rectangle((1800, 40, 2200, 160), fill=(30, 90, 200))
    im.save(strip)
    try:
        c.predict(handle_file(str(strip)), True, 0.85, 20, api_name="/process")
        out.record("image_strip_20_to_1_accepted", True, "processed")
    except Exception as e:
        out.record("image_strip_20_to_1_accepted", False, str(e))

    c.predict(handle_file(str(photo)), True, 0.85, 20, api_name="/process")
    knob_cases = {  # (args of /generate), words
        "azimuth_1e9": ((1e9, 20, 2.0, 0, 3.0, 900, 0.95, 1), "azimuth must be"),
        "elevation_95": ((30, 95, 2.0, 0, 3.0, 900, 0.95, 1), "elevation must be"),
        "distance_0": ((30, 20, 0.0, 0, 3.0, 900, 0.95, 1), "distance must be"),
        "seed_negative": ((30, 20, 2.0, -1, 3.0, 900, 0.95, 1), "seed must be"),
        "cfg_1e6": ((30, 20, 2.0, 0, 1e6, 900, 0.95, 1), "cfg must be"),
        "top_k_huge": ((30, 20, 2.0, 0, 3.0, 10 ** 9, 0.95, 1), "top_k must be"),
        "top_p_2": ((30, 20, 2.0, 0, 3.0, 900, 2.0, 1), "top_p must be"),
        "samples_100": ((30, 20, 2.0, 0, 3.0, 900, 0.95, 100), "samples must be"),
        "azimuth_text": (("abc", 20, 2.0, 0, 3.0, 900, 0.95, 1), "azimuth must be|number|float"),
    }
    for name, (args, words) in knob_cases.items():
        out.record(f"knob_{name}", *refused(lambda: c.predict(*args, api_name="/generate"), words))
    out.record("knob_input_elevation_1e9",
               *refused(lambda: c.predict(1e9, api_name="/set_elevation"), "input elevation must be"))
    out.record("knob_strip_views_1000",
               *refused(lambda: c.predict(1000, 0, 3.0, 900, 0.95, 1, api_name="/views_around"),
                        "number of views must be"))
    out.record("knob_foreground_ratio_5",
               *refused(lambda: c.predict(handle_file(str(photo)), True, 5.0, 20, api_name="/process"),
                        "foreground ratio must be"))
    out.record("path_outside_upload_folder", *raw_path_call(url, "/etc/passwd"))

    # streams abandoned half way: a cancelled job and a client that goes away mid-stream
    job = c.submit(*GENERATE, api_name="/generate")
    next(iter(job), None)
    job.cancel()
    c2, _ = new_session(url)
    c2.predict(handle_file(str(photo)), True, 0.85, 20, api_name="/process")
    c2.submit(*GENERATE, api_name="/generate")
    c2.close()
    _, label = c.predict(*GENERATE, api_name="/generate")
    out.record("stream_after_abandoned_streams", "final" in label, label)

    # a flood of sessions from one client (the server caps how many stay live)
    t0 = time.perf_counter()
    for _ in range(sessions):
        c.predict(api_name="/new_session")
    out.record("session_flood", True, f"{sessions} sessions in {time.perf_counter() - t0:.1f} s")

    # concurrent clients, each with its own photo, all served
    results: list = [None] * clients

    def one(i: int) -> None:
        try:
            ci, _ = new_session(url)
            ci.predict(handle_file(str(object_photo(tmp / f"c{i}.png", i))), True, 0.85, 20, api_name="/process")
            results[i] = ci.predict(30 + 10 * i, 20, 2.0, i, 3.0, 900, 0.95, 1, api_name="/generate")[1]
            ci.close()
        except Exception as e:
            results[i] = f"error: {e}"
    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    out.record("concurrent_clients", all(isinstance(r, str) and "final" in r for r in results), json.dumps(results))
    c.close()


def run(url: str, sessions: int = 300, clients: int = 8, tmp: Path | None = None) -> dict:
    """All cases with a canary running; the JSON summary (``pass`` when every case held)."""
    tmp = Path(tmp or tempfile.mkdtemp(prefix="vantage-hostile-"))
    tmp.mkdir(parents=True, exist_ok=True)
    out, stop = Outcome(), threading.Event()
    th = threading.Thread(target=canary, args=(url, object_photo(tmp / "canary.png", 99), stop, out), daemon=True)
    th.start()
    t0 = time.perf_counter()
    try:
        run_cases(url, tmp, sessions, clients, out)
    except Exception as e:  # the harness itself failed: say so in the result
        out.record("harness", False, f"{type(e).__name__}: {e}")
    t_end = time.perf_counter() + 120   # a slow machine: the canary gets its view in before the verdict
    while out.canary_views == 0 and not out.canary_errors and th.is_alive() and time.perf_counter() < t_end:
        time.sleep(0.2)
    time.sleep(1.0)
    stop.set()
    th.join(120)
    failed = [k for k, v in out.cases.items() if not v["ok"]]
    return {"url": url, "sessions": sessions, "clients": clients, "seconds": round(time.perf_counter() - t0, 1),
            "cases": out.cases, "failed": failed, "canary": {"views": out.canary_views, "errors": out.canary_errors[:10]},
            "pass": not failed and not out.canary_errors and out.canary_views > 0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m viewer.hostile", description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True, help="a running app, e.g. http://127.0.0.1:7860/")
    ap.add_argument("--sessions", type=int, default=300, help="raw /new_session calls in the flood")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    from core.report import emit_json
    res = run(a.url, a.sessions, a.clients)
    emit_json(res, a.out)
    return 0 if res["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
