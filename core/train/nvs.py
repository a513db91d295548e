"""`python -m core.train nvs --data DIR --tokenizer checkpoints/tokenizer --out DIR [--steps N] [--resume]`

Teacher-forced next-scale training of the NVS transformer on a frozen tokenizer:
cross-entropy over all target tokens, AdamW (0.9, 0.95) with the pose path at 10x lr,
grad clipping, per-sample condition dropout (so CFG's unconditional branch is trained),
zero-pose pairs (source == target) at ``--zero-pose-rate``, ``--targets-per-source`` targets
sharing one run of their source's prefix. ``--coarse-scales N --coarse-fraction F`` make a
share F of the steps coarse steps: loss on the first N scales only (the layout a camera move
changes, starved under a uniform loss; the forward stops there, so a bigger ``--coarse-batch``
costs little). ``--distance-zoom`` trains every target as seen from its source's distance
(``NVSConfig.distance_zoom``). ``--guide`` trains a 3-D-anchored model (``NVSConfig.guide``): the
guides of its pairs (``--recon``'s lifts of each source view, rasterised at the target) are built
once into the cache (``core.nvs.data.build_guides``); ``--init`` may name an unguided model, whose
weights it starts from. The corpus is tokenised once into ``--cache`` (re-done automatically for a
different tokenizer). The run folder is ``core.train.common.RunFolder``'s: periodic checkpoints
(model + optimizer, all safetensors) in ``OUT/ckpt-latest`` (``--resume`` continues from there),
the best by val loss in ``OUT/ckpt-best``, the final model in ``OUT``, ``OUT/log.jsonl`` with
train/val loss, token accuracy and PSNR of sampled val views.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from core.checkpoint import CheckpointError, config_from_dict, load_config, load_into
from core.data.io import index_objects
from core.nvs.config import NVSConfig
from core.nvs.data import (DistanceZoom, OnlineSampler, PairSampler, build_guides, cache_dir, guide_dir, guide_fits,
                           load_cached, load_guides, split_scales, tokenise_objects)
from core.nvs.model import NVSTransformer
from core.train.common import (Clock, RunFolder, StopSignal, add_runtime_args, autocast, check_resume_args, lr_at,
                               start_run)
from core.train.distributed import Distributed

SMALL = 64  # the learned image embedder sees the source at this size (NVSConfig.cnn_resolution)
SCHEDULE = ("steps", "lr", "warmup", "time_limit", "batch", "coarse_fraction")  # --force-schedule may change these
MODEL_FLAGS = ("depth", "width", "heads", "copy_gate", "embedder", "embed_dim", "prefix_cond")  # distance_zoom, guide: build_config


# ----------------------------------------------------------------------------- steps
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


def guide_inputs(model: NVSTransformer, tok, b: dict) -> dict:
    """The forward's guide keywords of batch ``b`` (none for an unguided model)."""
    if not model.config.guide:
        return {}
    return dict(guide_idx=b["guide"], guide_codes=tok.lookup(b["guide"]))


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
        loss, acc = loss_acc(model(emb, rel, codes, x_tf, src_idx=b["src"], **guide_inputs(model, tok, b)), tgt)
        L.append(loss.item())
        A.append(acc)
    model.train()
    return {"val_loss": float(np.mean(L)), "val_acc": float(np.mean(A))}


def val_psnr(model, tok, data, n_objects: int, n_views: int, device, recon=None) -> dict:
    from core.eval.nvs import evaluate
    from core.nvs.pipeline import NVSPipeline, SamplingParams
    pipe = NVSPipeline(model, tok, device, recon=recon)
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


