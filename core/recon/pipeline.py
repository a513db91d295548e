"""Inference entry point: 1..N images on white + their cameras -> TriplaneScene."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from core import cameras
from core.checkpoint import load_config
from core.data.io import composite_on_white, image_to_tensor, resize_area
from core.recon.config import ReconConfig
from core.recon.model import ReconModel, camera_features, canonical_rotation, to_canonical
from core.recon.scene import TriplaneScene
from core.recon.triposr import TripoSRModel


class ReconInputError(ValueError):
    """Input images or cameras that cannot be reconstructed (empty, all white, not finite...)."""


def check_foreground(img: Image.Image, name: str = "image", min_fraction: float = 1e-3) -> None:
    """Refuse images with (almost) no object on them: all white, or one flat colour."""
    a = np.asarray(img.convert("RGB"), dtype=np.int16)
    if a.size == 0:
        raise ReconInputError(f"{name} is empty (0 pixels)")
    fg = (255 - a).max(axis=-1) > 8
    flat = np.abs(a - a.reshape(-1, 3)[0]).max() <= 8
    if fg.mean() < min_fraction or flat:
        raise ReconInputError(f"{name} has no object on it (all white or a single flat colour); "
                              "pass a photo of an object on a white background")


def check_view_count(n: int, max_views: int) -> None:
    """The one rule on how many views a reconstruction takes (the model's ``max_views``)."""
    if not 1 <= n <= max_views:
        raise ReconInputError(f"images: need 1..{max_views} views, got {n}")


# model_type in config.json -> module class (reconstruction v2 adds its own entry)
MODELS = {"recon": ReconModel, "triposr": TripoSRModel}


def prepare_views(images: torch.Tensor, w2cs: list[np.ndarray], fovs: list[float], size: int):
    """Model inputs for one object: images [V,3,S,S] in [-1,1] + world cameras.

    Returns (images, camera features [V,16], Plücker rays [V,6,S,S], rot world->canonical)."""
    rot = canonical_rotation(w2cs[0])
    cw = [to_canonical(w, rot) for w in w2cs]
    cams = torch.from_numpy(np.stack([camera_features(w, f) for w, f in zip(cw, fovs)]))
    rays = torch.stack([cameras.plucker(w, cameras.intrinsics(f, size), size) for w, f in zip(cw, fovs)])
    return images, cams, rays, rot


class ReconPipeline:
    def __init__(self, model: ReconModel, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    @property
    def config(self) -> ReconConfig:
        return self.model.config

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu") -> "ReconPipeline":
        # another kind of checkpoint falls through to ReconModel, whose config check names it
        model_cls = MODELS.get(load_config(folder).get("model_type", "recon"), ReconModel)
        return cls(model_cls.from_pretrained(folder), device)

    def save_pretrained(self, folder: str | Path) -> Path:
        return self.model.save_pretrained(folder)

    def default_camera(self) -> np.ndarray:
        """The camera assumed for a single photo: azimuth 0 at the training corpus's usual elevation."""
        return cameras.pose_from_spherical(0.0, self.config.default_elevation_deg, self.config.default_radius)

    @torch.no_grad()
    def reconstruct(self, images, cameras_w2c=None, fov_deg: float | list[float] | None = None,
                    project_photos: bool = True) -> TriplaneScene:
        """1..N images (PIL, RGB on white or RGBA) and their 3x4 world-to-camera matrices
        (default: one photo at ``default_camera()``) -> a TriplaneScene in the world frame.
        With ``project_photos`` its renders and meshes carry the photos' own pixels where the
        photos saw the surface (``core.recon.texture``); without, the field's colours alone."""
        if isinstance(images, Image.Image):
            images = [images]
        images = list(images)
        check_view_count(len(images), self.config.max_views)
        if cameras_w2c is None:
            if len(images) != 1:
                raise ReconInputError("cameras: required when more than one image is given")
            cameras_w2c = [self.default_camera()]
        elif isinstance(cameras_w2c, np.ndarray) and cameras_w2c.ndim == 2:
            cameras_w2c = [cameras_w2c]
        cameras_w2c = [np.asarray(w, dtype=np.float64) for w in cameras_w2c]
        if len(cameras_w2c) != len(images):
            raise ReconInputError(f"cameras: {len(cameras_w2c)} given for {len(images)} images")
        for i, w in enumerate(cameras_w2c):
            problems = cameras.validate_w2c(w, look_at_tol_deg=180.0)
            if problems:
                raise cameras.CameraError(f"cameras[{i}]: {'; '.join(problems)}")
        default_fov = getattr(self.config, "fov_deg", cameras.DEFAULT_FOV_DEG)  # a model's own input camera (TripoSR: 40)
        fovs = fov_deg if isinstance(fov_deg, (list, tuple)) else [fov_deg or default_fov] * len(images)
        if len(fovs) != len(images):
            raise ReconInputError(f"fov_deg: need one value per image, got {len(fovs)} for {len(images)}")
        fovs = [cameras.check_fov(f, f"fov_deg[{i}]", ReconInputError) for i, f in enumerate(fovs)]
        S = self.config.image_size
        tens = []
        for i, im in enumerate(images):
            if not isinstance(im, Image.Image):
                raise ReconInputError(f"images[{i}]: expected a PIL image, got {type(im).__name__}")
            if im.width == 0 or im.height == 0:
                raise ReconInputError(f"images[{i}] is empty (0 pixels)")
            im = resize_area(composite_on_white(im), S)
            check_foreground(im, f"images[{i}]")
            tens.append(image_to_tensor(im))
        x, cams, rays, rot = prepare_views(torch.stack(tens), [w.astype(np.float32) for w in cameras_w2c],
                                           [float(f) for f in fovs], S)
        planes = self.model(x[None].to(self.device), cams[None].to(self.device), rays[None].to(self.device))
        scene = TriplaneScene(self.model, planes, rot, fov_deg=float(fovs[0]))
        if project_photos:
            scene.attach_photos(images, cameras_w2c, fovs)
        return scene
