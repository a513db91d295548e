"""The Gradio page: input photo, streamed novel views, the Viser 3D view, lift to 3D.

Handlers are plain functions of (session token, values) so tests call them directly.
Uploads are read with ``preprocess=False``: Gradio would otherwise open the file with
PIL before we can apply our own limits, and a bad file would surface as an opaque
error. We read the cached upload ourselves through ``core.preprocess`` (only from
Gradio's upload folder or ``assets/``) and turn every failure into a ``gr.Error``
that names the problem.
"""
from __future__ import annotations

import html
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import gradio as gr
from gradio.utils import get_upload_folder

from core import cameras
from core.nvs.sampling import KNOBS, SamplingParams, check_knob
from core.preprocess import FOREGROUND_RANGE, check_foreground_ratio
from viewer.backend import (ELEVATION_RANGE, MAX_STRIP_VIEWS, RADIUS_RANGE, Backend, UserError, check_strip_count, gpu,
                            ui_sampling)

log = logging.getLogger("vantage.viewer")
ASSETS = Path(__file__).resolve().parents[1] / "assets"
EXAMPLE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}


def user_error(message: str, title: str = "Error") -> gr.Error:
    """A problem the user can fix: shown in the page as is, logged as one line. Gradio prints a
    traceback for every other exception, which is what a bug should leave in the log."""
    log.info("refused: %s", message)
    return gr.Error(message, title=title, print_exception=False)


def ruled(component, check: Callable[[Any], Any]):
    """Check what reaches ``component`` (from the page or the API) by core's rule for its knob, in the
    command line's words, instead of Gradio's own bounds check (another wording, and a traceback in the
    log for each refusal). The component's range is the knob's range, so the page never trips it."""
    original = component.preprocess

    def preprocess(payload):
        try:
            check(payload)
        except ValueError as e:
            raise user_error(str(e), title="Bad input") from None
        return original(payload)
    component.preprocess = preprocess
    return component


def purge_gradio_copies(folder: Path, still_used=()) -> None:
    """Gradio serves every file a handler returns from a copy in its own cache
    (``<upload folder>/<hash of the file>/<name>``, ``processing_utils.save_file_to_cache``). When a
    session closes, its exports' copies go too, so a closed tab's meshes are no longer served. The copy
    is keyed by content: a live session (``still_used``: its folders) holding the same file keeps it."""
    from gradio import processing_utils
    cache = Path(get_upload_folder()).resolve()
    for f in Path(folder).glob("*"):
        if f.is_file() and not f.name.startswith("."):
            digest = processing_utils.hash_file(f)
            copy_dir = cache / digest
            if not (copy_dir / f.name).is_file():
                continue
            shared = any((g := Path(o) / f.name).is_file() and Path(o) != Path(folder)
                         and processing_utils.hash_file(g) == digest for o in still_used)
            if not shared:
                shutil.rmtree(copy_dir, ignore_errors=True)


def _purge_closed(store) -> Callable[[Path], None]:
    """``SessionStore.before_remove`` hook: a closing session's Gradio copies, unless another live
    session exported the same bytes (the same photo lifted twice gives one cached copy)."""
    def purge(folder: Path) -> None:
        purge_gradio_copies(folder, store.live_folders())
    purge.purges_gradio_copies = True
    return purge


def example_paths() -> list[str]:
    return sorted(str(p) for p in ASSETS.glob("*") if p.suffix.lower() in EXAMPLE_SUFFIXES)


