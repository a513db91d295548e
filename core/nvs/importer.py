"""Convert an official ArchonView checkpoint (+ VAR's tokenizer) into Vantage checkpoint folders.

    python -m core.nvs.importer archonview_d16.safetensors vae_ch160v4096z32.safetensors checkpoints/archonview-d16 \
        [--clip-weights ViT-L-14.safetensors]

writes ``OUT/`` (NVS: config.json + model.safetensors) and ``OUT/tokenizer/`` (via
``core.tokenizer.importer``); ``NVSPipeline.from_pretrained(OUT, clip_weights=...)`` then
runs the real model. Depth, width, heads, vocabulary and token count are read from the
state dict. Our parameter names are ArchonView's; its buffers (``lvl_1L``,
``attn_bias_for_masking``, ``zero_k_bias``) are dropped. ArchonView's unconditional
image embedding is CLIP's text embedding of "" (not stored in its checkpoint): it is
computed here when CLIP weights are given, else left at zero (CFG then differs slightly).
A ``.pth`` is a pickle and is refused: convert it to ``.safetensors`` first (the error says how).
"""
from __future__ import annotations

import argparse
import re
import sys
import warnings
from pathlib import Path

import torch

from core.checkpoint import CheckpointError, read_third_party, unwrap_state_dict
from core.nvs.config import NVSConfig
from core.nvs.model import NVSTransformer

DROPPED = ("lvl_1L", "attn_bias_for_masking")
_WRAPPERS = ("trainer", "var_wo_ddp", "var", "model", "state_dict", "module")


def read_archonview(path: str | Path) -> dict[str, torch.Tensor]:
    return archonview_state_dict(read_third_party(path), source=str(path))


def archonview_state_dict(obj, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """ArchonView's model tensors out of what its training saved (``{'trainer': {'var_wo_ddp': state_dict,
    ...}, 'args': ...}``) or a bare state dict."""
    sd = unwrap_state_dict(obj, "pos_1LC", _WRAPPERS, source, "an ArchonView")
    if "pos_1LC" not in sd or "xpos_1LC" not in sd:
        raise CheckpointError(f"{source}: no pos_1LC/xpos_1LC: not an ArchonView (VAR with source prefix) checkpoint")
    return sd


def infer_config(sd: dict[str, torch.Tensor], resolution: int = 256, patch_nums=None, source="checkpoint") -> NVSConfig:
    """Shapes -> NVSConfig (the published family is width = 64 x depth, heads = depth)."""
    depth = 1 + max((int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
    if depth < 1:
        raise CheckpointError(f"{source}: no transformer blocks (blocks.N.*) found")
    C, Cvae = sd["word_embed.weight"].shape
    heads = sd["blocks.0.attn.scale_mul_1H11"].shape[1] if "blocks.0.attn.scale_mul_1H11" in sd else max(1, C // 64)
    L = sd["pos_1LC"].shape[1]
    patch_nums = tuple(patch_nums or (1, 2, 3, 4, 5, 6, 8, 10, 13, 16))
    if sum(p * p for p in patch_nums) != L:
        raise CheckpointError(f"{source}: pos_1LC has {L} tokens, patch_nums {patch_nums} give "
                              f"{sum(p * p for p in patch_nums)}; pass the right --patch-nums")
    mlp = sd["blocks.0.ffn.fc1.weight"].shape[0] / C
    return NVSConfig.published(depth, width=int(C), num_heads=int(heads), vocab_size=int(sd["head.weight"].shape[0]),
                               latent_dim=int(Cvae), embed_dim=int(sd["emb_linear.weight"].shape[1]),
                               attn_l2_norm="blocks.0.attn.scale_mul_1H11" in sd, mlp_ratio=mlp,
                               patch_nums=patch_nums, resolution=resolution)


def convert(sd: dict[str, torch.Tensor], cfg: NVSConfig, null_emb: torch.Tensor | None = None,
            source: str = "checkpoint") -> NVSTransformer:
    sd = {k: v for k, v in sd.items() if k not in DROPPED and not k.endswith(".attn.zero_k_bias")}
    model = NVSTransformer(cfg)
    want = model.state_dict()
    if null_emb is None:
        warnings.warn("no CLIP weights: ArchonView's unconditional embedding (CLIP text of '') is set to zero")
        null_emb = torch.zeros(cfg.embed_dim)
    sd["null_emb"] = null_emb.reshape(-1)
    missing = sorted(set(want) - set(sd))
    unexpected = sorted(set(sd) - set(want))
    bad = [f"{k}: {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in want.items()
           if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    if missing or unexpected or bad:
        raise CheckpointError(f"{source}: not ArchonView's layout: missing {missing[:6]} unexpected {unexpected[:6]} "
                              f"shape {bad[:6]}")
    model.load_state_dict({k: sd[k].float() for k in want}, strict=True)
    return model


def import_archonview(ckpt: str | Path, vae: str | Path | None, out: str | Path, clip_weights=None,
                      tokenizer_config=None, patch_nums=None) -> Path:
    """Write OUT (NVS) and OUT/tokenizer (VAR tokenizer, when ``vae`` is given)."""
    from core.nvs.pipeline import tokenizer_fingerprint
    from core.tokenizer import MultiScaleVQVAE
    from core.tokenizer.importer import import_var_checkpoint
    out = Path(out)
    sd = read_archonview(ckpt)
    tok_dir = out / "tokenizer"
    if vae is not None:
        import_var_checkpoint(vae, tok_dir, tokenizer_config)
    tok = MultiScaleVQVAE.from_pretrained(tok_dir) if (tok_dir / "config.json").is_file() else None
    cfg = infer_config(sd, tok.config.resolution if tok else 256, patch_nums or (tok.config.patch_nums if tok else None),
                       source=str(ckpt))
    null = None
    if clip_weights:
        from core.nvs.embedders import OpenCLIPEmbedder
        cfg.clip_weights = str(Path(clip_weights).resolve())
        null = OpenCLIPEmbedder(cfg.clip_model, clip_weights).null_text_embedding()
    if tok is not None:
        cfg.tokenizer_hash = tokenizer_fingerprint(tok)
        if (tok.config.vocab_size, tok.config.latent_dim) != (cfg.vocab_size, cfg.latent_dim):
            raise CheckpointError(f"{vae}: tokenizer vocab/latent ({tok.config.vocab_size}, {tok.config.latent_dim}) "
                                  f"do not match the NVS head/word_embed ({cfg.vocab_size}, {cfg.latent_dim})")
    model = convert(sd, cfg, null, source=str(ckpt))
    model.save_pretrained(out)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m core.nvs.importer", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="ArchonView checkpoint (.pth or .safetensors)")
    ap.add_argument("vae", help="VAR's vae_ch160v4096z32.pth (or '-' to skip the tokenizer)")
    ap.add_argument("out", help="output folder (NVS; tokenizer goes to OUT/tokenizer)")
    ap.add_argument("--clip-weights", default=None, help="local open_clip ViT-L/14 weights file")
    a = ap.parse_args(argv)
    try:
        folder = import_archonview(a.checkpoint, None if a.vae == "-" else a.vae, a.out, a.clip_weights)
    except (CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
