"""LRM-style reconstruction model: views + cameras -> triplane -> NeRF field.

Layout (OpenLRM/TripoSR, shrunk for a 2-core CPU):
  * a ViT trained from scratch encodes each input view; its patch embedding also sees the
    view's Plücker rays, and every block is AdaLN-modulated by that view's camera
    (12 extrinsic + 4 intrinsic numbers -> MLP), so tokens of several views can be
    concatenated and still know where they were seen from;
  * learned triplane tokens (3 x G x G) run through a transformer with self-attention and
    cross-attention to all image tokens;
  * transposed convolutions upsample the tokens to three feature planes;
  * a small MLP turns the concatenated plane features of a 3-D point into density and colour,
    with pixel-aligned features of the input views (from the ViT's patch grid, or with ``pixel_cnn`` a
    half-resolution CNN that can also predict each pixel's depth: ``pixel_depth``).

Everything is expressed in a *canonical* frame: the world rotated about +Z so that the
first input camera sits at azimuth 0. Cameras with no roll looking at the origin are
equivariant under that rotation, so the network never has to learn it; the scene keeps
the rotation and maps queries back (see ``canonical_rotation``).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from core import cameras
from core.checkpoint import Pretrained
from core.recon.config import ReconConfig


# ----------------------------------------------------------------------------- cameras

def canonical_rotation(w2c: np.ndarray) -> np.ndarray:
    """3x3 rotation about +Z taking world points to the canonical frame (first camera at azimuth 0)."""
    az, _, _ = cameras.spherical_from_pose(w2c)
    a = -math.radians(az)
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)


def to_canonical(w2c: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """World-to-camera of the same camera in the canonical frame (p_c = rot @ p_w)."""
    w2c = np.asarray(w2c, dtype=np.float32)
    return np.concatenate([w2c[:3, :3] @ rot.T, w2c[:3, 3:4]], axis=1).astype(np.float32)


def camera_features(w2c: np.ndarray, fov_deg: float) -> np.ndarray:
    """OpenLRM's 16 numbers: flattened 3x4 camera-to-world and normalised intrinsics."""
    w2c = np.asarray(w2c, dtype=np.float64)
    R, t = w2c[:3, :3], w2c[:3, 3]
    c2w = np.concatenate([R.T, (-R.T @ t)[:, None]], axis=1)
    f = 0.5 / math.tan(math.radians(fov_deg) / 2)  # focal length in units of image size
    return np.concatenate([c2w.reshape(-1), [f, f, 0.5, 0.5]]).astype(np.float32)


# ----------------------------------------------------------------------------- blocks

def _modulate(x, shift, scale):
    """AdaLN: the normalised input scaled by (1 + scale) and shifted."""
    return x * (1 + scale) + shift


class Attention(nn.Module):
    def __init__(self, dim, heads, kv_dim=None):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(kv_dim or dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, ctx=None):
        B, N, D = x.shape
        ctx = x if ctx is None else ctx
        q = self.q(x).view(B, N, self.heads, -1).transpose(1, 2)
        k, v = self.kv(ctx).view(B, ctx.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


def _mlp(dim, ratio=4):
    return nn.Sequential(nn.Linear(dim, dim * ratio), nn.GELU(), nn.Linear(dim * ratio, dim))


class EncoderBlock(nn.Module):
    """Pre-LN ViT block whose LayerNorms are modulated by the view's camera (AdaLN)."""

    def __init__(self, dim, heads, cam_dim):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False)
        self.mlp = _mlp(dim)
        self.ada = nn.Linear(cam_dim, 6 * dim)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, x, cam):
        # (shift, scale, gate) per sub-layer, as the NVS blocks name theirs; gates start at 1 (zero init)
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(cam).unsqueeze(1).chunk(6, dim=-1)
        x = x + (1 + gate1) * self.attn(_modulate(self.norm1(x), shift1, scale1))
        return x + (1 + gate2) * self.mlp(_modulate(self.norm2(x), shift2, scale2))