# ----------------------------------------------------------------------------- the run, in parts
def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m core.train nvs", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="dataset root with train/ and val/")
    ap.add_argument("--tokenizer", default="checkpoints/tokenizer")
    ap.add_argument("--out", default="checkpoints/nvs", help="run folder: ckpt-latest/, ckpt-best/, log.jsonl, "
                    "final model")
    ap.add_argument("--cache", default="data/nvs_tokens", help="pre-tokenised corpus cache (one sub-folder per tokenizer)")
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--init", default=None, help="start from these model weights (config must match)")
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
    ap.add_argument("--guide", action=argparse.BooleanOptionalAction, default=None,
                    help="3-D-anchored model: conditioned on the lifted source rendered at the target "
                         "(NVSConfig.guide; default: off, or the resumed run's setting)")
    ap.add_argument("--recon", default="checkpoints/recon", help="reconstruction model whose lifts make the guides")
    ap.add_argument("--guide-sources", type=int, default=2,
                    help="source views per object whose lift is cached (each costs a lift and a render per view)")
    ap.add_argument("--guide-drop", type=float, default=0.1, help="share of samples trained with the guide nulled")
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
    add_runtime_args(ap, batch=8)
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
    if a.guide and a.online:
        ap.error("--guide needs the token cache: drop --online")
    if a.guide_sources < 1:
        ap.error(f"--guide-sources must be at least 1, got {a.guide_sources}")
    if not a.no_tokenise and not Path(a.data).is_dir():  # before the tokenizer loads and an empty cache is made
        ap.error(f"--data {a.data}: not a directory")
    return a


class SetupError(ValueError):
    """A run that cannot start as asked (mismatched resume, empty cache); one error line."""


def build_config(a, run: RunFolder, resuming: bool, tok, th: str, rh: str = "") -> NVSConfig:
    """The resumed run's config, else one from the flags; checks the flags and tokenizer agree with it."""
    if resuming:
        cfg = config_from_dict(NVSConfig, load_config(run.latest), source=str(run.latest / "config.json"))
    else:
        t = tok.config
        cfg = NVSConfig(depth=a.depth, width=a.width, num_heads=a.heads, copy_gate=a.copy_gate,
                        cond_drop_rate=a.cond_drop, prefix_cond=a.prefix_cond, vocab_size=t.vocab_size,
                        latent_dim=t.latent_dim, patch_nums=t.patch_nums, resolution=t.resolution, tokenizer_hash=th,
                        embedder=a.embedder, embed_dim=a.embed_dim or (768 if a.embedder == "open_clip" else 256),
                        cnn_resolution=SMALL, distance_zoom=bool(a.distance_zoom), guide=bool(a.guide),
                        guide_drop_rate=a.guide_drop, recon_hash=rh if a.guide else "")
    if a.guide is not None and cfg.guide != a.guide:
        raise SetupError(f"{run.latest} was trained with guide={cfg.guide}")
    if cfg.guide and cfg.recon_hash != rh:
        raise SetupError(f"{run.latest} was trained on the guides of reconstruction {cfg.recon_hash}, "
                         f"--recon {a.recon} is {rh}")
    if a.distance_zoom is not None and cfg.distance_zoom != a.distance_zoom:
        raise SetupError(f"{run.latest} was trained with distance_zoom={cfg.distance_zoom}")
    if cfg.distance_zoom and a.online:
        raise SetupError(f"{run.latest} was trained with distance_zoom, which needs the token cache: drop --online")
    if cfg.tokenizer_hash != th and a.follow_tokenizer:
        print(f"tokenizer changed since {run.latest} ({cfg.tokenizer_hash} -> {th}): following it", flush=True)
        cfg.tokenizer_hash = th
    if cfg.tokenizer_hash != th:
        raise SetupError(f"{run.latest} was trained with tokenizer {cfg.tokenizer_hash}, this one is {th}")
    if a.coarse_scales and not 0 < a.coarse_scales < cfg.num_scales:
        raise SetupError(f"--coarse-scales must be in 1..{cfg.num_scales - 1} for patch_nums {cfg.patch_nums}")
    return cfg


def build_samplers(a, cfg: NVSConfig, tok, dirs: dict, step: int, gdirs: dict | None = None):
    """(training sampler, validation sampler, fixed validation pairs): the token cache's, or online."""
    if a.online:
        sampler = OnlineSampler(a.data, "train", tok, SMALL, a.zero_pose_rate, seed=a.seed * 7919 + step,
                                max_objects=a.max_objects)
        val_sampler = OnlineSampler(a.data, "val", tok, SMALL, a.zero_pose_rate, seed=1234)
        return sampler, val_sampler, val_sampler.pairs(16)
    train_objs, val_objs = load_cached(dirs["train"]), load_cached(dirs["val"])
    if not train_objs:
        raise SetupError(f"no tokenised training objects in {dirs['train']}")
    zooms = {s: None for s in ("train", "val")}
    if cfg.distance_zoom:
        for s in zooms:
            zooms[s] = DistanceZoom({o.folder.name: o.folder for o in index_objects(a.data, s)}, tok)
    guides = {s: load_guides(gdirs[s]) if cfg.guide else None for s in ("train", "val")}
    if cfg.guide and not any(g.usable() for g in guides["val"].values()):
        val_objs = []  # no val guides: validate on train pairs, as with no val objects
    sampler = PairSampler(train_objs, a.zero_pose_rate, seed=a.seed * 7919 + step, zoom=zooms["train"],
                          guides=guides["train"])
    val_sampler = PairSampler(val_objs or train_objs, a.zero_pose_rate, seed=1234,
                              zoom=zooms["val"] if val_objs else zooms["train"],
                              guides=guides["val"] if val_objs else guides["train"])
    return sampler, val_sampler, val_sampler.pairs(16)


