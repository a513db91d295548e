"""Batch rendering and the training-corpus recipe.

``run_jobs`` renders a list of object jobs (procedural objects, mesh files, URDF models) with
a pool of worker processes, one EGL context each, skipping objects that are already complete
(``meta.json`` present) and reporting, not raising, per-object failures. ``build_corpus``
assembles the jobs of the recipe: N procedural objects + the models that ship in the
``pybullet`` wheel (``pybullet_data``: its 1000 ``random_urdfs`` and the other URDF models and
meshes) + the real mesh collections of ``core.data.sources`` named with ``sources``, split into
``train/``, ``val/`` and (``unseen_sources``) ``val_unseen/`` by object.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import shutil
import sys
import time
import xml.etree.ElementTree as ET
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from core import cameras
from core.data.render import MeshError, Part, make_asset, load_asset, parts_from_scene


@dataclass
class Job:
    """One object to render. ``kind``: procedural (seed, index), mesh (path, up), urdf (path)."""
    name: str
    kind: str
    path: str = ""
    up: str | None = None
    seed: int = 0
    index: int = 0
    licence: str | None = None
    split: str | None = None  # subfolder (train/val/val_unseen) or None
    source: str = ""          # kind "source": a core.data.sources name, its archive member, category
    member: str = ""
    category: str = ""
    extra: tuple = ()


@dataclass
class RenderSettings:
    size: int = 128
    views: int = 12
    fov_deg: float = cameras.DEFAULT_FOV_DEG
    elevation_range: tuple[float, float] = (-10.0, 45.0)
    radius_range: tuple[float, float] = (1.5, 2.2)
    seed: int = 0  # view sampling seed (combined with the object name)
    depth_dtype: str = "float16"
    write_mesh: bool = True
    lighting: str = "fixed"   # "random": a photo-like rig per object (render.random_lighting), same for its views
    compress_depth: bool = False  # {i}_depth.npz instead of .npy (~4x smaller)


# ----------------------------------------------------------------------------- URDF models

_NUM = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def _floats(text: str | None, n: int, default: float = 0.0) -> list[float]:
    """The first ``n`` numbers of a URDF attribute (some files separate them with commas)."""
    vals = [float(v) for v in _NUM.findall(text or "")][:n]
    if text and len(vals) < n:
        raise MeshError(f"cannot parse {n} numbers from {text!r}")
    return vals + [default] * (n - len(vals))


def _xyz_rpy(origin) -> np.ndarray:
    import trimesh
    T = np.eye(4)
    if origin is None:
        return T
    rpy, xyz = _floats(origin.get("rpy"), 3), _floats(origin.get("xyz"), 3)
    T = trimesh.transformations.euler_matrix(*rpy, axes="sxyz")  # URDF: fixed axes, R = Rz Ry Rx
    T[:3, 3] = xyz
    return T


def _resolve(urdf: Path, filename: str) -> Path:
    """Mesh paths in URDFs are relative to the file or ``package://pkg/...``."""
    name = re.sub(r"^package://", "", filename)
    for p in [base / name for base in (urdf.parent, *urdf.parents)] + [urdf.parent / Path(name).name]:
        if p.is_file():
            return p
    raise MeshError(f"{urdf}: mesh {filename!r} not found")


