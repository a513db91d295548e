"""Next-scale sampling: KV cache, classifier-free guidance with ArchonView's linear ramp,
top-k / top-p, per-sample seeded generators (a target's image does not depend on what
else is in the batch).

``SamplingParams`` is the one value for the knobs a user turns (seed, guidance, top-k, top-p,
temperature, samples): its defaults, ranges and the rule for each knob live in ``KNOBS`` here,
and the pipeline, evaluation, benchmark, command line and app all pass it whole.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch

from core.nvs.model import KV, KVCache, NVSTransformer
from core.ranges import checked


class SamplingError(ValueError):
    """A sampling knob out of its range (seed, cfg, top-k, top-p, temperature, samples)."""


@dataclass(frozen=True)
class Knob:
    """One knob's documented range and its one rule, the same in the pipeline, the command line and
    the app (whose sliders span exactly this range): a value that is not a finite number, or lies
    outside [lo, hi], is refused with a ``SamplingError`` naming the knob and the range."""
    lo: float
    hi: float
    integer: bool
    help: str


KNOBS: dict[str, Knob] = {
    "seed": Knob(0, 2 ** 31 - 1, True, "seed of the first sample (sample j uses seed + j)"),
    "cfg": Knob(0.0, 10.0, False, "classifier-free guidance, ramped linearly over the scales (ArchonView: 3)"),
    # 4096 is the largest published vocabulary (VAR's tokenizer); k >= the model's vocabulary = off
    "top_k": Knob(0, 4096, True, "keep the k most likely tokens (0 or >= vocabulary = off)"),
    "top_p": Knob(0.0, 1.0, False, "keep the smallest set of tokens with this mass (0 or 1 = off)"),
    "temperature": Knob(0.0, 10.0, False, "softmax temperature (0 = greedy, the most likely token)"),
    # each sample costs about one view's sampling time
    "samples": Knob(1, 16, True, "pixel mean of N sampled views per camera (1 = one sample)"),
}


def check_knob(name: str, value: Any):
    """``value`` as knob ``name``'s type, or a SamplingError saying the knob's range."""
    k = KNOBS[name]
    return checked(name, value, k.lo, k.hi, k.integer, SamplingError)


@dataclass(frozen=True)
class SamplingParams:
    """How to draw a view: validated and normalised on construction (``SamplingError`` names the
    knob). Defaults are ArchonView's demo settings and one sample."""
    seed: int = 0
    cfg: float = 3.0
    top_k: int = 900
    top_p: float = 0.95
    temperature: float = 1.0
    samples: int = 1

    def __post_init__(self):
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, check_knob(f.name, getattr(self, f.name)))

    @classmethod
    def of(cls, sampling: "SamplingParams | None" = None, **knobs) -> "SamplingParams":
        """``sampling`` (default: the defaults) with ``knobs`` replaced: ``generate(..., cfg=2)``."""
        base = sampling if sampling is not None else cls()
        if not isinstance(base, SamplingParams):
            raise TypeError(f"sampling must be a SamplingParams, got {type(base).__name__}")
        return dataclasses.replace(base, **knobs) if knobs else base

    def row_seeds(self, cameras: int) -> list[int]:
        """One seed per sampled row, sample-major: sample j of every camera draws with seed + j."""
        return [(self.seed + j) % 2 ** 63 for j in range(self.samples) for _ in range(cameras)]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    # ------------------------------------------------------------------ command line
    @staticmethod
    def add_arguments(ap: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
        """``--seed --cfg --top-k --top-p --temperature --samples`` with the defaults and help above."""
        d = SamplingParams()
        for f in dataclasses.fields(SamplingParams):
            if f.name not in skip:
                k = KNOBS[f.name]
                ap.add_argument(f"--{f.name.replace('_', '-')}", type=int if k.integer else float,
                                default=getattr(d, f.name), help=f"{k.help} (default {getattr(d, f.name)})")

    @classmethod
    def from_args(cls, a: argparse.Namespace) -> "SamplingParams":
        return cls(**{f.name: getattr(a, f.name) for f in dataclasses.fields(cls) if hasattr(a, f.name)})


def sorted_descending(x: torch.Tensor) -> torch.Tensor:
    """The values of ``x`` sorted descending along the last dim. On CPU, NumPy's SIMD value sort
    is ~10x faster than ``torch.sort`` (2-core AVX-512 Xeon, [256, 1024]), which always computes
    the indices as well (a sixth of a CPU view went there); negation is exact."""
    if x.device.type == "cpu":
        return torch.from_numpy(np.sort(-x.detach().numpy(), axis=-1)).neg_()
    return x.sort(dim=-1, descending=True).values


def sample_tokens(logits: torch.Tensor, generators: list[torch.Generator], top_k: int = 0, top_p: float = 0.0,
                  temperature: float = 1.0) -> torch.Tensor:
    """logits [N, l, V] -> indices [N, l]; row i draws from ``generators[i]``; temperature 0 = argmax.

    Keeps the top_k most likely tokens, then the smallest prefix of them whose mass reaches
    top_p (the top token always), and draws by inverse CDF in that sorted order: one sort of
    values, one uniform per token, no multinomial. The drawn token is the first one whose
    logit equals the drawn value (exact ties are equally likely tokens), so no argsort."""
    if temperature <= 0:
        return logits.argmax(-1)
    z = logits.float() / temperature
    srt = sorted_descending(z)
    if 0 < top_k < srt.shape[-1]:
        srt = srt[..., :top_k]
    p = srt.softmax(-1)
    if 0.0 < top_p < 1.0:
        p = p * ((p.cumsum(-1) - p) <= top_p)  # mass before a token <= top_p: the smallest prefix reaching it
    cdf = p.cumsum(-1)
    u = torch.stack([torch.rand(cdf.shape[1], generator=g, device=cdf.device) for g in generators])
    j = torch.searchsorted(cdf, (u * cdf[..., -1])[..., None].contiguous()).clamp_max(cdf.shape[-1] - 1)
    return (z == srt.gather(-1, j)).to(torch.uint8).argmax(-1)


def cfg_ramp(cfg: float, si: int, num_scales: int) -> float:
    """ArchonView's guidance: 0 at the first scale, rising linearly to ``cfg`` at the last."""
    return cfg * si / max(num_scales - 1, 1)


def expand_kv(kvs: list[KV], n: int) -> list[KV]:
    """Batch-1 keys/values -> batch n views (no copy)."""
    return [(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in kvs]


def cat_kv(a: list[KV], b: list[KV]) -> list[KV]:
    """Two sets of rows -> one batch (conditional rows, then unconditional)."""
    return [(torch.cat((ka, kb)), torch.cat((va, vb))) for (ka, va), (kb, vb) in zip(a, b)]


@torch.no_grad()
def next_scale_sample(model: NVSTransformer, tok, cond: torch.Tensor, uncond: torch.Tensor | None,
                      prefix_kv: Callable[[], list[KV]], sampling: SamplingParams = SamplingParams(),
                      seeds: list[int] | None = None, use_cache: bool = True,
                      cancel: Callable[[], bool] | None = None,
                      src_idx: torch.Tensor | None = None,
                      guide_idx: torch.Tensor | None = None) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Yield ``(si, f_hat, idx_si)`` after each scale; ``f_hat`` is a fresh tensor each time.

    cond [N,C] (and uncond [N,C] when guiding) are the AdaLN conditions; ``prefix_kv()``
    returns the prefix keys/values for the whole (2N with CFG) batch. With ``use_cache`` it is
    called once and the keys/values of each new scale are appended; without, it is called
    again at every scale and all earlier scales are re-run (pass a ``prefix_kv`` that
    re-encodes, as ``NVSPipeline`` does, for a baseline with no cache at all). src_idx [N, L]:
    the source's token indices for a model with a copy gate (the unconditional rows never copy);
    guide_idx [N, L]: the guide's, for a guide model with a guide on every row (``prefix_kv`` holds
    its keys/values; None: no guide, nothing is copied from it).
    ``seeds``: one per row (independent samples of one camera); default ``sampling.seed`` for all.
    ``sampling.samples`` is the caller's business (it lays the rows out): here every row is one draw.
    """
    N, S = cond.shape[0], model.config.num_scales
    cfg, top_k, top_p, temperature = sampling.cfg, sampling.top_k, sampling.top_p, sampling.temperature
    guided = uncond is not None and cfg != 0
    c = torch.cat((cond, uncond)) if guided else cond
    seeds = [sampling.seed] * N if seeds is None else [int(s) for s in seeds]
    if len(seeds) != N:
        raise ValueError(f"{len(seeds)} seeds for {N} rows")
    gens = [torch.Generator(device=cond.device).manual_seed(s) for s in seeds]
    use_copy = None
    if guided:  # the unconditional rows copy nothing
        use_copy = torch.arange(2 * N, device=cond.device) < N
        src_idx = None if src_idx is None else torch.cat((src_idx, src_idx))
        guide_idx = None if guide_idx is None else torch.cat((guide_idx, guide_idx))
    x = model.start_tokens(c)
    mods = model.modulations(c)  # the condition is the same at every scale
    past = KVCache.preallocate(prefix_kv(), model.config.num_tokens) if use_cache else None
    seen: list[torch.Tensor] = []
    f_hat = tok.empty_fhat(N).to(cond.device)
    for si, pn in enumerate(model.config.patch_nums):
        if cancel is not None and cancel():
            return
        if use_cache:
            h, past = model.run(x, mods, past)
        else:
            seen.append(x)
            h, _ = model.run(torch.cat(seen, 1), mods, prefix_kv(), model.target_mask(si + 1))
            h = h[:, -pn * pn:]
        logits = model.logits(h, src_idx, model.begin_ends[si][0], use_copy, guide_idx, use_copy)
        if guided:
            t = cfg_ramp(cfg, si, S)
            logits = (1 + t) * logits[:N] - t * logits[N:]
        idx = sample_tokens(logits, gens, top_k, top_p, temperature)
        f_hat, nxt = tok.next_input(si, f_hat, idx)
        yield si, f_hat, idx
        if nxt is not None:
            x = model.embed_scale(si + 1, nxt.to(c.dtype))
            x = torch.cat((x, x)) if guided else x