def forward_loss(model: NVSTransformer, tok, b: dict, k: int, n_scales: int | None, precision: str, device):
    """Teacher-forced loss and token accuracy of batch ``b`` (``k`` targets per source; ``n_scales``:
    a coarse step's first scales only)."""
    with autocast(precision, device):
        emb, rel, codes, x_tf, tgt, _ = model_inputs(model, tok, b, k)
        logits = model(emb, rel, codes, x_tf, targets_per_source=k, src_idx=b["src"][::k], scales=n_scales,
                       **guide_inputs(model, tok, b))
    return loss_acc(logits.float(), tgt[:, :logits.shape[1]])


def train_step(model: NVSTransformer, tok, opt, b: dict, k: int, n_scales: int | None, precision: str,
               device, clip: float, dist: Distributed = Distributed()) -> tuple[float, float, float]:
    """One optimizer step on this process's rows ``b`` of the global batch (gradients averaged over
    processes) -> (loss, token accuracy, gradient norm before clipping)."""
    loss, acc = forward_loss(model, tok, b, k, n_scales, precision, device)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    dist.all_reduce_grads(model.parameters())
    gn = torch.nn.utils.clip_grad_norm_(model.parameters(), clip).item()
    opt.step()
    return loss.item(), acc, gn


def check_init(cfg: NVSConfig, folder) -> None:
    """``--init``: a checkpoint of this model (a guide model may start from an unguided one, not from
    a guide model trained on another reconstruction's guides); refused before any work."""
    init = config_from_dict(NVSConfig, load_config(folder), source=str(Path(folder) / "config.json"))
    if init.guide and not cfg.guide:
        raise SetupError(f"--init {folder} is a guide model; this run is not (pass --guide)")
    if init.guide and init.recon_hash != cfg.recon_hash:
        raise SetupError(f"--init {folder} was trained on the guides of reconstruction {init.recon_hash}, "
                         f"this run's --recon is {cfg.recon_hash}")
    differ = [k for k in ("depth", "width", "num_heads", "copy_gate", "embedder", "embed_dim", "prefix_cond",
                          "vocab_size", "latent_dim", "patch_nums") if getattr(init, k) != getattr(cfg, k)]
    if differ:
        raise SetupError(f"--init {folder} differs from this run in " +
                         ", ".join(f"{k} ({getattr(init, k)} vs {getattr(cfg, k)})" for k in differ))


def init_weights(model: NVSTransformer, folder) -> None:
    """``--init``: the weights of ``folder``; a guide model may start from an unguided one (same
    everything else), its guide embeddings then aligned with the target's and its guide gate shut."""
    cfg = model.config
    if cfg.guide and not load_config(folder).get("guide"):
        import dataclasses
        base = load_into(NVSTransformer(dataclasses.replace(cfg, guide=False, recon_hash="")), folder)
        missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
        if unexpected or not all(k.startswith(("glvl_embed", "gpos_1LC", "guide_gate")) for k in missing):
            raise CheckpointError(f"--init {folder}: weights do not fit a guide model of this config "
                                  f"(missing {missing}, unexpected {unexpected})")
        model.align_guide_embeddings()
        print(f"init: {folder} (unguided) into a guide model; guide embeddings aligned, guide gate shut", flush=True)
    else:
        load_into(model, folder)


