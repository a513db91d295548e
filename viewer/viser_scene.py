"""Viser side of the app: one private scene per connected browser tab.

Each Viser client belongs to one app session (the token is in the proxied websocket
path, ``/viser/s/<token>``, or typed into the client's own "session code" box). Per
client we keep: the source camera frustum with the input image, the client's own
camera as the target camera, a worker thread that turns the newest camera into a
streamed view (coarse frames first, painted with ``client.scene.set_background_image``),
and the last reconstructed mesh. Everything goes through ``client.scene``/``client.gui``,
never ``server.scene``/``server.gui``, so no tab ever sees another's state. A newer
camera move bumps a generation counter that the running stream polls: stale work stops
after at most one scale (once it has shown its first coarse preview, so a continuous drag
still gets visual feedback).
"""
from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import viser
import viser.transforms as vtf
from PIL import Image

from core import cameras
from viewer.backend import Backend, UserError

log = logging.getLogger("vantage.viewer")

MIN_MOVE_DEG = 0.25   # camera updates smaller than this (e.g. echoes of our own set) are ignored


def spherical_from_position(p: np.ndarray) -> tuple[float, float, float]:
    """(azimuth, elevation, radius) in DESIGN.md's convention of a camera centre."""
    x, y, z = (float(v) for v in p)
    r = math.sqrt(x * x + y * y + z * z)
    if r < 1e-6:
        return 0.0, 0.0, 1e-6
    return math.degrees(math.atan2(y, x)), math.degrees(math.asin(max(-1.0, min(1.0, z / r)))), r


