"""Density maps on the ``factor`` x fine grid of the targets, and their pictures.

Every method is rendered the way the paper scores the network: time is cut into blocks of
``block_frames`` frames; within a block a map marks the fine pixels a MB passed through (a boolean
passage map, as in ``target.zarr``); the density is the number of blocks in which each pixel was
marked (so ``density > 0`` is the OR-accumulated map the Dice uses).

- ground truth (``tracks.zarr``): each bubble's path between consecutive frames is rasterised with
  :func:`ulm.targets.rasterize` (2D: bubbles of the elevation slab, projected on the plane), exactly as
  ``target.zarr`` is built, so the two give the same map;
- conventional ULM (``localizations.zarr``): segments between consecutive localizations of the same
  track (also across closed gaps), untracked localizations as points (``render.mode = segments``);
  or, with ``render.mode = points``, the count of (interpolated) localizations per fine pixel (PALA);
- network predictions / targets (COO ``pred.zarr`` / ``target.zarr``): sites with feats > 0.5, placed
  at global fine index = factor * tile origin + coords, OR-ed over the tiles of a time block and counted
  over blocks.

The fine grid is ``ulm.imaging.fine_grid(iq origin, iq spacing, factor)``: fine pixels f*i .. f*i+f-1
tile coarse pixel i. Maps are float32, (Z, X) in 2D and (Z, Y, X) in 3D.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import font_manager  # noqa: E402
from matplotlib.colors import PowerNorm  # noqa: E402
from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar  # noqa: E402

from ulm.conventional import interpolate_tracks  # noqa: E402
from ulm.errors import UlmError  # noqa: E402
from ulm.imaging import continuous_index, fine_grid, in_slab, slab_of  # noqa: E402
from ulm.plots import _save  # noqa: E402
from ulm.progress import progress_log  # noqa: E402
from ulm.store import CooStore, Localizations, TracksReader, read_iq, read_localizations, write_density  # noqa: E402
from ulm.targets import rasterize, segments  # noqa: E402

GROUND_TRUTH, CONVENTIONAL, NETWORK, TRIVIAL = "ground_truth", "conventional", "network", "trivial"
PASSAGES = "density = number of frame blocks in which a MB crossed the pixel"
POINTS = "density = blocks with a passage (ground truth, network); localizations per pixel (conventional)"


# -------------------------------------------------------------------------------------------- grid
@dataclass(frozen=True)
class FineGrid:
    """The fine grid: ``origin_um``, ``spacing_um`` (D,) in array order, ``shape`` (D,), ``factor``."""

    origin_um: np.ndarray
    spacing_um: np.ndarray
    shape: tuple[int, ...]
    factor: int

    @property
    def dims(self) -> int:
        return len(self.shape)

    @property
    def volume_shape(self) -> tuple[int, int, int]:
        """(Z, Y, X) with Y = 1 in 2D (the layout of :func:`ulm.targets.rasterize`)."""
        return (self.shape[0], 1, self.shape[1]) if self.dims == 2 else tuple(self.shape)

    def attrs(self, method: str) -> dict:
        """Attrs of a ``density/<method>.zarr`` store."""
        return {"origin_um": self.origin_um.tolist(), "spacing_um": self.spacing_um.tolist(), "factor": self.factor,
                "method": method}  # fmt: skip

    def volume_index(self, pos_um: np.ndarray) -> np.ndarray:
        """(K, 3) fractional fine index (z, y, x) of world positions (K, 3) um; y = 0 in 2D."""
        idx = continuous_index(np.asarray(pos_um, float).reshape(-1, 3), self.origin_um, self.spacing_um)
        return np.column_stack([idx[:, 0], np.zeros(len(idx)), idx[:, 1]]) if self.dims == 2 else idx


def make_fine_grid(origin_um, spacing_um, shape: tuple[int, ...], factor: int) -> FineGrid:
    """The ``factor`` x fine grid of an iq grid (origin, spacing in um and spatial shape, array order)."""
    origin, spacing = fine_grid(origin_um, spacing_um, factor)
    return FineGrid(origin, spacing, tuple(int(factor * n) for n in shape), int(factor))


def time_blocks(n_frames: int, block_frames: int) -> list[tuple[int, int]]:
    """Frame ranges [t0, t1) of the blocks: full blocks only, like the sparse tiling (one short block
    when the run is shorter than ``block_frames``)."""
    if n_frames <= block_frames:
        return [(0, n_frames)]
    return [(t0, t0 + block_frames) for t0 in range(0, n_frames - block_frames + 1, block_frames)]


def _passages(starts: np.ndarray, ends: np.ndarray, grid: FineGrid) -> np.ndarray:
    """Boolean (Z, Y, X) map of the fine pixels crossed by segments (K, 3) -> (K, 3) (fine indices)."""
    buf = np.zeros(grid.volume_shape, dtype=bool)
    if len(starts):
        rasterize(np.ascontiguousarray(starts, np.float64), np.ascontiguousarray(ends, np.float64), buf)
    return buf


def _add_block(count: np.ndarray, passages: np.ndarray, blocks: list | None) -> None:
    """Count one block's boolean passage map; with ``blocks``, also keep its marked pixels (flat indices,
    the same in the (Z, X) map as in the (Z, 1, X) volume)."""
    count += passages
    if blocks is not None:
        blocks.append(np.flatnonzero(passages))


def _as_map(volume: np.ndarray, grid: FineGrid) -> np.ndarray:
    return (volume[:, 0, :] if grid.dims == 2 else volume).astype(np.float32)


# ---------------------------------------------------------------------------------------- methods
def density_from_tracks(tracks_path: str | Path, iq_path: str | Path, factor: int, block_frames: int,
                        progress: bool = False, blocks: list | None = None) -> tuple[np.ndarray, FineGrid]:  # fmt: skip
    """Ground-truth density: number of blocks in which a bubble path crossed each fine pixel.

    Parameters
    ----------
    tracks_path : tracks.zarr; iq_path : iq.zarr (its grid, plane and slab); factor : fine-grid factor
        (``sparse.factor``); block_frames : frames per block (``sparse.block_frames``).

    blocks : optional list; each block's marked pixels (flat indices into the map) are appended to it.

    Returns
    -------
    density : float32 (Zf, Xf) or (Zf, Yf, Xf); grid : the fine grid.
    """
    iq, tracks = read_iq(iq_path), TracksReader(tracks_path)
    grid = make_fine_grid(iq.attrs["origin_um"], iq.attrs["spacing_um"], iq.iq.shape[1:], factor)
    plane_y, slab = slab_of(iq.attrs)
    count = np.zeros(grid.volume_shape, np.float32)
    n_frames = min(tracks.n_frames, iq.iq.shape[0])
    for t0, t1 in progress_log(time_blocks(n_frames, block_frames), unit="block", desc="render ground truth", enabled=progress):
        pos, rel = tracks.frames(t0, t1)
        bubble = tracks.bubbles(int(tracks.frame_offsets[t0]), int(tracks.frame_offsets[t1]))
        keep = in_slab(pos, plane_y, slab)
        _add_block(count, _passages(*segments(grid.volume_index(pos[keep]), rel[keep], bubble[keep]), grid), blocks)
    return _as_map(count, grid), grid


def track_segments(index: np.ndarray, frame: np.ndarray, track: np.ndarray, include_untracked: bool = True
                   ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Segments between consecutive localizations (by frame) of each track, and untracked points.

    Parameters
    ----------
    index : (K, 3) fine indices; frame : (K,) frames; track : (K,) ids, -1 = untracked.

    Returns
    -------
    starts, ends : (S, 3); a track seen once, and every untracked localization when
    ``include_untracked``, gives a zero-length segment (its point).
    """
    if len(index) == 0:
        return np.zeros((0, 3)), np.zeros((0, 3))
    order = np.lexsort((frame, track))
    p, k = index[order], track[order]
    tracked = k >= 0
    linked = (k[1:] == k[:-1]) & tracked[1:]
    has_prev = np.concatenate([[False], linked])
    has_next = np.concatenate([linked, [False]])
    alone = ~has_prev & ~has_next & (tracked | include_untracked)
    return np.concatenate([p[:-1][linked], p[alone]]), np.concatenate([p[1:][linked], p[alone]])


