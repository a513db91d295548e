"""Next-scale sampling: KV cache, classifier-free guidance with ArchonView's linear ramp,
top-k / top-p, per-sample seeded generators (a target's image does not depend on what
else is in the batch)."""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch

from core.nvs.model import KV, KVCache, NVSTransformer


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
    return [(torch.cat((ka, kb)), torch.cat((va, vb))) for (ka, va), (kb, vb) in zip(a, b)]


@torch.no_grad()
def next_scale_sample(model: NVSTransformer, tok, cond: torch.Tensor, uncond: torch.Tensor | None,
                      prefix_kv: Callable[[], list[KV]], seed: int | list[int] = 0, cfg: float = 3.0, top_k: int = 0,
                      top_p: float = 0.0, temperature: float = 1.0, use_cache: bool = True,
                      cancel: Callable[[], bool] | None = None,
                      src_idx: torch.Tensor | None = None) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Yield ``(si, f_hat, idx_si)`` after each scale; ``f_hat`` is a fresh tensor each time.

    cond [N,C] (and uncond [N,C] when guiding) are the AdaLN conditions; ``prefix_kv()``
    returns the prefix keys/values for the whole (2N with CFG) batch. With ``use_cache`` it is
    called once and the keys/values of each new scale are appended; without, it is called
    again at every scale and all earlier scales are re-run (pass a ``prefix_kv`` that
    re-encodes, as ``NVSPipeline`` does, for a baseline with no cache at all). src_idx [N, L]:
    the source's token indices for a model with a copy gate (the unconditional rows never copy).
    ``seed``: one for every row, or a list with one per row (independent samples of one camera).
    """
    N, S = cond.shape[0], model.config.num_scales
    guided = uncond is not None and cfg != 0
    c = torch.cat((cond, uncond)) if guided else cond
    seeds = [int(seed)] * N if isinstance(seed, (int, np.integer)) else [int(s) for s in seed]
    if len(seeds) != N:
        raise ValueError(f"{len(seeds)} seeds for {N} rows")
    gens = [torch.Generator(device=cond.device).manual_seed(s) for s in seeds]
    use_copy = None
    if src_idx is not None and guided:
        src_idx = torch.cat((src_idx, src_idx))
        use_copy = torch.arange(2 * N, device=cond.device) < N
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
        logits = model.logits(h, src_idx, model.begin_ends[si][0], use_copy)
        if guided:
            t = cfg_ramp(cfg, si, S)
            logits = (1 + t) * logits[:N] - t * logits[N:]
        idx = sample_tokens(logits, gens, top_k, top_p, temperature)
        f_hat, nxt = tok.next_input(si, f_hat, idx)
        yield si, f_hat, idx
        if nxt is not None:
            x = model.embed_scale(si + 1, nxt.to(c.dtype))
            x = torch.cat((x, x)) if guided else x
