"""Strict inputs (issue #14, item 3): every reader checks dtype, shape, index ranges and finiteness, and every
config number is finite. Each bad input, run through the CLI as a user would, ends with exit status 2 and one
stderr line `ulm <stage>: error: ...` naming the file or key, and a previous good output at the OUTPUT path is
left as it was. The first case of each kind runs `python -m ulm` in a subprocess (the real process: its exit
status, no traceback, no stray output); its variants call ``ulm.cli.main`` in this process, to keep the module
within about a minute.

The inputs are real small stores made once per module by the CLI (graph -> flow -> tracks -> iq -> sparse,
target, localizations), copied and damaged per test. A damaged copy drops its writer's chunk manifest
(as a store written by another tool), so that the reader's own checks, not the manifest, have to catch it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import scipy.io
import zarr

SMALL = ["--set", "graph.synthetic.size_um=[200,200,200]"]
BLOCKS = ["--set", "sparse.block_frames=16", "--set", "sparse.tile_px=16"]
PROGRESS = re.compile(r"^[^:]+: \d+/\d+ \w+ \(\d+%\)")  # a progress line (`bubbles: 3/32 frames (9%), ...`)


# --------------------------------------------------------------------------------------------- helpers
def ulm(*argv, fresh: bool = True) -> tuple[int, str]:
    """Exit status and stderr of `ulm ARGV`: `python -m ulm` in a subprocess when ``fresh``, else ulm.cli.main."""
    if fresh:
        result = subprocess.run([sys.executable, "-m", "ulm", *map(str, argv)], capture_output=True, text=True, timeout=300)
        return result.returncode, result.stderr
    from ulm.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main([str(a) for a in argv])
    return code, err.getvalue()


def digest(path: Path) -> str:
    """Digest of a file, or of every file (relative path and bytes) under a folder."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(f.relative_to(path.parent).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def assert_unchanged(path: Path, before: str) -> None:
    """The failed stage left the previous output at ``path`` as it was."""
    assert path.exists(), f"{path}: the previous output was removed by the failed stage"
    assert digest(path) == before, f"{path}: the previous output was changed by the failed stage"
    assert not path.with_name(path.name + ".tmp").exists(), f"{path}.tmp left behind"


def fails(stage: str, *argv, output: Path | None = None, names: tuple = (), fresh: bool = True) -> str:
    """Run `ulm <stage> --quiet ARGV` (see :func:`ulm`): exit status 2, one stderr line `ulm <stage>: error: ...`
    that names each of ``names`` (no numpy repr in it); a previous ``output`` is unchanged (or none appears).
    Returns the line."""
    before = digest(output) if output is not None and output.exists() else None
    code, err = ulm(stage, "--quiet", *argv, fresh=fresh)
    lines = [line for line in err.splitlines() if line.strip() and not PROGRESS.match(line)]
    assert code == 2, err
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith(f"ulm {stage}: error: "), line
    assert "np." not in line and "array(" not in line and "Traceback" not in err, line
    for name in names:
        assert str(name) in line, line
    if output is not None:
        if before is not None:
            assert_unchanged(output, before)
        else:
            assert not output.exists() and not output.with_name(output.name + ".tmp").exists(), f"{output} left behind"
    return line


def first_case(request: pytest.FixtureRequest) -> bool:
    """Whether this is the first case of a parametrized test (it runs in a subprocess)."""
    return all(i == 0 for i in request.node.callspec.indices.values())


def copy(src: Path, folder: Path, name: str | None = None) -> Path:
    """A copy of the store or file ``src`` in ``folder``."""
    dst = folder / (name or src.name)
    dst.parent.mkdir(parents=True, exist_ok=True)
    (shutil.copytree if src.is_dir() else shutil.copyfile)(src, dst)
    return dst


def forget_manifest(store: Path, **attrs) -> None:
    """Drop the writer's chunk manifest (a store written by another tool) and set ``attrs``."""
    group = zarr.open_group(str(store), mode="r+")
    for key in ("ulm_manifest", "ulm_digest"):
        if key in group.attrs:
            del group.attrs[key]
    group.attrs.update(attrs)


def damage(store: Path, array: str, index, value) -> None:
    """Write ``value`` at ``index`` of ``array`` in ``store``."""
    arr = zarr.open_array(str(store / array), mode="r+")
    arr[index] = value
    forget_manifest(store)