def _point_counts(index: np.ndarray, grid: FineGrid) -> np.ndarray:
    """Count of points (K, 3 fine indices) per fine pixel, (Z, Y, X) float32."""
    count = np.zeros(grid.volume_shape, np.float32)
    cell = np.rint(index).astype(np.int64)
    inside = np.all((cell >= 0) & (cell < np.asarray(grid.volume_shape)), axis=1)
    np.add.at(count, tuple(cell[inside].T), 1.0)
    return count


def density_from_localizations(loc: str | Path | Localizations, factor: int, block_frames: int, mode: str = "segments",
                               include_untracked: bool = True, interp_factor: int = 1, select: np.ndarray | None = None,
                               progress: bool = False, blocks: list | None = None) -> tuple[np.ndarray, FineGrid]:  # fmt: skip
    """Conventional ULM density on the fine grid of the localizations' iq grid.

    Parameters
    ----------
    loc : localizations.zarr or its contents (attrs need origin_um, spacing_um, shape).
    factor, block_frames : as :func:`density_from_tracks`.
    mode : ``segments`` (passage maps per block, counted over blocks) or ``points`` (localizations per
        fine pixel after ``interp_factor`` x linear interpolation of the tracks).
    include_untracked : draw localizations with track -1 (as points).
    select : optional (M,) bool mask of the localizations to draw (e.g. one half for the FRC).
    blocks : optional list; in ``segments`` mode each block's marked pixels (flat indices) are appended.

    Returns
    -------
    density : float32 (Zf, Xf) or (Zf, Yf, Xf); grid : the fine grid.
    """
    loc = loc if isinstance(loc, Localizations) else read_localizations(loc)
    missing = [k for k in ("origin_um", "spacing_um", "shape") if k not in loc.attrs]
    if missing:
        raise UlmError(f"localizations: attrs lack {missing}; write them with ulm.conventional.localize_iq")
    if mode not in ("segments", "points"):
        raise UlmError(f"render.mode {mode!r}: expected segments or points")
    grid = make_fine_grid(loc.attrs["origin_um"], loc.attrs["spacing_um"], loc.attrs["shape"], factor)
    keep = np.ones(len(loc.frame), bool) if select is None else np.asarray(select, bool)
    if not include_untracked:
        keep &= loc.track >= 0
    frame, pos, track = loc.frame[keep], loc.pos_um[keep], loc.track[keep]
    if mode == "points":
        _, pos, _ = interpolate_tracks(frame, pos, track, interp_factor)
        return _as_map(_point_counts(grid.volume_index(pos), grid), grid), grid
    count = np.zeros(grid.volume_shape, np.float32)
    spans = time_blocks(loc.n_frames, block_frames)
    for t0, t1 in progress_log(spans, unit="block", desc="render conventional", enabled=progress):
        rows = (frame >= t0) & (frame < t1)
        starts, ends = track_segments(grid.volume_index(pos[rows]), frame[rows], track[rows], include_untracked)
        _add_block(count, _passages(starts, ends, grid), blocks)
    return _as_map(count, grid), grid


