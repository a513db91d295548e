"""The viewer's only door into ``core``: model loading, per-session state, files, cancellation.

The UI and the Viser scene never touch a model directly. ``Backend.load`` builds the
NVS and reconstruction pipelines from a checkpoints folder when they are present and
importable; whatever is missing is recorded with a sentence saying how to get it, and
only the features that need it are disabled. All model calls go through one lock:
on a small CPU two concurrent generations only slow each other down. Streams take the
lock one scale at a time, so they interleave fairly, and a newer camera move cancels
stale work instead of queueing behind it.
"""
from __future__ import annotations

import atexit
import ctypes
import logging
import math
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from PIL import Image

from core import cameras
from core.nvs.sampling import SamplingError, SamplingParams
from core.ranges import MESH_RESOLUTION_RANGE, checked
from core.preprocess import (ImageInputError, PreprocessResult, check_foreground_ratio, finite_clamped, load_input_image,
                             preprocess)

log = logging.getLogger("vantage.viewer")

DEFAULT_RADIUS = 2.0           # objects of extent 1 seen from about radius 2 (as in the corpus)
DEFAULT_ELEVATION = 20.0       # a typical product-photo view; the user can correct it
# (a loaded reconstruction model's config overrides both with the values it was trained around)
RADIUS_RANGE = cameras.VIEW_RANGES["distance"]             # the one rule per camera knob: core.cameras
ELEVATION_RANGE = cameras.VIEW_RANGES["elevation"]
MAX_STRIP_VIEWS = 12          # views in one strip; the session keeps the last strip's (or as many single views)
SESSION_TTL_S = 3600.0         # idle sessions (and their files) are dropped after this
MAX_SESSIONS = 64             # live sessions at most; a new one evicts the one idle the longest


JANITOR_S = 15.0              # how often an idle server sweeps expired sessions and returns freed memory


def release_memory() -> None:
    """Hand freed heap back to the OS. glibc keeps it otherwise: after a hostile run (300 sessions,
    bad files, 8 concurrent clients) the server held ~0.5 GB of freed memory it never gave back (RSS
    1188 MB -> 694 MB on ``malloc_trim``, measured). A no-op where there is no glibc."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def return_large_blocks_at_once(threshold: int = 1 << 20) -> None:
    """Serve every allocation of ``threshold`` bytes or more with its own mapping, returned to the OS
    on free. glibc's default raises that threshold after each large free (up to 32 MB), after which
    images, meshes and activations come from the heap and stay there: the server's memory then
    climbs with load and falls only at a ``malloc_trim``. A no-op where there is no glibc."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, int(threshold))   # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


class UserError(ValueError):
    """A problem the user can fix (bad input, missing model); shown in the UI as is."""


def gpu(fn: Callable) -> Callable:
    """``spaces.GPU`` on a Hugging Face ZeroGPU Space, identity everywhere else."""
    try:
        import spaces  # type: ignore
    except Exception:
        return fn
    return spaces.GPU(fn)


def clamp(name: str, value: Any, lo: float, hi: float) -> float:
    """A finite float clamped to [lo, hi]; NaN/inf/non-numbers are a ``UserError`` naming ``name``."""
    return finite_clamped(name, value, lo, hi, error=UserError)


def ui_sampling(seed, cfg, top_k, top_p, samples=1) -> SamplingParams:
    """The Advanced knobs as one ``SamplingParams``: the rule of each knob is core's
    (``core.nvs.sampling.KNOBS``), so the app and the command line cannot differ."""
    try:
        return SamplingParams(seed=seed, cfg=cfg, top_k=top_k, top_p=top_p, samples=samples)
    except SamplingError as e:
        raise UserError(str(e)) from None


def view_knob(name: str, value, label: str | None = None) -> float:
    """A camera knob by core's one rule (``core.cameras.VIEW_RANGES``), refused as a ``UserError``."""
    return cameras.check_view_knob(name, value, error=UserError, label=label)


