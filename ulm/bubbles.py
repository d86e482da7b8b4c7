"""Microbubble (MB) transport through the vascular graph: the ground-truth tracks.

A fixed number of bubble *slots* (the concentration) move along edges in the flow direction at
v = v_max * max(1 - r^2/R^2, floor) * (1 + a sin(2 pi f t)), with v_max = 2 v_mean (Poiseuille
profile) and r/R drawn per bubble. At a node a bubble takes one outgoing edge with probability
proportional to that edge's flow; at an outflow end it is removed and a new bubble (new id) enters
at an inflow end chosen in proportion to the inflow, so the count stays constant and injection is
proportional to flow. Bubbles start spread uniformly over the blood volume (the steady state).

Each slot has its own counter-based random stream (splitmix64), so tracks depend only on the
seed, never on thread scheduling.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numba as nb
import numpy as np

from ulm.errors import UlmError
from ulm.parallel import prefer_threadsafe_layer
from ulm.progress import progress_log
from ulm.store import Flow, Graph, TracksWriter

prefer_threadsafe_layer()

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
MIX1 = np.uint64(0xBF58476D1CE4E5B9)
MIX2 = np.uint64(0x94D049BB133111EB)


@dataclass
class Network:
    """Edges in flow orientation, ready for the transport kernel (um, um/s)."""

    start_um: np.ndarray  # (E, 3) upstream node position
    dir: np.ndarray  # (E, 3) unit vector upstream -> downstream
    normal1: np.ndarray  # (E, 3) unit vectors spanning the cross-section
    normal2: np.ndarray
    length_um: np.ndarray  # (E,)
    lumen_um: np.ndarray  # (E,) radius available to bubble centres
    vmax_um_s: np.ndarray  # (E,) centre-line speed, 2 |v_mean|
    down: np.ndarray  # (E,) downstream node
    out_ptr: np.ndarray  # (N+1,) CSR of outgoing edges per node
    out_edge: np.ndarray  # outgoing edge ids
    out_cdf: np.ndarray  # cumulative flow fraction of each outgoing edge at its node
    inlet_edge: np.ndarray  # edges leaving an inflow end
    inlet_cdf: np.ndarray  # cumulative inflow fraction

    @property
    def volume_um3(self) -> np.ndarray:
        return np.pi * (self.lumen_um**2) * self.length_um


def build_network(graph: Graph, flow: Flow, bubble_diam_um: float = 2.0) -> Network:
    """Orient every edge along its flow and index the outgoing edges of each node."""
    q = flow.flow_um3_s
    if len(q) != len(graph.edges):
        raise UlmError(f"flow has {len(q)} edges but the graph has {len(graph.edges)}: were they made from the same graph?")
    forward = q >= 0
    up = np.where(forward, graph.edges[:, 0], graph.edges[:, 1])
    down = np.where(forward, graph.edges[:, 1], graph.edges[:, 0])
    vec = graph.pos_um[down] - graph.pos_um[up]
    length = np.linalg.norm(vec, axis=1)
    direction = vec / length[:, None]
    helper = np.where(np.abs(direction[:, [0]]) < 0.9, [[1.0, 0, 0]], [[0, 1.0, 0]])
    n1 = np.cross(direction, helper)
    n1 /= np.linalg.norm(n1, axis=1, keepdims=True)
    n2 = np.cross(direction, n1)
    flowing = np.abs(q) > 0
    order = np.lexsort((np.arange(len(q)), up))
    order = order[flowing[order]]
    counts = np.bincount(up[order], minlength=graph.n_nodes)
    ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    weights = np.abs(q[order])
    csum = np.cumsum(weights)
    first = np.repeat(ptr[:-1], counts)  # position of each edge's group start
    totals = np.bincount(up[order], weights, minlength=graph.n_nodes)
    cdf = (csum - csum[first] + weights[first]) / totals[up[order]]
    inflow_end = (graph.degree() == 1) & (counts > 0)
    inlets = order[inflow_end[up[order]]]
    if len(inlets) == 0:
        raise UlmError("flow has no inflow end: no open end feeds the network")
    inlet_w = np.abs(q[inlets])
    return Network(
        start_um=graph.pos_um[up].astype(np.float64),
        dir=direction,
        normal1=n1,
        normal2=n2,
        length_um=length,
        lumen_um=np.maximum(graph.diam_um / 2 - bubble_diam_um / 2, 0.0),
        vmax_um_s=2e3 * np.abs(flow.v_mean_mm_s),
        down=down.astype(np.int64),
        out_ptr=ptr,
        out_edge=order.astype(np.int64),
        out_cdf=cdf,
        inlet_edge=inlets.astype(np.int64),
        inlet_cdf=np.cumsum(inlet_w) / inlet_w.sum(),
    )


@dataclass
class BubbleState:
    """Per-slot state carried from one frame block to the next."""

    edge: np.ndarray  # (K,) int64
    s_um: np.ndarray  # (K,) distance from the edge's upstream node
    rho: np.ndarray  # (K,) radial position r / R in [0, 1)
    theta: np.ndarray  # (K,) angle around the axis (rad)
    generation: np.ndarray  # (K,) int64, bubble id = generation * K + slot
    rng: np.ndarray  # (K,) uint64 splitmix64 counters
    frame: int = 0


def initial_state(net: Network, n_bubbles: int, seed: int) -> BubbleState:
    """Place ``n_bubbles`` uniformly over the flowing blood volume (steady state)."""
    rng = np.random.default_rng(seed)
    weights = net.volume_um3 * (net.vmax_um_s > 0)
    if weights.sum() <= 0:
        raise UlmError("no edge carries flow: cannot place bubbles")
    edge = rng.choice(len(weights), size=n_bubbles, p=weights / weights.sum())
    return BubbleState(
        edge=edge.astype(np.int64),
        s_um=rng.uniform(0, 1, n_bubbles) * net.length_um[edge],
        rho=np.sqrt(rng.uniform(0, 1, n_bubbles)),
        theta=rng.uniform(0, 2 * np.pi, n_bubbles),
        generation=np.zeros(n_bubbles, dtype=np.int64),
        rng=rng.integers(0, 2**63, n_bubbles, dtype=np.uint64),
    )


@nb.njit(cache=True, inline="always")
def _uniform(state: np.ndarray, i: int) -> float:
    """Next uniform [0, 1) of slot ``i``'s splitmix64 stream."""
    state[i] += GOLDEN
    z = state[i]
    z = (z ^ (z >> np.uint64(30))) * MIX1
    z = (z ^ (z >> np.uint64(27))) * MIX2
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@nb.njit(cache=True, inline="always")
def _pick(cdf: np.ndarray, lo: int, hi: int, u: float) -> int:
    for k in range(lo, hi - 1):
        if u < cdf[k]:
            return k
    return hi - 1


