"""Density maps on the ``factor`` x fine grid of the targets, and their pictures.

Every method is rendered the way the paper scores the network: time is cut into blocks of
``block_frames`` frames; within a block a map marks the fine pixels a MB passed through (a boolean
passage map, as in ``target.zarr``); the density is the number of blocks in which each pixel was
marked (so ``density > 0`` is the OR-accumulated map the Dice uses).

- ground truth (``tracks.zarr``): each bubble's path between consecutive frames is rasterised with
  :func:`ulm.imaging.raster.rasterize` (2D: bubbles of the elevation slab, projected on the plane), exactly as
  ``target.zarr`` is built, so the two give the same map;
- conventional ULM (``localizations.zarr``): segments between consecutive localizations of the same
  track (also across closed gaps), untracked localizations as points (``render.mode = segments``);
  or, with ``render.mode = points``, the count of (interpolated) localizations per fine pixel (PALA);
- network predictions / targets (COO ``pred.zarr`` / ``target.zarr``): sites with feats > 0.5, placed
  at global fine index = factor * tile origin + coords, OR-ed over the tiles of a time block and counted
  over blocks.

The fine grid is ``ulm.imaging.fine_grid(iq origin, iq spacing, factor)``: fine pixels f*i .. f*i+f-1
tile coarse pixel i. Maps are float32, (Z, X) in 2D and (Z, Y, X) in 3D. The fine grid and the
conventional map live in :mod:`ulm.imaging.density` (the metrics stage draws the conventional map too).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import font_manager
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure
from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

from ulm.errors import UlmError
from ulm.imaging import imaged_bubbles
from ulm.imaging.density import (
    CONVENTIONAL,
    GROUND_TRUTH,
    NETWORK,
    TRIVIAL,
    FineGrid,
    as_map,
    count_block,
    density_from_localizations,
    make_fine_grid,
    passage_map,
    time_blocks,
)
from ulm.imaging.raster import segments
from ulm.progress import progress_log
from ulm.store import CooStore, TracksReader, read_iq, save_figure, write_density

PASSAGES = "density = number of frame blocks in which a MB crossed the pixel"
POINTS = "density = blocks with a passage (ground truth, network); localizations per pixel (conventional)"


# ---------------------------------------------------------------------------------------- methods
def density_from_tracks(
    tracks_path: str | Path,
    iq_path: str | Path,
    factor: int,
    block_frames: int,
    progress: bool = False,
    blocks: list | None = None,
) -> tuple[np.ndarray, FineGrid]:
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
    count = np.zeros(grid.volume_shape, np.float32)
    n_frames = min(tracks.n_frames, iq.iq.shape[0])
    for t0, t1 in progress_log(time_blocks(n_frames, block_frames), unit="block", desc="render ground truth", enabled=progress):
        pos, rel = tracks.frames(t0, t1)
        bubble = tracks.bubbles(int(tracks.frame_offsets[t0]), int(tracks.frame_offsets[t1]))
        keep, index = imaged_bubbles(pos, iq.attrs, grid.origin_um, grid.spacing_um)
        count_block(count, passage_map(*segments(grid.as_volume_index(index), rel[keep], bubble[keep]), grid), blocks)
    return as_map(count, grid), grid


def _coo_shape(store: CooStore) -> tuple[int, ...]:
    """Fine-grid shape of a COO store from its attrs (``fine_shape``, or tiles x ``fine_block_shape``)."""
    attrs = store.attrs
    if "fine_shape" in attrs:
        return tuple(int(n) for n in attrs["fine_shape"])
    if "fine_block_shape" in attrs and len(store):
        far = attrs["factor"] * store.origin[:, 1:] + np.asarray(attrs["fine_block_shape"])
        return tuple(int(n) for n in far.max(axis=0))
    raise UlmError(f"{store.kind} store {store.path}: cannot tell the fine-grid shape (no fine_block_shape attr); pass shape")


def density_from_coo(
    path: str | Path,
    kind: str = "pred",
    shape: tuple[int, ...] | None = None,
    threshold: float = 0.5,
    progress: bool = False,
    blocks: list | None = None,
) -> tuple[np.ndarray, FineGrid]:
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


def _count_time_blocks(
    store: CooStore, fine_sites, shape: tuple[int, ...], desc: str, progress: bool, blocks: list | None
) -> np.ndarray:
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


# --------------------------------------------------------------------------------------- pictures
def _views(density: np.ndarray) -> list[tuple[str, np.ndarray, tuple[int, int]]]:
    """(title, 2-D image, (row axis, column axis) in array order) of a map: itself in 2D, three
    maximum intensity projections in 3D."""
    if density.ndim == 2:
        return [("", density, (0, 1))]
    return [
        ("MIP along y", density.max(axis=1), (0, 2)),
        ("MIP along x", density.max(axis=2), (0, 1)),
        ("MIP along z", density.max(axis=0), (1, 2)),
    ]


AXIS_LABELS = {2: ("z, depth (um)", "x (um)"), 3: ("z, depth (um)", "y (um)", "x (um)")}


def nice_length(width_um: float) -> float:
    """A round length (1, 2 or 5 x 10^k um) close to a fifth of ``width_um``."""
    target = max(width_um / 5, 1e-9)
    power = 10 ** np.floor(np.log10(target))
    return float(max((m * power for m in (1, 2, 5)), key=lambda v: -abs(np.log(v / target))))


def _panel(
    ax,
    image: np.ndarray,
    rows_cols: tuple[int, int],
    origin_um,
    spacing_um,
    dims: int,
    rcfg: dict,
    title: str,
) -> None:
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
    bar = AnchoredSizeBar(
        ax.transData,
        length,
        f"{length:g} um",
        "lower right",
        pad=0.4,
        color="white",
        frameon=False,
        size_vertical=(extent[2] - extent[3]) / 100,
        fontproperties=font,
    )
    ax.add_artist(bar)


def plot_density(
    density: np.ndarray, origin_um, spacing_um, path: str | Path, rcfg: dict, title: str = "", caption: str = PASSAGES
) -> None:
    """PNG of one map: the map in 2D, maximum intensity projections along y, x and z in 3D, with a
    colour bar (colour ~ density^gamma) and a scale bar.

    ``rcfg`` is the ``render`` config section (gamma, colormap, scale_bar_um); ``caption`` says what
    the density counts.
    """
    views = _views(density)
    fig = Figure(figsize=(5.2 * len(views), 4.6), layout="constrained")
    axes = fig.subplots(1, len(views), squeeze=False)
    for ax, (name, image, rc) in zip(axes[0], views, strict=True):
        _panel(ax, image, rc, origin_um, spacing_um, density.ndim, rcfg, f"{title} {name}".strip())
    fig.suptitle(_caption(density, rcfg, caption), fontsize=9)
    save_figure(fig, path)


def _caption(density: np.ndarray, rcfg: dict, caption: str) -> str:
    gamma = f"; colour ~ density^{rcfg['gamma']:g}" if rcfg["gamma"] != 1 else ""
    return f"fine grid {density.shape}, {caption}{gamma}"


def plot_comparison(
    maps: dict[str, np.ndarray],
    origin_um,
    spacing_um,
    path: str | Path,
    rcfg: dict,
    scores: dict[str, str] | None = None,
    caption: str = PASSAGES,
) -> None:
    """Side-by-side PNG: one column per method (e.g. ground truth / conventional / network), one row
    per view (1 in 2D, 3 MIPs in 3D). ``scores`` adds a line under a method's name (e.g. its Dice)."""
    names = list(maps)
    shapes = {m.shape for m in maps.values()}
    if len(shapes) != 1:
        raise UlmError(f"render: maps to compare have different shapes {sorted(shapes)}")
    dims = maps[names[0]].ndim
    n_views = 1 if dims == 2 else 3
    fig = Figure(figsize=(5.0 * len(names), 4.4 * n_views), layout="constrained")
    axes = fig.subplots(n_views, len(names), squeeze=False)
    for j, name in enumerate(names):
        for i, (view, image, rc) in enumerate(_views(maps[name])):
            title = f"{name.replace('_', ' ')} {view}".strip() + (f"\n{scores[name]}" if scores and name in scores else "")
            _panel(axes[i, j], image, rc, origin_um, spacing_um, dims, rcfg, title)
    fig.suptitle(_caption(maps[names[0]], rcfg, caption), fontsize=9)
    save_figure(fig, path)


