"""The `ulm` CLI on bad input: non-zero exit, one line on stderr naming the problem, and no output
(nor its .tmp) left behind. Plus one happy path through graph -> flow -> bubbles."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import scipy.io

from ulm.cli import main
from ulm.store import read_flow, read_graph, read_tracks

SMALL = "graph.synthetic.size_um=[200,200,200]"


def run_failing(argv: list[str], capsys: pytest.CaptureFixture, *outputs: Path) -> str:
    """Run the CLI, check the failure contract and return the one stderr line."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0
    assert len(lines) == 1, err
    for out in outputs:
        assert not out.exists(), f"{out} left behind"
        assert not out.with_name(out.name + ".tmp").exists(), f"{out}.tmp left behind"
    return lines[0]


# ------------------------------------------------------------------------------- graph inputs
def test_missing_graph_file_is_named(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = Path("out/graph.zarr")
    line = run_failing(["graph", "nothere.mat", out], capsys, out)
    assert "nothere.mat" in line
    assert "not found" in line


def test_unknown_graph_extension_is_named(tmp_path: Path, capsys):
    src = tmp_path / "graph.xyz"
    src.write_text("1 2 3\n")
    out = tmp_path / "out" / "graph.zarr"
    line = run_failing(["graph", src, out], capsys, out)
    assert "graph.xyz" in line
    assert ".xyz" in line


def test_mat_struct_without_node_edges_names_the_field(tmp_path: Path, capsys):
    src = tmp_path / "partial.mat"
    scipy.io.savemat(src, {"im2": {"nodePos_um": np.zeros((3, 3)), "nodeDiam": np.ones(3)}})
    out = tmp_path / "graph.zarr"
    line = run_failing(["graph", src, out], capsys, out)
    assert "partial.mat" in line
    assert "nodeEdges" in line


def test_mat_without_im2_struct_names_im2(tmp_path: Path, capsys):
    src = tmp_path / "other.mat"
    scipy.io.savemat(src, {"something": np.arange(5.0)})
    out = tmp_path / "graph.zarr"
    line = run_failing(["graph", src, out], capsys, out)
    assert "other.mat" in line
    assert "im2" in line


def test_graph_without_open_ends_is_rejected(tmp_path: Path, capsys):
    ring = nx.cycle_graph(4)
    for k, (x, y) in enumerate([(0, 0), (50, 0), (50, 50), (0, 50)]):
        ring.nodes[k].update(x=float(x), y=float(y), z=10.0, diameter=5.0)
    src = tmp_path / "ring.graphml"
    nx.write_graphml(ring, src)
    out = tmp_path / "graph.zarr"
    line = run_failing(["graph", src, out], capsys, out)
    assert "open ends" in line


def test_mat_edge_segment_out_of_range_is_named(tmp_path: Path, capsys):
    src = tmp_path / "badseg.mat"
    im2 = {"nodePos_um": np.eye(3), "nodeDiam": np.ones(3), "nodeEdges": np.array([[1, 2], [2, 3]])}
    scipy.io.savemat(src, {"im2": {**im2, "edgeSegN": np.array([1, 5]), "segDiam": np.array([3.0, 4.0])}})
    out = tmp_path / "graph.zarr"
    line = run_failing(["graph", src, out], capsys, out)
    assert "badseg.mat" in line
    assert "edgeSegN" in line


def test_graphml_with_non_numeric_coordinate_is_named(tmp_path: Path, capsys):
    g = nx.path_graph(3)
    for k in g.nodes:
        g.nodes[k].update(x=float(k), y=0.0, z=0.0, diameter=5.0)
    g.nodes[1]["x"] = "abc"
    src = tmp_path / "bad.graphml"
    nx.write_graphml(g, src)
    out = tmp_path / "graph.zarr"
    line = run_failing(["graph", src, out], capsys, out)
    assert "bad.graphml" in line
    assert "abc" in line


@pytest.mark.parametrize("text", ["- a\n", "hello\n"])
def test_config_file_that_is_not_a_mapping_is_named(tmp_path: Path, capsys, text):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    out = tmp_path / "graph.zarr"
    line = run_failing(["graph", "--config", cfg, "--set", "seed=1", "synthetic", out], capsys, out)
    assert "c.yaml" in line
    assert "mapping" in line


def test_failed_stage_keeps_the_previous_output(tmp_path: Path, capsys):
    out = tmp_path / "graph.zarr"
    assert main(["graph", "--set", SMALL, "synthetic", str(out)]) == 0
    before = sorted((p.relative_to(out), p.read_bytes()) for p in out.rglob("*") if p.is_file())
    line = run_failing(["graph", tmp_path / "nothere.mat", out], capsys, out.with_name("graph.zarr.tmp"))
    assert "nothere.mat" in line
    assert sorted((p.relative_to(out), p.read_bytes()) for p in out.rglob("*") if p.is_file()) == before


# ------------------------------------------------------------------------------------ config
def test_unknown_config_key_in_set_is_named(tmp_path: Path, capsys):
    out = tmp_path / "graph.zarr"
    line = run_failing(["graph", "--set", "flow.presure_artery_mmHg=3", "synthetic", out], capsys, out)
    assert "presure_artery_mmHg" in line


def test_unknown_config_section_in_file_is_named(tmp_path: Path, capsys):
    cfg = tmp_path / "config.yaml"
    cfg.write_text("seed: 1\nbogus_section:\n  a: 1\n")
    out = tmp_path / "graph.zarr"
    line = run_failing(["graph", "--config", cfg, "synthetic", out], capsys, out)
    assert "bogus_section" in line


def test_mistyped_config_value_names_the_key(tmp_path: Path, capsys):
    out = tmp_path / "graph.zarr"
    line = run_failing(["graph", "--set", "flow.hematocrit=abc", "synthetic", out], capsys, out)
    assert "flow.hematocrit" in line


def test_missing_config_file_is_named(tmp_path: Path, capsys):
    out = tmp_path / "graph.zarr"
    line = run_failing(["graph", "--config", tmp_path / "nothere.yaml", "synthetic", out], capsys, out)
    assert "nothere.yaml" in line


# ------------------------------------------------------------------------------- flow inputs
def test_flow_on_an_empty_directory_names_it(tmp_path: Path, capsys):
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    out = tmp_path / "flow.zarr"
    line = run_failing(["flow", empty, out], capsys, out)
    assert "empty_dir" in line


def test_flow_on_a_missing_graph_store_names_it(tmp_path: Path, capsys):
    out = tmp_path / "flow.zarr"
    plot = tmp_path / "flow.png"
    line = run_failing(["flow", tmp_path / "nothere.zarr", out, "--plot", plot], capsys, out, plot)
    assert "nothere.zarr" in line


# ------------------------------------------------------------------------------- happy path
def test_graph_flow_bubbles_chain_writes_readable_stores(tmp_path: Path, capsys):
    graph_out, flow_out, tracks_out, plot = (tmp_path / n for n in ("graph.zarr", "flow.zarr", "tracks.zarr", "flow.png"))

    assert main(["graph", "--set", "graph.source=synthetic", "--set", SMALL, "synthetic", str(graph_out)]) == 0
    assert main(["flow", str(graph_out), str(flow_out), "--plot", str(plot)]) == 0
    bubbles = ["bubbles", "--set", "bubbles.n_frames=50", "--set", "bubbles.concentration=3"]
    assert main([*bubbles, str(graph_out), str(flow_out), str(tracks_out), "--quiet"]) == 0
    capsys.readouterr()

    for path in (graph_out, flow_out, tracks_out, plot):
        assert path.exists()
        assert not path.with_name(path.name + ".tmp").exists()
    assert plot.stat().st_size > 0
    graph = read_graph(graph_out)
    assert graph.n_nodes > 0 and len(graph.edges) > 0
    flow = read_flow(flow_out)
    assert flow.flow_um3_s.shape == (len(graph.edges),)
    assert flow.pressure_mmHg.shape == (graph.n_nodes,)
    tracks = read_tracks(tracks_out)
    assert tracks.n_frames == 50
    assert len(tracks.frame) == 150
    assert tracks.pos_um.shape == (150, 3)
    np.testing.assert_array_equal(np.diff(tracks.frame_offsets), 3)


def test_messages_write_numbers_as_a_person_does():
    from ulm.cli import _one_line

    message = f"crop {[np.float64(600.0), np.int64(3)]} outside\n the graph"
    assert _one_line(message) == "crop [600.0, 3] outside the graph"
