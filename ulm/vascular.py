"""Vascular graphs: readers (virtualMRI .mat, SWC, GraphML), cleaning and a synthetic generator.

All positions and diameters are in um in the world frame (x, y, z) with z the depth below the
cortical surface. Edge vessel types are one of ``artery``, ``capillary``, ``vein``, ``unknown``.
"""

from __future__ import annotations

import warnings
from importlib import resources
from pathlib import Path

import numpy as np
import scipy.io
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from ulm.errors import UlmError
from ulm.store import VESSEL_TYPES, Graph, check_graph

MAT_FIELDS = ("nodePos_um", "nodeDiam", "nodeEdges")
MAT_TYPES = {1.0: "artery", 2.0: "capillary", 3.0: "vein"}  # 1.5 / 2.5 (mixed) -> unknown


# ------------------------------------------------------------------------------------- sources
def resolve_source(source: str) -> Path | str:
    """Turn ``bundled:NAME`` into the path of ``ulm/data/NAME.mat``; ``synthetic`` stays as is."""
    if source == "synthetic":
        return source
    if source.startswith("bundled:"):
        name = source.split(":", 1)[1]
        path = Path(str(resources.files("ulm").joinpath("data", f"{name}.mat")))
        if not path.is_file():
            bundled = sorted(p.stem for p in path.parent.glob("*.mat"))
            raise UlmError(f"graph source {source!r}: no bundled graph {name!r}; bundled: {bundled}")
        return path
    return Path(source)


def read_graph_file(path: str | Path, swc_types: dict | None = None) -> Graph:
    """Read a vascular graph from ``.mat`` (virtualMRI), ``.swc`` or ``.graphml``."""
    path = Path(path)
    readers = {".mat": read_mat, ".swc": lambda p: read_swc(p, swc_types), ".graphml": read_graphml}
    if path.suffix.lower() not in readers:
        raise UlmError(f"graph file {path}: unknown extension {path.suffix!r}; expected one of {sorted(readers)}")
    if not path.is_file():
        raise UlmError(f"graph file {path}: not found")
    try:
        graph = readers[path.suffix.lower()](path)
    except (ValueError, TypeError, IndexError) as exc:  # non-numeric or inconsistent fields
        raise UlmError(f"graph file {path}: malformed content ({type(exc).__name__}: {exc})") from None
    check_graph(graph, f"graph file {path}")  # finite positions, positive diameters, edges between existing nodes
    return graph


def read_mat(path: str | Path) -> Graph:
    """Read a virtualMRI graph: MATLAB struct ``im2`` with nodePos_um, nodeDiam, nodeEdges (1-based).

    Edge diameters and types come from the edge's segment (``segDiam``, ``segVesType`` via
    ``edgeSegN``) when present, otherwise from the mean of the two node diameters.
    """
    try:
        mat = scipy.io.loadmat(str(path), squeeze_me=True, struct_as_record=False)
    except Exception as exc:  # scipy raises ValueError, TypeError, MatReadError... on foreign files
        raise UlmError(f"graph file {path}: not a readable MATLAB file ({exc})") from None
    if "im2" not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise UlmError(f"graph file {path}: no struct 'im2' (virtualMRI format); found {found}")
    im2 = mat["im2"]
    fields = set(getattr(im2, "_fieldnames", []))
    missing = [f for f in MAT_FIELDS if f not in fields]
    if missing:
        raise UlmError(f"graph file {path}: struct 'im2' lacks field(s) {missing}")
    pos = np.atleast_2d(np.asarray(im2.nodePos_um, dtype=np.float64))
    node_diam = np.atleast_1d(np.asarray(im2.nodeDiam, dtype=np.float64))
    raw_edges = np.atleast_2d(np.asarray(im2.nodeEdges, dtype=np.float64))
    if not np.all(np.isfinite(raw_edges) & (raw_edges == np.round(raw_edges))):
        raise UlmError(f"graph file {path}: nodeEdges must hold whole node numbers (1-based), got non-integer values")
    edges = raw_edges.astype(np.int64) - 1
    if pos.ndim != 2 or pos.shape[1] != 3 or node_diam.shape != (len(pos),) or edges.shape[1:] != (2,):
        shapes = f"{pos.shape}, {node_diam.shape}, {edges.shape}"
        raise UlmError(f"graph file {path}: nodePos_um must be (N,3), nodeDiam (N,), nodeEdges (E,2); got {shapes}")
    _check_edges(path, edges, len(pos))
    diam = node_diam[edges].mean(axis=1)
    vtype = np.full(len(edges), "unknown", dtype=object)
    if "edgeSegN" in fields:
        seg = np.atleast_1d(np.asarray(im2.edgeSegN, dtype=np.int64)).ravel() - 1
        n_seg = min((np.size(getattr(im2, f)) for f in ("segDiam", "segVesType") if f in fields), default=np.inf)
        if seg.shape != (len(edges),) or (len(seg) and (seg.min() < 0 or seg.max() >= n_seg)):
            raise UlmError(f"graph file {path}: edgeSegN must give each of the {len(edges)} edges a segment in 1..{n_seg}")
        if "segDiam" in fields and np.atleast_1d(getattr(im2, "maskUseSegDiam", 1)).ravel()[0]:
            diam = np.atleast_1d(np.asarray(im2.segDiam, dtype=np.float64))[seg]
        if "segVesType" in fields:
            codes = np.atleast_1d(np.asarray(im2.segVesType, dtype=np.float64))[seg]
            for code, name in MAT_TYPES.items():
                vtype[codes == code] = name
    return Graph(pos, node_diam, edges, diam, vtype.astype(str), attrs={"source_format": "virtualMRI .mat"})