class TriplaneBlock(nn.Module):
    def __init__(self, dim, heads, ctx_dim):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn = Attention(dim, heads)
        self.cross_attn = Attention(dim, heads, kv_dim=ctx_dim)
        self.mlp = _mlp(dim)

    def forward(self, x, ctx):
        x = x + self.self_attn(self.norm1(x))
        x = x + self.cross_attn(self.norm2(x), ctx)
        return x + self.mlp(self.norm3(x))


class PixelCNN(nn.Module):
    """Pixel-aligned features at half the view's resolution (pixelNeRF, Splatter Image): a small CNN
    sees edges and local shading that an 8x8-pixel patch grid averages away, and the ViT's tokens,
    upsampled onto the same grid, add what the whole view says (global context)."""

    def __init__(self, in_ch: int, width: int, ctx_dim: int, out_ch: int):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_ch, width, 3, 1, 1), nn.GELU(),
                                  nn.Conv2d(width, width, 3, 2, 1), nn.GELU(),
                                  nn.Conv2d(width, width, 3, 1, 1), nn.GELU())
        self.ctx = nn.Conv2d(ctx_dim, width, 1)
        self.out = nn.Sequential(nn.Conv2d(width, width, 3, 1, 1), nn.GELU(), nn.Conv2d(width, out_ch, 1))

    def forward(self, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        """x [N, in_ch, S, S], ctx [N, ctx_dim, g, g] -> [N, out_ch, S/2, S/2]."""
        h = self.stem(x)
        return self.out(h + F.interpolate(self.ctx(ctx), size=h.shape[-2:], mode="bilinear", align_corners=False))


# ----------------------------------------------------------------------------- model

class TriplaneState(NamedTuple):
    """What the field needs about one batch of objects: the triplanes, and (pixel-aligned
    branch) the input views' feature maps, images and camera features."""
    planes: torch.Tensor                 # [B, 3, C, R, R]
    feat: torch.Tensor | None = None     # [B, V, Cp, g, g]
    images: torch.Tensor | None = None   # [B, V, 3, S, S] in [-1, 1]
    cams: torch.Tensor | None = None     # [B, V, 16]

    @property
    def device(self):
        return self.planes.device

    @property
    def dtype(self):
        return self.planes.dtype


class ReconModel(nn.Module, Pretrained):
    config_class = ReconConfig  # from_pretrained / save_pretrained: core.checkpoint.Pretrained

    def __init__(self, config: ReconConfig | None = None):
        super().__init__()
        self.config = c = config or ReconConfig()
        in_ch = 3 + (6 if c.plucker else 0)
        n_patches = (c.image_size // c.patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_ch, c.enc_dim, c.patch_size, c.patch_size)
        self.enc_pos = nn.Parameter(torch.randn(1, n_patches, c.enc_dim) * 0.02)
        self.cam_mlp = nn.Sequential(nn.Linear(16, c.cam_dim), nn.SiLU(), nn.Linear(c.cam_dim, c.cam_dim))
        self.encoder = nn.ModuleList(EncoderBlock(c.enc_dim, c.enc_heads, c.cam_dim) for _ in range(c.enc_depth))
        self.enc_norm = nn.LayerNorm(c.enc_dim)
        self.tri_tokens = nn.Parameter(torch.randn(1, 3 * c.tri_tokens ** 2, c.tri_dim) * 0.02)
        self.decoder = nn.ModuleList(TriplaneBlock(c.tri_dim, c.tri_heads, c.enc_dim) for _ in range(c.tri_depth))
        self.tri_norm = nn.LayerNorm(c.tri_dim)
        ups, ch = [], c.tri_dim
        for i, out in enumerate(c.upsample_channels):
            ups += [nn.ConvTranspose2d(ch, out, 2, 2)] + ([nn.GELU()] if i < len(c.upsample_channels) - 1 else [])
            ch = out
        self.upsample = nn.Sequential(*ups)
        layers, d = [], c.plane_channels * (2 if c.pixel_channels else 1)
        for _ in range(c.mlp_layers):
            layers += [nn.Linear(d, c.mlp_hidden), nn.SiLU()]
            d = c.mlp_hidden
        self.field_mlp = nn.Sequential(*layers)
        if c.pixel_channels:
            n_depth = 2 if c.pixel_depth else 0   # CNN: depth offset, log thickness; view MLP: the point against them
            self.pix_cnn = PixelCNN(in_ch, c.pixel_cnn, c.enc_dim, c.pixel_channels + n_depth) if c.pixel_cnn else None
            self.pix_proj = None if c.pixel_cnn else nn.Linear(c.enc_dim, c.pixel_channels)
            self.view_mlp = nn.Sequential(nn.Linear(c.pixel_channels + 5 + 2 * n_depth, c.plane_channels), nn.SiLU(),
                                          nn.Linear(c.plane_channels, c.plane_channels))
        self.head = nn.Linear(d + (4 if c.pixel_channels else 0), 4)  # density, rgb (+ skip: sampled rgb, in-frame)

    # -- encoding ---------------------------------------------------------------------

    def _pixels(self, images: torch.Tensor, rays: torch.Tensor | None) -> torch.Tensor:
        """The views as the encoders see them: [B*V, 3 (+6 Plücker), S, S]."""
        x = images.flatten(0, 1)
        return torch.cat([x, rays.flatten(0, 1)], dim=1) if self.config.plucker else x

    def encode(self, images: torch.Tensor, cams: torch.Tensor, rays: torch.Tensor | None,
               pixels: torch.Tensor | None = None) -> torch.Tensor:
        """images [B,V,3,S,S] in [-1,1], cams [B,V,16], rays [B,V,6,S,S] -> tokens [B, V*P, D]
        (``pixels``: ``_pixels(images, rays)`` when the caller has it already)."""
        B, V = images.shape[:2]
        pixels = self._pixels(images, rays) if pixels is None else pixels
        x = self.patch_embed(pixels).flatten(2).transpose(1, 2) + self.enc_pos
        cam = self.cam_mlp(cams.flatten(0, 1))
        for blk in self.encoder:
            x = blk(x, cam)
        return self.enc_norm(x).reshape(B, V * x.shape[1], -1)

    @staticmethod
    def camera_radius(cams: torch.Tensor) -> torch.Tensor:
        """Each input camera's distance from the origin [B, V], from its 16 camera features."""
        return cams[..., :12].unflatten(-1, (3, 4))[..., 3].norm(dim=-1)

    def forward(self, images, cams, rays=None) -> TriplaneState:
        """-> TriplaneState: triplanes [B, 3, C, R, R] (planes xy, xz, yz of the canonical frame)
        and, with ``pixel_channels``, the per-view feature maps for pixel-aligned lookups."""
        pixels = self._pixels(images, rays)
        ctx = self.encode(images, cams, rays, pixels)
        feat = None
        if self.config.pixel_channels:
            B, V, g = images.shape[0], images.shape[1], self.config.image_size // self.config.patch_size
            if self.pix_cnn is None:
                feat = self.pix_proj(ctx).view(B, V, g, g, -1).permute(0, 1, 4, 2, 3)
            else:
                grid = ctx.view(B * V, g, g, -1).permute(0, 3, 1, 2)
                feat = self.pix_cnn(pixels, grid)
                feat = feat.view(B, V, *feat.shape[1:])
        c = self.config
        x = self.tri_tokens.expand(ctx.shape[0], -1, -1)
        for blk in self.decoder:
            x = blk(x, ctx)
        x = self.tri_norm(x)
        B, G = x.shape[0], c.tri_tokens
        x = x.view(B, 3, G, G, -1).permute(0, 1, 4, 2, 3).reshape(B * 3, -1, G, G)
        planes = self.upsample(x)
        return TriplaneState(planes.view(B, 3, *planes.shape[1:]), feat, images, cams)

    # -- field ------------------------------------------------------------------------

    def plane_features(self, planes: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
        """planes [B,3,C,R,R], pts [B,N,3] (canonical) -> features [B,N,C], summed over the planes (EG3D)."""
        B, _, C, R, _ = planes.shape
        p = (pts / self.config.box_radius).to(planes.dtype)
        # grid_sample's grid is (x -> width, y -> height): plane xy is indexed [row=y, col=x]
        uv = torch.stack([p[..., [0, 1]], p[..., [0, 2]], p[..., [1, 2]]], dim=1)  # [B,3,N,2]
        f = F.grid_sample(planes.reshape(B * 3, C, R, R), uv.reshape(B * 3, 1, -1, 2),
                          mode="bilinear", padding_mode="border", align_corners=False)
        return f.view(B, 3, C, -1).sum(1).transpose(1, 2)

    def pixel_features(self, state: TriplaneState, pts: torch.Tensor) -> torch.Tensor:
        """Project points into every input view; sample its feature map and image there, add the
        point's depth and an in-frame flag, embed per view and average over views.

        Returns features [B,N,C] and the view-averaged sampled colour + in-frame flag [B,N,4]
        (a skip straight into the head, so copying visible colours is a linear map)."""
        B, V = state.cams.shape[:2]
        c2w = state.cams[..., :12].reshape(B, V, 3, 4).to(pts.dtype)
        f = state.cams[..., 12].to(pts.dtype)  # focal length in image-size units
        rel = pts[:, None] - c2w[..., 3][:, :, None]                         # [B,V,N,3]
        cam = torch.einsum("bvnk,bvkj->bvnj", rel, c2w[..., :3])              # R^T (p - C): camera axes
        depth = (-cam[..., 2]).clamp(min=1e-3)
        uv = torch.stack([cam[..., 0], -cam[..., 1]], -1) * (2 * f)[:, :, None, None] / depth[..., None]
        grid = uv.reshape(B * V, 1, -1, 2).to(state.feat.dtype)
        fs = F.grid_sample(state.feat.flatten(0, 1), grid, align_corners=False).view(B, V, -1, pts.shape[1])
        rgb = F.grid_sample(state.images.flatten(0, 1).to(grid.dtype), grid, align_corners=False).view(B, V, 3, -1)
        inframe = (uv.abs() <= 1).all(-1).to(fs.dtype)
        radius = self.camera_radius(state.cams).to(pts.dtype)[:, :, None]
        rel = (depth - radius).to(fs.dtype)
        skip = torch.cat([rgb.transpose(2, 3), inframe[..., None]], -1)             # [B,V,N,4]
        extra = []
        if self.config.pixel_depth:  # where the point sits against the predicted surface and thickness
            d_hat, log_t = fs[:, :, -2], fs[:, :, -1]
            behind = rel - d_hat
            extra = [behind[..., None], (behind * torch.exp(-log_t.clamp(-4, 4)))[..., None]]
        x = torch.cat([fs.transpose(2, 3), skip, rel[..., None]] + extra, -1)
        return self.view_mlp(x).mean(1), skip.mean(1)

    def query(self, state: TriplaneState, pts: torch.Tensor, with_rgb: bool = True):
        """Density [B,N] and colour [B,N,3] in [0,1] at canonical points; zero density outside the box."""
        h = self.plane_features(state.planes, pts)
        if self.config.pixel_channels:
            pix, skip = self.pixel_features(state, pts)
            x = torch.cat([self.field_mlp(torch.cat([h, pix], -1)), skip], -1)
        else:
            x = self.field_mlp(h)
        h = (self.head(x) if with_rgb else F.linear(x, self.head.weight[:1], self.head.bias[:1])).float()
        sigma = torch.exp((h[..., 0] + self.config.density_bias).clamp(max=11.0))  # trunc_exp-like: sharp, bounded
        inside = (pts.abs() <= self.config.box_radius).all(-1)
        sigma = torch.where(inside, sigma, torch.zeros_like(sigma))
        rgb = torch.sigmoid(h[..., 1:]) if with_rgb else None
        return sigma, rgb

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
