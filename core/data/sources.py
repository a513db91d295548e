"""Real mesh collections from Debian's main archive, each behind one source name.

A ``Source`` lists its candidates (``list``: files only, nothing is parsed) and loads one
(``load``: world-frame parts, +Z up, not yet normalised; ``core.data.render.make_asset`` normalises
in one place). Every failure is a ``MeshError`` naming the file. ``python -m core.data sources
[--check]`` reports what is installed and, with ``--check``, how many candidates load.

| source | package | format |
| --- | --- | --- |
| sweethome3d-furniture | sweethome3d-furniture | OBJ+MTL inside ``.sh3f`` zips, Y up, catalogue in ``PluginFurnitureCatalog.properties`` |
| redeclipse-data | redeclipse-data | OBJ props, Y up, skin from ``obj.cfg`` (``objskin``) or the folder's ``diffuse.png`` |
| ufoai-data | ufoai-data | MD2 (``core.data.md2``) inside ``base/0models.pk3``, Z up, skins named in the file |
| 0ad-data | 0ad-data | PMD (``core.data.pmd``) inside ``mods/public/public.zip``, Y up, DDS skins from ``art/actors/**.xml`` |
| kicad-packages3d | kicad-packages3d | VRML 2 (``read_kicad_wrl``: its IndexedFaceSet subset), Z up, per-part material colours |
| minetest-mod-homedecor | minetest-mod-homedecor | OBJ per group (``core.data.minetest``), Y up, textures from the mod's Lua ``tiles`` |
| flightgear-data-models | flightgear-data-models + assimp-utils | AC3D, Y up, converted to OBJ+MTL by ``assimp export`` (trimesh reads no AC3D) |
| flightgear-data-ai | flightgear-data-ai + assimp-utils | the AI traffic's aircraft, AC3D as above; lights, shadows and LOD stand-ins left out |
| flightgear-data-base | flightgear-data-base + assimp-utils | the scenery's shared models (``Scenery/Models``: vehicles, aircraft, ships, buildings, masts, trees) and its tiles' one-off buildings (``Scenery/Objects``), AC3D as above; effects and files also in ``Models`` left out |
| torcs-data, crrcsim-data, opencity-data | the same + assimp-utils | AC3D as above: cars and trackside objects; model aircraft; buildings and vehicles |
| megaglest-data | megaglest-data | G3D (``core.data.g3d``), Y up, each unit's standing pose and every tileset object once |
| warzone2100-data | warzone2100-data | PIE (``core.data.pie``) inside ``base.wz``, Y up, structures and map features, texture pages |
| supertuxkart-data | supertuxkart-data | SPM (``core.data.spm``), Irrlicht's left-handed Y up; props assembled from ``node.xml``, karts with wheels |
"""
from __future__ import annotations

import functools
import io
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from core.data.render import UP_TRANSFORMS, MeshError, Part, _crease_normals, parts_from_scene

SH3D_ROOT = Path("/usr/share/sweethome3d/furniture")
REDECLIPSE_ROOT = Path("/usr/share/games/redeclipse/data")
UFOAI_PK3 = Path("/usr/share/games/ufoai/base/0models.pk3")
ZERO_AD_ZIP = Path("/usr/share/games/0ad/mods/public/public.zip")
KICAD_ROOT = Path("/usr/share/kicad/3dmodels")
HOMEDECOR_ROOT = Path("/usr/share/games/minetest/mods/homedecor")
FLIGHTGEAR_MODELS = Path("/usr/share/games/flightgear/Models")
FLIGHTGEAR_SKIP = ("Weather", "Effects", "Geometry", "Astro", "Volcanoes")  # clouds, lights, markers: not objects
FLIGHTGEAR_AI = Path("/usr/share/games/flightgear/AI/Aircraft")
FLIGHTGEAR_AI_SKIP = re.compile(r"light|shadow|lod|flash|beacon|strobe|glow|cone", re.I)  # effects, not aircraft
FLIGHTGEAR_SCENERY = Path("/usr/share/games/flightgear/Scenery/Models")
FLIGHTGEAR_SCENERY_SKIP = re.compile(r"(^|[-_.])(shadow|lod\d*)([-_.]|$)|flash|strobe|glow", re.I)  # not beacon towers
KICAD_SHARE = 0.2    # electronic parts stay under this share of a corpus (core.data.corpus caps them)
MIN_FACES = 20
TEAM_COLOUR = (150, 40, 35)   # what a game unit's player-colour areas (a texture's alpha mask) are painted with


@dataclass(frozen=True)
class Candidate:
    """One object a source can load: ``path`` (a file or an archive) and ``member`` inside it."""
    source: str
    name: str
    path: str
    member: str = ""
    licence: str = ""
    category: str = ""
    extra: tuple = ()     # source-specific (key, value) pairs, e.g. a catalogue's model rotation

    def get(self, key: str, default=None):
        return dict(self.extra).get(key, default)


@dataclass
class Source:
    name: str
    package: str
    real: bool
    root: Path
    lister: Callable[[], list[Candidate]]
    loader: Callable[[Candidate], list[Part]]
    licence: str = ""
    notes: str = field(default="", repr=False)

    @property
    def installed(self) -> bool:
        return self.root.exists()

    def list(self) -> list[Candidate]:
        if not self.installed:
            raise MeshError(f"source {self.name}: {self.root} not found; install it with "
                            f"`apt-get install {self.package}`")
        return self.lister()

    def load(self, c: Candidate) -> list[Part]:
        parts = self.loader(c)
        n = sum(len(p.positions) for p in parts)
        if n < MIN_FACES:
            raise MeshError(f"{c.path}:{c.member}: {n} faces (fewer than {MIN_FACES}: a decal or a fragment)")
        return parts


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:80]


def read_texture(data: bytes | Path, label: str) -> Image.Image:
    """An RGBA texture from a file or bytes; one that does not decode is a MeshError naming it (a
    texture is never silently replaced by grey)."""
    try:
        im = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
        im.load()
        return im.convert("RGBA")
    except Exception as e:   # Pillow raises many kinds; all mean "cannot decode this image"
        raise MeshError(f"{label}: texture does not load ({type(e).__name__}: {e})") from None


def read_member(z: zipfile.ZipFile, c: "Candidate", max_bytes: int, kind: str) -> bytes:
    """``c.member`` of an archive, refused by name when absent or larger than any real ``kind`` file."""
    try:
        info = z.getinfo(c.member)
    except KeyError:
        raise MeshError(f"{c.path}:{c.member}: not in the archive") from None
    if info.file_size > max_bytes:
        raise MeshError(f"{c.path}:{c.member}: {info.file_size} bytes, larger than any real {kind}")
    return z.read(c.member)


