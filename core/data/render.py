"""Headless rasteriser for the multi-view dataset: moderngl on EGL (Mesa llvmpipe on CPU).

A mesh is turned into :class:`Part` lists (unrolled triangles, so textured, vertex-coloured
and plain-coloured geometry all share one shader), normalised (DESIGN.md: bounding-box
centre at the origin, largest extent 1.0) and rendered per view to RGB on white, an
anti-aliased alpha mask (4x MSAA) and depth along the viewing direction (``cameras.project``'s
depth; 0 on the background).

Lighting: Lambertian, ambient plus three directional lights fixed in the *world* frame (a key
light from above, two side fills), so a surface point has the same colour in every view: the
multi-view consistency that the reconstruction NeRF (view-independent colour) assumes.
Faces are lit two-sided (many assets have inconsistent winding).

Projection: the OpenGL matrix is built from the same ``K`` as ``cameras.intrinsics`` (vertical
FOV, principal point at the centre, pixel centres at +0.5); GL's bottom-up rows are flipped
so that row 0 is the top (v down).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from core import cameras

if TYPE_CHECKING:
    import trimesh

MAX_TEXTURE = 512  # textures are shrunk to this: enough for 128-256 px renders, keeps uploads cheap
DEFAULT_COLOR = (0.72, 0.72, 0.72, 1.0)
MIN_OBJECT_FRACTION = 1e-3  # a view whose mask covers less shows nothing (a sheet edge-on, a cut-out texture)
LIGHTS = (  # (direction towards the light in world space, intensity)
    ((0.3, 0.2, 1.0), 0.45),
    ((1.0, -0.8, 0.3), 0.25),
    ((-0.9, 0.9, 0.1), 0.2),
)
AMBIENT = 0.35


@dataclass(frozen=True)
class Lighting:
    """Three directional lights fixed in the world frame (so a surface keeps its colour from every
    view of one object), an ambient term and a colour tint. The default is the v1 corpus's fixed rig."""
    directions: tuple = tuple(d for d, _ in LIGHTS)
    intensities: tuple = tuple(k for _, k in LIGHTS)
    ambient: float = AMBIENT
    tint: tuple = (1.0, 1.0, 1.0)

    def to_dict(self) -> dict:
        return {"directions": [list(map(float, d)) for d in self.directions],
                "intensities": list(map(float, self.intensities)), "ambient": float(self.ambient),
                "tint": list(map(float, self.tint))}


def random_lighting(rng: np.random.Generator) -> Lighting:
    """A photo-like rig per object: a key light from a random azimuth 20-70 deg up, a weaker fill from
    the other side, a rim light; key/fill/ambient balance and overall exposure vary, and the colour
    temperature leans warm or cool a little (tungsten to overcast daylight)."""
    def direction(az_deg, el_deg):
        a, e = math.radians(az_deg), math.radians(el_deg)
        return (math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e))
    key_az = rng.uniform(0, 360)
    key = rng.uniform(0.45, 0.8)
    fill = key * rng.uniform(0.15, 0.6)
    rim = rng.uniform(0.0, 0.3)
    ambient = rng.uniform(0.2, 0.45)
    exposure = rng.uniform(0.85, 1.1) / max(1.0, (ambient + key + fill + rim) / 1.3)
    warm = rng.uniform(-1.0, 1.0)   # -1 cool ... +1 warm
    tint = (1.0 + 0.06 * warm, 1.0, 1.0 - 0.08 * warm)
    return Lighting((direction(key_az, rng.uniform(20, 70)), direction(key_az + 180 + rng.uniform(-40, 40),
                                                                         rng.uniform(0, 40)),
                     direction(key_az + 90 + rng.uniform(-30, 30), rng.uniform(-10, 30))),
                    (key * exposure, fill * exposure, rim * exposure), ambient * exposure, tint)


class MeshError(ValueError):
    """A mesh file that cannot be rendered (unreadable, no triangles, ...); names the file."""


