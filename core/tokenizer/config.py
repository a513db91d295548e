"""Tokenizer hyper-parameters: everything needed to rebuild the module from config.json."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class TokenizerConfig:
    """A VAR-style multi-scale residual VQ-VAE.

    The default is small enough to train on a CPU (128 px, 8x down -> 16x16 grid);
    ``var_published()`` has exactly the shapes of VAR's released ``vae_ch160v4096z32``.
    """
    resolution: int = 128
    in_channels: int = 3
    patch_size: int = 4                           # pixel-(un)shuffle stem; 1 = VAR's layout
    ch: int = 64
    ch_mult: tuple[int, ...] = (1, 2)             # len - 1 = number of 2x downsamplings after the stem
    num_res_blocks: int = 1
    using_sa: bool = False                        # self-attention in the lowest-resolution level
    using_mid_sa: bool = True                     # self-attention in the middle block
    norm_groups: int = 32
    dropout: float = 0.0
    latent_dim: int = 32                          # VAR's Cvae / z_channels
    vocab_size: int = 1024
    patch_nums: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    quant_resi: float = 0.5                       # phi(h) = (1 - r) h + r conv(h)
    share_quant_resi: int = 4                     # number of partially shared phi convs
    quant_conv_ks: int = 3
    beta: float = 0.25                            # commitment weight
    chroma_gain: float = 1.0                      # > 1: opponent-colour in/out (model.opponent_colour); 1 = RGB
    model_type: str = field(default="multiscale_vqvae", repr=False)

    def __post_init__(self):
        self.ch_mult = tuple(int(m) for m in self.ch_mult)
        self.patch_nums = tuple(int(p) for p in self.patch_nums)
        if self.model_type != "multiscale_vqvae":
            raise ValueError(f"model_type {self.model_type!r} is not 'multiscale_vqvae'")
        if self.patch_size < 1:
            raise ValueError(f"patch_size {self.patch_size} must be >= 1")
        if not self.ch_mult or min(self.ch_mult) < 1:
            raise ValueError(f"ch_mult {self.ch_mult} must be positive integers")
        if not self.patch_nums or any(b <= a for a, b in zip(self.patch_nums, self.patch_nums[1:])) or self.patch_nums[0] < 1:
            raise ValueError(f"patch_nums {self.patch_nums} must be strictly increasing positive integers")
        if self.resolution != self.patch_nums[-1] * self.downsample:
            raise ValueError(f"resolution {self.resolution} must equal patch_nums[-1] ({self.patch_nums[-1]}) x "
                             f"downsample ({self.downsample}, from len(ch_mult)={len(self.ch_mult)})")
        for c in {self.ch * m for m in self.ch_mult}:
            if c % self.norm_groups:
                raise ValueError(f"channel width {c} is not divisible by norm_groups {self.norm_groups}")
        if self.vocab_size < 2 or self.latent_dim < 1 or self.share_quant_resi < 1:
            raise ValueError("vocab_size >= 2, latent_dim >= 1 and share_quant_resi >= 1 are required")
        if not self.chroma_gain > 0:
            raise ValueError(f"chroma_gain {self.chroma_gain} must be > 0")
        if self.chroma_gain != 1.0 and self.in_channels != 3:
            raise ValueError(f"chroma_gain {self.chroma_gain} needs RGB input (in_channels 3, got {self.in_channels})")
        if not 0.0 <= self.quant_resi <= 1.0:
            raise ValueError(f"quant_resi {self.quant_resi} must be in [0, 1]")

    @property
    def downsample(self) -> int:
        return self.patch_size * 2 ** (len(self.ch_mult) - 1)

    @property
    def grid(self) -> int:
        return self.patch_nums[-1]

    @property
    def num_tokens(self) -> int:
        return sum(p * p for p in self.patch_nums)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ch_mult"], d["patch_nums"] = list(self.ch_mult), list(self.patch_nums)
        return d

    @classmethod
    def var_published(cls) -> "TokenizerConfig":
        """VAR's released tokenizer (vae_ch160v4096z32.pth): 256 px, 16x down, 109M parameters."""
        return cls(resolution=256, ch=160, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, using_sa=True,
                   using_mid_sa=True, latent_dim=32, vocab_size=4096, patch_size=1)
