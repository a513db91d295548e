"""NVS transformer hyper-parameters: everything needed to rebuild the module from config.json."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

EMBEDDERS = ("cnn", "open_clip")
PREFIX_CONDS = ("source", "full")


@dataclass
class NVSConfig:
    """ArchonView-style next-scale NVS transformer.

    ``published(depth)`` gives the shapes of the released ArchonView family (256 px, vocab 4096,
    Cvae 32, CLIP ViT-L/14 768-d, width 64 x depth, heads = depth).

    ``prefix_cond`` picks the AdaLN condition of the source-token prefix: ``"source"`` (ours)
    modulates the prefix with the pose-free condition (the source seen from itself), so its
    KV cache depends only on the source image and is reused for every target camera;
    ``"full"`` is ArchonView's (the prefix sees the target pose too; cached per camera).

    ``copy_gate`` (not in ArchonView, off for imports) adds a pointer-generator style copy
    path: a scalar gate read from each target token's final hidden state is added to the
    logit of the source token at the same scale and position. Reproducing the source (zero
    relative pose) and keeping what a camera move leaves in place then need one learned
    scalar per token, not a sharp attention pattern that a small model learns late.

    ``distance_zoom`` (ours, off for imports): the model generates every target as seen from
    the *source's* distance (relative pose ``d_r = 0``, trained on targets scaled to match) and
    the pipeline applies the distance change as an image scale about the object's centre.
    Moving a camera along its ray through the object is, to first order, a zoom; a small model
    did not learn that from ``d_r`` (its views kept the source's size), geometry gives it exactly.

    ``guide`` (ours, off for imports and for checkpoints made before it): the 3-D anchor. The photo lifted by
    the reconstruction model and rasterised at the target camera (``core.nvs.guide``) is tokenised
    and enters as a second prefix of L tokens aligned with the target grid (its own level and
    position embeddings, started equal to the target's), encoded per target under the target's
    condition; a second gate adds to the logit of the guide's token at the same place, so the model
    can copy what the lifted object already shows and generate the rest. ``guide_drop_rate``
    nulls the guide alone for that share of training samples, so the model also works without one
    (the fallback when a photo cannot be lifted). ``recon_hash`` names the reconstruction model
    whose guides it was trained on (``core.nvs.guide.recon_fingerprint``; a mismatch is refused).
    """
    depth: int = 4
    width: int = 256
    num_heads: int = 4
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    attn_l2_norm: bool = True
    cond_drop_rate: float = 0.1
    prefix_cond: str = "source"
    copy_gate: bool = False               # pointer-style copy of the source token at the same place (ours)
    distance_zoom: bool = False           # camera distance applied as an image scale, not by the model (ours)
    guide: bool = False                   # the lifted object rendered at the target camera, a second prefix (ours)
    guide_drop_rate: float = 0.1          # share of samples trained with the guide nulled alone
    recon_hash: str = ""                  # reconstruction model the guides came from (guide models)
    # tokenizer it was trained with (checked at load: a mismatched pair is refused)
    vocab_size: int = 1024
    latent_dim: int = 32
    patch_nums: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    resolution: int = 128
    tokenizer_hash: str = ""
    # global image embedding of the source view
    embedder: str = "cnn"
    embed_dim: int = 256                  # size of the image embedding (768 for CLIP ViT-L/14)
    cnn_width: int = 32
    cnn_resolution: int = 64              # the learned encoder sees the source at this size
    clip_model: str = "ViT-L-14"          # open_clip model name for embedder="open_clip"
    clip_weights: str = ""                # local weights file (relative to the checkpoint or absolute)
    model_type: str = field(default="nvs_next_scale", repr=False)

    def __post_init__(self):
        self.patch_nums = tuple(int(p) for p in self.patch_nums)
        if self.model_type != "nvs_next_scale":
            raise ValueError(f"model_type {self.model_type!r} is not 'nvs_next_scale'")
        if self.width % self.num_heads:
            raise ValueError(f"width {self.width} is not divisible by num_heads {self.num_heads}")
        if self.depth < 1 or self.vocab_size < 2 or self.latent_dim < 1 or self.embed_dim < 1:
            raise ValueError("depth, vocab_size, latent_dim and embed_dim must be positive")
        if not self.patch_nums or any(b <= a for a, b in zip(self.patch_nums, self.patch_nums[1:])):
            raise ValueError(f"patch_nums {self.patch_nums} must be strictly increasing")
        if self.embedder not in EMBEDDERS:
            raise ValueError(f"embedder {self.embedder!r} must be one of {EMBEDDERS}")
        if self.prefix_cond not in PREFIX_CONDS:
            raise ValueError(f"prefix_cond {self.prefix_cond!r} must be one of {PREFIX_CONDS}")
        if not 0.0 <= self.cond_drop_rate < 1.0:
            raise ValueError(f"cond_drop_rate {self.cond_drop_rate} must be in [0, 1)")
        if not 0.0 <= self.guide_drop_rate < 1.0:
            raise ValueError(f"guide_drop_rate {self.guide_drop_rate} must be in [0, 1)")

    @property
    def num_tokens(self) -> int:
        return sum(p * p for p in self.patch_nums)

    @property
    def prefix_len(self) -> int:
        """Tokens before the target: the source's, and the guide's when there is one."""
        return self.num_tokens * (2 if self.guide else 1)

    @property
    def num_scales(self) -> int:
        return len(self.patch_nums)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["patch_nums"] = list(self.patch_nums)
        return d

    @classmethod
    def published(cls, depth: int = 16, **kw) -> "NVSConfig":
        """The released ArchonView shapes (VAR's vae_ch160v4096z32 tokenizer, CLIP ViT-L/14)."""
        base = dict(depth=depth, width=64 * depth, num_heads=depth, vocab_size=4096, latent_dim=32, resolution=256,
                    embedder="open_clip", embed_dim=768, prefix_cond="full", attn_l2_norm=True)
        base.update(kw)
        return cls(**base)
