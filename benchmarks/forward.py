"""Forward-model throughput and resolution: our RF mode, our PSF mode and PyMUST, in one process, on
the same probe (128-element 15.625 MHz linear array, 3 plane waves at -5/0/5 deg, F# 1, rect
apodization), the same 2D grid (lambda/2 pixels) and the same scatterers.

    python benchmarks/forward.py [--frames 64] [--scatterers 10] [--json]

Rows: frames per second of our RF mode (per-element RF + IQ demodulation + delay-and-sum), of our
PSF mode and of PyMUST (simus + rf2iq + dasmtx, ``pip install -e .[bench]``; its rows are skipped
when pymust is not importable), the lateral intensity FWHM (|IQ|^2 along x) of one scatterer at the
centre of the field of view for our RF mode and for PyMUST, and the time of one 3D 512-frame PSF
block of 32x32x32 voxels (one call, as one dask task of the forward stage).

Our modes run like the forward stage: the frames split in WORKERS contiguous chunks on as many
Python threads, each with NUMBA_NUM_THREADS / WORKERS Numba threads (one chunk with all Numba
threads when the threading layer cannot launch kernels concurrently). PyMUST runs on 1 and on
WORKERS threads; the faster one gives the speed-up. These machines are noisy: compare the ratios,
not the absolute numbers.

With --json the last line is one JSON object with keys rf_fps, psf_fps, psf_vs_rf_speedup,
pymust_fps (+ _serial, _threads, _incl_dasmtx), rf_vs_pymust_speedup, fwhm_rf_um, fwhm_pymust_um,
fwhm_vs_pymust_ratio, psf_3d_block_s and the setup (PyMUST values are null without pymust).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from report_table import print_rows  # benchmarks/report_table.py, beside this script

from ulm.config import load_config
from ulm.forward.geometry import Probe
from ulm.forward.psf import fwhm, measure_point
from ulm.forward.simulate import ForwardModel, build_model

try:
    import pymust
    from pymust import utils as pymust_utils
except ImportError:  # optional: pip install -e .[bench]
    pymust = None

FOV_2D_UM = [0.0, 600.0, 0.0, 600.0, 0.0, 600.0]  # 13 x 13 pixels at lambda/2, 3.0-3.6 mm deep
VOXELS_3D = 32
BLOCK_FRAMES_3D = 512
WORKERS = 2
PSF_FRAME_FACTOR = 64  # the PSF mode is timed on this many copies of the scene (too fast otherwise)
SEED = 0


@dataclasses.dataclass
class Scene:
    """``k`` scatterers per frame: world positions (M, 3) in um and frame indices (M,)."""

    pos_um: np.ndarray
    frame: np.ndarray
    n_frames: int

    def frames(self, t0: int, t1: int) -> Scene:
        sel = (self.frame >= t0) & (self.frame < t1)
        return Scene(self.pos_um[sel], self.frame[sel] - t0, t1 - t0)

    def tiled(self, reps: int) -> Scene:
        frame = np.concatenate([self.frame + r * self.n_frames for r in range(reps)])
        return Scene(np.tile(self.pos_um, (reps, 1)), frame, self.n_frames * reps)


def make_scene(model: ForwardModel, n_frames: int, k: int, rng: np.random.Generator) -> Scene:
    """Uniform scatterers inside the grid's extent; in 2D they lie in the imaging plane."""
    ext = model.grid.extent_xyz()
    pos = rng.uniform(ext[:, 0], ext[:, 1], size=(n_frames * k, 3))
    return Scene(pos, np.repeat(np.arange(n_frames), k), n_frames)


def our_workers() -> int:
    """WORKERS, or 1 when parallel Numba kernels cannot be launched from several threads at once."""
    try:
        from ulm.parallel import concurrent_kernels_ok
    except ImportError:  # serial nogil kernels: always safe
        return WORKERS
    return WORKERS if concurrent_kernels_ok() else 1