def read_swc(path: str | Path, swc_types: dict | None = None) -> Graph:
    """Read an SWC file: ``id type x y z radius parent`` (um); edges join each node to its parent."""
    try:
        with warnings.catch_warnings():  # an empty file: numpy warns, the check below says it in one line
            warnings.simplefilter("ignore", UserWarning)
            rows = np.loadtxt(path, comments="#", ndmin=2)
    except ValueError as exc:
        raise UlmError(f"graph file {path}: not a valid SWC table ({exc})") from None
    if rows.size == 0:
        raise UlmError(f"graph file {path}: SWC table holds no nodes")
    if rows.shape[1] != 7:
        raise UlmError(f"graph file {path}: SWC needs 7 columns (id type x y z radius parent), got {rows.shape}")
    ids = rows[:, 0].astype(np.int64)
    index = {i: k for k, i in enumerate(ids)}
    if len(index) != len(ids):
        uniq, counts = np.unique(ids, return_counts=True)
        twice = int(uniq[counts > 1][0])
        raise UlmError(f"graph file {path}: SWC node id {twice} appears more than once")
    child = np.flatnonzero(rows[:, 6] >= 0)
    try:
        parent = np.array([index[int(p)] for p in rows[child, 6]], dtype=np.int64)
    except KeyError as exc:
        raise UlmError(f"graph file {path}: SWC parent id {exc.args[0]} does not exist") from None
    edges = np.stack([parent, child], axis=1)
    diam = 2.0 * rows[:, 5]
    mapping = {int(k): v for k, v in (swc_types or {}).items()}
    ntype = np.array([mapping.get(int(t), "unknown") for t in rows[:, 1]], dtype=object)
    edge_diam = diam[edges].mean(axis=1)
    return Graph(rows[:, 2:5].copy(), diam, edges, edge_diam, ntype[child].astype(str), attrs={"source_format": "SWC"})


def read_graphml(path: str | Path) -> Graph:
    """Read GraphML with node attributes x, y, z (um) and diameter (or radius); optional edge
    attributes diameter and vessel_type."""
    import networkx as nx

    try:
        g = nx.read_graphml(path)
    except Exception as exc:  # networkx raises ParseError, NetworkXError...
        raise UlmError(f"graph file {path}: not valid GraphML ({exc})") from None
    nodes = list(g.nodes)
    index = {n: k for k, n in enumerate(nodes)}
    try:
        pos = np.array([[float(g.nodes[n][a]) for a in "xyz"] for n in nodes], dtype=np.float64).reshape(-1, 3)
    except KeyError as exc:
        raise UlmError(f"graph file {path}: every node needs attributes x, y, z (um); missing {exc}") from None

    def node_diam(data: dict) -> float:
        if "diameter" in data:
            return float(data["diameter"])
        if "radius" in data:
            return 2.0 * float(data["radius"])
        raise UlmError(f"graph file {path}: nodes need a 'diameter' or 'radius' attribute (um)")

    ndiam = np.array([node_diam(g.nodes[n]) for n in nodes], dtype=np.float64)
    elist = list(g.edges(data=True))
    edges = np.array([[index[a], index[b]] for a, b, _ in elist], dtype=np.int64).reshape(-1, 2)
    diam = np.array([float(d["diameter"]) if "diameter" in d else ndiam[[index[a], index[b]]].mean() for a, b, d in elist])
    vtype = np.array(
        [d.get("vessel_type", "unknown") if d.get("vessel_type") in VESSEL_TYPES else "unknown" for *_, d in elist], dtype=str
    )
    return Graph(pos, ndiam, edges, diam, vtype, attrs={"source_format": "GraphML"})


