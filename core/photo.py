"""One photo in, files out: the app's two actions from the command line.

  python -m core.photo views PHOTO --out DIR [--azimuth 60 120 ...] [--elevation E] [--distance R] [--previews]
  python -m core.photo lift PHOTO --out object.glb [--with-views N] [--mesh-resolution 128]

The photo goes through the app's preprocessing (alpha or a plain background cut out, the object
centred on white) and is taken to be seen from azimuth 0 at ``--input-elevation`` and
``--input-distance`` (default: what the app assumes). ``views`` writes one PNG per camera
(``--previews``: also each coarse-to-fine frame the app streams); ``lift`` writes a mesh (.glb,
.ply or .obj by suffix), optionally reconstructed from the photo plus N generated views around it
(the app's *use generated views*). Both print a JSON summary; bad input is one ``error:`` line and
exit code 2, with nothing written.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from core import cameras
from core.cli import device_arg, report_input_errors
from core.nvs.sampling import SamplingParams
from core.ranges import MESH_RESOLUTION_RANGE, checked

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"


class PhotoArgumentError(ValueError):
    """A value that only makes sense once the checkpoint is known (e.g. more views than it takes)."""


def load_photo(path: str, remove_background: bool, foreground_ratio: float):
    from core.preprocess import load_input_image, preprocess
    return preprocess(load_input_image(path), remove_background=remove_background,
                      foreground_ratio=foreground_ratio, size=256)


def nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable(out: Path, folder: bool) -> None:
    """Refuse an ``--out`` that cannot be written, before any work and without writing anything:
    a file where a folder is wanted (or the reverse), or a place this user cannot create files in."""
    import os
    import tempfile
    if folder and out.exists() and not out.is_dir():
        raise PhotoArgumentError(f"--out {out}: exists and is not a folder")
    if not folder and out.is_dir():
        raise PhotoArgumentError(f"--out {out}: is a folder; give a file name ending in .glb, .ply or .obj")
    base = nearest_existing(out if folder else out.parent)
    if not base.is_dir():
        raise PhotoArgumentError(f"--out {out}: {base} is a file, not a folder")
    try:  # the only reliable test (root ignores permission bits; read-only mounts): try it
        fd, probe = tempfile.mkstemp(dir=base, prefix=".vantage-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise PhotoArgumentError(f"--out {out}: cannot write in {base} ({e.strerror or e})") from None


def check_knobs(a) -> None:
    """Every camera knob by core's one rule (``core.cameras.VIEW_RANGES``), before any work."""
    for name, value, label in (("elevation", a.input_elevation, "input elevation"),
                               ("distance", a.input_distance, "input distance")):
        if value is not None:
            cameras.check_view_knob(name, value, label=label)
    if a.command == "views":
        for az in a.azimuth:
            cameras.check_view_knob("azimuth", az)
        for name, value in (("elevation", a.elevation), ("distance", a.distance)):
            if value is not None:
                cameras.check_view_knob(name, value)


def input_camera(a) -> tuple[float, float]:
    """The photo's (elevation, distance): the flags, else what the app assumes: the reconstruction
    checkpoint's training defaults when it has them (19.5 deg, 2 for the shipped one), else 20 deg, 2."""
    from core.checkpoint import CheckpointError, load_config
    from core.recon.config import ReconConfig
    try:
        cfg = load_config(model_folder(a, "recon"))
    except CheckpointError:
        cfg = {}
    el, r = a.input_elevation, a.input_distance
    el = float(cfg.get("default_elevation_deg", ReconConfig.default_elevation_deg)) if el is None else el
    r = float(cfg.get("default_radius", ReconConfig.default_radius)) if r is None else r
    return el, r


def model_folder(a, role: str) -> Path:
    """The ``--models`` folder for ``role`` (nvs, recon), else ``--checkpoints``/role."""
    from core import weights
    return weights.resolve(a.models).get(role) or Path(a.checkpoints) / role


def load_nvs(a):
    from core.nvs import NVSPipeline
    return NVSPipeline.from_pretrained(model_folder(a, "nvs"), device=a.device)


def cmd_views(a) -> dict:
    out = Path(a.out)
    photo = load_photo(a.photo, not a.keep_background, a.foreground_ratio)
    pipe = load_nvs(a)
    in_el, in_r = input_camera(a)
    src_w2c = cameras.pose_from_spherical(0.0, in_el, in_r)
    el = in_el if a.elevation is None else a.elevation
    r = in_r if a.distance is None else a.distance
    targets = [(az, cameras.pose_from_spherical(az, el, r)) for az in a.azimuth]
    t0 = time.perf_counter()
    src = pipe.encode_source(photo.image, src_w2c)   # encoded once, reused for every camera
    results = [("input.png", photo.image)]           # written once every view is made: a bad camera writes nothing
    if a.previews:
        from tqdm import tqdm
        for az, w2c in tqdm(targets, desc="views", disable=a.quiet):
            name = f"view_az{az:g}_el{el:g}_r{r:g}"
            results += [(f"{name}.png" if f.is_final else f"{name}_scale{f.scale:02d}.png", f.image)
                        for f in pipe.stream(src, None, w2c, a.sampling)]
    else:
        images = pipe.generate(src, None, [w for _, w in targets], a.sampling)
        results += [(f"view_az{az:g}_el{el:g}_r{r:g}.png", im) for (az, _), im in zip(targets, images)]
    seconds = time.perf_counter() - t0
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, im in results:
            im.save(out / name)
    except OSError as e:
        raise PhotoArgumentError(f"--out {out}: cannot write ({e.strerror or e})") from None
    return {"out": str(out), "files": [n for n, _ in results], "n_views": len(targets), "input_elevation": in_el,
            "seconds": round(seconds, 3), "input_note": photo.note, **a.sampling.to_dict()}


