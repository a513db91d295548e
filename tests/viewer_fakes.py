"""Test-only stand-ins for the NVS and reconstruction pipelines (APIS.md signatures).

They let the viewer tests run in milliseconds without trained weights. They are not
shipped and not used by the app; tests that can build the real pipelines untrained
prefer those (see ``real_or_fake_backend``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import trimesh
from PIL import Image

from core import cameras
from core.nvs.sampling import SamplingParams
from core.recon.config import ReconConfig
from core.recon.pipeline import check_view_count


@dataclass
class FakeFrame:
    image: Image.Image
    scale: int
    num_scales: int
    elapsed_s: float
    is_final: bool
    note: str = ""

    @property
    def is_guide(self) -> bool:
        return self.scale == 0


class FakeNVS:
    """Coarse-to-fine frames: the source rolled by the azimuth change, pixelated per scale."""

    resolution = 64
    recon = None   # NVSPipeline's: a reconstruction model for the guide (the fake draws none)
    patch_nums = (1, 2, 4, 8, 16, 64)
    num_scales = len(patch_nums)

    def __init__(self, delay_s: float = 0.0):
        self.delay_s = delay_s
        self.calls = 0

    def encode_source(self, image, source_w2c, fov_deg=None):
        return {"image": image.convert("RGB").resize((self.resolution,) * 2), "w2c": np.asarray(source_w2c)}

    def _target(self, src, source_w2c, target_w2c):
        if not isinstance(src, dict):
            src = self.encode_source(src, source_w2c)
        az_s = cameras.spherical_from_pose(src["w2c"])[0]
        az_t, el_t, _ = cameras.spherical_from_pose(np.asarray(target_w2c))
        arr = np.asarray(src["image"])
        shift = int(round((az_t - az_s) / 360.0 * self.resolution))
        arr = np.roll(arr, shift, axis=1)
        tint = int(np.clip(el_t, -60, 80))  # different cameras must give different pictures
        arr = np.clip(arr.astype(int) + np.array([tint, 0, -tint]), 0, 255).astype(np.uint8)
        return Image.fromarray(arr)

    def stream(self, src, source_w2c, target_w2c, sampling=None, preview_scales=None, cancel=None):
        """NVSPipeline.stream's signature: the knobs arrive as one SamplingParams."""
        sampling = SamplingParams.of(sampling)
        self.calls += 1
        self.last_samples = sampling.samples
        t0 = time.perf_counter()
        full = self._target(src, source_w2c, target_w2c)
        S = len(self.patch_nums)
        keep = set(range(1, S + 1)) if preview_scales is None else set(preview_scales) | {S}
        for si, pn in enumerate(self.patch_nums):
            if cancel is not None and cancel():
                return
            if self.delay_s:
                time.sleep(self.delay_s)
            if si + 1 not in keep:
                continue
            img = full.resize((pn, pn), Image.Resampling.BOX).resize((self.resolution,) * 2, Image.Resampling.NEAREST)
            yield FakeFrame(img, si + 1, S, time.perf_counter() - t0, si == S - 1)

    def generate(self, src, source_w2c, target_w2cs, sampling=None):
        self.last_samples = SamplingParams.of(sampling).samples
        return [self._target(src, source_w2c, t) for t in target_w2cs]


class FakeScene:
    def __init__(self, colour):
        self.colour = colour

    def render(self, w2c, size=128, fov_deg=None):
        img = Image.new("RGB", (size, size), tuple(int(c) for c in self.colour))
        az = cameras.spherical_from_pose(np.asarray(w2c))[0] % 360.0
        x = int(az / 360.0 * (size - 8))
        img.paste((0, 0, 0), (x, size // 2 - 4, x + 8, size // 2 + 4))   # a marker that moves with the camera
        return img

    def render_orbit(self, n=24, elevation_deg=20, radius=2.0, size=128):
        return [self.render(w, size) for w in cameras.orbit(n, elevation_deg, radius)]

    def extract_mesh(self, resolution=256):
        """A box taller along +Z (world up) with its +X face red: orientation is checkable."""
        m = trimesh.creation.box(extents=(0.5, 0.4, 1.0))
        c = np.tile(np.array([[*self.colour, 255]], np.uint8), (len(m.vertices), 1))
        c[m.vertices[:, 0] > 0.2] = (255, 0, 0, 255)
        m.visual.vertex_colors = c
        return m


class FakeRecon:
    """Enforces the real model's limits (its default config's ``max_views``), so a viewer that
    hands it more views than a checkpoint takes fails here as it would with the real one."""

    def __init__(self, config: ReconConfig | None = None):
        self.config = config or ReconConfig()
        self.last_views = 0

    def reconstruct(self, images, cameras_, fov_deg=None):
        check_view_count(len(images), self.config.max_views)
        self.last_views = len(images)
        mean = np.asarray(images[0].convert("RGB"), np.float32).reshape(-1, 3).mean(0)
        return FakeScene(mean.astype(np.uint8))


def viewer_backend(sessions=None, delay_s: float = 0.0):
    """The fake-pipeline Backend used by the live-server tests (fast, known mesh orientation)."""
    from viewer.backend import Backend
    return Backend(FakeNVS(delay_s=delay_s), FakeRecon(), sessions=sessions)


def tiny_real_pipelines():
    """The real NVS and reconstruction pipelines, untrained, at the smallest shapes that build.

    Checks the viewer against the real classes' behaviour (frames, errors), not quality."""
    import torch
    from core.nvs import NVSConfig, NVSPipeline, NVSTransformer
    from core.recon import ReconConfig, ReconModel, ReconPipeline
    from core.tokenizer import MultiScaleVQVAE, TokenizerConfig
    torch.manual_seed(0)
    import dataclasses
    pn = (1, 2, 3, 4)
    extra = {"patch_size": 1} if "patch_size" in {f.name for f in dataclasses.fields(TokenizerConfig)} else {}
    tok = MultiScaleVQVAE(TokenizerConfig(resolution=16, ch=32, ch_mult=(1, 2, 2), patch_nums=pn, vocab_size=64,
                                          latent_dim=8, **extra))   # 4x down: 16 px, 4x4 grid
    nvs = NVSPipeline(NVSTransformer(NVSConfig(depth=1, width=64, num_heads=2, vocab_size=64, latent_dim=8,
                                               patch_nums=pn, resolution=16, embed_dim=32, cnn_width=16,
                                               cnn_resolution=16)), tok)
    recon = ReconPipeline(ReconModel(ReconConfig(image_size=16, patch_size=8, enc_dim=32, enc_depth=1, enc_heads=2,
                                                 cam_dim=16, tri_tokens=4, tri_dim=32, tri_depth=1, tri_heads=2,
                                                 upsample_channels=(16,), mlp_hidden=16, n_samples=16)))
    return nvs, recon