def replace(store: Path, array: str, data: np.ndarray) -> None:
    """Replace ``array`` of ``store`` by ``data`` (another length)."""
    zarr.open_group(str(store), mode="r+").create_array(array, data=data, overwrite=True)
    forget_manifest(store)


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> dict[str, Path]:
    """Good small stores made by the CLI: graph, flow, tracks (32 frames), iq (2 blocks of 16 frames), sparse,
    target and localizations."""
    d = tmp_path_factory.mktemp("chain")
    p = {k: d / f"{k}.zarr" for k in ("graph", "flow", "tracks", "iq", "sparse", "target", "loc")}
    steps = [
        ["graph", *SMALL, "synthetic", p["graph"]],
        ["flow", p["graph"], p["flow"]],
        ["bubbles", "--set", "bubbles.n_frames=32", "--set", "bubbles.concentration=3", p["graph"], p["flow"], p["tracks"]],
        ["forward", "--set", "forward.block_frames=16", p["tracks"], p["iq"]],
        ["sparsify", *BLOCKS, p["iq"], p["sparse"]],
        ["targets", *BLOCKS, p["tracks"], p["iq"], p["target"]],
        ["conventional", "--set", "conventional.block_frames=16", p["iq"], p["loc"]],
    ]
    for step in steps:
        code, err = ulm(step[0], "--quiet", *step[1:], fresh=False)
        assert code == 0, err
    return p


# ---------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    ("override", "needles"),
    [
        ("sparse.tau=.nan", ["config key sparse.tau", "must be a finite number, got nan"]),
        ("flow.hematocrit=-.inf", ["config key flow.hematocrit", "finite", "-inf"]),
        ("graph.crop_um=[0, 100, 0, 100, 0, .inf]", ["config key graph.crop_um.5", "finite", "inf"]),
        ("overrides_3d={sparse: {tau: .nan}}", ["config key overrides_3d.sparse.tau", "finite"]),
        ("run=..", ["config key run", "'..'"]),
        ("run=../elsewhere", ["config key run"]),
        ("run=a/b", ["config key run"]),
        ("preset=foo", ["config key preset", "unknown preset 'foo'", "tiny"]),
        ("graph.crop_um=[450, 150, 0, 100, 0, 100]", ["config key graph.crop_um", "x0 = 450 is not below x1 = 150"]),
        ("bubbles.n_frames=100000000000000000000", ["config key bubbles.n_frames", "greater than the maximum"]),
    ],
    ids=[
        "nan",
        "minus-inf",
        "inf-in-list",
        "nan-in-overrides_3d",
        "run-dotdot",
        "run-escapes",
        "run-slash",
        "preset",
        "box",
        "huge",
    ],
)
def test_bad_config_number_or_name_is_one_line(request, tmp_path, chain, override, needles):
    out = copy(chain["graph"], tmp_path)
    fails("graph", *SMALL, "--set", override, "synthetic", out, output=out, names=needles, fresh=first_case(request))


def test_cli_applies_a_known_preset_under_its_overrides(tmp_path):
    from ulm.config import load_config

    cfg = load_config(overrides=["preset=tiny", "seed=3"])
    assert (cfg["run"], cfg["seed"], cfg["concentrations"]) == ("tiny", 3, [2, 20])
    file = tmp_path / "c.yaml"
    file.write_text("preset: tiny\nrun: mine\n")
    assert load_config(file)["run"] == "tiny"  # as the Snakefile: the preset over the config file ...
    assert load_config(file, ["run=mine"])["run"] == "mine"  # ... and the command line over both


# ------------------------------------------------------------------------------------------ graph files
SWC = "# id type x y z radius parent\n1 1 0 0 0 5 -1\n2 1 0 0 10 4 1\n3 1 10 0 20 2 2\n4 1 -10 0 20 3 2\n"


def _swc(path: Path, row: int, column: int, value: str) -> Path:
    rows = [line.split() for line in SWC.splitlines()[1:]]
    rows[row][column] = value
    path.write_text("\n".join(" ".join(r) for r in rows) + "\n")
    return path


