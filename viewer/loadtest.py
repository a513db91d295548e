"""Load test (a script, not a CI test): one server on loopback, many users at once.

    python -m viewer.loadtest --seconds 60 --gradio-clients 8 --viser-clients 4 --out reliability.json
    python -m viewer.loadtest --soak [--rounds 3 --sessions 300 --clients 8 --idle-seconds 60] --out soak.json

Starts ``python app.py`` (the real server, shipped checkpoints) on 127.0.0.1, then for
``--seconds``: N ``gradio_client`` sessions, each with its own synthetic photo, request
streamed views at random cameras; M Viser websocket clients (each on its own app session
and photo) move their cameras. Reports errors, latencies (first frame, final frame), the
server's resident memory over the run (/proc/PID/status), and two isolation checks:

- *own camera*: every Viser client uses azimuths no other client uses (integers = its
  index mod M); any frame or status labelled with an azimuth it never sent is a leak.
- *own content*: after the load phase each client replays some of its requests alone,
  with the same seed; NVS sampling is deterministic for (source, camera, seed), so the
  final image received under load must match the replay, and must differ from what the
  other clients' photos give for that camera (so the check can fail).
"""
from __future__ import annotations

import argparse
import io
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from core.bench.app import ROOT, ViserWireClient, free_port, summary, wait_http
from core.cli import device_arg
from core.nvs.sampling import SamplingParams
from core.report import emit_json

SCALE = re.compile(r"scale (\d+)/(\d+)")
AZ = re.compile(r"azimuth (-?\d+)°")
TIMEOUT_S = 180.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS")


def sample_rss(pid: int, every_s: float) -> tuple[list[float], threading.Event]:
    """A thread appending the process's RSS (MB) to the returned list every ``every_s`` until the
    returned event is set."""
    samples, stop = [rss_mb(pid)], threading.Event()

    def sample():
        while not stop.wait(every_s):
            try:
                samples.append(rss_mb(pid))
            except (OSError, RuntimeError):  # the server went away: the harness reports that itself
                return
    threading.Thread(target=sample, daemon=True).start()
    return samples, stop


def photo(i: int, path: Path) -> Path:
    """A distinct object per client: hue, shape and size differ; plain grey background."""
    rng = np.random.default_rng(i)
    hue = Image.new("HSV", (1, 1), (int(255 * i / 12) % 256, 220, 230)).convert("RGB").getpixel((0, 0))
    im = Image.new("RGB", (200, 200), (120, 120, 120))
    d = ImageDraw.Draw(im)
    a, b = int(rng.integers(30, 60)), int(rng.integers(20, 50))
    (d.ellipse if i % 2 else d.rectangle)((100 - a, 100 - b - 20, 100 + a, 100 + b + 20), fill=hue)
    im.save(path)
    return path


def small(img_or_bytes) -> np.ndarray:
    im = Image.open(io.BytesIO(img_or_bytes)) if isinstance(img_or_bytes, bytes) else Image.open(img_or_bytes)
    return np.asarray(im.convert("RGB").resize((64, 64), Image.BILINEAR), np.float32)


def diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.errors: list[str] = []

    def error(self, who: str, e) -> None:
        with self.lock:
            self.errors.append(f"{who}: {type(e).__name__ if isinstance(e, BaseException) else ''} {e}"[:300])


def gradio_session(url: str, img: Path):
    from gradio_client import Client, handle_file
    c = Client(url, verbose=False)
    html, _ = c.predict(api_name="/new_session")
    token = re.search(r"/viser/s/([A-Za-z0-9_\-]+)/", html).group(1)
    c.predict(handle_file(str(img)), True, 0.85, 20, api_name="/process")
    return c, token