# ----------------------------------------------------------------------------- Sweet Home 3D

def _java_properties(text: str) -> dict[str, str]:
    """``key=value`` lines of a Java .properties file (comments, escapes and \\uXXXX decoded)."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#!" or "=" not in line:
            continue
        k, v = line.split("=", 1)
        v = re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), v.strip())
        out[k.strip()] = v.replace("\\:", ":").replace("\\=", "=").replace("\\\\", "\\")
    return out


def list_sweethome3d(root: Path = SH3D_ROOT) -> list[Candidate]:
    out = []
    for sh3f in sorted(root.glob("*.sh3f")):
        with zipfile.ZipFile(sh3f) as z:
            props = _java_properties(z.read("PluginFurnitureCatalog.properties").decode("latin-1"))
        licence = "CC0-1.0" if "CC-0" in sh3f.name else "CC-BY-3.0"  # per catalogue (its LICENSE.TXT)
        for key, model in props.items():
            if not key.startswith("model#"):
                continue
            i = key.split("#", 1)[1]
            name = props.get(f"name#{i}", model)
            extra = (("rotation", props.get(f"modelRotation#{i}", "")),)
            out.append(Candidate("sweethome3d-furniture", f"sh3d-{_slug(sh3f.stem)}-{_slug(name)}-{i}", str(sh3f),
                                 model.lstrip("/"), licence, props.get(f"category#{i}", ""), extra))
    return out


def load_sweethome3d(c: Candidate) -> list[Part]:
    """The model's folder is extracted so trimesh finds its MTL and textures; Y up, the catalogue's
    optional ``modelRotation`` (a 3x3 matrix, rows) applied first."""
    import trimesh
    tmp = Path(tempfile.mkdtemp(prefix="vantage-sh3d-"))
    try:
        with zipfile.ZipFile(c.path) as z:
            prefix = c.member.rsplit("/", 1)[0] + "/" if "/" in c.member else ""
            members = [m for m in z.namelist() if m.startswith(prefix) and not m.endswith("/")]
            if c.member not in members:
                raise MeshError(f"{c.path}:{c.member}: not in the archive")
            if sum(z.getinfo(m).file_size for m in members) > 256 << 20:
                raise MeshError(f"{c.path}:{c.member}: model folder larger than 256 MB")
            for m in members:
                dest = tmp / m
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(z.read(m))
        try:
            scene = trimesh.load(str(tmp / c.member), force="scene")
        except Exception as e:
            raise MeshError(f"{c.path}:{c.member}: cannot load ({type(e).__name__}: {e})") from None
        T = UP_TRANSFORMS["y"].copy()
        rot = [float(v) for v in (c.get("rotation") or "").split()]
        if len(rot) == 9:
            R = np.eye(4)
            R[:3, :3] = np.array(rot).reshape(3, 3)
            T = T @ R
        return parts_from_scene(scene, T)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------- Red Eclipse

_OBJSKIN = re.compile(r'^\s*objskin\s+(\S+)\s+"?([^"\s]+)"?', re.M)


def list_redeclipse(root: Path = REDECLIPSE_ROOT) -> list[Candidate]:
    skip = ("weapons", "actors", "projectiles", "vwep")  # not props: held items, characters, bullets
    return [Candidate("redeclipse-data", f"redeclipse-{_slug(str(p.parent.relative_to(root)))}", str(p),
                      licence="CC-BY-SA-3.0", category=p.parent.parent.name)
            for p in sorted(root.glob("*/*/*.obj")) if p.parts[len(root.parts)] not in skip]


def redeclipse_skins(obj: Path) -> dict[str, Path]:
    """The textures the engine would use, by mesh name (``*`` = any): ``obj.cfg``'s ``objskin`` lines
    (paths relative to the model's folder), else ``diffuse.png`` / ``skin.png`` / an image named like
    the model. The MTL files do not name them."""
    skins: dict[str, Path] = {}
    cfg = obj.parent / "obj.cfg"
    if cfg.is_file():
        for mesh, rel in _OBJSKIN.findall(cfg.read_text(errors="replace")):
            p = (obj.parent / rel).resolve()
            if p.is_file():
                skins.setdefault(mesh, p)
    if not skins:
        for name in ("diffuse.png", "skin.png", f"{obj.stem}.png", f"{obj.stem}.jpg"):
            if (obj.parent / name).is_file():
                skins["*"] = obj.parent / name
                break
    return skins


def load_redeclipse(c: Candidate) -> list[Part]:
    import trimesh
    path = Path(c.path)
    skins = redeclipse_skins(path)
    if not skins:
        raise MeshError(f"{path}: no skin image (obj.cfg names none that exists, no diffuse.png)")
    try:
        scene = trimesh.load(str(path), force="scene")
    except Exception as e:
        raise MeshError(f"{path}: cannot load ({type(e).__name__}: {e})") from None
    images: dict[Path, Image.Image] = {}
    parts = []
    for gname, mesh in scene.geometry.items():
        if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
            continue
        key = next((k for k in skins if k != "*" and k in gname), "*" if "*" in skins else next(iter(skins)))
        uv = getattr(mesh.visual, "uv", None)
        if uv is None or len(uv) != len(mesh.vertices):
            raise MeshError(f"{path}: mesh {gname!r} has no texture coordinates")
        if skins[key] not in images:
            try:
                images[skins[key]] = Image.open(skins[key])
                images[skins[key]].load()
            except Exception as e:
                raise MeshError(f"{skins[key]}: texture does not load ({type(e).__name__}: {e})") from None
        mesh = mesh.copy()
        mesh.visual = trimesh.visual.TextureVisuals(uv=uv, image=images[skins[key]])
        parts += parts_from_scene(mesh, UP_TRANSFORMS["y"])
    if not parts:
        raise MeshError(f"{path}: no triangles")
    return parts


# ----------------------------------------------------------------------------- UFO:AI (MD2)

def list_ufoai(pk3: Path = UFOAI_PK3) -> list[Candidate]:
    with zipfile.ZipFile(pk3) as z:
        names = [n for n in z.namelist() if n.startswith("models/objects/") and n.endswith(".md2")]
    return [Candidate("ufoai-data", f"ufoai-{_slug(n[len('models/objects/'):-4])}", str(pk3), n,
                      licence="GPL-2+/CC-BY-SA-3.0 (per file, see debian/copyright)", category=n.split("/")[2])
            for n in names]


def md2_skin(z: zipfile.ZipFile, member: str, skins: list[str]) -> Image.Image | None:
    """UFO:AI names skins relative to the model (``.name``, no extension) or by path."""
    folder = member.rsplit("/", 1)[0]
    names = set(z.namelist())
    for s in skins or [Path(member).stem]:
        base = f"{folder}/{s.lstrip('.')}" if s.startswith(".") or "/" not in s else s.rsplit(".", 1)[0]
        for ext in (".png", ".jpg", ".tga"):
            if base + ext in names:
                return read_texture(z.read(base + ext), base + ext)
    return None


def load_ufoai(c: Candidate) -> list[Part]:
    import trimesh
    from core.data.md2 import MD2Error, read_md2
    with zipfile.ZipFile(c.path) as z:
        data = read_member(z, c, 64 << 20, "MD2")
        try:
            md2 = read_md2(data, f"{c.path}:{c.member}")
        except MD2Error as e:
            raise MeshError(str(e)) from None
        skin = md2_skin(z, c.member, md2.skins)
    if skin is None:
        raise MeshError(f"{c.path}:{c.member}: skin {md2.skins or '(none named)'} not found")
    mesh = trimesh.Trimesh(md2.vertices, md2.faces, process=False)
    pos = md2.vertices[md2.faces].astype(np.float32)
    cols = np.ones((*md2.faces.shape, 4), np.float32)
    return [Part(pos, _crease_normals(mesh), cols, md2.uv, skin)]


# ----------------------------------------------------------------------------- 0 A.D. (PMD)

ZERO_AD_KEEP = ("props", "gaia", "skeletal")    # and whole buildings from "structural"; not "temp", "test"
ZERO_AD_BUILDING_PARTS = re.compile(r"(^|_)found(ation)?(_|\d|$)|field|destroyed|decor|rubble|scaffold|props?(_|$)"
                                    r"|roof|nature|transp|ground|(_|^)(back|front|base|floor)(_|$)", re.I)
ZERO_AD_MIN_FACES, ZERO_AD_MIN_EXTENT = 60, 1.0  # tiny decorations (game units; a soldier is ~2 tall)
_ACTOR_MESH = re.compile(r"<mesh>\s*([^<\s]+)\s*</mesh>")
_ACTOR_BASETEX = re.compile(r'<texture\s+file="([^"]+)"\s+name="baseTex"')
_ACTOR_MATERIAL = re.compile(r"<material>\s*([^<\s]+)\s*</material>")


def zero_ad_textures(z: zipfile.ZipFile) -> dict[str, tuple[str, str]]:
    """PMD member -> (base texture member, material), from the actors (the meshes do not name their
    textures): each actor's meshes take the first ``baseTex`` it lists; no material is ``default.xml``."""
    names = set(z.namelist())
    out: dict[str, tuple[str, str]] = {}
    for a in sorted(n for n in names if n.startswith("art/actors/") and n.endswith(".xml")):
        text = z.read(a).decode("utf-8", "replace")
        tex = _ACTOR_BASETEX.search(text)
        if not tex:
            continue
        base = f"art/textures/skins/{tex.group(1)}"
        member = next((m for m in (base, base + ".cached.dds", base.rsplit(".", 1)[0] + ".dds") if m in names), None)
        if member is None:
            continue
        mat = _ACTOR_MATERIAL.search(text)
        entry = (member, mat.group(1) if mat else "default.xml")
        for mesh in _ACTOR_MESH.findall(text):   # the archive holds the converted mesh: NAME.dae.cached.pmd
            out.setdefault(f"art/meshes/{mesh}.cached.pmd", entry)
            out.setdefault("art/meshes/" + mesh.rsplit(".", 1)[0] + ".pmd", entry)
    return out


def zero_ad_buildings(z: zipfile.ZipFile) -> set[str]:
    """The ``structural`` meshes that are whole buildings, ships or siege engines: the body mesh of a
    structure actor (``art/actors/structures/``). Foundations, roofs, scaffolding, rubble, vegetation
    overlays and other parts (named so) are left out, and so is every mesh no structure actor uses."""
    out = set()
    for a in (n for n in z.namelist() if n.startswith("art/actors/structures/") and n.endswith(".xml")):
        for mesh in _ACTOR_MESH.findall(z.read(a).decode("utf-8", "replace")):
            stem = mesh.rsplit("/", 1)[-1].removesuffix(".dae")
            if mesh.startswith("structural/") and not ZERO_AD_BUILDING_PARTS.search(stem):
                out.update((f"art/meshes/{mesh}.cached.pmd", "art/meshes/" + mesh.rsplit(".", 1)[0] + ".pmd"))
    return out


def zero_ad_alpha(image: Image.Image, material: str) -> Image.Image:
    """What a 0 A.D. texture's alpha means depends on its actor's material: transparency only for the
    ``*trans*`` materials (leaves, cloth cut-outs); the player colour's mask for ``player_*`` (painted
    with ``TEAM_COLOUR``); nothing for the others. Left as alpha, a mask cuts holes in swords and sails."""
    if "trans" in material and not material.startswith(("player", "no_trans")):
        return image
    if material.startswith("player"):
        image = Image.alpha_composite(Image.new("RGBA", image.size, TEAM_COLOUR + (255,)), image)
    return image.convert("RGB").convert("RGBA")


def list_zero_ad(archive: Path = ZERO_AD_ZIP) -> list[Candidate]:
    with zipfile.ZipFile(archive) as z:
        textures, buildings = zero_ad_textures(z), zero_ad_buildings(z)
        names = [n for n in z.namelist() if n.startswith("art/meshes/") and n.endswith(".pmd")]
    out = []
    for n in sorted(names):
        cat = n.split("/")[2]
        if cat in ZERO_AD_KEEP or n in buildings:
            stem = n[len("art/meshes/"):].removesuffix(".pmd").removesuffix(".cached").removesuffix(".dae")
            out.append(Candidate("0ad-data", f"0ad-{_slug(stem)}", str(archive), n,
                                 "CC-BY-SA-3.0", cat, (("texture", textures.get(n, ("", ""))[0]),
                                                        ("material", textures.get(n, ("", ""))[1]))))
    return out


def load_zero_ad(c: Candidate) -> list[Part]:
    import trimesh
    from core.data.pmd import PMDError, read_pmd
    with zipfile.ZipFile(c.path) as z:
        try:
            pmd = read_pmd(z.read(c.member), f"{c.path}:{c.member}")
        except (PMDError, KeyError) as e:
            raise MeshError(str(e)) from None
        if len(pmd.faces) < ZERO_AD_MIN_FACES or np.ptp(pmd.vertices, 0).max() < ZERO_AD_MIN_EXTENT:
            raise MeshError(f"{c.path}:{c.member}: a small decoration ({len(pmd.faces)} faces, "
                            f"{np.ptp(pmd.vertices, 0).max():.2f} units)")
        tex = c.get("texture")
        if not tex:
            raise MeshError(f"{c.path}:{c.member}: no actor names a texture for it")
        try:
            data = z.read(tex)
        except KeyError:
            raise MeshError(f"{c.path}:{tex}: not in the archive") from None
        image = zero_ad_alpha(read_texture(data, f"{c.path}:{tex}"), c.get("material", "default.xml"))
    faces = pmd.faces[:, ::-1]   # the game's faces are clockwise seen from outside: reverse them
    mesh = trimesh.Trimesh(pmd.vertices, faces, process=False,
                           visual=trimesh.visual.TextureVisuals(uv=pmd.uv, image=image))
    return parts_from_scene(mesh, UP_TRANSFORMS["y"])


# ----------------------------------------------------------------------------- KiCad (VRML)

_WRL_DEF = re.compile(r"DEF\s+(\S+)\s+Material\s*\{([^}]*)\}")
_WRL_COLOR = re.compile(r"diffuseColor\s+([-\d.eE+]+)\s+([-\d.eE+]+)\s+([-\d.eE+]+)")
_WRL_SHAPE = re.compile(r"Shape\s*\{")
MAX_WRL_BYTES = 64 << 20


def _numbers(text: str, what: str, name: str) -> np.ndarray:
    a = np.array(text.replace(",", " ").split(), dtype=np.float64) if text.strip() else np.zeros(0)
    if not np.all(np.isfinite(a)):
        raise MeshError(f"{name}: non-finite {what}")
    return a


def read_kicad_wrl(text: str, name: str = "wrl") -> list[tuple[np.ndarray, np.ndarray, tuple]]:
    """The subset of VRML 2 that KiCad's exporters write: ``Shape`` nodes of an ``IndexedFaceSet``
    (``coordIndex`` polygons ended by -1, ``Coordinate { point [...] }``) and a ``Material``
    (``DEF``, or ``USE`` of an earlier one) whose ``diffuseColor`` colours it. Returns
    (vertices [V,3], triangles [F,3], rgb) per shape; polygons are fanned into triangles."""
    colors = {m.group(1): tuple(float(x) for x in _WRL_COLOR.search(m.group(2)).groups())
              for m in _WRL_DEF.finditer(text) if _WRL_COLOR.search(m.group(2))}
    starts = [m.start() for m in _WRL_SHAPE.finditer(text)] + [len(text)]
    out = []
    for a, b in zip(starts, starts[1:]):
        block = text[a:b]
        ci, pt = block.find("coordIndex"), block.find("point")
        if ci < 0 or pt < 0:
            continue
        idx = _numbers(block[block.index("[", ci) + 1:block.index("]", ci)], "indices", name).astype(np.int64)
        pts = _numbers(block[block.index("[", pt) + 1:block.index("]", pt)], "points", name)
        if len(pts) % 3:
            raise MeshError(f"{name}: {len(pts)} point numbers, not a multiple of 3")
        pts = pts.reshape(-1, 3)
        use = re.search(r"material\s+(?:USE|DEF)\s+(\S+)", block)
        color = colors.get(use.group(1), (0.7, 0.7, 0.7)) if use else (0.7, 0.7, 0.7)
        tris, poly = [], []
        for i in idx.tolist() + [-1]:
            if i >= 0:
                if i >= len(pts):
                    raise MeshError(f"{name}: a face names point {i} of {len(pts)}")
                poly.append(i)
            else:
                tris += [(poly[0], poly[k], poly[k + 1]) for k in range(1, len(poly) - 1)]
                poly = []
        if tris:
            out.append((pts, np.asarray(tris, np.int64), color))
    return out


def list_kicad(root: Path = KICAD_ROOT) -> list[Candidate]:
    return [Candidate("kicad-packages3d", f"kicad-{_slug(p.parent.name.removesuffix('.3dshapes'))}-{_slug(p.stem)}",
                      str(p), licence="CC-BY-SA-4.0 with the KiCad libraries exception", category=p.parent.name
                      .removesuffix(".3dshapes")) for p in sorted(root.glob("*.3dshapes/*.wrl"))]


def load_kicad(c: Candidate) -> list[Part]:
    import trimesh
    path = Path(c.path)
    if path.stat().st_size > MAX_WRL_BYTES:
        raise MeshError(f"{path}: {path.stat().st_size} bytes, larger than any part needs")
    try:
        shapes = read_kicad_wrl(path.read_text(errors="replace"), str(path))
    except (ValueError, IndexError) as e:
        raise MeshError(f"{path}: not the VRML subset KiCad writes ({e})") from None
    parts = []
    for pts, tris, rgb in shapes:
        mesh = trimesh.Trimesh(pts, tris, process=False)
        rgba = np.clip(np.array([*rgb, 1.0]) * 255, 0, 255).astype(np.uint8)
        mesh.visual = trimesh.visual.ColorVisuals(mesh, face_colors=np.tile(rgba, (len(tris), 1)))
        parts += parts_from_scene(mesh)
    if not parts:
        raise MeshError(f"{path}: no faces")
    return parts


# ----------------------------------------------------------------------------- Minetest homedecor

def list_homedecor(root: Path = HOMEDECOR_ROOT) -> list[Candidate]:
    return [Candidate("minetest-mod-homedecor", f"homedecor-{_slug(p.stem)}", str(p),
                      licence="LGPL-3.0 code / CC-BY-SA-4.0 media (see debian/copyright)", category=p.parent.parent.name)
            for p in sorted(root.glob("*/models/*.obj"))]


@functools.lru_cache(maxsize=4)
def _homedecor_index(root: str) -> tuple[dict, dict]:
    """(the Lua tiles of every mesh, every PNG by file name): read once per process. Tiles also name
    textures of Minetest's own game and of other mods (``default_wood.png``: package minetest-data,
    ``basic_materials_*``: minetest-mod-basic-materials), so images come from the whole Minetest share
    folder, the mod's own first."""
    from core.data.minetest import mesh_tiles
    share = Path(root).parents[1]  # /usr/share/games/minetest
    images = {p.name: p for p in sorted(share.rglob("*.png"))}
    images.update({p.name: p for p in sorted(Path(root).rglob("*.png"))})
    return mesh_tiles(Path(root)), images


def load_homedecor(c: Candidate) -> list[Part]:
    import trimesh
    from core.data.minetest import Tile, read_grouped_obj
    path = Path(c.path)
    tiles, images = _homedecor_index(str(path.parents[2]))  # MOD_ROOT/<mod>/models/x.obj
    if path.name not in tiles:
        raise MeshError(f"{path}: no node definition in the mod's Lua uses this mesh")
    try:
        buffers = read_grouped_obj(path.read_text(errors="replace"), str(path))
    except OSError as e:
        raise MeshError(f"{path}: cannot read ({e})") from None
    ts, up = tiles[path.name] or [Tile(None)], UP_TRANSFORMS["y"][:3, :3].astype(np.float32)
    loaded: dict[str, Image.Image] = {}
    parts = []
    for i, (pos, uv) in enumerate(buffers):
        tile = ts[min(i, len(ts) - 1)]  # the engine repeats the last tile
        tex = None
        if tile.image in images and uv is not None:
            if tile.image not in loaded:
                try:
                    with Image.open(images[tile.image]) as im:
                        loaded[tile.image] = im.convert("RGBA")
                except Exception as e:
                    raise MeshError(f"{images[tile.image]}: texture does not load ({type(e).__name__}: {e})") from None
            tex = loaded[tile.image]
        tint = tile.tint or ((1.0, 1.0, 1.0) if tex is not None else (0.7, 0.7, 0.7))  # unknown image: plain grey
        world = pos @ up.T
        mesh = trimesh.Trimesh(world.reshape(-1, 3), np.arange(len(world) * 3).reshape(-1, 3), process=False)
        cols = np.ones((len(world), 3, 4), np.float32)
        cols[..., :3] = tint
        parts.append(Part(world.astype(np.float32), _crease_normals(mesh), cols,
                          uv.astype(np.float32) if tex is not None else None, tex))
    if not parts:
        raise MeshError(f"{path}: no faces")
    return parts


# ----------------------------------------------------------------------------- FlightGear (AC3D via assimp)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".rgb", ".rgba", ".sgi", ".bmp")


def list_flightgear(root: Path = FLIGHTGEAR_MODELS) -> list[Candidate]:
    return [Candidate("flightgear-data-models", f"flightgear-{_slug(str(p.relative_to(root).with_suffix('')))}", str(p),
                      licence="GPL-2+ (see debian/copyright)", category=p.relative_to(root).parts[0])
            for p in sorted(root.rglob("*.ac")) if p.relative_to(root).parts[0] not in FLIGHTGEAR_SKIP]


def list_flightgear_ai(root: Path = FLIGHTGEAR_AI) -> list[Candidate]:
    """One candidate per AC3D file of each AI aircraft (its variants: liveries share geometry and are
    deduplicated by the corpus); lights, shadows and LOD stand-ins are effects, not objects."""
    return [Candidate("flightgear-data-ai", f"flightgear-ai-{_slug(str(p.relative_to(root).with_suffix('')))}", str(p),
                      licence="GPL-2+ (see debian/copyright)", category="aircraft")
            for p in sorted(root.rglob("*.ac")) if not FLIGHTGEAR_AI_SKIP.search(str(p.relative_to(root)))]


def list_flightgear_scenery(root: Path = FLIGHTGEAR_SCENERY, models: Path = FLIGHTGEAR_MODELS) -> list[Candidate]:
    """The scenery's shared models (what the world's airports, harbours and towns are furnished with)
    and the one-off buildings of the bundled tiles (``../Objects/<tile>/``: control towers, hangars,
    lighthouses), one per AC3D file. The ``Effects`` folder, flashing lights, shadows and LOD stand-ins
    are not objects, and a file that ``flightgear-data-models`` also ships (same path under ``Models``) is
    listed there only."""
    out = []
    for p in sorted(root.rglob("*.ac")):
        rel = p.relative_to(root)
        if rel.parts[0] in FLIGHTGEAR_SKIP or FLIGHTGEAR_SCENERY_SKIP.search(p.stem) or (models / rel).is_file():
            continue
        out.append(Candidate("flightgear-data-base", f"flightgear-scenery-{_slug(str(rel.with_suffix('')))}", str(p),
                             licence="GPL-2+ (see debian/copyright)", category=rel.parts[0]))
    objects = root.parent / "Objects"
    for p in sorted(objects.rglob("*.ac")) if objects.is_dir() else ():
        if not FLIGHTGEAR_SCENERY_SKIP.search(p.stem):
            out.append(Candidate("flightgear-data-base", f"flightgear-object-{_slug(p.parent.name + '-' + p.stem)}", str(p),
                                 licence="GPL-2+ (see debian/copyright)", category="Objects"))
    return out


def load_ac3d(c: Candidate) -> list[Part]:
    """AC3D has no reader in trimesh: assimp (``assimp-utils``) converts it to OBJ+MTL in a temporary
    folder next to copies of the model's images, which trimesh then loads with its textures."""
    import subprocess
    import trimesh
    exe = shutil.which("assimp")
    if exe is None:
        raise MeshError(f"{c.path}: AC3D models need the assimp command: apt-get install assimp-utils")
    path = Path(c.path)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "model.obj"
        try:
            r = subprocess.run([exe, "export", str(path), str(out)], capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            raise MeshError(f"{path}: assimp took over 120 s") from None
        if r.returncode or not out.is_file():
            raise MeshError(f"{path}: assimp cannot convert it ({(r.stderr or r.stdout).strip()[-160:]})")
        for img in path.parent.iterdir():
            if img.suffix.lower() in IMAGE_SUFFIXES and img.is_file():
                shutil.copy(img, tmp)
        try:
            scene = trimesh.load(str(out), force="scene")
        except Exception as e:
            raise MeshError(f"{path}: converted model does not load ({type(e).__name__}: {e})") from None
        parts = parts_from_scene(scene, UP_TRANSFORMS["y"])
    if not parts:
        raise MeshError(f"{path}: no triangles")
    return parts


# ----------------------------------------------------------------------------- more AC3D: TORCS, CRRCsim, OpenCity

TORCS_ROOT = Path("/usr/share/games/torcs")
CRRCSIM_ROOT = Path("/usr/share/games/crrcsim")
OPENCITY_ROOT = Path("/usr/share/games/opencity/graphism")


def list_torcs(root: Path = TORCS_ROOT) -> list[Candidate]:
    """Each car's full-detail body (``cars/NAME/NAME.acc``, not its ``-lodN`` stand-ins) and the
    trackside objects; tracks (whole scenes) and loose wheels (parts) are left out."""
    lic = "GPL-2+ / Free Art (see debian/copyright)"
    cars = [p for p in sorted(root.glob("cars/*/*.acc")) if p.stem == p.parent.name]
    objs = sorted(root.glob("data/objects/*.ac"))
    return ([Candidate("torcs-data", f"torcs-car-{_slug(p.stem)}", str(p), licence=lic, category="cars") for p in cars]
            + [Candidate("torcs-data", f"torcs-object-{_slug(p.stem)}", str(p), licence=lic, category="objects")
               for p in objs])


def list_crrcsim(root: Path = CRRCSIM_ROOT) -> list[Candidate]:
    """The flight simulator's model aircraft and scenery objects (trees, buildings)."""
    return [Candidate("crrcsim-data", f"crrcsim-{_slug(p.stem)}", str(p), licence="GPL-2+ (see debian/copyright)",
                      category="objects") for p in sorted(root.rglob("*.ac"))]


def list_opencity(root: Path = OPENCITY_ROOT) -> list[Candidate]:
    """The city builder's buildings, vehicles, trees and pylons; road tiles (flat) are left out."""
    return [Candidate("opencity-data", f"opencity-{_slug(str(p.parent.relative_to(root)))}", str(p),
                      licence="GPL-2+ (see debian/copyright)", category=p.relative_to(root).parts[0])
            for p in sorted(root.rglob("*.ac")) if p.relative_to(root).parts[0] != "path"]


# ----------------------------------------------------------------------------- MegaGlest (G3D)

MEGAGLEST_ROOT = Path("/usr/share/games/megaglest")


def _stop_model(unit_xml: Path) -> Path | None:
    """The model a unit stands still in: the first animation of its ``stop`` skill (a unit folder
    holds one G3D per animation: walking, attacking, dying are the same object in other poses)."""
    import xml.etree.ElementTree as ET
    try:
        root = ET.parse(unit_xml).getroot()
    except (ET.ParseError, OSError):
        return None
    for skill in root.iter("skill"):
        t = skill.find("type")
        anim = skill.find("animation")
        if t is not None and t.get("value") == "stop" and anim is not None and anim.get("path"):
            return unit_xml.parent / anim.get("path")
    return None


def list_megaglest(root: Path = MEGAGLEST_ROOT) -> list[Candidate]:
    """One candidate per unit and building (its standing model), per resource, and per distinct
    tileset object (tilesets share models through symlinks: each real file counts once)."""
    out, seen = [], set()
    lic = "GPL-2+ / CC-BY-SA-3.0 (see debian/copyright)"
    for xml in sorted(root.glob("techs/*/factions/*/units/*/*.xml")):
        if xml.stem != xml.parent.name:
            continue
        model = _stop_model(xml)
        if model is None:
            models = sorted(xml.parent.glob("models/*.g3d"))
            model = models[0] if models else None
        if model is not None and model.resolve() not in seen:
            seen.add(model.resolve())
            tech, faction = xml.parts[-6], xml.parts[-4]
            out.append(Candidate("megaglest-data", f"megaglest-{_slug(f'{tech}-{faction}-{xml.stem}')}", str(model),
                                 licence=lic, category=f"units/{faction}"))
    for g in sorted(root.glob("techs/*/resources/*/models/*.g3d")) + sorted(root.glob("tilesets/*/models/*.g3d")):
        real = g.resolve()
        if real in seen:
            continue
        seen.add(real)
        kind = "resources" if "resources" in g.parts else "tileset"
        out.append(Candidate("megaglest-data", f"megaglest-{_slug(str(real.relative_to(root.resolve()).with_suffix('')))}",
                             str(real), licence=lic, category=f"{kind}/{real.parent.parent.name}"))
    return out


def _find_file(folder: Path, rel: str) -> Path | None:
    """``rel`` under ``folder``, matching case-insensitively as the game's Windows-made paths need."""
    p = (folder / rel.replace("\\", "/")).resolve()
    if p.is_file():
        return p
    if p.parent.is_dir():
        low = p.name.lower()
        for q in p.parent.iterdir():
            if q.name.lower() == low:
                return q
    return None


def load_megaglest(c: Candidate) -> list[Part]:
    import trimesh
    from core.data.g3d import G3DError, read_g3d
    path = Path(c.path)
    try:
        data = path.read_bytes()
        meshes = read_g3d(data, str(path))
    except (G3DError, OSError) as e:
        raise MeshError(str(e)) from None
    parts = []
    for m in meshes:
        if not len(m.faces):
            continue
        image = None
        if m.texture:
            tex = _find_file(path.parent, m.texture)
            if tex is None:
                raise MeshError(f"{path}: texture {m.texture} not found")
            image = read_texture(tex, str(tex))
            if m.team_colour:   # the alpha marks team colour, not cut-outs: paint it and make it opaque
                image = Image.alpha_composite(Image.new("RGBA", image.size, TEAM_COLOUR + (255,)), image)
                image = image.convert("RGB").convert("RGBA")
        mesh = trimesh.Trimesh(m.vertices, m.faces, process=False)
        mesh.apply_transform(UP_TRANSFORMS["y"])
        pos = mesh.vertices[m.faces].astype(np.float32)
        cols = np.broadcast_to(np.asarray((*m.diffuse, 1.0) if image is None else (1, 1, 1, 1), np.float32),
                               (*m.faces.shape, 4)).copy()
        uv = m.uv[m.faces] if image is not None else None
        parts.append(Part(pos, _crease_normals(mesh), cols, uv, image))
    if not parts:
        raise MeshError(f"{path}: no triangles")
    return parts


# ----------------------------------------------------------------------------- Warzone 2100 (PIE)

WARZONE_WZ = Path("/usr/share/games/warzone2100/base.wz")
WARZONE_SKIP = re.compile(r"dummy|_anim")   # a placeholder; animation frames of a model listed already


def list_warzone(archive: Path = WARZONE_WZ) -> list[Candidate]:
    """Whole structures and map features (buildings, vehicles, wrecks, trees, rocks); the vehicle
    components (bodies, weapons, propulsion: parts of a unit), effects and markers are left out."""
    with zipfile.ZipFile(archive) as z:
        names = [n for n in z.namelist() if n.endswith(".pie") and n.split("/")[0] in ("structs", "features")
                 and not WARZONE_SKIP.search(n)]
    return [Candidate("warzone2100-data", f"warzone-{_slug(n[:-4])}", str(archive), n,
                      licence="GPL-2+ / CC-BY-SA-3.0 (see debian/copyright)", category=n.split("/")[0])
            for n in sorted(names)]


def load_warzone(c: Candidate) -> list[Part]:
    import trimesh
    from core.data.pie import PIEError, read_pie
    with zipfile.ZipFile(c.path) as z:
        data = read_member(z, c, 16 << 20, "PIE")
        try:
            pie = read_pie(data.decode("latin-1"), f"{c.path}:{c.member}")
        except PIEError as e:
            raise MeshError(str(e)) from None
        tex = f"texpages/{pie.texture}"
        try:
            data = z.read(tex)
        except KeyError:
            raise MeshError(f"{c.path}:{c.member}: texture {tex} not in the archive") from None
        image = read_texture(data, f"{c.path}:{tex}")
    mesh = trimesh.Trimesh(pie.vertices, pie.faces, process=False)
    mesh.apply_transform(UP_TRANSFORMS["y"])
    pos = mesh.vertices[pie.faces].astype(np.float32)
    return [Part(pos, _crease_normals(mesh), np.ones((*pie.faces.shape, 4), np.float32), pie.uv, image)]


# ----------------------------------------------------------------------------- SuperTuxKart (SPM)

STK_DATA = Path("/usr/share/games/supertuxkart/data")
STK_SKIP = re.compile(r"invisible|collision|_col$|lod|skybox|shadow|water|sky_|boost_arrow|arrow", re.I)
STK_MIN_THICKNESS = 0.02   # a track's ground patch or decal: its thinnest extent under 2 % of its largest


@functools.lru_cache(maxsize=4)
def _stk_textures(root: str) -> dict[str, Path]:
    """Every image under the game's data by lower-case file name: a mesh names its textures by file
    name and the game finds them in the mesh's folder or its shared texture folders."""
    out = {}
    for p in sorted(Path(root).rglob("*")):
        if p.suffix.lower() in (".png", ".jpg", ".jpeg") and p.is_file():
            out.setdefault(p.name.lower(), p)
    return out


def _stk_texture(folder: Path, name: str, root: Path) -> Image.Image:
    p = folder / name
    if not p.is_file():
        p = _stk_textures(str(root)).get(Path(name).name.lower())
    if p is None:
        raise MeshError(f"{folder}: texture {name} not found")
    return read_texture(p, str(p))


def _euler_xyz(deg) -> np.ndarray:
    """Irrlicht's rotation from (x, y, z) degrees: about X, then Y, then Z."""
    rx, ry, rz = np.radians(np.asarray(deg, np.float64))
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    Rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    Ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    Rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return Rz @ Ry @ Rx


def _floats(text: str | None, n: int, default: float) -> list[float]:
    try:
        v = [float(x) for x in (text or "").split()]
    except ValueError:
        v = []
    return v if len(v) == n else [default] * n


def list_stk(root: Path = STK_DATA) -> list[Candidate]:
    """Library props (each assembled from its ``node.xml``; effects ``gfx_*`` left out), karts (body
    and wheels, from ``kart.xml``), and each track's own objects (the track's ground model, collision
    and effect meshes left out)."""
    import xml.etree.ElementTree as ET
    lic = "GPL-3+ / CC-BY-SA (per file, see debian/copyright)"
    out = []
    for node in sorted(root.glob("library/*/node.xml")):
        if not node.parent.name.startswith("gfx_"):
            out.append(Candidate("supertuxkart-data", f"stk-lib-{_slug(node.parent.name)}", str(node),
                                 licence=lic, category="library", extra=(("layout", "node"), ("root", str(root)))))
    for kart in sorted(root.glob("karts/*/kart.xml")):
        out.append(Candidate("supertuxkart-data", f"stk-kart-{_slug(kart.parent.name)}", str(kart), licence=lic,
                             category="karts", extra=(("layout", "kart"), ("root", str(root)))))
    for track in sorted(root.glob("tracks/*/scene.xml")):
        try:
            t = ET.parse(track).getroot().find("track")
            ground = t.get("model") if t is not None else None
        except (ET.ParseError, OSError):
            ground = None
        for m in sorted(track.parent.glob("*.spm")):
            if m.name != ground and not STK_SKIP.search(m.stem):
                out.append(Candidate("supertuxkart-data", f"stk-{_slug(track.parent.name)}-{_slug(m.stem)}", str(m),
                                     licence=lic, category=f"tracks/{track.parent.name}",
                                     extra=(("layout", "mesh"), ("root", str(root)))))
    return out


def _stk_parts(path: Path, transform: np.ndarray, root: Path) -> list[Part]:
    """One SPM's buffers as parts, placed by ``transform`` (4x4, in the file's frame) and then brought
    to the world frame: Irrlicht's (x, y, z) is (x, z, y) in a right-handed +Z-up frame."""
    import trimesh
    from core.data.spm import SPMError, read_spm
    try:
        buffers = read_spm(path.read_bytes(), str(path))
    except (SPMError, OSError) as e:
        raise MeshError(str(e)) from None
    to_world = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], np.float64) @ transform
    parts = []
    for b in buffers:
        if not len(b.faces):
            continue
        faces = b.faces[:, ::-1] if np.linalg.det(to_world[:3, :3]) < 0 else b.faces  # a mirror flips winding
        mesh = trimesh.Trimesh(b.vertices, faces, process=False)
        mesh.apply_transform(to_world)
        image = _stk_texture(path.parent, b.texture, root) if b.texture and b.uv is not None else None
        cols = np.concatenate([b.colors, np.ones((len(b.colors), 1), np.float32)], 1)[faces]
        parts.append(Part(mesh.vertices[faces].astype(np.float32), _crease_normals(mesh), cols,
                          b.uv[faces] if image is not None else None, image))
    return parts


