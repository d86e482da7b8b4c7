"""Sparse conversion, 8x targets and the torch datasets, against brute-force answers: exact COO round
trips, top-k / threshold selections, tilings that cover the field of view, segment rasterisation,
per-block passage maps, O(1) block reads (also from DataLoader workers) and bad stores."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from ulm.cli import main
from ulm.config import load_config
from ulm.errors import UlmError
from ulm.imaging import fine_grid
from ulm.imaging.blocks import axis_starts, make_tiling
from ulm.imaging.raster import rasterize, segments
from ulm.nn.data import DenseBlocks, SparseBlocks, collate_sparse, to_spconv
from ulm.sparse import sparsify_block, sparsify_iq, store_bytes, to_dense
from ulm.store import CooStore, CooWriter, IqWriter, TracksWriter, read_iq, read_tracks
from ulm.targets import make_targets

PLANE_Y_UM, SLAB_UM = 50.0, 20.0


# ------------------------------------------------------------------------------------- helpers
def sparse_cfg(**overrides) -> dict:
    """The schema's ``sparse`` section with ``overrides``."""
    return {**load_config()["sparse"], **overrides}


def iq_attrs(dims: int, origin_um=None, spacing_um=None) -> dict:
    attrs = {
        "origin_um": list(origin_um or [0.0] * dims),
        "spacing_um": list(spacing_um or [10.0] * dims),
        "f0_hz": 15.625e6,
        "wavelength_um": 98.56,
        "frame_rate_hz": 1000.0,
        "probe": {"name": "test"},
        "mode": "psf",
    }
    if dims == 2:
        attrs |= {"plane_y_um": PLANE_Y_UM, "forward": {"slab_um": SLAB_UM}}
    return attrs