def _coo_shape(store: CooStore) -> tuple[int, ...]:
    """Fine-grid shape of a COO store from its attrs (``fine_shape``, or tiles x ``fine_block_shape``)."""
    attrs = store.attrs
    if "fine_shape" in attrs:
        return tuple(int(n) for n in attrs["fine_shape"])
    if "fine_block_shape" in attrs and len(store):
        far = attrs["factor"] * store.origin[:, 1:] + np.asarray(attrs["fine_block_shape"])
        return tuple(int(n) for n in far.max(axis=0))
    raise UlmError(f"{store.kind} store {store.path}: cannot tell the fine-grid shape (no fine_block_shape attr); pass shape")


def density_from_coo(path: str | Path, kind: str = "pred", shape: tuple[int, ...] | None = None, threshold: float = 0.5,
                     progress: bool = False, blocks: list | None = None) -> tuple[np.ndarray, FineGrid]:  # fmt: skip
    """Density of a fine-grid COO store (``pred.zarr`` / ``target.zarr``): sites with feats > ``threshold``,
    OR-ed over the tiles of each time block, counted over blocks.

    Parameters
    ----------
    path : the store; kind : ``pred`` or ``target`` (for messages); shape : fine-grid shape (array
        order), default from the store's attrs (factor x the iq shape when given the iq.zarr shape).
    blocks : optional list; each time block's marked pixels (flat indices) are appended to it.

    Returns
    -------
    density : float32 (Zf, Xf) or (Zf, Yf, Xf); grid : the fine grid from the store's attrs.
    """
    store = CooStore(path, kind)
    missing = [k for k in ("factor", "origin_um", "spacing_um") if k not in store.attrs]
    if missing:
        raise UlmError(f"{kind} store {path}: missing attrs {missing}")
    factor = int(store.attrs["factor"])
    shape = tuple(int(n) for n in shape) if shape is not None else _coo_shape(store)
    grid = FineGrid(np.asarray(store.attrs["origin_um"], float), np.asarray(store.attrs["spacing_um"], float), shape, factor)

    def fine_sites(b: int) -> np.ndarray:
        coords, feats = store.block(b)
        return coords[feats[:, 0] > threshold].astype(np.int64) + factor * store.origin[b, 1:]

    return _count_time_blocks(store, fine_sites, shape, f"render {kind}", progress, blocks), grid


