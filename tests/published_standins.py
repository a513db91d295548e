"""Generated stand-ins of the published weight files, at tiny sizes: the names, nesting and file
layout of the real ones (read from the projects' public code), random values. Used by
tests/test_weights.py and tests/test_triposr.py."""
from __future__ import annotations

import torch

# TripoSR's config.yaml at a tiny size (the published one: cond_image_size 512, heads 16 x 64,
# 16 layers, 1024 channels, 32x32 tokens, 40 plane channels, MLP 64 x 9 SiLU, radius 0.87)
TINY_TRIPOSR_YAML = """\
cond_image_size: 64
image_tokenizer_cls: tsr.models.tokenizers.image.DINOSingleImageTokenizer
image_tokenizer:
  pretrained_model_name_or_path: "facebook/dino-vitb16"
tokenizer_cls: tsr.models.tokenizers.triplane.Triplane1DTokenizer
tokenizer:
  plane_size: 4
  num_channels: 32
backbone_cls: tsr.models.transformer.transformer_1d.Transformer1D
backbone:
  in_channels: ${tokenizer.num_channels}
  num_attention_heads: 2
  attention_head_dim: 16
  num_layers: 2
  cross_attention_dim: 64
post_processor_cls: tsr.models.network_utils.TriplaneUpsampleNetwork
post_processor:
  in_channels: ${tokenizer.num_channels}
  out_channels: 8
decoder_cls: tsr.models.network_utils.NeRFMLP
decoder:
  in_channels: 24
  n_neurons: 16
  n_hidden_layers: 3
  activation: silu
renderer_cls: tsr.models.nerf_renderer.TriplaneNeRFRenderer
renderer:
  radius: 0.87
  feature_reduction: concat
  density_activation: exp
  density_bias: -1.0
  num_samples_per_ray: 16
"""


def triposr_state_dict(vit_dim=64, vit_depth=2, patch=16, grid0=14, C=32, G=4, inner=32, depth=2, Cp=8,
                       hidden=16, n_hidden=3, seed=0) -> dict[str, torch.Tensor]:
    """TripoSR's ``model.ckpt`` names (tsr + transformers 4.35 ViTModel with pooler) at a tiny size."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * 0.05  # noqa: E731
    one = lambda n: 1 + r(n)  # noqa: E731
    V, sd = "image_tokenizer.model.", {}
    sd[V + "embeddings.cls_token"] = r(1, 1, vit_dim)
    sd[V + "embeddings.position_embeddings"] = r(1, 1 + grid0 * grid0, vit_dim)
    sd[V + "embeddings.patch_embeddings.projection.weight"] = r(vit_dim, 3, patch, patch)
    sd[V + "embeddings.patch_embeddings.projection.bias"] = r(vit_dim)
    for i in range(vit_depth):
        L = f"{V}encoder.layer.{i}."
        for n in ("query", "key", "value"):
            sd[f"{L}attention.attention.{n}.weight"], sd[f"{L}attention.attention.{n}.bias"] = r(vit_dim, vit_dim), r(vit_dim)
        sd[L + "attention.output.dense.weight"], sd[L + "attention.output.dense.bias"] = r(vit_dim, vit_dim), r(vit_dim)
        sd[L + "intermediate.dense.weight"], sd[L + "intermediate.dense.bias"] = r(4 * vit_dim, vit_dim), r(4 * vit_dim)
        sd[L + "output.dense.weight"], sd[L + "output.dense.bias"] = r(vit_dim, 4 * vit_dim), r(vit_dim)
        for n in ("layernorm_before", "layernorm_after"):
            sd[f"{L}{n}.weight"], sd[f"{L}{n}.bias"] = one(vit_dim), r(vit_dim)
    sd[V + "layernorm.weight"], sd[V + "layernorm.bias"] = one(vit_dim), r(vit_dim)
    sd[V + "pooler.dense.weight"], sd[V + "pooler.dense.bias"] = r(vit_dim, vit_dim), r(vit_dim)
    sd["tokenizer.embeddings"] = torch.randn(3, C, G, G, generator=g) / C ** 0.5
    sd["backbone.norm.weight"], sd["backbone.norm.bias"] = one(C), r(C)
    sd["backbone.proj_in.weight"], sd["backbone.proj_in.bias"] = r(inner, C), r(inner)
    for i in range(depth):
        T = f"backbone.transformer_blocks.{i}."
        for n in ("norm1", "norm2", "norm3"):
            sd[f"{T}{n}.weight"], sd[f"{T}{n}.bias"] = one(inner), r(inner)
        for a, kv in (("attn1", inner), ("attn2", vit_dim)):
            sd[f"{T}{a}.to_q.weight"] = r(inner, inner)
            sd[f"{T}{a}.to_k.weight"], sd[f"{T}{a}.to_v.weight"] = r(inner, kv), r(inner, kv)
            sd[f"{T}{a}.to_out.0.weight"], sd[f"{T}{a}.to_out.0.bias"] = r(inner, inner), r(inner)
        sd[T + "ff.net.0.proj.weight"], sd[T + "ff.net.0.proj.bias"] = r(8 * inner, inner), r(8 * inner)
        sd[T + "ff.net.2.weight"], sd[T + "ff.net.2.bias"] = r(inner, 4 * inner), r(inner)
    sd["backbone.proj_out.weight"], sd["backbone.proj_out.bias"] = r(C, inner), r(C)
    sd["post_processor.upsample.weight"], sd["post_processor.upsample.bias"] = r(C, Cp, 2, 2) * 4, r(Cp)
    dims = [3 * Cp] + [hidden] * n_hidden + [4]
    for j, (a, b) in enumerate(zip(dims, dims[1:])):
        sd[f"decoder.layers.{2 * j}.weight"] = torch.randn(b, a, generator=g) * (2 / a) ** 0.5
        sd[f"decoder.layers.{2 * j}.bias"] = r(b)
    return sd


def archonview_checkpoint(sd: dict[str, torch.Tensor], vae_sd: dict[str, torch.Tensor]) -> dict:
    """What ArchonView's train.py saves: {'epoch', 'iter', 'trainer': {'config', 'var_wo_ddp',
    'vae_local', 'var_opt'}, 'args'} (plain dicts, lists, numbers and tensors)."""
    opt = {"optimizer": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(2)}},
                         "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.95), "params": [0]}]}}
    return {"epoch": 3, "iter": 0,
            "trainer": {"config": {"patch_nums": (1, 2, 3), "resos": (16, 32, 48), "label_smooth": 0.0, "prog_it": 0,
                                   "last_prog_si": -1, "first_prog": True},
                        "var_wo_ddp": sd, "vae_local": vae_sd, "var_opt": opt},
            "args": {"depth": 2, "tblr": 8e-5, "data_path": "/data", "fp16": 1, "patch_nums": "1_2_3"}}