def run_threaded(render: Callable[[Scene], object], scene: Scene, workers: int) -> float:
    """Seconds to render ``scene`` split into ``workers`` contiguous frame chunks on as many threads,
    each with an equal share of the Numba threads (no oversubscription)."""
    edges = np.linspace(0, scene.n_frames, workers + 1).astype(int)
    chunks = [scene.frames(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True)]
    share = max(1, numba.config.NUMBA_NUM_THREADS // workers)

    def task(chunk: Scene) -> object:
        numba.set_num_threads(share)  # per calling thread
        return render(chunk)

    with ThreadPoolExecutor(workers) as pool:
        t0 = time.perf_counter()
        list(pool.map(task, chunks))
        return time.perf_counter() - t0


def timed(func: Callable, *args: object) -> float:
    t0 = time.perf_counter()
    func(*args)
    return time.perf_counter() - t0


def best_time(func: Callable[[], float], repeats: int) -> float:
    return min(func() for _ in range(repeats))


def ours_fps(model: ForwardModel, mode: str, scene: Scene, workers: int, repeats: int = 3) -> float:
    """Frames per second of ``model.render`` in ``mode`` on ``workers`` threads (Numba warmed up first)."""
    m = dataclasses.replace(model, mode=mode)

    def render(s: Scene) -> np.ndarray:
        return m.render(s.pos_um, np.ones(len(s.pos_um)), s.frame, s.n_frames)

    render(scene.frames(0, 1))
    return scene.n_frames / best_time(lambda: run_threaded(render, scene, workers), repeats)


class PyMust:
    """PyMUST on our probe: probe centre at x = 0, face at z = 0, metres; one DAS matrix per angle."""

    def __init__(self, probe: Probe, fov_points_xyz: np.ndarray) -> None:
        self.probe = probe
        pitch = float(np.diff(probe.elements_um[:, 0]).mean()) * 1e-6
        self.param = pymust_utils.Param(
            fc=probe.f0_hz,
            bandwidth=100 * probe.bandwidth,
            Nelements=len(probe.elements_um),
            pitch=pitch,
            width=probe.element_width_um * 1e-6,
            c=probe.c_m_s,
            fs=probe.fs_hz,
            fnumber=probe.f_number,
            radius=np.inf,
        )
        self.delays = [pymust.txdelay(self.param.copy(), float(a)) for a in probe.angles_rad]
        # simus sizes its RF to the farthest scatterer: pad every frame to the FOV corners' length
        lo, hi = fov_points_xyz.min(0), fov_points_xyz.max(0)
        corners = np.array([[x, lo[1], z] for x in (lo[0], hi[0]) for z in (lo[2], hi[2])])
        self.n_samples = [self._simus(*self.to_must(corners), d).shape[0] for d in self.delays]
        self.das = self.das_matrices(fov_points_xyz)
        self.dasmtx_s = best_time(lambda: timed(self.das_matrices, fov_points_xyz), 3)  # all angles, one frame

    def to_must(self, xyz_um: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(x, z) in metres in PyMUST's frame for world points (um)."""
        xyz = np.atleast_2d(xyz_um)
        return (xyz[:, 0] - self.probe.centre_um[0]) * 1e-6, (xyz[:, 2] - self.probe.face_z_um) * 1e-6

    def _simus(self, x_m: np.ndarray, z_m: np.ndarray, delays: np.ndarray) -> np.ndarray:
        rf, _ = pymust.simus(x_m.reshape(1, -1), z_m.reshape(1, -1), np.ones((1, x_m.size)), delays, self.param.copy())
        return rf

    def das_matrices(self, points_xyz: np.ndarray) -> list:
        """One sparse complex DAS matrix per angle, beamforming IQ at ``points_xyz`` (world um)."""
        x, z = self.to_must(points_xyz)
        n_el = len(self.probe.elements_um)
        return [
            pymust.dasmtx(1j * np.array([n, n_el]), x, z, d, self.param.copy()).tocsr()
            for n, d in zip(self.n_samples, self.delays, strict=True)
        ]

    def frame(self, xyz_um: np.ndarray, das: list | None = None) -> np.ndarray:
        """One compounded IQ image (P,) of scatterers at ``xyz_um``: simus + rf2iq + DAS per angle."""
        x, z = self.to_must(xyz_um)
        out = 0
        for d, n, m in zip(self.delays, self.n_samples, das or self.das, strict=True):
            rf = self._simus(x, z, d)
            rf = np.pad(rf[:n], ((0, n - min(n, len(rf))), (0, 0)))
            iq = pymust.rf2iq(rf, self.param.copy())
            out = out + m @ iq.ravel(order="F")
        return out

    def fps(self, scene: Scene, workers: int, repeats: int = 2) -> float:
        """Frames per second, reusing the DAS matrices, with frames split over ``workers`` threads."""

        def render(s: Scene) -> list:
            return [self.frame(s.pos_um[s.frame == f]) for f in range(s.n_frames)]

        render(scene.frames(0, 1))
        return scene.n_frames / best_time(lambda: run_threaded(render, scene, workers), repeats)


def lateral_fwhm_ours(model: ForwardModel, xyz: np.ndarray) -> tuple[float, np.ndarray]:
    """Intensity FWHM along x of our RF mode (``measure_point``) and the lateral offsets it sampled."""
    m = measure_point(model.probe, model.grid, xyz)
    return float(m["fwhm_um"][0]), m["u"]


def lateral_fwhm_pymust(pm: PyMust, xyz: np.ndarray, u: np.ndarray) -> tuple[float, float]:
    """Intensity FWHM along x of PyMUST, beamformed on the same line, and the offset of its peak (um)."""
    line = np.repeat(np.reshape(xyz, (1, 3)), len(u), axis=0)
    line[:, 0] += u
    intensity = np.abs(pm.frame(np.reshape(xyz, (1, 3)), pm.das_matrices(line))) ** 2
    return fwhm(u, intensity), float(u[np.argmax(intensity)])


def psf_3d_block_s(cfg: dict, k: int, rng: np.random.Generator, repeats: int = 3) -> tuple[float, tuple[int, int, int]]:
    """Seconds to render one BLOCK_FRAMES_3D-frame block in 3D PSF mode (one thread, as one dask task)."""
    lam_um = cfg["probe"]["speed_of_sound_m_s"] / cfg["probe"]["matrix"]["f0_hz"] * 1e6
    side = (VOXELS_3D - 0.5) * cfg["forward"]["spacing_wavelengths"] * lam_um
    model = build_model(cfg, 3, [0.0, side] * 3, mode="psf")
    scene = make_scene(model, BLOCK_FRAMES_3D, k, rng)

    args = (scene.pos_um, np.ones(len(scene.pos_um)), scene.frame, scene.n_frames)
    model.render(*args)
    return best_time(lambda: timed(model.render, *args), repeats), model.grid.shape


def describe(model: ForwardModel, k: int) -> str:
    pr, grid = model.probe, model.grid
    angles = np.rad2deg(pr.angles_rad).round(1).tolist()
    depth = (grid.extent_xyz()[2] - pr.face_z_um).round().tolist()
    return (
        f"{len(pr.elements_um)}-element {pr.f0_hz / 1e6:g} MHz array, plane waves {angles} deg, F# {pr.f_number:g}, "
        f"{pr.apodization} apodization; 2D grid {grid.shape[0]} x {grid.shape[2]} px (lambda/2), {depth} um deep; "
        f"{k} scatterers/frame"
    )


def measure(args: argparse.Namespace) -> dict:
    """Every number of the table, keyed as in the JSON line."""
    cfg = load_config()
    rng = np.random.default_rng(SEED)
    model = build_model(cfg, 2, FOV_2D_UM)
    scene = make_scene(model, args.frames, args.scatterers, rng)
    centre = model.grid.extent_xyz().mean(axis=1)
    r = {
        "setup": describe(model, args.scatterers),
        "frames": args.frames,
        "scatterers": args.scatterers,
    }
    r["workers"] = our_workers()
    r["rf_fps"] = ours_fps(model, "rf", scene, r["workers"])
    r["psf_fps"] = ours_fps(model, "psf", scene.tiled(PSF_FRAME_FACTOR), r["workers"])
    r["psf_vs_rf_speedup"] = r["psf_fps"] / r["rf_fps"]
    r["fwhm_rf_um"], u = lateral_fwhm_ours(model, centre)
    r["fwhm_uniform_aperture_um"] = 0.886 * model.probe.wavelength_um * model.probe.f_number
    r["psf_3d_block_s"], shape_3d = psf_3d_block_s(cfg, args.scatterers, rng)
    r["grid_3d_shape"] = list(shape_3d)
    keys = (
        "pymust_fps",
        "pymust_fps_serial",
        "pymust_fps_threads",
        "pymust_fps_incl_dasmtx",
        "pymust_dasmtx_s",
        "rf_vs_pymust_speedup",
        "fwhm_pymust_um",
        "pymust_peak_offset_um",
        "fwhm_vs_pymust_ratio",
    )
    r.update(dict.fromkeys(keys))
    if pymust is None:
        return r
    pm = PyMust(model.probe, model.grid.points_xyz())
    r["pymust_fps_serial"] = pm.fps(scene, 1)
    r["pymust_fps_threads"] = pm.fps(scene, WORKERS)
    r["pymust_fps"] = max(r["pymust_fps_serial"], r["pymust_fps_threads"])
    r["pymust_dasmtx_s"] = pm.dasmtx_s
    r["pymust_fps_incl_dasmtx"] = 1 / (1 / r["pymust_fps"] + pm.dasmtx_s)
    r["rf_vs_pymust_speedup"] = r["rf_fps"] / r["pymust_fps"]
    r["fwhm_pymust_um"], r["pymust_peak_offset_um"] = lateral_fwhm_pymust(pm, centre, u)
    r["fwhm_vs_pymust_ratio"] = r["fwhm_rf_um"] / r["fwhm_pymust_um"]
    return r


def print_table(r: dict) -> None:
    psf_frames = r["frames"] * PSF_FRAME_FACTOR
    block = f"{BLOCK_FRAMES_3D} frames x {'x'.join(map(str, r['grid_3d_shape']))} vox, {numba.get_num_threads()} Numba threads"
    print(f"{r['setup']}, the same positions for every method")
    print(
        f"ours: ForwardModel.render (Numba RF synthesis, Hilbert IQ, delay-and-sum), frames split over {r['workers']} threads "
        f"x {max(1, numba.config.NUMBA_NUM_THREADS // r['workers'])} Numba threads ({numba.threading_layer()} layer)"
    )
    rows = [
        (f"our RF mode, frames/s ({r['frames']} frames)", r["rf_fps"], ".1f"),
        (f"our PSF mode, frames/s ({psf_frames} frames)", r["psf_fps"], ".0f"),
        ("PSF vs RF speed-up", r["psf_vs_rf_speedup"], ".0f"),
        ("our RF lateral FWHM of |IQ|^2 (um)", r["fwhm_rf_um"], ".1f"),
        ("uniform line aperture 0.886 lambda F# (um)", r["fwhm_uniform_aperture_um"], ".1f"),
        (f"3D PSF block {block} (s)", r["psf_3d_block_s"], ".3f"),
    ]
    if r["pymust_fps"] is None:
        print("pymust is not importable (pip install -e .[bench]): PyMUST rows skipped")
    else:
        rows[3:3] = [
            (f"PyMUST, frames/s, 1 thread, DAS matrices reused ({r['frames']} frames)", r["pymust_fps_serial"], ".1f"),
            (f"PyMUST, frames/s, {WORKERS} threads, DAS matrices reused", r["pymust_fps_threads"], ".1f"),
            ("PyMUST, frames/s, best of the above + dasmtx every frame", r["pymust_fps_incl_dasmtx"], ".1f"),
            ("RF vs PyMUST speed-up (best PyMUST, DAS reused)", r["rf_vs_pymust_speedup"], ".1f"),
        ]
        rows[-1:-1] = [
            ("PyMUST lateral FWHM of |IQ|^2 (um)", r["fwhm_pymust_um"], ".1f"),
            ("PyMUST peak offset from the scatterer (um)", r["pymust_peak_offset_um"], ".1f"),
            ("FWHM ours / PyMUST", r["fwhm_vs_pymust_ratio"], ".3f"),
        ]
        print(
            "PyMUST per frame: simus + rf2iq(RF, param) per angle, RF zero-padded to a fixed length, DAS = (dasmtx matrix) @ IQ, "
            "angles summed"
        )
    print_rows(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=64, help=f"frames timed per method (PSF mode: x{PSF_FRAME_FACTOR})")
    parser.add_argument("--scatterers", type=int, default=10, help="scatterers (MBs) per frame")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args()
    if args.frames < WORKERS or args.scatterers < 1:
        parser.error(f"--frames must be >= {WORKERS} and --scatterers >= 1")
    result = measure(args)
    print_table(result)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
