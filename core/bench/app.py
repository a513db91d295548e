"""`python -m core.bench app`: responsiveness of the running app, measured as a user sees it.

Starts `python app.py` as a subprocess (the real server, one public port), then:
- photo -> downloadable GLB: upload through gradio_client, lift, download the GLB;
- camera move -> first preview / final frame: a Viser websocket client, through the
  same-origin proxy, sends camera poses and times the frames that come back.
Prints one JSON object (and writes it with --out). Not a test: nothing is asserted.

``ViserWireClient`` speaks Viser 1.1.1's wire protocol (msgpack in, zstd-compressed
msgpack windows out); the viewer tests and the load test use it too.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import numpy as np

from core.cli import device_arg
from core.report import emit_json

ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- wire client

def look_at_wxyz(position, look_at=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)) -> tuple[float, ...]:
    """Quaternion (w, x, y, z) of an OpenCV camera (x right, y down, z forward) at ``position``."""
    p, t, u = (np.asarray(v, np.float64) for v in (position, look_at, up))
    f = t - p
    f /= np.linalg.norm(f)
    r = np.cross(f, u)
    if np.linalg.norm(r) < 1e-9:
        r = np.array([1.0, 0.0, 0.0])
    r /= np.linalg.norm(r)
    d = np.cross(f, r)
    R = np.stack([r, d, f], axis=1)
    w = math.sqrt(max(0.0, 1.0 + R[0, 0] + R[1, 1] + R[2, 2])) / 2.0
    if w > 1e-6:
        return (w, (R[2, 1] - R[1, 2]) / (4 * w), (R[0, 2] - R[2, 0]) / (4 * w), (R[1, 0] - R[0, 1]) / (4 * w))
    # 180-degree rotations: fall back to the largest diagonal element
    i = int(np.argmax(np.diag(R)))
    j, k = (i + 1) % 3, (i + 2) % 3
    s = math.sqrt(max(0.0, 1.0 + R[i, i] - R[j, j] - R[k, k])) * 2.0
    q = [0.0, 0.0, 0.0, 0.0]
    q[0] = (R[k, j] - R[j, k]) / s
    q[1 + i], q[1 + j], q[1 + k] = s / 4.0, (R[j, i] + R[i, j]) / s, (R[k, i] + R[i, k]) / s
    return tuple(q)


def camera_position(azimuth_deg: float, elevation_deg: float, radius: float) -> tuple[float, float, float]:
    a, e = math.radians(azimuth_deg), math.radians(elevation_deg)
    return (radius * math.cos(e) * math.cos(a), radius * math.cos(e) * math.sin(a), radius * math.sin(e))


class ViserWireClient:
    """A minimal headless Viser client: send camera poses, read scene/GUI messages."""

    def __init__(self, url: str, version: str | None = None, open_timeout: float = 10.0):
        from websockets.sync.client import connect
        if version is None:
            import viser
            version = viser.__version__
        self.ws = connect(url, subprotocols=[f"viser-v{version}"], max_size=None, open_timeout=open_timeout)
        import zstandard
        self._zstd = zstandard.ZstdDecompressor()

    def close(self) -> None:
        self.ws.close()

    def send_camera(self, azimuth: float, elevation: float, radius: float, size=(512, 512),
                    fov_deg: float = 49.1) -> float:
        pos = camera_position(azimuth, elevation, radius)
        msg = {"type": "ViewerCameraMessage", "wxyz": list(look_at_wxyz(pos)), "position": list(pos),
               "fov": math.radians(fov_deg), "near": 0.01, "far": 1000.0,
               "image_height": int(size[1]), "image_width": int(size[0]),
               "look_at": [0.0, 0.0, 0.0], "up_direction": [0.0, 0.0, 1.0]}
        self.ws.send(msgpack.packb(msg, use_bin_type=True))
        return time.perf_counter()

    def decode(self, data: bytes) -> list[dict]:
        inner_len = int.from_bytes(data[0:8], "little")
        comp_len = int.from_bytes(data[8:16], "little")
        inner = self._zstd.decompress(data[16:16 + comp_len], max_output_size=inner_len)
        return list(msgpack.unpackb(inner, raw=False, strict_map_key=False)["messages"])

    def messages(self, timeout: float):
        """Yield (arrival time, message dict) until ``timeout`` seconds pass without a new one."""
        while True:
            try:
                data = self.ws.recv(timeout=timeout)
            except TimeoutError:
                return
            t = time.perf_counter()
            if isinstance(data, bytes):
                for m in self.decode(data):
                    yield t, m

    @staticmethod
    def status_text(m: dict) -> str | None:
        """Text of a GUI markdown update (our per-client status line), else None."""
        if m.get("type") == "GuiUpdateMessage":
            u = m.get("updates") or {}
            c = u.get("_markdown", u.get("content"))
            return c if isinstance(c, str) else None
        return None

    def view(self, azimuth: float, elevation: float, radius: float, timeout: float = 60.0, size=(512, 512),
             all_labels: bool = False):
        """Send one camera and collect its frames until the final one.

        Returns dict(first_s, final_s, frames=[(t_rel, jpeg bytes)], labels=[status texts]).
        ``labels`` holds the status lines of this camera's frames, or with ``all_labels`` every
        camera status line that arrived (so frames meant for another camera cannot hide)."""
        t0 = self.send_camera(azimuth, elevation, radius, size=size)
        a = math.radians(azimuth)
        tag = f"azimuth {math.degrees(math.atan2(math.sin(a), math.cos(a))):.0f}°"
        out = {"first_s": None, "final_s": None, "frames": [], "labels": []}
        deadline = t0 + timeout
        pending_img = None
        while time.perf_counter() < deadline:
            got = False
            for t, m in self.messages(timeout=max(0.05, deadline - time.perf_counter())):
                got = True
                if m.get("type") == "BackgroundImageMessage" and m.get("rgb_data"):
                    pending_img = (t - t0, bytes(m["rgb_data"]))
                text = self.status_text(m)
                if all_labels and text and "azimuth" in text:
                    out["labels"].append(text)
                if text and tag in text and pending_img is not None:
                    out["frames"].append(pending_img)
                    if not all_labels:
                        out["labels"].append(text)
                    if out["first_s"] is None:
                        out["first_s"] = pending_img[0]
                    pending_img = None
                    if "final" in text:
                        out["final_s"] = t - t0
                        return out
                if time.perf_counter() > deadline:
                    break
            if not got:
                break
        return out


# ----------------------------------------------------------------------------- benchmark

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    import httpx
    t_end = time.time() + timeout
    while time.time() < t_end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"app exited early with code {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except Exception:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def summary(xs: list[float]) -> dict:
    xs = [x for x in xs if x is not None]
    if not xs:
        return {"n": 0}
    s = sorted(xs)
    return {"n": len(s), "median_ms": round(1000 * statistics.median(s), 1),
            "p95_ms": round(1000 * s[min(len(s) - 1, int(math.ceil(0.95 * len(s))) - 1)], 1),
            "max_ms": round(1000 * s[-1], 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m core.bench app", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoints", default=str(ROOT / "checkpoints"), help="checkpoints folder for the app")
    p.add_argument("--image", default=str(ROOT / "assets" / "rocket.jpg"), help="input photo")
    p.add_argument("--moves", type=int, default=12, help="camera moves to time")
    p.add_argument("--lifts", type=int, default=3, help="photo -> GLB runs to time")
    p.add_argument("--device", type=device_arg, default="cpu")
    p.add_argument("--startup-timeout", type=float, default=180.0)
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)

    from gradio_client import Client, handle_file

    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port), "--device", args.device,
                             "--checkpoints", args.checkpoints], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/"
    result: dict = {"command": "python -m core.bench app " + " ".join(argv or sys.argv[1:]),
                    "checkpoints": args.checkpoints, "device": args.device, "image": Path(args.image).name,
                    "targets": {"camera_move_to_first_preview_ms": 150, "camera_move_to_final_ms": 1500,
                                "photo_to_glb_s": 5.0},
                    "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
                    "cpu_count": os.cpu_count()}
    rc = 1
    try:
        t = time.perf_counter()
        wait_http(url, args.startup_timeout, proc)
        result["startup_s"] = round(time.perf_counter() - t, 2)
        client = Client(url, verbose=False)
        html, _ = client.predict(api_name="/new_session")
        token = re.search(r"/viser/s/([A-Za-z0-9_\-]+)/", html).group(1)
        glb_times, lift_times = [], []
        for _ in range(max(1, args.lifts)):
            t = time.perf_counter()
            client.predict(handle_file(args.image), True, 0.85, 20, api_name="/process")
            result["photo_to_processed_s"] = round(time.perf_counter() - t, 3)
            try:
                t1 = time.perf_counter()
                glb = client.predict(False, api_name="/lift")[0]
                t2 = time.perf_counter()
                glb_times.append(t2 - t)
                lift_times.append(t2 - t1)
                result["glb_bytes"] = Path(glb).stat().st_size
            except Exception as e:
                result["photo_to_glb_error"] = str(e)[:300]
                break
        if glb_times:
            result["photo_to_glb_s"] = {"n": len(glb_times), "median": round(statistics.median(glb_times), 3),
                                        "max": round(max(glb_times), 3)}
            result["lift_only_s"] = round(statistics.median(lift_times), 3)

        ws = ViserWireClient(f"ws://127.0.0.1:{port}/viser/s/{token}")
        ws.view(0.0, 20.0, 2.0)   # warm-up: source view, encodes the source once
        firsts, finals, counts = [], [], []
        for i in range(args.moves):
            r = ws.view(15.0 + (i * 29.0) % 330, 10.0 + (i % 4) * 8.0, 2.0)
            firsts.append(r["first_s"])
            finals.append(r["final_s"])
            counts.append(len(r["frames"]))
        # rapid moves: only the last one should be finished; time from the last send to its final frame
        rapid = []
        for i in range(3):
            for k in range(5):
                ws.send_camera(100.0 + 40 * i + 3 * k, 25.0, 2.0)
                time.sleep(0.03)
            r = ws.view(100.0 + 40 * i + 15, 25.0, 2.0)
            rapid.append(r["final_s"])
        ws.close()
        result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        result.update({"camera_move_to_first_preview": summary(firsts), "camera_move_to_final": summary(finals),
                       "frames_per_view": counts, "rapid_moves_last_to_final": summary(rapid)})
        rc = 0
    except Exception as e:
        result["error"] = f"{type(e).__name__}: {e}"
    finally:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if rc:
            result["server_stderr_tail"] = (err or "")[-1500:]
    emit_json(result, args.out)
    return rc