def _graphml(path: Path, node: int, key: str, value) -> Path:
    g = nx.path_graph(4)
    for k in g.nodes:
        g.nodes[k].update(x=10.0 * k, y=0.0, z=5.0, diameter=5.0)
    g.nodes[node][key] = value
    nx.write_graphml(g, path)
    return path


def _mat(path: Path, **changes) -> Path:
    im2 = {
        "nodePos_um": np.array([[0.0, 0, 0], [10, 0, 0], [20, 0, 5]]),
        "nodeDiam": np.full(3, 5.0),
        "nodeEdges": np.array([[1, 2], [2, 3]]),
        "edgeSegN": np.array([1, 2]),
        "segDiam": np.array([5.0, 4.0]),
    }
    scipy.io.savemat(path, {"im2": {**im2, **changes}})
    return path


@pytest.mark.parametrize(
    ("make", "needles"),
    [
        (lambda p: _swc(p / "g.swc", 2, 2, "nan"), ["g.swc", "node 2 position is not finite"]),
        (lambda p: _swc(p / "g.swc", 1, 4, "inf"), ["g.swc", "node 1 position is not finite"]),
        (lambda p: _swc(p / "g.swc", 3, 5, "0"), ["g.swc", "node 3 diameter is 0.0", "positive"]),
        (lambda p: _swc(p / "g.swc", 0, 5, "nan"), ["g.swc", "node 0 diameter is nan"]),
        (lambda p: _graphml(p / "g.graphml", 2, "diameter", float("nan")), ["g.graphml", "node 2 diameter is nan"]),
        (lambda p: _graphml(p / "g.graphml", 1, "diameter", -3.0), ["g.graphml", "node 1 diameter is -3.0"]),
        (lambda p: _graphml(p / "g.graphml", 3, "y", float("inf")), ["g.graphml", "node 3 position is not finite"]),
        (lambda p: _mat(p / "g.mat", segDiam=np.array([5.0, np.nan])), ["g.mat", "edge 1 diameter is nan"]),
        (
            lambda p: _mat(p / "g.mat", nodePos_um=np.array([[0.0, 0, 0], [10, np.nan, 0], [20, 0, 5]])),
            ["g.mat", "node 1 position is not finite"],
        ),
        (lambda p: _mat(p / "g.mat", nodeEdges=np.array([[1, 2], [2, 7]])), ["g.mat", "outside 1..3"]),
        (lambda p: _mat(p / "g.mat", nodeEdges=np.array([[1, 2.5], [2, 3]])), ["g.mat", "whole node numbers"]),
        (lambda p: _swc(p / "g.swc", 2, 0, "2"), ["g.swc", "node id 2 appears more than once"]),
        (lambda p: (p / "g.swc").write_text("") or p / "g.swc", ["g.swc", "holds no nodes"]),
    ],
    ids=[
        "swc-nan-pos",
        "swc-inf-pos",
        "swc-zero-radius",
        "swc-nan-radius",
        "graphml-nan-diam",
        "graphml-negative-diam",
        "graphml-inf-pos",
        "mat-nan-segdiam",
        "mat-nan-pos",
        "mat-edge-out-of-range",
        "mat-edge-fraction",
        "swc-duplicate-id",
        "swc-empty",
    ],
)
def test_bad_graph_file_is_named(request, tmp_path, chain, make, needles):
    source = make(tmp_path)
    out = copy(chain["graph"], tmp_path)
    fails("graph", str(source), out, output=out, names=needles, fresh=first_case(request))


