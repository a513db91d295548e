"""Inference entry point: source photo + cameras -> novel views, streamed coarse to fine.

``encode_source`` runs the tokenizer, the image embedder and the prefix blocks once per
source image; every later camera reuses that handle (the viewer asks for many cameras of
one photo). ``stream`` yields a decoded preview after each scale; its last frame is exactly
the image ``generate`` returns for the same seed. Both take the knobs as one
``SamplingParams`` (``sampling=``), or as keywords that override its defaults.

``samples=N`` draws N independent views of each camera (seeds seed..seed+N-1) and returns
their pixel mean: a Monte-Carlo estimate of the model's posterior-mean view, the prediction
that minimises expected squared error (so PSNR), softer than any one sample. N=1 is one sample.

Underneath, ``prepare`` turns a source and cameras into a ``SampleBatch`` (conditions, seeds,
zoom: everything the sampler needs, no closures), ``prefix_kv`` gives its cached prefix and
``sample`` runs the next-scale sampler over it: the seam the benchmark times.

With a reconstruction model (``recon=``; a ``guide`` model loads its own) the source is also
lifted once (``core.nvs.guide``): ``stream`` then yields the guide, the lifted object rasterised
at the target camera, as its first frame (scale 0) before sampling starts, and a guide model is
conditioned on that guide's tokens. A photo that cannot be lifted leaves ``handle.guide_note``
and the unguided path (a guide model with its guide nulled, as trained).
"""
from __future__ import annotations

import contextlib
import hashlib
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from core import cameras
from core.checkpoint import CheckpointError
from core.data.io import composite_on_white, image_to_tensor, resize_area, tensor_to_image, zoom_images
from core.nvs.config import NVSConfig
from core.nvs.model import KV, NVSTransformer, cat_kv_time
from core.nvs.sampling import SamplingError, SamplingParams, cat_kv, expand_kv, next_scale_sample

__all__ = ["NVSPipeline", "Frame", "SourceHandle", "SampleBatch", "DistanceZoomPlan", "SamplingParams", "SamplingError",
           "check_camera", "check_pair", "tokenizer_fingerprint"]


@dataclass
class Frame:
    image: Image.Image
    scale: int              # 1-based index of the scale just finished; 0: the guide (before any scale)
    num_scales: int
    elapsed_s: float        # since the call started
    is_final: bool
    timings: dict = field(default_factory=dict)  # cumulative seconds: sample_s, decode_s (guide_s)
    note: str = ""          # e.g. why this photo has no guide (the view then comes from the photo alone)

    @property
    def is_guide(self) -> bool:
        return self.scale == 0


@dataclass
class SourceHandle:
    """A source view prepared once: tokens, embedding and (prefix_cond='source') prefix KV cache."""
    image: Image.Image
    w2c: np.ndarray
    fov_deg: float
    indices: list[torch.Tensor]
    codes: torch.Tensor                 # [1, L, Cvae] codebook vectors of the source tokens
    embedding: torch.Tensor             # [1, E]
    prefix_kv: list[KV] | None = None   # batch-1 keys/values of the conditional prefix
    guide: object | None = None         # core.nvs.guide.Guide of the lifted source (None: no recon, or no lift)
    guide_note: str = ""                # why there is no guide when a lift was tried and failed
    lift_s: float = 0.0                 # seconds the lift (and meshing) took in encode_source


@dataclass(frozen=True)
class DistanceZoomPlan:
    """For a ``distance_zoom`` model: each row's image scale and the object's centre in NDC, which
    turn the view the model made (at the source's distance) into the real camera's."""
    scales: tuple[float, ...]
    centres: tuple

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return zoom_images(x, self.scales[:len(x)], self.centres[:len(x)])


@dataclass
class SampleBatch:
    """Every row one sampling pass draws, sample-major: sample j of camera i is row j * cameras + i."""
    handle: SourceHandle
    cond: torch.Tensor                    # [rows, C] AdaLN condition
    uncond: torch.Tensor | None           # [rows, C] null condition (guided), else None
    seeds: list[int]                      # one per row
    n_cameras: int
    samples: int
    src_idx: torch.Tensor | None = None   # [rows, L] source tokens for a copy-gate model
    guide_idx: torch.Tensor | None = None  # [rows, L] guide tokens (guide model with a guide)
    guide_codes: torch.Tensor | None = None  # [rows, L, Cvae] their codebook vectors
    zoom: DistanceZoomPlan | None = None

    @property
    def rows(self) -> int:
        return self.cond.shape[0]


