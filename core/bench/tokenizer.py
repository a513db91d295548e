"""Tokenizer speed: encode / decode ms per image at batch 1 and 16, and one preview decode.

    python -m core.bench tokenizer --checkpoint checkpoints/tokenizer [--repeats 5] [--bf16]

A preview decode is what the viewer pays after each scale: ``next_input`` (lookup,
upsample, phi) plus the decode of the partial map, batch 1: at the full grid (the default)
and, as ``coarse_preview_decode_ms``, at the lower grid of ``decode_preview(fast=True)``.
Medians, JSON on stdout.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from core.checkpoint import CheckpointError
from core.cli import device_arg
from core.tokenizer import MultiScaleVQVAE, TokenizerConfig


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1000)
    return statistics.median(ts)


def bench(model: MultiScaleVQVAE, repeats: int = 5, bf16: bool = False) -> dict:
    R, dev = model.config.resolution, model.device
    out = {}
    ctx = lambda: torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16)
    for b in (1, 16):
        x = torch.rand(b, 3, R, R, device=dev) * 2 - 1
        with ctx():
            idx = model.encode_indices(x)
            out[f"encode_ms_per_image_b{b}"] = _median_ms(lambda: model.encode_indices(x), repeats) / b
            out[f"decode_ms_per_image_b{b}"] = _median_ms(lambda: model.decode_indices(idx), repeats) / b
    x = torch.rand(1, 3, R, R, device=dev) * 2 - 1
    idx = model.encode_indices(x)
    f0 = model.empty_fhat(1)

    def preview(fast: bool):
        f, _ = model.next_input(0, f0, idx[0])
        return model.decode_preview(f, model.config.patch_nums[0], fast=fast)
    with ctx():
        out["preview_decode_ms"] = _median_ms(lambda: preview(False), repeats)
        out["coarse_preview_decode_ms"] = _median_ms(lambda: preview(True), repeats)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m core.bench tokenizer", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", help="checkpoint folder (default: random weights of the default config)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--bf16", action="store_true", help="also time under bf16 autocast")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", type=device_arg, default="auto")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        model = (MultiScaleVQVAE.from_pretrained(a.checkpoint, a.device) if a.checkpoint
                 else MultiScaleVQVAE(TokenizerConfig()).to(a.device).eval())
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    res = {"checkpoint": a.checkpoint, "device": str(model.device), "threads": torch.get_num_threads(),
           "resolution": model.config.resolution, "fp32": bench(model, a.repeats)}
    if a.bf16:
        res["bf16_autocast"] = bench(model, a.repeats, bf16=True)
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
