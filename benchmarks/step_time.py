"""Time of one training step of each preset's network on this machine's CPU, as a ratio to the repro-cpu
preset's step measured in the same process, and the training time of the paper presets it implies.

    python benchmarks/step_time.py [--no-3d] [--repeats 3] [--threads 2] [--json]

A step is forward, Dice loss, backward and an Adam update of the reference network (ulm.nn) on one block of
synthetic IQ (benchmarks/memory.py's generator: MBs on smooth paths, the presets' PSF, -30 dB noise),
sparsified as the presets do. Blocks (frames x pixels, width, input, MBs per frame in the block):

- repro-cpu 2D (the baseline): 128 x 18^2, width 8, threshold 0.10, 20 MBs; 3D: 128 x 18^3, width 4,
  threshold 0.25, 30 MBs (18^3 stands for the preset's 18 x 9 x 18 voxels: the generator makes cubes);
- paper-2d: 512 x 32^2, width 16, threshold 0.10, 10 MBs, sparse and dense; paper-3d: 512 x 32^3, width 16,
  threshold 0.25, 30 MBs, sparse (its dense twin does not fit in memory).

The paper presets' training time is then (block passes of one network: training blocks x epochs) x (step time
per block), per network; batching several blocks in one step changes the optimiser steps, not the work.
This is an extrapolation from one step per configuration on synthetic data, said so wherever it is quoted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from memory import make_block  # noqa: E402

from ulm.nn.loss import network_loss  # noqa: E402
from ulm.nn.network import ULMNet  # noqa: E402
from ulm.nn.spec import NetSpec  # noqa: E402

# name: (dims, T, S, width, c, model); the first of each dimensionality is its baseline
CASES = {
    "repro-cpu 2D": (2, 128, 18, 8, 20, "sparse"),
    "paper-2d sparse": (2, 512, 32, 16, 10, "sparse"),
    "paper-2d dense": (2, 512, 32, 16, 10, "dense"),
    "repro-cpu 3D": (3, 128, 18, 4, 30, "sparse"),
    "paper-3d sparse": (3, 512, 32, 16, 30, "sparse"),
}
# block passes of one network: concentrations x training blocks per concentration (3/4 of them) x epochs
PASSES = {"paper-2d": 4 * 96 * 300, "paper-3d": 3 * 48 * 20}


def step_seconds(dims: int, T: int, S: int, width: int, c: int, model: str, repeats: int) -> float:
    """Median wall time of ``repeats`` training steps (after one warm-up step) on one block."""
    block = make_block(dims, c, "threshold", T, S)
    torch.manual_seed(0)
    spec = NetSpec(dims=dims, width=width)
    net = ULMNet(spec).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = block.dense() if model == "dense" else None

    def step() -> None:
        opt.zero_grad()
        network_loss(net(x if model == "dense" else block.sparse()), block.target, spec).backward()
        opt.step()

    step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-3d", action="store_true", help="2D only (the paper-3d step takes minutes and ~7 GB)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seconds = {}
    for name, case in CASES.items():
        if args.no_3d and case[0] == 3:
            continue
        seconds[name] = step_seconds(*case, repeats=args.repeats)
        print(f"{name:18s} {seconds[name]:8.3f} s per step", file=sys.stderr, flush=True)
    out = {"threads": args.threads, "step_seconds": seconds}
    for dims, baseline in ((2, "repro-cpu 2D"), (3, "repro-cpu 3D")):
        for name in [n for n in seconds if CASES[n][0] == dims and n != baseline]:
            ratio = seconds[name] / seconds[baseline]
            preset = name.split()[0]
            hours = PASSES[preset] * seconds[name] / 3600
            out[f"ratio {name}"] = ratio
            out[f"hours {name}"] = hours
            print(
                f"{name:18s} {ratio:8.1f} x the {baseline} step; one network of {preset}: {PASSES[preset]:,} block passes"
                f" = {hours:7.1f} h on {args.threads} CPU threads"
            )
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