def _count_time_blocks(store: CooStore, fine_sites, shape: tuple[int, ...], desc: str, progress: bool,
                       blocks: list | None) -> np.ndarray:  # fmt: skip
    """Fine sites of the tiles of each time block (``fine_sites(b)``: (K, D) fine indices of COO block b),
    OR-ed over the tiles and counted over time blocks: float32 map of ``shape``; with ``blocks``, each time
    block's marked pixels (flat indices) are appended to it."""
    count = np.zeros(int(np.prod(shape)), np.float32)
    for t0 in progress_log(np.unique(store.origin[:, 0]), unit="block", desc=desc, enabled=progress):
        flat = []
        for b in np.flatnonzero(store.origin[:, 0] == t0):
            sites = fine_sites(int(b))
            inside = np.all((sites >= 0) & (sites < np.asarray(shape)), axis=1)
            flat.append(np.ravel_multi_index(tuple(sites[inside].T), shape))
        marked = np.unique(np.concatenate(flat))
        count[marked] += 1.0
        if blocks is not None:
            blocks.append(marked)
    return count.reshape(shape)


def density_from_input(path: str | Path, grid: FineGrid, progress: bool = False, blocks: list | None = None) -> np.ndarray:
    """The trivial predictor's density: in each time block, every fine pixel under a site that the
    sparse input (``sparse.zarr``) keeps in any frame (the input projected over time and upsampled by the
    grid's factor), counted over blocks. A network that only paints its input scores this.

    Returns float32 (Zf, Xf) or (Zf, Yf, Xf) on ``grid``; ``blocks`` as :func:`density_from_coo`."""
    store = CooStore(path, "sparse")
    f = grid.factor
    cell = np.stack(np.meshgrid(*[np.arange(f)] * grid.dims, indexing="ij"), -1).reshape(-1, grid.dims)

    def fine_sites(b: int) -> np.ndarray:  # every fine pixel under the block's kept coarse sites
        coarse = np.unique(store.block(b)[0][:, 1:].astype(np.int64), axis=0) + store.origin[b, 1:]
        return (f * coarse[:, None, :] + cell[None]).reshape(-1, grid.dims)

    return _count_time_blocks(store, fine_sites, tuple(grid.shape), "render trivial", progress, blocks)


def split_halves(loc: Localizations, by: str = "tracks") -> tuple[np.ndarray, np.ndarray]:
    """Two complementary (M,) bool masks of the localizations: even / odd track ids (untracked rows by
    frame parity) for ``by = tracks``, even / odd frames for ``by = frames``."""
    if by == "tracks":
        key = np.where(loc.track >= 0, loc.track, loc.frame)
    elif by == "frames":
        key = loc.frame.astype(np.int64)
    else:
        raise UlmError(f"metrics.frc_split {by!r}: expected tracks or frames")
    even = key % 2 == 0
    return even, ~even


