"""Image metrics used by every evaluation: PSNR and SSIM on RGB-on-white images, silhouette IoU of object masks."""
from __future__ import annotations

import numpy as np
from PIL import Image
from skimage.metrics import structural_similarity


def _arr(img) -> np.ndarray:
    if isinstance(img, Image.Image):
        return np.asarray(img.convert("RGB"), dtype=np.float64) / 255.0
    a = np.asarray(img, dtype=np.float64)
    return a / 255.0 if a.max() > 1.0 + 1e-6 else a


def psnr(pred, target) -> float:
    """PSNR in dB for images in [0, 1] (or uint8 / PIL); capped at 100 for identical images."""
    p, t = _arr(pred), _arr(target)
    if p.shape != t.shape:
        raise ValueError(f"psnr: shapes differ {p.shape} vs {t.shape}")
    mse = float(np.mean((p - t) ** 2))
    return 100.0 if mse <= 1e-10 else float(10 * np.log10(1.0 / mse))


def ssim(pred, target) -> float:
    """Mean SSIM over RGB channels (scikit-image, Gaussian window, data range 1)."""
    p, t = _arr(pred), _arr(target)
    if p.shape != t.shape:
        raise ValueError(f"ssim: shapes differ {p.shape} vs {t.shape}")
    return float(structural_similarity(p, t, channel_axis=-1, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False))


WHITE_THRESHOLD = 6  # an RGB-on-white pixel is object where some channel is this far below 255


def object_mask(image, alpha=None) -> np.ndarray:
    """Boolean object mask: ``alpha`` > 0.5 where given, else the pixels that are not white."""
    if alpha is not None:
        return np.asarray(alpha, dtype=np.float64) > 0.5
    return (1 - _arr(image)).max(-1) * 255 > WHITE_THRESHOLD


def silhouette_iou(pred_mask, target_mask) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty)."""
    p, t = np.asarray(pred_mask, dtype=bool), np.asarray(target_mask, dtype=bool)
    if p.shape != t.shape:
        raise ValueError(f"silhouette_iou: shapes differ {p.shape} vs {t.shape}")
    union = np.logical_or(p, t).sum()
    return 1.0 if union == 0 else float(np.logical_and(p, t).sum() / union)
