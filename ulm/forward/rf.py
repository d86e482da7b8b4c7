"""Physical mode: per-element RF echoes of point scatterers, IQ demodulation and delay-and-sum.

For every plane wave a and element e, a scatterer s of amplitude A at distance r from e adds
    A * D(theta) * r^-k * exp(-alpha r_total) * exp(-(t - tau)^2 / (2 sigma_t^2)) cos(2 pi f0 (t - tau))
to the RF trace, tau = tau_tx(s, a) + r / c, D the element directivity sinc(w sin(theta)/lambda) cos(theta),
k = 1 in 3D and 1/2 in 2D. IQ demodulation (analytic signal, mixed to baseband) gives
IQ_e(t) = envelope * exp(-2 pi i f0 tau); delay-and-sum samples it at each pixel's delay, restores the
carrier phase exp(2 pi i f0 tau_p) and sums over the f-number aperture (apodized) and the angles.
Kernels run in parallel over elements (RF) and pixels (DAS); with a thread-safe Numba layer (OpenMP,
see ulm.parallel) dask also runs frame blocks on parallel threads.
"""

from __future__ import annotations

import numba as nb
import numpy as np
from scipy.signal import hilbert

from ulm.forward.geometry import APODIZATIONS, Grid, Probe
from ulm.parallel import prefer_threadsafe_layer

prefer_threadsafe_layer()

N_SIGMA = 4.0  # pulse support, in envelope standard deviations


def time_window(probe: Probe, points_xyz: np.ndarray) -> tuple[float, int]:
    """Start time (s) and sample count of RF traces covering echoes from ``points_xyz``."""
    c = probe.c_m_s * 1e6  # um/s
    lo, hi = points_xyz.min(0), points_xyz.max(0)
    corners = np.array(np.meshgrid(*zip(lo, hi, strict=True), indexing="ij")).reshape(3, -1).T
    tx = _tx_delays(probe, corners)
    depth_min = lo[2] - probe.face_z_um
    d = np.linalg.norm(corners[:, None, :] - probe.elements_um[None, :, :], axis=2)
    margin = (N_SIGMA + 2) * probe.sigma_t_s
    t0 = tx.min() + depth_min / c - margin
    t1 = tx.max() + d.max() / c + margin
    return t0, int(np.ceil((t1 - t0) * probe.fs_hz)) + 2


def _tx_delays(probe: Probe, points_xyz: np.ndarray) -> np.ndarray:
    """(A, P) plane-wave arrival times (s) at each point."""
    c = probe.c_m_s * 1e6
    dx = points_xyz[:, 0] - probe.centre_um[0]
    dz = points_xyz[:, 2] - probe.face_z_um
    return (np.sin(probe.angles_rad)[:, None] * dx + np.cos(probe.angles_rad)[:, None] * dz) / c


@nb.njit(cache=True, parallel=True)
def _rf_kernel(scat, amp, elements, tx, c, f0, sigma_t, fs, t0, width_over_lambda, spreading, alpha_np_per_um, out):
    """Accumulate echoes into ``out`` (A, E, N): elements in parallel, samples within the pulse support."""
    n_ang, n_el, n_smp = out.shape
    two_pi_f0 = 2.0 * np.pi * f0
    half = N_SIGMA * sigma_t
    inv2s2 = 1.0 / (2.0 * sigma_t * sigma_t)
    for e in nb.prange(n_el):
        for s in range(scat.shape[0]):
            dx = scat[s, 0] - elements[e, 0]
            dy = scat[s, 1] - elements[e, 1]
            dz = scat[s, 2] - elements[e, 2]
            r = np.sqrt(dx * dx + dy * dy + dz * dz)
            sin_t = np.sqrt(dx * dx + dy * dy) / r
            arg = width_over_lambda * sin_t
            directivity = (np.sin(np.pi * arg) / (np.pi * arg) if arg > 1e-9 else 1.0) * (dz / r)
            gain = amp[s] * directivity * r**-spreading
            for a in range(n_ang):
                tau = tx[a, s] + r / c
                g = gain * np.exp(-alpha_np_per_um * (tx[a, s] * c + r))
                i0 = max(int(np.ceil((tau - half - t0) * fs)), 0)
                i1 = min(int(np.floor((tau + half - t0) * fs)), n_smp - 1)
                for i in range(i0, i1 + 1):
                    dt = t0 + i / fs - tau
                    out[a, e, i] += g * np.exp(-dt * dt * inv2s2) * np.cos(two_pi_f0 * dt)


