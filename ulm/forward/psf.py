"""Fast mode: a complex IQ point-spread function measured once with the RF model, then evaluated
at every MB's exact sub-pixel position and summed coherently.

At K depths across the grid a single scatterer is beamformed (RF mode) on fine lines through it;
the table keeps, per depth, the peak amplitude and phase, the intensity FWHM along x, y, z and the
phase slopes along z and x. A MB at (x, y, z) then contributes
    A(z) exp(-dx^2 / 2 sx^2 - dy^2 / 2 sy^2 - dz^2 / 2 sz^2) exp(i (phi(z) + kz dz + kx dx))
to each pixel within 3.5 sigma, with sigma = FWHM / (2 sqrt(ln 2)) (Gaussian intensity of that FWHM)
and d = pixel - MB. Same grid, units and scaling as the RF mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba as nb
import numpy as np

from ulm.forward.geometry import Grid, Probe
from ulm.forward.rf import rf_image
from ulm.parallel import prefer_threadsafe_layer

prefer_threadsafe_layer()

FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(np.log(2.0)))  # intensity FWHM -> amplitude Gaussian sigma
SUPPORT_SIGMA = 3.5


@dataclass
class PsfTable:
    """PSF parameters at ``depth_um`` (K,): amp, phase (rad), fwhm_um (K, 3) along (x, y, z), k_z and
    k_x (rad/um) phase slopes. Amplitudes are in the RF model's raw units."""

    depth_um: np.ndarray
    amp: np.ndarray
    phase: np.ndarray
    fwhm_um: np.ndarray
    k_z: np.ndarray
    k_x: np.ndarray

    def to_attrs(self) -> dict:
        """JSON-safe dict (the unused y width of a 2D table is stored as null)."""

        def clean(a: np.ndarray) -> list:
            a = np.asarray(a, dtype=float)
            return [clean(row) for row in a] if a.ndim > 1 else [float(x) if np.isfinite(x) else None for x in a]

        return {k: clean(v) for k, v in self.__dict__.items()}

    def at(self, depth_um: float) -> dict:
        """Linearly interpolated parameters at one depth (clamped to the table's range)."""
        out = {k: float(np.interp(depth_um, self.depth_um, getattr(self, k))) for k in ("amp", "phase", "k_z", "k_x")}
        out["fwhm_um"] = np.array([np.interp(depth_um, self.depth_um, self.fwhm_um[:, a]) for a in range(3)])
        return out


def fwhm(u: np.ndarray, profile: np.ndarray) -> float:
    """Full width at half maximum of a sampled single-peaked ``profile`` (linear interpolation)."""
    p = np.asarray(profile, dtype=np.float64)
    k = int(np.argmax(p))
    half = p[k] / 2
    left = np.flatnonzero(p[:k] < half)
    right = np.flatnonzero(p[k:] < half)
    if len(left) == 0 or len(right) == 0:
        return float("nan")
    i, j = left[-1], k + right[0]
    ul = u[i] + (half - p[i]) / (p[i + 1] - p[i]) * (u[i + 1] - u[i])
    ur = u[j - 1] + (p[j - 1] - half) / (p[j - 1] - p[j]) * (u[j] - u[j - 1])
    return float(ur - ul)


def measure_point(probe: Probe, grid: Grid, xyz: np.ndarray, half_width: float | None = None, n: int = 241) -> dict:
    """Beamform one scatterer (RF mode) on fine lines through it; return its intensity FWHMs, peak
    amplitude, phase and phase slopes. Also used by the tests."""
    lam = probe.wavelength_um
    half_width = half_width or 3 * max(probe.lateral_fwhm_um(float(np.ravel(xyz)[2])), probe.axial_fwhm_um)
    u = np.linspace(-half_width, half_width, n)
    xyz = np.asarray(xyz, dtype=np.float64).reshape(1, 3)
    out = {"u": u}
    fw = np.full(3, np.inf)
    for axis in (0, 1, 2) if probe.dims == 3 else (0, 2):
        step = u / 2 if axis == 2 else u
        pts = np.repeat(xyz, n, axis=0)
        pts[:, axis] += step
        line = rf_image(probe, grid, xyz, np.ones(1), pts)
        fw[axis] = fwhm(step, np.abs(line) ** 2)
        out[f"line_{'xyz'[axis]}"] = line
    h = lam / 16
    probe_pts = np.repeat(xyz, 5, axis=0) + np.array([[0, 0, 0], [0, 0, h], [0, 0, -h], [h, 0, 0], [-h, 0, 0]])
    v = rf_image(probe, grid, xyz, np.ones(1), probe_pts)
    out.update(
        fwhm_um=fw,
        amp=float(np.abs(v[0])),
        phase=float(np.angle(v[0])),
        k_z=float(np.angle(v[1] * np.conj(v[2])) / (2 * h)),
        k_x=float(np.angle(v[3] * np.conj(v[4])) / (2 * h)),
    )
    return out


