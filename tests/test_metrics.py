"""Metrics (Dice, localization scores, FRC) against known answers, and density rendering on the fine grid."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from ulm.config import load_config
from ulm.errors import UlmError
from ulm.forward.simulate import simulate_iq
from ulm.imaging.density import density_from_localizations, time_blocks
from ulm.metrics import compute_metrics, dice, frc, frc_resolution, localization_metrics, match_localizations
from ulm.render import density_from_coo, density_from_tracks, nice_length, plot_density, render_all
from ulm.store import Localizations, TracksWriter, read_density, read_iq, write_localizations
from ulm.targets import make_targets

FOV = [0.0, 600.0, 0.0, 600.0, 0.0, 600.0]
LAMBDA = 98.56


# ------------------------------------------------------------------------------------------- Dice
def test_dice_of_identical_disjoint_and_half_overlapping_maps():
    a = np.zeros((20, 30), np.float32)
    a[2:4, 5:10] = 3.0  # 10 pixels
    b = np.zeros_like(a)
    b[3:5, 5:10] = 1.0  # 10 pixels, 5 shared with a
    c = np.zeros_like(a)
    c[10:12, 20:25] = 1.0
    assert dice(a, a) == 1.0
    assert dice(a, c) == 0.0
    assert dice(a, b) == pytest.approx(0.5)  # 2 * 5 / (10 + 10)
    print(f"Dice: identical {dice(a, a)}, disjoint {dice(a, c)}, half overlap {dice(a, b)}")


# ---------------------------------------------------------------------------------- localizations
def true_positions(n_frames: int = 40, per_frame: int = 4, seed: int = 0):
    """MBs at least 200 um apart in each frame, inside [100, 500]^2 (x, z) on the plane y = 300."""
    rng = np.random.default_rng(seed)
    frames, pos = [], []
    for t in range(n_frames):
        chosen = []
        while len(chosen) < per_frame:
            p = np.array([rng.uniform(100, 500), 300.0, rng.uniform(100, 500)])
            if all(np.linalg.norm(p - q) > 200 for q in chosen):
                chosen.append(p)
        frames += [t] * per_frame
        pos += chosen
    return np.array(frames), np.array(pos)


@pytest.mark.parametrize("shift", [[3.0, 0.0, 4.0], [-10.0, 0.0, 12.0], [20.0, 0.0, -15.0]])
def test_shifted_localizations_score_by_the_tolerance(shift):
    frame, pos = true_positions()
    shift = np.asarray(shift)
    tol = LAMBDA / 4
    scores = match_localizations(frame, pos, frame, pos + shift, tol)
    size = np.linalg.norm(shift)
    print(
        f"shift {size:.1f} um, tolerance {tol:.2f} um: precision {scores['precision']}, recall {scores['recall']}, "
        f"RMSE {scores['rmse_um']}"
    )
    if size <= tol:
        assert scores["precision"] == scores["recall"] == scores["jaccard"] == 1.0
        assert scores["rmse_um"] == pytest.approx(size, rel=1e-9)
    else:
        assert scores["precision"] == scores["recall"] == scores["jaccard"] == 0.0
        assert scores["rmse_um"] is None


def test_matching_is_one_to_one_and_counts_false_positives_and_misses():
    frame, pos = np.array([0, 0]), np.array([[0.0, 0, 0], [100.0, 0, 0]])
    est_frame, est = np.array([0, 0, 1]), np.array([[1.0, 0, 0], [2.0, 0, 0], [100.0, 0, 0]])  # 2 near MB 0, 1 a frame late
    s = match_localizations(frame, pos, est_frame, est, 10.0)
    assert (s["true_positives"], s["false_positives"], s["false_negatives"]) == (1, 2, 1)
    assert s["precision"] == pytest.approx(1 / 3) and s["recall"] == 0.5 and s["jaccard"] == pytest.approx(1 / 4)


GRID_ATTRS = {
    "frame_rate_hz": 1000.0,
    "dims": 2,
    "origin_um": [0.0, 0.0],
    "spacing_um": [49.28, 49.28],
    "shape": [13, 13],
    "wavelength_um": LAMBDA,
    "plane_y_um": 300.0,
    "slab_um": 200.0,
}


def write_stores(tmp_path, true_frame, true_pos, est_frame, est_pos, n_frames):
    """tracks.zarr of the true positions and localizations.zarr of the estimates (a 13 x 13 grid of 49.28 um)."""
    order = np.argsort(true_frame, kind="stable")
    with TracksWriter(tmp_path / "tracks.zarr", {"frame_rate_hz": 1000.0, "bbox_um": FOV}) as w:
        w.append(true_frame[order], order, true_pos[order], np.zeros_like(true_pos))
        w.pad_frames(n_frames)
    offsets = np.concatenate([[0], np.cumsum(np.bincount(est_frame, minlength=n_frames))])
    loc = Localizations(est_frame.astype(np.int32), est_pos.astype(np.float32), np.full(len(est_frame), -1), offsets, GRID_ATTRS)
    write_localizations(tmp_path / "localizations.zarr", loc)
    return tmp_path / "tracks.zarr", tmp_path / "localizations.zarr"


def test_store_scores_use_the_imaged_slab_and_lambda_over_4(tmp_path):
    frame, pos = true_positions()
    outside = pos + [0.0, 200.0, 0.0]  # y = 500: out of the 200 um slab around the plane y = 300, not imaged
    both_frame, both_pos = np.concatenate([frame, frame]), np.concatenate([pos, outside])
    tracks, loc = write_stores(tmp_path, both_frame, both_pos, frame, pos + [6.0, 0.0, 8.0], 40)
    scores = localization_metrics(tracks, loc)
    print(f"store scores, 10 um shift: {scores}")
    assert scores["tolerance_um"] == pytest.approx(LAMBDA / 4)
    assert scores["n_true"] == len(frame) and scores["precision"] == scores["recall"] == 1.0
    assert scores["rmse_um"] == pytest.approx(10.0, rel=1e-5)
    assert scores["rmse_wavelengths"] == pytest.approx(10.0 / LAMBDA, rel=1e-5)


def test_empty_localizations_raise_one_clear_error(tmp_path):
    frame, pos = true_positions(4)
    with pytest.raises(UlmError, match="no localizations to score") as err:
        match_localizations(frame, pos, np.zeros(0, int), np.zeros((0, 3)), 10.0)
    assert "\n" not in str(err.value)
    tracks, loc = write_stores(tmp_path, frame, pos, np.zeros(0, int), np.zeros((0, 3)), 4)
    with pytest.raises(UlmError, match="no localizations to score") as err:
        localization_metrics(tracks, loc)
    assert "\n" not in str(err.value)


def test_maps_of_different_shapes_raise_one_clear_error():
    a, b = np.ones((8, 8)), np.ones((8, 9))
    for func in (dice, lambda x, y: frc(x, y, [1.0, 1.0])):
        with pytest.raises(UlmError, match=r"different shapes \(8, 8\) and \(8, 9\)") as err:
            func(a, b)
        assert "\n" not in str(err.value)
    with pytest.raises(UlmError, match="both maps are empty"):
        dice(np.zeros((4, 4)), np.zeros((4, 4)))


# -------------------------------------------------------------------------------------------- FRC
@pytest.mark.parametrize("shape", [(128, 96), (40, 32, 48)], ids=["ring", "shell"])
def test_frc_of_a_map_with_itself_is_one(shape):
    a = np.random.default_rng(0).random(shape)
    freq, curve = frc(a, a, [6.16] * len(shape))
    np.testing.assert_allclose(curve, 1.0, atol=1e-12)
    assert freq[-1] <= 0.5 / 6.16 + 1e-12
    res, crossed = frc_resolution(freq, curve)
    assert not crossed and res == pytest.approx(1 / freq[-1])


@pytest.mark.parametrize("shape", [(256, 256), (48, 48, 48)], ids=["ring", "shell"])
def test_frc_of_independent_noise_maps_is_near_zero(shape):
    rng = np.random.default_rng(1)
    freq, curve = frc(rng.random(shape), rng.random(shape), [1.0] * len(shape))
    beyond = np.abs(curve[4:])
    print(f"{len(shape)}D independent noise: mean |FRC| beyond ring 4 = {beyond.mean():.4f}, max {beyond.max():.3f}")
    assert beyond.mean() < 0.06
    assert frc_resolution(freq, curve)[1]  # falls below 1/7 at once


def test_frc_resolution_of_a_shared_band_limited_structure():
    """Common content below 1/40 cycles/um plus independent noise: the curve falls to 1/7 near 1/40."""
    rng = np.random.default_rng(2)
    n, d, cutoff = 256, 2.0, 1 / 40
    k = np.sqrt(np.add.outer(np.fft.fftfreq(n, d) ** 2, np.fft.fftfreq(n, d) ** 2))
    common = np.fft.ifft2(np.fft.fft2(rng.standard_normal((n, n))) * (k < cutoff)).real
    common /= common.std()
    a, b = common + 0.05 * rng.standard_normal((n, n)), common + 0.05 * rng.standard_normal((n, n))
    res, crossed = frc_resolution(*frc(a, b, [d, d]))
    print(f"band-limited structure (cut-off period 40 um): FRC resolution {res:.1f} um")
    assert crossed and res == pytest.approx(40.0, rel=0.1)


# ------------------------------------------------------------------------------------- rendering
@pytest.fixture(scope="module")
def imaged_run(tmp_path_factory):
    """tracks.zarr (3 MBs, 70 frames, one leaving the slab), iq.zarr (2D, 30 dB) and target.zarr with overlapping tiles."""
    tmp = tmp_path_factory.mktemp("render")
    start = np.array([[120.0, 300.0, 150.0], [480.0, 290.0, 320.0], [150.0, 220.0, 500.0]])
    vel = np.array([[5.0, 0.0, 1.5], [-4.0, 0.0, 2.5], [6.0, -1.5, -1.0]])  # MB 2 leaves the 200 um slab at t ~ 14
    with TracksWriter(tmp / "tracks.zarr", {"frame_rate_hz": 1000.0, "bbox_um": FOV}) as w:
        for t in range(70):
            p = start + vel * t
            w.append(np.full(3, t), np.arange(3), p, np.zeros_like(p))
    cfg = load_config(overrides=[f"forward.fov_um={FOV}", "sparse.block_frames=32", "sparse.tile_px=8"])
    simulate_iq(tmp / "tracks.zarr", tmp / "iq.zarr", cfg, dims=2, seed=0, progress=False)
    make_targets(tmp / "tracks.zarr", tmp / "iq.zarr", tmp / "target.zarr", cfg["sparse"], progress=False)
    return tmp, cfg


def test_ground_truth_density_equals_the_target_store_accumulated_over_blocks(imaged_run):
    tmp, cfg = imaged_run
    gt, grid = density_from_tracks(tmp / "tracks.zarr", tmp / "iq.zarr", 8, 32)
    target, tgrid = density_from_coo(tmp / "target.zarr", "target")
    assert gt.shape == target.shape == (8 * 13, 8 * 13) and gt.dtype == np.float32
    np.testing.assert_allclose(grid.origin_um, tgrid.origin_um)
    np.testing.assert_array_equal(gt, target)
    assert gt.max() == 2 and time_blocks(70, 32) == [(0, 32), (32, 64)]  # two full blocks; frames 64..69 dropped


def test_perfect_localizations_render_as_the_ground_truth(imaged_run):
    tmp, cfg = imaged_run
    from ulm.store import read_tracks

    tracks, iq = read_tracks(tmp / "tracks.zarr"), read_iq(tmp / "iq.zarr")
    seen = np.abs(tracks.pos_um[:, 1] - iq.attrs["plane_y_um"]) <= 100
    pos = tracks.pos_um[seen].copy()
    pos[:, 1] = iq.attrs["plane_y_um"]
    frame = tracks.frame[seen]
    attrs = {
        "frame_rate_hz": 1000.0,
        "dims": 2,
        "origin_um": iq.attrs["origin_um"],
        "spacing_um": iq.attrs["spacing_um"],
        "shape": list(iq.iq.shape[1:]),
        "wavelength_um": LAMBDA,
        "plane_y_um": iq.attrs["plane_y_um"],
    }
    offsets = np.concatenate([[0], np.cumsum(np.bincount(frame, minlength=70))])
    loc = Localizations(frame, pos, tracks.bubble[seen], offsets, attrs)
    conv, _ = density_from_localizations(loc, 8, 32)
    gt, _ = density_from_tracks(tmp / "tracks.zarr", tmp / "iq.zarr", 8, 32)
    np.testing.assert_array_equal(conv, gt)
    points, _ = density_from_localizations(loc, 8, 32, mode="points", interp_factor=4)
    assert points.sum() > len(frame)  # interpolated points added between localizations
    assert dice(points, gt) > 0.5


def perfect_pred(src: Path, folder: Path) -> Path:
    """The target store relabelled as a network's pred.zarr: a network that is always right."""
    shutil.copytree(src / "target.zarr", folder / "pred.zarr")
    zarr.open_group(str(folder / "pred.zarr"), mode="r+").attrs["ulm_kind"] = "pred"
    return folder / "pred.zarr"


