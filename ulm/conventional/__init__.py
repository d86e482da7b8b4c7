"""Conventional ULM, the baseline: detect microbubbles in the IQ envelope, localize them below the
pixel, and link them into tracks (after PALA, Heiles et al. 2022).

Each step is described where it is written: detection (local maxima of the envelope above a threshold and
a noise floor) in :mod:`~ulm.conventional.detect`, the three sub-pixel localizers (weighted centroid,
radial symmetry, Gaussian fit) in :mod:`~ulm.conventional.localize`, and frame-to-frame optimal assignment
with gap closing in :mod:`~ulm.conventional.track`.

Modules: :mod:`~ulm.conventional.detect`, :mod:`~ulm.conventional.localize` (the three localizers),
:mod:`~ulm.conventional.track` and :mod:`~ulm.conventional.stage` (`ulm conventional`). Interpolating tracks
for point rendering is :func:`ulm.imaging.raster.interpolate_tracks`.
"""

from ulm.conventional.detect import THRESHOLD_MODES, as_volume, detect, frame_thresholds, noise_level
from ulm.conventional.localize import LOCALIZERS, MAX_OFFSET_PX, index_to_world, localize
from ulm.conventional.stage import localize_block, localize_iq
from ulm.conventional.track import INFEASIBLE, Tracker, link, max_step_um, track_mapping
from ulm.imaging.raster import interpolate_tracks

__all__ = [
    "INFEASIBLE",
    "LOCALIZERS",
    "MAX_OFFSET_PX",
    "THRESHOLD_MODES",
    "Tracker",
    "as_volume",
    "detect",
    "frame_thresholds",
    "index_to_world",
    "interpolate_tracks",
    "link",
    "localize",
    "localize_block",
    "localize_iq",
    "max_step_um",
    "noise_level",
    "track_mapping",
]
