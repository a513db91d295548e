"""TripoSR-compatible reconstruction: one photo -> triplane NeRF, behind ReconPipeline / TriplaneScene.

Five stages, as TripoSR names them: image tokenizer (DINO ViT-B/16, timm's VisionTransformer),
learned triplane tokens, a transformer over those tokens with cross-attention to the image
tokens, a 2x transposed-conv upsampler to three feature planes, and a NeRF MLP on the
concatenated plane features. ``core.recon.triposr_importer`` maps the published weights' names
onto these modules.

Frames. TripoSR's world is right-handed, +Z up, and the photo is seen by a camera on its +X axis
looking at the origin with no roll (its renders put azimuth 0 there, image right = +Y), the
object roughly gravity-aligned (the model guesses the elevation; there is no camera input).
That is this project's frame with the photo's camera at azimuth 0 (DESIGN.md), i.e. the
*canonical* frame ``ReconPipeline`` already rotates into: ``TRIPOSR_FROM_CANONICAL`` is the
identity, and a photo at azimuth ``a`` gives the scene a rotation about +Z by ``-a``.
"""
from __future__ import annotations

import math
from functools import partial

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from core.checkpoint import Pretrained
from core.recon.model import TriplaneState
from core.recon.triposr_config import TripoSRConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# p_triposr = TRIPOSR_FROM_CANONICAL @ p_canonical; pinned by tests/test_triposr.py
TRIPOSR_FROM_CANONICAL = np.eye(3, dtype=np.float32)


def triposr_camera(elevation_deg: float, azimuth_deg: float, distance: float) -> np.ndarray:
    """TripoSR's render camera (its ``get_spherical_cameras`` geometry) as a 3x4 camera-to-world
    [right | up | back | centre]; the tests compare it with ``core.cameras`` to pin the frame."""
    el, az = math.radians(elevation_deg), math.radians(azimuth_deg)
    centre = distance * np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
    look = -centre / np.linalg.norm(centre)
    right = np.cross(look, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, look)
    return np.stack([right, up, -look, centre], axis=1)


def grey_background(x: torch.Tensor, grey: float, tol: float = 4 / 255) -> torch.Tensor:
    """[B,3,S,S] in [0,1] on white -> the same on ``grey``: near-white pixels connected to the
    border are background (a white object part enclosed by the object stays white)."""
    from scipy import ndimage
    out = x.clone()
    white = ((1 - x).amax(1) <= tol).cpu().numpy()
    for b in range(x.shape[0]):
        labels, _ = ndimage.label(white[b])
        border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        bg = torch.from_numpy(np.isin(labels, border[border > 0])).to(x.device)
        out[b, :, bg] = grey
    return out


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v projections without bias (diffusers' layout)."""

    def __init__(self, dim: int, heads: int, head_dim: int, ctx_dim: int | None = None):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.q = nn.Linear(dim, inner, bias=False)
        self.k = nn.Linear(ctx_dim or dim, inner, bias=False)
        self.v = nn.Linear(ctx_dim or dim, inner, bias=False)
        self.out = nn.Linear(inner, dim)

    def forward(self, x_BNC: torch.Tensor, ctx_BMC: torch.Tensor | None = None) -> torch.Tensor:
        ctx_BMC = x_BNC if ctx_BMC is None else ctx_BMC
        B, N, _ = x_BNC.shape
        q, k, v = (t.view(B, t.shape[1], self.heads, -1).transpose(1, 2)
                   for t in (self.q(x_BNC), self.k(ctx_BMC), self.v(ctx_BMC)))
        return self.out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, -1))


class GEGLUFeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.proj = nn.Linear(dim, 2 * mult * dim)
        self.out = nn.Linear(mult * dim, dim)

    def forward(self, x):
        h, gate = self.proj(x).chunk(2, dim=-1)
        return self.out(h * F.gelu(gate))


class TriplaneBlock(nn.Module):
    """Pre-LN: self-attention among plane tokens, cross-attention to image tokens, GEGLU MLP."""

    def __init__(self, dim: int, heads: int, head_dim: int, ctx_dim: int):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn = Attention(dim, heads, head_dim)
        self.cross_attn = Attention(dim, heads, head_dim, ctx_dim)
        self.ff = GEGLUFeedForward(dim)

    def forward(self, x, ctx):
        x = x + self.self_attn(self.norm1(x))
        x = x + self.cross_attn(self.norm2(x), ctx)
        return x + self.ff(self.norm3(x))


class TriplaneBackbone(nn.Module):
    """Tokens [B, C, N] -> GroupNorm -> proj_in -> blocks -> proj_out, plus the input (residual)."""

    def __init__(self, c: TripoSRConfig):
        super().__init__()
        inner = c.heads * c.head_dim
        self.norm = nn.GroupNorm(c.norm_groups, c.tri_dim, eps=1e-6)
        self.proj_in = nn.Linear(c.tri_dim, inner)
        self.blocks = nn.ModuleList(TriplaneBlock(inner, c.heads, c.head_dim, c.vit_dim) for _ in range(c.depth))
        self.proj_out = nn.Linear(inner, c.tri_dim)

    def forward(self, tokens_BCN: torch.Tensor, ctx_BMD: torch.Tensor) -> torch.Tensor:
        x = self.proj_in(self.norm(tokens_BCN).transpose(1, 2))
        for blk in self.blocks:
            x = blk(x, ctx_BMD)
        return self.proj_out(x).transpose(1, 2) + tokens_BCN


