"""Dense IQ blocks -> sparse COO tensors (the input of the sparse networks), and the trade-off curves.

The IQ time series is cut into blocks of ``block_frames`` frames and, where the field of view is
larger than ``tile_px``, into spatial tiles (:mod:`ulm.imaging.blocks`). In each block the power Re^2 + Im^2 is normalised by the
block's maximum; ``threshold`` keeps the sites whose normalised power is strictly above ``tau``,
``topk`` the ``topk_k`` strongest sites (ties: lowest (t, z, y, x) index first). Features are the IQ
divided by sqrt(max power), so that every block's strongest site has |feature| = 1.
"""

from __future__ import annotations

from pathlib import Path

import dask
import numpy as np

from ulm.errors import UlmError
from ulm.imaging import imaged_bubble_sites
from ulm.imaging.blocks import Tiling, check_tracks_cover, cut, make_tiling, normalise
from ulm.progress import progress_log
from ulm.store import CooWriter, TracksReader, read_iq


# ------------------------------------------------------------------------------- sparsification
def keep_mask(power: np.ndarray, method: str, tau: float, k: int) -> np.ndarray:
    """Boolean mask of the kept sites of a normalised-power block."""
    if method == "threshold":
        return power > tau
    if method == "topk":
        flat = power.ravel()
        order = np.argsort(-flat, kind="stable")[: min(k, flat.size)]  # stable: lowest index wins ties
        mask = np.zeros(flat.size, dtype=bool)
        mask[order] = True
        return mask.reshape(power.shape)
    raise UlmError(f"sparse.method {method!r}: expected threshold or topk")


