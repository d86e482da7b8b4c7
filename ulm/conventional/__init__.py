"""Conventional ULM, the baseline: detect microbubbles in the IQ envelope, localize them below the
pixel, and link them into tracks (after PALA, Heiles et al. 2022).

Detection
    Local maxima of the envelope |IQ| of each frame (strictly above every earlier neighbour and at
    least every later one in raster order, so a plateau gives one maximum; 8 neighbours in 2D, 26 in
    3D) whose value is above ``threshold`` times the block's (``threshold_mode: block``) or the frame's
    (``frame``) maximum envelope, or above ``threshold`` itself (``absolute``; one MB at the grid's
    centre depth peaks at 1 in simulated data), and above ``noise_floor`` times the block's median
    envelope (a robust noise level, so that a block without MB yields no detection). Maxima on the
    border are kept (windows are clipped).
    Optionally the ``svd_components`` largest singular components of each block are removed first.

Localization (offsets from the maximum pixel, in pixels, clipped to +-1, then world um)
    ``weighted_centroid``: centroid of the intensity |IQ|^2 over the (2 w + 1)^D window, w = ``window_px``.
    ``radial_symmetry``: Parthasarathy (2012, Nat. Methods 9:724) in D dimensions: the intensity
        gradient at the centre of every 2^D cell of the window defines a line; the estimate minimises
        the weighted sum of squared distances to all lines (weights |grad|^2 / distance to the
        gradient-weighted centroid), solved in closed form (sum w (I - n n^T)) p = sum w (I - n n^T) m.
        The gradient of a cell is the mean forward difference along each axis over the cell's 2^(D-1)
        edges (the Roberts cross in 2D). Pixel axes are used as they are: scaling them by the PSF
        widths (axial about half the lateral) did not lower the error on the sampled PSF.
    ``gaussian``: weighted least-squares fit of a separable Gaussian, ln I = a + sum_k (b_k d_k + c_k d_k^2),
        on the 3^D neighbourhood (weights I, since var(ln I) ~ 1/I for noise added to the IQ; Guo 2011), centre -b_k / (2 c_k).
        Exact for a noise-free separable Gaussian such as the PSF mode's.

Tracking
    Frame-to-frame optimal assignment (scipy ``linear_sum_assignment``). A detection may join a track
    last seen g frames earlier (g = 1 .. ``max_gap_frames`` + 1) only if it lies within
    g * ``max_speed_mm_s`` / frame rate of the track's last position; the cost is the squared distance
    to the track's constant-velocity prediction. Tracks last seen 1 frame ago are served first, then
    those with longer gaps (gap closing). Tracks with fewer than ``min_track_length`` localizations
    keep their rows with ``track = -1`` (untracked); track ids are renumbered 0.. in order of creation.

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
