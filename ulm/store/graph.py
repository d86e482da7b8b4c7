"""Graph and flow stores: the vascular network and its steady flow (um, mm/s, mmHg)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ulm.errors import UlmError
from ulm.store.base import (
    FLOW_ARRAYS,
    GRAPH_ARRAYS,
    _open,
    _put,
    _store,
)
from ulm.store.grid import EDGE, END, NODE, XYZ

VESSEL_TYPES = ("artery", "capillary", "vein", "unknown")


# ----------------------------------------------------------------------------------------- graph
@dataclass
class Graph:
    """A vascular graph in the world frame (um, z = depth).

    Attributes
    ----------
    pos_um : (N, 3) float64 node positions (x, y, z).
    node_diam_um : (N,) float64 node diameters.
    edges : (E, 2) int64 0-based node indices.
    diam_um : (E,) float64 edge (lumen) diameters.
    vessel_type : (E,) str, one of ``VESSEL_TYPES``.
    """

    pos_um: np.ndarray
    node_diam_um: np.ndarray
    edges: np.ndarray
    diam_um: np.ndarray
    vessel_type: np.ndarray
    attrs: dict = field(default_factory=dict)

    @property
    def length_um(self) -> np.ndarray:
        """(E,) float64 straight edge lengths."""
        return np.linalg.norm(self.pos_um[self.edges[:, 1]] - self.pos_um[self.edges[:, 0]], axis=1)

    @property
    def n_nodes(self) -> int:
        return len(self.pos_um)

    def degree(self) -> np.ndarray:
        """(N,) number of edges touching each node."""
        return np.bincount(self.edges.ravel(), minlength=self.n_nodes)


def write_graph(path: str | Path, graph: Graph, attrs: dict | None = None) -> None:
    """Write ``graph.zarr`` atomically."""
    with _store(path, "graph", {**graph.attrs, **(attrs or {})}) as g:
        _put(g, "nodes/pos_um", graph.pos_um.astype(np.float64), (NODE, XYZ))
        _put(g, "nodes/diam_um", graph.node_diam_um.astype(np.float64), (NODE,))
        _put(g, "edges/index", graph.edges.astype(np.int64), (EDGE, END))
        _put(g, "edges/diam_um", graph.diam_um.astype(np.float64), (EDGE,))
        _put(g, "edges/length_um", graph.length_um, (EDGE,))
        _put(g, "edges/vessel_type", np.asarray(graph.vessel_type, dtype=str), (EDGE,))


def _which(bad: np.ndarray, what: str) -> tuple[str, str]:
    """``what k`` (the first True of ``bad``) and how many there are when more than one, for a message."""
    where = np.flatnonzero(bad)
    return f"{what} {int(where[0])}", f" ({len(where)} {what}s in all)" if len(where) > 1 else ""


def check_graph(graph: Graph, where: str) -> None:
    """Raise UlmError (``where``: e.g. ``graph file x.swc``) unless the graph's arrays have matching lengths,
    finite positions, positive finite diameters (um), edges between existing nodes and known vessel types."""
    pos, ndiam, edges = np.asarray(graph.pos_um), np.asarray(graph.node_diam_um), np.asarray(graph.edges)
    diam, vtype = np.asarray(graph.diam_um), np.asarray(graph.vessel_type)
    if pos.ndim != 2 or pos.shape[1:] != (3,) or pos.dtype.kind not in "fiu":
        raise UlmError(f"{where}: node positions must be (N, 3) numbers in um, got {pos.dtype} {pos.shape}")
    n = len(pos)
    if ndiam.shape != (n,) or ndiam.dtype.kind not in "fiu":
        raise UlmError(f"{where}: node diameters must be ({n},) numbers, one per node, got {ndiam.dtype} {ndiam.shape}")
    if edges.ndim != 2 or edges.shape[1:] != (2,) or (edges.size and edges.dtype.kind not in "iu"):
        raise UlmError(f"{where}: edges must be (E, 2) node indices, got {edges.dtype} {edges.shape}")
    e = len(edges)
    if diam.shape != (e,) or diam.dtype.kind not in "fiu" or vtype.shape != (e,):
        raise UlmError(f"{where}: {e} edges but {diam.shape} edge diameters and {vtype.shape} vessel types (one each expected)")
    bad = ~np.all(np.isfinite(pos), axis=1)
    if bad.any():
        first, more = _which(bad, "node")
        raise UlmError(f"{where}: {first} position is not finite{more}")
    for values, what in ((ndiam, "node"), (diam, "edge")):
        bad = ~(np.isfinite(values) & (values > 0))
        if bad.any():
            value = float(values[np.flatnonzero(bad)[0]])
            first, more = _which(bad, what)
            raise UlmError(f"{where}: {first} diameter is {value}{more}; expected a positive finite number (um)")
    outside = np.any((edges < 0) | (edges >= n), axis=1)
    if outside.any():
        raise UlmError(f"{where}: {int(outside.sum())} edges reference nodes outside 0..{n - 1}")
    unknown = sorted(set(vtype.tolist()) - set(VESSEL_TYPES))
    if unknown:
        raise UlmError(f"{where}: unknown vessel types {unknown}; expected {list(VESSEL_TYPES)}")


def read_graph(path: str | Path) -> Graph:
    """Read ``graph.zarr`` (validated: see :func:`check_graph`)."""
    g = _open(path, "graph", GRAPH_ARRAYS)
    graph = Graph(
        pos_um=g["nodes/pos_um"][:],
        node_diam_um=g["nodes/diam_um"][:],
        edges=g["edges/index"][:],
        diam_um=g["edges/diam_um"][:],
        vessel_type=np.asarray(g["edges/vessel_type"][:].astype(object), dtype="U9"),
        attrs=g.attrs.asdict(),
    )
    check_graph(graph, f"graph store {path}")
    loops = np.flatnonzero(graph.edges[:, 0] == graph.edges[:, 1])
    if len(loops):  # `ulm graph` removes them: a store that has one was altered
        i = int(loops[0])
        raise UlmError(f"graph store {path}: edge {i} joins node {int(graph.edges[i, 0])} to itself; rerun `ulm graph`")
    stored = g["edges/length_um"][:]
    if stored.shape != (len(graph.edges),) or not np.allclose(stored, graph.length_um, rtol=1e-4, atol=1e-3):
        raise UlmError(f"graph store {path}: edges/length_um does not match the node positions (damaged; rerun `ulm graph`)")
    return graph


# ------------------------------------------------------------------------------------------ flow
@dataclass
class Flow:
    """Steady flow on a graph's edges.

    flow_um3_s : (E,) signed volume flow, positive from ``edges[:, 0]`` to ``edges[:, 1]``.
    v_mean_mm_s : (E,) signed cross-section mean velocity, same sign convention.
    pressure_mmHg : (N,) node pressures.
    """

    flow_um3_s: np.ndarray
    v_mean_mm_s: np.ndarray
    pressure_mmHg: np.ndarray
    attrs: dict = field(default_factory=dict)


def write_flow(path: str | Path, flow: Flow, attrs: dict | None = None) -> None:
    """Write ``flow.zarr`` atomically."""
    with _store(path, "flow", {**flow.attrs, **(attrs or {})}) as g:
        _put(g, "edges/flow_um3_s", flow.flow_um3_s.astype(np.float64), (EDGE,))
        _put(g, "edges/v_mean_mm_s", flow.v_mean_mm_s.astype(np.float64), (EDGE,))
        _put(g, "nodes/pressure_mmHg", flow.pressure_mmHg.astype(np.float64), (NODE,))


def read_flow(path: str | Path, graph: Graph | None = None, graph_path: str | Path | None = None) -> Flow:
    """Read ``flow.zarr`` (validated: one finite value per edge and per node; with ``graph``, the edges and
    nodes of that graph, read from ``graph_path``)."""
    g = _open(path, "flow", FLOW_ARRAYS)
    flow = Flow(g["edges/flow_um3_s"][:], g["edges/v_mean_mm_s"][:], g["nodes/pressure_mmHg"][:], g.attrs.asdict())
    for name, data in zip(FLOW_ARRAYS, (flow.flow_um3_s, flow.v_mean_mm_s, flow.pressure_mmHg), strict=True):
        if data.ndim != 1 or data.dtype.kind != "f":
            raise UlmError(f"flow store {path}: {name} must be (n,) floating point, got {data.dtype} {data.shape}")
        bad = ~np.isfinite(data)
        if bad.any():
            first, more = _which(bad, "index")
            raise UlmError(f"flow store {path}: {name} holds non-finite values at {first}{more}")
    if flow.flow_um3_s.shape != flow.v_mean_mm_s.shape:
        raise UlmError(f"flow store {path}: {len(flow.flow_um3_s)} edge flows but {len(flow.v_mean_mm_s)} edge velocities")
    if graph is not None and (len(flow.flow_um3_s), len(flow.pressure_mmHg)) != (len(graph.edges), graph.n_nodes):
        raise UlmError(
            f"flow store {path}: {len(flow.flow_um3_s)} edges and {len(flow.pressure_mmHg)} nodes, but graph "
            f"{graph_path or 'store'} has {len(graph.edges)} and {graph.n_nodes}: from another graph?"
        )
    return flow