def opencv_pose(w2c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Our OpenGL-axes world-to-camera -> Viser's (wxyz, position) of an OpenCV camera."""
    R, t = w2c[:, :3].astype(np.float64), w2c[:, 3].astype(np.float64)
    c2w = R.T @ np.diag([1.0, -1.0, -1.0])           # flip y and z: OpenGL -> OpenCV camera axes
    return vtf.SO3.from_matrix(c2w).wxyz, -R.T @ t


def fit_to_viewport(img: Image.Image, width: int, height: int) -> np.ndarray:
    """Centre a square frame (rendered with the viewport's vertical FOV) in the viewport's
    aspect: white side bands for wide windows, a centre crop for tall ones."""
    s = img.size[1]
    aspect = width / height if width > 0 and height > 0 else 1.0
    w = max(1, int(round(s * aspect)))
    arr = np.asarray(img.convert("RGB"))
    if w == s:
        return arr
    if w > s:
        out = np.full((s, w, 3), 255, np.uint8)
        x0 = (w - s) // 2
        out[:, x0:x0 + s] = arr
        return out
    x0 = (s - w) // 2
    return np.ascontiguousarray(arr[:, x0:x0 + w])


@dataclass
class ClientState:
    client: viser.ClientHandle
    token: str | None = None
    generation: int = 0
    pending: tuple[float, float, float] | None = None
    last_request: tuple[float, float, float] | None = None
    closed: bool = False
    cond: threading.Condition = field(default_factory=threading.Condition)
    status: object = None
    mesh_handle: object = None
    show_views: object = None      # per-client GUI checkboxes
    show_mesh: object = None
    requested_at: float = 0.0
    frames_sent: int = 0
    timings: list[dict] = field(default_factory=list)   # per finished request, for the benchmark


class ViserScene:
    """Owns the ViserServer (loopback only: the public door is the proxy)."""

    def __init__(self, backend: Backend, host: str = "127.0.0.1", port: int = 0, jpeg_quality: int = 85):
        self.backend = backend
        self.jpeg_quality = jpeg_quality
        self.server = viser.ViserServer(host=host, port=port, label="Vantage", verbose=False)
        self.server.scene.set_up_direction("+z")
        self.clients: dict[int, ClientState] = {}
        self._lock = threading.Lock()
        self.server.on_client_connect(self._on_connect)
        self.server.on_client_disconnect(self._on_disconnect)
        backend.sessions.listeners.append(self._on_session_event)

    @property
    def port(self) -> int:
        return self.server.get_port()

    def stop(self) -> None:
        for st in list(self.clients.values()):
            self._close(st)
        self.server.stop()

    # ------------------------------------------------------------------ connection

    def _token_from_path(self, client: viser.ClientHandle) -> str | None:
        """The session token the proxy put in the websocket path (``/s/<token>``), if any."""
        try:  # viser keeps the raw connection privately; fall back to the GUI code box if it moves
            conn = self.server._websock_server._live_connections[client.client_id]
            parts = conn.request.path.split("?")[0].strip("/").split("/")
        except Exception:
            return None
        return parts[1] if len(parts) == 2 and parts[0] == "s" else None

    def _on_connect(self, client: viser.ClientHandle) -> None:
        st = ClientState(client)
        with self._lock:
            self.clients[client.client_id] = st
        gui = client.gui
        st.status = gui.add_markdown("Connecting…")
        code = gui.add_text("Session code", initial_value="", hint="Shown under the 3D view in the app")
        home = gui.add_button("Back to the input view")
        home.on_click(lambda _event: self._show_source(st))
        st.show_views = gui.add_checkbox("Generate views while orbiting", initial_value=True)
        st.show_mesh = gui.add_checkbox("Show lifted mesh", initial_value=True)

        @st.show_views.on_update
        def _(_event) -> None:
            if st.show_views.value:
                st.last_request = None
                self._request(st, spherical_from_position(np.asarray(client.camera.position)))
            else:
                with st.cond:
                    st.generation += 1          # stop the stream in flight
                client.scene.set_background_image(None)

        @st.show_mesh.on_update
        def _(_event) -> None:
            if st.mesh_handle is not None:
                st.mesh_handle.visible = bool(st.show_mesh.value)

        @code.on_update
        def _(_event) -> None:
            self._attach(st, code.value.strip())

        client.camera.on_update(lambda cam: self._on_camera(st, cam))
        threading.Thread(target=self._worker, args=(st,), daemon=True, name=f"viser-client-{client.client_id}").start()
        self._attach(st, self._token_from_path(client))

    def _on_disconnect(self, client: viser.ClientHandle) -> None:
        with self._lock:
            st = self.clients.pop(client.client_id, None)
        if st is not None:
            self._close(st)

    def _close(self, st: ClientState) -> None:
        with st.cond:
            st.closed = True
            st.generation += 1
            st.cond.notify_all()

    def _say(self, st: ClientState, text: str) -> None:
        try:
            st.status.content = text
        except Exception:
            pass

    def _attach(self, st: ClientState, token: str | None) -> None:
        """Bind this client to a session (or to none) and show that session's source."""
        session = self.backend.sessions.get(token)
        st.token = session.token if session else None
        if session is None:
            self._say(st, "Open this view from the app page (or paste its session code below).")
            return
        self._show_source(st)
        if session.mesh is not None:
            self._show_mesh(st)

    def _show_source(self, st: ClientState) -> None:
        session = self.backend.sessions.get(st.token)
        client = st.client
        if session is None or session.source is None:
            self._say(st, "Drop an image in the app: its camera and the generated views appear here.")
            return
        wxyz, pos = opencv_pose(session.source_w2c)
        client.scene.add_camera_frustum(
            "/source_camera", fov=math.radians(cameras.DEFAULT_FOV_DEG), aspect=1.0, scale=0.25,
            image=np.asarray(session.source.image.resize((128, 128))), format="jpeg",
            wxyz=wxyz, position=pos, color=(255, 120, 0))
        client.camera.fov = math.radians(cameras.DEFAULT_FOV_DEG)
        client.camera.position = tuple(pos)      # position first: it drags look_at along
        client.camera.look_at = (0.0, 0.0, 0.0)
        client.scene.set_background_image(
            fit_to_viewport(session.source.image, client.camera.image_width, client.camera.image_height),
            format="jpeg", jpeg_quality=self.jpeg_quality)
        if self.backend.nvs_ready:
            self._say(st, "Orbit the camera: each move generates that view (coarse first).")
        else:
            self._say(st, "Novel-view model unavailable:\n\n" + self.backend.status_markdown())
        st.last_request = None
        self._request(st, spherical_from_position(pos))

    def _show_mesh(self, st: ClientState) -> None:
        session = self.backend.sessions.get(st.token)
        if session is not None and session.mesh is not None:
            st.mesh_handle = st.client.scene.add_mesh_trimesh("/object_mesh", session.mesh)
            st.mesh_handle.visible = st.show_mesh is None or bool(st.show_mesh.value)

    def _on_session_event(self, token: str, event: str) -> None:
        for st in list(self.clients.values()):
            if st.token != token:
                continue
            try:
                if event == "source":
                    if st.mesh_handle is not None:
                        st.mesh_handle.remove()
                        st.mesh_handle = None
                    self._show_source(st)
                elif event == "mesh":
                    self._show_mesh(st)
                elif event == "closed":
                    st.token = None
                    with st.cond:
                        st.generation += 1
                    self._say(st, "The app session ended; reload the app page.")
            except Exception:
                log.exception("viser update for session event %s failed", event)

    # ------------------------------------------------------------------ camera -> view

    def _on_camera(self, st: ClientState, cam) -> None:
        """A drag is not a typed value: past a camera knob's range it shows the nearest allowed view."""
        az, el, r = spherical_from_position(np.asarray(cam.position))
        (elo, ehi), (rlo, rhi) = cameras.VIEW_RANGES["elevation"], cameras.VIEW_RANGES["distance"]
        self._request(st, (az, min(max(el, elo), ehi), min(max(r, rlo), rhi)))

    def _request(self, st: ClientState, view: tuple[float, float, float]) -> None:
        if st.last_request is not None:
            d = max(abs((view[0] - st.last_request[0] + 180) % 360 - 180), abs(view[1] - st.last_request[1]),
                    abs(view[2] - st.last_request[2]) * 20)
            if d < MIN_MOVE_DEG:
                return
        with st.cond:
            st.last_request = view
            st.pending = view
            st.generation += 1          # cancels the stream in flight
            st.requested_at = time.perf_counter()
            st.cond.notify_all()

    def _worker(self, st: ClientState) -> None:
        while True:
            with st.cond:
                while st.pending is None and not st.closed:
                    st.cond.wait()
                if st.closed:
                    return
                view, st.pending = st.pending, None
                gen, t0 = st.generation, st.requested_at
            session = self.backend.sessions.get(st.token)
            if session is None or session.source is None or not self.backend.nvs_ready or \
                    (st.show_views is not None and not st.show_views.value):
                continue
            rec = {"view": view, "first_s": None, "final_s": None, "frames": 0}
            # a superseded request still shows its first (coarse) preview, so a continuous drag
            # follows the mouse at preview rate instead of showing nothing until the mouse stops
            stale = lambda: st.closed or (st.generation != gen and rec["frames"] > 0)  # noqa: E731
            try:
                for frame in self.backend.stream_view(session, *view, cancel=stale,
                                                      preview_scales=self.backend.sparse_previews()):
                    if stale():
                        break
                    cam = st.client.camera
                    st.client.scene.set_background_image(
                        fit_to_viewport(frame.image, cam.image_width, cam.image_height),
                        format="jpeg", jpeg_quality=self.jpeg_quality)
                    label = "final" if frame.is_final else "guide" if frame.is_guide else "preview"
                    self._say(st, f"**{label}** · scale {frame.scale}/{frame.num_scales} · "
                                  f"{time.perf_counter() - t0:.2f} s · azimuth {view[0]:.0f}°, "
                                  f"elevation {view[1]:.0f}°, distance {view[2]:.2f}"
                                  + (f" · {frame.note}" if frame.note else ""))
                    st.client.flush()
                    st.frames_sent += 1
                    rec["frames"] += 1
                    dt = time.perf_counter() - t0
                    rec["first_s"] = rec["first_s"] if rec["first_s"] is not None else dt
                    if frame.is_final:
                        rec["final_s"] = dt
            except UserError as e:
                self._say(st, str(e))
            except Exception as e:  # keep the client alive; say what happened
                log.exception("view generation failed")
                self._say(st, f"Generation failed: {type(e).__name__}: {e}")
            if rec["frames"]:
                st.timings = (st.timings + [rec])[-100:]