@dataclass
class Part:
    """Triangles sharing one texture: all arrays are per corner, ``[F, 3, ...]``."""
    positions: np.ndarray  # [F,3,3] float32
    normals: np.ndarray  # [F,3,3] float32 (shading normals, creased)
    colors: np.ndarray  # [F,3,4] float32 in [0,1], multiplied with the texture
    uv: np.ndarray | None = None  # [F,3,2] float32, OpenGL convention (v up)
    texture: Image.Image | None = None


@dataclass
class Asset:
    """A normalised object ready to render, with its provenance for ``meta.json``."""
    parts: list[Part]
    mesh: "trimesh.Trimesh"  # geometry in the world frame, for mesh.ply
    source: str = ""
    licence: str | None = None
    normalisation: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- mesh -> parts

def _crease_normals(mesh, angle_deg: float = 35.0) -> np.ndarray:
    """Smooth vertex normals except where they deviate from the face normal (sharp edges)."""
    fn = mesh.face_normals.astype(np.float32)
    vn = mesh.vertex_normals[mesh.faces].astype(np.float32)
    sharp = (vn * fn[:, None]).sum(-1) < math.cos(math.radians(angle_deg))
    vn[sharp] = np.broadcast_to(fn[:, None], vn.shape)[sharp]
    return vn


def _texture_image(material) -> Image.Image | None:
    img = getattr(material, "image", None)
    if img is None:
        img = getattr(material, "baseColorTexture", None)
    if img is None:
        return None
    img = img.convert("RGBA")
    if max(img.size) > MAX_TEXTURE:
        s = MAX_TEXTURE / max(img.size)
        img = img.resize((max(1, round(img.size[0] * s)), max(1, round(img.size[1] * s))), Image.Resampling.BOX)
    return img


def parts_from_trimesh(mesh, transform: np.ndarray | None = None, color: tuple | None = None) -> list[Part]:
    """One trimesh geometry -> Parts. ``color`` (RGBA in [0,1], e.g. a URDF material) replaces
    the mesh's own colour unless the mesh is textured."""
    mesh = mesh.copy()
    if transform is not None:
        mesh.apply_transform(transform)
    if len(mesh.faces) == 0:
        return []
    faces = mesh.faces
    pos = mesh.vertices[faces].astype(np.float32)
    nrm = _crease_normals(mesh)
    vis = mesh.visual
    uv = tex = None
    cols = None
    if getattr(vis, "kind", None) == "texture":
        mat = getattr(vis, "material", None)
        tex = _texture_image(mat)
        if tex is not None and vis.uv is not None and len(vis.uv) == len(mesh.vertices):
            uv = np.asarray(vis.uv, dtype=np.float32)[faces]
            factor = getattr(mat, "baseColorFactor", None)  # PBR multiplies; OBJ's Kd is ignored with a map
            base = np.asarray(factor, dtype=np.float32) / 255.0 if factor is not None else np.ones(4, np.float32)
            cols = np.broadcast_to(base, (*faces.shape, 4))
        else:
            tex = None
            main = getattr(mat, "main_color", None)
            if main is not None and color is None:
                cols = np.broadcast_to(np.asarray(main, np.float32) / 255.0, (*faces.shape, 4))
    elif getattr(vis, "kind", None) == "vertex" and color is None:
        cols = np.asarray(vis.vertex_colors, dtype=np.float32)[faces] / 255.0
    elif getattr(vis, "kind", None) == "face" and color is None:
        fc = np.asarray(vis.face_colors, dtype=np.float32) / 255.0
        cols = np.broadcast_to(fc[:, None], (*faces.shape, 4))
    if cols is None:
        cols = np.broadcast_to(np.asarray(color or DEFAULT_COLOR, np.float32), (*faces.shape, 4))
    cols = np.array(cols, dtype=np.float32)
    cols[..., 3] = 1.0  # opaque: transparency is not part of the dataset
    return [Part(pos, nrm, cols, uv, tex)]


