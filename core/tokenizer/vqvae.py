"""MultiScaleVQVAE: encoder -> quant_conv -> multi-scale residual VQ -> post_quant_conv -> decoder.

The public API (docs/APIS.md, "core/tokenizer") is what the next-scale NVS transformer and the
viewer use: indices per scale, teacher-forcing inputs, the next autoregressive input, and the
decode of a partial ``f_hat`` for coarse previews.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from core import checkpoint as ckpt
from core.data.io import composite_on_white, image_to_tensor, resize_area

from .config import TokenizerConfig
from .model import Decoder, Encoder
from .quant import MultiScaleQuantizer


class MultiScaleVQVAE(nn.Module):
    def __init__(self, config: TokenizerConfig | None = None):
        super().__init__()
        self.config = cfg = config or TokenizerConfig()
        self.encoder, self.decoder = Encoder(cfg), Decoder(cfg)
        self.quantize = MultiScaleQuantizer(cfg.vocab_size, cfg.latent_dim, cfg.patch_nums, cfg.quant_resi,
                                            cfg.share_quant_resi, cfg.beta)
        k = cfg.quant_conv_ks
        self.quant_conv = nn.Conv2d(cfg.latent_dim, cfg.latent_dim, k, padding=k // 2)
        self.post_quant_conv = nn.Conv2d(cfg.latent_dim, cfg.latent_dim, k, padding=k // 2)

    @property
    def device(self) -> torch.device:
        return self.quantize.embedding.weight.device

    # ------------------------------------------------------------------ inputs
    def prepare(self, images) -> torch.Tensor:
        """PIL image(s) of any size/mode, or a [B,3,H,W] / [3,H,W] tensor in [-1, 1], -> [B,3,R,R]
        on the model's device. PIL images are composited on white and area-resized; tensors of
        another size are area-resized (bicubic when enlarging)."""
        R = self.config.resolution
        if isinstance(images, Image.Image):
            images = [images]
        if isinstance(images, (list, tuple)):
            if not images or not all(isinstance(im, Image.Image) for im in images):
                raise TypeError("images: expected a PIL image, a list of PIL images or a [B,3,H,W] tensor")
            x = torch.stack([image_to_tensor(resize_area(composite_on_white(im), R)) for im in images])
        elif isinstance(images, torch.Tensor):
            x = images[None] if images.dim() == 3 else images
            if x.dim() != 4 or x.shape[1] != 3:
                raise ValueError(f"images: expected [B,3,H,W] in [-1,1], got {tuple(images.shape)}")
            if x.shape[-2:] != (R, R):
                mode = "area" if min(x.shape[-2:]) >= R else "bicubic"
                x = F.interpolate(x.float(), size=(R, R), mode=mode)
        else:
            raise TypeError(f"images: unsupported type {type(images).__name__}")
        return x.to(self.device, torch.float32)

    # ------------------------------------------------------------------ training
    def forward(self, x: torch.Tensor):
        """Training pass: (reconstruction [B,3,R,R], vq loss, per-scale indices, residuals seen)."""
        f_hat, vq_loss, idxs, seen = self.quantize(self.quant_conv(self.encoder(x)))
        return self.decoder(self.post_quant_conv(f_hat)), vq_loss, idxs, seen

    # ------------------------------------------------------------------ public API
    @torch.no_grad()
    def encode_features(self, images) -> torch.Tensor:
        return self.quant_conv(self.encoder(self.prepare(images))).float()

    @torch.no_grad()
    def encode_indices(self, images) -> list[torch.Tensor]:
        """Image(s) -> S LongTensors [B, pn*pn], coarse first."""
        return self.quantize.f_to_indices(self.encode_features(images))

    @torch.no_grad()
    def encode_fhats(self, images) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(indices, f_hat after each scale): what previews of a perfect sampler would decode."""
        return self.quantize.f_to_indices(self.encode_features(images), return_fhats=True)

    @torch.no_grad()
    def decode_fhat(self, f_hat: torch.Tensor) -> torch.Tensor:
        """Decode a full or partial accumulated map [B, C, G, G] -> [B,3,R,R] in [-1, 1]."""
        G, C = self.config.grid, self.config.latent_dim
        if f_hat.dim() != 4 or tuple(f_hat.shape[1:]) != (C, G, G):
            raise ValueError(f"f_hat: expected [B, {C}, {G}, {G}], got {tuple(f_hat.shape)}")
        return self.decoder(self.post_quant_conv(f_hat.to(self.device).float())).float().clamp(-1, 1)

    @torch.no_grad()
    def decode_preview(self, f_hat: torch.Tensor, pn: int, fast: bool = False) -> torch.Tensor:
        """Decode the partial ``f_hat`` left after a scale of ``pn`` x ``pn`` tokens -> [B,3,R,R].

        By default the full grid is decoded (on val its PSNR rises at every scale). ``fast``
        trades quality for speed on slow machines: a coarse map holds at most pn x pn detail,
        so it is area-downsampled to a grid of G/4 (pn <= G/4) or G/2 (pn <= G/2), decoded
        there (16x / 4x cheaper) and bicubic-upsampled; finer scales always decode in full."""
        G = self.config.grid
        g = G if (not fast or pn > G // 2) else (G // 4 if pn <= G // 4 else G // 2)
        if g == G or g < 2:
            return self.decode_fhat(f_hat)
        small = F.interpolate(f_hat.to(self.device).float(), size=(g, g), mode="area")
        img = self.decoder(self.post_quant_conv(small)).float()
        R = self.config.resolution
        return F.interpolate(img, size=(R, R), mode="bicubic", align_corners=False).clamp(-1, 1)

    @torch.no_grad()
    def decode_indices(self, idxs: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.decode_fhat(self.quantize.indices_to_fhat([i.to(self.device) for i in idxs]))

    @torch.no_grad()
    def teacher_forcing_inputs(self, idxs: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.quantize.teacher_forcing_inputs([i.to(self.device) for i in idxs])

    def empty_fhat(self, batch: int) -> torch.Tensor:
        return self.quantize.empty_fhat(batch)

    @torch.no_grad()
    def next_input(self, si: int, f_hat: torch.Tensor, idx_si: torch.Tensor):
        return self.quantize.next_input(si, f_hat, idx_si.to(self.device))

    @torch.no_grad()
    def lookup(self, idx_si: torch.Tensor) -> torch.Tensor:
        return self.quantize.lookup(idx_si.to(self.device))

    # ------------------------------------------------------------------ checkpoints
    def save_pretrained(self, folder: str | Path, metadata: dict[str, str] | None = None) -> Path:
        return ckpt.save_checkpoint(folder, self.state_dict(), self.config.to_dict(), metadata)

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu") -> "MultiScaleVQVAE":
        """Build from config.json, then validate every tensor by name/shape before loading (no pickles)."""
        cfg = ckpt.config_from_dict(TokenizerConfig, ckpt.load_config(folder), source=str(Path(folder) / ckpt.CONFIG_NAME))
        model = cls(cfg)
        ckpt.load_into(model, folder)
        return model.to(device).eval()