class Handlers:
    """UI callbacks bound to one Backend; each maps problems to ``gr.Error``."""

    def __init__(self, backend: Backend, extra_read_roots: list[Path] | None = None):
        self.backend = backend
        self.read_roots = [Path(get_upload_folder()).resolve(), ASSETS.resolve()] + \
            [Path(p).resolve() for p in (extra_read_roots or [])]
        self._by_hash: dict[str, str] = {}

    # ---------------------------------------------------------------- sessions

    def new_session(self, request: gr.Request = None) -> tuple[str, str, str]:
        s = self.backend.sessions.new()
        if request is not None and getattr(request, "session_hash", None):
            self._by_hash[request.session_hash] = s.token
        return s.token, viser_iframe(s.token), f"Session code for a separate Viser tab: `{s.token}`"

    def end_session(self, request: gr.Request = None) -> None:
        """Tab closed: drop the session and its files now (gr.State's own cleanup waits an hour)."""
        token = self._by_hash.pop(getattr(request, "session_hash", None) or "", None)
        self.backend.sessions.close(token)

    def _session(self, token: str):
        s = self.backend.sessions.get(token)
        if s is None:
            raise user_error("Your session expired; reload the page.")
        return s

    # ---------------------------------------------------------------- input

    def _upload_path(self, payload: Any) -> Any:
        """The file behind a raw Gradio image payload, if it lies in a folder we may read."""
        if payload is None or isinstance(payload, (bytes, bytearray)):
            return payload
        path = payload.get("path") if isinstance(payload, dict) else getattr(payload, "path", payload)
        if path is None:
            raise user_error("The upload did not arrive; try again.")
        p = Path(str(path)).resolve()
        if not any(p.is_relative_to(root) for root in self.read_roots):
            raise user_error("Refusing to read a file outside the upload folder.")
        return p

    def process(self, token: str, payload: Any, remove_background: bool, foreground_ratio: float,
                elevation: float):
        """Upload/example/toggle -> processed image + status text."""
        session = self._session(token)
        if payload is None:
            session.source = None
            return None, "Drop a photo of an object (a plain background works best)."
        src = self._upload_path(payload)
        try:
            res = self.backend.set_source(session, src, remove_background, foreground_ratio, elevation)
        except UserError as e:
            raise user_error(str(e), title="Bad input") from None
        how = ("background removed" if res.background_removed else "background kept") + \
            (f" ({res.note})" if res.note else "")
        return res.image, f"Processed: object box {res.bbox}, {how}."

    def set_elevation(self, token: str, elevation: float) -> None:
        try:
            self.backend.set_elevation(self._session(token), elevation)
        except UserError as e:
            raise user_error(str(e)) from None

    # ---------------------------------------------------------------- novel views

    def generate(self, token: str, azimuth: float, elevation: float, distance: float,
                 seed: float, guidance: float, top_k: float, top_p: float, samples: float = 1):
        """Stream one view, coarse to fine: yields (image, label) per finished scale."""
        session = self._session(token)
        t0 = time.perf_counter()
        try:
            sampling = ui_sampling(seed, guidance, top_k, top_p, samples)
            for f in self.backend.stream_view(session, azimuth, elevation, distance, sampling):
                tag = "final" if f.is_final else "guide" if f.is_guide else "preview"
                note = f" · {f.note}" if f.note else ""
                yield f.image, f"**{tag}** · scale {f.scale}/{f.num_scales} · {time.perf_counter() - t0:.2f} s{note}"
        except UserError as e:
            raise user_error(str(e)) from None

    def views_around(self, token: str, n: float, seed: float, guidance: float, top_k: float, top_p: float,
                     samples: float = 1):
        try:  # every knob is clamped into its slider's range (NaN: an error)
            return self.backend.views_around(self._session(token), n,
                                             sampling=ui_sampling(seed, guidance, top_k, top_p, samples))
        except UserError as e:
            raise user_error(str(e)) from None

    # ---------------------------------------------------------------- 3D

    def lift(self, token: str, use_generated: bool, progress=gr.Progress()):
        """Reconstruct -> (GLB for Model3D, [GLB, PLY, OBJ], status); the orbit follows."""
        session = self._session(token)
        say = (lambda f, m: progress(f, desc=m)) if progress is not None else None
        t0 = time.perf_counter()
        try:
            out = self.backend.lift(session, use_generated=bool(use_generated), progress=say)
        except UserError as e:
            raise user_error(str(e)) from None
        files = [str(out[k]) for k in ("glb", "ply", "obj")]
        return (str(out["glb"]), files,
                f"Mesh ready in {time.perf_counter() - t0:.1f} s ({len(session.mesh.vertices)} vertices).")

    def orbit(self, token: str):
        session = self._session(token)
        if session.mesh is None:
            return None
        try:
            return str(self.backend.orbit(session))
        except UserError as e:
            raise user_error(str(e)) from None