def random_iq(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


def write_iq(path: Path, data: np.ndarray, attrs: dict, block_frames: int = 4) -> Path:
    with IqWriter(path, shape=data.shape, block_frames=block_frames, attrs=attrs) as w:
        for t0 in range(0, len(data), block_frames):
            w.write(t0, data[t0 : t0 + block_frames])
    return path


def write_tracks(path: Path, rows: list[tuple[int, int, list[float]]]) -> Path:
    """tracks.zarr from (frame, bubble, [x, y, z] um) rows."""
    rows = sorted(rows, key=lambda r: r[0])
    frame = np.array([r[0] for r in rows])
    pos = np.array([r[2] for r in rows], float)
    with TracksWriter(path, {"frame_rate_hz": 1000.0}) as w:
        w.append(frame, np.array([r[1] for r in rows]), pos, np.zeros_like(pos))
    return path


def expected_features(block: np.ndarray) -> np.ndarray:
    """The block divided by the square root of its maximum power (Re^2 + Im^2, float64)."""
    power = block.real.astype(np.float64) ** 2 + block.imag.astype(np.float64) ** 2
    return (block.astype(np.complex128) / np.sqrt(power.max())).astype(np.complex64)


def normalised_power(block: np.ndarray) -> np.ndarray:
    power = np.abs(block.astype(np.complex128)) ** 2
    return power / power.max()


def flat_indices(coords: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return np.ravel_multi_index(tuple(coords.T), shape)


def crossed_cells(a: np.ndarray, b: np.ndarray, shape: tuple[int, ...]) -> set[tuple[int, ...]]:
    """Exact reference: cells of ``shape`` (cell k spans [k - 0.5, k + 0.5) on each axis) that the
    segment a -> b passes through over a positive length (the cell holding it when a == b), by
    clipping the segment against every candidate cell."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    lo = np.maximum(np.floor(np.minimum(a, b) + 0.5).astype(int), 0)
    hi = np.minimum(np.floor(np.maximum(a, b) + 0.5).astype(int), np.asarray(shape) - 1)
    if np.any(hi < lo):
        return set()
    axes = [np.arange(low, high + 1) for low, high in zip(lo, hi, strict=True)]
    cells = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, len(shape))
    s0, s1 = np.zeros(len(cells)), np.ones(len(cells))
    inside = np.ones(len(cells), bool)
    for k, d in enumerate(b - a):
        if d == 0:
            inside &= (cells[:, k] - 0.5 <= a[k]) & (a[k] < cells[:, k] + 0.5)
            continue
        t_a, t_b = (cells[:, k] - 0.5 - a[k]) / d, (cells[:, k] + 0.5 - a[k]) / d
        s0, s1 = np.maximum(s0, np.minimum(t_a, t_b)), np.minimum(s1, np.maximum(t_a, t_b))
    return set(map(tuple, cells[inside & (s1 > s0)].tolist()))


def sampled_cells(a: np.ndarray, b: np.ndarray, shape: tuple[int, ...], n: int = 20000) -> set[tuple[int, ...]]:
    """Brute-force reference: the in-range cells of ``n`` points spread evenly along a -> b."""
    p = a + (b - a) * np.linspace(0.0, 1.0, n)[:, None]
    cells = np.floor(p + 0.5).astype(int)
    cells = cells[np.all((cells >= 0) & (cells < np.asarray(shape)), axis=1)]
    return set(map(tuple, cells.tolist()))


def marked(starts, ends, shape: tuple[int, ...]) -> set[tuple[int, ...]]:
    out = np.zeros(shape, bool)
    rasterize(np.atleast_2d(np.asarray(starts, float)), np.atleast_2d(np.asarray(ends, float)), out)
    return set(map(tuple, np.argwhere(out).tolist()))


# ------------------------------------------------------------------------- 1. COO round trip
@pytest.mark.parametrize("shape", [(6, 7, 5), (4, 5, 6, 3)], ids=["2d", "3d"])
@pytest.mark.parametrize(("method", "tau", "k"), [("threshold", 0.3, 0), ("topk", 0.0, 40)], ids=["threshold", "topk"])
def test_dense_to_coo_to_dense_is_exact_at_kept_sites_and_zero_elsewhere(shape, method, tau, k):
    block = random_iq(np.random.default_rng(len(shape)), shape)
    coords, feats = sparsify_block(block, method, tau, k)
    assert coords.dtype == np.int32 and coords.shape[1] == len(shape)
    assert feats.dtype == np.float32 and feats.shape == (len(coords), 2)
    assert 0 < len(coords) < block.size
    assert np.all(np.diff(flat_indices(coords, shape)) > 0), "sites in ascending (t, z, [y,] x) order"
    dense = to_dense(coords, feats, shape)
    kept = np.zeros(shape, bool)
    kept[tuple(coords.T)] = True
    np.testing.assert_array_equal(dense[kept], expected_features(block)[kept])
    assert np.all(dense[~kept] == 0)
    assert np.abs(dense).max() == pytest.approx(1.0, abs=1e-6)  # the block's strongest site


def test_all_zero_block_keeps_nothing_by_threshold_and_has_no_nan():
    block = np.zeros((4, 3, 3), np.complex64)
    coords, feats = sparsify_block(block, "threshold", 0.0, 0)
    assert coords.shape == (0, 3) and feats.shape == (0, 2)
    coords, feats = sparsify_block(block, "topk", 0.0, 5)
    assert len(coords) == 5 and np.all(np.isfinite(feats)) and np.all(feats == 0)


# ------------------------------------------------------------------------------------ 2. top-k
@pytest.mark.parametrize("shape", [(5, 6, 7), (3, 4, 5, 6)], ids=["2d", "3d"])
def test_topk_keeps_exactly_k_of_the_strongest_sites(shape):
    block = random_iq(np.random.default_rng(1), shape)
    power = normalised_power(block)
    for k in (1, 17, 100):
        coords, _ = sparsify_block(block, "topk", 0.0, k)
        assert len(coords) == k
        kept = np.zeros(shape, bool)
        kept[tuple(coords.T)] = True
        assert power[kept].min() > power[~kept].max()


@pytest.mark.parametrize("extra", [0, 1, 1000])
def test_topk_with_k_at_least_the_block_size_keeps_every_site(extra):
    shape = (3, 4, 5)
    block = random_iq(np.random.default_rng(2), shape)
    coords, feats = sparsify_block(block, "topk", 0.0, block.size + extra)
    np.testing.assert_array_equal(flat_indices(coords, shape), np.arange(block.size))
    np.testing.assert_array_equal(to_dense(coords, feats, shape), expected_features(block))


@pytest.mark.parametrize("shape", [(3, 4, 5), (2, 3, 4, 5)], ids=["2d", "3d"])
def test_topk_ties_keep_the_lowest_flat_indices(shape):
    block = np.full(shape, 0.5 - 0.5j, np.complex64)
    block.flat[-1] = 2.0  # one strong site at the highest index, every other site tied
    block.flat[7] = 0.1  # one weak site among the low indices
    coords, _ = sparsify_block(block, "topk", 0.0, 9)
    np.testing.assert_array_equal(flat_indices(coords, shape), [0, 1, 2, 3, 4, 5, 6, 8, block.size - 1])
    again, _ = sparsify_block(block.copy(), "topk", 0.0, 9)
    np.testing.assert_array_equal(again, coords)


# -------------------------------------------------------------------------------- 3. threshold
@pytest.mark.parametrize("shape", [(6, 7, 5), (4, 5, 6, 3)], ids=["2d", "3d"])
@pytest.mark.parametrize("tau", [0.0, 0.01, 0.2, 0.75])
def test_threshold_keeps_exactly_the_sites_strictly_above_tau(shape, tau):
    block = random_iq(np.random.default_rng(3), shape)
    block.flat[::11] = 0  # exact zeros: not kept even at tau = 0
    coords, _ = sparsify_block(block, "threshold", tau, 0)
    expected = np.flatnonzero(normalised_power(block).ravel() > tau)
    np.testing.assert_array_equal(flat_indices(coords, shape), expected)


def test_threshold_drops_a_site_exactly_at_tau():
    block = np.zeros((2, 3, 4), np.complex64)
    block[0, 0, 0] = 2.0  # power 4, the block maximum
    block[1, 2, 3] = 1.0  # normalised power exactly 0.25
    block[0, 1, 1] = 1j  # exactly 0.25 too
    block[1, 0, 2] = 1.0001  # just above
    coords, feats = sparsify_block(block, "threshold", 0.25, 0)
    assert sorted(map(tuple, coords.tolist())) == [(0, 0, 0), (1, 0, 2)]
    np.testing.assert_allclose(feats, [[1.0, 0.0], [0.50005, 0.0]], rtol=1e-6)
    below, _ = sparsify_block(block, "threshold", np.nextafter(0.25, 0), 0)
    assert len(below) == 4


# ----------------------------------------------------------------------------------- 4. tiling
@pytest.mark.parametrize(
    ("n", "tile", "overlap", "starts"),
    [
        (3, 8, 0, [0]),  # smaller than a tile: one (smaller) tile
        (8, 8, 0, [0]),  # exactly one tile
        (8, 8, 7, [0]),
        (16, 8, 0, [0, 8]),
        (10, 4, 0, [0, 4, 6]),  # the last tile flush with the end
        (10, 4, 2, [0, 2, 4, 6]),
        (11, 4, 1, [0, 3, 6, 7]),
        (9, 8, 3, [0, 1]),
    ],
)
def test_axis_starts_edge_cases(n, tile, overlap, starts):
    assert axis_starts(n, tile, overlap) == starts


def test_axis_starts_cover_the_axis_with_at_least_the_overlap():
    rng = np.random.default_rng(4)
    for _ in range(300):
        tile = int(rng.integers(1, 12))
        n, overlap = int(rng.integers(tile + 1, 60)), int(rng.integers(0, tile))
        starts = np.array(axis_starts(n, tile, overlap))
        assert starts[0] == 0 and starts[-1] == n - tile
        gaps = np.diff(starts)
        assert np.all(gaps > 0) and np.all(gaps <= tile - overlap), (n, tile, overlap, starts)


def test_overlap_not_smaller_than_the_tile_is_rejected():
    with pytest.raises(UlmError, match="tile_overlap_px"):
        axis_starts(20, 4, 4)


def spatial_coverage(tiling, spatial: tuple[int, ...], t0: int) -> np.ndarray:
    count = np.zeros(spatial, int)
    for origin in tiling.tiles_of(t0):
        count[tuple(slice(o, o + n) for o, n in zip(origin[1:], tiling.block_shape[1:], strict=True))] += 1
    return count


@pytest.mark.parametrize(
    ("shape", "tile", "overlap", "disjoint"),
    [
        ((23, 8, 12), 4, 0, True),
        ((23, 8, 12), 5, 0, False),
        ((23, 9, 13), 4, 2, False),
        ((23, 3, 5), 32, 0, True),  # smaller than a tile: one tile of the whole field of view
        ((23, 8, 4, 12), 4, 0, True),
        ((23, 7, 6, 9), 4, 1, False),
    ],
)
def test_tiles_cover_every_pixel_and_time_blocks_drop_the_trailing_frames(shape, tile, overlap, disjoint):
    block_frames = 5
    tiling = make_tiling(shape, sparse_cfg(block_frames=block_frames, tile_px=tile, tile_overlap_px=overlap))
    spatial = shape[1:]
    assert tiling.block_shape == (block_frames, *(min(tile, n) for n in spatial))
    assert tiling.time_blocks() == [0, 5, 10, 15]  # 23 frames: 3 trailing frames dropped
    assert np.all(np.diff(tiling.origins[:, 0]) >= 0), "time-major"
    first = tiling.tiles_of(0)[:, 1:]
    for t0 in tiling.time_blocks():
        np.testing.assert_array_equal(tiling.tiles_of(t0)[:, 1:], first)
    assert len(np.unique(first, axis=0)) == len(first)
    assert np.all(first >= 0) and np.all(first + tiling.block_shape[1:] <= spatial)
    count = spatial_coverage(tiling, spatial, 0)
    assert count.min() >= 1
    if disjoint:
        assert count.max() == 1


def test_tiling_of_fewer_frames_than_a_block_is_rejected():
    with pytest.raises(UlmError, match="block_frames"):
        make_tiling((7, 4, 4), sparse_cfg(block_frames=8))


@pytest.mark.parametrize(("method", "tau", "k"), [("threshold", 0.3, 0), ("topk", 0.0, 25)])
def test_sparse_store_blocks_are_disjoint_in_order_and_cover_all_rows(tmp_path, method, tau, k):
    data = random_iq(np.random.default_rng(5), (22, 10, 9))
    iq = write_iq(tmp_path / "iq.zarr", data, iq_attrs(2), block_frames=4)
    cfg = sparse_cfg(method=method, tau=tau, topk_k=k, block_frames=5, tile_px=4, tile_overlap_px=1, workers=2)
    tiling = sparsify_iq(iq, tmp_path / "sparse.zarr", cfg, progress=False)
    store = CooStore(tmp_path / "sparse.zarr")
    assert len(store) == len(tiling) == 4 * 3 * 3
    np.testing.assert_array_equal(store.origin, tiling.origins)
    assert store.attrs["block_shape"] == [5, 4, 4] and store.attrs["method"] == method
    off = store.offsets
    assert off[0] == 0 and np.all(np.diff(off) >= 0) and off[-1] == store._coords.shape[0]
    for b, origin in enumerate(store.origin):
        coords, feats = store.block(b)
        assert np.all(coords >= 0) and np.all(coords < np.array(tiling.block_shape))
        t0, z0, x0 = origin
        block = data[t0 : t0 + 5, z0 : z0 + 4, x0 : x0 + 4]
        want_coords, want_feats = sparsify_block(block, method, tau, k)
        np.testing.assert_array_equal(coords, want_coords)
        np.testing.assert_array_equal(feats, want_feats)
        assert off[b + 1] - off[b] == len(want_coords)
        kept = np.zeros(block.shape, bool)
        kept[tuple(coords.T)] = True
        np.testing.assert_array_equal(to_dense(coords, feats, block.shape)[kept], expected_features(block)[kept])


# ---------------------------------------------------------------------------- 5. rasterisation
@pytest.mark.parametrize("shape", [(16, 1, 16), (12, 12, 12)], ids=["2d", "3d"])
def test_rasterize_marks_every_cell_a_segment_crosses_and_no_other(shape):
    rng = np.random.default_rng(6)
    starts, ends, union = [], [], set()
    for _ in range(150):
        a = rng.uniform(-3, np.asarray(shape) + 2)
        b = a + rng.normal(0, 4, 3)
        if shape[1] == 1:
            a[1] = b[1] = 0.0
        got = marked(a, b, shape)
        assert got == crossed_cells(a, b, shape), (a, b)
        assert sampled_cells(a, b, shape) <= got, (a, b)
        starts.append(a)
        ends.append(b)
        union |= got
    assert marked(starts, ends, shape) == union


def test_rasterize_segments_along_an_axis():
    assert marked([3.2, 0, 1.0], [3.2, 0, 9.7], (8, 1, 12)) == {(3, 0, x) for x in range(1, 11)}
    assert marked([3.2, 0, 9.7], [3.2, 0, 1.0], (8, 1, 12)) == {(3, 0, x) for x in range(1, 11)}
    assert marked([1.3, 0, 2.0], [6.6, 0, 2.0], (8, 1, 12)) == {(z, 0, 2) for z in range(1, 8)}
    assert marked([2.0, 0.6, 3.1], [2.0, 4.4, 3.1], (6, 6, 6)) == {(2, y, 3) for y in range(1, 5)}


def test_rasterize_ends_on_cell_borders_follow_the_half_open_cells():
    # x = 0.5 and x = 4.5 belong to cells 1 and 5 ([k - 0.5, k + 0.5)), in either direction
    assert marked([2.0, 0, 0.5], [2.0, 0, 4.5], (8, 1, 8)) == {(2, 0, x) for x in range(1, 6)}
    assert marked([2.0, 0, 4.5], [2.0, 0, 0.5], (8, 1, 8)) == {(2, 0, x) for x in range(1, 6)}
    assert marked([0.5, 0, 0.5], [0.5, 0, 0.5], (8, 1, 8)) == {(1, 0, 1)}


def test_rasterize_zero_length_segment_marks_one_cell():
    assert marked([2.3, 0, 4.6], [2.3, 0, 4.6], (8, 1, 8)) == {(2, 0, 5)}
    assert marked([1.49, 3.51, 0.0], [1.49, 3.51, 0.0], (4, 5, 4)) == {(1, 4, 0)}
    assert marked([9.0, 0, 1.0], [9.0, 0, 1.0], (8, 1, 8)) == set()  # outside: nothing


def test_rasterize_marks_only_in_range_cells_of_a_segment_leaving_the_buffer():
    assert marked([-5.2, 2.0, 2.1], [5.3, 2.0, 2.1], (4, 4, 4)) == {(z, 2, 2) for z in range(4)}
    assert marked([-3.0, 0, -3.0], [-1.0, 0, -1.0], (4, 1, 4)) == set()
    a, b = np.array([-2.7, 0.0, 1.2]), np.array([6.4, 0.0, 9.9])
    got = marked(a, b, (5, 1, 5))
    assert got and got == crossed_cells(a, b, (5, 1, 5)) and got <= {(z, 0, x) for z in range(5) for x in range(5)}


def test_segments_link_only_consecutive_frames_of_the_same_bubble():
    # (frame, bubble): bubble 4 at frames 0, 1, 2; bubble 9 at frames 0 and 2 (a gap); bubble 5 once
    rows = [(2, 4), (0, 9), (1, 5), (0, 4), (2, 9), (1, 4)]
    frame = np.array([f for f, _ in rows])
    bubble = np.array([b for _, b in rows])
    pos = np.column_stack([frame, np.zeros(len(rows)), bubble]).astype(float)  # encodes (frame, bubble)
    starts, ends = segments(pos, frame, bubble)
    pairs = sorted((tuple(s[[0, 2]]), tuple(e[[0, 2]])) for s, e in zip(starts, ends, strict=True))
    assert pairs == sorted(
        [
            ((0, 4), (1, 4)),
            ((1, 4), (2, 4)),
            ((0, 9), (0, 9)),  # not linked across the missing frame 1
            ((2, 9), (2, 9)),
            ((1, 5), (1, 5)),  # seen once: its point
        ]
    )


def test_segments_of_no_positions_are_empty():
    starts, ends = segments(np.zeros((0, 3)), np.zeros(0, np.int64), np.zeros(0, np.int64))
    assert starts.shape == ends.shape == (0, 3)


# --------------------------------------------------------------------------------- 6. targets
ORIGIN_2D, SPACING_2D = [100.0, 200.0], [10.0, 10.0]  # (z, x) um


def inside_path(t: int) -> list[float]:
    """A bubble crossing several tiles on a straight line inside the slab (x, y, z um)."""
    return [203.7 + 9.31 * t, PLANE_Y_UM + 3.3, 104.2 + 6.07 * t]


def outside_path(t: int) -> list[float]:
    """Another straight path in the field of view, just outside the slab."""
    return [262.1 - 4.9 * t, PLANE_Y_UM + SLAB_UM / 2 + 0.5, 111.4 + 8.3 * t]


@pytest.fixture
def small_2d(tmp_path):
    """iq.zarr (8 frames of 8 x 8 px) and tracks.zarr (an imaged and an unimaged bubble)."""
    iq = write_iq(tmp_path / "iq.zarr", random_iq(np.random.default_rng(7), (8, 8, 8)), iq_attrs(2, ORIGIN_2D, SPACING_2D))
    both = write_tracks(
        tmp_path / "both.zarr", [(t, 7, inside_path(t)) for t in range(8)] + [(t, 3, outside_path(t)) for t in range(8)]
    )
    alone = write_tracks(tmp_path / "alone.zarr", [(t, 7, inside_path(t)) for t in range(8)])
    return iq, both, alone


def test_targets_mark_exactly_the_fine_pixels_of_the_path_in_each_block(tmp_path, small_2d):
    iq, both, alone = small_2d
    factor = 4
    cfg = sparse_cfg(block_frames=4, tile_px=4, factor=factor)
    make_targets(both, iq, tmp_path / "target.zarr", cfg, progress=False)
    sparsify_iq(iq, tmp_path / "sparse.zarr", cfg, progress=False)
    target, sparse = CooStore(tmp_path / "target.zarr", "target"), CooStore(tmp_path / "sparse.zarr")
    assert len(target) == len(sparse) == 2 * 4
    np.testing.assert_array_equal(target.origin, sparse.origin)
    origin, spacing = fine_grid(ORIGIN_2D, SPACING_2D, factor)
    assert target.attrs["fine_block_shape"] == [16, 16] and target.attrs["factor"] == factor
    np.testing.assert_allclose(target.attrs["origin_um"], origin)
    stored = read_tracks(both)  # float32 positions, as the stage reads them
    path = stored.pos_um[stored.bubble == 7].astype(np.float64)
    fine = (path[:, [2, 0]] - origin) / spacing  # (z, x) fine-grid indices, frames 0..7
    total, tiles_hit = 0, 0
    for b, (t0, z0, x0) in enumerate(target.origin):
        want = set()
        for t in range(t0, t0 + 3):  # consecutive frames inside the block
            shift = factor * np.array([z0, x0])
            want |= crossed_cells(fine[t] - shift, fine[t + 1] - shift, (16, 16))
        coords, feats = target.block(b)
        assert set(map(tuple, coords.tolist())) == want, (b, t0, z0, x0)
        assert len(coords) == len(want) and feats.shape == (len(want), 1) and np.all(feats == 1)
        total, tiles_hit = total + len(want), tiles_hit + bool(want)
    assert total > 30 and tiles_hit >= 3  # the path crosses many fine pixels in several tiles
    make_targets(alone, iq, tmp_path / "alone.zarr", cfg, progress=False)
    without = CooStore(tmp_path / "alone.zarr", "target")
    for b in range(len(target)):
        np.testing.assert_array_equal(without.block(b)[0], target.block(b)[0])  # the unimaged bubble adds nothing


def test_unimaged_bubble_would_be_marked_inside_the_slab(tmp_path, small_2d):
    """Guards the test above: the same path moved into the slab does mark pixels."""
    iq, _, alone = small_2d
    moved = [(t, 3, [x, PLANE_Y_UM, z]) for t, (x, _, z) in enumerate(map(outside_path, range(8)))]
    tracks = write_tracks(tmp_path / "moved.zarr", [(t, 7, inside_path(t)) for t in range(8)] + moved)
    cfg = sparse_cfg(block_frames=4, tile_px=4, factor=4)
    make_targets(tracks, iq, tmp_path / "t.zarr", cfg, progress=False)
    make_targets(alone, iq, tmp_path / "alone.zarr", cfg, progress=False)
    a, b = CooStore(tmp_path / "t.zarr", "target"), CooStore(tmp_path / "alone.zarr", "target")
    assert a.offsets[-1] > b.offsets[-1] + 20


def test_targets_3d_mark_the_voxels_of_the_path(tmp_path):
    iq = write_iq(tmp_path / "iq.zarr", random_iq(np.random.default_rng(8), (4, 4, 4, 4)), iq_attrs(3, [0.0] * 3, [10.0] * 3))
    path = [[1.3 + 8.1 * t, 4.4 + 7.7 * t, 2.2 + 9.4 * t] for t in range(4)]  # x, y, z um
    tracks = write_tracks(tmp_path / "tracks.zarr", [(t, 0, p) for t, p in enumerate(path)])
    make_targets(tracks, iq, tmp_path / "target.zarr", sparse_cfg(block_frames=4, factor=2), progress=False)
    target = CooStore(tmp_path / "target.zarr", "target")
    assert len(target) == 1 and target.attrs["fine_block_shape"] == [8, 8, 8]
    origin, spacing = fine_grid([0.0] * 3, [10.0] * 3, 2)
    fine = (np.asarray(path, np.float32).astype(np.float64)[:, [2, 1, 0]] - origin) / spacing
    want = set().union(*(crossed_cells(fine[t], fine[t + 1], (8, 8, 8)) for t in range(3)))
    assert set(map(tuple, target.block(0)[0].tolist())) == want and len(want) > 8


def test_block_without_imaged_bubbles_has_an_empty_target(tmp_path, small_2d):
    iq, _, _ = small_2d
    tracks = write_tracks(tmp_path / "out.zarr", [(t, 3, outside_path(t)) for t in range(8)])
    make_targets(tracks, iq, tmp_path / "target.zarr", sparse_cfg(block_frames=4, tile_px=4, factor=4), progress=False)
    assert CooStore(tmp_path / "target.zarr", "target").offsets[-1] == 0


def test_targets_from_tracks_shorter_than_the_iq_give_a_clear_error(tmp_path, small_2d):
    iq, _, _ = small_2d
    tracks = write_tracks(tmp_path / "short.zarr", [(t, 7, inside_path(t)) for t in range(5)])
    with pytest.raises(UlmError, match="frames"):
        make_targets(tracks, iq, tmp_path / "target.zarr", sparse_cfg(block_frames=4, tile_px=4), progress=False)


# --------------------------------------------------------------------------------- 7. dataset
@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """A 2D iq.zarr (24 frames of 10 x 9 px) with its sparse and target stores (16 blocks)."""
    d = tmp_path_factory.mktemp("stores")
    data = random_iq(np.random.default_rng(9), (24, 10, 9))
    iq = write_iq(d / "iq.zarr", data, iq_attrs(2, ORIGIN_2D, SPACING_2D), block_frames=6)
    rows = [(t, 7, [202.0 + 3.3 * t, PLANE_Y_UM, 101.0 + 3.4 * t]) for t in range(24)]
    rows += [(t, 8, [285.0 - 2.9 * t, PLANE_Y_UM - 5, 180.0 - 2.1 * t]) for t in range(24)]
    tracks = write_tracks(d / "tracks.zarr", rows)
    cfg = sparse_cfg(tau=0.2, block_frames=6, tile_px=5, factor=4)
    sparsify_iq(iq, d / "sparse.zarr", cfg, progress=False)
    make_targets(tracks, iq, d / "target.zarr", cfg, progress=False)
    return {"iq": iq, "sparse": d / "sparse.zarr", "target": d / "target.zarr", "data": data}


def test_sparse_blocks_item_is_the_direct_store_read(stores):
    ds = SparseBlocks(stores["sparse"], stores["target"])
    sparse, target = CooStore(stores["sparse"]), CooStore(stores["target"], "target")
    assert len(ds) == len(sparse) == 16 and ds.block_shape == (6, 5, 5) and ds.factor == 4
    for b in range(len(ds)):
        item = ds[b]
        coords, feats = sparse.block(b)
        assert item["coords"].dtype == torch.int32 and item["feats"].dtype == torch.float32
        np.testing.assert_array_equal(item["coords"].numpy(), coords)
        np.testing.assert_array_equal(item["feats"].numpy(), feats)
        np.testing.assert_array_equal(item["origin"].numpy(), sparse.origin[b])
        np.testing.assert_array_equal(item["target"].numpy(), target.block(b)[0])
    assert sum(len(ds[b]["target"]) for b in range(len(ds))) > 0
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_collate_prefixes_the_batch_index_and_concatenates(stores):
    ds = SparseBlocks(stores["sparse"], stores["target"])
    items = [ds[b] for b in (5, 0, 11)]
    batch = collate_sparse(items)
    counts = [len(it["coords"]) for it in items]
    assert batch["batch_size"] == 3 and batch["indices"].dtype == torch.int32
    np.testing.assert_array_equal(batch["indices"][:, 0].numpy(), np.repeat([0, 1, 2], counts))
    np.testing.assert_array_equal(batch["indices"][:, 1:].numpy(), np.concatenate([it["coords"].numpy() for it in items]))
    np.testing.assert_array_equal(batch["features"].numpy(), np.concatenate([it["feats"].numpy() for it in items]))
    np.testing.assert_array_equal(batch["origin"].numpy(), np.stack([it["origin"].numpy() for it in items]))
    t_counts = [len(it["target"]) for it in items]
    np.testing.assert_array_equal(batch["target_indices"][:, 0].numpy(), np.repeat([0, 1, 2], t_counts))
    np.testing.assert_array_equal(batch["target_indices"][:, 1:].numpy(), np.concatenate([it["target"].numpy() for it in items]))


def test_dataloader_with_two_workers_yields_the_direct_reads(stores):
    ds = SparseBlocks(stores["sparse"], stores["target"])
    loader = torch.utils.data.DataLoader(ds, batch_size=5, num_workers=2, collate_fn=collate_sparse)
    batches = list(loader)
    assert len(batches) == 4  # 16 blocks: 5 + 5 + 5 + 1
    for i, batch in enumerate(batches):
        direct = collate_sparse([ds[b] for b in range(5 * i, min(5 * i + 5, len(ds)))])
        assert batch.keys() == direct.keys() and batch["batch_size"] == direct["batch_size"]
        for key in ("indices", "features", "origin", "target_indices"):
            assert torch.equal(batch[key], direct[key]), key


def test_to_spconv_builds_a_tensor_with_the_batch_size_and_block_shape(stores):
    spconv = pytest.importorskip("spconv.pytorch")
    ds = SparseBlocks(stores["sparse"])
    batch = collate_sparse([ds[b] for b in range(4)])
    st = to_spconv(batch, ds.block_shape)
    assert isinstance(st, spconv.SparseConvTensor)
    assert st.batch_size == 4 and list(st.spatial_shape) == [6, 5, 5]
    assert torch.equal(st.indices, batch["indices"]) and torch.equal(st.features, batch["features"])
    dense = st.dense()  # (B, C, T, Z, X)
    assert dense.shape == (4, 2, 6, 5, 5)
    idx = batch["indices"].long()
    assert torch.equal(dense[idx[:, 0], :, idx[:, 1], idx[:, 2], idx[:, 3]], batch["features"])


def test_dense_blocks_equal_the_sparse_features_at_kept_sites(stores):
    dense_ds, sparse = DenseBlocks(stores["iq"], stores["sparse"]), CooStore(stores["sparse"])
    assert len(dense_ds) == len(sparse)
    for b in range(len(sparse)):
        block = dense_ds[b]
        assert block.shape == (2, 6, 5, 5) and block.dtype == torch.float32
        coords, feats = sparse.block(b)
        at = block.numpy()[(slice(None), *coords.T)].T
        np.testing.assert_allclose(at, feats, atol=1e-6, rtol=0)
        t0, z0, x0 = sparse.origin[b]
        want = expected_features(stores["data"][t0 : t0 + 6, z0 : z0 + 5, x0 : x0 + 5])
        np.testing.assert_allclose(block[0].numpy() + 1j * block[1].numpy(), want, atol=1e-6)


def test_target_of_another_tiling_is_rejected(stores, tmp_path):
    cfg = sparse_cfg(tau=0.2, block_frames=6, tile_px=4, factor=4)
    sparsify_iq(stores["iq"], tmp_path / "other.zarr", cfg, progress=False)
    with pytest.raises(UlmError, match="does not have the blocks"):
        SparseBlocks(tmp_path / "other.zarr", stores["target"])


# ------------------------------------------------------------------------------ 8. bad stores
def _two_blocks(path: Path) -> None:
    with CooWriter(path, 3, 2, {"block_shape": [4, 4, 4]}) as w:
        w.append(np.zeros((3, 3)), np.ones((3, 2)), [0, 0, 0])
        w.append(np.ones((2, 3)), np.ones((2, 2)), [4, 0, 0])


def _replace(path: Path, name: str, data: np.ndarray) -> None:
    """Rewrite one array as another tool would: the writer's manifest goes (else it alone would object)."""
    group = zarr.open_group(str(path), mode="r+")
    group.create_array(name, data=data, overwrite=True)
    del group.attrs["ulm_manifest"]


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (lambda p: _replace(p, "block_offsets", np.array([0, 3, 9])), "block_offsets end at 9 but there are 5 rows"),
        (lambda p: _replace(p, "block_offsets", np.array([0, 4, 3])), "block_offsets must rise from 0"),
        (lambda p: _replace(p, "feats", np.ones((5, 2))), "feats must be float32"),
        (lambda p: _replace(p, "coords", np.zeros((5, 3))), "coords must be 2-D integers"),
        (lambda p: _replace(p, "block_origin", np.zeros((1, 3), np.int64)), "block_origin has 1 rows for 2 blocks"),
        (lambda p: _replace(p, "coords", np.zeros((4, 3), np.int32)), "one row per coordinate"),
    ],
    ids=["truncated", "offsets-not-rising", "feats-float64", "coords-float", "origin-rows", "row-mismatch"],
)
def test_bad_coo_store_gives_one_clear_error(tmp_path, damage, needle):
    path = tmp_path / "sparse.zarr"
    _two_blocks(path)
    assert len(CooStore(path)) == 2
    damage(path)
    with pytest.raises(UlmError, match="sparse store .*sparse.zarr") as err:
        CooStore(path)
    assert needle in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UlmError, match=needle.split(" ")[0]):
        SparseBlocks(path)  # validated in the parent process, before any worker starts


