"""Probe and imaging-grid geometry in the world frame (um; z = depth, y = elevation).

The probe face lies in the plane z = -standoff_um, centred over the field of view. Plane waves are
steered about the y axis; a wave of angle a reaches point p at
tau_tx = ((x_p - x_c) sin a + (z_p - z_face) cos a) / c.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ulm.errors import UlmError

APODIZATIONS = {"rect": 0, "tukey": 1, "hann": 2}


@dataclass(frozen=True)
class Probe:
    """A linear (2D imaging) or matrix (3D imaging) array and its transmit/receive settings."""

    elements_um: np.ndarray  # (E, 3) element centres
    centre_um: np.ndarray  # (3,) centre of the face
    f0_hz: float
    bandwidth: float
    c_m_s: float
    fs_hz: float
    angles_rad: np.ndarray
    f_number: float
    apodization: str
    element_width_um: float
    attenuation_db_cm_mhz: float
    dims: int

    @property
    def wavelength_um(self) -> float:
        return self.c_m_s / self.f0_hz * 1e6

    @property
    def sigma_t_s(self) -> float:
        """Standard deviation (s) of the Gaussian pulse envelope whose amplitude spectrum has a
        -6 dB full width of ``bandwidth * f0``."""
        return np.sqrt(2 * np.log(2)) / (np.pi * self.bandwidth * self.f0_hz)

    @property
    def axial_fwhm_um(self) -> float:
        """Expected axial FWHM of the intensity |IQ|^2: c/2 * 2 sqrt(ln 2) sigma_t = 0.312 lambda / B."""
        return self.c_m_s * 1e6 / 2 * 2 * np.sqrt(np.log(2)) * self.sigma_t_s

    def effective_f_number(self, z_um: float) -> float:
        """Receive f-number at world depth ``z_um``: the configured one, or depth / array width
        where the array is too small to open the full f-number aperture."""
        width = self.elements_um.max(axis=0) - self.elements_um.min(axis=0)
        usable = width[0] if self.dims == 2 else min(width[0], width[1])
        return max(self.f_number, (z_um - self.face_z_um) / usable)

    def lateral_fwhm_um(self, z_um: float) -> float:
        """Expected lateral FWHM of the intensity |IQ|^2 at world depth ``z_um``: lambda * f-number
        (0.886 lambda F# for a uniform line aperture, 1.03 lambda F# for a uniform disc)."""
        return self.wavelength_um * self.effective_f_number(z_um)

    @property
    def face_z_um(self) -> float:
        return float(self.centre_um[2])


def make_probe(cfg: dict, dims: int, centre_xy: tuple[float, float]) -> Probe:
    """Build the probe of the ``probe`` config section for ``dims`` = 2 (linear) or 3 (matrix)."""
    arr = cfg["linear"] if dims == 2 else cfg["matrix"]
    if arr["f0_hz"] <= 0 or cfg["speed_of_sound_m_s"] <= 0:
        raise UlmError("probe: f0_hz and speed_of_sound_m_s must be positive")
    counts = list(arr["n_elements"]) + ([1] if dims == 2 else [])
    offsets = [(np.arange(n) - (n - 1) / 2) * arr["pitch_um"] for n in counts]
    ex, ey = np.meshgrid(offsets[0], offsets[1], indexing="ij")
    centre = np.array([centre_xy[0], centre_xy[1], -cfg["standoff_um"]], dtype=np.float64)
    elements = np.column_stack([ex.ravel(), ey.ravel(), np.zeros(ex.size)]) + centre
    return Probe(
        elements_um=elements,
        centre_um=centre,
        f0_hz=float(arr["f0_hz"]),
        bandwidth=float(arr["bandwidth"]),
        c_m_s=float(cfg["speed_of_sound_m_s"]),
        fs_hz=float(arr["f0_hz"] * cfg["sampling_factor"]),
        angles_rad=np.deg2rad(np.asarray(cfg["angles_deg"], dtype=np.float64)),
        f_number=float(cfg["f_number"]),
        apodization=cfg["apodization"],
        element_width_um=float(arr["element_width_um"]),
        attenuation_db_cm_mhz=float(cfg["attenuation_db_cm_mhz"]),
        dims=dims,
    )


@dataclass(frozen=True)
class Grid:
    """A regular pixel (voxel) grid, stored internally in (z, y, x) order; 2D grids have one y."""

    origin_um: np.ndarray  # (3,) in (z, y, x) order
    spacing_um: np.ndarray  # (3,) in (z, y, x) order
    shape: tuple[int, int, int]  # (Z, Y, X)
    dims: int

    def points_xyz(self) -> np.ndarray:
        """(Z*Y*X, 3) world coordinates (x, y, z) of every pixel centre, C order over (z, y, x)."""
        axes = [self.origin_um[k] + np.arange(self.shape[k]) * self.spacing_um[k] for k in range(3)]
        zz, yy, xx = np.meshgrid(*axes, indexing="ij")
        return np.column_stack([xx.ravel(), yy.ravel(), zz.ravel()])

    @property
    def array_shape(self) -> tuple[int, ...]:
        """Shape in the data contract's order: (Z, X) in 2D, (Z, Y, X) in 3D."""
        return (self.shape[0], self.shape[2]) if self.dims == 2 else self.shape

    def contract_attrs(self) -> dict:
        """``origin_um`` and ``spacing_um`` in array order (time excluded), as in the data contract."""
        keep = [0, 2] if self.dims == 2 else [0, 1, 2]
        return {"origin_um": [float(self.origin_um[k]) for k in keep], "spacing_um": [float(self.spacing_um[k]) for k in keep]}

    def extent_xyz(self) -> np.ndarray:
        """(3, 2) min / max pixel centre per world axis (x, y, z)."""
        hi = self.origin_um + (np.asarray(self.shape) - 1) * self.spacing_um
        return np.array([[self.origin_um[2], hi[2]], [self.origin_um[1], hi[1]], [self.origin_um[0], hi[0]]])


def make_grid(fov_um: list[float], spacing_um: float, dims: int, plane_y_um: float) -> Grid:
    """Grid covering ``fov_um`` = [x0, x1, y0, y1, z0, z1] with square pixels of ``spacing_um``."""
    lo, hi = np.asarray(fov_um[0::2], float), np.asarray(fov_um[1::2], float)
    used = [0, 1, 2] if dims == 3 else [0, 2]  # a 2D grid has no y extent
    if np.any(hi[used] <= lo[used]):
        raise UlmError(f"forward.fov_um {list(fov_um)}: each axis needs min < max")
    n = np.floor((hi - lo) / spacing_um).astype(int) + 1  # (x, y, z)
    origin = np.array([lo[2], lo[1], lo[0]])
    shape = (int(n[2]), int(n[1]), int(n[0]))
    if dims == 2:
        origin[1], shape = plane_y_um, (shape[0], 1, shape[2])
    return Grid(origin_um=origin, spacing_um=np.full(3, float(spacing_um)), shape=shape, dims=dims)


def check_field_of_view(probe: Probe, grid: Grid) -> None:
    """Fail with one clear message if the grid is not in front of and under the probe's aperture."""
    ext = grid.extent_xyz()
    if ext[2, 0] <= probe.face_z_um:
        raise UlmError(
            f"forward: the grid starts at z = {ext[2, 0]:.0f} um, not in front of the probe face at z = {probe.face_z_um:.0f} um"
        )
    lo, hi = probe.elements_um.min(0), probe.elements_um.max(0)
    for axis, name in ((0, "x"), (1, "y")) if probe.dims == 3 else ((0, "x"),):
        if ext[axis, 0] < lo[axis] - 1e-6 or ext[axis, 1] > hi[axis] + 1e-6:
            raise UlmError(
                f"forward: the grid's {name} range [{ext[axis, 0]:.0f}, {ext[axis, 1]:.0f}] um lies outside the probe aperture "
                f"[{lo[axis]:.0f}, {hi[axis]:.0f}] um; shrink forward.fov_um or use more elements"
            )
