"""The next-scale NVS transformer (ArchonView on VAR), written for a KV cache from the start.

Sequence = [source prefix: L tokens][target: L tokens, coarse scale first]. The prefix is
the source view's multi-scale codebook vectors (shared ``word_embed`` plus its own
``xlvl_embed``/``xpos_1LC``) and attends only to itself, bidirectionally. Target tokens of
scale s see the whole prefix and target scales <= s (block-causal). A ``guide`` model (ours, see
``NVSConfig``) has a second prefix between them: the guide's L tokens (the lifted object rendered
at the target camera, tokenised), encoded per target under the target's condition, attending only
to themselves. The global condition
``emb_linear(pose_embed([image embedding, relative pose]))`` is the AdaLN input of every
block and the start token; there is no AdaLN before the head. With ``copy_gate`` (ours, see
``NVSConfig``) a per-token gate adds to the logit of the source's token at the same place;
``guide`` adds a second gate for the guide's token at the same place.

Parameter names follow ArchonView's ``models/var.py`` / ``basic_var.py`` so its published
weights map over by name (see ``importer.py``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from core.checkpoint import Pretrained
from core.nvs.config import NVSConfig
from core.nvs.embedders import CNNEncoder

IDENTITY_POSE = (0.0, 0.0, 1.0, 0.0)  # relative pose of a view to itself: [d_theta, sin 0, cos 0, d_r]

KV = tuple[torch.Tensor, torch.Tensor]  # per block: keys, values [B, H, T, head_dim]


def cat_kv_time(a: list[KV], b: list[KV]) -> list[KV]:
    """Two prefixes of the same rows -> one longer prefix (source tokens, then guide tokens)."""
    return [(torch.cat((ka, kb.to(ka.dtype)), 2), torch.cat((va, vb.to(va.dtype)), 2)) for (ka, va), (kb, vb) in zip(a, b)]


class KVCache:
    """One block's keys/values in a buffer allocated once for the whole sequence: each scale is
    written in place after the prefix, where a ``torch.cat`` per scale re-copies the whole cache.
    ``truncate`` drops what was appended after the prefix (a diffusion sampler re-runs the same
    slots every step)."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, capacity: int):
        B, H, T, D = k.shape
        self.k, self.v = k.new_empty(B, H, capacity, D), v.new_empty(B, H, capacity, D)
        self.k[:, :, :T], self.v[:, :, :T] = k, v
        self.prefix_len = self.len = T

    def append(self, k: torch.Tensor, v: torch.Tensor) -> KV:
        end = self.len + k.shape[2]
        if end > self.k.shape[2]:
            raise ValueError(f"KV cache full: {self.len} + {k.shape[2]} tokens > capacity {self.k.shape[2]}")
        self.k[:, :, self.len:end], self.v[:, :, self.len:end] = k, v
        self.len = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def truncate(self) -> "KVCache":
        self.len = self.prefix_len
        return self

    @classmethod
    def preallocate(cls, kvs: list[KV], extra: int) -> list["KVCache"]:
        return [cls(k, v, k.shape[2] + extra) for k, v in kvs]


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, l2_norm: bool):
        super().__init__()
        self.heads, self.head_dim, self.l2_norm = heads, width // heads, l2_norm
        self.mat_qkv = nn.Linear(width, 3 * width, bias=False)
        self.q_bias, self.v_bias = nn.Parameter(torch.zeros(width)), nn.Parameter(torch.zeros(width))
        if l2_norm:  # VAR's cosine attention with a learned per-head temperature (stable at any depth)
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, heads, 1, 1), 4.0).log())
        self.proj = nn.Linear(width, width)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, T, C = x.shape
        bias = torch.cat((self.q_bias, torch.zeros_like(self.q_bias), self.v_bias))
        qkv = F.linear(x, self.mat_qkv.weight, bias).view(B, T, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if not self.l2_norm:
            return qkv.unbind(0)
        q, k = F.normalize(qkv[:2], dim=-1).unbind(0)  # q and k in one call: fewer ops per AR step
        return q * self.scale_mul_1H11.clamp_max(math.log(100.0)).exp().to(q.dtype), k, qkv[2]

    @property
    def scale(self) -> float:
        return 1.0 if self.l2_norm else 0.25 / math.sqrt(self.head_dim)

    def forward(self, x, past: KV | KVCache | None = None, mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, KV | KVCache]:
        q, k, v = self.qkv(x)
        if isinstance(past, KVCache):
            k, v = past.append(k, v)
        elif past is not None:
            k, v = torch.cat((past[0].to(k.dtype), k), dim=2), torch.cat((past[1].to(v.dtype), v), dim=2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        B, H, T, D = out.shape
        return self.proj(out.transpose(1, 2).reshape(B, T, H * D)), (past if isinstance(past, KVCache) else (k, v))


class FFN(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, hidden), nn.Linear(hidden, width)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class AdaLNSelfAttn(nn.Module):
    """Pre-norm block whose LayerNorm scale/shift and residual gates come from the condition."""

    def __init__(self, cfg: NVSConfig):
        super().__init__()
        C = cfg.width
        self.C = C
        self.ln_wo_grad = nn.LayerNorm(C, eps=cfg.norm_eps, elementwise_affine=False)
        self.attn = SelfAttention(C, cfg.num_heads, cfg.attn_l2_norm)
        self.ffn = FFN(C, round(C * cfg.mlp_ratio))
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))

    def modulation(self, cond: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(gamma1, gamma2, 1 + scale1, 1 + scale2, shift1, shift2), each [B, 1, C]."""
        g1, g2, s1, s2, b1, b2 = self.ada_lin(cond).view(-1, 1, 6, self.C).unbind(2)
        return g1, g2, s1 + 1, s2 + 1, b1, b2

    def forward(self, x, mod: tuple[torch.Tensor, ...], past: KV | KVCache | None = None, mask=None,
                kv_only: bool = False):
        """``mod``: this block's ``modulation`` of the condition (a sampler computes it once per view)."""
        g1, g2, s1, s2, b1, b2 = mod
        h = self.ln_wo_grad(x) * s1 + b1
        if kv_only:  # the last block's prefix output is never read: only its keys/values are
            _, k, v = self.attn.qkv(h)
            return None, (k, v)
        a, kv = self.attn(h, past, mask)
        x = x + a * g1
        x = x + self.ffn(self.ln_wo_grad(x) * s2 + b2) * g2
        return x, kv


class NVSTransformer(nn.Module, Pretrained):
    config_class = NVSConfig  # from_pretrained / save_pretrained: core.checkpoint.Pretrained

    def __init__(self, cfg: NVSConfig):
        super().__init__()
        self.config = cfg
        C, E, L = cfg.width, cfg.embed_dim, cfg.num_tokens
        self.first_l = cfg.patch_nums[0] ** 2
        std = math.sqrt(1 / C / 3)
        # global condition: [image embedding, relative pose] -> pose_embed -> emb_linear
        self.image_encoder = CNNEncoder(E, cfg.cnn_width, cfg.cnn_resolution) if cfg.embedder == "cnn" else None
        self.pose_embed = nn.Linear(E + 4, E)
        self.emb_linear = nn.Linear(E, C)
        self.null_emb = nn.Parameter(F.normalize(torch.randn(E), dim=0))   # unconditional image embedding
        self.null_token = nn.Parameter(F.normalize(torch.randn(C), dim=0))  # unconditional prefix token
        # token embeddings
        self.word_embed = nn.Linear(cfg.latent_dim, C)
        self.pos_start = nn.Parameter(torch.randn(1, self.first_l, C) * std)
        self.pos_1LC = nn.Parameter(torch.randn(1, L, C) * std)
        self.xpos_1LC = nn.Parameter(torch.randn(1, L, C) * std)
        self.lvl_embed = nn.Embedding(cfg.num_scales, C)
        self.xlvl_embed = nn.Embedding(cfg.num_scales, C)
        self.blocks = nn.ModuleList(AdaLNSelfAttn(cfg) for _ in range(cfg.depth))
        self.head = nn.Linear(C, cfg.vocab_size)
        self.copy_gate = nn.Linear(C, 1) if cfg.copy_gate else None
        self.guide_gate = nn.Linear(C, 1) if cfg.guide else None
        if cfg.guide:  # the guide prefix: shared word_embed, its own level/position embeddings, its own gate
            self.glvl_embed = nn.Embedding(cfg.num_scales, C)
            self.gpos_1LC = nn.Parameter(torch.randn(1, L, C) * std)
        lvl = torch.cat([torch.full((p * p,), i) for i, p in enumerate(cfg.patch_nums)])
        self.register_buffer("lvl_1L", lvl[None], persistent=False)
        self.begin_ends = [(sum(p * p for p in cfg.patch_nums[:i]), sum(p * p for p in cfg.patch_nums[:i + 1]))
                           for i in range(cfg.num_scales)]
        self._init_weights(std)

    def _init_weights(self, std: float, init_adaln=0.5, init_adaln_gamma=1e-5, init_head=0.02):
        """VAR's recipe: small truncated-normal linears, near-zero residual gates, tiny head."""
        for name, m in self.named_modules():
            if name.startswith("image_encoder"):
                continue
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=std)
                nn.init.zeros_(m.bias) if m.bias is not None else None
            elif isinstance(m, nn.Embedding):
                nn.init.trunc_normal_(m.weight, std=std)
        E = self.config.embed_dim
        with torch.no_grad():  # identity on the embedding part (ArchonView meant this; its init overwrote it)
            self.pose_embed.weight[:, :E].copy_(torch.eye(E))
            # prefix and target start with the same position/scale embeddings, so "attend to the
            # same place in the source" (most of what a small camera move needs) is there from step 0
            self.xpos_1LC.copy_(self.pos_1LC)
            self.xlvl_embed.weight.copy_(self.lvl_embed.weight)
        self.head.weight.data.mul_(init_head)
        if self.copy_gate is not None:  # starts as the plain model; the gate is learned
            nn.init.zeros_(self.copy_gate.weight)
            nn.init.zeros_(self.copy_gate.bias)
        if self.config.guide:
            self.align_guide_embeddings()
        C, depth = self.config.width, self.config.depth
        for b in self.blocks:
            b.attn.proj.weight.data.div_(math.sqrt(2 * depth))
            b.ffn.fc2.weight.data.div_(math.sqrt(2 * depth))
            b.ada_lin[-1].weight.data[2 * C:].mul_(init_adaln)
            b.ada_lin[-1].weight.data[:2 * C].mul_(init_adaln_gamma)

    @torch.no_grad()
    def align_guide_embeddings(self) -> None:
        """Guide level/position embeddings := the target's, the guide gate := 0: the guide token at a
        place starts out looking like "the target's token here" (call after loading an unguided
        model's weights into a guide model). The gate starts shut; training opens it."""
        self.gpos_1LC.copy_(self.pos_1LC)
        self.glvl_embed.weight.copy_(self.lvl_embed.weight)
        nn.init.zeros_(self.guide_gate.weight)
        nn.init.zeros_(self.guide_gate.bias)

    # ------------------------------------------------------------------ conditions
    def embed_image(self, img: torch.Tensor) -> torch.Tensor:
        """Learned global embedding of source images [B,3,R,R] in [-1,1] -> [B, embed_dim]."""
        if self.image_encoder is None:
            raise ValueError(f"this model uses embedder={self.config.embedder!r}: compute the embedding with "
                             "core.nvs.embedders (or {i}e.npy files), not the learned encoder")
        return self.image_encoder(img)

    def check_embedding(self, emb: torch.Tensor) -> None:
        if emb.dim() != 2 or emb.shape[-1] != self.config.embed_dim:
            raise ValueError(f"image embedding has shape {tuple(emb.shape)}, the model expects "
                             f"[B, {self.config.embed_dim}] ({self.config.embedder} embedder)")

    def condition(self, emb: torch.Tensor, rel_pose: torch.Tensor) -> torch.Tensor:
        self.check_embedding(emb)
        if rel_pose.dim() != 2 or rel_pose.shape[-1] != 4:
            raise ValueError(f"relative pose has shape {tuple(rel_pose.shape)}, expected [B, 4]")
        return self.emb_linear(self.pose_embed(torch.cat((emb, rel_pose.to(emb.dtype)), dim=1)))

    def source_condition(self, emb: torch.Tensor) -> torch.Tensor:
        """The prefix's AdaLN input for prefix_cond='source': the source seen from itself."""
        return self.condition(emb, emb.new_tensor(IDENTITY_POSE).expand(emb.shape[0], 4))

    def null_condition(self, B: int) -> torch.Tensor:
        return self.emb_linear(self.null_emb)[None].expand(B, -1)

    # ------------------------------------------------------------------ token embeddings
    def embed_prefix(self, src_codes: torch.Tensor) -> torch.Tensor:
        """Source codebook vectors [B, L, Cvae] -> prefix tokens [B, L, C]."""
        return self.word_embed(src_codes) + self.xlvl_embed(self.lvl_1L) + self.xpos_1LC

    def embed_guide(self, guide_codes: torch.Tensor) -> torch.Tensor:
        """Guide codebook vectors [B, L, Cvae] -> guide prefix tokens [B, L, C]."""
        return self.word_embed(guide_codes) + self.glvl_embed(self.lvl_1L) + self.gpos_1LC

    def encode_guide(self, guide_codes: torch.Tensor, cond: torch.Tensor, off: torch.Tensor | None = None) -> list[KV]:
        """Keys/values of the guide prefix, one per target (``cond`` its AdaLN condition); rows where
        ``off`` [B] is True get the null prefix (no guide: dropped in training, or none to give)."""
        g = self.embed_guide(guide_codes)
        if off is not None:
            g = torch.where(off[:, None, None], self.null_prefix(g.shape[0]).to(g.dtype), g)
        return self.encode_prefix(g, cond)

    def null_prefix(self, B: int) -> torch.Tensor:
        return self.null_token.expand(B, self.config.num_tokens, -1)

    def lvl_pos(self, si: int) -> torch.Tensor:
        bg, ed = self.begin_ends[si]
        return self.lvl_embed(self.lvl_1L[:, bg:ed]) + self.pos_1LC[:, bg:ed]

    def start_tokens(self, cond: torch.Tensor) -> torch.Tensor:
        return cond[:, None] + self.pos_start + self.lvl_pos(0)

    def embed_scale(self, si: int, x: torch.Tensor) -> torch.Tensor:
        """Accumulated-feature input of scale ``si`` >= 1 [B, pn^2, Cvae] -> tokens."""
        return self.word_embed(x) + self.lvl_pos(si)

    def target_mask(self, upto: int | None = None, device=None) -> torch.Tensor:
        """Bool [Lt, L + Lt] (True = may attend) for target tokens of scales < ``upto``."""
        ed = self.begin_ends[(upto or self.config.num_scales) - 1][1]
        lvl = self.lvl_1L[0, :ed]
        causal = lvl[None, :] <= lvl[:, None]
        return torch.cat((torch.ones(ed, self.config.prefix_len, dtype=torch.bool, device=lvl.device), causal), 1)

    # ------------------------------------------------------------------ running the blocks
    def encode_prefix(self, prefix: torch.Tensor, cond_p: torch.Tensor) -> list[KV]:
        """Keys/values of the prefix in every block (it attends only to itself)."""
        kvs, x = [], prefix
        for i, b in enumerate(self.blocks):
            x, kv = b(x, b.modulation(cond_p), kv_only=i == len(self.blocks) - 1)
            kvs.append(kv)
        return kvs

    def modulations(self, cond: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        """Every block's AdaLN modulation of ``cond``: pass it to ``run`` for all steps of one view."""
        return [b.modulation(cond) for b in self.blocks]

    def run(self, x: torch.Tensor, mods: list[tuple], past: list[KV] | list[KVCache],
            mask=None) -> tuple[torch.Tensor, list]:
        """Target tokens ``x`` through all blocks, attending to ``past`` (prefix [+ earlier scales]);
        ``mods``: the condition's ``modulations``."""
        new = []
        for b, mod, kv in zip(self.blocks, mods, past):
            x, kv = b(x, mod, kv, mask)
            new.append(kv)
        return x, new

    def logits(self, h: torch.Tensor, src_idx: torch.Tensor | None = None, start: int = 0,
               use_copy: torch.Tensor | None = None, guide_idx: torch.Tensor | None = None,
               use_guide: torch.Tensor | None = None) -> torch.Tensor:
        """Head logits [B, T, V] of target tokens ``start .. start+T``. With the copy gate and
        ``src_idx`` [B, L] (the source's token indices), each token's gate value is added to
        the logit of the source token at the same index; ``use_copy`` [B] bool switches it off
        for rows without a source (the unconditional branch). ``guide_idx`` / ``use_guide``: the
        same for the guide gate and the guide's tokens."""
        out = self.head(h).float()
        for gate, idx, use in ((self.copy_gate, src_idx, use_copy),
                               (self.guide_gate, guide_idx, use_guide)):
            if gate is None or idx is None:
                continue
            g = gate(h).float()
            if use is not None:
                g = g * use.to(g.dtype)[:, None, None]
            out = out.scatter_add(-1, idx[:, start:start + h.shape[1]].long()[..., None], g)
        return out

    def forward(self, emb: torch.Tensor, rel_pose: torch.Tensor, src_codes: torch.Tensor, x_tf: torch.Tensor,
                drop: torch.Tensor | None = None, targets_per_source: int = 1,
                src_idx: torch.Tensor | None = None, scales: int | None = None,
                guide_idx: torch.Tensor | None = None, guide_codes: torch.Tensor | None = None,
                guide_off: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced logits [B, L, V] for B targets.

        emb [Bs,E] image embedding and src_codes [Bs,L,Cvae] source codebook vectors, one per
        source; rel_pose [B,4] and x_tf [B, L - first_l, Cvae] (``tok.teacher_forcing_inputs``)
        one per target, where B = Bs * ``targets_per_source`` and each source's targets are
        consecutive. With prefix_cond='source' the prefix depends on the source only, so it is
        run once per source and shared by its targets (training's costliest part, saved k-1
        times). drop [Bs] bool: which sources (with all their targets) get the unconditional
        branch (global condition AND prefix nulled); in training mode it defaults to
        Bernoulli(cond_drop_rate), so CFG's branch is trained. src_idx [Bs, L]: the source's
        token indices, needed by the copy gate (dropped sources do not copy). ``scales``: only
        the first this many target scales (logits [B, T, V], T their token count); the forward
        stops there, so coarse-scale training costs a fraction of a full step. A guide model
        takes ``guide_idx`` [B, L] and ``guide_codes`` [B, L, Cvae], one per target; ``guide_off``
        [B] bool nulls the guide alone (training default: Bernoulli(guide_drop_rate)); a dropped
        source's targets have no guide either.
        """
        k, B = int(targets_per_source), rel_pose.shape[0]
        Bs = emb.shape[0]
        if k < 1 or Bs * k != B or src_codes.shape[0] != Bs or x_tf.shape[0] != B:
            raise ValueError(f"{Bs} sources x {k} targets per source != {B} target poses / {x_tf.shape[0]} inputs "
                             f"({src_codes.shape[0]} source code sets)")
        if k > 1 and self.config.prefix_cond == "full":
            raise ValueError("prefix_cond='full' conditions the prefix on each target: it cannot be shared")
        if self.copy_gate is not None and (src_idx is None or tuple(src_idx.shape) != (Bs, self.config.num_tokens)):
            raise ValueError(f"copy_gate needs src_idx [{Bs}, {self.config.num_tokens}] (the source's token indices), "
                             f"got {None if src_idx is None else tuple(src_idx.shape)}")
        L = self.config.num_tokens
        if self.config.guide and (guide_idx is None or guide_codes is None or tuple(guide_idx.shape) != (B, L)
                                  or tuple(guide_codes.shape[:2]) != (B, L)):
            raise ValueError(f"a guide model needs guide_idx [{B}, {L}] and guide_codes [{B}, {L}, Cvae], got "
                             f"{None if guide_idx is None else tuple(guide_idx.shape)} / "
                             f"{None if guide_codes is None else tuple(guide_codes.shape)}")
        n_scales = self.config.num_scales if scales is None else int(scales)
        if not 1 <= n_scales <= self.config.num_scales:
            raise ValueError(f"scales must be in 1..{self.config.num_scales}, got {scales!r}")
        T = self.begin_ends[n_scales - 1][1]
        if drop is None:
            drop = (torch.rand(Bs, device=emb.device) < self.config.cond_drop_rate) if self.training \
                else torch.zeros(Bs, dtype=torch.bool, device=emb.device)
        ds = drop[:, None]
        d = ds.repeat_interleave(k, 0)
        cond = torch.where(d, self.null_condition(B), self.condition(emb.repeat_interleave(k, 0), rel_pose))
        cond_p = cond if self.config.prefix_cond == "full" else \
            torch.where(ds, self.null_condition(Bs), self.source_condition(emb))
        prefix = torch.where(ds[:, :, None], self.null_prefix(Bs), self.embed_prefix(src_codes))
        kv = self.encode_prefix(prefix, cond_p)
        if k > 1:
            kv = [(pk.repeat_interleave(k, 0), pv.repeat_interleave(k, 0)) for pk, pv in kv]
        use_guide = None
        if self.config.guide:
            if guide_off is None:
                guide_off = (torch.rand(B, device=emb.device) < self.config.guide_drop_rate) if self.training \
                    else torch.zeros(B, dtype=torch.bool, device=emb.device)
            off = guide_off | d[:, 0]
            gkv = self.encode_guide(guide_codes.to(prefix.dtype), cond, off)
            kv = cat_kv_time(kv, gkv)
            use_guide = ~off
        x = torch.cat((self.start_tokens(cond), self.word_embed(x_tf[:, :T - self.first_l])
                       + self.lvl_embed(self.lvl_1L[:, self.first_l:T]) + self.pos_1LC[:, self.first_l:T]), dim=1)
        h, _ = self.run(x, self.modulations(cond), kv, self.target_mask(n_scales))
        return self.logits(h, None if src_idx is None else src_idx.repeat_interleave(k, 0), 0, ~d[:, 0],
                           guide_idx, use_guide)

    def param_groups(self, lr: float, weight_decay: float, pose_lr_mult: float = 10.0) -> list[dict]:
        """AdamW groups: no decay on norms/biases/embeddings; the pose path at ``pose_lr_mult`` x lr."""
        pose, decay, no_decay = [], [], []
        for n, p in self.named_parameters():
            if not p.requires_grad:
                continue
            if n.startswith("pose_embed"):
                pose.append(p)
            elif p.dim() < 2 or "pos_" in n or "lvl_embed" in n or n in ("null_emb", "null_token") or n.endswith("scale_mul_1H11"):
                no_decay.append(p)
            else:
                decay.append(p)
        return [dict(params=decay, lr=lr, weight_decay=weight_decay, name="decay"),
                dict(params=no_decay, lr=lr, weight_decay=0.0, name="no_decay"),
                dict(params=pose, lr=lr * pose_lr_mult, weight_decay=0.0, name="pose", lr_mult=pose_lr_mult)]