def _check_edges(path: Path, edges: np.ndarray, n_nodes: int) -> None:
    if edges.size and (edges.min() < 0 or edges.max() >= n_nodes):
        raise UlmError(f"graph file {path}: edge node indices outside 1..{n_nodes}")


# ------------------------------------------------------------------------------------- cleaning
def clean_graph(graph: Graph, merge_tol_um: float = 0.1, crop_um: list[float] | None = None) -> Graph:
    """Crop, merge duplicate nodes, drop self-loops, zero-length and repeated edges, keep the
    largest connected component, and drop unused nodes.

    Parameters
    ----------
    merge_tol_um : nodes closer than this (um) become one node (at their mean position).
    crop_um : optional [x0, x1, y0, y1, z0, z1] (um); nodes outside are removed with their edges.
    """
    pos, edges = graph.pos_um, graph.edges
    keep_edge = np.ones(len(edges), dtype=bool)
    if crop_um is not None:
        lo, hi = np.asarray(crop_um[0::2], float), np.asarray(crop_um[1::2], float)
        inside = np.all((pos >= lo) & (pos <= hi), axis=1)
        keep_edge &= inside[edges].all(axis=1)
    # merge duplicates: union of all pairs closer than the tolerance
    label = np.arange(len(pos))
    if merge_tol_um > 0 and len(pos):
        pairs = cKDTree(pos).query_pairs(merge_tol_um, output_type="ndarray")
        if len(pairs):
            adj = sp.coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(pos),) * 2)
            _, label = connected_components(adj, directed=False)
    merged_pos = _group_mean(pos, label)
    merged_diam = _group_mean(graph.node_diam_um[:, None], label)[:, 0]
    e = label[edges]
    length = np.linalg.norm(merged_pos[e[:, 1]] - merged_pos[e[:, 0]], axis=1)
    keep_edge &= (e[:, 0] != e[:, 1]) & (length > 0)
    # repeated edges between the same pair: keep the first
    key = np.sort(e, axis=1)
    _, first = np.unique(key[keep_edge], axis=0, return_index=True)
    kept = np.flatnonzero(keep_edge)[np.sort(first)]
    e = e[kept]
    if len(e) == 0:
        raise UlmError("graph has no edges left after cleaning (check crop_um and merge_tol_um)")
    # largest connected component
    n = len(merged_pos)
    adj = sp.coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n))
    _, comp = connected_components(adj, directed=False)
    used = np.zeros(n, dtype=bool)
    used[e.ravel()] = True
    sizes = np.bincount(comp[used], minlength=comp.max() + 1)
    big = np.argmax(sizes)
    in_big = comp[e[:, 0]] == big
    e, kept = e[in_big], kept[in_big]
    nodes = np.unique(e)
    remap = np.full(n, -1, dtype=np.int64)
    remap[nodes] = np.arange(len(nodes))
    attrs = dict(graph.attrs, n_components_dropped=int(len(sizes[sizes > 0]) - 1))
    return Graph(merged_pos[nodes], merged_diam[nodes], remap[e], graph.diam_um[kept], graph.vessel_type[kept], attrs=attrs)


def _group_mean(values: np.ndarray, label: np.ndarray) -> np.ndarray:
    counts = np.bincount(label)
    out = np.stack([np.bincount(label, weights=values[:, k]) for k in range(values.shape[1])], axis=1)
    return out / counts[:, None]


def open_ends(graph: Graph) -> np.ndarray:
    """Indices of nodes with exactly one edge (the graph's inlets and outlets)."""
    return np.flatnonzero(graph.degree() == 1)