# --------------------------------------------------------------------------------------- pictures
def _views(density: np.ndarray) -> list[tuple[str, np.ndarray, tuple[int, int]]]:
    """(title, 2-D image, (row axis, column axis) in array order) of a map: itself in 2D, three
    maximum intensity projections in 3D."""
    if density.ndim == 2:
        return [("", density, (0, 1))]
    return [("MIP along y", density.max(axis=1), (0, 2)), ("MIP along x", density.max(axis=2), (0, 1)),
            ("MIP along z", density.max(axis=0), (1, 2))]  # fmt: skip


AXIS_LABELS = {2: ("z, depth (um)", "x (um)"), 3: ("z, depth (um)", "y (um)", "x (um)")}


def nice_length(width_um: float) -> float:
    """A round length (1, 2 or 5 x 10^k um) close to a fifth of ``width_um``."""
    target = max(width_um / 5, 1e-9)
    power = 10 ** np.floor(np.log10(target))
    return float(max((m * power for m in (1, 2, 5)), key=lambda v: -abs(np.log(v / target))))


def _panel(ax, image: np.ndarray, rows_cols: tuple[int, int], origin_um, spacing_um, dims: int, rcfg: dict, title: str,
           ) -> None:  # fmt: skip
    """One image with world extents, colour bar and scale bar."""
    r, c = rows_cols
    o, s = np.asarray(origin_um, float), np.asarray(spacing_um, float)
    extent = [o[c] - s[c] / 2, o[c] + (image.shape[1] - 0.5) * s[c], o[r] + (image.shape[0] - 0.5) * s[r], o[r] - s[r] / 2]
    vmax = float(image.max()) if image.size and image.max() > 0 else 1.0
    norm = PowerNorm(rcfg["gamma"], vmin=0, vmax=vmax)
    shown = ax.imshow(image, extent=extent, cmap=rcfg["colormap"], norm=norm, interpolation="nearest")
    ax.figure.colorbar(shown, ax=ax, shrink=0.85).set_label("density", fontsize=8)
    labels = AXIS_LABELS[dims]
    ax.set_ylabel(labels[r])
    ax.set_xlabel(labels[c])
    ax.set_title(title, fontsize=9)
    length = rcfg["scale_bar_um"] or nice_length(extent[1] - extent[0])
    font = font_manager.FontProperties(size=8)
    bar = AnchoredSizeBar(ax.transData, length, f"{length:g} um", "lower right", pad=0.4, color="white", frameon=False,
                          size_vertical=(extent[2] - extent[3]) / 100, fontproperties=font)  # fmt: skip
    ax.add_artist(bar)


def plot_density(density: np.ndarray, origin_um, spacing_um, path: str | Path, rcfg: dict, title: str = "",
                 caption: str = PASSAGES) -> None:  # fmt: skip
    """PNG of one map: the map in 2D, maximum intensity projections along y, x and z in 3D, with a
    colour bar (colour ~ density^gamma) and a scale bar.

    ``rcfg`` is the ``render`` config section (gamma, colormap, scale_bar_um); ``caption`` says what
    the density counts.
    """
    views = _views(density)
    fig, axes = plt.subplots(1, len(views), figsize=(5.2 * len(views), 4.6), squeeze=False, layout="constrained")
    for ax, (name, image, rc) in zip(axes[0], views, strict=True):
        _panel(ax, image, rc, origin_um, spacing_um, density.ndim, rcfg, f"{title} {name}".strip())
    fig.suptitle(_caption(density, rcfg, caption), fontsize=9)
    _save(fig, path)


def _caption(density: np.ndarray, rcfg: dict, caption: str) -> str:
    gamma = f"; colour ~ density^{rcfg['gamma']:g}" if rcfg["gamma"] != 1 else ""
    return f"fine grid {density.shape}, {caption}{gamma}"