def simulate_rf(probe: Probe, scat_xyz: np.ndarray, amp: np.ndarray, t0: float, n_samples: int) -> np.ndarray:
    """(A, E, N) float64 RF traces of point scatterers at ``scat_xyz`` (um) with amplitudes ``amp``."""
    scat = np.ascontiguousarray(scat_xyz, dtype=np.float64)
    out = np.zeros((len(probe.angles_rad), len(probe.elements_um), n_samples))
    alpha = probe.attenuation_db_cm_mhz * probe.f0_hz / 1e6 * np.log(10) / 20 / 1e4  # Np/um
    spreading = 1.0 if probe.dims == 3 else 0.5
    _rf_kernel(
        scat,
        np.asarray(amp, np.float64),
        probe.elements_um,
        _tx_delays(probe, scat),
        probe.c_m_s * 1e6,
        probe.f0_hz,
        probe.sigma_t_s,
        probe.fs_hz,
        t0,
        probe.element_width_um / probe.wavelength_um,
        spreading,
        alpha,
        out,
    )
    return out


def demodulate(rf: np.ndarray, probe: Probe, t0: float) -> np.ndarray:
    """Baseband IQ (complex64, same shape) of RF traces: analytic signal times exp(-2 pi i f0 t)."""
    t = t0 + np.arange(rf.shape[-1]) / probe.fs_hz
    return (hilbert(rf, axis=-1) * np.exp(-2j * np.pi * probe.f0_hz * t)).astype(np.complex64)


@nb.njit(cache=True, parallel=True)
def _das_kernel(iq, elements, angles, centre, face_z, c, f0, fs, t0, f_number, apod, points, out):
    """Delay-and-sum, pixels in parallel."""
    n_ang, n_el, n_smp = iq.shape
    for p in nb.prange(points.shape[0]):
        x, y, z = points[p, 0], points[p, 1], points[p, 2]
        depth = z - face_z
        half_ap = depth / (2.0 * f_number)
        acc = 0j
        for a in range(n_ang):
            tau_tx = ((x - centre[0]) * np.sin(angles[a]) + depth * np.cos(angles[a])) / c
            for e in range(n_el):
                dx = x - elements[e, 0]
                dy = y - elements[e, 1]
                lat = np.sqrt(dx * dx + dy * dy)
                if lat > half_ap:
                    continue
                u = lat / half_ap
                if apod == 1:  # Tukey, 50 % taper
                    w = 1.0 if u <= 0.5 else 0.5 * (1.0 + np.cos(np.pi * (u - 0.5) / 0.5))
                elif apod == 2:
                    w = 0.5 * (1.0 + np.cos(np.pi * u))
                else:
                    w = 1.0
                tau = tau_tx + np.sqrt(lat * lat + depth * depth) / c
                pos = (tau - t0) * fs
                i = int(np.floor(pos))
                if i < 0 or i >= n_smp - 1:
                    continue
                frac = pos - i
                val = (1.0 - frac) * iq[a, e, i] + frac * iq[a, e, i + 1]
                phase = 2.0 * np.pi * f0 * tau
                acc += w * val * (np.cos(phase) + 1j * np.sin(phase))
        out[p] = acc


def beamform(iq_channels: np.ndarray, probe: Probe, t0: float, points_xyz: np.ndarray) -> np.ndarray:
    """(P,) complex64 delay-and-sum image at ``points_xyz`` (um), angles coherently compounded."""
    out = np.zeros(len(points_xyz), np.complex64)
    _das_kernel(
        iq_channels,
        probe.elements_um,
        probe.angles_rad,
        probe.centre_um,
        probe.face_z_um,
        probe.c_m_s * 1e6,
        probe.f0_hz,
        probe.fs_hz,
        t0,
        probe.f_number,
        APODIZATIONS[probe.apodization],
        np.ascontiguousarray(points_xyz, np.float64),
        out,
    )
    return out


def rf_image(probe: Probe, grid: Grid, scat_xyz: np.ndarray, amp: np.ndarray, points_xyz: np.ndarray | None = None) -> np.ndarray:
    """One beamformed frame: (Z, Y, X) complex64 on ``grid`` (or (P,) at ``points_xyz``)."""
    pts = grid.points_xyz() if points_xyz is None else points_xyz
    t0, n = time_window(probe, np.vstack([pts, grid.points_xyz()[[0, -1]]]))
    if len(scat_xyz) == 0:
        return np.zeros(grid.shape if points_xyz is None else len(pts), np.complex64)
    iq = demodulate(simulate_rf(probe, scat_xyz, amp, t0, n), probe, t0)
    img = beamform(iq, probe, t0, pts)
    return img.reshape(grid.shape) if points_xyz is None else img