def check_strip_count(n) -> int:
    """Views in one strip: an integer in [2, MAX_STRIP_VIEWS] (the slider's range), else a UserError."""
    return checked("number of views", n, 2, MAX_STRIP_VIEWS, integer=True, error=UserError)


def spread(items: list, n: int) -> list:
    """At most ``n`` of ``items``, evenly spaced (views kept for a lift cover the whole orbit)."""
    if len(items) <= n:
        return list(items)
    return [items[round(i * (len(items) - 1) / max(n - 1, 1))] for i in range(n)] if n > 0 else []


# ----------------------------------------------------------------------------- sessions

_SAFE_NAME = re.compile(r"^[a-z0-9_\-]+\.(glb|ply|obj|gif|webp|png|jpg)$")


@dataclass
class Session:
    """Everything one browser tab owns. Its token is the only key to it (unguessable)."""
    token: str
    folder: Path
    source: PreprocessResult | None = None
    elevation: float = DEFAULT_ELEVATION
    radius: float = DEFAULT_RADIUS
    encoded: Any = None                    # NVSPipeline.encode_source handle for (source, elevation)
    encoded_key: tuple | None = None
    generated: list[tuple[np.ndarray, Image.Image]] = field(default_factory=list)
    mesh: Any = None                       # trimesh.Trimesh of the last lift
    scene: Any = None                      # its TriplaneScene
    version: int = 0                       # bumped on every new source: cancels stale work
    last_used: float = field(default_factory=time.time)

    @property
    def source_w2c(self) -> np.ndarray:
        return cameras.pose_from_spherical(0.0, self.elevation, self.radius)

    def path(self, name: str) -> Path:
        """A file inside this session's folder; only our own fixed names are accepted."""
        if not _SAFE_NAME.match(name):
            raise ValueError(f"refusing file name {name!r}")
        return self.folder / name

    def write_atomic(self, name: str, write: Callable[[Path], None]) -> Path:
        """Write via ``write(tmp_path)`` then rename: readers never see a half file."""
        final = self.path(name)
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".tmp-", suffix=final.suffix)
        os.close(fd)
        try:
            write(Path(tmp))
            os.replace(tmp, final)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return final


class SessionStore:
    """Per-session temp folders under one private root, removed on close or when idle."""

    def __init__(self, root: str | Path | None = None, ttl_s: float = SESSION_TTL_S, max_sessions: int = MAX_SESSIONS):
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="vantage-"))
        if root is None:  # our own temp root goes away with the process, even without close_all()
            atexit.register(shutil.rmtree, self.root, True)
        self.root.mkdir(parents=True, exist_ok=True)
        self.ttl_s, self.max_sessions = ttl_s, max_sessions
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self.listeners: list[Callable[[str, str], None]] = []   # (token, event) -> None
        # called with a closing session's folder before it is removed (the UI drops Gradio's copies of its files)
        self.before_remove: list[Callable[[Path], None]] = []

    def new(self) -> Session:
        self.sweep()
        with self._lock:  # at the cap, the session idle the longest makes room (its files go with it)
            excess = sorted(self._sessions.values(), key=lambda s: s.last_used)[:max(0, len(self._sessions) - self.max_sessions + 1)]
        for old in excess:
            log.info("session cap (%d) reached: closing the session idle for %.0f s", self.max_sessions,
                     time.time() - old.last_used)
            self.close(old.token)
        token = secrets.token_urlsafe(16)
        folder = self.root / token
        folder.mkdir(mode=0o700)
        s = Session(token, folder)
        with self._lock:
            self._sessions[token] = s
        return s

    def get(self, token: str | None) -> Session | None:
        if not token or not isinstance(token, str):
            return None
        with self._lock:
            s = self._sessions.get(token)
        if s is not None:
            s.last_used = time.time()
        return s

    def live_folders(self) -> list[Path]:
        with self._lock:
            return [s.folder for s in self._sessions.values()]

    def tokens(self) -> list[str]:
        with self._lock:
            return list(self._sessions)

    def close(self, token: str | None) -> None:
        with self._lock:
            s = self._sessions.pop(token, None) if token else None
        if s is not None:
            s.version += 1
            for cb in list(self.before_remove):
                try:
                    cb(s.folder)
                except Exception:  # a failing hook must not keep the session's own files
                    log.exception("before_remove hook failed")
            shutil.rmtree(s.folder, ignore_errors=True)
            s.encoded = s.mesh = s.scene = s.source = None   # a lingering reference keeps no model state alive
            s.generated = []
            self.notify(s.token, "closed")

    def sweep(self) -> None:
        now = time.time()
        with self._lock:
            stale = [t for t, s in self._sessions.items() if now - s.last_used > self.ttl_s]
        for t in stale:
            self.close(t)

    def close_all(self) -> None:
        for t in list(self._sessions):
            self.close(t)
        shutil.rmtree(self.root, ignore_errors=True)

    def notify(self, token: str, event: str) -> None:
        for cb in list(self.listeners):
            try:
                cb(token, event)
            except Exception:  # a broken listener must not break the session
                log.exception("session listener failed")

    def __len__(self) -> int:
        return len(self._sessions)