def load_stk(c: Candidate) -> list[Part]:
    import xml.etree.ElementTree as ET
    path = Path(c.path)
    layout = c.get("layout", "mesh")
    placed: list[tuple[Path, np.ndarray]] = []
    if layout == "mesh":
        placed.append((path, np.eye(4)))
    else:
        try:
            root = ET.parse(path).getroot()
        except (ET.ParseError, OSError) as e:
            raise MeshError(f"{path}: unreadable XML ({e})") from None
        if layout == "node":
            for o in root.iter("object"):
                model = o.get("model", "")
                if not model.endswith(".spm") or o.get("interaction") == "physicsonly":
                    continue
                T = np.eye(4)
                T[:3, :3] = _euler_xyz(_floats(o.get("hpr"), 3, 0.0)) * np.asarray(_floats(o.get("scale"), 3, 1.0))
                T[:3, 3] = _floats(o.get("xyz"), 3, 0.0)
                placed.append((path.parent / model, T))
        else:   # a kart: its body, and its wheels at their positions
            placed.append((path.parent / root.get("model-file", f"{path.parent.name}.spm"), np.eye(4)))
            wheels = root.find("wheels")
            for w in (list(wheels) if wheels is not None else []):
                if w.get("model"):
                    T = np.eye(4)
                    T[:3, 3] = _floats(w.get("position"), 3, 0.0)
                    placed.append((path.parent / w.get("model"), T))
    parts = []
    for p, T in placed:
        if not p.is_file():
            raise MeshError(f"{path}: names {p.name}, which is missing")
        parts += _stk_parts(p, T, Path(c.get("root", STK_DATA)))
    if not parts:
        raise MeshError(f"{path}: no SPM mesh to show")
    if layout == "mesh":
        pts = np.concatenate([p.positions.reshape(-1, 3) for p in parts])
        ext = np.ptp(pts, 0)
        if ext.min() < STK_MIN_THICKNESS * ext.max():
            raise MeshError(f"{path}: flat ({ext.min():.3g} of {ext.max():.3g}: a ground patch or a decal)")
    return parts


