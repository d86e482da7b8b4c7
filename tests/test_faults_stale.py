"""Stale inputs, through the CLI: every store records the graph, flow, tracks and iq stores it was made from
(``ulm_lineage``, by content digest), and a stage whose inputs belong to one run refuses inputs made from
different ones (one line naming both, exit status 2) instead of scoring yesterday's output against today's
ground truth."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import zarr

SMALL = ["--set", "graph.synthetic.size_um=[200,200,200]"]
BLOCKS = ["--set", "sparse.block_frames=16", "--set", "sparse.tile_px=16", "--set", "conventional.block_frames=16"]
FORWARD = ["--set", "forward.block_frames=16"]


def ulm(*argv: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ulm", *map(str, argv)], capture_output=True, text=True, timeout=300)


def ok(*argv: object) -> None:
    result = ulm(*argv)
    assert result.returncode == 0, result.stderr


def bubbles(root: Path, out: Path, concentration: int) -> None:
    ok(
        "bubbles",
        "--quiet",
        "--set",
        "bubbles.n_frames=32",
        "--set",
        f"bubbles.concentration={concentration}",
        root / "graph.zarr",
        root / "flow.zarr",
        out,
    )


def metrics(run: Path, out: Path) -> tuple:
    """`ulm metrics` of the run's localizations and density maps against its tracks."""
    return ("metrics", "--quiet", *BLOCKS, "--localizations", run / "loc.zarr", run / "tracks.zarr", run / "density", out)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """One small run made by the CLI: graph, flow, tracks, iq, sparse, target, localizations, density."""
    root = tmp_path_factory.mktemp("stale")
    ok("graph", *SMALL, "synthetic", root / "graph.zarr")
    ok("flow", root / "graph.zarr", root / "flow.zarr")
    bubbles(root, root / "tracks.zarr", 3)
    ok("forward", "--quiet", *FORWARD, root / "tracks.zarr", root / "iq.zarr")
    ok("sparsify", "--quiet", *BLOCKS, root / "iq.zarr", root / "sparse.zarr")
    ok("targets", "--quiet", *BLOCKS, root / "tracks.zarr", root / "iq.zarr", root / "target.zarr")
    ok("conventional", "--quiet", *BLOCKS, root / "iq.zarr", root / "loc.zarr")
    ok(
        "render",
        "--quiet",
        *BLOCKS,
        "--localizations",
        root / "loc.zarr",
        root / "tracks.zarr",
        root / "iq.zarr",
        root / "density",
    )
    return root


def lineage(store: Path) -> dict:
    return zarr.open_group(str(store), mode="r").attrs.get("ulm_lineage", {})


def digest(store: Path) -> str:
    return zarr.open_group(str(store), mode="r").attrs["ulm_digest"]


def test_every_store_records_the_chain_it_was_made_from(run):
    chain = {kind: digest(run / f"{kind}.zarr") for kind in ("graph", "flow", "tracks", "iq")}
    assert lineage(run / "flow.zarr") == {k: chain[k] for k in ("graph", "flow")}
    assert lineage(run / "tracks.zarr") == {k: chain[k] for k in ("graph", "flow", "tracks")}
    for store in ("iq.zarr", "sparse.zarr", "target.zarr", "loc.zarr", "density/ground_truth.zarr", "density/conventional.zarr"):
        assert lineage(run / store) == chain, store


def test_new_tracks_at_the_same_path_make_the_old_outputs_stale(run, tmp_path):
    """The tracks are simulated again (another concentration) at the same path; the IQ, localizations and
    maps made from the old ones are refused next to them, naming both files."""
    here = tmp_path / "run"
    shutil.copytree(run, here)
    bubbles(here, here / "tracks.zarr", 5)
    cases = [
        ("targets", "--quiet", *BLOCKS, here / "tracks.zarr", here / "iq.zarr", tmp_path / "target.zarr"),
        metrics(here, tmp_path / "m.json"),
        (
            "render",
            "--quiet",
            *BLOCKS,
            "--localizations",
            here / "loc.zarr",
            here / "tracks.zarr",
            here / "iq.zarr",
            tmp_path / "d",
        ),
    ]
    for argv in cases:
        result = ulm(*argv)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert "were made from different tracks stores" in lines[0] and "stale" in lines[0], lines[0]
        assert "tracks.zarr" in lines[0]
        assert not (tmp_path / "target.zarr").exists() and not (tmp_path / "m.json").exists()


def test_the_same_data_rewritten_is_not_stale(run, tmp_path):
    """Digests are of the content: the same tracks simulated again keep every downstream store valid."""
    here = tmp_path / "run"
    shutil.copytree(run, here)
    bubbles(here, here / "tracks.zarr", 3)
    ok(*metrics(here, tmp_path / "m.json"))


def test_train_checks_each_sparse_target_pair_on_its_own(run, tmp_path):
    """Pairs of different runs may be trained together; a pair whose target is of another run may not."""
    other = tmp_path / "other"
    other.mkdir()
    for name in ("graph.zarr", "flow.zarr"):
        shutil.copytree(run / name, other / name)
    bubbles(other, other / "tracks.zarr", 5)
    ok("forward", "--quiet", *FORWARD, other / "tracks.zarr", other / "iq.zarr")
    ok("targets", "--quiet", *BLOCKS, other / "tracks.zarr", other / "iq.zarr", other / "target.zarr")
    result = ulm("train", "--quiet", *BLOCKS, run / "sparse.zarr", other / "target.zarr", tmp_path / "model.pt")
    assert result.returncode == 2 and "were made from different tracks stores" in result.stderr, result.stderr
    assert not (tmp_path / "model.pt").exists()
