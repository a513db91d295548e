"""TripoSR-compatible reconstruction hyper-parameters (``model_type`` "triposr").

Defaults are the published ``stabilityai/TripoSR`` ``config.yaml``; the importer reads sizes from
the weights' shapes, so a tiny model of the same architecture is the same class.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class TripoSRConfig:
    image_size: int = 512            # TripoSR's cond_image_size: the photo is resized to this
    patch_size: int = 16             # DINO ViT-B/16
    vit_dim: int = 768
    vit_depth: int = 12
    vit_heads: int = 12
    vit_norm_eps: float = 1e-12      # HF transformers' ViT LayerNorm eps (timm's default is 1e-6)
    tri_tokens: int = 32             # learned token grid per plane (plane_size)
    tri_dim: int = 1024              # token channels (num_channels)
    heads: int = 16                  # triplane transformer
    head_dim: int = 64
    depth: int = 16
    norm_groups: int = 32            # GroupNorm on the tokens before proj_in
    plane_channels: int = 40         # after the 2x transposed-conv upsampler: planes 3 x 40 x 64 x 64
    mlp_hidden: int = 64             # NeRF MLP (SiLU): 3*plane_channels -> hidden x mlp_layers -> 4
    mlp_layers: int = 9
    box_radius: float = 0.87         # the field lives in [-r, r]^3, r slightly above sqrt(3)/2
    density_bias: float = -1.0       # density = exp(raw + bias)
    density_threshold: float = 25.0  # TripoSR's marching-cubes level on that density
    background: float = 0.5          # TripoSR was trained on grey: white backgrounds are turned grey
    n_samples: int = 128             # uniform samples per ray inside the box
    mc_query_resolution: int = 256   # planes are 64^2: a 256^3 query grid still sees detail
    default_elevation_deg: float = 0.0   # TripoSR's own render camera: elevation 0, distance 1.9, fov 40
    default_radius: float = 1.9
    fov_deg: float = 40.0
    max_views: int = 1               # a single-image model
    model_type: str = field(default="triposr", repr=False)

    def __post_init__(self):
        if self.model_type != "triposr":
            raise ValueError(f"model_type {self.model_type!r} is not 'triposr'")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.vit_dim % self.vit_heads:
            raise ValueError(f"vit_dim {self.vit_dim} is not a multiple of vit_heads {self.vit_heads}")
        if self.tri_dim % self.norm_groups:
            raise ValueError(f"tri_dim {self.tri_dim} is not a multiple of norm_groups {self.norm_groups}")
        if self.max_views != 1:
            raise ValueError("TripoSR takes exactly one view (max_views 1)")
        if self.box_radius <= 0 or self.mlp_layers < 1:
            raise ValueError("box_radius must be > 0 and mlp_layers >= 1")

    @property
    def density_scale(self) -> float:
        """TripoSR composites with a step of 1/n_samples per ray whatever the ray's length, so its
        density is per ray, not per unit length. Our renderer integrates over true distances: the
        field returns density / (2 r), exact for rays through the centre, close elsewhere."""
        return 1.0 / (2.0 * self.box_radius)

    @property
    def mc_level(self) -> float:
        """TripoSR's threshold in the units ``query`` returns."""
        return self.density_threshold * self.density_scale

    @property
    def plane_res(self) -> int:
        return 2 * self.tri_tokens

    def to_dict(self) -> dict:
        return asdict(self)
