"""Output safety, through the CLI as a user runs it: a stage never deletes what it did not write.

It refuses an OUTPUT that is an input, a directory or file that is not its kind of output, or a
special file; a failed stage (bad input, failing plot, unwritable place) leaves every previous
output byte for byte as it was; a successful one replaces its outputs together."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SMALL = ["--set", "graph.synthetic.size_um=[200,200,200]"]


def ulm(*argv: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ulm", *map(str, argv)], capture_output=True, text=True, timeout=300)


def fingerprint(path: Path) -> str:
    """A digest of every file under ``path`` (names and bytes), or of the file itself."""
    digest = hashlib.sha256()
    for p in sorted([path] if path.is_file() else path.rglob("*")):
        if p.is_file():
            digest.update(p.relative_to(path.parent).as_posix().encode() + p.read_bytes())
    return digest.hexdigest()


def refused(result: subprocess.CompletedProcess, *words: str) -> str:
    """The one stderr line of a refused run (exit status 2), checked to name ``words``."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> Path:
    """graph.zarr and flow.zarr of a small synthetic network, made by the CLI."""
    root = tmp_path_factory.mktemp("outputs")
    assert ulm("graph", *SMALL, "synthetic", root / "graph.zarr").returncode == 0
    assert ulm("flow", *SMALL, root / "graph.zarr", root / "flow.zarr").returncode == 0
    return root


def test_output_that_is_the_input_is_refused(chain):
    before = fingerprint(chain / "graph.zarr")
    refused(ulm("flow", chain / "graph.zarr", chain / "graph.zarr"), "graph.zarr", "input")
    assert fingerprint(chain / "graph.zarr") == before


def test_output_inside_the_input_store_is_refused(chain):
    before = fingerprint(chain / "graph.zarr")
    refused(ulm("flow", chain / "graph.zarr", chain / "graph.zarr" / "flow.zarr"), "input")
    assert fingerprint(chain / "graph.zarr") == before


def test_a_users_directory_is_not_wiped(chain, tmp_path):
    mine = tmp_path / "mydir"
    mine.mkdir()
    (mine / "thesis.tex").write_text("five years of work")
    refused(ulm("flow", chain / "graph.zarr", mine), "mydir", "not a flow store")
    assert (mine / "thesis.tex").read_text() == "five years of work"


def test_a_store_of_another_kind_is_not_replaced(chain):
    before = fingerprint(chain / "graph.zarr")
    refused(ulm("graph", *SMALL, "synthetic", chain / "flow.zarr"), "flow.zarr", "not a graph store")
    refused(ulm("flow", chain / "graph.zarr", chain / "graph.zarr"), "input")
    assert fingerprint(chain / "graph.zarr") == before