def test_missing_coo_store_is_named(tmp_path):
    with pytest.raises(UlmError, match="nothere.zarr: not found"):
        CooStore(tmp_path / "nothere.zarr")


def test_sparsify_cli_on_fewer_frames_than_a_block_fails_cleanly(tmp_path, capsys):
    iq = write_iq(tmp_path / "iq.zarr", random_iq(np.random.default_rng(10), (8, 4, 4)), iq_attrs(2))
    out = tmp_path / "sparse.zarr"
    capsys.readouterr()
    code = main(["sparsify", "--quiet", "--set", "sparse.block_frames=16", str(iq), str(out)])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2
    assert len(lines) == 1 and "8 frames" in lines[0] and "sparse.block_frames" in lines[0], lines
    assert not out.exists() and not out.with_name(out.name + ".tmp").exists()


def test_sparsify_cli_writes_a_monotone_trade_off_csv_and_a_png(tmp_path, capsys):
    fov = [0.0, 300.0, 0.0, 300.0, 0.0, 300.0]
    tracks = tmp_path / "tracks.zarr"
    with TracksWriter(tracks, {"frame_rate_hz": 1000.0, "bbox_um": fov}) as w:
        for t in range(64):
            pos = np.array([[50 + 3.0 * t, 150, 60 + 2.0 * t], [250 - 2.0 * t, 160, 200], [100, 290, 100]])  # last: off-slab
            w.append(np.full(3, t), np.arange(3), pos, np.zeros_like(pos))
    iq, out, table, plot = (tmp_path / n for n in ("iq.zarr", "sparse.zarr", "trade.csv", "trade.png"))
    assert main(["forward", "--quiet", "--set", "forward.block_frames=16", str(tracks), str(iq)]) == 0
    blocks = ["--set", "sparse.block_frames=16", "--set", "sparse.tile_px=16"]
    argv = ["sparsify", "--quiet", *blocks, "--tracks", str(tracks), "--csv", str(table), "--plot", str(plot), str(iq), str(out)]
    assert main(argv) == 0
    assert main(["targets", "--quiet", *blocks, str(tracks), str(iq), str(tmp_path / "target.zarr")]) == 0
    capsys.readouterr()
    assert len(SparseBlocks(out, tmp_path / "target.zarr")) == 4
    with open(table, newline="") as fh:
        rows = list(csv.DictReader(fh))
    sweep = sorted((r for r in rows if r["configured"] == "False"), key=lambda r: float(r["parameter"]))
    configured = [r for r in rows if r["configured"] == "True"]
    assert len(sweep) == load_config()["sparse"]["trade_off_points"] and len(configured) == 1
    kept = np.array([float(r["kept_fraction"]) for r in sweep])
    mb = np.array([float(r["mb_fraction"]) for r in sweep])
    assert np.all((kept > 0) & (kept <= 1)) and np.all((mb >= 0) & (mb <= 1))
    assert np.all(np.diff(kept) <= 0) and np.all(np.diff(mb) <= 0)  # rising tau keeps a subset
    assert kept[0] > 2 * kept[-1] and mb.max() > 0.9
    assert float(configured[0]["parameter"]) == pytest.approx(0.1)
    assert int(configured[0]["iq_bytes"]) == store_bytes(iq) and int(configured[0]["sparse_bytes"]) == store_bytes(out)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert read_iq(iq).iq.shape[0] == 64