def _camera(name: str, label: str | None = None) -> Callable[[Any], Any]:
    return lambda v: cameras.check_view_knob(name, v, label=label)


def _sampling(name: str) -> Callable[[Any], Any]:
    return lambda v: check_knob(name, v)


def viser_iframe(token: str | None) -> str:
    src = f"/viser/s/{html.escape(token)}/" if token else "/viser/"
    return (f'<iframe id="viser-frame" src="{src}" title="Vantage 3D view" '
            'style="width:100%;height:520px;border:1px solid #ddd;border-radius:8px" '
            'allow="fullscreen"></iframe>')


def build_demo(backend: Backend, exposed_warning: str | None = None) -> gr.Blocks:
    """The whole page; handler functions are reachable by ``api_name`` for gradio_client."""
    h = Handlers(backend)
    if not any(getattr(cb, "purges_gradio_copies", False) for cb in backend.sessions.before_remove):
        backend.sessions.before_remove.append(_purge_closed(backend.sessions))
    nvs_on, recon_on = backend.nvs_ready, backend.recon_ready
    # delete_cache: Gradio's own copies of outputs/uploads older than an hour are removed hourly
    with gr.Blocks(title="Vantage: one photo to novel views and 3D", delete_cache=(3600, 3600)) as demo:
        demo.handlers = h  # for tests
        token = gr.State("", delete_callback=backend.sessions.close)  # backstop for end_session
        gr.Markdown("# Vantage\nOne photo of an object → novel views streamed coarse to fine, "
                    "and a 3D mesh you can download.")
        if exposed_warning:
            gr.Markdown(f"⚠️ **{exposed_warning}**")
        gr.Markdown(backend.status_markdown(), elem_id="model-status")
        with gr.Row():
            with gr.Column(scale=1):
                image_in = gr.Image(label="Input photo (RGB or RGBA)", type="filepath", height=300,
                                    elem_id="input-image")
                with gr.Row():
                    remove_bg = gr.Checkbox(value=True, label="Remove background")
                    fg_ratio = ruled(gr.Slider(*FOREGROUND_RANGE, value=0.85, step=0.01, label="Foreground ratio"),
                                     check_foreground_ratio)
                elevation_in = ruled(gr.Slider(*ELEVATION_RANGE, value=round(backend.default_elevation), step=1,
                                               label="Input view elevation (estimate, degrees)",
                                               info="How far above the object the photo was taken; adjust if "
                                                    "views look tilted."), _camera("elevation", "input elevation"))
                processed = gr.Image(label="Processed input", type="pil", format="png", height=256, interactive=False,
                                     elem_id="processed-image")
                input_status = gr.Markdown("Drop a photo of an object (a plain background works best).")
                examples = example_paths()
                if examples:
                    gr.Examples(examples=examples, inputs=[image_in], label="Examples")
            with gr.Column(scale=1):
                gr.Markdown("### Novel view")
                # every slider spans its knob's range in core, and the API is held to the same rule
                azimuth = ruled(gr.Slider(*cameras.VIEW_RANGES["azimuth"], value=45, step=1,
                                          label="Azimuth (degrees)"), _camera("azimuth"))
                elevation_t = ruled(gr.Slider(*cameras.VIEW_RANGES["elevation"], value=round(backend.default_elevation),
                                              step=1, label="Elevation (degrees)"), _camera("elevation"))
                distance = ruled(gr.Slider(*RADIUS_RANGE, value=round(backend.default_radius, 2), step=0.05,
                                           label="Distance"), _camera("distance"))
                with gr.Accordion("Advanced", open=False):
                    d = SamplingParams()  # defaults and ranges: core.nvs.sampling.KNOBS
                    seed = ruled(gr.Number(value=d.seed, precision=0, minimum=KNOBS["seed"].lo,
                                           maximum=KNOBS["seed"].hi, label="Seed"), _sampling("seed"))
                    guidance = ruled(gr.Slider(KNOBS["cfg"].lo, KNOBS["cfg"].hi, value=d.cfg, step=0.1,
                                               label="Guidance (CFG)"), _sampling("cfg"))
                    top_k = ruled(gr.Slider(KNOBS["top_k"].lo, KNOBS["top_k"].hi, value=d.top_k, step=1,
                                            label="Top-k (0 = off)"), _sampling("top_k"))
                    top_p = ruled(gr.Slider(KNOBS["top_p"].lo, KNOBS["top_p"].hi, value=d.top_p, step=0.01,
                                            label="Top-p (0 or 1 = off)"), _sampling("top_p"))
                    samples = ruled(gr.Slider(KNOBS["samples"].lo, KNOBS["samples"].hi, value=d.samples, step=1,
                                              label="Average of N samples",
                                              info="The mean of N drawn views: nearer the expected view (higher "
                                                   "PSNR), softer, N times the sampling. Generate and the strip; "
                                                   "the 3D view draws one."), _sampling("samples"))
                gen_btn = gr.Button("Generate", variant="primary", interactive=nvs_on)
                # generated views go out losslessly (PNG, not Gradio's default WebP): users compare them
                view_out = gr.Image(label="Generated view", type="pil", format="png", height=256, interactive=False,
                                    elem_id="novel-view")
                view_label = gr.Markdown("", elem_id="novel-view-label")
                with gr.Row():
                    n_views = ruled(gr.Slider(2, MAX_STRIP_VIEWS, value=6, step=1, label="Views around the object"),
                                    check_strip_count)
                    strip_btn = gr.Button("Generate strip", interactive=nvs_on)
                strip = gr.Gallery(label="Views around the object", columns=6, height=180, format="png")
        gr.Markdown("### 3D view (drag to orbit: every move generates that view)")
        viser_html = gr.HTML(viser_iframe(None), elem_id="viser-view")
        session_md = gr.Markdown("")
        gr.Markdown("### Lift to 3D")
        with gr.Row():
            use_gen = gr.Checkbox(value=False, label="Also use the generated views")
            lift_btn = gr.Button("Lift to 3D", variant="primary", interactive=recon_on)
        lift_status = gr.Markdown("")
        with gr.Row():
            model3d = gr.Model3D(label="Mesh (GLB)", height=360, clear_color=(1, 1, 1, 1))
            orbit = gr.Image(label="Orbit of the mesh (animated)", type="filepath", height=360, interactive=False)
        downloads = gr.File(label="Downloads (GLB, PLY, OBJ)", file_count="multiple", interactive=False)

        demo.load(h.new_session, outputs=[token, viser_html, session_md], api_name="new_session",
                  api_description="Call this first, once per client: every other endpoint works on the session it "
                                  "opens (and answers 'Your session expired' without one).")
        demo.unload(h.end_session)
        proc_inputs = [token, image_in, remove_bg, fg_ratio, elevation_in]
        image_in.change(h.process, proc_inputs, [processed, input_status], preprocess=False,
                        api_name="process", concurrency_limit=4)
        for ev in (remove_bg.change, fg_ratio.release):
            ev(h.process, proc_inputs, [processed, input_status], preprocess=False,
               api_visibility="private", concurrency_limit=4)
        elevation_in.release(h.set_elevation, [token, elevation_in], None, api_name="set_elevation")
        gen_btn.click(gpu(h.generate), [token, azimuth, elevation_t, distance, seed, guidance, top_k, top_p, samples],
                      [view_out, view_label], api_name="generate", concurrency_limit=2)
        strip_btn.click(gpu(h.views_around), [token, n_views, seed, guidance, top_k, top_p, samples], strip,
                        api_name="views_around")
        lift_btn.click(gpu(h.lift), [token, use_gen], [model3d, downloads, lift_status], api_name="lift") \
            .success(h.orbit, [token], [orbit], api_name="orbit")
    return demo