# ----------------------------------------------------------------------------- registry

SOURCES: dict[str, Source] = {s.name: s for s in (
    Source("sweethome3d-furniture", "sweethome3d-furniture", True, SH3D_ROOT, list_sweethome3d, load_sweethome3d,
           "CC0-1.0 / CC-BY-3.0"),
    Source("redeclipse-data", "redeclipse-data", True, REDECLIPSE_ROOT, list_redeclipse, load_redeclipse,
           "CC-BY-SA-3.0"),
    Source("ufoai-data", "ufoai-data", True, UFOAI_PK3, list_ufoai, load_ufoai, "GPL-2+ / CC-BY(-SA) 3.0 / PD"),
    Source("0ad-data", "0ad-data", True, ZERO_AD_ZIP, list_zero_ad, load_zero_ad, "CC-BY-SA-3.0"),
    Source("kicad-packages3d", "kicad-packages3d", True, KICAD_ROOT, list_kicad, load_kicad,
           "CC-BY-SA-4.0 + exception"),
    Source("minetest-mod-homedecor", "minetest-mod-homedecor", True, HOMEDECOR_ROOT, list_homedecor, load_homedecor,
           "LGPL-3.0 / CC-BY-SA-4.0"),
    Source("flightgear-data-models", "flightgear-data-models", True, FLIGHTGEAR_MODELS, list_flightgear,
           load_ac3d, "GPL-2+"),
    Source("flightgear-data-ai", "flightgear-data-ai", True, FLIGHTGEAR_AI, list_flightgear_ai, load_ac3d,
           "GPL-2+"),
    Source("flightgear-data-base", "flightgear-data-base", True, FLIGHTGEAR_SCENERY, list_flightgear_scenery,
           load_ac3d, "GPL-2+"),
    Source("torcs-data", "torcs-data", True, TORCS_ROOT, list_torcs, load_ac3d, "GPL-2+ / Free Art"),
    Source("crrcsim-data", "crrcsim-data", True, CRRCSIM_ROOT, list_crrcsim, load_ac3d, "GPL-2+"),
    Source("opencity-data", "opencity-data", True, OPENCITY_ROOT, list_opencity, load_ac3d, "GPL-2+"),
    Source("megaglest-data", "megaglest-data", True, MEGAGLEST_ROOT, list_megaglest, load_megaglest,
           "GPL-2+ / CC-BY-SA-3.0"),
    Source("warzone2100-data", "warzone2100-data", True, WARZONE_WZ, list_warzone, load_warzone,
           "GPL-2+ / CC-BY-SA-3.0"),
    Source("supertuxkart-data", "supertuxkart-data", True, STK_DATA, list_stk, load_stk, "GPL-3+ / CC-BY-SA"),
)}