# ------------------------------------------------------------------------------------------ graph store
@pytest.mark.parametrize(
    ("hurt", "needles"),
    [
        (lambda g: damage(g, "nodes/diam_um", 5, np.nan), ["node 5 diameter is nan"]),
        (lambda g: damage(g, "edges/diam_um", 3, -1.0), ["edge 3 diameter is -1.0"]),
        (lambda g: damage(g, "edges/diam_um", slice(0, 4), 0.0), ["edge 0 diameter is 0.0 (4 edges in all)"]),
        (lambda g: damage(g, "nodes/pos_um", (2, 1), np.nan), ["node 2 position is not finite"]),
        (lambda g: damage(g, "edges/index", (0, 1), 10**6), ["1 edges reference nodes outside 0.."]),
        (lambda g: damage(g, "edges/index", (4, 0), -1), ["1 edges reference nodes outside 0.."]),
        (lambda g: replace(g, "edges/diam_um", np.full(7, 5.0)), ["edges but (7,) edge diameters"]),
        (lambda g: replace(g, "nodes/diam_um", np.full(7, 5.0)), ["node diameters must be"]),
        (lambda g: damage(g, "edges/index", (0, 1), zarr.open_array(str(g / "edges/index"))[0, 0]), ["edge 0 joins node"]),
        (lambda g: damage(g, "edges/length_um", 2, -1.0), ["edges/length_um does not match the node positions"]),
    ],
    ids=[
        "nan-node-diam",
        "negative-edge-diam",
        "zero-edge-diams",
        "nan-pos",
        "edge-too-high",
        "edge-negative",
        "edge-diam-length",
        "node-diam-length",
        "self-loop",
        "edge-length",
    ],
)
def test_bad_graph_store_is_named(request, tmp_path, chain, hurt, needles):
    graph = copy(chain["graph"], tmp_path)
    hurt(graph)
    out = copy(chain["flow"], tmp_path)
    fails("flow", graph, out, output=out, names=[f"graph store {graph}", *needles], fresh=first_case(request))


# ------------------------------------------------------------------------------------------- flow store
def test_flow_store_with_nan_velocity_is_named(tmp_path, chain):
    flow = copy(chain["flow"], tmp_path)
    damage(flow, "edges/v_mean_mm_s", 7, np.nan)
    out = copy(chain["tracks"], tmp_path)
    fails("bubbles", chain["graph"], flow, out, output=out, names=[f"flow store {flow}", "edges/v_mean_mm_s", "non-finite"])


def test_flow_store_of_another_length_than_its_velocities_is_named(tmp_path, chain):
    flow = copy(chain["flow"], tmp_path)
    replace(flow, "edges/v_mean_mm_s", np.ones(5))
    out = copy(chain["tracks"], tmp_path)
    fails("bubbles", chain["graph"], flow, out, output=out, names=[f"flow store {flow}", "edge velocities"], fresh=False)


def test_flow_store_of_another_graph_names_both_files(tmp_path, chain):
    """Needs `ulm bubbles` to pass the graph to read_flow (read_flow(args.flow, graph, args.graph))."""
    flow = copy(chain["flow"], tmp_path)
    n = zarr.open_array(str(flow / "edges/flow_um3_s"), mode="r").shape[0]
    replace(flow, "edges/flow_um3_s", np.ones(n - 1))
    replace(flow, "edges/v_mean_mm_s", np.ones(n - 1))
    out = copy(chain["tracks"], tmp_path)
    fails("bubbles", chain["graph"], flow, out, output=out, names=[str(flow), str(chain["graph"])], fresh=False)


# ----------------------------------------------------------------------------------------- tracks store
@pytest.fixture
def nan_tracks(tmp_path, chain) -> Path:
    """The tracks with non-finite positions in frame 20 (the second block of 16 frames)."""
    tracks = copy(chain["tracks"], tmp_path)
    off = zarr.open_array(str(tracks / "frame_offsets"), mode="r")[:]
    damage(tracks, "pos_um", (slice(int(off[20]), int(off[21])), 2), np.nan)
    return tracks


def test_forward_on_tracks_with_nan_positions_names_the_frame(tmp_path, chain, nan_tracks):
    out = copy(chain["iq"], tmp_path)
    fails(
        "forward",
        "--set",
        "forward.block_frames=16",
        nan_tracks,
        out,
        output=out,
        names=[f"tracks store {nan_tracks}", "frame 20 holds non-finite positions"],
    )


def test_targets_on_tracks_with_nan_positions_names_the_frame(tmp_path, chain, nan_tracks):
    out = copy(chain["target"], tmp_path)
    fails(
        "targets",
        *BLOCKS,
        nan_tracks,
        chain["iq"],
        out,
        output=out,
        names=[f"tracks store {nan_tracks}", "frame 20 holds non-finite positions"],
        fresh=False,
    )


# --------------------------------------------------------------------------------------------- iq store
@pytest.fixture
def nan_iq(tmp_path, chain) -> Path:
    """The iq with NaN in frame 20 and inf in frame 22 (the second block of 16 frames)."""
    iq = copy(chain["iq"], tmp_path)
    damage(iq, "iq", (20, 0, 0), complex(np.nan, 0))
    damage(iq, "iq", (22, 1, 1), complex(0, np.inf))
    return iq