# Cameras look at an object normalised to the unit box (DESIGN.md). Nearer than 0.9 the camera is
# inside its bounding sphere; beyond 10 the object spans a few pixels and the pose input's d_r lies
# far outside anything a model saw (the corpus: 1.65-2.04; ArchonView's renders: 1.5-2.2).
CAMERA_RADIUS_RANGE = (0.9, 10.0)


def check_camera(name: str, w2c) -> np.ndarray:
    """A usable 3x4 world-to-camera matrix, or a CameraError that says what is wrong with it."""
    try:
        a = np.asarray(w2c, dtype=np.float64)
    except (TypeError, ValueError):
        raise cameras.CameraError(f"{name}: not a numeric 3x4 world-to-camera matrix") from None
    problems = [p for p in cameras.validate_w2c(a) if "does not look at" not in p]
    if not problems:
        r = float(np.linalg.norm(cameras.camera_center(a)))
        lo, hi = CAMERA_RADIUS_RANGE
        if not lo <= r <= hi:
            problems.append(f"camera distance {r:.3g} from the object's centre is outside [{lo}, {hi}]")
    if problems:
        raise cameras.CameraError(f"{name}: {'; '.join(problems)}")
    return a[:3, :4].astype(np.float32)


def tokenizer_fingerprint(tok) -> str:
    """Hash of the tokenizer's codebook: a pair trained together shares it."""
    with torch.no_grad():
        book = tok.lookup(torch.arange(tok.config.vocab_size)[None]).float().cpu().numpy()
    return hashlib.sha256(np.ascontiguousarray(book).tobytes()).hexdigest()[:16]


GENERATE_ROWS = 96  # rows (cameras x samples) ``generate`` samples at once: ~1 GB of KV cache at the shipped size


def check_pair(cfg: NVSConfig, tok, check_hash: bool = True) -> None:
    t = tok.config
    bad = [f"{k}: nvs {a} vs tokenizer {b}" for k, a, b in (
        ("vocab_size", cfg.vocab_size, t.vocab_size), ("latent_dim", cfg.latent_dim, t.latent_dim),
        ("patch_nums", tuple(cfg.patch_nums), tuple(t.patch_nums)), ("resolution", cfg.resolution, t.resolution)) if a != b]
    if not bad and check_hash and cfg.tokenizer_hash and cfg.tokenizer_hash != tokenizer_fingerprint(tok):
        bad.append(f"codebook fingerprint: nvs was trained with {cfg.tokenizer_hash}, this tokenizer is "
                   f"{tokenizer_fingerprint(tok)} (retrained tokenizer? retrain or re-import the NVS model)")
    if bad:
        raise CheckpointError("mismatched tokenizer/NVS pair: " + "; ".join(bad))


def _pairs(cfg: NVSConfig, tok) -> bool:
    try:
        check_pair(cfg, tok)
        return True
    except CheckpointError:
        return False


def check_recon_pair(cfg: NVSConfig, recon, nvs_name: str = "NVS model", recon_name: str = "reconstruction model") -> None:
    """A guide model runs only with the reconstruction model whose guides it was trained on."""
    from core.nvs.guide import recon_fingerprint
    if cfg.guide and cfg.recon_hash:
        fp = recon_fingerprint(recon)
        if fp != cfg.recon_hash:
            raise CheckpointError(f"mismatched reconstruction/NVS pair: {nvs_name} was trained on the guides of "
                                  f"reconstruction {cfg.recon_hash}, {recon_name} is {fp}")