# ----------------------------------------------------------------------------- models

HOW_TO_GET = {
    "nvs": "train it with `python -m core.train nvs` (see README) or copy a shipped `checkpoints/nvs/` "
           "and `checkpoints/tokenizer/` into the --checkpoints folder",
    "recon": "train it with `python -m core.train recon` (see README) or copy a shipped `checkpoints/recon/` "
             "into the --checkpoints folder",
}


def _load_nvs(folder: Path, device: str):
    from core.nvs import NVSPipeline  # noqa: deferred: the viewer must start without it
    if not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"{folder / 'model.safetensors'} is missing")
    # the pipeline finds the tokenizer: the one bundled in nvs/tokenizer/, else the sibling tokenizer/
    return NVSPipeline.from_pretrained(str(folder), device=device)


def _load_recon(folder: Path, device: str):
    from core.recon import ReconPipeline  # noqa: deferred
    if not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"{folder / 'model.safetensors'} is missing")
    return ReconPipeline.from_pretrained(str(folder), device=device)


class Backend:
    """Pipelines (or the reason they are absent) plus sessions; thread-safe."""

    def __init__(self, nvs=None, recon=None, problems: dict[str, str] | None = None,
                 sessions: SessionStore | None = None, device: str = "cpu"):
        self.nvs, self.recon, self.device = nvs, recon, device
        self.problems = dict(problems or {})
        for name, pipe in (("nvs", nvs), ("recon", recon)):
            if pipe is None and name not in self.problems:
                self.problems[name] = "not loaded"
        self.sessions = sessions if sessions is not None else SessionStore()
        rcfg = getattr(recon, "config", None)
        self.default_radius = clamp("default_radius", getattr(rcfg, "default_radius", DEFAULT_RADIUS), *RADIUS_RANGE)
        self.default_elevation = clamp("default_elevation", getattr(rcfg, "default_elevation_deg", DEFAULT_ELEVATION),
                                       *ELEVATION_RANGE)
        self.compute = threading.Lock()   # one model call at a time (see module doc)
        if nvs is not None and recon is not None and nvs.recon is None:
            nvs.recon = recon  # each photo is lifted once: its guide is every camera move's first frame

    def start_janitor(self, interval_s: float = JANITOR_S) -> threading.Event:
        """A daemon thread that, every ``interval_s`` while no model call is running, closes expired
        sessions (otherwise swept only when a new one opens) and returns freed memory to the OS.
        Set the returned event to stop it."""
        stop = threading.Event()

        def loop():
            while not stop.wait(interval_s):
                self.sessions.sweep()
                if self.compute.acquire(blocking=False):   # idle: nobody is generating
                    try:
                        release_memory()
                    finally:
                        self.compute.release()
        threading.Thread(target=loop, name="vantage-janitor", daemon=True).start()
        return stop

    @classmethod
    def load(cls, checkpoints: str | Path | None, device: str = "cpu", models: dict[str, Path] | None = None,
             **kw) -> "Backend":
        """Load what is there; record what is not (with how to get it) instead of failing.
        ``models`` (role -> folder, from ``core.weights.resolve``) replaces the checkpoints folder's."""
        ckpt = Path(checkpoints) if checkpoints else None
        pipes, problems = {}, {}
        for name, loader in (("nvs", _load_nvs), ("recon", _load_recon)):
            folder = Path(models[name]) if models and name in models else None
            if folder is None and ckpt is None:
                problems[name] = "no --checkpoints folder given"
                continue
            if folder is None and not ckpt.is_dir():
                problems[name] = f"checkpoints folder {ckpt} does not exist"
                continue
            try:
                pipes[name] = loader(folder or ckpt / name, device)
            except ImportError as e:
                problems[name] = f"the code for it is not importable ({e})"
            except Exception as e:  # corrupt or mismatched checkpoint: say which, keep serving
                problems[name] = f"{type(e).__name__}: {e}"
        for name, why in problems.items():
            log.warning("%s model unavailable: %s; %s", name, why, HOW_TO_GET[name])
        return cls(pipes.get("nvs"), pipes.get("recon"), problems, device=device, **kw)

    @property
    def nvs_ready(self) -> bool:
        return self.nvs is not None

    @property
    def recon_ready(self) -> bool:
        return self.recon is not None

    @property
    def max_lift_views(self) -> int:
        """Views the loaded reconstruction model takes at once (its checkpoint's ``max_views``)."""
        return int(self.require("recon").config.max_views)

    def status_markdown(self) -> str:
        lines = []
        for name, label in (("nvs", "Novel views"), ("recon", "Lift to 3D")):
            if getattr(self, name) is not None:
                lines.append(f"- **{label}**: ready")
            else:
                lines.append(f"- **{label}**: disabled. {self.problems.get(name, 'not loaded')}. "
                             f"To enable it, {HOW_TO_GET[name]}.")
        return "\n".join(lines)

    def require(self, name: str) -> Any:
        pipe = getattr(self, name)
        if pipe is None:
            label = {"nvs": "Novel-view model", "recon": "Reconstruction model"}[name]
            raise UserError(f"{label} unavailable: {self.problems.get(name)}. To enable it, {HOW_TO_GET[name]}.")
        return pipe

    # ------------------------------------------------------------------ input

    def set_source(self, session: Session, image: Any, remove_background: bool = True,
                   foreground_ratio: float = 0.85, elevation: float | None = None) -> PreprocessResult:
        """Open + preprocess an upload; the session's source from now on."""
        if image is None:
            raise UserError("drop an image first")
        if elevation is not None:
            view_knob("elevation", elevation, "input elevation")  # refused before the session's source changes
        try:
            check_foreground_ratio(foreground_ratio)
        except ImageInputError as e:
            raise UserError(str(e)) from None
        try:
            img = load_input_image(image)
            res = preprocess(img, remove_background=bool(remove_background),
                             foreground_ratio=foreground_ratio, size=256)
        except ImageInputError as e:
            raise UserError(f"Cannot use this image: {e}") from None
        session.source = res
        session.radius = self.default_radius
        session.encoded, session.encoded_key = None, None
        session.generated.clear()
        session.mesh = None
        session.version += 1
        if elevation is not None:
            self.set_elevation(session, elevation)
        self.sessions.notify(session.token, "source")
        return res

    def set_elevation(self, session: Session, elevation: float) -> None:
        el = view_knob("elevation", elevation, "input elevation")
        if el != session.elevation:
            session.elevation = el
            session.generated.clear()
            session.version += 1
            self.sessions.notify(session.token, "source")

    def _source(self, session: Session):
        if session.source is None:
            raise UserError("drop an image first")
        key = (id(session.source), session.elevation, session.radius)
        if session.encoded_key != key:
            pipe = self.require("nvs")
            session.encoded = pipe.encode_source(session.source.image, session.source_w2c)
            session.encoded_key = key
        return session.encoded

    # ------------------------------------------------------------------ novel views

    def stream_view(self, session: Session, azimuth: float, elevation: float, radius: float,
                    sampling: SamplingParams | None = None, cancel: Callable[[], bool] | None = None,
                    preview_scales=None) -> Iterator[Any]:
        """Frames of one target view, coarse first; stops early when ``cancel()`` turns True
        or the session gets a new source. ``sampling.samples`` > 1: the mean of that many draws."""
        pipe = self.require("nvs")
        if session.source is None:
            raise UserError("drop an image first")
        az, el, r = view_knob("azimuth", azimuth), view_knob("elevation", elevation), view_knob("distance", radius)
        sampling = SamplingParams.of(sampling)
        target = cameras.pose_from_spherical(az, el, r)
        version = session.version
        stop = lambda: (cancel is not None and cancel()) or session.version != version  # noqa: E731
        with self.compute:
            if stop():
                return
            try:
                src = self._source(session)
                frames = pipe.stream(src, session.source_w2c, target, sampling, preview_scales=preview_scales,
                                     cancel=stop)
            except ValueError as e:
                raise UserError(f"Cannot generate this view: {e}") from None
        # the lock is held per step, never across a yield: a consumer that stops iterating (a closed
        # browser tab) cannot block everybody else, and concurrent streams take turns scale by scale
        while True:
            with self.compute:
                if stop():
                    return
                try:
                    frame = next(frames, None)
                except ValueError as e:
                    raise UserError(f"Cannot generate this view: {e}") from None
            if frame is None:
                return
            if frame.is_final and session.version == version:
                session.generated = [g for g in session.generated
                                     if not np.allclose(g[0], target, atol=1e-4)] + [(target, frame.image)]
                session.generated = session.generated[-MAX_STRIP_VIEWS:]
            yield frame

    def sparse_previews(self, fractions=(0.3, 0.6, 0.8)) -> list[int] | None:
        """The guide (scale 0: shown at once, and all a camera still moving gets) and a few preview
        scales (plus the final one, always decoded): each decode costs about as much as sampling
        several scales, so a dragged camera gets 4-5 frames, not one per scale."""
        S = getattr(self.nvs, "num_scales", None)
        return None if not S else sorted({0} | {max(1, math.ceil(S * f)) for f in fractions} | {S})

    def views_around(self, session: Session, n: int = 6, elevation: float | None = None,
                     sampling: SamplingParams | None = None) -> list[tuple[Image.Image, str]]:
        """A strip of ``n`` generated views around the object (batch generation)."""
        pipe = self.require("nvs")
        n = check_strip_count(n)
        el = session.elevation if elevation is None else view_knob("elevation", elevation)
        azs = [360.0 * (i + 1) / (n + 1) for i in range(n)]
        targets = [cameras.pose_from_spherical(a, el, session.radius) for a in azs]
        sampling = SamplingParams.of(sampling)
        with self.compute:
            try:
                src = self._source(session)
                images = pipe.generate(src, session.source_w2c, targets, sampling)
            except ValueError as e:
                raise UserError(f"Cannot generate these views: {e}") from None
        session.generated = list(zip(targets, images))
        return [(im, f"azimuth {a:.0f}°") for im, a in zip(images, azs)]

    # ------------------------------------------------------------------ 3D

    def lift(self, session: Session, use_generated: bool = False, mesh_resolution: int = 128,
             progress: Callable[[float, str], None] | None = None) -> dict[str, Path]:
        """Reconstruct -> mesh -> GLB/PLY/OBJ in the session folder (atomic writes).

        The orbit animation is a separate, later step (``orbit``) so the download is ready first."""
        from core.mesh import export_glb   # deferred: core.mesh ships with the recon issue
        pipe = self.require("recon")
        if session.source is None:
            raise UserError("drop an image first")
        mesh_resolution = checked("mesh resolution", mesh_resolution, *MESH_RESOLUTION_RANGE, integer=True,
                                  error=UserError)
        say = progress or (lambda f, m: None)
        images, cams = [session.source.image], [session.source_w2c]
        note = ""
        if use_generated:
            # the photo plus as many generated views as the loaded model takes, spread around the orbit
            kept = spread(session.generated, self.max_lift_views - 1)
            if len(kept) < len(session.generated):
                note = f" ({len(kept)} of {len(session.generated)} generated views: the model takes {self.max_lift_views})"
            for w2c, im in kept:
                images.append(im)
                cams.append(w2c)
        version = session.version
        say(0.05, f"reconstructing from {len(images)} view(s){note}")
        with self.compute:
            try:
                scene = pipe.reconstruct(images, cams)
                say(0.4, "extracting the mesh")
                mesh = scene.extract_mesh(resolution=int(mesh_resolution))
            except ValueError as e:  # core's input/mesh errors are messages for the user
                raise UserError(f"Reconstruction failed: {e}") from None
        if session.version != version:
            raise UserError("A new photo arrived while lifting; press Lift to 3D again.")
        session.mesh, session.scene = mesh, scene
        say(0.8, "writing files")
        out = {"glb": session.write_atomic("object.glb", lambda p: export_glb(mesh, p)),
               "ply": session.write_atomic("object.ply", lambda p: mesh.export(p, file_type="ply")),
               "obj": session.write_atomic("object.obj", lambda p: mesh.export(p, file_type="obj"))}
        self.sessions.notify(session.token, "mesh")
        say(1.0, "done")
        return out

    def orbit(self, session: Session, frames: int = 16, size: int = 256) -> Path:
        """An orbit animation of the lifted object (GIF). Rasterises the exported mesh with the
        project's headless OpenGL renderer (tens of ms a frame); without EGL it volume-renders the
        triplane instead, smaller (seconds a frame on a CPU)."""
        if session.mesh is None:
            raise UserError("lift the object to 3D first")
        frames, size = int(clamp("orbit frames", frames, 4, 120)), int(clamp("orbit size", size, 32, 1024))
        mesh, w2cs = session.mesh, cameras.orbit(frames, session.elevation, session.radius)
        try:
            from core.data.render import Renderer, parts_from_trimesh
            r = Renderer(size=int(size))
        except Exception as e:  # no moderngl / EGL here: fall back to the NeRF renderer
            log.info("mesh renderer unavailable (%s); orbit from the triplane", e)
            with self.compute:
                try:
                    images = session.scene.render_orbit(n=max(4, int(frames) // 2), elevation_deg=session.elevation,
                                                        radius=session.radius, size=96)
                except RuntimeError as e:  # core.recon.render.RenderOOMError after its own retries
                    if "out of memory" not in str(e):
                        raise
                    raise UserError(f"Orbit skipped: {e}") from None
        else:
            try:
                r.set_asset(parts_from_trimesh(mesh))
                images = [r.render(w).image for w in w2cs]
            finally:
                r.release()
        return session.write_atomic("orbit.gif", lambda p: _save_gif(images, p))


def _save_gif(frames: list[Image.Image], path: Path) -> None:
    """An orbit as an animated GIF: plays in any browser with no video codec installed."""
    frames = [f.convert("RGB") for f in frames]
    frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:], duration=80, loop=0)