def load_urdf_parts(path: str | Path) -> list[Part]:
    """Visual geometry of a URDF at its zero joint configuration (+Z up, like pybullet).

    Applies each link's joint chain, visual origins, mesh scales, and URDF material colours
    (which replace a mesh's own colour unless it is textured, as in pybullet)."""
    import trimesh
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as e:
        raise MeshError(f"{path}: unreadable URDF ({e})") from None
    colors = {}
    for m in root.iter("material"):
        c = m.find("color")
        if m.get("name") and c is not None and c.get("rgba"):
            colors.setdefault(m.get("name"), tuple(_floats(c.get("rgba"), 4, 1.0)))
    links = {l.get("name"): l for l in root.findall("link")}
    children, parent_of = {}, set()
    for j in root.findall("joint"):
        p, c = j.find("parent"), j.find("child")
        if p is None or c is None:
            continue
        children.setdefault(p.get("link"), []).append((c.get("link"), _xyz_rpy(j.find("origin"))))
        parent_of.add(c.get("link"))
    roots = [n for n in links if n not in parent_of] or list(links)[:1]
    poses, stack = {}, [(r, np.eye(4)) for r in roots]
    while stack:
        name, T = stack.pop()
        if name in poses:
            continue
        poses[name] = T
        stack += [(c, T @ J) for c, J in children.get(name, [])]
    parts = []
    for name, T in poses.items():
        link = links.get(name)
        if link is None:
            continue
        for vis in link.findall("visual"):
            geo = vis.find("geometry")
            if geo is None:
                continue
            Tv = T @ _xyz_rpy(vis.find("origin"))
            color = None
            mat = vis.find("material")
            if mat is not None:
                c = mat.find("color")
                color = tuple(_floats(c.get("rgba"), 4, 1.0)) if c is not None and c.get("rgba") else colors.get(mat.get("name"))
            if color is not None and len(color) == 4 and color[3] < 0.05:
                continue  # invisible helper geometry
            color = tuple(color[:3]) + (1.0,) if color is not None else None
            g = geo[0] if len(geo) else None
            if g is None:
                continue
            if g.tag == "mesh":
                scale = np.ones(3)
                if g.get("scale"):
                    scale = np.array(_floats(g.get("scale"), 3, 1.0))
                mpath = _resolve(path, g.get("filename", ""))
                try:
                    scene = trimesh.load(str(mpath), force="scene")
                except Exception as e:
                    raise MeshError(f"{mpath}: cannot load mesh ({type(e).__name__}: {e})") from None
                parts += parts_from_scene(scene, Tv @ np.diag([*scale, 1.0]), color)
            elif g.tag == "box":
                prim = trimesh.creation.box(_floats(g.get("size"), 3))
                parts += parts_from_scene(prim, Tv, color)
            elif g.tag == "cylinder":
                prim = trimesh.creation.cylinder(radius=float(g.get("radius")), height=float(g.get("length")), sections=32)
                parts += parts_from_scene(prim, Tv, color)
            elif g.tag == "sphere":
                prim = trimesh.creation.icosphere(subdivisions=3, radius=float(g.get("radius")))
                parts += parts_from_scene(prim, Tv, color)
    if not parts:
        raise MeshError(f"{path}: no visual triangles")
    return parts


# ----------------------------------------------------------------------------- sources

def pybullet_root() -> Path | None:
    try:
        import pybullet_data
    except ImportError:
        return None
    return Path(pybullet_data.getDataPath())


# Models in pybullet_data that are scenes, ground planes, cloth, helper parts or near-duplicate
# variants of another model (the minitaur/laikago/kuka/xarm families ship several).
_PB_SKIP = re.compile(
    r"plane|samurai|stadium|terrain|cloth|heightmap|_implicit|transparent|torus_deform|spherical_joint|"
    r"xarm/(base|link)|kuka_iiwa/model_|minitaur_(derpy|fixed|rainbow|single|v1)|laikago_toes(?!_zup\.)|"
    r"laikago/laikago\.urdf|laikago_toes_zup_lores|cube_(collisionfilter|no_rotation|rotate|small)|"
    r"sphere2\.|sphere2red_nocol|sphere_(1cm|small|with_restitution)|urdf/mug|TwoJointRobot_wo|"
    r"wsg50_one_motor_gripper_right|spirit40newer|xarm6_robot_white|tray/tray_textured2|/mjcf/|/sdf/|"
    r"cartpole|pendulum|TwoJointRobot|sphere8cube|teddy_large|tray/tray\.urdf|duck_vhacd")
# Meshes not used by any URDF above, with their up axis (checked by rendering them). Not ``bunny.obj``:
# a copy of the Stanford bunny, one of the classic test meshes kept out of training for independent
# evaluation (the corpus v2 issue's "never use" list).
_PB_MESHES = {
    "toys/cube.obj": "z", "toys/cylinder.obj": "z", "toys/prism.obj": "z", "toys/shape_sorter.obj": "z",
    "textured_sphere_smooth.obj": "z", "torus/torus_textured.obj": "z",
    "sphere_smooth.obj": "z", "stone.obj": "z", "duck.obj": "y",
}
PYBULLET_LICENCE = "pybullet_data (zlib licence, bullet3 repository)"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def pybullet_jobs(root: Path | None = None) -> list[Job]:
    """All usable models of the installed ``pybullet_data``."""
    root = root or pybullet_root()
    if root is None or not root.is_dir():
        return []
    jobs = []
    for urdf in sorted(root.rglob("*.urdf")):
        rel = urdf.relative_to(root).as_posix()
        if _PB_SKIP.search("/" + rel):
            continue
        jobs.append(Job(f"pb_{_slug(rel[:-5])}", "urdf", str(urdf), licence=PYBULLET_LICENCE))
    for rel, up in _PB_MESHES.items():
        if (root / rel).is_file():
            jobs.append(Job(f"pb_mesh_{_slug(rel.rsplit('.', 1)[0])}", "mesh", str(root / rel), up=up, licence=PYBULLET_LICENCE))
    return jobs


