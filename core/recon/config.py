"""Reconstruction model hyper-parameters: everything needed to rebuild the module from config.json."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class ReconConfig:
    """LRM-style triplane reconstruction (``ReconModel``), shrunk for a 2-core CPU.

    ``max_views``, ``default_elevation_deg`` and ``default_radius`` are the limits and defaults the
    app and the command line read from a loaded checkpoint (never repeated as literals there)."""
    image_size: int = 64            # input views are resized to this (also the training render size)
    patch_size: int = 8
    enc_dim: int = 128
    enc_depth: int = 4
    enc_heads: int = 4
    cam_dim: int = 64               # camera embedding fed to AdaLN
    plucker: bool = True            # add per-pixel Plücker rays to the patch embedding
    tri_tokens: int = 8             # triplane token grid G (3*G*G tokens)
    tri_dim: int = 128
    tri_depth: int = 4
    tri_heads: int = 4
    upsample_channels: tuple = (64, 32)   # each entry doubles the plane resolution
    mlp_hidden: int = 64
    mlp_layers: int = 2
    box_radius: float = 0.6         # the field lives in [-r, r]^3 (objects fill [-0.5, 0.5])
    density_bias: float = -1.0
    n_samples: int = 64             # dense samples per ray inside the box at inference
    mc_level: float = 10.0          # density iso-level for marching cubes
    mc_query_resolution: int = 128  # the field is band-limited by its planes: query at most this grid, upsample beyond
    default_elevation_deg: float = 20.0   # single-photo input camera: azimuth 0, this elevation
    default_radius: float = 2.0
    max_views: int = 8              # input views at most (the photo plus generated ones when lifting)
    pixel_channels: int = 16        # > 0: also feed the field with pixel-aligned features of the input views
    pixel_cnn: int = 0              # > 0: those features come from a CNN of this width at half the image
                                    # resolution (fused with the ViT tokens), not from the patch grid alone
    pixel_depth: bool = False       # the CNN also predicts each pixel's depth and the object's thickness
                                    # behind it; a point's offset from that depth feeds the field (needs pixel_cnn)
    model_type: str = field(default="recon", repr=False)   # picks the module class (core.recon.pipeline.MODELS)

    def __post_init__(self):
        self.upsample_channels = tuple(int(c) for c in self.upsample_channels)
        if self.model_type != "recon":
            raise ValueError(f"model_type {self.model_type!r} is not 'recon'")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.max_views < 1:
            raise ValueError(f"max_views must be >= 1, got {self.max_views}")
        if self.pixel_cnn and not self.pixel_channels:
            raise ValueError("pixel_cnn needs pixel_channels > 0 (the features it makes)")
        if self.pixel_depth and not self.pixel_cnn:
            raise ValueError("pixel_depth needs pixel_cnn > 0 (the CNN predicts the depth)")
        if self.enc_dim % self.enc_heads or self.tri_dim % self.tri_heads:
            raise ValueError("enc_dim and tri_dim must be multiples of their head counts")

    @property
    def plane_res(self) -> int:
        return self.tri_tokens * 2 ** len(self.upsample_channels)

    @property
    def plane_channels(self) -> int:
        return self.upsample_channels[-1] if self.upsample_channels else self.tri_dim

    def to_dict(self) -> dict:
        d = asdict(self)
        d["upsample_channels"] = list(self.upsample_channels)
        return d
