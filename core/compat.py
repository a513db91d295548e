"""Make ``import torchvision`` work on the CPU-only torch of the project's machines.

The only torchvision for torch 2.13.0 is a CUDA build; with the CPU torch its compiled
ops fail to load and ``torchvision`` dies registering the ``torchvision::nms`` fake
kernel (``operator torchvision::nms does not exist``). open_clip imports torchvision.
``ensure_torchvision()`` registers the operator schema with a small pure-torch CPU
kernel, but only when the compiled library really fails to load; where torchvision
works normally it does nothing.
"""
from __future__ import annotations

import importlib.util
import os
import sys

import torch

_LIB = None  # keep the Library object alive: dropping it unregisters the ops


def _nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    order = scores.argsort(descending=True)
    boxes = boxes[order]
    x1, y1, x2, y2 = boxes.unbind(1)
    area = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    keep, suppressed = [], torch.zeros(len(order), dtype=torch.bool)
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        w = (torch.minimum(x2[i], x2) - torch.maximum(x1[i], x1)).clamp(min=0)
        h = (torch.minimum(y2[i], y2) - torch.maximum(y1[i], y1)).clamp(min=0)
        inter = w * h
        suppressed |= inter / (area[i] + area - inter).clamp(min=1e-12) > iou_threshold
    return order[torch.tensor(keep, dtype=torch.long)]


def _compiled_ops_load() -> bool:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True  # no torchvision: nothing to fix
    folder = list(spec.submodule_search_locations)[0]
    libs = [f for f in os.listdir(folder) if f.startswith("_C") and f.endswith((".so", ".pyd"))]
    if not libs:
        return False
    try:
        torch.ops.load_library(os.path.join(folder, libs[0]))
        return True
    except (OSError, RuntimeError):
        return False


def ensure_torchvision() -> None:
    """Call before importing torchvision/open_clip. Idempotent; inert when not needed."""
    global _LIB
    if _LIB is not None or "torchvision" in sys.modules or _compiled_ops_load():
        return
    _LIB = torch.library.Library("torchvision", "FRAGMENT")
    _LIB.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIB.impl("nms", _nms, "CPU")
    _LIB.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIB.impl("qnms", _nms, "CPU")