class NVSPipeline:
    def __init__(self, model: NVSTransformer, tokenizer, device="cpu", embedder=None, autocast: bool | None = None,
                 recon=None):
        check_pair(model.config, tokenizer)
        if recon is not None:
            check_recon_pair(model.config, recon)
        self.recon = recon  # ReconPipeline: lifts each source for the guide (None: no guide)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.tok = tokenizer.to(self.device).eval()
        cfg = model.config
        if cfg.embedder == "cnn":
            self.embedder = model.embed_image
        elif embedder is None:
            raise ValueError("this NVS model needs an open_clip embedder: pass clip_weights=<local ViT-L/14 file> "
                             "to from_pretrained (or embedder=...)")
        else:
            self.embedder = embedder
        # bf16 autocast: measured faster on CPUs with AVX-512 bf16 and on GPUs; off = exact fp32
        self.autocast = (self.device.type == "cuda") if autocast is None else bool(autocast)
        self._uncond_kv: list[KV] | None = None

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, folder, tokenizer=None, device="cpu", clip_weights=None, autocast=None,
                        recon=None) -> "NVSPipeline":
        """``recon``: a ReconPipeline or its folder for the guide; a guide model defaults to
        ``folder/recon`` else a sibling ``checkpoints/recon``; an unguided one to none."""
        from core.tokenizer import MultiScaleVQVAE
        folder = Path(folder)
        model = NVSTransformer.from_pretrained(folder)
        if recon is None and model.config.guide:
            recon = next((c for c in (folder / "recon", folder.parent / "recon") if (c / "config.json").is_file()), None)
            if recon is None:
                raise CheckpointError(f"{folder} is a guide model: its reconstruction checkpoint was not found at "
                                      f"{folder / 'recon'} or {folder.parent / 'recon'} (pass recon=<folder>, "
                                      "or --recon-checkpoint / --recon on the command line)")
        if isinstance(recon, (str, Path)):
            from core.recon.pipeline import ReconPipeline
            recon_dir = Path(recon)
            recon = ReconPipeline.from_pretrained(recon_dir, device=device)
            check_recon_pair(model.config, recon, str(folder), str(recon_dir))
        if isinstance(tokenizer, (str, Path)) or tokenizer is None:
            # explicit folder, else OUT/tokenizer (imported bundles), else a sibling checkpoints/tokenizer
            cands = [Path(tokenizer)] if tokenizer is not None else [folder / "tokenizer", folder.parent / "tokenizer"]
            tok_dir = next((c for c in cands if (c / "config.json").is_file()), None)
            if tok_dir is None:
                raise CheckpointError(f"tokenizer checkpoint not found at {' or '.join(map(str, cands))} "
                                      "(pass tokenizer=<folder>)")
            tok = MultiScaleVQVAE.from_pretrained(tok_dir, device=device)
            bundled = folder / "tokenizer"
            if tok_dir != bundled and (bundled / "config.json").is_file() and not _pairs(model.config, tok):
                # a checkpoint that ships the tokenizer it was trained with wins over a retrained one
                warnings.warn(f"{tok_dir} does not match {folder}; using the tokenizer bundled at {bundled}")
                tok = MultiScaleVQVAE.from_pretrained(bundled, device=device)
        else:
            tok = tokenizer
        embedder = None
        if model.config.embedder == "open_clip":
            from core.nvs.embedders import OpenCLIPEmbedder
            w = clip_weights or model.config.clip_weights
            if w and not Path(w).is_absolute():
                w = folder / w
            embedder = OpenCLIPEmbedder(model.config.clip_model, w, device=device)
        return cls(model, tok, device, embedder, autocast, recon)

    @property
    def resolution(self) -> int:
        return self.model.config.resolution

    @property
    def num_scales(self) -> int:
        return self.model.config.num_scales

    def precision(self):
        """The context the model runs in: bf16 autocast when ``autocast``, else plain fp32."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.autocast else contextlib.nullcontext()

    def set_autocast(self, on: bool) -> None:
        """Switch precision; the cached null prefix was computed in the old one, so it goes."""
        self.autocast, self._uncond_kv = bool(on), None

    # ------------------------------------------------------------------ source
    def _image_tensor(self, image) -> torch.Tensor:
        if not isinstance(image, Image.Image):
            raise TypeError(f"source image must be a PIL.Image, got {type(image).__name__}")
        return image_to_tensor(resize_area(composite_on_white(image), self.resolution))[None].to(self.device)

    @torch.no_grad()
    def encode_source(self, image: Image.Image, source_w2c, fov_deg: float | None = None,
                      embedding: np.ndarray | torch.Tensor | None = None) -> SourceHandle:
        """Tokenise + embed the source and cache its prefix; reuse the handle for every camera."""
        w2c = check_camera("source_w2c", source_w2c)
        fov_deg = None if fov_deg is None else cameras.check_fov(fov_deg)
        x = self._image_tensor(image)
        idx = self.tok.encode_indices(x)
        codes = torch.cat([self.tok.lookup(i) for i in idx], dim=1)
        if embedding is not None:
            emb = torch.as_tensor(np.asarray(embedding, dtype=np.float32)).reshape(1, -1).to(self.device)
        else:
            with self.precision():
                emb = self.embedder(x).float()
        self.model.check_embedding(emb)
        h = SourceHandle(tensor_to_image(x[0]), w2c, fov_deg or cameras.DEFAULT_FOV_DEG, idx, codes, emb)
        if self.recon is not None:
            from core.nvs.guide import lift_guide
            t0 = time.perf_counter()
            h.guide, h.guide_note = lift_guide(self.recon, image, w2c, h.fov_deg, self.resolution)
            h.lift_s = time.perf_counter() - t0
        if self.model.config.prefix_cond == "source":
            with self.precision():
                h.prefix_kv = self.model.encode_prefix(self.model.embed_prefix(codes), self.model.source_condition(emb))
        return h

    def null_prefix_kv(self) -> list[KV]:
        """Batch-1 keys/values of the unconditional prefix: the same for every source, cached for good."""
        if self._uncond_kv is None:
            with self.precision():
                self._uncond_kv = self.model.encode_prefix(self.model.null_prefix(1), self.model.null_condition(1))
        return self._uncond_kv

    def prepare(self, src, source_w2c, targets: Sequence, sampling: SamplingParams) -> SampleBatch:
        """A source (PIL image or ``SourceHandle``) and target cameras -> the rows to sample:
        ``sampling.samples`` draws of every camera, sample-major, each with its own seed."""
        handle = src if isinstance(src, SourceHandle) else self.encode_source(src, source_w2c)
        s_w2c = handle.w2c if source_w2c is None else check_camera("source_w2c", source_w2c)
        tg = [check_camera(f"target_w2c[{i}]", t) for i, t in enumerate(targets)]
        if not tg:
            raise ValueError("no target cameras given")
        tg, zoom = self._distance_zoom(s_w2c, tg * sampling.samples, handle.fov_deg)
        rel = torch.from_numpy(np.stack([cameras.relative_pose(s_w2c, t) for t in tg])).to(self.device)
        N, m = len(tg), self.model
        with torch.no_grad(), self.precision():
            cond = m.condition(handle.embedding.expand(N, -1), rel)
            uncond = m.null_condition(N) if sampling.cfg != 0 else None
        src_idx = torch.cat(handle.indices, 1).expand(N, -1) if m.copy_gate is not None else None
        g_idx = g_codes = None
        if m.config.guide and handle.guide is not None:
            g_idx, g_codes = self.guide_tokens(handle, tg[:len(targets)])
            g_idx, g_codes = g_idx.repeat(sampling.samples, 1), g_codes.repeat(sampling.samples, 1, 1)
        return SampleBatch(handle, cond, uncond, sampling.row_seeds(len(targets)), len(targets), sampling.samples,
                           src_idx, zoom=zoom, guide_idx=g_idx, guide_codes=g_codes)

    def guide_image(self, handle: SourceHandle, w2c) -> Image.Image | None:
        """The guide at camera ``w2c`` (the real camera: what the app shows first), or None."""
        return None if handle.guide is None else handle.guide.render(check_camera("target_w2c", w2c)).image

    @torch.no_grad()
    def guide_tokens(self, handle: SourceHandle, w2cs: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
        """The guide rendered at each of the model's cameras (moved to the source's distance for a
        distance_zoom model, as its targets are), tokenised: indices [N, L] and codebook vectors."""
        x = torch.stack([image_to_tensor(handle.guide.render(w).image) for w in w2cs]).to(self.device)
        idx = torch.cat(self.tok.encode_indices(x), 1)
        return idx, self.tok.lookup(idx)

    def prefix_kv(self, batch: SampleBatch) -> list[KV]:
        """The prefix keys/values of every row (and of the unconditional rows when guided): the
        source's cached prefix expanded, or, for ArchonView's ``prefix_cond='full'``, encoded per row."""
        m, h, N = self.model, batch.handle, batch.rows
        with torch.no_grad(), self.precision():
            if m.config.prefix_cond == "full":
                kv = m.encode_prefix(m.embed_prefix(h.codes).expand(N, -1, -1), batch.cond)
            else:
                kv = expand_kv(h.prefix_kv, N)
            null = expand_kv(self.null_prefix_kv(), N) if batch.uncond is not None else None
        return self.join_prefixes(kv, null, batch)

    def join_prefixes(self, kv: list[KV], null: list[KV] | None, batch: SampleBatch) -> list[KV]:
        """Every row's source-prefix keys/values ``kv`` (and ``null``, the null prefix per row, when
        guided) -> the whole prefix the sampler attends to: a guide model's guide prefix after the
        source's (nulled where there is no guide), then the unconditional rows after the conditional
        ones. The layout ``NVSTransformer.forward`` trains with; the benchmark's baselines use it too."""
        m, N = self.model, batch.rows
        with torch.no_grad(), self.precision():
            if m.config.guide:
                codes = batch.guide_codes if batch.guide_codes is not None else \
                    batch.handle.codes.new_zeros(N, m.config.num_tokens, m.config.latent_dim)
                off = torch.full((N,), batch.guide_codes is None, dtype=torch.bool, device=self.device)
                kv = cat_kv_time(kv, m.encode_guide(codes, batch.cond, off))
                if null is not None:  # the unconditional guide prefix is the null prefix again
                    null = cat_kv_time(null, null)
        return kv if null is None else cat_kv(kv, null)

    def _distance_zoom(self, s_w2c, tg: list, fov_deg: float) -> tuple[list, DistanceZoomPlan | None]:
        """With ``distance_zoom`` the model sees each target moved to the source's distance; the
        returned plan turns its image into the real camera's (None: not such a model)."""
        if not self.model.config.distance_zoom:
            return tg, None
        moved, scales = zip(*(cameras.at_source_distance(s_w2c, t) for t in tg))
        moved = [w.astype(np.float32) for w in moved]
        return moved, DistanceZoomPlan(tuple(scales), tuple(cameras.origin_ndc(t, fov_deg) for t in tg))

    # ------------------------------------------------------------------ sampling
    def sample(self, batch: SampleBatch, sampling: SamplingParams,
               cancel: Callable[[], bool] | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """(scale index, f_hat of every row) after each scale, with the KV cache and the cached prefix."""
        it = next_scale_sample(self.model, self.tok, batch.cond, batch.uncond, lambda: self.prefix_kv(batch),
                               sampling, batch.seeds, cancel=cancel, src_idx=batch.src_idx, guide_idx=batch.guide_idx)
        while True:
            with torch.no_grad(), self.precision():
                nxt = next(it, None)
            if nxt is None:
                return
            yield nxt[0], nxt[1]

    @staticmethod
    def _zoomed(x: torch.Tensor, zoom: DistanceZoomPlan | None) -> torch.Tensor:
        return x if zoom is None else zoom.apply(x)

    @staticmethod
    def _sample_mean(x: torch.Tensor, samples: int) -> torch.Tensor:
        """[samples * T, 3, H, W] sample-major -> [T, 3, H, W], the pixel mean over samples."""
        return x if samples == 1 else x.view(samples, -1, *x.shape[1:]).mean(0)

    @torch.no_grad()
    def decode(self, f_hat: torch.Tensor, zoom: DistanceZoomPlan | None = None, samples: int = 1) -> list[Image.Image]:
        """Final images; ``zoom`` is the batch's distance plan (distance_zoom models); with
        ``samples`` > 1 the rows are that many samples of each target, averaged."""
        x = self._zoomed(self.tok.decode_fhat(f_hat.float()).float(), zoom)
        return [tensor_to_image(v) for v in self._sample_mean(x, samples)]

    @torch.no_grad()
    def decode_preview(self, f_hat: torch.Tensor, pn: int, zoom: DistanceZoomPlan | None = None,
                       samples: int = 1) -> Image.Image:
        """The tokenizer's preview decode of a partial map (``MultiScaleVQVAE.decode_preview``) of
        the first target (the stream's one); with ``samples`` > 1 the mean of its samples' maps,
        decoded once (a preview costs one decode, not N; only the final frame is the exact pixel mean)."""
        rows = f_hat[::len(f_hat) // samples]
        x = self.tok.decode_preview(rows.mean(0, keepdim=True), pn)
        return tensor_to_image(self._zoomed(x.float(), zoom)[0])

    def stream(self, src_or_image, source_w2c, target_w2c, sampling: SamplingParams | None = None,
               preview_scales: Iterable[int] | None = None, cancel: Callable[[], bool] | None = None,
               **knobs) -> Iterator[Frame]:
        """One target camera, coarse to fine: a Frame after each scale in ``preview_scales``
        (1-based; default all); the last scale is always decoded and is the final view.
        ``sampling.samples`` > 1: that many draws in one batch; the final frame is their pixel mean
        (as ``generate``), each preview the decoded mean of their partial token maps. When the
        source has a guide (``encode_source`` lifted it), the first frame is that guide at the
        target camera (scale 0), before any sampling; ``preview_scales`` may leave it out with 0 absent."""
        sampling = SamplingParams.of(sampling, **knobs)
        t0 = time.perf_counter()
        S = self.num_scales
        keep = set(range(0, S + 1)) if preview_scales is None else {int(s) for s in preview_scales} | {S}
        if not isinstance(src_or_image, SourceHandle):
            src_or_image = self.encode_source(src_or_image, source_w2c)
        if 0 in keep and src_or_image.guide is not None:
            g = self.guide_image(src_or_image, target_w2c)
            yield Frame(g, 0, S, time.perf_counter() - t0, False, {"guide_s": time.perf_counter() - t0})
            if cancel is not None and cancel():
                return
        batch = self.prepare(src_or_image, source_w2c, [target_w2c], sampling)
        sample_s = decode_s = 0.0
        t = time.perf_counter()
        for si, f_hat in self.sample(batch, sampling, cancel):
            sample_s += time.perf_counter() - t
            if si + 1 in keep:
                t = time.perf_counter()
                img = self.decode(f_hat, batch.zoom, batch.samples)[0] if si + 1 == S else \
                    self.decode_preview(f_hat, self.model.config.patch_nums[si], batch.zoom, batch.samples)
                decode_s += time.perf_counter() - t
                yield Frame(img, si + 1, S, time.perf_counter() - t0, si + 1 == S,
                            {"sample_s": sample_s, "decode_s": decode_s}, src_or_image.guide_note)
                if cancel is not None and cancel():
                    return
            t = time.perf_counter()

    def generate(self, src_or_image, source_w2c, target_w2cs: Sequence, sampling: SamplingParams | None = None,
                 **knobs) -> list[Image.Image]:
        """A batch of target cameras at once -> list of PIL images (same seed -> same images; a
        target's image does not depend on the others). ``samples``: see the module docstring.
        Cameras go through in chunks of at most GENERATE_ROWS rows, so memory stays bounded."""
        sampling = SamplingParams.of(sampling, **knobs)
        if isinstance(target_w2cs, np.ndarray) and target_w2cs.ndim == 2:
            target_w2cs = [target_w2cs]
        targets, per = list(target_w2cs), max(1, GENERATE_ROWS // sampling.samples)
        if len(targets) > per and not isinstance(src_or_image, SourceHandle):
            src_or_image = self.encode_source(src_or_image, source_w2c)  # once for every chunk
        images = []
        for i in range(0, max(len(targets), 1), per):
            batch = self.prepare(src_or_image, source_w2c, targets[i:i + per], sampling)
            f_hat = None
            for _, f_hat in self.sample(batch, sampling):
                pass
            images += self.decode(f_hat, batch.zoom, batch.samples)
        return images