def parts_from_scene(scene, transform: np.ndarray | None = None, color: tuple | None = None) -> list[Part]:
    """Every triangle mesh of a trimesh Scene (or a single Trimesh), placed by its scene graph."""
    import trimesh
    base = np.eye(4) if transform is None else np.asarray(transform, dtype=np.float64)
    if isinstance(scene, trimesh.Trimesh):
        return parts_from_trimesh(scene, base, color)
    parts = []
    for node in scene.graph.nodes_geometry:
        mat, name = scene.graph[node]
        geom = scene.geometry[name]
        if isinstance(geom, trimesh.Trimesh):
            parts += parts_from_trimesh(geom, base @ mat, color)
    return parts


UP_TRANSFORMS = {
    "z": np.eye(4),
    # +Y-up assets (glTF): (a, b, c) -> world (c, a, b), the inverse of export's (x,y,z)->(y,z,x)
    "y": np.array([[0, 0, 1, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=np.float64),
}


def _up_axis(path: Path, up: str | None) -> str:
    return "y" if Path(path).suffix.lower() in (".glb", ".gltf") else (up or "z")


def load_parts(path: str | Path, up: str | None = None, color: tuple | None = None) -> list[Part]:
    """Load OBJ/GLB/GLTF/PLY/STL/DAE through trimesh into world-frame (+Z up) parts.

    ``up`` is the asset's up axis (default ``z``); glTF/GLB are always ``y`` (the format's rule)."""
    import trimesh
    path = Path(path)
    if not path.is_file():
        raise MeshError(f"{path}: missing")
    up = _up_axis(path, up)
    if up not in UP_TRANSFORMS:
        raise MeshError(f"up axis must be one of {sorted(UP_TRANSFORMS)}, got {up!r}")
    try:
        scene = trimesh.load(str(path), force="scene")
    except Exception as e:  # trimesh raises many kinds; all mean "cannot read this file"
        raise MeshError(f"{path}: cannot load mesh ({type(e).__name__}: {e})") from None
    parts = parts_from_scene(scene, UP_TRANSFORMS[up], color)
    if not parts:
        raise MeshError(f"{path}: no triangles")
    return parts


def normalise(parts: list[Part]) -> tuple[list[Part], np.ndarray, float]:
    """Move the bounding-box centre to the origin and scale the largest extent to 1.0.

    Returns ``(parts, center, scale)`` with ``world = (p - center) * scale``."""
    pts = np.concatenate([p.positions.reshape(-1, 3) for p in parts])
    if len(pts) == 0 or not np.all(np.isfinite(pts)):
        raise MeshError("mesh has no finite vertices")
    lo, hi = pts.min(0).astype(np.float64), pts.max(0).astype(np.float64)
    extent = float((hi - lo).max())
    if extent <= 1e-9:
        raise MeshError("mesh is degenerate (zero extent)")
    center, scale = (lo + hi) / 2, 1.0 / extent
    out = [Part(((p.positions - center) * scale).astype(np.float32), p.normals, p.colors, p.uv, p.texture)
           for p in parts]
    return out, center, scale


def parts_to_trimesh(parts: list[Part]):
    """Merged geometry of the parts (for ``mesh.ply``; the renderer's triangles, welded)."""
    import trimesh
    pos = np.concatenate([p.positions.reshape(-1, 3) for p in parts]).astype(np.float64)
    faces = np.arange(len(pos)).reshape(-1, 3)
    mesh = trimesh.Trimesh(pos, faces, process=False)
    mesh.merge_vertices()
    return mesh


def make_asset(parts: list[Part], source: str = "", licence: str | None = None, up: str = "z") -> Asset:
    parts, center, scale = normalise(parts)
    return Asset(parts, parts_to_trimesh(parts), source, licence,
                 {"up": up, "center": [float(c) for c in center], "scale": float(scale),
                  "formula": "world = (up_mapped_source - center) * scale"})


def load_asset(path: str | Path, up: str | None = None, licence: str | None = None) -> Asset:
    parts = load_parts(path, up)
    try:
        return make_asset(parts, str(path), licence, _up_axis(path, up))
    except MeshError as e:
        raise MeshError(f"{path}: {e}") from None


# ----------------------------------------------------------------------------- GL renderer

_VERT = """
#version 330
uniform mat4 view;
uniform mat4 proj;
in vec3 in_pos; in vec3 in_normal; in vec4 in_color; in vec2 in_uv;
out vec3 v_normal; out vec4 v_color; centroid out vec2 v_uv; centroid out vec3 v_cam;
void main() {
    vec4 pc = view * vec4(in_pos, 1.0);
    v_cam = pc.xyz;
    v_normal = in_normal;
    v_color = in_color;
    v_uv = in_uv;
    gl_Position = proj * pc;
}
"""

_FRAG = """
#version 330
uniform sampler2D tex;
uniform bool use_tex;
uniform vec3 light_dir[3];
uniform float light_k[3];
uniform float ambient;
uniform vec3 light_tint;  // the lights' colour (colour temperature); white = (1, 1, 1)
uniform vec3 cam_pos;
uniform mat3 cam_rot;
in vec3 v_normal; in vec4 v_color; centroid in vec2 v_uv; centroid in vec3 v_cam;  // centroid: MSAA edge pixels
// are shaded inside the triangle, so depth and texture are never extrapolated
layout(location = 0) out vec4 f_color;
layout(location = 1) out uint f_depth;
void main() {
    vec4 base = v_color;
    if (use_tex) {
        vec4 t = texture(tex, v_uv);
        if (t.a < 0.5) discard;  // cut-out textures (foliage, decals)
        base *= vec4(t.rgb, 1.0);
    }
    vec3 n = v_normal;
    if (dot(n, n) < 1e-12) {  // degenerate normal: use the geometric one (world space)
        n = transpose(cam_rot) * cross(dFdx(v_cam), dFdy(v_cam));
    }
    n = normalize(n);
    vec3 world_pt = transpose(cam_rot) * v_cam + cam_pos;
    if (dot(n, cam_pos - world_pt) < 0.0) n = -n;  // two-sided lighting
    float light = ambient;
    for (int i = 0; i < 3; ++i) light += light_k[i] * max(dot(n, light_dir[i]), 0.0);
    f_color = vec4(clamp(base.rgb * light * light_tint, 0.0, 1.0), 1.0);
    f_depth = floatBitsToUint(max(-v_cam.z, 0.0));  // integer: the MSAA resolve picks one sample, never a blend
}
"""


def gl_projection(fov_deg: float, size: int, near: float, far: float) -> np.ndarray:
    """OpenGL clip matrix equal to ``cameras.intrinsics(fov_deg, size)`` on the image plane."""
    K = cameras.intrinsics(fov_deg, size)
    f, c = float(K[1, 1]), size / 2
    P = np.zeros((4, 4))
    P[0, 0] = 2 * f / size
    P[1, 1] = 2 * f / size
    P[0, 2] = 1 - 2 * K[0, 2] / size  # 0 for a centred principal point, kept for clarity
    P[1, 2] = 2 * c / size - 1
    P[2, 2] = -(far + near) / (far - near)
    P[2, 3] = -2 * far * near / (far - near)
    P[3, 2] = -1
    return P


@dataclass
class RenderResult:
    image: Image.Image  # RGB on white
    alpha: np.ndarray  # HxW uint8
    depth: np.ndarray  # HxW float32, 0 on the background


class NoGLError(RuntimeError):
    """No OpenGL here: moderngl or Mesa's libEGL is missing, or no headless context can be made."""


class Renderer:
    """One EGL context + MSAA framebuffer; ``set_asset`` uploads an object, ``render`` a view.

    Create one per process (contexts do not survive ``fork``)."""

    def __init__(self, size: int = 128, fov_deg: float = cameras.DEFAULT_FOV_DEG, samples: int = 4):
        try:
            import moderngl
            self.ctx = moderngl.create_context(standalone=True, backend="egl")
        except Exception as e:
            raise NoGLError(f"cannot create a headless EGL OpenGL context ({e}); "
                            "needs Mesa's libEGL (apt: libegl1 libgl1-mesa-dri)") from None
        self.size, self.fov_deg = int(size), float(fov_deg)
        samples = min(samples, self.ctx.max_samples)
        self.prog = self.ctx.program(vertex_shader=_VERT, fragment_shader=_FRAG)
        s = (self.size, self.size)
        self.msaa = self.ctx.framebuffer(
            [self.ctx.renderbuffer(s, 4, samples=samples), self.ctx.renderbuffer(s, 1, samples=samples, dtype="u4")],
            self.ctx.depth_renderbuffer(s, samples=samples))
        self.resolved = self.ctx.framebuffer([self.ctx.renderbuffer(s, 4), self.ctx.renderbuffer(s, 1, dtype="u4")])
        self.white = self.ctx.texture((1, 1), 4, bytes([255, 255, 255, 255]))
        self.set_lighting(Lighting())
        self.prog["tex"].value = 0
        self._objects: list = []

    def set_lighting(self, lighting: Lighting) -> None:
        self.ctx.__enter__()  # current on this thread: another Renderer may have been made since (see render)
        dirs = [np.asarray(d, np.float64) / np.linalg.norm(d) for d in lighting.directions]
        self.prog["light_dir"].value = [tuple(d.tolist()) for d in dirs]
        self.prog["light_k"].value = [float(k) for k in lighting.intensities]
        self.prog["ambient"].value = float(lighting.ambient)
        self.prog["light_tint"].value = tuple(float(t) for t in lighting.tint)

    def set_asset(self, asset: Asset | list[Part]) -> None:
        self.ctx.__enter__()
        self.release_asset()
        parts = asset.parts if isinstance(asset, Asset) else asset
        for p in parts:
            n = p.positions.shape[0] * 3
            uv = p.uv if p.uv is not None else np.zeros((p.positions.shape[0], 3, 2), np.float32)
            data = np.concatenate([p.positions.reshape(n, 3), p.normals.reshape(n, 3),
                                   p.colors.reshape(n, 4), uv.reshape(n, 2)], axis=1).astype("f4")
            vbo = self.ctx.buffer(data.tobytes())
            vao = self.ctx.vertex_array(self.prog, [(vbo, "3f 3f 4f 2f", "in_pos", "in_normal", "in_color", "in_uv")])
            tex = None
            if p.texture is not None and p.uv is not None:
                img = p.texture.convert("RGBA").transpose(Image.Transpose.FLIP_TOP_BOTTOM)  # GL rows: bottom first
                tex = self.ctx.texture(img.size, 4, img.tobytes())
                tex.build_mipmaps()
                tex.repeat_x = tex.repeat_y = True
            self._objects.append((vbo, vao, tex))

    def release_asset(self) -> None:
        for vbo, vao, tex in self._objects:
            vao.release()
            vbo.release()
            if tex is not None:
                tex.release()
        self._objects = []

    def render(self, w2c: np.ndarray) -> RenderResult:
        # GL calls go to the thread's current context: with two Renderers in one process (the app's orbit
        # and a data job, two test fixtures) the one made last would silently receive this one's draws
        self.ctx.__enter__()
        w2c = np.asarray(w2c, dtype=np.float64)
        dist = float(np.linalg.norm(cameras.camera_center(w2c)))
        near, far = max(0.01, dist - 2.0) * 0.5, dist + 2.0  # objects fit in the unit cube
        view = np.eye(4)
        view[:3] = w2c[:3, :4]
        self.prog["view"].write(view.T.astype("f4").tobytes())
        self.prog["proj"].write(gl_projection(self.fov_deg, self.size, near, far).T.astype("f4").tobytes())
        self.prog["cam_pos"].value = tuple(cameras.camera_center(w2c).tolist())
        self.prog["cam_rot"].write(w2c[:3, :3].T.astype("f4").tobytes())  # column-major upload of R
        self.msaa.use()
        self.msaa.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)
        self.ctx.enable(self.ctx.DEPTH_TEST)
        self.ctx.disable(self.ctx.CULL_FACE)
        for _, vao, tex in self._objects:
            (tex or self.white).use(0)
            self.prog["use_tex"].value = tex is not None
            vao.render()
        self.ctx.copy_framebuffer(self.resolved, self.msaa)
        s = self.size
        rgba = np.frombuffer(self.resolved.read(components=4, attachment=0), np.uint8).reshape(s, s, 4)[::-1]
        depth = np.frombuffer(self.resolved.read(components=1, attachment=1, dtype="u4"), np.uint32)
        depth = depth.view(np.float32).reshape(s, s)[::-1].copy()  # one real surface sample per pixel
        a = rgba[..., 3:4].astype(np.float32) / 255.0
        rgb = rgba[..., :3].astype(np.float32) + (1.0 - a) * 255.0  # premultiplied over white
        alpha = rgba[..., 3].copy()
        image = Image.fromarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8), "RGB")
        return RenderResult(image, alpha, depth)

    def release(self) -> None:
        self.release_asset()
        self.ctx.release()


