"""`python -m core.bench data [--objects 40 --workers 2 --size 128]`: renderer throughput as JSON.

Headline number: objects x 12 views per minute, end to end (procedural object generation,
normalisation, rendering, PNG/NPY/PLY writing), with a warmed worker pool so process start-up
is reported separately. Also the render-only cost of one view in one process.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import statistics
import tempfile
import time

import numpy as np

from core import cameras


def _render_only(size: int, views: int = 60) -> dict:
    from core.data.procedural import make_object
    from core.data.render import Renderer
    r = Renderer(size)
    times, faces = [], []
    for i in range(views // 12 + 1):
        asset = make_object(123, i)
        faces.append(len(asset.mesh.faces))
        r.set_asset(asset)
        r.render(cameras.pose_from_spherical(0, 20, 1.8))  # warm-up per object (shader/texture)
        for k in range(12):
            t = time.perf_counter()
            r.render(cameras.pose_from_spherical(30 * k, 20, 1.8))
            times.append(time.perf_counter() - t)
    r.release()
    return {"render_only_ms_per_view_median": round(1000 * statistics.median(times), 3),
            "render_only_ms_per_view_mean": round(1000 * statistics.fmean(times), 3),
            "mean_triangles": int(np.mean(faces))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m core.bench data", description=__doc__.split("\n")[0])
    ap.add_argument("--objects", type=int, default=40)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--views", type=int, default=12)
    a = ap.parse_args(argv)
    from core.data.corpus import RenderSettings, _init_worker, _run_job, procedural_jobs

    settings = RenderSettings(size=a.size, views=a.views, seed=0)
    jobs = procedural_jobs(a.objects, seed=777)
    warm = procedural_jobs(max(2, a.workers), seed=778)
    with tempfile.TemporaryDirectory(prefix="vantage-bench-") as tmp:
        t0 = time.perf_counter()
        if a.workers > 1:
            pool = mp.get_context("spawn").Pool(a.workers, _init_worker, (settings,))
            pool.map(_run_job, [(j, tmp) for j in warm], chunksize=1)
            t1 = time.perf_counter()
            results = pool.map(_run_job, [(j, tmp) for j in jobs], chunksize=2)
            t2 = time.perf_counter()
            pool.close()
            pool.join()
        else:
            _init_worker(settings)
            [_run_job((j, tmp)) for j in warm]
            t1 = time.perf_counter()
            results = [_run_job((j, tmp)) for j in jobs]
            t2 = time.perf_counter()
        failed = [r for r in results if r["status"] != "ok"]
    seconds = t2 - t1
    per_min = a.objects / seconds * 60 * a.views / 12
    out = {
        "bench": "data",
        "objects": a.objects,
        "views_per_object": a.views,
        "size": a.size,
        "workers": a.workers,
        "seconds": round(seconds, 2),
        "objects_x12_views_per_minute": round(per_min, 1),
        "ms_per_view_end_to_end": round(1000 * seconds / (a.objects * a.views), 3),
        "ms_per_view_per_worker": round(1000 * seconds * a.workers / (a.objects * a.views), 3),
        "pool_startup_and_warmup_s": round(t1 - t0, 2),
        "failed": len(failed),
        "target_objects_x12_views_per_minute": 500,
        "cpu": platform.processor() or platform.machine(),
    }
    out.update(_render_only(a.size))
    print(json.dumps(out, indent=2))
    return 0 if not failed else 1


if __name__ == "__main__":
    raise SystemExit(main())