def test_sparsify_on_iq_with_non_finite_pixels_names_the_frames(tmp_path, chain, nan_iq):
    out = copy(chain["sparse"], tmp_path)
    fails("sparsify", *BLOCKS, nan_iq, out, output=out, names=[f"iq store {nan_iq}", "frames 20..22 hold non-finite values"])


def test_conventional_on_iq_with_non_finite_pixels_names_the_frames(tmp_path, chain, nan_iq):
    out = copy(chain["loc"], tmp_path)
    fails(
        "conventional",
        "--set",
        "conventional.block_frames=16",
        nan_iq,
        out,
        output=out,
        names=[f"iq store {nan_iq}", "frames 20..22 hold non-finite values"],
        fresh=False,
    )


# -------------------------------------------------------------------------------------------- COO stores
def test_sparse_store_with_sites_outside_its_blocks_is_named(tmp_path, chain):
    sparse = copy(chain["sparse"], tmp_path)
    damage(sparse, "coords", (0, 1), 99)
    out = tmp_path / "density"
    fails(
        "render",
        *BLOCKS,
        "--input",
        sparse,
        chain["tracks"],
        chain["iq"],
        out,
        output=out,
        names=[f"sparse store {sparse}", "block 0", "1 sites outside its block_shape [16, 4, 4]"],
    )


def test_sparse_store_with_nan_feats_is_named(tmp_path, chain):
    sparse = copy(chain["sparse"], tmp_path)
    damage(sparse, "feats", (1, 0), np.nan)
    out = tmp_path / "density"
    fails(
        "render",
        *BLOCKS,
        "--input",
        sparse,
        chain["tracks"],
        chain["iq"],
        out,
        output=out,
        names=[f"sparse store {sparse}", "block 0", "non-finite feats"],
        fresh=False,
    )


def test_pred_store_with_negative_sites_is_named(tmp_path, chain):
    pred = copy(chain["target"], tmp_path, "pred.zarr")  # a target's passage map as a network's prediction
    forget_manifest(pred, ulm_kind="pred", threshold=0.5)
    n = zarr.open_array(str(pred / "coords"), mode="r").shape[0]
    damage(pred, "coords", (n - 1, 0), -2)
    out = tmp_path / "density"
    fails(
        "render",
        *BLOCKS,
        "--pred",
        f"net={pred}",
        chain["tracks"],
        chain["iq"],
        out,
        output=out,
        names=[f"pred store {pred}", "sites outside its fine_block_shape"],
        fresh=False,
    )


# ------------------------------------------------------------------------------ localizations, density
def test_metrics_on_localizations_with_nan_positions_names_the_frame(tmp_path, chain):
    loc = copy(chain["loc"], tmp_path)
    frame = zarr.open_array(str(loc / "frame"), mode="r")[:]
    damage(loc, "pos_um", (len(frame) - 1, 0), np.inf)
    (tmp_path / "density").mkdir()
    out = tmp_path / "metrics.json"
    out.write_text('{"label": "previous"}')
    fails(
        "metrics",
        "--localizations",
        loc,
        chain["tracks"],
        tmp_path / "density",
        out,
        output=out,
        names=[f"localizations store {loc}", f"frame {int(frame[-1])} holds non-finite positions"],
    )


def test_metrics_on_a_density_map_with_nan_is_named(tmp_path, chain):
    from ulm.store import write_density

    attrs = {"origin_um": [0.0, 0.0], "spacing_um": [10.0, 10.0], "factor": 8}
    folder = tmp_path / "density"
    write_density(folder / "ground_truth.zarr", np.eye(8), {**attrs, "method": "ground_truth"})
    write_density(folder / "conventional.zarr", np.eye(8), {**attrs, "method": "conventional"})
    damage(folder / "conventional.zarr", "density", (3, 4), np.nan)
    out = tmp_path / "metrics.json"
    out.write_text('{"label": "previous"}')
    names = [f"density store {folder / 'conventional.zarr'}", "the map holds 1 non-finite pixels"]
    fails("metrics", chain["tracks"], folder, out, output=out, names=names, fresh=False)