@nb.njit(parallel=True, cache=True)
def _advance(
    start,
    direction,
    n1,
    n2,
    length,
    lumen,
    vmax,
    down,
    out_ptr,
    out_edge,
    out_cdf,
    inlet_edge,
    inlet_cdf,
    edge,
    s,
    rho,
    theta,
    gen,
    rng,
    frame0,
    n_frames,
    dt,
    floor,
    pulse_hz,
    pulse_amp,
    out_pos,
    out_vel,
    out_id,
    out_edge_id,
):
    """Record then advance every slot for ``n_frames`` frames (rows are frame-major)."""
    k_slots = edge.shape[0]
    two_pi = 2.0 * np.pi
    for i in nb.prange(k_slots):
        e, si, ri, th, g = edge[i], s[i], rho[i], theta[i], gen[i]
        for f in range(n_frames):
            t = (frame0 + f) * dt
            pulse = 1.0 + pulse_amp * np.sin(two_pi * pulse_hz * t)
            factor = max(1.0 - ri * ri, floor) * pulse
            v = vmax[e] * factor
            row = f * k_slots + i
            off = ri * lumen[e]
            c, sn = off * np.cos(th), off * np.sin(th)
            for a in range(3):
                out_pos[row, a] = start[e, a] + si * direction[e, a] + c * n1[e, a] + sn * n2[e, a]
                out_vel[row, a] = 1e-3 * v * direction[e, a]
            out_id[row] = g * k_slots + i
            out_edge_id[row] = e
            remaining = dt
            for _ in range(100000):  # guard; each pass consumes time on an edge of positive length
                v = vmax[e] * factor
                if remaining <= 0.0 or v <= 0.0:
                    break
                t_end = (length[e] - si) / v
                if t_end > remaining:
                    si += v * remaining
                    break
                remaining -= t_end
                node = down[e]
                si = 0.0
                if out_ptr[node + 1] == out_ptr[node]:  # outflow end: a new bubble enters
                    g += 1
                    e = inlet_edge[_pick(inlet_cdf, 0, inlet_cdf.shape[0], _uniform(rng, i))]
                    ri = np.sqrt(1.0 - np.sqrt(1.0 - _uniform(rng, i)))  # flux-weighted radius
                    th = two_pi * _uniform(rng, i)
                    factor = max(1.0 - ri * ri, floor) * pulse
                else:
                    e = out_edge[_pick(out_cdf, out_ptr[node], out_ptr[node + 1], _uniform(rng, i))]
        edge[i], s[i], rho[i], theta[i], gen[i] = e, si, ri, th, g