class TripoSRModel(nn.Module, Pretrained):
    config_class = TripoSRConfig  # from_pretrained / save_pretrained: core.checkpoint.Pretrained

    def __init__(self, config: TripoSRConfig | None = None):
        super().__init__()
        from core.compat import ensure_torchvision
        ensure_torchvision()  # timm imports torchvision
        from timm.models.vision_transformer import VisionTransformer
        self.config = c = config or TripoSRConfig()
        # 1. image tokenizer: DINO ViT-B/16; pos_embed stored at the input's grid (the importer resamples it)
        self.image_encoder = VisionTransformer(
            img_size=c.image_size, patch_size=c.patch_size, embed_dim=c.vit_dim, depth=c.vit_depth,
            num_heads=c.vit_heads, mlp_ratio=4.0, qkv_bias=True, num_classes=0, global_pool="",
            norm_layer=partial(nn.LayerNorm, eps=c.vit_norm_eps), weight_init="skip")
        # 2. learned triplane tokens [3, C, G, G]
        self.triplane_tokens = nn.Parameter(torch.randn(3, c.tri_dim, c.tri_tokens, c.tri_tokens) / math.sqrt(c.tri_dim))
        # 3. transformer over the tokens, cross-attending to the image tokens
        self.backbone = TriplaneBackbone(c)
        # 4. upsampler to feature planes
        self.upsample = nn.ConvTranspose2d(c.tri_dim, c.plane_channels, 2, 2)
        # 5. NeRF MLP: concatenated plane features -> density, rgb
        layers, d = [], 3 * c.plane_channels
        for _ in range(c.mlp_layers):
            layers += [nn.Linear(d, c.mlp_hidden), nn.SiLU()]
            d = c.mlp_hidden
        self.field_mlp = nn.Sequential(*layers, nn.Linear(d, 4))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    # -- stages ---------------------------------------------------------------------------

    def image_tokens(self, images_01: torch.Tensor) -> torch.Tensor:
        """[B,3,S,S] in [0,1] on TripoSR's grey background -> [B, 1+P, vit_dim] (CLS first)."""
        return self.image_encoder.forward_features((images_01 - self.mean) / self.std)

    def planes_from_tokens(self, ctx: torch.Tensor) -> torch.Tensor:
        """Image tokens -> triplanes [B, 3, Cp, 2G, 2G] (planes xy, xz, yz)."""
        B, c = ctx.shape[0], self.config
        tokens = self.triplane_tokens.permute(1, 0, 2, 3).reshape(1, c.tri_dim, -1).expand(B, -1, -1)  # C, (3 G G)
        x = self.backbone(tokens, ctx)                                  # [B, C, 3*G*G]
        x = x.view(B, c.tri_dim, 3, c.tri_tokens, c.tri_tokens).transpose(1, 2)
        planes = self.upsample(x.reshape(B * 3, c.tri_dim, c.tri_tokens, c.tri_tokens))
        return planes.view(B, 3, *planes.shape[1:])

    def forward(self, images: torch.Tensor, cams=None, rays=None) -> TriplaneState:
        """images [B,1,3,S,S] in [-1,1] on white (ReconPipeline's input; cameras unused: TripoSR has
        no camera input) -> TriplaneState in the canonical frame (photo's camera on +X)."""
        if images.shape[1] != 1:
            raise ValueError(f"TripoSR takes one view, got {images.shape[1]}")
        x = grey_background(((images[:, 0] + 1) / 2).clamp(0, 1), self.config.background)
        return TriplaneState(self.planes_from_tokens(self.image_tokens(x)))

    # -- field ------------------------------------------------------------------------

    def raw_field(self, planes: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
        """planes [B,3,C,R,R], points [B,N,3] in TripoSR's frame -> MLP output [B,N,4] (before activations)."""
        B, _, C, R, _ = planes.shape
        p = (pts / self.config.box_radius).to(planes.dtype)
        uv = torch.stack([p[..., [0, 1]], p[..., [0, 2]], p[..., [1, 2]]], dim=1)   # [B,3,N,2]
        f = F.grid_sample(planes.reshape(B * 3, C, R, R), uv.reshape(B * 3, 1, -1, 2), mode="bilinear",
                          padding_mode="zeros", align_corners=False)                # [B*3, C, 1, N]
        f = f.view(B, 3 * C, -1).transpose(1, 2)                                     # planes' channels concatenated
        return self.field_mlp(f)

    def query(self, state: TriplaneState, pts: torch.Tensor, with_rgb: bool = True):
        """Density [B,N] (per unit length, see ``TripoSRConfig.density_scale``) and colour [B,N,3] in
        [0,1] at canonical points; zero density outside the box (TripoSR never samples there)."""
        c = self.config
        h = self.raw_field(state.planes, pts).float()
        sigma = torch.exp((h[..., 0] + c.density_bias).clamp(max=80.0)) * c.density_scale
        sigma = torch.where((pts.abs() <= c.box_radius).all(-1), sigma, torch.zeros_like(sigma))
        return sigma, (torch.sigmoid(h[..., 1:4]) if with_rgb else None)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
