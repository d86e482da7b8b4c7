"""Vascular graphs: the readers (.mat, SWC, GraphML), cleaning, the synthetic generator and the
graph.zarr round trip. Real files in tmp_path, no mocks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from ulm.store import VESSEL_TYPES, Graph, read_graph, write_graph
from ulm.vascular import clean_graph, open_ends, read_graph_file, read_mat, resolve_source, synthetic_graph

REPO = Path(__file__).resolve().parents[1]
CHECK_STORES_CANDIDATES = (
    REPO / "shared" / "tools" / "check_stores.py",
    REPO.parent / "shared" / "tools" / "check_stores.py",
    Path("/work/shared/tools/check_stores.py"),
)


def n_components(graph: Graph) -> int:
    n = graph.n_nodes
    e = graph.edges
    adj = sp.coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n))
    return connected_components(adj, directed=False)[0]


def assert_graphs_equal(a: Graph, b: Graph) -> None:
    np.testing.assert_array_equal(a.pos_um, b.pos_um)
    np.testing.assert_array_equal(a.node_diam_um, b.node_diam_um)
    np.testing.assert_array_equal(a.edges, b.edges)
    np.testing.assert_array_equal(a.diam_um, b.diam_um)
    np.testing.assert_array_equal(a.vessel_type, b.vessel_type)


# ------------------------------------------------------------------------------------ .mat
@pytest.fixture(scope="module")
def mouse_path() -> Path:
    path = resolve_source("bundled:mouse_20120409")
    assert isinstance(path, Path) and path.is_file()
    return path


@pytest.fixture(scope="module")
def mouse(mouse_path: Path) -> Graph:
    return read_mat(mouse_path)


def test_bundled_mat_has_expected_node_and_edge_counts(mouse: Graph):
    assert mouse.pos_um.shape == (9678, 3)
    assert mouse.node_diam_um.shape == (9678,)
    assert mouse.edges.shape == (9997, 2)
    assert mouse.diam_um.shape == (9997,)
    assert mouse.vessel_type.shape == (9997,)


def test_bundled_mat_edges_are_zero_based(mouse: Graph, mouse_path: Path):
    assert mouse.edges.min() == 0
    assert mouse.edges.max() == mouse.n_nodes - 1
    im2 = scipy.io.loadmat(str(mouse_path), squeeze_me=True, struct_as_record=False)["im2"]
    np.testing.assert_array_equal(mouse.edges, np.asarray(im2.nodeEdges, dtype=np.int64) - 1)
    np.testing.assert_array_equal(mouse.pos_um, np.asarray(im2.nodePos_um, dtype=np.float64))


def test_bundled_mat_diameters_are_positive(mouse: Graph):
    assert np.all(mouse.diam_um > 0)
    assert np.all(mouse.node_diam_um > 0)
    assert np.all(np.isfinite(mouse.diam_um))


def test_bundled_mat_vessel_types_are_from_the_known_set(mouse: Graph):
    assert set(np.unique(mouse.vessel_type)) <= set(VESSEL_TYPES)
    # the bundled graph is typed: the three real types must all be present
    assert {"artery", "capillary", "vein"} <= set(np.unique(mouse.vessel_type))


def test_bundled_mat_edge_diameter_comes_from_its_segment(mouse: Graph, mouse_path: Path):
    im2 = scipy.io.loadmat(str(mouse_path), squeeze_me=True, struct_as_record=False)["im2"]
    seg_diam = np.asarray(im2.segDiam, dtype=np.float64)
    edge_seg = np.asarray(im2.edgeSegN, dtype=np.int64)
    for k in (0, 1, 137, 4999, 8000, 9996):
        assert mouse.diam_um[k] == pytest.approx(seg_diam[edge_seg[k] - 1])


def test_bundled_mat_vessel_type_comes_from_its_segment(mouse: Graph, mouse_path: Path):
    im2 = scipy.io.loadmat(str(mouse_path), squeeze_me=True, struct_as_record=False)["im2"]
    codes = np.asarray(im2.segVesType, dtype=np.float64)[np.asarray(im2.edgeSegN, dtype=np.int64) - 1]
    names = {1.0: "artery", 2.0: "capillary", 3.0: "vein"}
    expected = np.array([names.get(c, "unknown") for c in codes])
    np.testing.assert_array_equal(mouse.vessel_type, expected)


# ------------------------------------------------------------------------------------- SWC
SWC_TEXT = """\
# id type x y z radius parent
10 1 0 0 0 5.0 -1
20 1 0 0 10 4.0 10
30 2 10 0 20 2.0 20
40 3 -10 0 20 3.0 20
50 2 20 0 30 1.5 30
"""


@pytest.fixture
def swc_graph(tmp_path: Path) -> Graph:
    path = tmp_path / "tree.swc"
    path.write_text(SWC_TEXT)
    return read_graph_file(path, {"1": "artery", "2": "capillary"})


def test_swc_reads_every_node_with_its_position(swc_graph: Graph):
    assert swc_graph.n_nodes == 5
    np.testing.assert_array_equal(swc_graph.pos_um, [[0, 0, 0], [0, 0, 10], [10, 0, 20], [-10, 0, 20], [20, 0, 30]])


def test_swc_edges_join_parent_to_child_by_row_index(swc_graph: Graph):
    # ids 10..50 are rows 0..4; node 20 is a branch point (children 30 and 40)
    np.testing.assert_array_equal(swc_graph.edges, [[0, 1], [1, 2], [1, 3], [2, 4]])


def test_swc_diameter_is_twice_the_radius(swc_graph: Graph):
    np.testing.assert_allclose(swc_graph.node_diam_um, [10.0, 8.0, 4.0, 6.0, 3.0])
    np.testing.assert_allclose(swc_graph.diam_um, [9.0, 6.0, 7.0, 3.5])


def test_swc_types_map_edges_by_the_child_type(swc_graph: Graph):
    # children: 20 (type 1), 30 (type 2), 40 (type 3, unmapped), 50 (type 2)
    np.testing.assert_array_equal(swc_graph.vessel_type, ["artery", "capillary", "unknown", "capillary"])


def test_swc_without_type_mapping_gives_unknown(tmp_path: Path):
    path = tmp_path / "tree.swc"
    path.write_text(SWC_TEXT)
    graph = read_graph_file(path)
    assert set(graph.vessel_type) == {"unknown"}


# ----------------------------------------------------------------------------------- GraphML
def test_graphml_round_trip_keeps_positions_edges_diameters_and_types(tmp_path: Path):
    g = nx.Graph()
    nodes = {
        "a": (0.0, 0.0, 0.0, 12.0),
        "b": (0.0, 0.0, 25.0, 10.0),
        "c": (15.0, 5.0, 40.0, 5.0),
        "d": (-15.0, -5.0, 40.0, 6.0),
        "e": (30.0, 10.0, 55.0, 4.0),
    }
    for name, (x, y, z, d) in nodes.items():
        g.add_node(name, x=x, y=y, z=z, diameter=d)
    g.add_edge("a", "b", diameter=11.5, vessel_type="artery")
    g.add_edge("b", "c", diameter=5.5, vessel_type="capillary")
    g.add_edge("b", "d", diameter=7.0, vessel_type="vein")
    g.add_edge("c", "e")  # no attributes: mean node diameter, unknown type
    path = tmp_path / "net.graphml"
    nx.write_graphml(g, path)

    graph = read_graph_file(path)

    names = list(nodes)
    assert graph.n_nodes == len(nodes)
    np.testing.assert_array_equal(graph.pos_um, [v[:3] for v in nodes.values()])
    np.testing.assert_array_equal(graph.node_diam_um, [v[3] for v in nodes.values()])
    edges = {frozenset((names[i], names[j])): k for k, (i, j) in enumerate(graph.edges)}
    assert set(edges) == {frozenset(e) for e in g.edges}
    assert graph.diam_um[edges[frozenset("ab")]] == 11.5
    assert graph.diam_um[edges[frozenset("bc")]] == 5.5
    assert graph.diam_um[edges[frozenset("bd")]] == 7.0
    assert graph.diam_um[edges[frozenset("ce")]] == pytest.approx(4.5)
    assert graph.vessel_type[edges[frozenset("ab")]] == "artery"
    assert graph.vessel_type[edges[frozenset("bc")]] == "capillary"
    assert graph.vessel_type[edges[frozenset("bd")]] == "vein"
    assert graph.vessel_type[edges[frozenset("ce")]] == "unknown"


# -------------------------------------------------------------------------------- clean_graph
def messy_graph() -> Graph:
    """A separate small component 0-1 (listed first, so it gets the first component label), and a
    main component 2-3-4=5-6-7 (4 and 5 share a position) with a self-loop on 3, the edge 2-3
    repeated as 3-2, and an edge between the duplicates 4-5."""
    pos = np.array(
        [
            [100.0, 100.0, 100.0],  # 0 other component
            [110.0, 100.0, 100.0],  # 1 other component
            [0.0, 0.0, 0.0],  # 2
            [10.0, 0.0, 0.0],  # 3
            [20.0, 0.0, 0.0],  # 4
            [20.0, 0.0, 0.0],  # 5 duplicate of 4
            [30.0, 0.0, 0.0],  # 6
            [30.0, 10.0, 0.0],  # 7
        ]
    )
    edges = np.array([[0, 1], [2, 3], [3, 4], [5, 6], [6, 7], [3, 3], [3, 2], [4, 5]])
    diam = np.array([3.0, 10.0, 9.0, 8.0, 7.0, 6.0, 5.0, 4.0])
    vtype = np.array(["vein", "artery", "artery", "capillary", "vein", "capillary", "capillary", "capillary"])
    return Graph(pos, np.full(len(pos), 5.0), edges, diam, vtype)


def test_clean_graph_merges_duplicate_nodes():
    cleaned = clean_graph(messy_graph(), merge_tol_um=0.1)
    # 2, 3, {4, 5}, 6, 7 remain; 0 and 1 are the dropped component
    assert cleaned.n_nodes == 5
    assert len(np.unique(cleaned.pos_um, axis=0)) == 5
    # the merged node joins the edge from 3 and the edge to 6
    merged = np.flatnonzero(np.all(cleaned.pos_um == [20.0, 0.0, 0.0], axis=1))
    assert len(merged) == 1
    assert cleaned.degree()[merged[0]] == 2


def test_clean_graph_keeps_only_the_largest_component():
    cleaned = clean_graph(messy_graph(), merge_tol_um=0.1)
    assert n_components(cleaned) == 1
    assert not np.any(np.all(cleaned.pos_um == [100.0, 100.0, 100.0], axis=1))
    assert cleaned.attrs["n_components_dropped"] == 1


def test_clean_graph_drops_self_loops_repeats_and_zero_length_edges():
    cleaned = clean_graph(messy_graph(), merge_tol_um=0.1)
    e = cleaned.edges
    assert len(e) == 4
    assert np.all(e[:, 0] != e[:, 1])
    assert len(np.unique(np.sort(e, axis=1), axis=0)) == len(e)
    assert np.all(cleaned.length_um > 0)
    # the first of the repeated 2-3 edges is kept, with its own diameter and type
    np.testing.assert_array_equal(cleaned.diam_um, [10.0, 9.0, 8.0, 7.0])
    np.testing.assert_array_equal(cleaned.vessel_type, ["artery", "artery", "capillary", "vein"])


def test_clean_graph_edges_index_valid_nodes():
    cleaned = clean_graph(messy_graph(), merge_tol_um=0.1)
    assert cleaned.edges.min() == 0
    assert cleaned.edges.max() == cleaned.n_nodes - 1
    assert np.all(cleaned.degree() > 0)


def test_clean_graph_without_merging_drops_the_zero_length_edge():
    cleaned = clean_graph(messy_graph(), merge_tol_um=0.0)
    assert np.all(cleaned.length_um > 0)
    # 4 and 5 stay apart: 2-3-4 and 5-6-7 are separate components, and only one is kept
    assert n_components(cleaned) == 1
    assert cleaned.n_nodes == 3


def test_clean_graph_crop_removes_nodes_outside_the_box():
    n = 11
    pos = np.column_stack([np.arange(n) * 10.0, np.zeros(n), np.full(n, 5.0)])
    pos[3, 1] = 50.0  # a node off-axis that the box also excludes in y
    edges = np.column_stack([np.arange(n - 1), np.arange(1, n)])
    graph = Graph(pos, np.full(n, 5.0), edges, np.full(n - 1, 5.0), np.full(n - 1, "capillary"))
    box = [-1.0, 95.0, -1.0, 1.0, 0.0, 10.0]

    cleaned = clean_graph(graph, merge_tol_um=0.1, crop_um=box)

    lo, hi = np.array(box[0::2]), np.array(box[1::2])
    assert np.all((cleaned.pos_um >= lo) & (cleaned.pos_um <= hi))
    # node 3 is outside, so 0-1-2 and 4..9 remain; 10 (x=100) is outside; the larger part stays
    np.testing.assert_array_equal(cleaned.pos_um[:, 0], np.arange(4, 10) * 10.0)
    assert len(cleaned.edges) == 5


# -------------------------------------------------------------------------------- synthetic
@pytest.fixture(scope="module")
def synthetic() -> Graph:
    return synthetic_graph()


def test_synthetic_graph_is_connected(synthetic: Graph):
    assert n_components(synthetic) == 1
    assert np.all(synthetic.degree() > 0)


def test_synthetic_graph_has_arteries_capillaries_and_veins(synthetic: Graph):
    assert {"artery", "capillary", "vein"} <= set(np.unique(synthetic.vessel_type))
    assert set(np.unique(synthetic.vessel_type)) <= set(VESSEL_TYPES)


def test_synthetic_open_ends_are_arteries_and_veins_at_the_surface(synthetic: Graph):
    ends = open_ends(synthetic)
    assert len(ends) > 0
    end_edge = [np.flatnonzero((synthetic.edges == node).any(axis=1))[0] for node in ends]
    kinds = synthetic.vessel_type[end_edge]
    assert set(kinds) <= {"artery", "vein"}
    # one inlet per arteriole, one outlet per venule (default 2 and 2)
    assert np.sum(kinds == "artery") == 2
    assert np.sum(kinds == "vein") == 2
    np.testing.assert_allclose(synthetic.pos_um[ends, 2], 0.0, atol=1.0)


def test_synthetic_capillary_median_diameter_matches_the_setting(synthetic: Graph):
    cap = synthetic.diam_um[synthetic.vessel_type == "capillary"]
    assert len(cap) > 100
    assert np.median(cap) == pytest.approx(5.0, rel=0.2)
    wide = synthetic_graph(capillary_diam_um=8.0)
    assert np.median(wide.diam_um[wide.vessel_type == "capillary"]) == pytest.approx(8.0, rel=0.2)


def test_synthetic_graph_same_seed_gives_identical_arrays(synthetic: Graph):
    assert_graphs_equal(synthetic_graph(seed=0), synthetic)


def test_synthetic_graph_different_seed_gives_different_positions(synthetic: Graph):
    other = synthetic_graph(seed=1)
    assert other.pos_um.shape != synthetic.pos_um.shape or not np.allclose(other.pos_um, synthetic.pos_um)


# ---------------------------------------------------------------------------------- graph.zarr
def test_graph_store_round_trip_is_identical(tmp_path: Path, synthetic: Graph):
    path = tmp_path / "graph.zarr"
    write_graph(path, synthetic, {"source": "synthetic"})
    back = read_graph(path)
    assert_graphs_equal(back, synthetic)
    assert back.pos_um.dtype == np.float64
    assert back.edges.dtype == np.int64
    assert back.attrs["source"] == "synthetic"
    assert back.attrs["source_format"] == "synthetic"
    assert not path.with_name("graph.zarr.tmp").exists()


def test_graph_store_round_trip_of_the_bundled_graph_is_identical(tmp_path: Path, mouse: Graph):
    path = tmp_path / "graph.zarr"
    write_graph(path, mouse)
    assert_graphs_equal(read_graph(path), mouse)


def test_graph_store_passes_check_stores(tmp_path: Path, synthetic: Graph):
    tool = next((p for p in CHECK_STORES_CANDIDATES if p.is_file()), None)
    if tool is None:
        pytest.skip("shared/tools/check_stores.py not available")
    path = tmp_path / "graph.zarr"  # the checker infers the store kind from the name
    write_graph(path, synthetic)
    result = subprocess.run([sys.executable, str(tool), str(path)], capture_output=True, text=True, timeout=60)
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(lines) == 1
    assert lines[0].startswith("ok"), lines[0]
