"""Multi-scale residual vector quantiser (VAR's VectorQuantizer2 idea, our code).

One codebook is shared by all scales. At scale ``si`` the residual ``f - f_hat`` is
area-downsampled to ``pn x pn``, each vector takes its nearest code, the codes are
bicubic-upsampled back to the full grid ``G``, passed through ``phi`` (one of
``share_quant_resi`` 3x3 convs, picked by the scale's position in [0, 1]) and added to
``f_hat``. Coarse scales carry layout, fine scales detail; any partial ``f_hat`` decodes
to a preview.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class Phi(nn.Conv2d):
    """phi(h) = (1 - r) h + r conv3x3(h): a residual-mixing conv that fixes upsampling blur."""

    def __init__(self, c: int, ratio: float):
        super().__init__(c, c, 3, padding=1)
        self.ratio = float(ratio)

    def forward(self, h):
        return h * (1 - self.ratio) + super().forward(h) * self.ratio


class PhiPartiallyShared(nn.Module):
    """K phi convs shared by S scales: scale si uses the conv whose tick is nearest si/(S-1)."""

    def __init__(self, c: int, ratio: float, k: int):
        super().__init__()
        self.qresi_ls = nn.ModuleList(Phi(c, ratio) for _ in range(k))
        self.ticks = np.linspace(1 / 3 / k, 1 - 1 / 3 / k, k) if k == 4 else np.linspace(1 / 2 / k, 1 - 1 / 2 / k, k)

    def for_scale(self, si: int, num_scales: int) -> Phi:
        at = si / (num_scales - 1) if num_scales > 1 else 0.0
        return self.qresi_ls[int(np.argmin(np.abs(self.ticks - at)))]


class MultiScaleQuantizer(nn.Module):
    def __init__(self, vocab_size: int, dim: int, patch_nums, quant_resi: float = 0.5, share_quant_resi: int = 4,
                 beta: float = 0.25):
        super().__init__()
        self.vocab_size, self.dim, self.patch_nums, self.beta = vocab_size, dim, tuple(patch_nums), beta
        self.embedding = nn.Embedding(vocab_size, dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / vocab_size, 1.0 / vocab_size)
        self.quant_resi = PhiPartiallyShared(dim, quant_resi, share_quant_resi)

    # ---------------------------------------------------------------- primitives
    @property
    def grid(self) -> int:
        return self.patch_nums[-1]

    def nearest(self, z_nc: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code (squared L2, fp32) for each row of z [N, C]."""
        w = self.embedding.weight.detach().float()
        z = z_nc.detach().float()
        d = torch.addmm((z * z).sum(1, keepdim=True) + (w * w).sum(1), z, w.t(), alpha=-2.0)
        return d.argmin(1)

    def lookup(self, idx: torch.Tensor) -> torch.Tensor:
        """[B, L] indices -> [B, L, C] code vectors."""
        return self.embedding(idx)

    def scale_contribution(self, si: int, idx: torch.Tensor) -> torch.Tensor:
        """Scale ``si``'s codes [B, pn*pn] -> phi(upsample(codes)) [B, C, G, G] (what it adds to f_hat)."""
        pn, G = self.patch_nums[si], self.grid
        if idx.dim() != 2 or idx.shape[1] != pn * pn:
            raise ValueError(f"scale {si}: expected indices [B, {pn * pn}], got {tuple(idx.shape)}")
        h = self.embedding(idx).transpose(1, 2).reshape(idx.shape[0], self.dim, pn, pn).float()
        if pn != G:
            h = F.interpolate(h, size=(G, G), mode="bicubic")
        return self.quant_resi.for_scale(si, len(self.patch_nums))(h)

    @staticmethod
    def down(f: torch.Tensor, pn: int) -> torch.Tensor:
        return f if f.shape[-1] == pn else F.interpolate(f, size=(pn, pn), mode="area")

    # ---------------------------------------------------------------- encode / training
    def forward(self, f: torch.Tensor):
        """Training pass. Returns (f_hat with straight-through gradient to f, vq loss, list of
        per-scale indices, residual vectors seen at each scale [N, C] for dead-code restarts).

        The loss is VAR's: mean over scales of ``beta * |sg(f_hat) - f|^2 + |f_hat - sg(f)|^2``,
        so codebook and phi convs learn from the second term, the encoder from the first."""
        f = f.float()
        f_ng = f.detach()
        rest, f_hat = f_ng.clone(), torch.zeros_like(f_ng)
        loss, idxs, seen = f.new_zeros(()), [], []
        for si, pn in enumerate(self.patch_nums):
            z = self.down(rest, pn).permute(0, 2, 3, 1).reshape(-1, self.dim)
            idx = self.nearest(z).view(f.shape[0], pn * pn)
            h = self.scale_contribution(si, idx)
            f_hat = f_hat + h
            rest = rest - h.detach()
            loss = loss + self.beta * F.mse_loss(f_hat.detach(), f) + F.mse_loss(f_hat, f_ng)
            idxs.append(idx)
            seen.append(z)
        loss = loss / len(self.patch_nums)
        return (f_hat.detach() - f_ng) + f, loss, idxs, seen

    @torch.no_grad()
    def f_to_indices(self, f: torch.Tensor, return_fhats: bool = False):
        """Greedy residual quantisation of f [B, C, G, G]: per-scale indices (and f_hat after each scale)."""
        f = f.float()
        if f.shape[-1] != self.grid or f.shape[-2] != self.grid:
            raise ValueError(f"feature map {tuple(f.shape)} does not match the {self.grid}x{self.grid} token grid")
        rest, f_hat, idxs, fhats = f.clone(), torch.zeros_like(f), [], []
        for si, pn in enumerate(self.patch_nums):
            z = self.down(rest, pn).permute(0, 2, 3, 1).reshape(-1, self.dim)
            idx = self.nearest(z).view(f.shape[0], pn * pn)
            h = self.scale_contribution(si, idx)
            f_hat, rest = f_hat + h, rest - h
            idxs.append(idx)
            fhats.append(f_hat)
        return (idxs, fhats) if return_fhats else idxs

    # ---------------------------------------------------------------- autoregressive helpers
    def check_indices(self, idxs) -> None:
        if len(idxs) != len(self.patch_nums):
            raise ValueError(f"expected {len(self.patch_nums)} scales of indices, got {len(idxs)}")
        for si, (idx, pn) in enumerate(zip(idxs, self.patch_nums)):
            if idx.dim() != 2 or idx.shape[1] != pn * pn:
                raise ValueError(f"scale {si}: expected [B, {pn * pn}] indices, got {tuple(idx.shape)}")

    def indices_to_fhat(self, idxs) -> torch.Tensor:
        self.check_indices(idxs)
        f_hat = self.empty_fhat(idxs[0].shape[0], idxs[0].device)
        for si, idx in enumerate(idxs):
            f_hat = f_hat + self.scale_contribution(si, idx)
        return f_hat

    def empty_fhat(self, batch: int, device=None) -> torch.Tensor:
        device = device if device is not None else self.embedding.weight.device
        return torch.zeros(batch, self.dim, self.grid, self.grid, device=device)

    def next_input(self, si: int, f_hat: torch.Tensor, idx_si: torch.Tensor):
        """New f_hat = f_hat + scale si's contribution (never in place); and the next scale's
        input, f_hat area-downsampled to pn_{si+1} and flattened [B, pn^2, C] (None after the last)."""
        if not 0 <= si < len(self.patch_nums):
            raise ValueError(f"scale index {si} out of range 0..{len(self.patch_nums) - 1}")
        f_hat = f_hat.float() + self.scale_contribution(si, idx_si)
        if si == len(self.patch_nums) - 1:
            return f_hat, None
        nxt = self.down(f_hat, self.patch_nums[si + 1])
        return f_hat, nxt.flatten(2).transpose(1, 2)

    def teacher_forcing_inputs(self, idxs) -> torch.Tensor:
        """VAR's idxBl_to_var_input: for scales 1..S-1 the f_hat accumulated up to the previous
        scale, area-downsampled to that scale, flattened row-major -> [B, L - pn0^2, C]."""
        self.check_indices(idxs)
        f_hat, outs = self.empty_fhat(idxs[0].shape[0], idxs[0].device), []
        for si in range(len(self.patch_nums) - 1):
            f_hat, nxt = self.next_input(si, f_hat, idxs[si])
            outs.append(nxt)
        if not outs:
            return f_hat.new_zeros(f_hat.shape[0], 0, self.dim)
        return torch.cat(outs, 1)
