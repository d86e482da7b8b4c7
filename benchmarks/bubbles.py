"""Bubble transport throughput and flow-solve time, against a vectorised NumPy baseline run in the
same process (these machines are noisy: compare the ratio, not the absolute numbers).

    python benchmarks/bubbles.py [--bubbles 2000] [--frames 2000] [--json]

Prints bubble-steps per second of the Numba kernel (``ulm.bubbles.advance``) and of the NumPy
baseline on the same network, the flow solve time on the largest shared graph (the bundled copy
when ../shared is absent) and on a ~30k-node synthetic graph. With --json the last line is one JSON
object with keys steps_per_s, numpy_steps_per_s, speedup_vs_numpy, flow_solve_s, flow_solve_30k_s.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from ulm.bubbles import Network, advance, build_network, initial_state
from ulm.config import load_config
from ulm.flow import solve_flow
from ulm.vascular import build_graph, synthetic_graph

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "vascular"


def numpy_steps(net: Network, edge, s, rho, n_frames: int, dt: float, floor: float, rng) -> np.ndarray:
    """Baseline: the same steady transport vectorised over bubbles, one frame at a time."""
    edge, s = edge.copy(), s.copy()
    factor = np.maximum(1 - rho**2, floor)
    out = np.empty((n_frames, len(edge), 3), np.float32)
    for f in range(n_frames):
        out[f] = net.start_um[edge] + s[:, None] * net.dir[edge]
        remaining = np.full(len(edge), dt)
        todo = np.arange(len(edge))
        while len(todo):
            e = edge[todo]
            v = net.vmax_um_s[e] * factor[todo]
            t_end = (net.length_um[e] - s[todo]) / np.maximum(v, 1e-300)
            stay = t_end > remaining[todo]
            s[todo[stay]] += v[stay] * remaining[todo[stay]]
            move = todo[~stay]
            remaining[move] -= t_end[~stay]
            s[move] = 0.0
            node = net.down[edge[move]]
            lo, hi = net.out_ptr[node], net.out_ptr[node + 1]
            sink = hi == lo
            u = rng.random(len(move))
            inlet = np.searchsorted(net.inlet_cdf, u[sink], side="right").clip(max=len(net.inlet_edge) - 1)
            edge[move[sink]] = net.inlet_edge[inlet]
            pick = lo[~sink] + np.array(
                [
                    np.searchsorted(net.out_cdf[a:b], x, side="right")
                    for a, b, x in zip(lo[~sink], hi[~sink], u[~sink], strict=False)
                ],
                dtype=np.int64,
            )
            edge[move[~sink]] = net.out_edge[np.minimum(pick, hi[~sink] - 1)]
            todo = move
    return out


def timed(func, *args, **kwargs) -> tuple[float, object]:
    t0 = time.perf_counter()
    result = func(*args, **kwargs)
    return time.perf_counter() - t0, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bubbles", type=int, default=2000)
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    cfg = load_config()
    sources = [str(p) for p in sorted(SHARED.glob("*.mat"))] or ["bundled:mouse_20100203"]
    graph, source = max(((build_graph(s, cfg["graph"]), s) for s in sources), key=lambda gs: gs[0].n_nodes)
    solve_flow(graph, cfg["flow"])  # warm caches
    flow_s = min(timed(solve_flow, graph, cfg["flow"])[0] for _ in range(5))
    big = synthetic_graph(size_um=(1000.0, 1000.0, 1000.0), capillary_spacing_um=31.0, n_arterioles=6, n_venules=6)
    flow_big_s = min(timed(solve_flow, big, cfg["flow"])[0] for _ in range(3))
    flow = solve_flow(graph, cfg["flow"])
    net = build_network(graph, flow)
    state = initial_state(net, args.bubbles, seed=0)
    start = (state.edge.copy(), state.s_um.copy(), state.rho.copy())
    advance(net, state, 5, 1000.0)  # compile / load the Numba cache
    numba_s = min(timed(advance, net, state, args.frames, 1000.0)[0] for _ in range(3))
    np_frames = max(1, args.frames // 20)
    numpy_s = timed(numpy_steps, net, *start, np_frames, 1e-3, 0.3, np.random.default_rng(0))[0]
    steps = args.bubbles * args.frames / numba_s
    np_steps = args.bubbles * np_frames / numpy_s
    threads = os.environ.get("NUMBA_NUM_THREADS", str(os.cpu_count()))
    print(f"graph: {source} ({graph.n_nodes} nodes, {len(graph.edges)} edges); {threads} threads")
    print(f"{'what':38s} {'value':>14s}")
    print(f"{'Numba bubble-steps per second':38s} {steps:14.3e}")
    print(f"{'NumPy baseline bubble-steps per second':38s} {np_steps:14.3e}")
    print(f"{'speed-up vs NumPy':38s} {steps / np_steps:14.1f}x")
    print(f"{'flow solve, largest graph (s)':38s} {flow_s:14.4f}")
    print(f"{f'flow solve, synthetic {big.n_nodes} nodes (s)':38s} {flow_big_s:14.4f}")
    if args.json:
        print(
            json.dumps(
                {
                    "steps_per_s": steps,
                    "numpy_steps_per_s": np_steps,
                    "speedup_vs_numpy": steps / np_steps,
                    "flow_solve_s": flow_s,
                    "flow_solve_30k_s": flow_big_s,
                }
            )
        )


if __name__ == "__main__":
    main()
