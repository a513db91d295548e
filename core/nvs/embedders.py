"""Global image embeddings of the source view (the first kind of NVS conditioning).

Backends:
- ``CNNEncoder``: a small conv net trained with the NVS model (the default here: no
  pretrained image encoders can be downloaded on the project's machines).
- ``OpenCLIPEmbedder``: open_clip ViT-L/14 (768-d, what ArchonView uses) from a local
  weights file; nothing is downloaded.
- precomputed ``{i}e.npy`` files (read by the training loader, same 768-d convention).
All return L2-normalised vectors, as ArchonView feeds CLIP's.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class CNNEncoder(nn.Module):
    """[B,3,R,R] in [-1,1] -> [B, dim], unit norm. Four stride-2 stages then a linear on the
    4x4 map (not a global pool: where the object sits in the frame matters)."""

    def __init__(self, dim: int, width: int = 32, resolution: int = 64):
        super().__init__()
        if resolution % 16:
            raise ValueError(f"cnn_resolution {resolution} must be a multiple of 16")
        self.resolution = resolution
        chans = [3, width, 2 * width, 4 * width, 4 * width]
        layers = []
        for cin, cout in zip(chans, chans[1:]):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.GroupNorm(8, cout), nn.SiLU()]
        self.net = nn.Sequential(*layers)
        self.proj = nn.Linear(chans[-1] * (resolution // 16) ** 2, dim)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if img.shape[-1] != self.resolution or img.shape[-2] != self.resolution:
            img = F.interpolate(img, size=(self.resolution, self.resolution), mode="area")
        return F.normalize(self.proj(self.net(img).flatten(1)), dim=-1)


class OpenCLIPEmbedder(nn.Module):
    """open_clip image tower from a local file: ``OpenCLIPEmbedder("ViT-L-14", "/path/clip.safetensors")``."""

    def __init__(self, model_name: str = "ViT-L-14", weights: str | Path | None = None, device="cpu"):
        super().__init__()
        if weights is None or not Path(weights).is_file():
            raise FileNotFoundError(f"open_clip weights file {weights!r} not found: this backend never downloads; "
                                    f"pass a local {model_name} weights file (open_clip_model.safetensors)")
        from core.checkpoint import CheckpointError, check_safetensors_file, refuse_pickle_file, validate_state_dict
        if Path(weights).suffix != ".safetensors":
            raise refuse_pickle_file(weights)  # open_clip would torch.load a .bin/.pt: never unpickle
        check_safetensors_file(weights)
        from core.compat import ensure_torchvision
        ensure_torchvision()
        import open_clip
        from safetensors.torch import load_file
        model, _, _ = open_clip.create_model_and_transforms(model_name, pretrained=None, device="cpu")
        try:
            sd = load_file(str(weights))
        except Exception as e:
            raise CheckpointError(f"{weights}: unreadable safetensors file ({e})") from None
        sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
        validate_state_dict(model, sd, source=f"{weights} ({model_name})")
        model.load_state_dict(sd, strict=True)
        model = model.to(device)
        self.model, self.model_name = model.eval(), model_name
        size = model.visual.image_size
        self.size = size[0] if isinstance(size, (tuple, list)) else int(size)
        self.dim = int(model.visual.output_dim)
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] in [-1,1] (white background) -> [B, dim] unit norm."""
        x = F.interpolate((img + 1) / 2, size=(self.size, self.size), mode="bicubic", align_corners=False).clamp(0, 1)
        return F.normalize(self.model.encode_image((x - self.mean) / self.std).float(), dim=-1)

    @torch.no_grad()
    def null_text_embedding(self) -> torch.Tensor:
        """CLIP text embedding of '' (ArchonView's unconditional image embedding), unit norm."""
        import open_clip
        tok = open_clip.get_tokenizer(self.model_name)
        return F.normalize(self.model.encode_text(tok([""])).float(), dim=-1)[0]