def plot_comparison(maps: dict[str, np.ndarray], origin_um, spacing_um, path: str | Path, rcfg: dict,
                    scores: dict[str, str] | None = None, caption: str = PASSAGES) -> None:  # fmt: skip
    """Side-by-side PNG: one column per method (e.g. ground truth / conventional / network), one row
    per view (1 in 2D, 3 MIPs in 3D). ``scores`` adds a line under a method's name (e.g. its Dice)."""
    names = list(maps)
    shapes = {m.shape for m in maps.values()}
    if len(shapes) != 1:
        raise UlmError(f"render: maps to compare have different shapes {sorted(shapes)}")
    dims = maps[names[0]].ndim
    n_views = 1 if dims == 2 else 3
    fig, axes = plt.subplots(n_views, len(names), figsize=(5.0 * len(names), 4.4 * n_views), squeeze=False,
                             layout="constrained")  # fmt: skip
    for j, name in enumerate(names):
        for i, (view, image, rc) in enumerate(_views(maps[name])):
            title = f"{name.replace('_', ' ')} {view}".strip() + (f"\n{scores[name]}" if scores and name in scores else "")
            _panel(axes[i, j], image, rc, origin_um, spacing_um, dims, rcfg, title)
    fig.suptitle(_caption(maps[names[0]], rcfg, caption), fontsize=9)
    _save(fig, path)


# ------------------------------------------------------------------------------------------ stage
PathLike = str | Path


def render_all(tracks_path: PathLike, iq_path: PathLike, out_dir: PathLike, cfg: dict, loc_path: PathLike | None = None,
               pred_path: PathLike | dict[str, PathLike] | None = None, progress: bool = True,
               input_path: PathLike | None = None) -> dict[str, Path]:  # fmt: skip
    """The `ulm render` stage: ``out_dir/<method>.zarr`` and ``<method>.png`` for ground_truth,
    conventional (with ``loc_path``), network (with ``pred_path``, or one map per name of a
    ``{name: pred.zarr}`` dict) and trivial (with ``input_path``, the networks' sparse input: the trivial
    predictor), and ``comparison.png``. Every store also holds its per-block maps (``blocks``).

    ``cfg`` is the whole validated config (uses ``sparse.factor``, ``sparse.block_frames``,
    ``render`` and ``conventional.interp_factor``). Returns method -> density store path.
    """
    out_dir = Path(out_dir)
    factor, frames, rcfg = cfg["sparse"]["factor"], cfg["sparse"]["block_frames"], cfg["render"]
    parts: dict[str, list | None] = {GROUND_TRUTH: []}
    gt, grid = density_from_tracks(tracks_path, iq_path, factor, frames, progress, blocks=parts[GROUND_TRUTH])
    maps = {GROUND_TRUTH: gt}
    if loc_path is not None:
        interp = cfg["conventional"]["interp_factor"]
        parts[CONVENTIONAL] = [] if rcfg["mode"] == "segments" else None
        maps[CONVENTIONAL] = density_from_localizations(loc_path, factor, frames, rcfg["mode"], rcfg["include_untracked"], interp,
                                                        progress=progress, blocks=parts[CONVENTIONAL])[0]  # fmt: skip
    preds = {NETWORK: pred_path} if isinstance(pred_path, PathLike) else dict(pred_path or {})
    for name, path in preds.items():  # one map per network (e.g. network-sparse, network-dense)
        parts[name] = []
        maps[name] = density_from_coo(path, "pred", shape=grid.shape, progress=progress, blocks=parts[name])[0]
    if input_path is not None:
        parts[TRIVIAL] = []
        maps[TRIVIAL] = density_from_input(input_path, grid, progress, blocks=parts[TRIVIAL])
    written = {}
    for name, density in maps.items():
        written[name] = out_dir / f"{name}.zarr"
        write_density(written[name], density, {**grid.attrs(name), "block_frames": frames, "render": rcfg}, parts[name])
        caption = POINTS if rcfg["mode"] == "points" and name == CONVENTIONAL else PASSAGES
        plot_density(density, grid.origin_um, grid.spacing_um, out_dir / f"{name}.png", rcfg, name.replace("_", " "), caption)
    caption = POINTS if rcfg["mode"] == "points" and CONVENTIONAL in maps else PASSAGES
    plot_comparison(maps, grid.origin_um, grid.spacing_um, out_dir / "comparison.png", rcfg, caption=caption)
    return written
