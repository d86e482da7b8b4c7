"""Noise and static tissue clutter (the SVD clutter filter that removes it is :func:`ulm.imaging.blocks.svd_filter`)."""

from __future__ import annotations

import numpy as np


def add_noise(block: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Add circular complex Gaussian noise whose RMS is 10^(-snr_db/20) (a single MB's peak is 1)."""
    rms = 10.0 ** (-snr_db / 20.0)
    noise = rng.standard_normal((2, *block.shape), dtype=np.float32) * np.float32(rms / np.sqrt(2.0))
    return block + (noise[0] + 1j * noise[1]).astype(np.complex64)


def clutter_scatterers(
    extent_xyz: np.ndarray, cell_um: np.ndarray, density: float, rng: np.random.Generator, dims: int
) -> tuple[np.ndarray, np.ndarray]:
    """Static tissue scatterers: uniform over ``extent_xyz`` (3, 2) grown by one cell, ``density`` per
    resolution cell (``cell_um`` = FWHM along x, y, z), Gaussian amplitudes."""
    lo, hi = extent_xyz[:, 0] - cell_um, extent_xyz[:, 1] + cell_um
    if dims == 2:  # the plane only
        lo[1] = hi[1] = extent_xyz[1, 0]
    axes = [0, 1, 2] if dims == 3 else [0, 2]
    n = int(np.ceil(density * np.prod((hi - lo)[axes] / cell_um[axes])))
    return rng.uniform(lo, hi, size=(n, 3)), rng.standard_normal(n)
