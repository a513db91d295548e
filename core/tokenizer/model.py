"""Convolutional encoder/decoder of the tokenizer (the LDM/VQGAN f-8 / f-16 layout VAR uses).

Module names follow VAR's ``basic_vae.py`` (``down.N.block.M.norm1`` ...) so its published
weights load by name; see ``importer.py``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _norm(c: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, c, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int, dropout: float = 0.0):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin, groups), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = _norm(cout, groups), nn.Conv2d(cout, cout, 3, padding=1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention (one fused qkv 1x1 conv, as in VAR)."""

    def __init__(self, c: int, groups: int):
        super().__init__()
        self.norm = _norm(c, groups)
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x):
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).transpose(-1, -2).unbind(1)  # each B,HW,C
        h = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return x + self.proj_out(h.transpose(1, 2).reshape(B, C, H, W))


class Downsample2x(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric pad: VAR/LDM convention


class Upsample2x(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def opponent_colour(gain: float) -> torch.Tensor:
    """RGB -> (grey, gain * red-blue, gain * green-magenta): a fixed, invertible 3x3 map.

    Chroma is a small share of a white-background render's variance; an autoencoder fed RGB
    learns grey first and can stall there (colours collapse). Feeding and predicting the
    opponent channels with the chroma scaled up by ``gain`` (and predicting them scaled down by
    it: the decoder applies inv(opponent_colour(1 / gain))) preconditions both ends so colour
    is learned as fast as brightness. ``gain`` 1 keeps plain RGB (VAR's layout)."""
    g = float(gain)
    return torch.tensor([[1 / 3, 1 / 3, 1 / 3], [g / 2, 0.0, -g / 2], [-g / 4, g / 2, -g / 4]])


def _colour_mix(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return torch.einsum("oc,bchw->bohw", m.to(x.dtype), x)


def _level(blocks: list[nn.Module], attns: list[nn.Module]) -> nn.Module:
    lvl = nn.Module()
    lvl.block, lvl.attn = nn.ModuleList(blocks), nn.ModuleList(attns)
    return lvl


def _mid(c: int, groups: int, attn: bool, dropout: float) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = ResnetBlock(c, c, groups, dropout)
    mid.attn_1 = AttnBlock(c, groups) if attn else nn.Identity()
    mid.block_2 = ResnetBlock(c, c, groups, dropout)
    return mid


class Encoder(nn.Module):
    """[B,3,R,R] -> [B,z,R/d,R/d], d = patch_size * 2**(len(ch_mult)-1). A patch_size > 1 stem
    (pixel-unshuffle) skips the costly full-resolution convs: what makes CPU training feasible."""

    def __init__(self, cfg):
        super().__init__()
        g, n = cfg.norm_groups, len(cfg.ch_mult)
        self.patch = cfg.patch_size
        self.colour = cfg.chroma_gain != 1.0
        if self.colour:
            self.register_buffer("colour_in", opponent_colour(cfg.chroma_gain), persistent=False)
        self.conv_in = nn.Conv2d(cfg.in_channels * self.patch ** 2, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        cin = cfg.ch
        for i, m in enumerate(cfg.ch_mult):
            cout, blocks, attns = cfg.ch * m, [], []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(cin, cout, g, cfg.dropout))
                cin = cout
                if i == n - 1 and cfg.using_sa:
                    attns.append(AttnBlock(cin, g))
            lvl = _level(blocks, attns)
            if i != n - 1:
                lvl.downsample = Downsample2x(cin)
            self.down.append(lvl)
        self.mid = _mid(cin, g, cfg.using_mid_sa, cfg.dropout)
        self.norm_out = _norm(cin, g)
        self.conv_out = nn.Conv2d(cin, cfg.latent_dim, 3, padding=1)

    def forward(self, x):
        x = _colour_mix(x, self.colour_in) if self.colour else x
        h = self.conv_in(F.pixel_unshuffle(x, self.patch) if self.patch > 1 else x)
        for lvl in self.down:
            for j, blk in enumerate(lvl.block):
                h = blk(h)
                if len(lvl.attn):
                    h = lvl.attn[j](h)
            if hasattr(lvl, "downsample"):
                h = lvl.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """[B,z,G,G] -> [B,3,R,R]. ``up`` is indexed by resolution level (0 = full res), as in VAR."""

    def __init__(self, cfg):
        super().__init__()
        g, n = cfg.norm_groups, len(cfg.ch_mult)
        cin = cfg.ch * cfg.ch_mult[-1]
        self.conv_in = nn.Conv2d(cfg.latent_dim, cin, 3, padding=1)
        self.mid = _mid(cin, g, cfg.using_mid_sa, cfg.dropout)
        levels = []
        for i in reversed(range(n)):
            cout, blocks, attns = cfg.ch * cfg.ch_mult[i], [], []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(cin, cout, g, cfg.dropout))
                cin = cout
                if i == n - 1 and cfg.using_sa:
                    attns.append(AttnBlock(cin, g))
            lvl = _level(blocks, attns)
            if i != 0:
                lvl.upsample = Upsample2x(cin)
            levels.insert(0, lvl)
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(cin, g)
        self.patch = cfg.patch_size
        self.conv_out = nn.Conv2d(cin, cfg.in_channels * self.patch ** 2, 3, padding=1)
        self.colour = cfg.chroma_gain != 1.0
        if self.colour:
            self.register_buffer("colour_out", torch.linalg.inv(opponent_colour(1.0 / cfg.chroma_gain)), persistent=False)

    def forward(self, z):
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for lvl in reversed(self.up):
            for j, blk in enumerate(lvl.block):
                h = blk(h)
                if len(lvl.attn):
                    h = lvl.attn[j](h)
            if hasattr(lvl, "upsample"):
                h = lvl.upsample(h)
        h = self.conv_out(F.silu(self.norm_out(h)))
        h = F.pixel_shuffle(h, self.patch) if self.patch > 1 else h
        return _colour_mix(h, self.colour_out) if self.colour else h