# ----------------------------------------------------------------------------------------- JSON files
def _metrics_json(folder: Path, text: str | None = None, **changes) -> Path:
    path = folder / "2d" / "c3" / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    good = {"label": "2d/c3", "reference": "ground_truth", "dice": {"conventional": 0.5, "network_sparse_cnn": 0.6}}
    path.write_text(text if text is not None else json.dumps({k: v for k, v in {**good, **changes}.items() if v is not None}))
    return path


@pytest.mark.parametrize(
    ("make", "needles"),
    [
        (lambda p: _metrics_json(p, '{"label": "2d/c3", "dice": {'), ["not valid JSON"]),
        (lambda p: _metrics_json(p, "[1, 2]"), ["expected a JSON object, got list"]),
        (lambda p: _metrics_json(p, reference=None), ["missing key(s) ['reference']"]),
        (lambda p: _metrics_json(p, dice={"conventional": float("nan")}), ["key dice.conventional must be a finite number"]),
        (lambda p: _metrics_json(p, dice=[0.5]), ["key dice must be an object"]),
    ],
    ids=["truncated", "not-an-object", "missing-key", "nan-dice", "dice-list"],
)
def test_summary_on_a_bad_metrics_file_is_named(request, tmp_path, make, needles):
    bad = make(tmp_path)
    out = tmp_path / "summary.csv"
    out.write_text("run,method\nprevious,table\n")
    fails("summary", bad, out, output=out, names=[f"metrics file {bad}", *needles], fresh=first_case(request))


@pytest.mark.parametrize(
    ("make", "needles"),
    [
        (lambda p: _metrics_json(p, "\x00\x01 not json"), ["not valid JSON"]),
        (lambda p: _metrics_json(p, dice=None), ["missing key(s) ['dice']"]),
        (lambda p: _metrics_json(p, label=None), ["missing key(s) ['label']"]),
    ],
    ids=["binary", "missing-dice", "missing-label"],
)
def test_claims_on_a_bad_metrics_file_is_named(request, tmp_path, make, needles):
    bad = make(tmp_path)
    out = tmp_path / "claims.csv"
    out.write_text("claim,verdict\n0,previous\n")
    fails("claims", bad, out, output=out, names=[f"metrics file {bad}", *needles], fresh=first_case(request))


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ('{"ratio_2d": 3.', ["not valid JSON"]),
        ('{"rows": []}', ["missing key ratio_2d or ratio_3d"]),
        ('{"ratio_2d": NaN}', ["key ratio_2d must be a positive finite number"]),
    ],
    ids=["truncated", "missing-ratio", "nan-ratio"],
)
def test_claims_on_a_bad_memory_file_is_named(request, tmp_path, text, needles):
    """Needs `ulm claims` to read --memory with ulm.claims.read_memory."""
    memory = tmp_path / "memory.json"
    memory.write_text(text)
    out = tmp_path / "claims.csv"
    out.write_text("claim,verdict\n0,previous\n")
    fails(
        "claims",
        "--memory",
        memory,
        _metrics_json(tmp_path),
        out,
        output=out,
        names=[f"memory file {memory}", *needles],
        fresh=first_case(request),
    )


def test_every_iq_read_is_checked_and_names_its_frames(nan_iq):
    """The stages that read iq blocks (sparsify, conventional, targets, mask, the dense dataset) read them
    through read_iq's checked array: a clean block reads as before, a bad one names its frames."""
    from ulm.errors import UlmError
    from ulm.store import read_iq

    iq = read_iq(nan_iq).iq
    assert iq[0:16].shape == (16, *iq.shape[1:]) and np.isfinite(iq[:16]).all()
    for key, needle in [(slice(16, 32), "frames 20..22 hold"), (20, "frame 20 holds"), ((slice(22, 23), 1), "frame 22 holds")]:
        with pytest.raises(UlmError, match=f"iq store {re.escape(str(nan_iq))}: {needle} non-finite values"):
            iq[key]


# ------------------------------------------------------------------------------- inputs given twice, wrong folders
def test_an_input_given_twice_is_refused(tmp_path, chain):
    metrics = tmp_path / "metrics.json"
    metrics.write_text('{"label": "2d/c3", "dice": {"conventional": 0.5}}')
    fails("summary", metrics, tmp_path / ".." / tmp_path.name / "metrics.json", tmp_path / "s.csv", names=["given twice"])
    train = ("train", chain["sparse"], chain["target"], chain["sparse"], chain["target"], tmp_path / "model.pt")
    fails(*train, names=[f"input {chain['sparse']}", "given twice"], output=tmp_path / "model.pt")


