"""TripoSR's published state dict (``model.ckpt``, names from its ``tsr`` package and HF
transformers' ``ViTModel``) -> ``TripoSRModel`` tensors, checked name by name and shape by shape.

Sizes come from the shapes; what shapes cannot say (attention heads, image size, the renderer's
box and density bias) from the published ``config.yaml`` when it is given, else its defaults
(heads of 64 channels). The ViT's position embedding, stored for a 14x14 grid, is resampled once
here to the input's grid the way transformers 4.35 (TripoSR's pin) does it at every call
(``interpolate_pos_encoding``: bicubic with scale factor (grid + 0.1) / 14), so our ViT needs
no interpolation at run time and matches TripoSR exactly. The pooler is unused and dropped.
Nothing here opens a file: ``core.weights`` reads it (safely) and hands the dict in.
"""
from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F

from core.checkpoint import CheckpointError, unwrap_state_dict
from core.recon.triposr_config import TripoSRConfig

VIT = "image_tokenizer.model."
DROPPED = (VIT + "pooler.dense.weight", VIT + "pooler.dense.bias")
_WRAPPERS = ("state_dict", "model", "module", "ema")


def unwrap(obj, source: str) -> dict[str, torch.Tensor]:
    sd = unwrap_state_dict(obj, "tokenizer.embeddings", _WRAPPERS, source, "a TripoSR", depth=3)
    if "tokenizer.embeddings" not in sd or VIT + "embeddings.cls_token" not in sd:
        raise CheckpointError(f"{source}: no tokenizer.embeddings / {VIT}embeddings.cls_token: not a TripoSR checkpoint")
    return sd


def _count(sd, pattern: str) -> int:
    return 1 + max((int(m.group(1)) for k in sd if (m := re.match(pattern, k))), default=-1)


