"""The 3-D guide: the lifted object, rasterised at a target camera in milliseconds.

Once per photo the reconstruction (with the photo projected onto the surfaces it saw,
``core.recon.texture``) is meshed; each target camera then gets an unlit rasterisation of that
coloured mesh (OpenGL through the corpus renderer: colour on white, alpha, depth) at the NVS
model's resolution. Volume rendering the field costs ~0.2-0.4 s a frame on a CPU; the raster
costs a few milliseconds, so the guide can follow a camera drag. It is what the 3-D-anchored NVS
model is conditioned on and what the app shows first after a camera move.
"""
from __future__ import annotations

import hashlib
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from core import cameras
from core.data.render import RenderResult

UNLIT = dict(intensities=(0.0, 0.0, 0.0), ambient=1.0)  # the mesh's colours already carry the photo's light
GUIDE_MESH_RESOLUTION = 96  # marching cubes grid: ~0.3 s once per photo on a CPU; finer than a 128 px guide needs


class Guide:
    """The proxy of one lifted photo; ``render(w2c)`` rasterises it (colour on white, alpha, depth along
    the viewing axis). Needs an EGL OpenGL context (Mesa's libEGL), as the corpus renderer does.

    An OpenGL context is current on one thread at a time, and a render from another thread reads
    back the wrong pixels, while the app calls this from request threads and per-client workers:
    so every GL call of a guide runs on the guide's own thread, and any thread may call ``render``.
    The context is released by ``close()`` or when the guide is garbage collected."""

    def __init__(self, mesh, size: int, fov_deg: float = cameras.DEFAULT_FOV_DEG):
        self.size, self.fov_deg = int(size), float(fov_deg)
        self._gl = ThreadPoolExecutor(max_workers=1, thread_name_prefix="guide-gl")
        try:
            self.renderer = self._gl.submit(_make_renderer, mesh, self.size, self.fov_deg).result()
        except BaseException:
            self._gl.shutdown(wait=False)
            raise
        self._lock = threading.Lock()   # a close() never releases the context under a queued render
        self._finalizer = weakref.finalize(self, _release, self._gl, self.renderer, self._lock)
        self._finalizer.atexit = False   # at exit the executor is already down and the process frees the context

    @classmethod
    def from_scene(cls, scene, size: int, fov_deg: float | None = None,
                   mesh_resolution: int = GUIDE_MESH_RESOLUTION) -> "Guide":
        """Mesh a ``TriplaneScene`` (its photo projection included) and upload it."""
        return cls(scene.extract_mesh(resolution=mesh_resolution), size, fov_deg or scene.fov_deg)

    def render(self, w2c) -> RenderResult:
        problems = cameras.validate_w2c(w2c, look_at_tol_deg=180.0)
        if problems:
            raise cameras.CameraError(f"guide camera: {'; '.join(problems)}")
        with self._lock:
            if not self._finalizer.alive:
                raise RuntimeError("this guide was closed")
            return self._gl.submit(self.renderer.render, np.asarray(w2c, np.float64)).result()

    def close(self) -> None:
        self._finalizer()


def _make_renderer(mesh, size: int, fov_deg: float):
    from core.data.render import Lighting, Renderer, parts_from_trimesh
    r = Renderer(size, fov_deg, samples=4)
    r.set_lighting(Lighting(**UNLIT))
    r.set_asset(parts_from_trimesh(mesh))
    return r


def _release(gl: ThreadPoolExecutor, renderer, lock: threading.Lock) -> None:
    with lock:
        try:
            gl.submit(renderer.release).result()
        except RuntimeError:  # the executor is already shut down (interpreter exit)
            pass
        gl.shutdown(wait=False)


def recon_fingerprint(recon) -> str:
    """Hash of a reconstruction model's weights (a ``ReconPipeline`` or its module): the guides a
    guide model was trained on came from exactly these (``NVSConfig.recon_hash``)."""
    model = getattr(recon, "model", recon)
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(np.ascontiguousarray(v.detach().float().cpu().numpy()).tobytes())
    return h.hexdigest()[:16]


def lift_guide(recon, image, w2c, fov_deg: float, size: int) -> tuple["Guide | None", str]:
    """(guide, "") for a photo the reconstruction can lift, else (None, why not): a photo with no
    object, or a field with no surface, leaves the caller on its unguided path with a note; so does
    a machine with no OpenGL for the raster (the views do not need it)."""
    from core.data.render import MeshError as EmptyMeshError, NoGLError
    from core.mesh import MeshError
    from core.recon.pipeline import ReconInputError
    try:
        return Guide.from_scene(recon.reconstruct(image, np.asarray(w2c, np.float64), fov_deg), size, fov_deg), ""
    except (ReconInputError, MeshError, EmptyMeshError, cameras.CameraError) as e:
        return None, f"no 3-D guide for this photo ({e}); views come from the photo alone"
    except NoGLError as e:  # the raster cannot start
        return None, f"no 3-D guide on this machine ({e}); views come from the photo alone"
