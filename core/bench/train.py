"""`python -m core.bench train --model tokenizer|nvs|recon [--config JSON] [--steps N] [--batch B]`

Training step time and samples/s side by side in one run: fp32, bf16 autocast and (``--compile``)
``torch.compile`` of the same step, at the shipped size (``checkpoints/<model>/config.json``) and at
the larger size proposed for v2 (``V2`` below, or ``--config`` overrides), on synthetic batches of the
trainer's own shapes (the optimizer step included); and which precision ``--precision auto`` picks
on this machine for each size (``core.train.common.measure_precision``, the trainers' own rule).
Medians over ``--steps`` timed steps after two warm-ups. Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from core.report import emit_json

ROOT = Path(__file__).resolve().parents[2]
# the sizes proposed for the v2 models: widths where bf16 pays on AMX CPUs and GPUs (>= 256)
V2 = {"tokenizer": {"ch": 128, "ch_mult": [1, 2, 2], "num_res_blocks": 2, "patch_size": 2},
      "nvs": {"depth": 8, "width": 384, "num_heads": 6},
      # reconstruction v2 as trained (runs/recon-v2, checkpoints/recon's model card): 8.3M parameters
      "recon": {"image_size": 128, "patch_size": 8, "enc_dim": 256, "enc_depth": 4, "enc_heads": 8, "tri_dim": 256,
                "tri_depth": 4, "tri_heads": 8, "tri_tokens": 12, "upsample_channels": [128, 64]}}
BATCH = {"tokenizer": 8, "nvs": 8, "recon": 4}


def shipped_config(model: str) -> dict:
    cfg = json.loads((ROOT / "checkpoints" / model / "config.json").read_text())
    cfg.pop("model_type", None)
    return cfg


def build(model: str, cfg: dict, batch: int, device):
    """(module, optimizer, step(precision) -> None) on a synthetic batch of the trainer's shapes."""
    from core.train.common import autocast
    g = torch.Generator().manual_seed(0)
    if model == "tokenizer":
        from core.tokenizer import MultiScaleVQVAE, TokenizerConfig
        from core.train.tokenizer import recon_loss
        from core.checkpoint import config_from_dict
        m = MultiScaleVQVAE(config_from_dict(TokenizerConfig, cfg)).to(device).train()
        x = (torch.rand(batch, 3, m.config.resolution, m.config.resolution, generator=g) * 2 - 1).to(device)

        def loss(prec):
            with autocast(prec, device):
                rec, vq, _, _ = m(x)
            return recon_loss(rec, x, 1.0, 0.5, 4.0, 2.0)[0] + vq
    elif model == "nvs":
        from core.nvs import NVSConfig, NVSTransformer
        from core.checkpoint import config_from_dict
        from core.train.nvs import forward_loss
        m = NVSTransformer(config_from_dict(NVSConfig, cfg)).to(device).train()
        c, k = m.config, 2
        L = c.num_tokens
        b = {"src": torch.randint(c.vocab_size, (batch, L), generator=g).to(device),
             "tgt": torch.randint(c.vocab_size, (batch, L), generator=g).to(device),
             "rel_pose": torch.randn(batch, 4, generator=g).to(device),
             "small": (torch.rand(batch, 3, c.cnn_resolution, c.cnn_resolution, generator=g) * 2 - 1).to(device)}
        tok = _tokenizer_for(c, device)

        def loss(prec):
            return forward_loss(m, tok, b, k, None, prec, device)[0]
    else:
        from core.recon import ReconConfig, ReconModel
        from core.checkpoint import config_from_dict
        from core.train.recon import losses
        m = ReconModel(config_from_dict(ReconConfig, cfg)).to(device).train()
        b = _recon_batch(m.config, batch, device)

        def loss(prec):
            with autocast(prec, device):
                return losses(m, b, 32, 0.5, 0.1)["loss"]
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)

    def step(prec: str) -> None:
        opt.zero_grad(set_to_none=True)
        loss(prec).backward()
        opt.step()
    return m, opt, step, loss


def _tokenizer_for(c, device):
    """A tokenizer of the NVS config's shapes (weights do not matter for timing)."""
    from core.tokenizer import MultiScaleVQVAE, TokenizerConfig
    t = TokenizerConfig(resolution=c.resolution, vocab_size=c.vocab_size, latent_dim=c.latent_dim,
                        patch_nums=tuple(c.patch_nums))
    return MultiScaleVQVAE(t).to(device).eval().requires_grad_(False)


