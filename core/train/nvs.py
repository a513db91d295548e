"""`python -m core.train nvs --data DIR --tokenizer checkpoints/tokenizer --out DIR [--steps N] [--resume]`

Teacher-forced next-scale training of the NVS transformer on a frozen tokenizer:
cross-entropy over all target tokens, AdamW (0.9, 0.95) with the pose path at 10x lr,
grad clipping, per-sample condition dropout (so CFG's unconditional branch is trained),
zero-pose pairs (source == target) at ``--zero-pose-rate``, ``--targets-per-source`` targets
sharing one run of their source's prefix. ``--coarse-scales N --coarse-fraction F`` make a
share F of the steps coarse steps: loss on the first N scales only (the layout a camera move
changes, starved under a uniform loss; the forward stops there, so a bigger ``--coarse-batch``
costs little). ``--distance-zoom`` trains every target as seen from its source's distance
(``NVSConfig.distance_zoom``). The corpus is tokenised once into ``--cache`` (re-done automatically for a
different tokenizer). Periodic checkpoints (model + optimizer, all safetensors) go to
``OUT/ckpt-latest``; ``--resume`` continues from there. Logs train/val loss, token accuracy
and PSNR of sampled val views.
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
from safetensors.torch import load_file, save_file

from core.checkpoint import check_safetensors_file, config_from_dict, load_config, load_into, save_checkpoint
from core.cli import device_arg
from core.data.io import index_objects
from core.nvs.config import NVSConfig
from core.nvs.data import (DistanceZoom, OnlineSampler, PairSampler, cache_dir, load_cached, split_scales,
                           tokenise_objects)
from core.nvs.model import NVSTransformer


# ----------------------------------------------------------------------------- optimizer state in safetensors
def save_optimizer(opt: torch.optim.Optimizer, path: Path) -> None:
    sd = opt.state_dict()
    tensors, meta = {}, {"param_groups": [{k: v for k, v in g.items()} for g in sd["param_groups"]]}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"{pid}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"meta": json.dumps(meta)})
    tmp.replace(path)


def load_optimizer(opt: torch.optim.Optimizer, path: Path) -> None:
    check_safetensors_file(path)
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["meta"])
    tensors = load_file(str(path))
    state: dict = {}
    for k, v in tensors.items():
        pid, name = k.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


# ----------------------------------------------------------------------------- steps
def lr_at(step: int, base: float, warmup: int, total: int, floor: float = 0.1, time_progress: float = 0.0) -> float:
    """Linear warm-up, then a cosine to ``floor`` x base, paced by steps or, with a time limit, by
    wall time (whichever is further along), so a time-limited run still ends at the low lr."""
    if step < warmup:
        return base * (step + 1) / warmup
    p = min(1.0, max((step - warmup) / max(1, total - warmup), time_progress))
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p)))


def model_inputs(model: NVSTransformer, tok, b: dict, targets_per_source: int = 1) -> tuple:
    """Batch -> forward inputs; with k targets per source the source rows are taken once (every k-th)."""
    cfg, k = model.config, targets_per_source
    src = split_scales(b["src"], cfg.patch_nums)
    tgt = split_scales(b["tgt"], cfg.patch_nums)
    x_tf = tok.teacher_forcing_inputs(tgt)
    codes = tok.lookup(b["src"][::k])
    if cfg.embedder == "cnn":
        emb = model.embed_image(b["small"][::k])
    elif "emb" in b:
        emb = b["emb"][::k]
    else:
        raise ValueError("embedder=open_clip training needs precomputed {i}e.npy embeddings in every object folder")
    return emb, b["rel_pose"], codes, x_tf, b["tgt"], src


def loss_acc(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, float]:
    loss = F.cross_entropy(logits.flatten(0, 1), target.flatten())
    acc = (logits.argmax(-1) == target).float().mean().item()
    return loss, acc


@torch.no_grad()
def validate(model, tok, sampler: PairSampler, pairs, device) -> dict:
    model.eval()
    L, A = [], []
    for i in range(0, len(pairs), 8):
        b = sampler.batch(pairs[i:i + 8], device)
        emb, rel, codes, x_tf, tgt, _ = model_inputs(model, tok, b)
        loss, acc = loss_acc(model(emb, rel, codes, x_tf, src_idx=b["src"]), tgt)
        L.append(loss.item())
        A.append(acc)
    model.train()
    return {"val_loss": float(np.mean(L)), "val_acc": float(np.mean(A))}


def val_psnr(model, tok, data, n_objects: int, n_views: int, device) -> dict:
    from core.eval.nvs import evaluate
    from core.nvs.pipeline import NVSPipeline, SamplingParams
    pipe = NVSPipeline(model, tok, device)
    model.eval()
    try:
        out = {}
        for name, sampling in (("", SamplingParams()), ("_greedy", SamplingParams(temperature=0.0))):
            r = evaluate(pipe, data, sampling, max_objects=n_objects, max_views=n_views, split="val")
            out.update({f"val_psnr{name}": r["psnr"], f"val_zero_pose_psnr{name}": r.get("zero_pose_psnr"),
                        f"val_copy_psnr{name}": r["baseline_copy_psnr"]})
        return out
    finally:
        model.train()


def _stamp(folder) -> float:
    f = Path(folder) / "model.safetensors"
    return f.stat().st_mtime if f.is_file() else 0.0


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m core.train nvs", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="dataset root with train/ and val/")
    ap.add_argument("--tokenizer", default="checkpoints/tokenizer")
    ap.add_argument("--out", default="checkpoints/nvs")
    ap.add_argument("--cache", default="data/nvs_tokens", help="pre-tokenised corpus cache (one sub-folder per tokenizer)")
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--init", default=None, help="start from these model weights (config must match)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=6e-4)
    ap.add_argument("--wd", type=float, default=0.05)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--clip", type=float, default=2.0)
    ap.add_argument("--pose-lr-mult", type=float, default=10.0)
    ap.add_argument("--zero-pose-rate", type=float, default=0.15)
    ap.add_argument("--targets-per-source", type=int, default=None,
                    help="targets sharing one source prefix pass (batch must be a multiple; 1 = independent "
                         "pairs); default 2, or 1 with --prefix-cond full")
    ap.add_argument("--coarse-scales", type=int, default=0, metavar="N",
                    help="coarse steps train the first N target scales only (0 = off; 4 = 1x1..4x4 at 128 px)")
    ap.add_argument("--coarse-fraction", type=float, default=0.5, metavar="F",
                    help="share of steps that are coarse steps when --coarse-scales is set (1 = coarse only)")
    ap.add_argument("--coarse-batch", type=int, default=16, help="targets per coarse step")
    ap.add_argument("--coarse-targets-per-source", type=int, default=4)
    ap.add_argument("--cond-drop", type=float, default=0.1)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--width", type=int, default=192)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--copy-gate", action=argparse.BooleanOptionalAction, default=True,
                    help="pointer-style copy of the source token at the same place (NVSConfig.copy_gate)")
    ap.add_argument("--distance-zoom", action=argparse.BooleanOptionalAction, default=None,
                    help="targets seen from the source's distance, distance applied as an image scale "
                         "(NVSConfig.distance_zoom; reads target images from --data each step; default: off, "
                         "or the resumed run's setting)")
    ap.add_argument("--embedder", choices=("cnn", "open_clip"), default="cnn",
                    help="open_clip: train on precomputed 768-d {i}e.npy embeddings")
    ap.add_argument("--embed-dim", type=int, default=None)
    ap.add_argument("--prefix-cond", choices=("source", "full"), default="source")
    ap.add_argument("--max-objects", type=int, default=None)
    ap.add_argument("--tokenise-only", action="store_true", help="fill the cache and exit")
    ap.add_argument("--no-tokenise", action="store_true", help="train on what is cached (another process fills it)")
    ap.add_argument("--online", action="store_true",
                    help="tokenise each batch on the fly with the current tokenizer (no cache; see --follow-tokenizer)")
    ap.add_argument("--follow-tokenizer", type=int, default=0, metavar="N",
                    help="with --online: reload --tokenizer every N steps when it changed (a tokenizer still training); "
                         "the tokenizer used last is saved next to the model")
    ap.add_argument("--rescan-every", type=int, default=500, help="pick up newly cached objects every N steps")
    ap.add_argument("--log-every", type=int, default=20)
    ap.add_argument("--val-every", type=int, default=250)
    ap.add_argument("--psnr-every", type=int, default=1000)
    ap.add_argument("--psnr-objects", type=int, default=4)
    ap.add_argument("--psnr-views", type=int, default=3)
    ap.add_argument("--ckpt-every", type=int, default=200)
    ap.add_argument("--time-limit", type=float, default=None, help="stop (and save) after this many minutes of training in total (resumed runs included); the lr cosine follows it")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", type=device_arg, default="auto")
    ap.add_argument("--amp", choices=("auto", "bf16", "off"), default="auto",
                    help="bf16 autocast: auto = on for CUDA, off on CPU (measured 5x slower on AVX2-only CPUs)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.targets_per_source is None:
        a.targets_per_source = 1 if a.prefix_cond == "full" else 2
    if a.targets_per_source < 1 or a.batch % a.targets_per_source:
        ap.error(f"--batch {a.batch} must be a positive multiple of --targets-per-source {a.targets_per_source}")
    if a.targets_per_source > 1 and a.prefix_cond == "full":
        ap.error("--prefix-cond full conditions the prefix on each target: use --targets-per-source 1")
    if a.coarse_scales:
        if not 0 < a.coarse_fraction <= 1:
            ap.error(f"--coarse-fraction must be in (0, 1], got {a.coarse_fraction}")
        if a.online:
            ap.error("--coarse-scales needs the token cache: drop --online")
        k = a.coarse_targets_per_source
        if k < 1 or a.coarse_batch % k:
            ap.error(f"--coarse-batch {a.coarse_batch} must be a positive multiple of --coarse-targets-per-source {k}")
        if k > 1 and a.prefix_cond == "full":
            ap.error("--prefix-cond full conditions the prefix on each target: use --coarse-targets-per-source 1")
    if a.distance_zoom and a.online:
        ap.error("--distance-zoom needs the token cache: drop --online")
    if not a.no_tokenise and not Path(a.data).is_dir():  # before the tokenizer loads and an empty cache is made
        ap.error(f"--data {a.data}: not a directory")
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    random.seed(a.seed)
    from tqdm import tqdm
    from core.tokenizer import MultiScaleVQVAE
    from core.nvs.pipeline import tokenizer_fingerprint

    device = torch.device(a.device)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    tok = MultiScaleVQVAE.from_pretrained(a.tokenizer, device=device).eval()
    for p in tok.parameters():
        p.requires_grad_(False)
    th = tokenizer_fingerprint(tok)
    tcfg = tok.config
    small = 64
    dirs = {s: cache_dir(a.cache, th, s) for s in ("train", "val")}
    if not a.no_tokenise and not a.online:
        for s in ("train", "val"):
            n = tokenise_objects(a.data, s, tok, dirs[s], small, a.max_objects if s == "train" else None)
            print(f"tokenised {n} new {s} objects into {dirs[s]}", flush=True)
    if a.tokenise_only:
        return 0

    latest = out / "ckpt-latest"
    if a.resume and (latest / "config.json").is_file():
        cfg = config_from_dict(NVSConfig, load_config(latest), source=str(latest / "config.json"))
    else:
        emb_dim = a.embed_dim or (768 if a.embedder == "open_clip" else 256)
        cfg = NVSConfig(depth=a.depth, width=a.width, num_heads=a.heads, copy_gate=a.copy_gate,
                        cond_drop_rate=a.cond_drop,
                        prefix_cond=a.prefix_cond, vocab_size=tcfg.vocab_size, latent_dim=tcfg.latent_dim,
                        patch_nums=tcfg.patch_nums, resolution=tcfg.resolution, tokenizer_hash=th,
                        embedder=a.embedder, embed_dim=emb_dim, cnn_resolution=small,
                        distance_zoom=bool(a.distance_zoom))
    if a.distance_zoom is not None and cfg.distance_zoom != a.distance_zoom:
        print(f"error: {latest} was trained with distance_zoom={cfg.distance_zoom}", file=sys.stderr)
        return 2
    if cfg.distance_zoom and a.online:
        print(f"error: {latest} was trained with distance_zoom, which needs the token cache: drop --online",
              file=sys.stderr)
        return 2
    if cfg.tokenizer_hash != th and a.follow_tokenizer:
        print(f"tokenizer changed since {latest} ({cfg.tokenizer_hash} -> {th}): following it", flush=True)
        cfg.tokenizer_hash = th
    if cfg.tokenizer_hash != th:
        print(f"error: {latest} was trained with tokenizer {cfg.tokenizer_hash}, this one is {th}", file=sys.stderr)
        return 2
    if a.coarse_scales and not 0 < a.coarse_scales < cfg.num_scales:
        print(f"error: --coarse-scales must be in 1..{cfg.num_scales - 1} for patch_nums {cfg.patch_nums}", file=sys.stderr)
        return 2
    model = NVSTransformer(cfg).to(device)
    opt = torch.optim.AdamW(model.param_groups(a.lr, a.wd, a.pose_lr_mult), lr=a.lr, betas=(0.9, 0.95))
    step, state = 0, {}
    if a.resume and (latest / "model.safetensors").is_file():
        load_into(model, latest)
        load_optimizer(opt, latest / "optimizer.safetensors")
        state = json.loads((latest / "state.json").read_text())
        step = state["step"]
        print(f"resumed from {latest} at step {step}", flush=True)
    elif a.init:
        load_into(model, a.init)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f}M parameters, config {json.dumps(cfg.to_dict())}", flush=True)

    if a.online:
        sampler = OnlineSampler(a.data, "train", tok, small, a.zero_pose_rate, seed=a.seed * 7919 + step,
                                max_objects=a.max_objects)
        val_sampler = OnlineSampler(a.data, "val", tok, small, a.zero_pose_rate, seed=1234)
        val_pairs = val_sampler.pairs(16)
    else:
        train_objs = load_cached(dirs["train"])
        val_objs = load_cached(dirs["val"])
        if not train_objs:
            print(f"error: no tokenised training objects in {dirs['train']}", file=sys.stderr)
            return 2
        zooms = {s: None for s in ("train", "val")}
        if cfg.distance_zoom:
            for s in zooms:
                zooms[s] = DistanceZoom({o.folder.name: o.folder for o in index_objects(a.data, s)}, tok)
        sampler = PairSampler(train_objs, a.zero_pose_rate, seed=a.seed * 7919 + step, zoom=zooms["train"])
        val_sampler = PairSampler(val_objs or train_objs, a.zero_pose_rate, seed=1234,
                                  zoom=zooms["val"] if val_objs else zooms["train"])
        val_pairs = val_sampler.pairs(16)
    tok_stamp = _stamp(a.tokenizer)
    use_amp = a.amp == "bf16" or (a.amp == "auto" and device.type == "cuda")
    log_f = open(out / "log.jsonl", "a")
    t_start, wall0 = time.time(), state.get("wall_s", 0.0)
    best = state.get("best_val_loss", float("inf"))

    def save(tag_dir: Path, with_opt: bool):
        save_checkpoint(tag_dir, model.state_dict(), cfg.to_dict())
        if a.online:  # the exact tokenizer this model was trained against travels with it
            tok.save_pretrained(tag_dir / "tokenizer")
        if with_opt:
            save_optimizer(opt, tag_dir / "optimizer.safetensors")
        (tag_dir / "state.json").write_text(json.dumps({"step": step, "wall_s": wall0 + time.time() - t_start,
                                                        "best_val_loss": best, "n_train_objects": len(sampler.objects),
                                                        "args": vars(a)}, indent=2))

    model.train()
    bar = tqdm(total=a.steps, initial=step, desc="nvs", mininterval=10)
    runs = {"": [0.0, 0.0, 0], "coarse_": [0.0, 0.0, 0]}  # running loss, acc, count per step kind
    while step < a.steps:
        if a.time_limit and wall0 + time.time() - t_start > a.time_limit * 60:
            print("time limit reached", flush=True)
            break
        if a.online and a.follow_tokenizer and step and step % a.follow_tokenizer == 0 and _stamp(a.tokenizer) != tok_stamp:
            try:
                new_tok = MultiScaleVQVAE.from_pretrained(a.tokenizer, device=device).eval()
            except Exception as e:  # a checkpoint being written: try again later
                print(f"step {step}: tokenizer reload failed ({e})", flush=True)
            else:
                for p in new_tok.parameters():
                    p.requires_grad_(False)
                tok, tok_stamp = new_tok, _stamp(a.tokenizer)
                sampler.tok = val_sampler.tok = tok
                th = tokenizer_fingerprint(tok)
                cfg.tokenizer_hash = th
                print(f"step {step}: following the tokenizer, now {th}", flush=True)
        if not a.online and step and step % a.rescan_every == 0:
            new = load_cached(dirs["train"], skip={o.name for o in sampler.objects})
            if new:
                sampler.objects.extend(new)
                print(f"step {step}: +{len(new)} tokenised objects ({len(sampler.objects)})", flush=True)
        tp = (wall0 + time.time() - t_start) / (a.time_limit * 60) if a.time_limit else 0.0
        lr = lr_at(step, a.lr, a.warmup, a.steps, time_progress=tp)
        for g in opt.param_groups:
            g["lr"] = lr * g.get("lr_mult", 1.0)
        # coarse steps spread evenly: step s is one when floor((s+1)F) > floor(sF)
        coarse = bool(a.coarse_scales) and math.floor((step + 1) * a.coarse_fraction) > math.floor(step * a.coarse_fraction)
        n_scales = a.coarse_scales if coarse else None
        if coarse:
            k, n = a.coarse_targets_per_source, a.coarse_batch
        else:
            k, n = (1 if a.online else a.targets_per_source), a.batch  # the online sampler groups its own pairs
        b = sampler.batch(sampler.pairs(n) if a.online else sampler.pairs(n, k), device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            emb, rel, codes, x_tf, tgt, _ = model_inputs(model, tok, b, k)
            logits = model(emb, rel, codes, x_tf, targets_per_source=k, src_idx=b["src"][::k], scales=n_scales)
        loss, acc = loss_acc(logits.float(), tgt[:, :logits.shape[1]])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip).item()
        opt.step()
        step += 1
        bar.update(1)
        r = runs["coarse_" if coarse else ""]
        r[0], r[1], r[2] = r[0] + loss.item(), r[1] + acc, r[2] + 1
        if step % a.log_every == 0:
            rec = {"step": step, "lr": lr, "grad_norm": gn, "wall_s": round(wall0 + time.time() - t_start, 1)}
            for kind, r in runs.items():
                if r[2]:
                    rec.update({f"{kind}loss": r[0] / r[2], f"{kind}acc": r[1] / r[2]})
                runs[kind] = [0.0, 0.0, 0]
            log_f.write(json.dumps(rec) + "\n")
            log_f.flush()
            bar.set_postfix({k: f"{v:.3f}" for k, v in rec.items() if k.endswith("loss")})
        if step % a.val_every == 0 or step == a.steps:
            rec = {"step": step, **validate(model, tok, val_sampler, val_pairs, device)}
            if step % a.psnr_every == 0 or step == a.steps:
                rec.update(val_psnr(model, tok, a.data, a.psnr_objects, a.psnr_views, device))
            rec["wall_s"] = round(wall0 + time.time() - t_start, 1)
            print(json.dumps(rec), flush=True)
            log_f.write(json.dumps(rec) + "\n")
            log_f.flush()
            if rec["val_loss"] < best:
                best = rec["val_loss"]
                save(out / "ckpt-best", False)
        if step % a.ckpt_every == 0:
            save(latest, True)
    bar.close()
    save(latest, True)
    save(out, False)  # the final model, loadable as a checkpoint folder
    print(f"saved {out} at step {step}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
