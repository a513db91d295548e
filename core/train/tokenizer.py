"""Train the multi-scale VQ tokenizer.

    python -m core.train tokenizer --data data/corpus --out runs/tokenizer [--config cfg.json]
        [--steps N] [--batch B] [--resume] [--time-limit MIN] [--precision auto|fp32|bf16] [--latest DIR]

Losses for white-background renders: L1 + L2 on pixels with object pixels weighted up, an
L1 on image gradients (keeps edges sharp against the flat white), plus VAR's VQ loss (commitment beta = 0.25). Codebook
health: code hits are counted over a window of steps; codes not hit in a window are
restarted from residual vectors the encoder just produced. The run folder is
``core.train.common.RunFolder``'s (``ckpt-latest/``, ``ckpt-best/``, ``log.jsonl``, the final
model in ``--out``); ``--resume`` restores step, optimizer and schedule.

``--init CKPT --train decoder`` fine-tunes only ``post_quant_conv`` and the decoder of a
trained tokenizer: encoder, codebook and phi are frozen, so every image keeps its tokens and
an NVS model trained against them stays paired (same codebook fingerprint). With the VQ terms
gone the loss can aim at PSNR directly (e.g. ``--w-fg 0 --w-chroma 0 --w-l2 4``).
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from core.checkpoint import CheckpointError, config_from_dict, load_config, load_into
from core.data.io import DataError, list_objects, load_image, view_ids
from core.metrics import psnr
from core.tokenizer import MultiScaleVQVAE, TokenizerConfig
from core.train.common import (Clock, StopSignal, add_runtime_args, autocast, check_resume_args, lr_at,
                               start_run)
from core.train.distributed import Distributed

SCHEDULE = ("steps", "lr", "warmup", "time_limit", "batch")  # what --force-schedule may change on --resume


# ----------------------------------------------------------------------------- data

def image_paths(root, split: str | None) -> list[Path]:
    objs = list_objects(root, split)
    return [o / f"{v}.png" for o in objs for v in view_ids(o)]


def load_uint8(paths: list[Path], size: int, desc: str = "images") -> torch.Tensor:
    """All images as one uint8 tensor [N,3,S,S] (composited on white, area-resized): the corpus is
    small enough to keep in memory, which makes CPU training I/O-free."""
    out = torch.empty(len(paths), 3, size, size, dtype=torch.uint8)
    for i, p in enumerate(tqdm(paths, desc=f"loading {desc}", leave=False, mininterval=5)):
        out[i] = torch.from_numpy(np.array(load_image(p, size))).permute(2, 0, 1)
    return out


def to_float(batch_u8: torch.Tensor) -> torch.Tensor:
    return batch_u8.float().div_(127.5).sub_(1.0)


# ----------------------------------------------------------------------------- losses

def grad_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """L1 between finite-difference image gradients (edge sharpness without a perceptual net)."""
    dx = lambda t: t[..., :, 1:] - t[..., :, :-1]
    dy = lambda t: t[..., 1:, :] - t[..., :-1, :]
    return F.l1_loss(dx(a), dx(b)) + F.l1_loss(dy(a), dy(b))


def chroma(t: torch.Tensor) -> torch.Tensor:
    return t - t.mean(1, keepdim=True)


def recon_loss(rec, x, w_l2: float, w_grad: float, w_fg: float = 0.0, w_chroma: float = 0.0):
    """Pixel L1 + L2 + gradient L1. On white-background renders the object is a small part of
    the image, so its pixels (anything not near-white) get ``1 + w_fg`` times the weight of the
    background, and ``w_chroma`` adds an L1 on colour (pixel minus its grey level): without them
    the net settles on grey objects (colour is a small share of the loss)."""
    rec = rec.float()
    w = 1.0 + w_fg * (x < 0.96).any(1, keepdim=True).float()
    w = w / w.mean((1, 2, 3), keepdim=True)  # per image: the same loss however a batch is split over processes
    l1, l2 = (w * (rec - x).abs()).mean(), (w * (rec - x).square()).mean()
    g = grad_l1(rec, x)
    c = (w * (chroma(rec) - chroma(x)).abs()).mean() if w_chroma else rec.new_zeros(())
    mse = F.mse_loss(rec.detach(), x).item()
    return l1 + w_l2 * l2 + w_grad * g + w_chroma * c, {"l1": l1.item(), "l2": l2.item(), "grad": g.item(),
                                                        "chroma": c.item(), "mse": mse}


# ----------------------------------------------------------------------------- codebook health

class CodebookMonitor:
    """Counts code hits over a window of steps; at the end of each window restarts dead codes
    from random residual vectors of the current batch (+ small noise) and clears their Adam state."""

    def __init__(self, vocab: int, window: int):
        self.vocab, self.window, self.hits, self.steps = vocab, window, torch.zeros(vocab), 0
        self.last_usage = 0.0

    def update(self, idxs) -> None:
        for idx in idxs:
            self.hits += torch.bincount(idx.flatten().cpu(), minlength=self.vocab).float()
        self.steps += 1

    @torch.no_grad()
    def maybe_restart(self, model, seen, optimizer, dist: Distributed = Distributed()) -> int | None:
        """Under torchrun the hits are summed and the residuals gathered over processes: every process
        restarts the same codes from the same global pool, as one process on the whole batch would."""
        if self.steps < self.window:
            return None
        dist.sum_(self.hits)
        dead = (self.hits == 0).nonzero().flatten()
        self.last_usage = 1.0 - len(dead) / self.vocab
        self.hits.zero_()
        self.steps = 0
        if len(dead) == 0:
            return 0
        pool = torch.cat([dist.gather_rows(s.detach().float()) for s in seen], 0)
        pool = pool[pool.norm(dim=1) > 1e-6]  # residuals that are not already exactly zero
        w = model.quantize.embedding.weight
        if len(pool) == 0 and not dist.enabled:
            return 0
        if len(pool):
            pick = pool[torch.randint(len(pool), (len(dead),))]
            w.data[dead.to(w.device)] = pick.to(w.device) + 0.01 * pick.std() * torch.randn_like(pick).to(w.device)
        dist.broadcast_(w.data)
        dead = dead.to(w.device)
        st = optimizer.state.get(w, {})
        for k in ("exp_avg", "exp_avg_sq"):
            if k in st:
                st[k][dead] = 0
        return len(dead)


# ----------------------------------------------------------------------------- validation

@torch.no_grad()
def validate(model, images_u8: torch.Tensor, batch: int = 16) -> dict:
    model.eval()
    ps, hits = [], torch.zeros(model.config.vocab_size)
    for i in range(0, len(images_u8), batch):
        x = to_float(images_u8[i:i + batch]).to(model.device)
        idx = model.encode_indices(x)
        for t in idx:
            hits += torch.bincount(t.flatten().cpu(), minlength=len(hits)).float()
        rec = model.decode_indices(idx)
        for r, g in zip(rec, x):
            ps.append(psnr(((r + 1) / 2).permute(1, 2, 0).cpu().numpy(), ((g + 1) / 2).permute(1, 2, 0).cpu().numpy()))
    model.train()
    return {"val_psnr": float(np.mean(ps)), "val_usage": float((hits > 0).float().mean())}


# ----------------------------------------------------------------------------- main

def parse_config(arg: str | None) -> TokenizerConfig:
    if not arg:
        return TokenizerConfig()
    if arg == "var_published":
        return TokenizerConfig.var_published()
    text = arg if arg.lstrip().startswith("{") else Path(arg).read_text()
    data = json.loads(text)
    return config_from_dict(TokenizerConfig, data, source=str(arg))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m core.train tokenizer", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="dataset root (train/ is used; val/ for validation) or folder of objects")
    ap.add_argument("--out", required=True, help="run folder: ckpt-latest/, ckpt-best/, log.jsonl, final model")
    ap.add_argument("--config", help="TokenizerConfig as a JSON file or string, or 'var_published'")
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--w-l2", type=float, default=1.0)
    ap.add_argument("--w-grad", type=float, default=0.5)
    ap.add_argument("--w-fg", type=float, default=4.0, help="extra weight on object (non-white) pixels")
    ap.add_argument("--w-chroma", type=float, default=2.0, help="weight of the L1 on colour (pixel minus grey)")
    ap.add_argument("--restart-window", type=int, default=50, help="steps per codebook-usage window")
    ap.add_argument("--ckpt-minutes", type=float, default=5.0)
    ap.add_argument("--val-every", type=int, default=250)
    ap.add_argument("--val-images", type=int, default=96)
    ap.add_argument("--max-images", type=int, default=40000, help="cap on training images held in memory")
    ap.add_argument("--latest", help="also mirror each checkpoint to this folder (e.g. for other jobs)")
    ap.add_argument("--init", help="start from this checkpoint folder's config and weights (fresh optimizer and schedule)")
    ap.add_argument("--train", choices=("all", "decoder"), default="all",
                    help="decoder: fine-tune post_quant_conv + decoder only; encoder, codebook and phi stay frozen, "
                         "so every image keeps its tokens and an NVS model trained against them stays valid")
    add_runtime_args(ap, batch=16)
    a = ap.parse_args(argv)

    rt = start_run(a)
    run, dev, resuming, dist = rt.run, rt.device, rt.resuming, rt.dist

    state = {"step": 0, "wall_s": 0.0, "best_val_psnr": -1.0, "samples_seen": 0}
    try:
        dist.check_divisible(a.batch)
        if resuming:
            cfg = config_from_dict(TokenizerConfig, load_config(run.latest), source=str(run.latest / "config.json"))
            if run.state().get("train", a.train) != a.train:
                raise CheckpointError(f"{run.latest} was trained with another --train mode than {a.train!r}")
            check_resume_args(run.state().get("args", {}), vars(a), SCHEDULE, ("config", "init"), a.force_schedule)
        elif a.init:
            cfg = config_from_dict(TokenizerConfig, load_config(a.init), source=str(Path(a.init) / "config.json"))
        else:
            cfg = parse_config(a.config)
        paths = image_paths(a.data, "train")
        val_paths = image_paths(a.data, "val") if (Path(a.data) / "val").is_dir() else []
    except (DataError, CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not paths:
        print(f"error: {a.data}: no training images", file=sys.stderr)
        return 2
    rng = random.Random(a.seed)
    if len(paths) > a.max_images:
        paths = rng.sample(paths, a.max_images)
    val_paths = random.Random(1).sample(val_paths, min(a.val_images, len(val_paths)))
    train_u8 = load_uint8(paths, cfg.resolution, "train")
    val_u8 = load_uint8(val_paths, cfg.resolution, "val") if val_paths else None
    print(f"train images {len(train_u8)}, val images {0 if val_u8 is None else len(val_u8)}, "
          f"config {json.dumps(cfg.to_dict())}", flush=True)

    model = MultiScaleVQVAE(cfg).to(dev).train()
    if a.init and not resuming:
        try:
            load_into(model, a.init)
        except CheckpointError as e:
            print(f"error: --init {a.init}: {e}", file=sys.stderr)
            return 2
    frozen = (model.encoder, model.quant_conv, model.quantize) if a.train == "decoder" else ()
    for m in frozen:
        m.requires_grad_(False).eval()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=a.lr, betas=(0.9, 0.95), weight_decay=0.0)
    if resuming:
        try:
            state.update(run.resume(model, opt))
        except CheckpointError as e:
            print(f"error: --resume: {e}", file=sys.stderr)
            return 2
        print(f"resumed from {run.latest} at step {state['step']}", flush=True)

    def probe(prec: str) -> None:  # one forward + backward on one local batch, for --precision auto
        x = to_float(train_u8[:max(1, a.batch // dist.world)]).to(dev)
        with autocast(prec, dev):
            rec = model.decoder(model.post_quant_conv(model.encode_fhats(x)[1][-1])) if frozen else model(x)[0]
        recon_loss(rec, x, a.w_l2, a.w_grad, a.w_fg, a.w_chroma)[0].backward()
        opt.zero_grad(set_to_none=True)
    precision = rt.choose_precision(probe, resumed=state.get("precision"))
    print(f"parameters {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M, precision {precision} "
          f"{rt.measured or ''}, threads {a.threads}, processes {dist.world}", flush=True)

    state.update(train=a.train, precision=precision, args=vars(a))
    run.open_segment(state, precision, dist.world, {"precision_measured": rt.measured or None})
    mon = CodebookMonitor(cfg.vocab_size, a.restart_window)
    clock, t_ckpt = Clock(state["wall_s"], a.time_limit), time.time()

    def save(folder: Path, with_opt: bool = True):
        state["wall_s"] = clock.wall_s
        run.save(folder, model, opt if with_opt else None, state)

    stop = StopSignal()  # SIGTERM/SIGINT: finish the step, validate, save, exit cleanly
    bar = tqdm(total=a.steps, initial=state["step"], desc="tokenizer", mininterval=10)
    while state["step"] < a.steps and not dist.agree_to_stop(stop.requested or clock.over):
        for g in opt.param_groups:
            g["lr"] = lr_at(state["step"], a.lr, a.warmup, a.steps, hold=0.7, time_progress=clock.progress)
        sel = torch.randint(len(train_u8), (a.batch,))   # the global batch, the same on every process
        flip = torch.rand(a.batch) < 0.5
        sel, flip = sel[dist.shard(a.batch)], flip[dist.shard(a.batch)]   # this process's rows
        x = to_float(train_u8[sel])
        x[flip] = x[flip].flip(-1)
        x = x.to(dev)
        with autocast(precision, dev):
            if frozen:  # tokens fixed: decode what the frozen quantiser gives, no VQ loss, no restarts
                _, fhats = model.encode_fhats(x)  # the quantiser's own running sum: no second lookup pass
                rec, vq_loss = model.decoder(model.post_quant_conv(fhats[-1])), x.new_zeros(())
            else:
                rec, vq_loss, idxs, seen = model(x)
        rl, parts = recon_loss(rec, x, a.w_l2, a.w_grad, a.w_fg, a.w_chroma)
        loss = rl + vq_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        dist.all_reduce_grads(params)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        restarted = None
        if not frozen:  # a frozen codebook needs no usage window (val reports usage)
            mon.update(idxs)
            restarted = mon.maybe_restart(model, seen, opt, dist)
        state["step"] += 1
        state["samples_seen"] += a.batch
        bar.update(1)
        rec_psnr = 10 * math.log10(4.0 / max(parts["mse"], 1e-10))
        rec_item = {"step": state["step"], "loss": loss.item(), "vq": vq_loss.item(), **parts,
                    "train_psnr": rec_psnr, "lr": opt.param_groups[0]["lr"], "wall_s": round(clock.wall_s, 1)}
        if restarted is not None:
            rec_item.update(usage_window=mon.last_usage, restarted=restarted)
        if state["step"] % a.val_every == 0 and val_u8 is not None and dist.is_main:
            rec_item.update(validate(model, val_u8))
            if rec_item["val_psnr"] > state["best_val_psnr"]:
                state["best_val_psnr"] = rec_item["val_psnr"]
                save(run.best, with_opt=False)
        if state["step"] % 10 == 0 or "val_psnr" in rec_item or restarted is not None:
            run.log(rec_item)
            bar.set_postfix(psnr=f"{rec_psnr:.2f}", vq=f"{vq_loss.item():.4f}", use=f"{mon.last_usage:.2f}")
        if time.time() - t_ckpt > a.ckpt_minutes * 60:
            save(run.latest)
            if a.latest:
                run.save(Path(a.latest), model, opt, state)
            t_ckpt = time.time()
    bar.close()
    if clock.over:
        print("time limit reached", flush=True)
    if val_u8 is not None and dist.is_main:
        final = validate(model, val_u8)
        run.log({"step": state["step"], "final": True, **final})
        print(json.dumps(final), flush=True)
        if final["val_psnr"] > state["best_val_psnr"]:
            state["best_val_psnr"] = final["val_psnr"]
            save(run.best, with_opt=False)
    save(run.latest)
    if a.latest:
        run.save(Path(a.latest), model, opt, state)
    run.save_final(model)
    run.update_segment(state, ended=True)
    run.close()
    dist.close()
    print(f"done: step {state['step']}, {state['wall_s'] / 60:.1f} min, checkpoint {run.root}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