def measure_psf_table(probe: Probe, grid: Grid, n_depths: int = 5) -> PsfTable:
    """Measure the PSF with the RF model at ``n_depths`` depths spanning the grid, at its lateral centre."""
    ext = grid.extent_xyz()
    depths = np.linspace(ext[2, 0], ext[2, 1], n_depths) if ext[2, 1] > ext[2, 0] else np.array([ext[2, 0]] * 2)
    centre = ext.mean(axis=1)
    rows = [measure_point(probe, grid, [centre[0], centre[1], z]) for z in depths]
    return PsfTable(
        depth_um=depths,
        amp=np.array([r["amp"] for r in rows]),
        phase=np.unwrap([r["phase"] for r in rows]),
        fwhm_um=np.array([r["fwhm_um"] for r in rows]),
        k_z=np.array([r["k_z"] for r in rows]),
        k_x=np.array([r["k_x"] for r in rows]),
    )


@nb.njit(cache=True, nogil=True)
def _interp(x, xp, fp):
    if x <= xp[0]:
        return fp[0]
    if x >= xp[-1]:
        return fp[-1]
    k = np.searchsorted(xp, x) - 1
    w = (x - xp[k]) / (xp[k + 1] - xp[k])
    return (1.0 - w) * fp[k] + w * fp[k + 1]


@nb.njit(cache=True, parallel=True)
def _render(pos, amp, frame_offsets, depth, t_amp, t_phase, t_sigma, t_kz, t_kx, origin, spacing, out):
    """Add each MB's PSF to ``out`` (F, Z, Y, X), frames in parallel; rows of frame f are
    [frame_offsets[f], frame_offsets[f + 1]); ``origin``/``spacing`` in (z, y, x) order."""
    for f in nb.prange(out.shape[0]):
        for m in range(frame_offsets[f], frame_offsets[f + 1]):
            _add_one(pos, amp, m, f, depth, t_amp, t_phase, t_sigma, t_kz, t_kx, origin, spacing, out)


@nb.njit(cache=True, inline="always")
def _add_one(pos, amp, m, f, depth, t_amp, t_phase, t_sigma, t_kz, t_kx, origin, spacing, out):
    """Add MB ``m``'s PSF to frame ``f`` of ``out`` within SUPPORT_SIGMA of its centre."""
    _, nz, ny, nx = out.shape
    x, y, z = pos[m, 0], pos[m, 1], pos[m, 2]
    a = amp[m] * _interp(z, depth, t_amp)
    ph0 = _interp(z, depth, t_phase)
    kz = _interp(z, depth, t_kz)
    kx = _interp(z, depth, t_kx)
    sx = _interp(z, depth, t_sigma[:, 0])
    sy = _interp(z, depth, t_sigma[:, 1])
    sz = _interp(z, depth, t_sigma[:, 2])
    lo_z = max(int(np.ceil((z - SUPPORT_SIGMA * sz - origin[0]) / spacing[0])), 0)
    hi_z = min(int(np.floor((z + SUPPORT_SIGMA * sz - origin[0]) / spacing[0])), nz - 1)
    lo_x = max(int(np.ceil((x - SUPPORT_SIGMA * sx - origin[2]) / spacing[2])), 0)
    hi_x = min(int(np.floor((x + SUPPORT_SIGMA * sx - origin[2]) / spacing[2])), nx - 1)
    if ny == 1:  # 2D: the plane only
        lo_y, hi_y = 0, 0
    else:
        lo_y = max(int(np.ceil((y - SUPPORT_SIGMA * sy - origin[1]) / spacing[1])), 0)
        hi_y = min(int(np.floor((y + SUPPORT_SIGMA * sy - origin[1]) / spacing[1])), ny - 1)
    for iz in range(lo_z, hi_z + 1):
        dz = origin[0] + iz * spacing[0] - z
        gz = -0.5 * dz * dz / (sz * sz)
        for iy in range(lo_y, hi_y + 1):
            dy = origin[1] + iy * spacing[1] - y
            gy = 0.0 if ny == 1 else -0.5 * dy * dy / (sy * sy)
            for ix in range(lo_x, hi_x + 1):
                dx = origin[2] + ix * spacing[2] - x
                mag = a * np.exp(gz + gy - 0.5 * dx * dx / (sx * sx))
                phase = ph0 + kz * dz + kx * dx
                out[f, iz, iy, ix] += mag * (np.cos(phase) + 1j * np.sin(phase))


def render_psf(table: PsfTable, grid: Grid, pos_xyz: np.ndarray, amp: np.ndarray, frame: np.ndarray, n_frames: int) -> np.ndarray:
    """(n_frames, Z, Y, X) complex64 images: MB ``m`` (um) drawn into frame ``frame[m]``."""
    out = np.zeros((n_frames, *grid.shape), np.complex64)
    if len(pos_xyz):
        order = np.argsort(frame, kind="stable")
        offsets = np.concatenate([[0], np.cumsum(np.bincount(frame, minlength=n_frames))]).astype(np.int64)
        _render(
            np.ascontiguousarray(np.asarray(pos_xyz)[order], np.float64),
            np.asarray(amp, np.float64)[order],
            offsets,
            table.depth_um,
            table.amp,
            table.phase,
            table.fwhm_um * FWHM_TO_SIGMA,
            table.k_z,
            table.k_x,
            grid.origin_um,
            grid.spacing_um,
            out,
        )
    return out
