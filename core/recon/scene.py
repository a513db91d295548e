"""A reconstructed object: triplanes + field MLP, rendered or meshed in the world frame."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import trimesh
from PIL import Image

from core import cameras
from core.mesh import MeshError, marching_cubes
from core.recon.render import OccupancyRenderer, dense_render, with_smaller_chunks
from core.recon.texture import InputPhoto, PhotoProjector, normals_from_depth, photo_tensors

MAX_RENDER_SIZE = 2048


class TriplaneScene:
    """Holds the planes of one object and the rotation ``rot`` from world to the canonical frame
    they live in (p_canonical = rot @ p_world); every public method speaks world frame."""

    def __init__(self, model, state, rot: np.ndarray, fov_deg: float = cameras.DEFAULT_FOV_DEG):
        self.model, self.state, self.fov_deg = model, state, fov_deg
        self.planes = getattr(state, "planes", state)  # the triplanes [1, 3, C, R, R]
        self.rot = np.asarray(rot, dtype=np.float32)
        self._rot_t = torch.from_numpy(self.rot).to(self.planes.device)
        self._occ = None
        self._occ_grid = None
        self.projector: PhotoProjector | None = None  # set by attach_photos: the photos on the surfaces they saw

    @property
    def config(self):
        return self.model.config

    @property
    def device(self):
        return self.planes.device

    @torch.no_grad()
    def field(self, pts: torch.Tensor):
        """Density and colour at canonical points [..., N, 3] (leading dims flattened to one scene)."""
        shape = pts.shape[:-1]
        sigma, rgb = self.model.query(self.state, pts.reshape(1, -1, 3).to(self.planes.dtype))
        return sigma.view(shape), rgb.view(*shape, 3)

    @torch.no_grad()
    def query_world(self, points) -> tuple[np.ndarray, np.ndarray]:
        """Density [N] and colour [N,3] at world points [N,3] (numpy in, numpy out)."""
        pts = torch.as_tensor(np.asarray(points, dtype=np.float32), device=self.device) @ self._rot_t.T
        sigma, rgb = self.field(pts)
        return sigma.cpu().numpy(), rgb.cpu().numpy()

    @torch.no_grad()
    def sparse_field(self, pts: torch.Tensor):
        """Like ``field`` but only queries points in occupied cells of a coarse occupancy grid
        (the CPU stand-in for nerfacc's occupancy grid): empty space costs a lookup, not an MLP."""
        if self._occ_grid is None:
            dens = self.density_grid(47)
            occ = (dens > 0.5).float()[None, None]
            # dilated by one cell: samples near a surface still count (renders stay above 46 dB PSNR from a
            # dense 128-sample render; a two-cell dilation costs 40 % more time)
            self._occ_grid = F.max_pool3d(occ, 3, 1, 1)[0, 0] > 0
        res, r = self._occ_grid.shape[0], self.config.box_radius
        flat = pts.reshape(-1, 3)
        ijk = ((flat + r) / (2 * r) * (res - 1)).round().long()
        inside = ((ijk >= 0) & (ijk < res)).all(-1)
        ijk = ijk.clamp(0, res - 1)
        keep = inside & self._occ_grid[ijk[:, 0], ijk[:, 1], ijk[:, 2]]
        sigma = torch.zeros(flat.shape[0], device=flat.device)
        rgb = torch.ones(flat.shape[0], 3, device=flat.device)
        if keep.any():
            s, c = self.model.query(self.state, flat[keep][None])
            sigma[keep], rgb[keep] = s[0], c[0]
        return sigma.view(pts.shape[:-1]), rgb.view(*pts.shape[:-1], 3)

    @torch.no_grad()
    def attach_photos(self, images: list[Image.Image], w2cs: list[np.ndarray], fovs: list[float],
                      depth_size: int | None = None) -> "TriplaneScene":
        """Put the input photos on the surfaces they saw (``core.recon.texture``): each view's depth
        is rendered once from the field (at the model's resolution) for the occlusion test."""
        self.projector = None  # the visibility depth maps come from the field alone
        size = depth_size or min(self.config.image_size, 128)  # TripoSR takes 512 px: its depth at 128 is plenty
        photos = []
        for im, w, f in zip(images, w2cs, fovs):
            rgb, mask = photo_tensors(im)
            _, op, dep = self.render_tensors(w, size, f)
            depth = torch.where(op > 0.5, dep / op.clamp(min=1e-6), torch.full_like(dep, float("inf")))
            photos.append(InputPhoto(rgb.to(self.device), mask.to(self.device), np.asarray(w, np.float32), float(f),
                                     depth[None]))
        self.projector = PhotoProjector(photos)
        return self

    def _canonical_rays(self, w2c, size: int, fov_deg):
        problems = cameras.validate_w2c(w2c, look_at_tol_deg=180.0)
        if problems:
            raise cameras.CameraError(f"render camera: {'; '.join(problems)}")
        K = cameras.intrinsics(fov_deg or self.fov_deg, size)
        o, d = cameras.get_rays(w2c, K, size, device=self.device)
        return (o.reshape(-1, 3) @ self._rot_t.T), (d.reshape(-1, 3) @ self._rot_t.T)

    @torch.no_grad()
    def render_tensors(self, w2c, size: int = 128, fov_deg: float | None = None, n_samples: int | None = None):
        """rgb [S,S,3] in [0,1] on white, opacity [S,S], depth (ray distance) [S,S]."""
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 1 <= size <= MAX_RENDER_SIZE:
            raise ValueError(f"size must be an int in [1, {MAX_RENDER_SIZE}], got {size!r}")
        fov_deg = None if fov_deg is None else cameras.check_fov(fov_deg)
        size = int(size)
        o, d = self._canonical_rays(w2c, size, fov_deg)
        n = n_samples or self.config.n_samples
        if self.device.type == "cuda":
            if self._occ is None:
                self._occ = OccupancyRenderer(self.density_grid(63), self.config.box_radius, threshold=0.5)
            rgb, op, dep = with_smaller_chunks(lambda c: self._occ.render(self.field, o, d, n, chunk=c), 65536)
        else:
            rgb, op, dep = with_smaller_chunks(
                lambda c: dense_render(self.sparse_field, o, d, self.config.box_radius, n, chunk=c), 4096)
        rgb, op, dep = rgb.view(size, size, 3), op.view(size, size), dep.view(size, size)
        if self.projector is not None:
            rgb = self._with_photos(rgb, op, dep, o, d)
        return rgb, op, dep

    def _with_photos(self, rgb, op, dep, o, d):
        """The photos blended over a render: surface points at the expected depth, normals from
        the depth map, each pixel moved toward the photo by its projection weight times opacity."""
        S = rgb.shape[0]
        rot = self._rot_t
        ow, dw = (o @ rot).view(S, S, 3), (d @ rot).view(S, S, 3)  # canonical -> world
        pts = ow + dw * (dep / op.clamp(min=1e-6))[..., None]
        normals = normals_from_depth(pts, op, -dw)
        hit = op > 0.05
        if not hit.any():
            return rgb
        blended = self.projector.blend(pts[hit], normals[hit], rgb[hit])
        out = rgb.clone()
        out[hit] = rgb[hit] + op[hit][:, None] * (blended - rgb[hit])
        return out

    def render(self, w2c, size: int = 128, fov_deg: float | None = None) -> Image.Image:
        rgb = self.render_tensors(w2c, size, fov_deg)[0]
        return Image.fromarray((rgb.clamp(0, 1) * 255).round().byte().cpu().numpy(), "RGB")

    def render_orbit(self, n: int = 24, elevation_deg: float = 20.0, radius: float = 2.0, size: int = 128,
                     fov_deg: float | None = None, start_azimuth_deg: float = 0.0) -> list[Image.Image]:
        return [self.render(w, size, fov_deg) for w in cameras.orbit(n, elevation_deg, radius, start_azimuth_deg)]

    # -- meshing ----------------------------------------------------------------------

    def _grid(self, res: int) -> torch.Tensor:
        r = self.config.box_radius
        g = torch.linspace(-r, r, res, device=self.device)
        return torch.stack(torch.meshgrid(g, g, g, indexing="ij"), dim=-1)

    @torch.no_grad()
    def _density(self, pts: torch.Tensor, chunk: int = 262144) -> torch.Tensor:
        flat = pts.reshape(-1, 3)
        out = [self.model.query(self.state, flat[s:s + chunk][None].to(self.planes.dtype), with_rgb=False)[0][0]
               for s in range(0, flat.shape[0], chunk)]
        return torch.cat(out).view(pts.shape[:-1]) if out else torch.zeros(pts.shape[:-1], device=self.device)

    @torch.no_grad()
    def density_grid(self, resolution: int = 256, level: float | None = None) -> torch.Tensor:
        """Density at the (resolution+1)^3 nodes of a resolution^3-cell grid over the box
        (canonical axes, ``[x, y, z]`` indexing).

        Coarse to fine: the field is queried exactly at every 4th node; then, only inside coarse
        cells whose 8 corners straddle ``level``, at every node. Other nodes take their coarse
        cell's corner value, which lies on the same side of ``level``, so marching cubes finds
        the same surface (up to features thinner than a coarse cell) at a fraction of the cost.
        Above ``config.mc_query_resolution`` the grid is a trilinear upsampling of that one: the
        triplanes (32^2 texels by default) hold no finer detail, and the query cost is the budget."""
        level = self.config.mc_level if level is None else level
        q = self.config.mc_query_resolution
        if q and resolution > q:  # planes of R texels carry no detail a q^3 grid misses: upsample
            grid = self.density_grid(q, level)
            return F.interpolate(grid[None, None], size=(resolution + 1,) * 3, mode="trilinear", align_corners=True)[0, 0]
        n = resolution + 1
        if resolution <= 64 or resolution % 4:
            return self._density(self._grid(n))
        step = 4
        coarse = self._density(self._grid(resolution // step + 1))  # = fine nodes 0, 4, ..., resolution
        inside = (coarse > level).float()[None, None]
        cell_any = F.max_pool3d(inside, 2, 1)[0, 0] > 0
        cell_all = -F.max_pool3d(-inside, 2, 1)[0, 0] > 0
        band = cell_any & ~cell_all  # coarse cells crossing the surface
        idx = (torch.arange(n, device=self.device) // step).clamp(max=coarse.shape[0] - 1)
        fine = coarse[idx[:, None, None], idx[None, :, None], idx[None, None, :]]
        cells = band.nonzero()  # [M, 3] coarse cells; refine their (step+1)^3 nodes each
        if len(cells):
            o = torch.arange(step + 1, device=self.device)
            off = torch.stack(torch.meshgrid(o, o, o, indexing="ij"), -1).reshape(-1, 3)
            nodes = (cells[:, None, :] * step + off[None]).reshape(-1, 3)
            nodes = torch.unique(((nodes[:, 0] * n) + nodes[:, 1]) * n + nodes[:, 2])
            ijk = (nodes // (n * n), (nodes // n) % n, nodes % n)
            r = self.config.box_radius
            pts = torch.stack(ijk, dim=-1).float() * (2 * r / resolution) - r
            fine[ijk] = self._density(pts)
        return fine

    @torch.no_grad()
    def extract_mesh(self, resolution: int = 256, level: float | None = None, keep_largest: bool = True) -> trimesh.Trimesh:
        """Marching cubes on the density grid -> world-frame trimesh with per-vertex colours.

        Raises ``MeshError`` (a ValueError) when the level crosses no surface."""
        if not isinstance(resolution, int) or not 8 <= resolution <= 1024:
            raise MeshError(f"resolution must be an int in [8, 1024], got {resolution!r}")
        level = self.config.mc_level if level is None else float(level)
        grid = self.density_grid(resolution, level).float().cpu().numpy()  # resolution^3 cells
        r = self.config.box_radius
        verts, faces = marching_cubes(grid, level, (-r, r))
        _, rgb = self.field(torch.from_numpy(verts).to(self.device))
        colours = np.concatenate([(rgb.clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8),
                                  np.full((len(verts), 1), 255, np.uint8)], axis=1)
        mesh = trimesh.Trimesh(verts @ self.rot, faces, vertex_colors=colours, process=False)  # canonical -> world
        if keep_largest:
            mesh = _drop_floaters(mesh)
        if self.projector is not None:
            v = torch.as_tensor(np.asarray(mesh.vertices, np.float32), device=self.device)
            n = torch.as_tensor(np.asarray(mesh.vertex_normals, np.float32), device=self.device)  # outward (mc winding)
            c = torch.as_tensor(mesh.visual.vertex_colors[:, :3], device=self.device).float() / 255
            c = self.projector.blend(v, n, c)
            rgba = np.array(mesh.visual.vertex_colors)
            rgba[:, :3] = (c.clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
            mesh.visual.vertex_colors = rgba
        return mesh


def _drop_floaters(mesh: trimesh.Trimesh, min_fraction: float = 0.05) -> trimesh.Trimesh:
    """Remove small disconnected blobs (stray density) but keep every sizeable part.

    Connected components of the vertex graph via scipy (trimesh's split is much slower)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    f = mesh.faces
    nv = len(mesh.vertices)
    rows = np.concatenate([f[:, 0], f[:, 1], f[:, 2]])
    cols = np.concatenate([f[:, 1], f[:, 2], f[:, 0]])
    n, label = connected_components(coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(nv, nv)),
                                    directed=False)
    if n <= 1:
        return mesh
    face_label = label[f[:, 0]]
    counts = np.bincount(face_label, minlength=n)
    keep = np.isin(face_label, np.flatnonzero(counts >= min_fraction * counts.max()))
    if keep.all():
        return mesh
    out = trimesh.Trimesh(mesh.vertices, f[keep], vertex_colors=mesh.visual.vertex_colors, process=False)
    out.remove_unreferenced_vertices()
    return out


def save_orbit(frames: list[Image.Image], path: str | Path, fps: int = 12) -> Path:
    """Write orbit frames as a looping GIF or an MP4 (by extension) with imageio."""
    import imageio.v3 as iio

    path = Path(path)
    if not frames:
        raise ValueError("save_orbit: no frames")
    arrays = [np.asarray(f.convert("RGB")) for f in frames]
    path.parent.mkdir(parents=True, exist_ok=True)
    ext = path.suffix.lower()
    if ext == ".gif":
        iio.imwrite(path, arrays, duration=int(1000 / fps), loop=0)
    elif ext == ".mp4":
        iio.imwrite(path, arrays, fps=fps, codec="libx264")
    else:
        raise ValueError(f"{path}: orbit export supports .gif and .mp4")
    return path