# ------------------------------------------------------------------------------------ synthetic
def synthetic_graph(
    size_um: tuple[float, float, float] = (400.0, 400.0, 400.0),
    capillary_spacing_um: float = 50.0,
    capillary_diam_um: float = 5.0,
    n_arterioles: int = 2,
    n_venules: int = 2,
    arteriole_diam_um: float = 18.0,
    venule_diam_um: float = 24.0,
    seed: int = 0,
) -> Graph:
    """A cortical-like network: penetrating arterioles -> capillary mesh -> ascending venules.

    Arterioles and venules descend vertically from the surface (z = 0), tapering with depth, and
    send a branch to the nearest capillary-mesh node every ~1.5 capillary spacings; branch
    diameters follow Murray's law from the trunk down to capillary size. The capillary mesh is a
    jittered lattice whose nodes join their nearest neighbours (mean degree ~3, as in cortex).
    """
    rng = np.random.default_rng(seed)
    size = np.asarray(size_um, dtype=float)
    h = capillary_spacing_um
    axes = [np.arange(h / 2, s, h) for s in size]
    lattice = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    cap = lattice + rng.uniform(-0.3 * h, 0.3 * h, lattice.shape)
    cap = np.clip(cap, 0, size)
    pos, diam, edges, etype = [cap], [np.full(len(cap), capillary_diam_um)], [], []
    # capillary mesh: join each node to its 3 nearest neighbours (symmetrised), jittered diameters
    _, nn = cKDTree(cap).query(cap, k=4)
    pairs = np.unique(np.sort(np.stack([np.repeat(np.arange(len(cap)), 3), nn[:, 1:].ravel()], 1), axis=1), axis=0)
    edges.append(pairs)
    etype += ["capillary"] * len(pairs)
    cap_edge_diam = capillary_diam_um * rng.lognormal(0.0, 0.15, len(pairs))
    edge_diam = [cap_edge_diam]
    tree = cKDTree(cap)
    n_next = len(cap)
    # trunks on a jittered ring of surface positions, alternating artery / vein
    kinds = sorted(["artery"] * n_arterioles + ["vein"] * n_venules, key=_interleave_key(n_arterioles, n_venules))
    angles = np.linspace(0, 2 * np.pi, len(kinds), endpoint=False) + rng.uniform(0, 0.3)
    centre, radius = size[:2] / 2, 0.3 * size[:2].min()
    for kind, angle in zip(kinds, angles, strict=False):
        d0 = arteriole_diam_um if kind == "artery" else venule_diam_um
        xy = centre + radius * np.array([np.cos(angle), np.sin(angle)])
        depths = np.arange(0.0, size[2] * 0.9, 0.75 * h)
        trunk = np.column_stack([np.tile(xy, (len(depths), 1)), depths])
        trunk_diam = d0 * (1 - 0.5 * depths / size[2])  # tapers to ~55 % at the bottom
        ids = n_next + np.arange(len(trunk))
        n_next += len(trunk)
        pos.append(trunk)
        diam.append(trunk_diam)
        edges.append(np.stack([ids[:-1], ids[1:]], 1))
        etype += [kind] * (len(ids) - 1)
        edge_diam.append(0.5 * (trunk_diam[:-1] + trunk_diam[1:]))
        # branches: every trunk node below the surface joins its 2 nearest capillary nodes
        branch_diam = np.maximum((trunk_diam**3 / 4) ** (1 / 3), capillary_diam_um * 1.2)  # Murray, 4 daughters
        for node, p, bd in zip(ids[1:], trunk[1:], branch_diam[1:], strict=False):
            _, targets = tree.query(p, k=2)
            for t in np.atleast_1d(targets):
                edges.append(np.array([[node, t]]))
                etype.append(kind)
                edge_diam.append(np.array([bd]))
    graph = Graph(
        pos_um=np.concatenate(pos),
        node_diam_um=np.concatenate(diam),
        edges=np.concatenate(edges).astype(np.int64),
        diam_um=np.concatenate(edge_diam),
        vessel_type=np.array(etype, dtype=str),
        attrs={"source_format": "synthetic"},
    )
    return clean_graph(graph, merge_tol_um=0.1)


def _interleave_key(n_arterioles: int, n_venules: int):
    """Sort key placing arteries and veins alternately around the ring."""
    counter = {"artery": 0, "vein": 0}
    share = {"artery": n_arterioles, "vein": n_venules}

    def key(kind: str) -> float:
        counter[kind] += 1
        return counter[kind] / share[kind]

    return key


# --------------------------------------------------------------------------------------- stage
def build_graph(source: str, cfg: dict, seed: int = 0) -> Graph:
    """The `ulm graph` stage: read or generate, then clean, following the ``graph`` config section."""
    resolved = resolve_source(source)
    if resolved == "synthetic":
        syn = cfg["synthetic"]
        graph = synthetic_graph(seed=seed, **{k: syn[k] for k in syn})
    else:
        graph = read_graph_file(resolved, cfg.get("swc_types"))
    graph = clean_graph(graph, cfg["merge_tol_um"], cfg["crop_um"])
    if len(open_ends(graph)) == 0:
        raise UlmError(f"graph {source}: no open ends (nodes of degree 1), so no inlet or outlet for the flow")
    return graph
