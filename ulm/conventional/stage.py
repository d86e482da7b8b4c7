"""The `ulm conventional` stage: detect, localize and track the MBs of an ``iq.zarr`` into
``localizations.zarr``, one block of frames at a time."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ulm.conventional.detect import THRESHOLD_MODES, as_volume, detect, frame_thresholds
from ulm.conventional.localize import LOCALIZERS, index_to_world, localize
from ulm.conventional.track import Tracker, max_step_um, track_mapping
from ulm.errors import UlmError
from ulm.imaging.blocks import svd_filter
from ulm.progress import progress_log
from ulm.store import LocalizationsWriter, read_iq


def localize_block(block: np.ndarray, cfg: dict) -> tuple[np.ndarray, np.ndarray]:
    """Detect and localize the MBs of one IQ block.

    Parameters
    ----------
    block : (F, Z, X) or (F, Z, Y, X) complex IQ.
    cfg : the ``conventional`` config section.

    Returns
    -------
    frame : (K,) int64 frame within the block; index : (K, 3) float64 fractional (z, y, x) pixel index.
    """
    data = svd_filter(np.asarray(block), cfg["svd_components"]) if cfg["svd_components"] > 0 else np.asarray(block)
    env = np.abs(as_volume(data)).astype(np.float32)
    thresholds = frame_thresholds(env, cfg["threshold"], cfg["threshold_mode"], cfg["noise_floor"])
    frame, peak = detect(env, thresholds, cfg["skip_border"])
    intensity = env.astype(np.float64) ** 2
    return frame, localize(intensity, frame, peak, cfg["localizer"], cfg["window_px"])


def _check_cfg(cfg: dict) -> None:
    if cfg["localizer"] not in LOCALIZERS:
        raise UlmError(f"conventional.localizer {cfg['localizer']!r}: expected one of {list(LOCALIZERS)}")
    if cfg["threshold_mode"] not in THRESHOLD_MODES:
        raise UlmError(f"conventional.threshold_mode {cfg['threshold_mode']!r}: expected one of {list(THRESHOLD_MODES)}")


def localize_iq(iq_path: str | Path, out_path: str | Path, cfg: dict, progress: bool = True) -> dict:
    """The `ulm conventional` stage: ``iq.zarr`` -> ``localizations.zarr``.

    Frame blocks of ``block_frames`` are read one at a time (memory flat in the run length),
    detected, localized and fed to one :class:`Tracker`; track ids are finalised (short tracks -> -1)
    when the store is closed.

    Parameters
    ----------
    iq_path : iq.zarr; out_path : localizations.zarr (written atomically); cfg : the ``conventional`` section.

    Returns
    -------
    dict with n_frames, n_localizations, n_tracks, tracked_fraction.
    """
    _check_cfg(cfg)
    iq = read_iq(iq_path)
    attrs = iq.attrs
    n_frames, dims = iq.iq.shape[0], iq.dims
    plane_y = float(attrs["plane_y_um"]) if dims == 2 else None
    rate = float(attrs["frame_rate_hz"])
    out_attrs = {
        "frame_rate_hz": rate,
        "dims": dims,
        "origin_um": list(attrs["origin_um"]),
        "spacing_um": list(attrs["spacing_um"]),
        "shape": list(iq.iq.shape[1:]),
        "wavelength_um": attrs["wavelength_um"],
        "localizer": cfg["localizer"],
        "conventional": cfg,
        **({"plane_y_um": plane_y, "slab_um": attrs.get("forward", {}).get("slab_um")} if dims == 2 else {}),
    }
    tracker = Tracker(max_step_um(cfg, rate), cfg["max_gap_frames"])
    n_loc = 0
    block = cfg["block_frames"]
    with LocalizationsWriter(out_path, out_attrs) as writer:
        desc = f"conventional {cfg['localizer']}"
        for t0 in progress_log(range(0, n_frames, block), unit="block", desc=desc, enabled=progress):
            rel, index = localize_block(iq.iq[t0 : t0 + block], cfg)
            pos = index_to_world(index, attrs["origin_um"], attrs["spacing_um"], plane_y)
            writer.append(t0 + rel, pos, tracker.update_frames(t0 + rel, pos))
            n_loc += len(rel)
        writer.pad_frames(n_frames)
        mapping = track_mapping(np.asarray(tracker.lengths, np.int64), cfg["min_track_length"])
        writer.relabel(mapping)
        n_tracks = int(mapping.max() + 1) if len(mapping) else 0
        lengths = np.asarray(tracker.lengths, np.int64)
        tracked = int(lengths[mapping >= 0].sum()) if len(lengths) else 0
    return {"n_frames": n_frames, "n_localizations": n_loc, "n_tracks": n_tracks, "tracked_fraction": tracked / max(n_loc, 1)}