def test_render_all_writes_density_stores_pngs_and_metrics(imaged_run, tmp_path):
    from ulm.conventional import localize_iq

    src, cfg = imaged_run
    localize_iq(src / "iq.zarr", tmp_path / "localizations.zarr", cfg["conventional"], progress=False)
    paths = render_all(
        src / "tracks.zarr",
        src / "iq.zarr",
        tmp_path / "density",
        cfg,
        tmp_path / "localizations.zarr",
        perfect_pred(src, tmp_path),
        progress=False,
    )
    assert set(paths) == {"ground_truth", "conventional", "network"}
    for name, path in paths.items():
        d = read_density(path)
        assert d.density.shape == (104, 104) and d.attrs["factor"] == 8 and d.attrs["method"] == name
        assert (tmp_path / "density" / f"{name}.png").stat().st_size > 10_000
    assert (tmp_path / "density" / "comparison.png").stat().st_size > 10_000
    metrics = compute_metrics(src / "tracks.zarr", cfg, tmp_path / "localizations.zarr", paths)
    json.dumps(metrics)  # metrics.json-ready
    loc = metrics["localization"]
    dices = metrics["dice"]
    print(
        f"2D render run (30 dB): Dice conventional {dices['conventional']:.3f}, network (= targets) {dices['network']}, "
        f"precision {loc['precision']:.3f}, recall {loc['recall']:.3f}, RMSE {loc['rmse_um']:.2f} um, "
        f"FRC halves {metrics['frc']['conventional_halves']['resolution_um']:.1f} um"
    )
    assert metrics["dice"]["network"] == 1.0 and metrics["dice"]["conventional"] > 0.5
    assert loc["recall"] > 0.9 and loc["precision"] > 0.9
    assert not list(tmp_path.rglob("*.tmp"))