# ----------------------------------------------------------------------------- views and writing

def sample_views(n: int, rng: np.random.Generator, elevation_range=(-10.0, 45.0),
                 radius_range=(1.5, 2.2)) -> list[tuple[float, float, float]]:
    """``n`` random (azimuth, elevation, radius): azimuth uniform in [0, 360), elevation and
    radius uniform in their ranges. Every view is random, view 000 included (ArchonView)."""
    az = rng.uniform(0.0, 360.0, n)
    el = rng.uniform(*elevation_range, n)
    r = rng.uniform(*radius_range, n)
    return [(float(a), float(e), float(d)) for a, e, d in zip(az, el, r)]


def write_object(renderer: Renderer, asset: Asset, folder: str | Path, views: list[tuple[float, float, float]],
                 depth_dtype: str = "float16", write_mesh: bool = True, extra_meta: dict | None = None,
                 compress_depth: bool = False) -> Path:
    """Render ``views`` of ``asset`` into ``folder`` in the dataset format (DESIGN.md).

    ``meta.json`` is written last, so its presence marks a complete object (resumable builds)."""
    from core.data import io
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    renderer.set_asset(asset)
    for i, (az, el, r) in enumerate(views):
        w2c = cameras.pose_from_spherical(az, el, r)
        res = renderer.render(w2c)
        vid = f"{i:03d}"
        if (res.alpha > 127).mean() < MIN_OBJECT_FRACTION:  # the models lift view 000: every view must show it
            renderer.release_asset()
            raise MeshError(f"{asset.source or folder.name}: view {vid} shows no object "
                            f"(a sheet seen edge-on, or a texture cut out there)")
        io.write_view(folder, vid, res.image, w2c, alpha=res.alpha)
        io.save_depth(folder, vid, res.depth, depth_dtype, compressed=compress_depth)
    renderer.release_asset()
    if write_mesh:
        asset.mesh.export(folder / "mesh.ply")
    meta = {
        "fov_deg": renderer.fov_deg,
        "image_size": renderer.size,
        "views": [{"azimuth_deg": az, "elevation_deg": el, "radius": r} for az, el, r in views],
        "depth": "distance along the viewing direction (cameras.project), 0 on the background",
        "lighting": "Lambertian, ambient + 3 directional lights fixed in the world frame",
        "source": asset.source,
        "licence": asset.licence,
        "normalisation": asset.normalisation,
    }
    meta.update(extra_meta or {})
    io.write_meta(folder, meta)
    return folder