@dataclass
class Chunk:
    """One block of frames: rows are frame-major, all slots every frame."""

    frame: np.ndarray
    bubble: np.ndarray
    pos_um: np.ndarray
    vel_mm_s: np.ndarray
    edge: np.ndarray


def advance(
    net: Network,
    state: BubbleState,
    n_frames: int,
    frame_rate_hz: float,
    floor: float = 0.3,
    pulse_bpm: float = 0.0,
    pulse_amp: float = 0.0,
) -> Chunk:
    """Record the current positions and advance ``state`` (in place) by ``n_frames`` frames."""
    k = len(state.edge)
    rows = n_frames * k
    out = Chunk(
        frame=np.repeat(np.arange(state.frame, state.frame + n_frames, dtype=np.int32), k),
        bubble=np.empty(rows, np.int64),
        pos_um=np.empty((rows, 3), np.float32),
        vel_mm_s=np.empty((rows, 3), np.float32),
        edge=np.empty(rows, np.int64),
    )
    _advance(
        net.start_um,
        net.dir,
        net.normal1,
        net.normal2,
        net.length_um,
        net.lumen_um,
        net.vmax_um_s,
        net.down,
        net.out_ptr,
        net.out_edge,
        net.out_cdf,
        net.inlet_edge,
        net.inlet_cdf,
        state.edge,
        state.s_um,
        state.rho,
        state.theta,
        state.generation,
        state.rng,
        state.frame,
        n_frames,
        1.0 / frame_rate_hz,
        floor,
        pulse_bpm / 60.0,
        pulse_amp,
        out.pos_um,
        out.vel_mm_s,
        out.bubble,
        out.edge,
    )
    state.frame += n_frames
    return out


def simulate_tracks(
    graph: Graph, flow: Flow, cfg: dict, seed: int, path: str | Path | None = None, progress: bool = True
) -> Chunk | None:
    """The `ulm bubbles` stage. Streams ``tracks.zarr`` to ``path`` chunk by chunk, or, with
    ``path=None``, returns all rows in memory (for tests and small runs)."""
    net = build_network(graph, flow, cfg["bubble_diam_um"])
    state = initial_state(net, cfg["concentration"], seed)
    n_frames, chunk = cfg["n_frames"], cfg["chunk_frames"]
    kwargs = dict(
        frame_rate_hz=cfg["frame_rate_hz"],
        floor=cfg["profile_floor"],
        pulse_bpm=cfg["pulsatility_rate_bpm"],
        pulse_amp=cfg["pulsatility_amplitude"],
    )
    blocks = [min(chunk, n_frames - f0) for f0 in range(0, n_frames, chunk)]
    bar = progress_log(total=n_frames, unit="frame", desc="bubbles", enabled=progress)
    if path is None:
        parts = []
        for n in blocks:
            parts.append(advance(net, state, n, **kwargs))
            bar.update(n)
        bar.close()
        return Chunk(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("frame", "bubble", "pos_um", "vel_mm_s", "edge")))
    lo, hi = graph.pos_um.min(axis=0), graph.pos_um.max(axis=0)
    bbox = np.column_stack([lo, hi]).ravel().tolist()  # the vascular volume: the default field of view
    attrs = {"frame_rate_hz": cfg["frame_rate_hz"], "n_bubbles": cfg["concentration"], "seed": seed, "bbox_um": bbox}
    with TracksWriter(path, {**attrs, "config": cfg}, chunk_rows=max(1, chunk * cfg["concentration"])) as writer:
        for n in blocks:
            part = advance(net, state, n, **kwargs)
            writer.append(part.frame, part.bubble, part.pos_um, part.vel_mm_s)
            bar.update(n)
    bar.close()
    return None
