"""The one check behind every user-facing knob (sampling, camera, foreground ratio, strip size, mesh
resolution): a value that is not a finite number, not an integer where one is needed, or outside its
documented range is refused with a message naming the knob and the range. The ranges themselves live
with their knobs (``core.nvs.sampling.KNOBS``, ``core.cameras.VIEW_RANGES``, ...)."""
from __future__ import annotations

import math

import numpy as np

MESH_RESOLUTION_RANGE = (32, 512)   # marching-cubes grid a user may ask for (the app and core.photo lift)


def checked(name: str, value, lo: float, hi: float, integer: bool = False, error: type[ValueError] = ValueError):
    """``value`` as an int (``integer``) or float when it lies in [lo, hi], else ``error``."""
    what = f"an integer in [{int(lo)}, {int(hi)}]" if integer else f"a number in [{lo:g}, {hi:g}]"
    ok = not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating)) \
        and math.isfinite(float(value)) and lo <= value <= hi and (not integer or float(value) == int(value))
    if not ok:
        raise error(f"{name} must be {what}, got {value!r}")
    return int(value) if integer else float(value)