def is_coarse_step(a, step: int) -> bool:
    """Coarse steps spread evenly: step s is one when floor((s+1)F) > floor(sF)."""
    f = a.coarse_fraction
    return bool(a.coarse_scales) and math.floor((step + 1) * f) > math.floor(step * f)


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    a = parse_args(argv)
    rt = start_run(a)
    run, device, dist = rt.run, rt.device, rt.dist
    from tqdm import tqdm
    from core.tokenizer import MultiScaleVQVAE
    from core.nvs.pipeline import tokenizer_fingerprint
    try:
        if a.online and dist.enabled:
            raise SetupError("--online follows a tokenizer that may change between processes: under torchrun, "
                             "train from the token cache (drop --online)")
        dist.check_divisible(a.batch, "--batch", 1 if a.online else a.targets_per_source)
        if a.coarse_scales:
            dist.check_divisible(a.coarse_batch, "--coarse-batch", a.coarse_targets_per_source)
        if rt.resuming:
            check_resume_args(run.state().get("args", {}), vars(a), SCHEDULE, MODEL_FLAGS, a.force_schedule)
    except (SetupError, ValueError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    tok = MultiScaleVQVAE.from_pretrained(a.tokenizer, device=device).eval().requires_grad_(False)
    th = tokenizer_fingerprint(tok)
    dirs = {s: cache_dir(a.cache, th, s) for s in ("train", "val")}
    if not a.no_tokenise and not a.online and dist.is_main:  # rank 0 fills the cache, the others wait
        for s in ("train", "val"):
            n = tokenise_objects(a.data, s, tok, dirs[s], SMALL, a.max_objects if s == "train" else None)
            print(f"tokenised {n} new {s} objects into {dirs[s]}", flush=True)
    recon, rh, gdirs = None, "", None
    guided = a.guide if a.guide is not None else (rt.resuming and bool(load_config(run.latest).get("guide")))
    try:  # every refusal (a mismatched resume or --init, a missing --recon) before any guide is built
        if guided:
            from core.nvs.guide import recon_fingerprint
            from core.recon.pipeline import ReconPipeline
            if not (Path(a.recon) / "config.json").is_file():
                raise SetupError(f"--recon {a.recon}: no reconstruction checkpoint there (config.json)")
            recon = ReconPipeline.from_pretrained(a.recon, device=device)
            rh = recon_fingerprint(recon)
        cfg = build_config(a, run, rt.resuming, tok, th, rh)
        if a.init and not rt.resuming:
            check_init(cfg, a.init)
    except (SetupError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if cfg.guide:
        gdirs = {s: guide_dir(a.cache, th, rh, cfg.distance_zoom, s) for s in ("train", "val")}
        if not a.no_tokenise and dist.is_main:
            for s in ("train", "val"):
                r = build_guides(a.data, s, tok, recon, gdirs[s], a.guide_sources, cfg.distance_zoom,
                                 a.max_objects if s == "train" else None)
                print(f"guides: {r['objects']} new {s} objects ({r['failed_lifts']} lifts failed) into {gdirs[s]}",
                      flush=True)
    dist.barrier()
    if a.tokenise_only:
        return 0

    try:
        model = NVSTransformer(cfg).to(device)
        opt = torch.optim.AdamW(model.param_groups(a.lr, a.wd, a.pose_lr_mult), lr=a.lr, betas=(0.9, 0.95))
        state = {"step": 0, "wall_s": 0.0, "best_val_loss": float("inf"), "samples_seen": 0}
        if rt.resuming:
            state.update(run.resume(model, opt))
            print(f"resumed from {run.latest} at step {state['step']}", flush=True)
        elif a.init:
            init_weights(model, a.init)
        sampler, val_sampler, val_pairs = build_samplers(a, cfg, tok, dirs, state["step"], gdirs)
    except (SetupError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    probe_batch = val_sampler.batch(val_pairs[:max(1, a.batch // dist.world)], device)

    def probe(prec: str) -> None:  # one forward + backward on one local batch, for --precision auto
        forward_loss(model, tok, probe_batch, 1, None, prec, device)[0].backward()
        opt.zero_grad(set_to_none=True)
    precision = rt.choose_precision(probe, resumed=state.get("precision"))
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, precision {precision} "
          f"{rt.measured or ''}, processes {dist.world}, config {json.dumps(cfg.to_dict())}", flush=True)
    state.update(precision=precision, args=vars(a))
    run.open_segment(state, precision, dist.world, {"precision_measured": rt.measured or None})

    tok_stamp = _stamp(a.tokenizer)
    clock, stop = Clock(state["wall_s"], a.time_limit), StopSignal()

    def save(folder: Path, with_opt: bool):
        state.update(wall_s=clock.wall_s, n_train_objects=len(sampler.objects))
        bundle = (lambda f: tok.save_pretrained(f / "tokenizer")) if a.online else None  # the exact tokenizer used
        run.save(folder, model, opt if with_opt else None, state, extra=bundle)

    model.train()
    step = state["step"]
    bar = tqdm(total=a.steps, initial=step, desc="nvs", mininterval=10)
    runs = {"": [0.0, 0.0, 0], "coarse_": [0.0, 0.0, 0]}  # running loss, acc, count per step kind
    while step < a.steps and not dist.agree_to_stop(stop.requested or clock.over):
        if a.online and a.follow_tokenizer and step and step % a.follow_tokenizer == 0 and _stamp(a.tokenizer) != tok_stamp:
            try:
                new_tok = MultiScaleVQVAE.from_pretrained(a.tokenizer, device=device).eval().requires_grad_(False)
            except Exception as e:  # a checkpoint being written: try again later
                print(f"step {step}: tokenizer reload failed ({e})", flush=True)
            else:
                tok, tok_stamp = new_tok, _stamp(a.tokenizer)
                sampler.tok = val_sampler.tok = tok
                cfg.tokenizer_hash = tokenizer_fingerprint(tok)
                print(f"step {step}: following the tokenizer, now {cfg.tokenizer_hash}", flush=True)
        if not a.online and step and step % a.rescan_every == 0:
            new = load_cached(dirs["train"], skip={o.name for o in sampler.objects})
            if sampler.guides is not None:  # a guide model samples only sources with a cached lift
                sampler.guides.update(load_guides(gdirs["train"], skip=set(sampler.guides)))
                new = [o for o in new if guide_fits(sampler.guides, o)]
            if new:
                sampler.objects.extend(new)
                print(f"step {step}: +{len(new)} tokenised objects ({len(sampler.objects)})", flush=True)
        lr = lr_at(step, a.lr, a.warmup, a.steps, time_progress=clock.progress)
        for g in opt.param_groups:
            g["lr"] = lr * g.get("lr_mult", 1.0)
        coarse = is_coarse_step(a, step)
        if coarse:
            k, n = a.coarse_targets_per_source, a.coarse_batch
        else:
            k, n = (1 if a.online else a.targets_per_source), a.batch  # the online sampler groups its own pairs
        pairs = sampler.pairs(n) if a.online else sampler.pairs(n, k)   # the global batch, the same everywhere
        b = sampler.batch(pairs[dist.shard(n)], device)                   # this process's rows of it
        loss, acc, gn = train_step(model, tok, opt, b, k, a.coarse_scales if coarse else None, precision, device,
                                   a.clip, dist)
        step = state["step"] = step + 1
        state["samples_seen"] += n
        bar.update(1)
        r = runs["coarse_" if coarse else ""]
        r[0], r[1], r[2] = r[0] + loss, r[1] + acc, r[2] + 1
        if step % a.log_every == 0:
            rec = {"step": step, "lr": lr, "grad_norm": gn, "wall_s": round(clock.wall_s, 1)}
            for kind, r in runs.items():  # averaged over processes: the global batch's loss
                if r[2]:
                    rec.update({f"{kind}loss": dist.mean(r[0] / r[2]), f"{kind}acc": dist.mean(r[1] / r[2])})
                runs[kind] = [0.0, 0.0, 0]
            run.log(rec)
            bar.set_postfix({k: f"{v:.3f}" for k, v in rec.items() if k.endswith("loss")})
        if (step % a.val_every == 0 or step == a.steps) and dist.is_main:
            rec = {"step": step, **validate(model, tok, val_sampler, val_pairs, device)}
            if step % a.psnr_every == 0 or step == a.steps:
                rec.update(val_psnr(model, tok, a.data, a.psnr_objects, a.psnr_views, device, recon))
            rec["wall_s"] = round(clock.wall_s, 1)
            print(json.dumps(rec), flush=True)
            run.log(rec)
            if rec["val_loss"] < state["best_val_loss"]:
                state["best_val_loss"] = rec["val_loss"]
                save(run.best, False)
        if step % a.ckpt_every == 0:
            save(run.latest, True)
    bar.close()
    if clock.over:
        print("time limit reached", flush=True)
    save(run.latest, True)
    run.save_final(model, extra=(lambda f: tok.save_pretrained(f / "tokenizer")) if a.online else None)
    run.update_segment(state, ended=True)
    run.close()
    dist.close()
    print(f"saved {run.root} at step {step}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