def test_two_maps_of_the_same_name_are_refused(tmp_path, chain):
    out = tmp_path / "density"
    preds = ("--pred", f"a={chain['sparse']}", "--pred", f"a={chain['target']}")
    fails("render", *preds, chain["tracks"], chain["iq"], out, names=["--pred name a", "given twice"], output=out)


@pytest.mark.parametrize("folder", ["a density store", "an empty folder"])
def test_metrics_on_a_folder_without_density_maps_is_refused(tmp_path, chain, folder):
    """Nothing to score is an error, not a metrics.json without Dice."""
    density = tmp_path / "density"
    if folder == "an empty folder":
        density.mkdir()
    else:
        code, err = ulm("render", "--quiet", *BLOCKS, chain["tracks"], chain["iq"], density)
        assert code == 0, err
        density = density / "ground_truth.zarr"
    fails("metrics", chain["tracks"], density, tmp_path / "metrics.json", names=[str(density), "no density store"])


def test_a_binary_config_file_or_a_bad_argument_is_one_line(tmp_path, chain):
    config = tmp_path / "c.yaml"
    config.write_bytes(b"\xff\xfe\x00")
    out = tmp_path / "g.zarr"
    fails("graph", "--config", config, "synthetic", out, names=["config file", "not a text file"], output=out)
    fails("summary", tmp_path / "out.csv", names=["required: output", "--help"])


@pytest.mark.parametrize(("name", "needle"), [("../graph", "'../graph'"), ("ground_truth", "'ground_truth'"), ("", "''")])
def test_a_map_name_must_be_plain_and_not_reserved(tmp_path, chain, name, needle):
    """A --pred name is a file name inside OUTPUT: never a path out of it, nor a map `ulm render` makes itself."""
    out = tmp_path / "density"
    pred = f"{name}={chain['sparse']}"
    fails("render", "--pred", pred, chain["tracks"], chain["iq"], out, names=[needle, "plain name"], output=out)
    assert not (tmp_path / "graph.zarr").exists()


def test_a_checkpoint_with_non_finite_weights_is_refused(tmp_path, chain, cfg):
    """A checkpoint of this network whose weights hold NaN is refused, not run into an empty prediction."""
    import torch

    from ulm.nn.checkpoint import ARCHITECTURE, build_net, spec_from_config

    spec = spec_from_config({**cfg["train"], "width": 4}, 2)
    weights = build_net(spec, torch.device("cpu")).state_dict()
    next(t for t in weights.values() if t.is_floating_point()).fill_(float("nan"))
    torch.save({"architecture": ARCHITECTURE, "spec": spec.as_dict(), "model": weights}, tmp_path / "model.pt")
    out = tmp_path / "pred.zarr"
    fails("infer", tmp_path / "model.pt", chain["sparse"], out, names=["non-finite", "weights"], output=out)


def test_summary_and_claims_refuse_a_run_given_twice_and_nothing_to_score(tmp_path):
    metrics = {"label": "2d/c3", "reference": "ground_truth", "dice": {"conventional": 0.5}}
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "metrics.json").write_text(json.dumps(metrics))
    a, b = tmp_path / "a" / "metrics.json", tmp_path / "b" / "metrics.json"
    for stage in ("summary", "claims"):
        fails(stage, a, b, tmp_path / f"{stage}.csv", names=[str(b), "scores the run 2d/c3", str(a)])
    a.write_text(json.dumps({**metrics, "dice": {}}))
    fails("summary", a, tmp_path / "summary.csv", names=["no Dice score"])


def test_a_trade_off_table_with_a_bad_cell_is_named(tmp_path):
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"label": "2d/c3", "reference": "ground_truth", "dice": {"conventional": 0.5}}))
    table = tmp_path / "2d" / "c3" / "sparse-threshold.csv"
    table.parent.mkdir(parents=True)
    table.write_text("configured,kept_fraction\nTrue,lots\n")
    line = fails("claims", metrics, tmp_path / "claims.csv", "--kept", table)
    assert "row 1, column kept_fraction: 'lots' is not float" in line