def test_3d_png_shows_three_projections_with_a_scale_bar(tmp_path):
    density = np.zeros((40, 30, 50), np.float32)
    density[10:30, 15, 25] = 2.0
    rcfg = load_config()["render"]
    plot_density(density, [0.0, 0.0, 0.0], [6.16, 6.16, 6.16], tmp_path / "mip.png", rcfg, "test")
    assert (tmp_path / "mip.png").stat().st_size > 10_000
    assert nice_length(616.0) == 100.0 and nice_length(3000.0) == 500.0


def test_trivial_predictor_paints_the_kept_input_sites_block_by_block(imaged_run):
    """The trivial map marks, in each time block, the 8 x 8 fine pixels under every coarse site the sparse
    input keeps in any frame of the block; its per-block parts add up to the map."""
    from ulm.render import density_from_input
    from ulm.sparse import sparsify_iq
    from ulm.store import CooStore

    tmp, cfg = imaged_run
    sparsify_iq(tmp / "iq.zarr", tmp / "sparse.zarr", cfg["sparse"], progress=False)
    _, grid = density_from_tracks(tmp / "tracks.zarr", tmp / "iq.zarr", 8, 32)
    blocks: list = []
    trivial = density_from_input(tmp / "sparse.zarr", grid, blocks=blocks)
    store = CooStore(tmp / "sparse.zarr")
    assert len(blocks) == len(np.unique(store.origin[:, 0])) == 2
    expected = np.zeros(grid.shape, bool)
    for b in np.flatnonzero(store.origin[:, 0] == 0):
        coords, _ = store.block(int(b))
        for z, x in coords[:, 1:] + store.origin[b, 1:]:
            expected[8 * z : 8 * z + 8, 8 * x : 8 * x + 8] = True
    assert set(blocks[0].tolist()) == set(np.flatnonzero(expected).tolist())
    counts = np.bincount(np.concatenate(blocks), minlength=trivial.size).reshape(trivial.shape)
    np.testing.assert_array_equal(counts, trivial)


def test_metrics_carry_tolerant_scores_and_leave_one_block_out_replicates(imaged_run, tmp_path):
    tmp, cfg = imaged_run
    written = render_all(
        tmp / "tracks.zarr", tmp / "iq.zarr", tmp_path / "density", cfg, pred_path=perfect_pred(tmp, tmp_path), progress=False
    )
    assert len(read_density(written["network"]).blocks) == 2
    out = compute_metrics(tmp / "tracks.zarr", cfg, density_paths=written)
    assert out["dice"]["network"] == pytest.approx(1.0) and out["tolerant"]["network"]["dice_tolerant"] == pytest.approx(1.0)
    assert out["n_blocks"] == 2 and out["dice_loo"]["network"] == pytest.approx([1.0, 1.0])