def procedural_jobs(n: int, seed: int = 0, start: int = 0) -> list[Job]:
    return [Job(f"proc_{seed}_{i:05d}", "procedural", seed=seed, index=i, licence="generated") for i in range(start, start + n)]


def mesh_jobs(paths: list[str], up: str | None = None) -> list[Job]:
    """Jobs for mesh files (``.urdf`` files are read as URDF models); names from the file stems."""
    jobs, seen = [], {}
    for p in paths:
        stem = _slug(Path(p).stem) or "mesh"
        seen[stem] = seen.get(stem, 0) + 1
        name = stem if seen[stem] == 1 else f"{stem}_{seen[stem]}"
        jobs.append(Job(name, "urdf" if p.lower().endswith(".urdf") else "mesh", str(p), up=up))
    return jobs


def assign_splits(jobs: list[Job], val_fraction: float, seed: int = 0,
                  unseen_sources: tuple[str, ...] = ()) -> list[Job]:
    """Split by object, a stable hash of (seed, name): adding objects never moves others. Every
    object of ``unseen_sources`` goes to ``val_unseen`` (a source with nothing in ``train``)."""
    for j in jobs:
        h = zlib.crc32(f"{seed}:{j.name}".encode()) / 2**32
        j.split = "val_unseen" if j.source and j.source in unseen_sources else "val" if h < val_fraction else "train"
    return jobs


def cap_electronics(kicad: list[Job], others: int, seed: int = 0, log=print) -> list[Job]:
    """The KiCad jobs to render so electronic parts stay under ``sources.KICAD_SHARE`` of a corpus whose
    other objects number ``others`` (counted once they are rendered: failures must not inflate the share)."""
    from core.data.sources import KICAD_SHARE
    keep = int(KICAD_SHARE * others / (1 - KICAD_SHARE))
    if len(kicad) <= keep:
        return kicad
    log(f"kicad-packages3d: {keep} of {len(kicad)} parts kept (electronics under {KICAD_SHARE:.0%} of the corpus)")
    return sorted(kicad, key=lambda j: zlib.crc32(f"sample:{seed}:{j.name}".encode()))[:keep]


def source_jobs(names: list[str], max_per_source: int | None = None, seed: int = 0, log=print) -> list[Job]:
    """Jobs for the candidates of ``core.data.sources`` sources (a stable sample of at most
    ``max_per_source`` each); a source whose package is missing is one line naming it."""
    from core.data.sources import SOURCES
    jobs = []
    for name in names:
        if name not in SOURCES:
            raise MeshError(f"unknown source {name!r} (known: {', '.join(SOURCES)})")
        src = SOURCES[name]
        if not src.installed:
            log(f"source {name}: not installed (apt-get install {src.package}); skipped")
            continue
        cands = src.list()
        if max_per_source is not None and len(cands) > max_per_source:
            # its own hash salt: the split (assign_splits) hashes names too, and must not see only small hashes
            cands = sorted(cands, key=lambda c: zlib.crc32(f"sample:{seed}:{c.name}".encode()))[:max_per_source]
        jobs += [Job(c.name, "source", c.path, licence=c.licence, source=name, member=c.member, category=c.category,
                     extra=c.extra) for c in cands]
    return unique_names(jobs)


def unique_names(jobs: list[Job]) -> list[Job]:
    """Two candidates whose slugs collide (long KiCad names cut at 80 characters, the same file name in
    two folders) would share one folder: the second would be skipped as already rendered. Every name
    after the first gets a hash of its path and member, so each object is its own folder."""
    seen: set[str] = set()
    for j in jobs:
        if j.name in seen:
            j.name = f"{j.name}-{zlib.crc32(f'{j.path}:{j.member}'.encode()):08x}"
        seen.add(j.name)
    return jobs


# ----------------------------------------------------------------------------- workers

_RENDERER = None
_SETTINGS: RenderSettings | None = None


