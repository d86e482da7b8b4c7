"""Scores against the ground truth: Dice of density maps, localization precision / recall / Jaccard /
RMSE, and Fourier ring (2D) / shell (3D) correlation resolution.

- Dice (the paper's metric): 2 |A n B| / (|A| + |B|) of the binarised accumulated maps A = a > 0, B = b > 0.
- Localization scores: in every frame the localizations are matched one-to-one to the true MB
  positions by optimal assignment (scipy ``linear_sum_assignment`` on the distances); a pair closer than
  the tolerance (default lambda / 4) is a true positive. precision = TP / detections, recall = TP / true
  MBs, Jaccard = TP / (TP + FP + FN), RMSE over the true positives. The true MBs of a 2D run are those
  of the elevation slab, projected on the imaging plane; in both 2D and 3D only MBs inside the imaged
  grid (pixel centres +- half a pixel) count.
- FRC / FSC: correlation of the Fourier transforms of two maps over rings (shells) one frequency step
  wide (the coarsest 1 / (N spacing) over the axes), up to the smallest Nyquist frequency; the
  resolution is 1 / the first frequency (linear interpolation) where the curve falls below the
  threshold (1/7). ``compute_metrics`` reports (a) the conventional map split in two halves (by track-id
  parity by default, so the halves hold different MBs; by frame parity on request) and (b) each method
  against the ground-truth map. Where the curve never falls below the threshold the resolution is
  the grid's limit, 1 / (largest ring frequency), flagged ``crossed: false``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from scipy.ndimage import binary_dilation
from scipy.optimize import linear_sum_assignment

from ulm.errors import UlmError
from ulm.imaging import imaged_bubbles
from ulm.imaging.density import CONVENTIONAL, GROUND_TRUTH, density_from_localizations, split_halves
from ulm.store import Localizations, TracksReader, read_density, read_localizations

UNMATCHED = 1e18


# ------------------------------------------------------------------------------------------- maps
def check_same_shape(a: np.ndarray, b: np.ndarray, what: str = "maps") -> None:
    """Raise UlmError (one line) unless ``a`` and ``b`` have the same shape."""
    if np.shape(a) != np.shape(b):
        raise UlmError(f"{what} have different shapes {np.shape(a)} and {np.shape(b)}; render them on the same fine grid")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of the binarised maps ``a > 0`` and ``b > 0`` (same shape).

    Raises UlmError if the shapes differ or both maps are empty.
    """
    check_same_shape(a, b)
    ba, bb = np.asarray(a) > 0, np.asarray(b) > 0
    total = int(ba.sum()) + int(bb.sum())
    if total == 0:
        raise UlmError("dice: both maps are empty (no MB passage in either); nothing to compare")
    return 2.0 * int(np.logical_and(ba, bb).sum()) / total


def tolerant_scores(a: np.ndarray, b: np.ndarray) -> dict:
    """Scores of map ``a`` against the truth ``b`` that forgive a one-pixel offset (3^d neighbourhood):
    precision = |A n dil(B)| / |A|, recall = |B n dil(A)| / |B|, Dice = (|A n dil(B)| + |B n dil(A)|) /
    (|A| + |B|). A map that paints a blob around the vessels keeps a low precision and Dice."""
    check_same_shape(a, b)
    ba, bb = np.asarray(a) > 0, np.asarray(b) > 0
    structure = np.ones((3,) * ba.ndim, bool)
    hit_a = int(np.logical_and(ba, binary_dilation(bb, structure)).sum())
    hit_b = int(np.logical_and(bb, binary_dilation(ba, structure)).sum())
    na, nb = int(ba.sum()), int(bb.sum())
    return {
        "dice_tolerant": (hit_a + hit_b) / (na + nb) if na + nb else 0.0,
        "precision_tolerant": hit_a / na if na else 0.0,
        "recall_tolerant": hit_b / nb if nb else 0.0,
    }


def leave_one_block_out_dice(a_blocks: list[np.ndarray], b_blocks: list[np.ndarray], size: int) -> list[float]:
    """Dice of the accumulated maps with each time block left out in turn (jackknife replicates).

    Parameters
    ----------
    a_blocks, b_blocks : per block, the flat indices of the pixels it marks in each map (same block count);
    size : pixels in a map.

    Returns one Dice per left-out block (NaN where both maps are then empty)."""
    if len(a_blocks) != len(b_blocks):
        raise UlmError(f"leave-one-out Dice: the maps have {len(a_blocks)} and {len(b_blocks)} blocks")
    counts = [
        np.bincount(np.concatenate([np.zeros(0, np.int64), *blocks]).astype(np.int64), minlength=size)
        for blocks in (a_blocks, b_blocks)
    ]
    out = []
    for part_a, part_b in zip(a_blocks, b_blocks, strict=True):
        ca, cb = counts[0].copy(), counts[1].copy()
        ca[part_a] -= 1
        cb[part_b] -= 1
        a, b = ca > 0, cb > 0
        total = int(a.sum()) + int(b.sum())
        out.append(2.0 * int(np.logical_and(a, b).sum()) / total if total else float("nan"))
    return out