def test_a_plain_file_is_not_replaced_by_a_store(chain, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    refused(ulm("flow", chain / "graph.zarr", notes), "notes.txt")
    assert notes.read_text() == "keep me"


def test_a_special_file_is_refused(chain, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)  # stands for /dev/null or a device node, without touching one
    refused(ulm("flow", chain / "graph.zarr", fifo), "pipe")
    refused(ulm("flow", chain / "graph.zarr", tmp_path / "flow.zarr", "--plot", fifo), "pipe", "regular file")
    assert fifo.exists() and not fifo.is_file()
    assert not (tmp_path / "flow.zarr").exists()


def test_a_plot_path_that_is_a_directory_is_refused(chain, tmp_path):
    folder = tmp_path / "flow.png"
    folder.mkdir()
    (folder / "x").write_text("x")
    refused(ulm("flow", chain / "graph.zarr", tmp_path / "flow.zarr", "--plot", folder), "flow.png", "regular file")
    assert (folder / "x").exists() and not (tmp_path / "flow.zarr").exists()


def test_the_same_path_twice_is_refused(chain, tmp_path):
    out = tmp_path / "flow.zarr"
    refused(ulm("flow", chain / "graph.zarr", out, "--plot", out), "twice")


def test_a_typo_in_an_input_keeps_the_last_good_output(chain, tmp_path):
    out, plot = tmp_path / "flow.zarr", tmp_path / "flow.png"
    assert ulm("flow", chain / "graph.zarr", out, "--plot", plot).returncode == 0
    before = fingerprint(out), fingerprint(plot)
    refused(ulm("flow", chain / "grahp.zarr", out, "--plot", plot), "grahp.zarr", "not found")
    assert (fingerprint(out), fingerprint(plot)) == before
    assert not out.with_name("flow.zarr.tmp").exists()


def test_a_failing_plot_keeps_the_previous_store_too(chain, tmp_path):
    """All or nothing: the store was written, the plot could not be: neither replaces its old version."""
    out = tmp_path / "flow.zarr"
    assert ulm("flow", "--set", "flow.pressure_artery_mmHg=70", chain / "graph.zarr", out).returncode == 0
    before = fingerprint(out)
    plot = tmp_path / ("p" * 249 + ".png")  # a legal name whose temporary sibling (+ ".tmp") is too long: fails at write time
    result = ulm("flow", "--set", "flow.pressure_artery_mmHg=60", chain / "graph.zarr", out, "--plot", plot)
    refused(result, "name too long")
    assert fingerprint(out) == before
    assert not out.with_name("flow.zarr.tmp").exists()


def test_an_unwritable_place_is_one_line(chain, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    refused(ulm("flow", chain / "graph.zarr", blocker / "flow.zarr"), "file")


def test_a_rerun_replaces_its_own_output(chain, tmp_path):
    out = tmp_path / "flow.zarr"
    assert ulm("flow", "--set", "flow.pressure_artery_mmHg=70", chain / "graph.zarr", out).returncode == 0
    first = fingerprint(out)
    assert ulm("flow", "--set", "flow.pressure_artery_mmHg=60", chain / "graph.zarr", out).returncode == 0
    assert fingerprint(out) != first
    assert not out.with_name("flow.zarr.tmp").exists() and not out.with_name("flow.zarr.old").exists()


def test_render_does_not_replace_a_folder_of_other_things(chain, tmp_path):
    folder = tmp_path / "density"
    folder.mkdir()
    (folder / "notes.md").write_text("mine")
    result = ulm("render", tmp_path / "tracks.zarr", tmp_path / "iq.zarr", folder)
    refused(result, "density", "ulm render")
    assert (folder / "notes.md").read_text() == "mine"


def test_train_refuses_a_folder_in_place_of_its_log(chain, tmp_path):
    (tmp_path / "metrics.csv").mkdir()
    result = ulm("train", tmp_path / "sparse.zarr", tmp_path / "target.zarr", tmp_path / "model.pt")
    refused(result, "metrics.csv", "regular file")


@pytest.mark.parametrize(
    ("option", "kind"),
    [(None, "torch checkpoint"), ("--plot", "PNG image"), ("--csv", ".csv table")],
    ids=["model", "plot", "csv"],
)
def test_a_users_file_is_not_replaced_by_an_output_of_another_kind(chain, tmp_path, option, kind):
    """A file output replaces only a file of its own kind (what a rerun would replace), never a user's notes."""
    notes = tmp_path / "README.md"
    notes.write_text("# my notes")
    if option is None:
        result = ulm("train", tmp_path / "sparse.zarr", tmp_path / "target.zarr", notes)
    else:
        result = ulm("sparsify", tmp_path / "iq.zarr", tmp_path / "sparse.zarr", option, notes)
    refused(result, "README.md", kind)
    assert notes.read_text() == "# my notes"


def test_a_file_in_place_of_a_folder_is_named(chain, tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("mine")
    refused(ulm("flow", chain / "graph.zarr", blocker / "flow.zarr"), f"{blocker} is a file, not a folder")
    assert blocker.read_text() == "mine"


def test_a_symbolic_link_loop_is_named(chain, tmp_path):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    refused(ulm("flow", chain / "graph.zarr", tmp_path / "a"), "a: cannot be resolved", "loop")
    refused(ulm("flow", tmp_path / "a", tmp_path / "flow.zarr"), "a: cannot be resolved")
    assert (tmp_path / "a").is_symlink() and (tmp_path / "b").is_symlink()


def test_an_output_inside_a_store_or_inside_another_output_is_refused(chain, tmp_path):
    before = fingerprint(chain / "graph.zarr")
    refused(ulm("flow", chain / "graph.zarr", chain / "flow.zarr" / "f.zarr"), "lies inside the store")
    refused(ulm("flow", chain / "graph.zarr", tmp_path / "f.zarr", "--plot", chain / "graph.zarr" / "f.png"), "lies inside")
    refused(
        ulm("flow", chain / "graph.zarr", tmp_path / "f.zarr", "--plot", tmp_path / "f.zarr" / "p.png"), "lies inside the output"
    )
    assert fingerprint(chain / "graph.zarr") == before and not (tmp_path / "f.zarr").exists()


def test_a_symbolic_link_as_output_is_refused(chain, tmp_path):
    theirs = tmp_path / "theirs.zarr"
    assert ulm("flow", chain / "graph.zarr", theirs).returncode == 0
    before = fingerprint(theirs)
    (tmp_path / "flow.zarr").symlink_to(theirs)
    refused(ulm("flow", chain / "graph.zarr", tmp_path / "flow.zarr"), "symbolic link")
    assert fingerprint(theirs) == before and not (tmp_path / "flow.zarr.tmp").exists()


@pytest.mark.parametrize("side", [".tmp", ".old"])
def test_a_users_folder_beside_the_output_is_not_wiped(chain, tmp_path, side):
    """Replacing OUTPUT uses OUTPUT.tmp and OUTPUT.old: what a user keeps there is refused, not deleted."""
    mine = tmp_path / f"flow.zarr{side}"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    refused(ulm("flow", chain / "graph.zarr", tmp_path / "flow.zarr"), f"flow.zarr{side} is in the way")
    assert (mine / "notes.txt").read_text() == "mine"
    refused(ulm("flow", mine, tmp_path / "flow.zarr"), "input")  # an input named OUTPUT.tmp is never deleted either
    assert (mine / "notes.txt").read_text() == "mine"


def test_a_store_is_replaced_only_by_a_store_of_its_kind_with_nothing_else_inside(chain, tmp_path):
    out = tmp_path / "flow.zarr"
    assert ulm("flow", chain / "graph.zarr", out).returncode == 0
    (out / "README").write_text("what I found")
    refused(ulm("flow", chain / "graph.zarr", out), "not a flow store (Zarr files only)")
    assert (out / "README").read_text() == "what I found"


def test_the_root_folder_is_never_an_output(chain):
    refused(ulm("graph", *SMALL, "synthetic", "/"), "root folder")


def test_a_figure_must_be_a_png(chain, tmp_path):
    refused(ulm("flow", chain / "graph.zarr", tmp_path / "f.zarr", "--plot", tmp_path / "f.txt"), "ending in .png")
    assert not (tmp_path / "f.zarr").exists()


def test_a_leftover_of_a_killed_run_is_cleared(chain, tmp_path):
    """What a SIGKILL leaves beside OUTPUT (a store cut before or after its header) is this stage's: cleared."""
    (tmp_path / "a.zarr.tmp" / "edges").mkdir(parents=True)
    assert ulm("flow", chain / "graph.zarr", tmp_path / "a.zarr").returncode == 0
    shutil.copytree(tmp_path / "a.zarr", tmp_path / "b.zarr.tmp")
    assert ulm("flow", chain / "graph.zarr", tmp_path / "b.zarr").returncode == 0
    assert not (tmp_path / "a.zarr.tmp").exists() and not (tmp_path / "b.zarr.tmp").exists()