def _recon_batch(c, batch: int, device, views: int = 1, targets: int = 2, rays: int = 256) -> dict:
    """A batch of the reconstruction trainer's shapes: views of a sphere-ish blob from random cameras."""
    from core import cameras
    from core.recon.pipeline import prepare_views
    g = torch.Generator().manual_seed(0)
    S = c.image_size
    xs, cams, plk = [], [], []
    for _ in range(batch):
        w2c = [cameras.pose_from_spherical(float(torch.rand(1, generator=g)) * 360, 20.0, 2.0) for _ in range(views)]
        img = torch.rand(views, 3, S, S, generator=g) * 2 - 1
        x, cm, p, _ = prepare_views(img, w2c, [cameras.DEFAULT_FOV_DEG] * views, S)
        xs.append(x), cams.append(cm), plk.append(p)
    R = targets * rays
    d = torch.nn.functional.normalize(torch.randn(batch, R, 3, generator=g), dim=-1)
    o = -2.0 * d + 0.05 * torch.randn(batch, R, 3, generator=g)
    b = {"images": torch.stack(xs), "cams": torch.stack(cams), "rays": torch.stack(plk), "o": o, "d": d,
         "rgb": torch.rand(batch, R, 3, generator=g), "alpha": (torch.rand(batch, R, generator=g) > 0.5).float(),
         "depth": torch.rand(batch, R, generator=g) + 1.5, "cos": torch.ones(batch, R),
         "jitter": torch.rand(batch, R, generator=g)}
    return {k: v.to(device) for k, v in b.items()}


def time_steps(step, prec: str, steps: int) -> float:
    from core.train.common import median_seconds
    return median_seconds(lambda: step(prec), steps, warmup=2)


def data_wait(model: str, m, data, batch: int, steps: int) -> dict:
    """Seconds to make one batch from ``data`` (a corpus or ``core.data shards``) as the trainer does,
    for the data-wait fraction (batch time over batch + step time). The reconstruction trainer only: the
    tokenizer indexes a uint8 tensor in memory and the NVS trainer a token cache."""
    import numpy as np
    from core.train.common import median_seconds
    if model != "recon":
        return {"note": "only the reconstruction trainer builds batches from images per step"}
    from core.train.recon import ViewCache, make_batch
    cache = ViewCache(data, m.config.image_size, "train", log=lambda *a: None)
    rng = np.random.default_rng(0)
    return {"batch_s": round(median_seconds(lambda: make_batch(cache, rng, batch, 1, 2, 256), steps), 4),
            "objects": len(cache.objects), "data": str(data)}


def bench_size(model: str, cfg: dict, batch: int, steps: int, device, compile_: bool, data=None) -> dict:
    from core.train.common import measure_precision
    m, opt, step, loss = build(model, cfg, batch, device)
    res = {"config": cfg, "params_M": round(sum(p.numel() for p in m.parameters()) / 1e6, 2), "batch": batch}
    for prec in ("fp32", "bf16"):
        s = time_steps(step, prec, steps)
        res[prec] = {"step_s": round(s, 4), "samples_per_s": round(batch / s, 2)}
    res["bf16_speedup"] = round(res["fp32"]["step_s"] / res["bf16"]["step_s"], 3)
    if compile_:
        try:
            compiled = torch.compile(step)
            t0 = time.perf_counter()
            compiled("fp32")
            res["compile_s"] = round(time.perf_counter() - t0, 1)
            s = time_steps(compiled, "fp32", steps)
            res["compiled_fp32"] = {"step_s": round(s, 4), "samples_per_s": round(batch / s, 2),
                                    "speedup": round(res["fp32"]["step_s"] / s, 3)}
        except Exception as e:  # no compiler toolchain, an unsupported op: say so, keep the rest
            res["compiled_fp32"] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}

    def probe(prec):  # the trainers' probe: forward and backward, no optimizer step
        opt.zero_grad(set_to_none=True)
        loss(prec).backward()
    res["auto_picks"] = measure_precision(probe, device)
    if data is not None:
        w = data_wait(model, m, data, batch, steps)
        if "batch_s" in w:
            best = min(res["fp32"]["step_s"], res["bf16"]["step_s"])
            w["data_wait_fraction"] = round(w["batch_s"] / (w["batch_s"] + best), 3)
        res["data"] = w
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m core.bench train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, choices=("tokenizer", "nvs", "recon"))
    ap.add_argument("--config", default=None, help="JSON overrides of the v2 size (default: V2 in this module)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per precision")
    ap.add_argument("--batch", type=int, default=None, help="per-step batch (default: the trainer's)")
    ap.add_argument("--sizes", default="shipped,v2", help="which sizes: shipped, v2 or both")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile of the fp32 step")
    ap.add_argument("--data", default=None, help="a corpus or core.data shards: also time making the batches "
                    "(data-wait fraction; reconstruction only)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from core.train.common import machine
    device = torch.device(a.device)
    v2 = {**shipped_config(a.model), **V2[a.model], **(json.loads(a.config) if a.config else {})}
    sizes = {"shipped": shipped_config(a.model), "v2": v2}
    res = {"model": a.model, "machine": machine(), "threads": a.threads, "device": str(device),
           "command": "python -m core.bench train " + " ".join(sys.argv[1:] if argv is None else argv)}
    for name in a.sizes.split(","):
        res[name] = bench_size(a.model, sizes[name], a.batch or BATCH[a.model], a.steps, device, a.compile, a.data)
    emit_json(res, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