# ----------------------------------------------------------------------------------- localizations
def match_frame(true_pos: np.ndarray, est_pos: np.ndarray, tolerance_um: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one matching of one frame's localizations to its true MBs.

    Parameters
    ----------
    true_pos : (N, 3) um; est_pos : (K, 3) um; tolerance_um : largest matching distance.

    Returns
    -------
    true_index, est_index : (P,) int matched pairs; dist_um : (P,) their distances (all <= tolerance).
    """
    if len(true_pos) == 0 or len(est_pos) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    dist = np.linalg.norm(true_pos[:, None, :] - est_pos[None, :, :], axis=2)
    ok = dist <= tolerance_um
    rows, cols = linear_sum_assignment(np.where(ok, dist, UNMATCHED))
    keep = ok[rows, cols]
    return rows[keep], cols[keep], dist[rows[keep], cols[keep]]


def _scores(n_true: int, n_est: int, tp: int, sq_err: float, tolerance_um: float) -> dict:
    fp, fn = n_est - tp, n_true - tp
    return {
        "n_true": n_true,
        "n_localizations": n_est,
        "true_positives": tp,
        "false_positives": fp,
        "false_negatives": fn,
        "precision": tp / n_est if n_est else 0.0,
        "recall": tp / n_true if n_true else 0.0,
        "jaccard": tp / (tp + fp + fn) if tp + fp + fn else 0.0,
        "rmse_um": float(np.sqrt(sq_err / tp)) if tp else None,
        "tolerance_um": float(tolerance_um),
    }


def match_localizations(
    true_frame: np.ndarray, true_pos: np.ndarray, est_frame: np.ndarray, est_pos: np.ndarray, tolerance_um: float
) -> dict:
    """Precision, recall, Jaccard and RMSE (um) of localizations against true positions, frame by frame.

    Parameters
    ----------
    true_frame : (N,) int; true_pos : (N, 3) um; est_frame : (K,) int; est_pos : (K, 3) um.
    tolerance_um : largest distance of a match.

    Raises UlmError when there is no localization or no true position.
    """
    true_frame, est_frame = np.asarray(true_frame), np.asarray(est_frame)
    if len(est_frame) == 0:
        raise UlmError("localization metrics: no localizations to score (empty localizations)")
    if len(true_frame) == 0:
        raise UlmError("localization metrics: no ground-truth MB in the imaged field of view")
    true_pos, est_pos = np.asarray(true_pos, float), np.asarray(est_pos, float)
    to, eo = np.argsort(true_frame, kind="stable"), np.argsort(est_frame, kind="stable")
    tf, tp_, ef, ep = true_frame[to], true_pos[to], est_frame[eo], est_pos[eo]
    frames = np.union1d(tf, ef)
    t_lo, t_hi = np.searchsorted(tf, frames, "left"), np.searchsorted(tf, frames, "right")
    e_lo, e_hi = np.searchsorted(ef, frames, "left"), np.searchsorted(ef, frames, "right")
    tp, sq = 0, 0.0
    for a, b, c, d in zip(t_lo, t_hi, e_lo, e_hi, strict=True):
        if b > a and d > c:
            _, _, dist = match_frame(tp_[a:b], ep[c:d], tolerance_um)
            tp += len(dist)
            sq += float(np.sum(dist**2))
    return _scores(len(tf), len(ef), tp, sq, tolerance_um)


def imaged_truth(tracks: TracksReader, loc_attrs: dict, t0: int, t1: int) -> tuple[np.ndarray, np.ndarray]:
    """True MB positions of frames [t0, t1) that the grid images: (N,) frames and (N, 3) um (2D: slab
    members, projected on the plane ``plane_y_um``; all: inside the grid +- half a pixel)."""
    pos, rel = tracks.frames(t0, t1)
    origin, spacing = np.asarray(loc_attrs["origin_um"], float), np.asarray(loc_attrs["spacing_um"], float)
    keep, idx = imaged_bubbles(pos, loc_attrs, origin, spacing)
    pos, rel = pos[keep], rel[keep]
    if len(origin) == 2:
        pos[:, 1] = float(loc_attrs["plane_y_um"])
    inside = np.all((idx >= -0.5) & (idx < np.asarray(loc_attrs["shape"]) - 0.5), axis=1)
    return rel[inside] + t0, pos[inside]


def localization_metrics(
    tracks_path: str | Path,
    loc: str | Path | Localizations,
    tolerance_um: float | None = None,
    tracked_only: bool = False,
    chunk_frames: int = 4096,
) -> dict:
    """Localization scores of ``localizations.zarr`` against ``tracks.zarr`` (see the module docstring).

    Parameters
    ----------
    tolerance_um : matching distance; None = wavelength / 4 (the localizations' ``wavelength_um`` attr).
    tracked_only : score only localizations with track >= 0.
    chunk_frames : ground-truth frames read at a time.

    Returns
    -------
    dict with n_true, n_localizations, true/false positives, false negatives, precision, recall,
    jaccard, rmse_um, rmse_wavelengths, tolerance_um.
    """
    loc = loc if isinstance(loc, Localizations) else read_localizations(loc)
    missing = [k for k in ("origin_um", "spacing_um", "shape", "wavelength_um") if k not in loc.attrs]
    if missing:
        raise UlmError(f"localizations: attrs lack {missing}; write them with ulm.conventional.localize_iq")
    wavelength = float(loc.attrs["wavelength_um"])
    tol = wavelength / 4 if tolerance_um is None else float(tolerance_um)
    keep = loc.track >= 0 if tracked_only else np.ones(len(loc.frame), bool)
    if not keep.any():
        raise UlmError(
            "localization metrics: no localizations to score (empty localizations" + (", tracked only)" if tracked_only else ")")
        )
    tracks = TracksReader(tracks_path)
    n_frames = min(tracks.n_frames, loc.n_frames)
    parts = [imaged_truth(tracks, loc.attrs, t0, min(t0 + chunk_frames, n_frames)) for t0 in range(0, n_frames, chunk_frames)]
    true_frame = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    true_pos = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, 3))
    sel = keep & (loc.frame < n_frames)
    out = match_localizations(true_frame, true_pos, loc.frame[sel], loc.pos_um[sel], tol)
    out["rmse_wavelengths"] = out["rmse_um"] / wavelength if out["rmse_um"] is not None else None
    out["tracked_only"] = bool(tracked_only)
    return out


# -------------------------------------------------------------------------------------------- FRC
def frc(a: np.ndarray, b: np.ndarray, spacing_um) -> tuple[np.ndarray, np.ndarray]:
    """Fourier ring (2D) / shell (3D) correlation of two maps of the same shape.

    Parameters
    ----------
    a, b : (Z, X) or (Z, Y, X) maps; spacing_um : (D,) pixel size per axis (um).

    Returns
    -------
    freq_per_um : (R,) centre frequency of rings 1..R (cycles/um; the DC ring is left out).
    curve : (R,) FRC value, NaN where a ring holds no energy in either map.
    """
    check_same_shape(a, b)
    spacing = np.asarray(spacing_um, float)
    shape = np.shape(a)
    fa, fb = np.fft.fftn(np.asarray(a, float)), np.fft.fftn(np.asarray(b, float))
    axes = np.meshgrid(*[np.fft.fftfreq(n, d) for n, d in zip(shape, spacing, strict=True)], indexing="ij", sparse=True)
    radius = np.sqrt(sum(f**2 for f in axes))
    step = float(np.max(1.0 / (np.asarray(shape) * spacing)))
    n_rings = int(np.floor(np.min(0.5 / spacing) / step)) + 1
    ring = np.rint(radius / step).astype(np.int64).ravel()
    inside = ring < n_rings
    ring = ring[inside]
    cross = np.bincount(ring, (fa * np.conj(fb)).real.ravel()[inside], n_rings)
    pa = np.bincount(ring, (np.abs(fa) ** 2).ravel()[inside], n_rings)
    pb = np.bincount(ring, (np.abs(fb) ** 2).ravel()[inside], n_rings)
    denom = np.sqrt(pa * pb)
    with np.errstate(invalid="ignore", divide="ignore"):
        curve = np.where(denom > 0, cross / denom, np.nan)
    return np.arange(1, n_rings) * step, curve[1:]


def frc_resolution(freq_per_um: np.ndarray, curve: np.ndarray, threshold: float = 1 / 7) -> tuple[float, bool]:
    """Resolution (um) = 1 / the first frequency where ``curve`` falls below ``threshold`` (linear
    interpolation between rings), and whether it does; else 1 / the highest frequency, False."""
    valid = np.isfinite(curve)
    f, c = np.asarray(freq_per_um)[valid], np.asarray(curve)[valid]
    if len(f) == 0:
        raise UlmError("frc: the maps hold no energy beyond the DC term (empty or constant maps)")
    below = np.flatnonzero(c < threshold)
    if len(below) == 0:
        return float(1.0 / f[-1]), False
    i = int(below[0])
    if i == 0:
        return float(1.0 / f[0]), True
    w = (c[i - 1] - threshold) / (c[i - 1] - c[i])
    return float(1.0 / (f[i - 1] + w * (f[i] - f[i - 1]))), True


def frc_summary(a: np.ndarray, b: np.ndarray, spacing_um, threshold: float = 1 / 7) -> dict:
    """JSON-ready FRC result: resolution_um, crossed, threshold, freq_per_um and curve (lists)."""
    freq, curve = frc(a, b, spacing_um)
    res, crossed = frc_resolution(freq, curve, threshold)
    return {
        "resolution_um": res,
        "crossed": crossed,
        "threshold": threshold,
        "freq_per_um": freq.tolist(),
        "curve": [None if not np.isfinite(v) else float(v) for v in curve],
    }


# ------------------------------------------------------------------------------------------ stage
def compute_metrics(
    tracks_path: str | Path,
    cfg: dict,
    loc_path: str | Path | None = None,
    density_paths: Mapping[str, str | Path] | None = None,
    reference: str = GROUND_TRUTH,
) -> dict:
    """The `ulm metrics` stage: a ``metrics.json``-ready dict.

    Parameters
    ----------
    tracks_path : tracks.zarr; cfg : the whole validated config (``metrics``, ``render``, ``sparse.factor``,
        ``sparse.block_frames``, ``conventional.interp_factor``); loc_path : localizations.zarr (optional);
    density_paths : method -> density/<method>.zarr; must include ``reference`` for the Dice and FRC.

    Returns
    -------
    {"reference", "config", "localization": {...}, "dice": {method: value vs reference}, "tolerant": {method:
     tolerant_scores}, "n_blocks", "dice_loo": {method: leave-one-block-out Dice replicates (for confidence intervals)},
     "density_pixels": {method: non-zero fine pixels}, "frc": {"<method>_vs_<reference>" | "conventional_halves": {...}}}
    """
    mcfg, rcfg = cfg["metrics"], cfg["render"]
    out: dict = {"reference": reference, "config": {"metrics": mcfg}}
    loc = read_localizations(loc_path) if loc_path is not None else None
    if loc is not None:
        out["localization"] = localization_metrics(tracks_path, loc, mcfg["tolerance_um"], mcfg["tracked_only"])
    maps = {name: read_density(p) for name, p in (density_paths or {}).items()}
    if maps and reference not in maps:
        raise UlmError(f"metrics: no {reference} density among {sorted(maps)}")
    if maps:
        ref = maps[reference]
        others = {name: d for name, d in maps.items() if name != reference}
        out["dice"] = {name: dice(d.density, ref.density) for name, d in others.items()}
        out["tolerant"] = {name: tolerant_scores(d.density, ref.density) for name, d in others.items()}
        with_blocks = {
            name: d
            for name, d in others.items()
            if d.blocks is not None and ref.blocks is not None and len(d.blocks) == len(ref.blocks) > 1
        }
        out["n_blocks"] = len(ref.blocks) if ref.blocks is not None else None
        out["dice_loo"] = {n: leave_one_block_out_dice(d.blocks, ref.blocks, ref.density.size) for n, d in with_blocks.items()}
        out["density_pixels"] = {name: int(np.count_nonzero(d.density)) for name, d in maps.items()}
        out["frc"] = {
            f"{name}_vs_{reference}": frc_summary(d.density, ref.density, ref.attrs["spacing_um"], mcfg["frc_threshold"])
            for name, d in maps.items()
            if name != reference and np.any(d.density) and np.any(ref.density)
        }
    if loc is not None and len(loc.frame):
        halves = [
            density_from_localizations(
                loc,
                cfg["sparse"]["factor"],
                cfg["sparse"]["block_frames"],
                rcfg["mode"],
                rcfg["include_untracked"],
                cfg["conventional"]["interp_factor"],
                select=mask,
            )
            for mask in split_halves(loc, mcfg["frc_split"])
        ]
        if np.any(halves[0][0]) and np.any(halves[1][0]):
            summary = frc_summary(halves[0][0], halves[1][0], halves[0][1].spacing_um, mcfg["frc_threshold"])
            out.setdefault("frc", {})[f"{CONVENTIONAL}_halves"] = {**summary, "split": mcfg["frc_split"]}
    return out