def _init_worker(settings: RenderSettings) -> None:
    global _RENDERER, _SETTINGS
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from core.data.render import Renderer
    _SETTINGS = settings
    _RENDERER = Renderer(settings.size, settings.fov_deg)


def _build_asset(job: Job):
    if job.kind == "procedural":
        from core.data.procedural import make_object
        return make_object(job.seed, job.index)
    if job.kind == "urdf":
        parts = load_urdf_parts(job.path)
        try:
            return make_asset(parts, job.path, job.licence, "z")
        except MeshError as e:
            raise MeshError(f"{job.path}: {e}") from None
    if job.kind == "mesh":
        return load_asset(job.path, job.up, job.licence)
    if job.kind == "source":
        from core.data.sources import SOURCES, Candidate
        c = Candidate(job.source, job.name, job.path, job.member, job.licence or "", job.category, job.extra)
        where = f"{job.path}:{job.member}" if job.member else job.path
        try:
            return make_asset(SOURCES[job.source].load(c), where, job.licence, "z")
        except MeshError as e:
            raise MeshError(str(e) if where in str(e) else f"{where}: {e}") from None
    raise ValueError(f"unknown job kind {job.kind!r}")


def provenance(job: Job) -> dict:
    """What ``meta.json`` records of where an object came from."""
    meta = {"name": job.name, "split": job.split, "kind": job.kind}
    if job.kind == "source":
        from core.data.sources import SOURCES, package_version
        pkg = SOURCES[job.source].package
        meta.update(source=job.source, package=pkg, package_version=package_version(pkg), path=job.path,
                    member=job.member, licence=job.licence, category=job.category)
    return meta


def geometry_key(asset) -> str:
    """A hash of the normalised geometry (vertices rounded to 1/1000 of the object, sorted): the same
    mesh from two catalogues, whatever its texture, scale or position, has the same key."""
    import hashlib
    v = np.round(np.asarray(asset.mesh.vertices, np.float64) * 1000).astype(np.int64)
    v = v[np.lexsort(v.T[::-1])]
    return hashlib.sha1(v.tobytes() + np.int64(len(asset.mesh.faces)).tobytes()).hexdigest()[:20]


def claim_geometry(out: Path, asset, name: str) -> None:
    """Register ``asset``'s geometry under ``out/.geometry``; a MeshError naming the first owner when
    another object already has it (atomic across worker processes: O_EXCL)."""
    reg = out / ".geometry"
    reg.mkdir(parents=True, exist_ok=True)
    path = reg / geometry_key(asset)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        owner = path.read_text().strip()
        if owner and owner != name:
            raise MeshError(f"{name}: the same geometry as {owner} (a duplicate)") from None
        return
    with os.fdopen(fd, "w") as f:
        f.write(name)


def _run_job(args) -> dict:
    job, out = args
    from core.data.render import sample_views, write_object
    folder = Path(out) / job.split / job.name if job.split else Path(out) / job.name
    t0 = time.perf_counter()
    if (folder / "meta.json").is_file():
        return {"name": job.name, "split": job.split, "status": "existing", "seconds": 0.0}
    try:
        asset = _build_asset(job)
        if job.kind == "source":   # the same model in two catalogues counts once
            claim_geometry(Path(out), asset, job.name)
        s = _SETTINGS
        rng = np.random.default_rng([s.seed, zlib.crc32(job.name.encode())])
        views = sample_views(s.views, rng, s.elevation_range, s.radius_range)
        meta = provenance(job)
        if s.lighting == "random":
            from core.data.render import random_lighting
            lighting = random_lighting(rng)
            meta["lighting"] = lighting.to_dict()
        else:
            from core.data.render import Lighting
            lighting = Lighting()
        _RENDERER.set_lighting(lighting)
        write_object(_RENDERER, asset, folder, views, s.depth_dtype, s.write_mesh, meta, s.compress_depth)
    except Exception as e:  # one bad asset must not stop a batch: report it and go on
        shutil.rmtree(folder, ignore_errors=True)
        msg = str(e) if isinstance(e, MeshError) else f"{job.path or job.name}: {type(e).__name__}: {e}"
        return {"name": job.name, "split": job.split, "status": "error", "error": msg,
                "seconds": time.perf_counter() - t0}
    return {"name": job.name, "split": job.split, "status": "ok", "seconds": time.perf_counter() - t0}


