"""`python -m core.bench recon --checkpoint checkpoints/recon`: timings of the reconstruction path as JSON.

image -> triplane, render fps at 128 px, mesh extraction at 128^3 and 256^3, image -> GLB
end to end (reconstruct + mesh + export), and the process's peak resident memory.
Medians over ``--repeat`` runs after one warm-up."""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from core.cli import device_arg


def _median_ms(fn, repeat: int) -> float:
    from core.train.common import median_seconds
    return median_seconds(fn, repeat) * 1000


def _input_image(path: str | None, size: int):
    from PIL import Image

    if path:
        from core.data.io import load_image
        return load_image(path)
    # a synthetic object photo (no data needed): a shaded disc on a box
    img = Image.new("RGB", (size, size), "white")
    from PIL import ImageDraw
    d = ImageDraw.Draw(img)
    d.rectangle((size * 0.3, size * 0.45, size * 0.7, size * 0.8), fill=(150, 90, 60))
    d.ellipse((size * 0.35, size * 0.2, size * 0.65, size * 0.5), fill=(90, 140, 200))
    return img


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m core.bench recon", description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="checkpoints/recon")
    ap.add_argument("--image", default=None, help="input image (default: a synthetic object picture)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--glb-resolution", type=int, default=128, help="marching-cubes grid of the end-to-end GLB path")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--bf16", action="store_true", help="also time image->triplane under bf16 autocast")
    ap.add_argument("--device", type=device_arg, default="auto")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from core.mesh import MeshError, export_glb
    from core.recon import ReconPipeline

    t = time.perf_counter()
    pipe = ReconPipeline.from_pretrained(args.checkpoint, device=args.device)
    load_ms = (time.perf_counter() - t) * 1000
    img = _input_image(args.image, 256)
    scene = pipe.reconstruct(img)
    cam = pipe.default_camera()
    out = {"checkpoint": str(args.checkpoint), "device": str(pipe.device), "threads": torch.get_num_threads(),
           "parameters_M": round(pipe.model.num_parameters() / 1e6, 3), "load_ms": round(load_ms, 1)}
    out["image_to_triplane_ms"] = round(_median_ms(lambda: pipe.reconstruct(img), args.repeat), 1)
    if args.bf16:
        def rec_bf16():
            with torch.autocast(pipe.device.type, dtype=torch.bfloat16):
                pipe.reconstruct(img)
        out["image_to_triplane_bf16_ms"] = round(_median_ms(rec_bf16, args.repeat), 1)
    render_ms = _median_ms(lambda: scene.render(cam, 128), args.repeat)
    out["render_128px_ms"] = round(render_ms, 1)
    out["render_128px_fps"] = round(1000 / render_ms, 2)
    try:
        scene.extract_mesh(resolution=64)
    except MeshError as e:  # a field with no surface (random weights): nothing to mesh, so no mesh timings
        out.update({"mesh_128_ms": None, "mesh_256_ms": None, "image_to_glb_ms": None, "mesh_note": str(e)})
        return _finish(out)
    for res in (128, 256):
        out[f"mesh_{res}_ms"] = round(_median_ms(lambda: scene.extract_mesh(resolution=res), args.repeat), 1)
    with tempfile.TemporaryDirectory() as tmp:
        def image_to_glb():
            s = pipe.reconstruct(img)
            export_glb(s.extract_mesh(resolution=args.glb_resolution), Path(tmp) / "out.glb")
        out[f"image_to_glb_ms_mc{args.glb_resolution}"] = round(_median_ms(image_to_glb, args.repeat), 1)
        if args.glb_resolution != 256:
            args.glb_resolution = 256
            out["image_to_glb_ms_mc256"] = round(_median_ms(image_to_glb, args.repeat), 1)
    return _finish(out)


def _finish(out: dict) -> int:
    from core.report import peak_rss_mb
    out["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(out, indent=2))
    return 0