def sparsify_block(
    block: np.ndarray,
    method: str,
    tau: float,
    k: int,
    mask_net=None,
    learned_threshold: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """COO of one block: coords (N, 1 + D) int32 in (t, z, [y,] x) order and feats (N, 2) (Re, Im).
    ``learned`` keeps the sites where ``mask_net`` (ulm.nn.mask_net.MaskNet) predicts p > ``learned_threshold``."""
    power, scale = normalise(block)
    if method == "learned":
        from ulm.nn.mask_net import mask_probability

        mask = mask_probability(mask_net, block) > learned_threshold
    else:
        mask = keep_mask(power, method, tau, k)
    coords = np.argwhere(mask).astype(np.int32)
    values = block[mask] / scale
    return coords, np.column_stack([values.real, values.imag]).astype(np.float32)


def to_dense(coords: np.ndarray, feats: np.ndarray, block_shape: tuple[int, ...]) -> np.ndarray:
    """Complex dense block from COO (zeros where no site was kept)."""
    out = np.zeros(block_shape, np.complex64)
    out[tuple(coords.T)] = feats[:, 0] + 1j * feats[:, 1]
    return out


def sparsify_iq(iq_path: str | Path, out_path: str | Path, cfg: dict, progress: bool = True) -> Tiling:
    """The `ulm sparsify` stage: every block of ``iq.zarr`` -> ``sparse.zarr``, time blocks computed in
    parallel by dask in groups of ``workers`` and appended in order (memory flat in the block count)."""
    iq = read_iq(iq_path)
    tiling = make_tiling(iq.iq.shape, cfg)
    method = cfg["method"]
    mask_net = _learned_mask(cfg) if method == "learned" else None

    def convert(t0: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        data = iq.iq[t0 : t0 + tiling.block_shape[0]]
        return [
            (
                *sparsify_block(
                    cut(data, o, tiling.block_shape, t0), method, cfg["tau"], cfg["topk_k"], mask_net, cfg["learned_threshold"]
                ),
                o,
            )
            for o in tiling.tiles_of(t0)
        ]

    attrs = {
        "block_shape": list(tiling.block_shape),
        "method": method,
        "params": {
            "threshold": {"tau": cfg["tau"]},
            "topk": {"k": cfg["topk_k"]},
            "learned": {"threshold": cfg["learned_threshold"], "checkpoint": cfg["mask_checkpoint"]},
        }[method],
        "normalisation": "feats = IQ / sqrt(max power of the block)",
        "sparse": cfg,
        "iq": {k: iq.attrs[k] for k in ("origin_um", "spacing_um", "wavelength_um", "frame_rate_hz") if k in iq.attrs}
        | ({"plane_y_um": iq.attrs["plane_y_um"]} if "plane_y_um" in iq.attrs else {}),
    }
    times = tiling.time_blocks()
    with (
        CooWriter(out_path, iq.dims + 1, 2, attrs) as writer,
        progress_log(total=len(times), unit="block", desc=f"sparsify {method}", enabled=progress) as bar,
    ):
        for group in (times[i : i + cfg["workers"]] for i in range(0, len(times), cfg["workers"])):
            for pieces in dask.compute(
                *[dask.delayed(convert)(t0) for t0 in group], scheduler="threads", num_workers=cfg["workers"]
            ):
                for coords, feats, origin in pieces:
                    writer.append(coords, feats, origin)
            bar.update(len(group))
    return tiling


# ------------------------------------------------------------------------------------ trade-off
def trade_off(
    iq_path: str | Path, tracks_path: str | Path, cfg: dict, max_blocks: int = 4, values: list | None = None
) -> list[dict]:
    """Kept fraction of sites vs fraction of imaged ground-truth MB positions whose pixel is kept,
    for ``values`` of the method's parameter (default: ``trade_off_points`` values spanning its
    range), on the first ``max_blocks`` time blocks."""
    iq, tracks = read_iq(iq_path), TracksReader(tracks_path)
    tiling = make_tiling(iq.iq.shape, cfg)
    check_tracks_cover(tracks, tiling, iq_path)
    frames = tiling.block_shape[0]
    n = cfg["trade_off_points"]
    sites = int(np.prod(tiling.block_shape))
    learned = cfg["method"] == "learned"
    mask_net = _learned_mask(cfg) if learned else None
    if values is None:
        if learned:
            values = np.linspace(0.05, 0.95, n)
        elif cfg["method"] == "threshold":
            values = np.logspace(-4, 0, n, endpoint=False)
        else:
            values = np.unique(np.geomspace(1, sites, n).astype(int))
    kept, hit, total_sites, total_mb = np.zeros(len(values)), np.zeros(len(values)), 0, 0
    for t0 in tiling.time_blocks()[:max_blocks]:
        data = iq.iq[t0 : t0 + frames]
        mb = imaged_bubble_sites(tracks, iq, t0, t0 + frames)
        for origin in tiling.tiles_of(t0):
            block = cut(data, origin, tiling.block_shape, t0)
            local = mb - np.concatenate([[0], origin[1:]])
            local = local[np.all((local >= 0) & (local < np.asarray(tiling.block_shape)), axis=1)]
            power, _ = normalise(block)
            if learned:
                from ulm.nn.mask_net import mask_probability

                power = mask_probability(mask_net, block)  # the score the threshold applies to
            total_sites += block.size
            total_mb += len(local)
            for j, v in enumerate(values):
                mask = power > v if learned else keep_mask(power, cfg["method"], float(v), int(v))
                kept[j] += mask.sum()
                hit[j] += mask[tuple(local.T)].sum() if len(local) else 0
    return [
        {
            "method": cfg["method"],
            "parameter": float(v),
            "kept_fraction": kept[j] / total_sites,
            "mb_fraction": hit[j] / max(total_mb, 1),
        }
        for j, v in enumerate(values)
    ]


def _learned_mask(cfg: dict):
    from ulm.nn.mask_net import load_mask

    if not cfg["mask_checkpoint"]:
        raise UlmError("sparse.method = learned needs sparse.mask_checkpoint (a mask.pt from `ulm mask`)")
    return load_mask(cfg["mask_checkpoint"])


def store_bytes(path: str | Path) -> int:
    """Bytes on disk of a store's array data: its chunk files (the ``c/`` folders), without the metadata,
    whose attrs (lineage, version) change after the data is written."""
    root = Path(path)
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file() and "c" in f.relative_to(root).parts[:-1])
