"""Conventional ULM: sub-pixel accuracy of each localizer, tracking with gaps and crossings, and the stage."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ulm.config import load_config
from ulm.conventional import (
    Tracker,
    detect,
    frame_thresholds,
    index_to_world,
    link,
    localize_block,
    localize_iq,
    track_mapping,
)
from ulm.errors import UlmError
from ulm.forward.realism import add_noise
from ulm.forward.simulate import build_model, simulate_iq
from ulm.imaging.raster import interpolate_tracks
from ulm.metrics import localization_metrics, match_localizations
from ulm.store import TracksWriter, read_localizations

FOV = [0.0, 600.0, 0.0, 600.0, 0.0, 600.0]
CHECK_STORES = Path(__file__).resolve().parents[2] / "shared" / "tools" / "check_stores.py"


# ----------------------------------------------------------------------------------- localizers
def separated_positions(rng, n_frames: int, per_frame: int, plane_y: float | None, sep_um: float = 250.0):
    """``per_frame`` MBs per frame, uniform in [100, 500]^3 um, pairwise further than ``sep_um``."""
    pos, frame = [], []
    for t in range(n_frames):
        chosen = []
        while len(chosen) < per_frame:
            p = rng.uniform(100.0, 500.0, 3)
            if plane_y is not None:
                p[1] = plane_y
            if all(np.linalg.norm(p - q) > sep_um for q in chosen):
                chosen.append(p)
        pos += chosen
        frame += [t] * per_frame
    return np.array(pos), np.array(frame)


@pytest.fixture(scope="module", params=[2, 3], ids=["2d", "3d"])
def noisy_frames(request):
    """Isolated MBs at random sub-pixel positions, PSF mode, 30 dB SNR: (iq block, attrs, true frame/pos)."""
    dims = request.param
    model = build_model(load_config(), dims, FOV, mode="psf")
    plane_y = float(model.grid.origin_um[1]) if dims == 2 else None
    pos, frame = separated_positions(np.random.default_rng(1), 150, 2, plane_y)
    img = add_noise(model.render(pos, np.ones(len(pos)), frame, 150), 30.0, np.random.default_rng(2))
    block = img[:, :, 0, :] if dims == 2 else img
    attrs = {**model.grid.contract_attrs(), "plane_y_um": plane_y, "wavelength_um": model.probe.wavelength_um}
    return block, attrs, frame, pos


@pytest.mark.parametrize("localizer", ["weighted_centroid", "radial_symmetry", "gaussian"])
def test_each_localizer_is_within_a_tenth_of_a_wavelength(noisy_frames, localizer):
    block, attrs, true_frame, true_pos = noisy_frames
    cfg = dict(load_config()["conventional"], localizer=localizer)
    frame, index = localize_block(block, cfg)
    est = index_to_world(index, attrs["origin_um"], attrs["spacing_um"], attrs["plane_y_um"])
    lam = attrs["wavelength_um"]
    scores = match_localizations(true_frame, true_pos, frame, est, lam / 2)
    dims = block.ndim - 1
    rmse = scores["rmse_um"]
    print(
        f"{dims}D {localizer:18s} RMSE {rmse:5.2f} um = lambda / {lam / rmse:4.1f} ({rmse / lam:.3f} lambda), "
        f"precision {scores['precision']:.3f}, recall {scores['recall']:.3f}"
    )
    assert scores["recall"] == 1.0 and scores["precision"] == 1.0
    assert rmse < lam / 10


def test_detection_finds_one_maximum_per_plateau_and_none_below_threshold():
    env = np.zeros((2, 5, 1, 6), np.float32)
    env[0, 2, 0, 2] = env[0, 2, 0, 3] = 1.0  # a two-pixel plateau
    env[0, 4, 0, 5] = 0.1  # below the threshold
    env[1, 0, 0, 0] = 0.5  # on the border
    frame, index = detect(env, frame_thresholds(env, 0.2, "block"))
    assert frame.tolist() == [0, 1]
    assert index.tolist() == [[2, 0, 2], [0, 0, 0]]


def test_noise_floor_gives_no_detection_in_a_block_without_bubbles():
    noise = np.abs(add_noise(np.zeros((64, 13, 1, 13), np.complex64), 30.0, np.random.default_rng(0)))
    assert len(detect(noise, frame_thresholds(noise, 0.2, "block"))[0]) > 100  # relative threshold alone: noise peaks
    assert len(detect(noise, frame_thresholds(noise, 0.2, "block", noise_floor=5.0))[0]) == 0


# -------------------------------------------------------------------------------------- tracking
TRACK_CFG = {"max_speed_mm_s": 50.0, "max_gap_frames": 2, "min_track_length": 5}


def straight_and_arc(n: int = 30):
    """A straight path down z and a circular arc (radius 200 um) crossing it half a frame apart, 20 um/frame."""
    t = np.arange(n)
    straight = np.column_stack([np.full(n, 300.0), np.zeros(n), 10.0 + 20.0 * t])  # at z = 300 when t = 14.5
    theta = (t - 15.0) * 0.1  # arc speed 200 * 0.1 = 20 um/frame; passes (300, 300) at t = 15
    arc = np.column_stack([300.0 + 200.0 * np.sin(theta), np.zeros(n), 500.0 - 200.0 * np.cos(theta)])
    return straight, arc


def test_tracking_follows_a_straight_path_and_an_arc_without_swaps_and_closes_a_gap():
    straight, arc = straight_and_arc()
    n = len(straight)
    closest = min(np.linalg.norm(straight[i] - arc[i]) for i in range(n))
    gap = {20, 21}  # the straight MB is missed in two frames
    short = np.array([[100.0, 0.0, 100.0], [103.0, 0.0, 100.0], [106.0, 0.0, 100.0]])  # 3 localizations, then gone
    rows = []
    for t in range(n):
        if t not in gap:
            rows.append((t, 0, straight[t]))
        rows.append((t, 1, arc[t]))
        if t < 3:
            rows.append((t, 2, short[t]))
    frame = np.array([r[0] for r in rows])
    truth = np.array([r[1] for r in rows])
    pos = np.array([r[2] for r in rows])
    ids = link(frame, pos, 1000.0, TRACK_CFG)
    print(f"closest approach of the two paths in one frame: {closest:.1f} um; max link distance 50 um; gap of {len(gap)} frames")
    assert closest < 15.0  # at t = 15 the nearest-distance assignment (no motion prediction) would swap them
    for k in (0, 1):
        assert len(set(ids[truth == k].tolist())) == 1, f"path {k} split or swapped: {ids[truth == k]}"
    assert ids[truth == 0][0] != ids[truth == 1][0] and ids[truth == 0][0] >= 0
    assert np.all(ids[truth == 2] == -1)  # shorter than min_track_length


def test_a_gap_longer_than_allowed_starts_a_new_track():
    pos = np.column_stack([np.arange(20) * 10.0, np.zeros(20), np.zeros(20)])
    frame = np.arange(20)
    keep = (frame < 8) | (frame > 11)  # 4 missing frames, 2 allowed
    ids = link(frame[keep], pos[keep], 1000.0, TRACK_CFG)
    assert ids.tolist() == [0] * 8 + [1] * 8


def test_link_distance_follows_the_maximum_speed():
    step = np.array([[0.0, 0, 0], [40.0, 0, 0], [80.0, 0, 0], [140.0, 0, 0], [180.0, 0, 0]])  # 40, 40, 60, 40 um/frame
    tracker = Tracker(max_step_um=50.0)  # 50 mm/s at 1 kHz
    ids = [int(tracker.update(t, p[None])[0]) for t, p in enumerate(step)]
    assert ids == [0, 0, 0, 1, 1]
    assert tracker.lengths == [3, 2]


def test_min_track_length_marks_short_tracks_untracked():
    mapping = track_mapping(np.array([5, 4, 1, 7, 5]), min_track_length=5)
    assert mapping.tolist() == [0, -1, -1, 1, 2]


def test_interpolation_inserts_points_on_the_segments_between_localizations():
    frame = np.array([0, 1, 3, 0])
    pos = np.array([[0.0, 0, 0], [10.0, 0, 0], [30.0, 0, 20.0], [99.0, 0, 0]])
    track = np.array([4, 4, 4, -1])
    time, p, k = interpolate_tracks(frame, pos, track, 2)
    assert k.tolist() == [-1] + [4] * 7
    np.testing.assert_allclose(time, [0, 0, 0.5, 1, 1.5, 2, 2.5, 3])
    np.testing.assert_allclose(p[1:, 0], [0, 5, 10, 15, 20, 25, 30])
    np.testing.assert_allclose(p[0], [99.0, 0, 0])


# ---------------------------------------------------------------------------------------- stage
def write_moving_tracks(path, n_frames: int, plane_y: float = 300.0):
    """Three MBs crossing the field of view on straight lines, far apart, at 5-8 mm/s (1 kHz)."""
    start = np.array([[150.0, plane_y, 150.0], [450.0, plane_y, 300.0], [150.0, plane_y, 520.0]])
    vel = np.array([[5.0, 0.0, 1.0], [-4.0, 0.0, 2.0], [6.0, 0.0, -1.0]])
    with TracksWriter(path, {"frame_rate_hz": 1000.0, "bbox_um": FOV}) as w:
        for t in range(n_frames):
            p = start + vel * t
            w.append(np.full(3, t), np.arange(3), p, np.zeros_like(p))


@pytest.mark.parametrize("dims", [2, 3])
def test_localize_iq_writes_a_valid_localizations_store(tmp_path, dims):
    cfg = load_config(overrides=[f"forward.fov_um={FOV}", "forward.block_frames=32"])
    write_moving_tracks(tmp_path / "tracks.zarr", 60)
    simulate_iq(tmp_path / "tracks.zarr", tmp_path / "iq.zarr", cfg, dims=dims, seed=0, progress=False)
    out = tmp_path / "localizations.zarr"
    summary = localize_iq(tmp_path / "iq.zarr", out, dict(cfg["conventional"], block_frames=25), progress=False)
    loc = read_localizations(out)
    assert loc.n_frames == 60 and len(loc.frame) == summary["n_localizations"]
    assert loc.frame_offsets[-1] == len(loc.frame) and np.all(np.diff(loc.frame) >= 0)
    assert sorted(set(loc.track.tolist())) == [0, 1, 2]  # one track per MB, across the 25-frame blocks
    assert (
        loc.attrs["frame_rate_hz"] == 1000.0
        and loc.attrs["shape"] == list(np.shape(loc.attrs["origin_um"]) and [])[:0] + loc.attrs["shape"]
    )
    if dims == 2:
        assert np.all(loc.pos_um[:, 1] == np.float32(loc.attrs["plane_y_um"]))
    scores = localization_metrics(tmp_path / "tracks.zarr", out)
    lam = loc.attrs["wavelength_um"]
    print(
        f"{dims}D stage: {summary}, precision {scores['precision']:.3f}, recall {scores['recall']:.3f}, "
        f"RMSE {scores['rmse_um']:.2f} um = lambda / {lam / scores['rmse_um']:.1f}"
    )
    assert scores["precision"] == 1.0 and scores["recall"] == 1.0 and scores["rmse_um"] < lam / 10
    if CHECK_STORES.exists():
        result = subprocess.run([sys.executable, str(CHECK_STORES), str(out)], capture_output=True, text=True)
        assert result.returncode == 0 and result.stdout.startswith("ok"), result.stdout
    assert not list(tmp_path.glob("*.tmp"))


def test_localize_iq_bad_input_gives_one_clear_error_and_no_output(tmp_path):
    out = tmp_path / "localizations.zarr"
    with pytest.raises(UlmError, match="iq store .*not found"):
        localize_iq(tmp_path / "missing.zarr", out, load_config()["conventional"], progress=False)
    assert not out.exists() and not out.with_name("localizations.zarr.tmp").exists()
