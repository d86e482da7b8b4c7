"""What the store's safety costs: sealing (manifest + digest), the manifest check on open, and the
resume key from recorded digests, each as a ratio to its baseline in the same process (these machines
are noisy: compare the ratios, not the absolute numbers).

    python benchmarks/store_overhead.py [--frames 2048] [--side 64] [--repeat 3] [--json]

Writes a random complex64 iq.zarr of (frames, side, side) through ``IqWriter`` (chunks of 128 frames),
then measures:

* write: ``IqWriter`` (which seals the store: lists and hashes every chunk file) vs the same array
  written with plain ``zarr.create_array`` + rename (no seal): ``write_vs_plain``;
* open: ``read_iq`` (which compares the chunk files with the manifest) vs ``zarr.open_group`` alone:
  ``open_vs_plain`` (the ratio of a few milliseconds);
* checksums: reading the whole array with each chunk's CRC-32C checked (what every store does) vs the same
  array written without the checksum codec: ``crc_read_vs_no_crc``;
* resume key: ``store_digest`` (reads the recorded digest) vs reading every array of the store, as the
  resume key did before digests: ``digest_vs_full_read``; and ``recompute_vs_full_read``, the digest
  recomputed from the chunk files (a store written without one).

With --json the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import zarr
from report_table import print_rows  # benchmarks/report_table.py, beside this script

from ulm.store import COMPRESSORS, IqWriter, _chunk_digests, read_iq, store_digest

ATTRS = {
    "origin_um": [0.0, 0.0],
    "spacing_um": [50.0, 50.0],
    "f0_hz": 15.6e6,
    "wavelength_um": 98.6,
    "frame_rate_hz": 1000.0,
    "probe": "bench",
    "mode": "psf",
}
BLOCK = 128


def best_of(repeat: int, func: Callable[[], object]) -> float:
    """The fastest of ``repeat`` runs, seconds."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        func()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=2048)
    ap.add_argument("--side", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    shape = (args.frames, args.side, args.side)
    data = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)

        def sealed() -> None:
            with IqWriter(root / "iq.zarr", shape, BLOCK, ATTRS) as writer:
                for t0 in range(0, args.frames, BLOCK):
                    writer.write(t0, data[t0 : t0 + BLOCK])

        def plain(name: str = "plain", compressors: tuple = COMPRESSORS) -> None:
            shutil.rmtree(root / f"{name}.tmp", ignore_errors=True)
            group = zarr.open_group(str(root / f"{name}.tmp"), mode="w", zarr_format=3)
            group.attrs.update(ATTRS)
            arr = group.create_array("iq", shape=shape, dtype="complex64", chunks=(BLOCK, *shape[1:]), compressors=compressors)
            for t0 in range(0, args.frames, BLOCK):
                arr[t0 : t0 + BLOCK] = data[t0 : t0 + BLOCK]
            shutil.rmtree(root / f"{name}.zarr", ignore_errors=True)
            os.replace(root / f"{name}.tmp", root / f"{name}.zarr")

        def read_all(name: str) -> bytes:
            return zarr.open_group(str(root / name), mode="r")["iq"][:].tobytes()

        t_plain, t_sealed = best_of(args.repeat, plain), best_of(args.repeat, sealed)
        plain("no-crc", COMPRESSORS[:1])
        t_crc, t_no_crc = (
            best_of(args.repeat, lambda: read_all("plain.zarr")),
            best_of(args.repeat, lambda: read_all("no-crc.zarr")),
        )
        t_open_plain = best_of(args.repeat * 10, lambda: zarr.open_group(str(root / "iq.zarr"), mode="r")["iq"])
        t_open = best_of(args.repeat * 10, lambda: read_iq(root / "iq.zarr"))
        t_full = best_of(args.repeat, lambda: read_all("iq.zarr"))
        t_digest = best_of(args.repeat * 10, lambda: store_digest(root / "iq.zarr"))
        t_recompute = best_of(args.repeat, lambda: _chunk_digests(root / "iq.zarr"))
    out = {
        "frames": args.frames,
        "side": args.side,
        "mbytes": round(data.nbytes / 1e6, 1),
        "write_s": round(t_sealed, 4),
        "plain_write_s": round(t_plain, 4),
        "write_vs_plain": round(t_sealed / t_plain, 3),
        "open_s": round(t_open, 5),
        "plain_open_s": round(t_open_plain, 5),
        "open_vs_plain": round(t_open / t_open_plain, 2),
        "digest_s": round(t_digest, 5),
        "full_read_s": round(t_full, 4),
        "digest_vs_full_read": round(t_digest / t_full, 4),
        "recompute_vs_full_read": round(t_recompute / t_full, 3),
        "crc_read_vs_no_crc": round(t_crc / t_no_crc, 3),
    }
    print_rows(
        [
            ("write with seal / plain write", out["write_vs_plain"], ".3f"),
            ("open with manifest check / plain open", out["open_vs_plain"], ".2f"),
            ("recorded digest / full read", out["digest_vs_full_read"], ".4f"),
            ("recomputed digest / full read", out["recompute_vs_full_read"], ".3f"),
            ("read with CRC-32C / read without", out["crc_read_vs_no_crc"], ".3f"),
        ]
    )
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