def cmd_lift(a) -> dict:
    from core.mesh import export_mesh
    from core.recon import ReconPipeline
    out = Path(a.out)
    if out.suffix.lower() not in (".glb", ".ply", ".obj"):
        raise PhotoArgumentError(f"--out {out}: use a .glb, .ply or .obj file name")
    photo = load_photo(a.photo, not a.keep_background, a.foreground_ratio)
    recon = ReconPipeline.from_pretrained(model_folder(a, "recon"), device=a.device)
    if not 0 <= a.with_views < recon.config.max_views:
        raise PhotoArgumentError(f"--with-views must be in 0..{recon.config.max_views - 1}, got {a.with_views}")
    checked("--mesh-resolution", a.mesh_resolution, *MESH_RESOLUTION_RANGE, integer=True, error=PhotoArgumentError)
    in_el, in_r = input_camera(a)
    src_w2c = cameras.pose_from_spherical(0.0, in_el, in_r)
    t0 = time.perf_counter()
    images, cams = [photo.image], [src_w2c]
    if a.with_views:
        nvs = load_nvs(a)
        around = cameras.orbit(a.with_views + 1, in_el, in_r)[1:]  # all but the photo's
        images += nvs.generate(nvs.encode_source(photo.image, src_w2c), None, around, a.sampling)
        cams += around
    t_views = time.perf_counter() - t0
    scene = recon.reconstruct(images, cams)
    mesh = scene.extract_mesh(resolution=a.mesh_resolution)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        export_mesh(mesh, out)
    except OSError as e:
        raise PhotoArgumentError(f"--out {out}: cannot write ({e.strerror or e})") from None
    return {"out": str(out), "input_views": len(images), "input_elevation": in_el,
            "vertices": len(mesh.vertices), "faces": len(mesh.faces),
            "generate_s": round(t_views, 3), "seconds": round(time.perf_counter() - t0, 3), "input_note": photo.note}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m core.photo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("photo", help="image file (PNG/JPEG/WebP...; RGBA uses its alpha)")
    common.add_argument("--checkpoints", default=str(CHECKPOINTS), metavar="DIR",
                        help="folder with nvs/, tokenizer/, recon/ (default: the shipped ones)")
    common.add_argument("--models", default=None, metavar="NAMES",
                        help="published models by name (python -m core.weights list), e.g. archonview-d16,triposr: "
                             "used instead of --checkpoints' nvs/ and recon/ (default $VANTAGE_MODELS)")
    common.add_argument("--input-elevation", type=float, default=None,
                        help="how far above the object the photo was taken, degrees (default: as the app, the "
                             "reconstruction model's training elevation, 19.5 for the shipped one, else 20)")
    common.add_argument("--input-distance", type=float, default=None,
                        help="camera distance of the photo (default: as the app, 2 for the shipped models)")
    common.add_argument("--keep-background", action="store_true", help="do not cut out a plain background")
    common.add_argument("--foreground-ratio", type=float, default=0.85, help="object size over image size")
    common.add_argument("--device", type=device_arg, default="cpu", help="cpu, cuda, cuda:1, ...")
    common.add_argument("--quiet", action="store_true", help="no progress bar")
    SamplingParams.add_arguments(common.add_argument_group("sampling (views, and lift --with-views)"))
    v = sub.add_parser("views", parents=[common], help="novel views of the photo's object")
    v.add_argument("--out", required=True, metavar="DIR", help="folder for input.png and one PNG per view")
    v.add_argument("--azimuth", type=float, nargs="+", default=[60.0, 120.0, 180.0, -120.0, -60.0],
                   help="target azimuths in [-180, 180], degrees counter-clockwise from the photo's side "
                        "(default 60 120 180 -120 -60)")
    v.add_argument("--elevation", type=float, default=None, help="target elevation (default: the input's)")
    v.add_argument("--distance", type=float, default=None, help="target distance (default: the input's)")
    v.add_argument("--previews", action="store_true", help="also write every coarse-to-fine preview frame")
    lift = sub.add_parser("lift", parents=[common], help="a 3D mesh of the photo's object")
    lift.add_argument("--out", required=True, metavar="FILE", help="mesh file: .glb (+Y up), .ply or .obj (+Z up)")
    lift.add_argument("--with-views", type=int, default=0, metavar="N",
                      help="also reconstruct from N views generated around the object (default 0: the photo alone)")
    lift.add_argument("--mesh-resolution", type=int, default=128, help="marching-cubes grid (default 128)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    from core.report import emit_json

    def run() -> int:
        a.sampling = SamplingParams.from_args(a)  # a bad knob: one error line, before any model loads
        check_knobs(a)
        check_writable(Path(a.out), folder=a.command == "views")
        emit_json({"command": a.command, **(cmd_views(a) if a.command == "views" else cmd_lift(a))})
        return 0
    return report_input_errors(run, PhotoArgumentError)  # named: its module is __main__ under -m


if __name__ == "__main__":
    sys.exit(main())