# ------------------------------------------------------------------------------------------ stage
PathLike = str | Path


def render_all(
    tracks_path: PathLike,
    iq_path: PathLike,
    out_dir: PathLike,
    cfg: dict,
    loc_path: PathLike | None = None,
    pred_path: PathLike | dict[str, PathLike] | None = None,
    progress: bool = True,
    input_path: PathLike | None = None,
    comparison_path: PathLike | None = None,
) -> dict[str, Path]:
    """The `ulm render` stage: ``out_dir/<method>.zarr`` and ``<method>.png`` for ground_truth,
    conventional (with ``loc_path``), network (with ``pred_path``, or one map per name of a
    ``{name: pred.zarr}`` dict) and trivial (with ``input_path``, the networks' sparse input: the trivial
    predictor), and the side-by-side ``comparison_path`` (default ``out_dir/comparison.png``). Every store also
    holds its per-block maps (``blocks``).

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
        maps[CONVENTIONAL] = density_from_localizations(
            loc_path,
            factor,
            frames,
            rcfg["mode"],
            rcfg["include_untracked"],
            interp,
            progress=progress,
            blocks=parts[CONVENTIONAL],
        )[0]
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
    comparison = out_dir / "comparison.png" if comparison_path is None else Path(comparison_path)
    plot_comparison(maps, grid.origin_um, grid.spacing_um, comparison, rcfg, caption=caption)
    return written