@functools.lru_cache(maxsize=None)
def package_version(package: str) -> str | None:
    """The installed Debian package's version (``dpkg-query``), for provenance; None elsewhere."""
    import subprocess
    try:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() or None if r.returncode == 0 else None


def describe(check: bool = False, limit: int | None = None) -> dict:
    """``{"sources": {NAME: {package, installed, real, candidates, loadable, failures}}}``; with
    ``check`` every candidate (or the first ``limit``) is loaded."""
    out = {}
    for name, s in SOURCES.items():
        rec = {"package": s.package, "installed": s.installed, "version": package_version(s.package) if s.installed
               else None, "real": s.real, "licence": s.licence, "candidates": None, "loadable": None}
        if s.installed:
            cands = s.list()
            rec["candidates"] = len(cands)
            if check:
                ok, failures = 0, []
                for c in cands[:limit]:
                    try:
                        s.load(c)
                        ok += 1
                    except MeshError as e:
                        failures.append(str(e)[:200])
                rec.update(loadable=ok, checked=len(cands[:limit]), failures=failures[:20])
        else:
            rec["install"] = f"apt-get install {s.package}"
        out[name] = rec
    from core.data.corpus import pybullet_jobs  # the sources that ship with the project and its wheels
    pb = pybullet_jobs()
    out["procedural"] = {"package": None, "installed": True, "real": False, "candidates": None, "loadable": None}
    out["pybullet-random-urdfs"] = {"package": "pybullet (PyPI)", "installed": bool(pb), "real": False,
                                    "candidates": sum("random_urdfs" in j.path for j in pb), "loadable": None}
    out["pybullet-models"] = {"package": "pybullet (PyPI)", "installed": bool(pb), "real": True,
                              "candidates": sum("random_urdfs" not in j.path for j in pb), "loadable": None}
    return {"sources": out}