def infer_config(sd: dict[str, torch.Tensor], yaml_cfg: dict | None = None, source: str = "checkpoint") -> TripoSRConfig:
    y = yaml_cfg or {}
    bb, rd, dec = y.get("backbone", {}), y.get("renderer", {}), y.get("decoder", {})
    for key, want in (("feature_reduction", ("concat",)), ("density_activation", ("exp", "trunc_exp")),
                      ("color_activation", ("sigmoid",))):
        if key in rd and rd[key] not in want:
            raise CheckpointError(f"{source}: renderer.{key} {rd[key]!r} is not TripoSR's {want[0]!r}")
    if dec.get("activation", "silu") != "silu":
        raise CheckpointError(f"{source}: decoder.activation {dec['activation']!r} is not TripoSR's 'silu'")
    vit_dim = int(sd[VIT + "embeddings.cls_token"].shape[-1])
    inner, tri_dim = sd["backbone.proj_in.weight"].shape
    heads = int(bb.get("num_attention_heads", max(1, inner // 64)))
    n_lin = _count(sd, r"decoder\.layers\.(\d+)\.weight")
    tokens = sd["tokenizer.embeddings"]
    if tokens.ndim != 4 or tokens.shape[0] != 3 or tokens.shape[2] != tokens.shape[3]:
        raise CheckpointError(f"{source}: tokenizer.embeddings has shape {tuple(tokens.shape)}, expected (3, C, G, G)")
    try:
        return TripoSRConfig(
            image_size=int(y.get("cond_image_size", 512)),
            patch_size=int(sd[VIT + "embeddings.patch_embeddings.projection.weight"].shape[-1]),
            vit_dim=vit_dim, vit_depth=_count(sd, re.escape(VIT) + r"encoder\.layer\.(\d+)\."),
            vit_heads=max(1, vit_dim // 64), tri_tokens=int(tokens.shape[-1]), tri_dim=int(tri_dim),
            heads=heads, head_dim=int(inner) // heads, depth=_count(sd, r"backbone\.transformer_blocks\.(\d+)\."),
            norm_groups=min(32, int(tri_dim)),
            plane_channels=int(sd["post_processor.upsample.weight"].shape[1]),
            mlp_hidden=int(sd["decoder.layers.0.weight"].shape[0]), mlp_layers=(n_lin - 1) // 2,
            box_radius=float(rd.get("radius", 0.87)), density_bias=float(rd.get("density_bias", -1.0)),
            n_samples=int(rd.get("num_samples_per_ray", 128)))
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{source}: not TripoSR's layout ({e})") from None


def resample_pos_embed(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """[1, 1+n, D] at sqrt(n)^2 patches -> [1, 1+grid^2, D], as transformers 4.35's ViT does."""
    n = pos.shape[1] - 1
    g0 = int(math.isqrt(n))
    if g0 * g0 != n:
        raise ValueError(f"position embedding of {n} patches is not a square grid")
    if g0 == grid:
        return pos
    cls, patch = pos[:, :1], pos[:, 1:].reshape(1, g0, g0, -1).permute(0, 3, 1, 2).float()
    s = (grid + 0.1) / g0
    patch = F.interpolate(patch, scale_factor=(s, s), mode="bicubic", align_corners=False)
    if patch.shape[-2:] != (grid, grid):
        raise ValueError(f"resampled position grid {tuple(patch.shape[-2:])} is not {grid}x{grid}")
    return torch.cat([cls, patch.permute(0, 2, 3, 1).reshape(1, grid * grid, -1).to(pos.dtype)], dim=1)


def rename(sd: dict[str, torch.Tensor], cfg: TripoSRConfig) -> dict[str, torch.Tensor]:
    """TripoSR names -> ours (the ViT's q/k/v concatenated into timm's qkv)."""
    out, used = {}, set(DROPPED)

    def take(theirs: str, ours: str):
        if theirs in sd:
            out[ours] = sd[theirs]
            used.add(theirs)

    E = VIT + "embeddings."
    take(E + "cls_token", "image_encoder.cls_token")
    take(E + "patch_embeddings.projection.weight", "image_encoder.patch_embed.proj.weight")
    take(E + "patch_embeddings.projection.bias", "image_encoder.patch_embed.proj.bias")
    if E + "position_embeddings" in sd:
        out["image_encoder.pos_embed"] = resample_pos_embed(sd[E + "position_embeddings"], cfg.image_size // cfg.patch_size)
        used.add(E + "position_embeddings")
    for i in range(cfg.vit_depth):
        L, B = f"{VIT}encoder.layer.{i}.", f"image_encoder.blocks.{i}."
        qkv = [f"{L}attention.attention.{n}" for n in ("query", "key", "value")]
        for part in ("weight", "bias"):
            if all(f"{q}.{part}" in sd for q in qkv):
                out[f"{B}attn.qkv.{part}"] = torch.cat([sd[f"{q}.{part}"] for q in qkv])
                used.update(f"{q}.{part}" for q in qkv)
            for theirs, ours in (("attention.output.dense", "attn.proj"), ("layernorm_before", "norm1"),
                                 ("layernorm_after", "norm2"), ("intermediate.dense", "mlp.fc1"),
                                 ("output.dense", "mlp.fc2")):
                take(f"{L}{theirs}.{part}", f"{B}{ours}.{part}")
    for part in ("weight", "bias"):
        take(f"{VIT}layernorm.{part}", f"image_encoder.norm.{part}")
        take(f"backbone.norm.{part}", f"backbone.norm.{part}")
        take(f"backbone.proj_in.{part}", f"backbone.proj_in.{part}")
        take(f"backbone.proj_out.{part}", f"backbone.proj_out.{part}")
        take(f"post_processor.upsample.{part}", f"upsample.{part}")
    take("tokenizer.embeddings", "triplane_tokens")
    for i in range(cfg.depth):
        T, B = f"backbone.transformer_blocks.{i}.", f"backbone.blocks.{i}."
        for theirs, ours in (("attn1", "self_attn"), ("attn2", "cross_attn")):
            for n in ("q", "k", "v"):
                take(f"{T}{theirs}.to_{n}.weight", f"{B}{ours}.{n}.weight")
            take(f"{T}{theirs}.to_out.0.weight", f"{B}{ours}.out.weight")
            take(f"{T}{theirs}.to_out.0.bias", f"{B}{ours}.out.bias")
        for part in ("weight", "bias"):
            for n in ("norm1", "norm2", "norm3"):
                take(f"{T}{n}.{part}", f"{B}{n}.{part}")
            take(f"{T}ff.net.0.proj.{part}", f"{B}ff.proj.{part}")
            take(f"{T}ff.net.2.{part}", f"{B}ff.out.{part}")
    for k in sd:
        if m := re.fullmatch(r"decoder\.layers\.(\d+)\.(weight|bias)", k):
            take(k, f"field_mlp.{m.group(1)}.{m.group(2)}")
    out["__unused__"] = [k for k in sd if k not in used]  # reported by convert_state_dict
    return out


def convert_state_dict(obj, yaml_cfg: dict | None = None, source: str = "checkpoint"):
    """-> (TripoSRConfig, our state dict), or CheckpointError naming the file and each mismatch."""
    from core.recon.triposr import TripoSRModel
    sd = unwrap(obj, source)
    cfg = infer_config(sd, yaml_cfg, source)
    try:
        ours = rename(sd, cfg)
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from None
    unused = ours.pop("__unused__")
    with torch.device("meta"):
        want = {k: tuple(v.shape) for k, v in TripoSRModel(cfg).state_dict().items()}
    missing = sorted(set(want) - set(ours))
    bad = [f"{k}: {tuple(ours[k].shape)} vs {want[k]}" for k in want if k in ours and tuple(ours[k].shape) != want[k]]
    nonfloat = [k for k in want if k in ours and not ours[k].is_floating_point()]
    if missing or unused or bad or nonfloat:
        raise CheckpointError(f"{source}: not TripoSR's layout: missing {missing[:6]} ({len(missing)}), unexpected "
                              f"{unused[:6]} ({len(unused)}), shape {bad[:6]}, non-float {nonfloat[:4]}")
    return cfg, {k: ours[k].detach().float().contiguous() for k in want}