def run_jobs(jobs: list[Job], out: str | Path, settings: RenderSettings, workers: int = 2,
             progress: bool = True, log=print) -> dict:
    """Render every job into ``out``; returns a summary (counts, errors, seconds)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results = []
    tasks = [(j, str(out)) for j in jobs]
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(tasks), unit="obj", file=sys.stderr, dynamic_ncols=True)
    if workers <= 1:
        _init_worker(settings)
        it = map(_run_job, tasks)
        pool = None
    else:
        pool = mp.get_context("spawn").Pool(workers, _init_worker, (settings,))  # one EGL context per worker
        it = pool.imap_unordered(_run_job, tasks, chunksize=4)
    try:
        for r in it:
            results.append(r)
            if r["status"] == "error":
                log(f"skipped: {r['error']}")
            if bar:
                bar.update(1)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
        if bar:
            bar.close()
    counts = {k: sum(r["status"] == k for r in results) for k in ("ok", "existing", "error")}
    return {"counts": counts, "errors": [r["error"] for r in results if r["status"] == "error"],
            "seconds": round(time.perf_counter() - t0, 2), "results": results}


def disk_usage(path: str | Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def build_corpus(out: str | Path, procedural: int = 1500, pybullet: bool = True,
                 val_fraction: float = 0.05, seed: int = 0, workers: int = 2, settings: RenderSettings | None = None,
                 limit_pybullet: int | None = None, log=print, sources: tuple[str, ...] = (),
                 max_per_source: int | None = None, unseen_sources: tuple[str, ...] = ()) -> dict:
    """The training-corpus recipe; writes ``out/corpus.json`` with counts, size and time."""
    settings = settings or RenderSettings(seed=seed)
    out = Path(out)
    jobs = procedural_jobs(procedural, seed)
    pb = pybullet_jobs() if pybullet else []
    jobs += pb[:limit_pybullet] if limit_pybullet is not None else pb
    jobs += source_jobs(list(dict.fromkeys(list(sources) + list(unseen_sources))), max_per_source, seed, log)
    assign_splits(jobs, val_fraction, seed, tuple(unseen_sources))
    log(f"corpus: {len(jobs)} objects ({procedural} procedural, {len(pb)} pybullet, "
        f"{sum(j.kind == 'source' for j in jobs)} from {', '.join(dict.fromkeys(j.source for j in jobs if j.source))}) "
        f"-> {out}, {workers} workers")
    kicad = [j for j in jobs if j.source == "kicad-packages3d"]
    jobs = [j for j in jobs if j.source != "kicad-packages3d"]
    summary = run_jobs(jobs, out, settings, workers, log=log)
    if kicad:  # electronics last, capped by what the rest of the corpus turned out to be
        rendered = summary["counts"]["ok"] + summary["counts"]["existing"]
        kicad = cap_electronics(kicad, rendered, seed, log)
        more = run_jobs(kicad, out, settings, workers, log=log)
        jobs += kicad
        summary = {"results": summary["results"] + more["results"], "errors": summary["errors"] + more["errors"],
                   "seconds": summary["seconds"] + more["seconds"],
                   "counts": {k: summary["counts"][k] + more["counts"][k] for k in summary["counts"]}}
    ok = [r for r in summary["results"] if r["status"] in ("ok", "existing")]
    kind = {j.name: j.source or ("procedural" if j.kind == "procedural" else "pybullet") for j in jobs}
    source = {r["name"]: kind[r["name"]] for r in ok}
    cats = {j.name: f"{j.source}/{j.category}" for j in jobs if j.source}
    counts = {
        "objects": len(ok),
        "views_per_object": settings.views,
        "images": len(ok) * settings.views,
        "train": sum(r["split"] == "train" for r in ok),
        "val": sum(r["split"] == "val" for r in ok),
        "val_unseen": sum(r["split"] == "val_unseen" for r in ok),
        "by_category": {c: sum(cats.get(r["name"]) == c for r in ok) for c in sorted(set(cats.values()))},
        "by_source": {k: sum(v == k for v in source.values()) for k in sorted(set(source.values()))},
        "failed": summary["counts"]["error"],
    }
    report = {
        "counts": counts,
        "size_bytes": disk_usage(out),
        "seconds": summary["seconds"],
        "settings": asdict(settings),
        "val_fraction": val_fraction,
        "seed": seed,
        "workers": workers,
        "errors": summary["errors"],
        "command": "python -m core.data corpus " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["corpus"] else None,
    }
    (out / "corpus.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