def stream_view(c, az: float, el: float, r: float, seed: int):
    """One streamed Generate: (first frame s, final s, scales seen, final image file)."""
    t0 = time.perf_counter()
    d = SamplingParams()  # the app's default knobs
    job = c.submit(az, el, r, seed, d.cfg, d.top_k, d.top_p, api_name="/generate")
    first, scales, last = None, [], None
    for out in job:
        t = time.perf_counter() - t0
        first = t if first is None else first
        m = SCALE.search(out[1] or "")
        if m:
            scales.append(int(m.group(1)))
        last = out
    last = job.outputs()[-1] if job.outputs() else last
    if last is None or "final" not in (last[1] or ""):
        raise RuntimeError(f"no final frame (got {len(scales)} frames)")
    return first, time.perf_counter() - t0, scales, last[0]


def gradio_worker(i, c, deadline, stats, rec):
    rng = random.Random(100 + i)
    while time.perf_counter() < deadline:
        az, el, r, seed = rng.randrange(-180, 180), rng.randrange(-10, 40), round(rng.uniform(1.6, 2.6), 2), rng.randrange(1000)
        try:
            first, final, scales, img = stream_view(c, az, el, r, seed)
            if scales != sorted(scales) or len(scales) < 2:
                raise RuntimeError(f"frames not coarse to fine: {scales}")
            rec["first"].append(first)
            rec["final"].append(final)
            rec["frames"].append(len(scales))
            rec["done"].append(((az, el, r, seed), small(img)))
        except Exception as e:
            stats.error(f"gradio client {i}", e)
            time.sleep(1.0)


def viser_worker(j, m, ws, deadline, stats, rec):
    rng = random.Random(200 + j)
    sent: set[int] = set()
    while time.perf_counter() < deadline:
        az = rng.randrange(-45, 45) * m + j          # this client's azimuths only (== j mod m)
        el, r = rng.randrange(-5, 35), round(rng.uniform(1.7, 2.5), 2)
        sent.add(az)
        try:
            res = ws.view(az, el, r, timeout=TIMEOUT_S, all_labels=True)
            if res["final_s"] is None:
                raise RuntimeError(f"no final frame for azimuth {az} ({len(res['frames'])} frames)")
            rec["first"].append(res["first_s"])
            rec["final"].append(res["final_s"])
            rec["frames"].append(len(res["frames"]))
            rec["labels"] += res["labels"]
            rec["done"].append(((az, el, r, 0), small(res["frames"][-1][1])))
        except Exception as e:
            stats.error(f"viser client {j}", e)
            time.sleep(1.0)
    rec["sent"] = sent


def start_server(checkpoints: str, device: str, log_path: Path):
    """``python app.py`` on a free loopback port -> (process, url), once it answers."""
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--host", "127.0.0.1", "--port", str(port),
                             "--device", device, "--checkpoints", checkpoints],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=open(log_path, "w"))
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_http(url, 180, proc)
    except Exception:
        proc.kill()
        raise
    return proc, url


