"""The `ulm forward` stage: tracks.zarr -> iq.zarr, frame blocks computed in parallel by dask.

Scaling: every image is divided by the peak amplitude of a single MB at the grid's centre depth in
the RF model, so a MB there peaks at |IQ| = 1 in both modes and ``snr_db`` is relative to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dask
import numba
import numpy as np
from dask.callbacks import Callback

from ulm.config import derive_seed
from ulm.errors import UlmError
from ulm.forward.geometry import Grid, Probe, check_field_of_view, make_grid, make_probe
from ulm.forward.psf import PsfTable, measure_psf_table, render_psf
from ulm.forward.realism import add_noise, clutter_scatterers
from ulm.forward.rf import rf_image
from ulm.imaging import in_slab
from ulm.imaging.blocks import svd_filter
from ulm.parallel import concurrent_kernels_ok
from ulm.progress import ProgressLog, progress_log
from ulm.store import IqWriter, TracksReader, write_iq_block


@dataclass
class ForwardModel:
    """A probe, a grid and a calibrated PSF table; renders normalised IQ frames in either mode."""

    probe: Probe
    grid: Grid
    mode: str
    table: PsfTable
    gain: float

    def render(self, pos_xyz: np.ndarray, amp: np.ndarray, frame: np.ndarray, n_frames: int) -> np.ndarray:
        """(n_frames, Z, Y, X) complex64: scatterer m (um) of amplitude amp[m] in frame frame[m]."""
        if self.mode == "psf":
            return render_psf(self.table, self.grid, pos_xyz, np.asarray(amp) / self.gain, frame, n_frames)
        out = np.zeros((n_frames, *self.grid.shape), np.complex64)
        for f in range(n_frames):
            sel = frame == f
            if sel.any():
                out[f] = rf_image(self.probe, self.grid, pos_xyz[sel], np.asarray(amp)[sel] / self.gain)
        return out


def build_model(
    cfg: dict, dims: int, fov_um: list[float], plane_y_um: float | None = None, mode: str | None = None
) -> ForwardModel:
    """Probe centred over ``fov_um`` = [x0, x1, y0, y1, z0, z1], grid, PSF table and gain."""
    fov = np.asarray(fov_um, dtype=float)
    centre = fov.reshape(3, 2).mean(axis=1)
    plane_y = centre[1] if plane_y_um is None else plane_y_um
    probe = make_probe(cfg["probe"], dims, (centre[0], plane_y if dims == 2 else centre[1]))
    grid = make_grid(fov, cfg["forward"]["spacing_wavelengths"] * probe.wavelength_um, dims, plane_y)
    check_field_of_view(probe, grid)
    table = measure_psf_table(probe, grid, cfg["forward"]["psf_depths"])
    gain = float(np.interp(grid.extent_xyz()[2].mean(), table.depth_um, table.amp))
    return ForwardModel(probe, grid, mode or cfg["forward"]["mode"], table, gain)


def _check_units(bbox: np.ndarray, path: Path) -> None:
    span = float(np.max(bbox[1::2] - bbox[0::2]))
    if span > 1e5 or 0 < span < 10.0:  # a single static bubble (span 0) is fine
        raise UlmError(
            f"tracks store {path}: pos_um spans {span:.3g}, expected a vascular volume in micrometres (10 um to 10 cm)"
        )


def static_clutter(model: ForwardModel, fcfg: dict, rng: np.random.Generator) -> np.ndarray | None:
    """One static tissue frame (Z, Y, X) with RMS 10^(clutter_db/20), or None when disabled."""
    if fcfg["clutter_db"] is None:
        return None
    cell = model.table.at(model.grid.extent_xyz()[2].mean())["fwhm_um"]
    cell = np.where(np.isfinite(cell), cell, 1.0)
    pos, amp = clutter_scatterers(model.grid.extent_xyz(), cell, fcfg["clutter_density_per_cell"], rng, model.grid.dims)
    frame = model.render(pos, amp, np.zeros(len(pos), np.int64), 1)[0]
    rms = np.sqrt(np.mean(np.abs(frame) ** 2))
    return (frame * (10 ** (fcfg["clutter_db"] / 20) / rms)).astype(np.complex64)


class _Progress(Callback):
    """A progress bar (and log lines) advancing as dask finishes frame blocks."""

    def __init__(self, bar: ProgressLog, prefix: str):
        super().__init__()
        self._bar, self._prefix = bar, prefix

    def _posttask(self, key, result, dsk, state, worker_id):  # noqa: ANN001 (dask's signature)
        name = key[0] if isinstance(key, tuple) else key
        if str(name).startswith(self._prefix):
            self._bar.update(1)


def connect(address: str):
    """A dask.distributed client of an existing cluster (e.g. started by dask-jobqueue on SLURM)."""
    from distributed import Client

    try:
        return Client(address, timeout="10s")
    except (OSError, TimeoutError) as exc:
        raise UlmError(f"forward.dask_scheduler {address}: unreachable ({type(exc).__name__}: {exc})") from None


@dataclass
class BlockJob:
    """Computes and writes one block of frames; picklable, so it also runs on distributed workers
    (which then need the shared file system of the output store)."""

    tracks_path: Path
    model: ForwardModel
    fcfg: dict
    clutter: np.ndarray | None
    seed: int
    plane_y: float
    block: int
    n_frames: int
    kernel_threads: int | None = None

    def __call__(self, t0: int, iq_array_path: str) -> None:
        if self.kernel_threads:
            numba.set_num_threads(self.kernel_threads)  # per calling thread
        t1 = min(t0 + self.block, self.n_frames)
        pos, rel = TracksReader(self.tracks_path).frames(t0, t1)
        if self.model.grid.dims == 2:  # bubbles inside the elevation slab, projected onto the plane
            inside = in_slab(pos, self.plane_y, self.fcfg["slab_um"])
            pos, rel = pos[inside], rel[inside]
            pos[:, 1] = self.plane_y
        data = self.model.render(pos, np.ones(len(pos)), rel, t1 - t0)
        if self.clutter is not None:
            data += self.clutter
        if self.fcfg["snr_db"] is not None:
            data = add_noise(data, self.fcfg["snr_db"], np.random.default_rng(derive_seed(self.seed, "noise", t0)))
        data = svd_filter(data, self.fcfg["svd_components"])
        write_iq_block(iq_array_path, t0, data.reshape(t1 - t0, *self.model.grid.array_shape))


def simulate_iq(
    tracks_path: str | Path, out_path: str | Path, cfg: dict, dims: int, seed: int, progress: bool = True
) -> ForwardModel:
    """Write ``iq.zarr`` from ``tracks.zarr`` block by block (memory flat in the number of frames)."""
    fcfg = cfg["forward"]
    tracks = TracksReader(tracks_path)
    positions_bbox = tracks.bbox_um()
    _check_units(positions_bbox, Path(tracks_path))
    fov = fcfg["fov_um"] or tracks.attrs.get("bbox_um") or positions_bbox.tolist()
    model = build_model(cfg, dims, fov, fcfg["plane_y_um"])
    plane_y = float(model.grid.origin_um[1])
    clutter = static_clutter(model, fcfg, np.random.default_rng(derive_seed(seed, "clutter")))
    n_frames, block = tracks.n_frames, fcfg["block_frames"]
    attrs = {
        **model.grid.contract_attrs(),
        "f0_hz": model.probe.f0_hz,
        "wavelength_um": model.probe.wavelength_um,
        "frame_rate_hz": float(tracks.attrs["frame_rate_hz"]),
        "probe": {
            **{k: v for k, v in cfg["probe"].items() if k not in ("linear", "matrix")},
            **cfg["probe"]["linear" if dims == 2 else "matrix"],
        },
        "mode": model.mode,
        "dims": dims,
        "forward": fcfg,
        "psf_table": model.table.to_attrs(),
        "gain": model.gain,
        "expected_fwhm_um": {
            "lateral": model.probe.lateral_fwhm_um(model.grid.extent_xyz()[2].mean()),
            "axial": model.probe.axial_fwhm_um,
        },
    }
    if dims == 2:
        attrs["plane_y_um"] = plane_y

    starts = range(0, n_frames, block)
    job = BlockJob(Path(tracks_path), model, fcfg, clutter, seed, plane_y, block, n_frames)
    with IqWriter(out_path, (n_frames, *model.grid.array_shape), block, attrs) as writer:
        tasks = [dask.delayed(job, name="forward-job")(t0, writer.array_path, dask_key_name=f"iq-block-{t0}") for t0 in starts]
        bar = progress_log(total=len(tasks), unit="block", desc=f"forward {dims}D {model.mode}", enabled=progress)
        with bar, _Progress(bar, "iq-block"):
            if fcfg["dask_scheduler"]:
                with connect(fcfg["dask_scheduler"]) as client:
                    dask.compute(*tasks, scheduler=client)
            else:
                workers = min(fcfg["workers"], len(starts)) if concurrent_kernels_ok() else 1
                job.kernel_threads = max(1, numba.config.NUMBA_NUM_THREADS // workers)  # no oversubscription
                dask.compute(*tasks, scheduler="threads", num_workers=workers)
            bar.update(len(tasks) - bar.n)  # all done (a dask.distributed cluster runs no local callbacks)
    return model