def soak(args) -> dict:
    """The hostile suite (``viewer.hostile``) ``--rounds`` times against a fresh server, then
    ``--idle-seconds`` with every client gone: the server's resident memory when warm, at its peak and
    after the idle, as JSON. Target: after idle within 300 MB of the warm start."""
    from gradio_client import handle_file
    from viewer import hostile
    tmp = Path(tempfile.mkdtemp(prefix="vantage-soak-"))
    proc, url = start_server(args.checkpoints, args.device, tmp / "server.log")
    res: dict = {"command": "python -m viewer.loadtest " + " ".join(sys.argv[1:]), "mode": "soak",
                 "rounds": args.rounds, "sessions_per_round": args.sessions, "clients": args.clients,
                 "idle_seconds": args.idle_seconds, "checkpoints": args.checkpoints}
    try:
        c, _ = hostile.new_session(url)        # warm every path once: a view, a strip, a lift
        c.predict(handle_file(str(ROOT / "assets" / "render_car.png")), True, 0.85, 20, api_name="/process")
        c.predict(*hostile.GENERATE, api_name="/generate")
        c.predict(4, 0, 3.0, 900, 0.95, 1, api_name="/views_around")
        c.predict(False, api_name="/lift")
        c.close()
        time.sleep(2.0)
        start = rss_mb(proc.pid)
        samples, stop = sample_rss(proc.pid, 0.5)
        rounds = [hostile.run(url, args.sessions, args.clients, tmp) for _ in range(args.rounds)]
        after_load = rss_mb(proc.pid)
        time.sleep(args.idle_seconds)
        stop.set()
        idle = rss_mb(proc.pid)
        res["hostile"] = [{"pass": r["pass"], "failed": r["failed"], "canary_views": r["canary"]["views"],
                           "canary_errors": r["canary"]["errors"], "seconds": r["seconds"]} for r in rounds]
        res["rss_mb"] = {"warm_start": round(start, 1), "peak": round(max(samples + [after_load]), 1),
                         "after_load": round(after_load, 1), "after_idle": round(idle, 1),
                         "after_idle_minus_warm_start": round(idle - start, 1), "target_within": 300}
        res["pass"] = all(r["pass"] for r in rounds) and idle - start <= 300
    except Exception as e:
        res.update(error=f"{type(e).__name__}: {e}", **{"pass": False})
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m viewer.loadtest", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--gradio-clients", type=int, default=8)
    p.add_argument("--viser-clients", type=int, default=4)
    p.add_argument("--replays", type=int, default=2, help="requests per client replayed alone for the content check")
    p.add_argument("--checkpoints", default=str(ROOT / "checkpoints"))
    p.add_argument("--device", type=device_arg, default="cpu")
    p.add_argument("--out", default=None)
    p.add_argument("--soak", action="store_true", help="instead: the hostile suite --rounds times, then an idle "
                   "wait; reports the server's memory (warm start, peak, after idle) as JSON")
    p.add_argument("--rounds", type=int, default=3, help="--soak: hostile-suite rounds")
    p.add_argument("--sessions", type=int, default=300, help="--soak: /new_session calls per round")
    p.add_argument("--clients", type=int, default=8, help="--soak: concurrent clients per round")
    p.add_argument("--idle-seconds", type=float, default=60.0, help="--soak: wait with no client before the last reading")
    args = p.parse_args(argv)
    if args.soak:
        res = soak(args)
        emit_json(res, args.out)
        return 0 if res["pass"] else 1
    import faulthandler
    import signal
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` prints every thread's stack (a stuck run)
    G, M = args.gradio_clients, args.viser_clients
    tmp = Path(tempfile.mkdtemp(prefix="vantage-load-"))
    proc, url = start_server(args.checkpoints, args.device, tmp / "server.log")
    port = int(url.rsplit(":", 1)[1].strip("/"))
    result: dict = {"command": "python -m viewer.loadtest " + " ".join(sys.argv[1:] if argv is None else argv),
                    "seconds": args.seconds, "gradio_clients": G, "viser_clients": M, "host": "127.0.0.1",
                    "checkpoints": args.checkpoints, "cpu_count": os.cpu_count(),
                    "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}
    stats, rc = Stats(), 1
    viser: list[ViserWireClient] = []
    try:
        sessions = [gradio_session(url, photo(i, tmp / f"p{i}.png")) for i in range(G + M)]
        grad, vis_sess = sessions[:G], sessions[G:]
        for j, (_, tok) in enumerate(vis_sess):           # connect, then at once send a first camera (a browser does)
            viser.append(ViserWireClient(f"ws://127.0.0.1:{port}/viser/s/{tok}"))
            if viser[-1].view(0.0, 20.0, 2.0, timeout=60, all_labels=True)["final_s"] is None:
                raise RuntimeError(f"viser client {j}: no frame for its first camera")
        print("warm-up done", flush=True)
        stream_view(grad[0][0], 30, 20, 2.0, 0)           # warm-up of the Gradio path
        rss0 = rss_mb(proc.pid)
        samples, stop = sample_rss(proc.pid, 1.0)
        deadline = time.perf_counter() + args.seconds
        grec = [{"first": [], "final": [], "frames": [], "done": []} for _ in range(G)]
        vrec = [{"first": [], "final": [], "frames": [], "done": [], "labels": [], "sent": set()} for _ in range(M)]
        threads = [threading.Thread(target=gradio_worker, args=(i, grad[i][0], deadline, stats, grec[i]))
                   for i in range(G)]
        threads += [threading.Thread(target=viser_worker, args=(j, M, viser[j], deadline, stats, vrec[j]))
                    for j in range(M)]
        t_start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(args.seconds + 2 * TIMEOUT_S)
        result["load_phase_s"] = round(time.perf_counter() - t_start, 1)
        stop.set()
        rss1 = rss_mb(proc.pid)
        result["server_rss_mb"] = {"after_warmup": round(rss0, 1), "end": round(rss1, 1),
                                   "peak": round(max(samples + [rss1]), 1), "growth": round(rss1 - rss0, 1),
                                   "peak_growth": round(max(samples + [rss1]) - rss0, 1), "target_growth_below": 200}

        # own camera (Viser): every labelled frame carries one of this client's own azimuths
        foreign = 0
        for j, rec in enumerate(vrec):
            for lab in rec["labels"]:
                m = AZ.search(lab)
                az = int(m.group(1)) if m else None
                if az is None or not any((az - s) % 360 == 0 for s in rec["sent"]):
                    foreign += 1
        # own content: replay alone, compare with what came back under load and with other clients' sources
        same, other, checked = [], [], 0
        for kind, recs, owners in (("gradio", grec, [c for c, _ in grad]), ("viser", vrec, [c for c, _ in vis_sess])):
            for k, rec in enumerate(recs):
                for (az, el, r, seed), got in rec["done"][: args.replays]:
                    _, _, _, ref = stream_view(owners[k], az, el, r, seed)
                    same.append(diff(got, small(ref)))
                    if len(owners) > 1:                                     # another client's photo, same camera
                        o = owners[(k + 1) % len(owners)]
                        other.append(diff(got, small(stream_view(o, az, el, r, seed)[3])))
                    checked += 1
        result["isolation"] = {
            "viser_frames_checked": sum(len(r["labels"]) for r in vrec), "viser_frames_for_other_cameras": foreign,
            "replayed_requests": checked,
            "replay_mean_abs_diff_own": summary_plain(same), "replay_mean_abs_diff_other_client": summary_plain(other),
            "own_content_ok": bool(same) and max(same) < 4.0 and (not other or min(other) > 2 * max(same)),
            "note": "mean |difference| in 0..255 at 64x64 px between the final frame received under load and the "
                    "same request replayed alone (own), and the same camera/seed on another client's photo (other)"}
        result["gradio"] = {"requests": sum(len(r["final"]) for r in grec),
                            "first_frame": summary(sum((r["first"] for r in grec), [])),
                            "final_frame": summary(sum((r["final"] for r in grec), [])),
                            "frames_per_request_median": float(np.median(sum((r["frames"] for r in grec), []) or [0]))}
        result["viser"] = {"camera_moves": sum(len(r["final"]) for r in vrec),
                           "first_preview": summary(sum((r["first"] for r in vrec), [])),
                           "final_frame": summary(sum((r["final"] for r in vrec), [])),
                           "frames_per_move_median": float(np.median(sum((r["frames"] for r in vrec), []) or [0]))}
        rc = 0
    except Exception as e:
        stats.error("harness", e)
    finally:
        for w in viser:
            try:
                w.close()
            except Exception:
                pass
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        result["errors"] = len(stats.errors)
        result["error_messages"] = stats.errors[:20]
        result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        ok = (rc == 0 and not stats.errors and result.get("isolation", {}).get("viser_frames_for_other_cameras") == 0
              and result["isolation"]["own_content_ok"] and result["server_rss_mb"]["growth"] < 200)
        result["pass"] = bool(ok)
    emit_json(result, args.out)
    return 0 if result["pass"] else 1


def summary_plain(xs: list[float]) -> dict:
    if not xs:
        return {"n": 0}
    return {"n": len(xs), "median": round(float(np.median(xs)), 2), "max": round(float(np.max(xs)), 2),
            "min": round(float(np.min(xs)), 2)}


if __name__ == "__main__":
    sys.exit(main())
