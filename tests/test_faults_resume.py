"""Interrupt and resume, through the CLI as a user (or Slurm, or Snakemake) does it.

Whatever stops `ulm train` (Ctrl-C, SIGTERM, SIGKILL followed by Snakemake's --rerun-incomplete,
which deletes the declared outputs), running the same command again ends with the uninterrupted
run's best model and log. New data at the same paths is never resumed from an old run."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ulm.sparse import sparsify_iq
from ulm.train import train

SETS = ["train.width=4", "train.epochs=3", "train.phase2_epochs=2", "train.lr_milestones=[1]", "train.device=cpu"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def start(cmd: list[str]) -> subprocess.Popen:
    pipe = subprocess.PIPE
    return subprocess.Popen(cmd, env=ENV, preexec_fn=as_from_a_terminal, stdout=pipe, stderr=pipe, text=True)


def as_from_a_terminal() -> None:
    """Ctrl-C as a terminal delivers it: a job started in the background (CI) inherits SIGINT ignored,
    and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def command(root: Path, folder: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ulm",
        "train",
        "--quiet",
        *[a for s in SETS for a in ("--set", s)],
        str(root / "sparse.zarr"),
        str(root / "target.zarr"),
        str(folder / "model.pt"),
    ]


def log_but_seconds(folder: Path) -> list[dict]:
    with open(folder / "metrics.csv", newline="") as fh:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(fh)]


@pytest.fixture(scope="module")
def straight(nn_stores, tmp_path_factory) -> Path:
    """The uninterrupted run's folder."""
    folder = tmp_path_factory.mktemp("straight")
    subprocess.run(command(nn_stores[0], folder), check=True, env=ENV, capture_output=True)
    return folder


def interrupt_after_two_epochs(proc: subprocess.Popen, last: Path, signum: int) -> None:
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if last.exists() and torch.load(last, weights_only=True)["state"]["epoch"] >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "training ended before it could be interrupted"
    os.kill(proc.pid, signum)
    proc.wait(timeout=120)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["ctrl-c", "sigterm", "sigkill"])
def test_interrupted_training_rerun_ends_with_the_uninterrupted_best_model(nn_stores, straight, tmp_path, signum):
    root = nn_stores[0]
    proc = start(command(root, tmp_path))
    interrupt_after_two_epochs(proc, tmp_path / "last.pt", signum)
    stderr = proc.stderr.read()
    if signum != signal.SIGKILL:  # a clean stop: one line, status 130, no traceback, nothing half-written
        assert proc.returncode == 130, stderr
        assert "interrupted" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "model.pt").exists() and not (tmp_path / "model.pt.tmp").exists()
    for name in ("model.pt", "metrics.csv", "train.png"):  # what --rerun-incomplete deletes (declared outputs)
        (tmp_path / name).unlink(missing_ok=True)
    out = subprocess.run(command(root, tmp_path), check=True, env=ENV, capture_output=True, text=True)
    assert "resuming after epoch" in out.stdout
    assert log_but_seconds(tmp_path) == log_but_seconds(straight)
    a = torch.load(straight / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "model.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] and a["val_dice"] == b["val_dice"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_an_interrupt_keeps_the_previous_complete_run(nn_stores, straight, tmp_path):
    """A finished run, then a changed run interrupted: the finished run's model and log stay as they were."""
    root = nn_stores[0]
    for name in ("model.pt", "metrics.csv", "train.png"):
        (tmp_path / name).write_bytes((straight / name).read_bytes())
    before = {name: (tmp_path / name).read_bytes() for name in ("model.pt", "metrics.csv", "train.png")}
    changed = [*command(root, tmp_path)[:-3], "--set", "train.lr=0.002", *command(root, tmp_path)[-3:]]
    proc = start(changed)
    interrupt_after_two_epochs(proc, tmp_path / "last.pt", signal.SIGINT)
    assert proc.returncode == 130
    assert {name: (tmp_path / name).read_bytes() for name in before} == before


def test_new_data_at_the_same_paths_starts_afresh_and_says_so(nn_stores, tmp_path, capsys):
    root, cfg = nn_stores
    data = tmp_path / "data"
    data.mkdir()
    target = root / "target.zarr"
    tcfg = {**cfg["train"], "width": 4, "epochs": 2, "lr_milestones": [1], "device": "cpu"}
    sparsify_iq(root / "iq.zarr", data / "sparse.zarr", {**cfg["sparse"], "tau": 0.05}, progress=False)
    train(data / "sparse.zarr", target, tmp_path / "net" / "model.pt", tcfg, seed=5, progress=False)
    sparsify_iq(root / "iq.zarr", data / "sparse.zarr", {**cfg["sparse"], "tau": 0.2}, progress=False)  # new data, same path
    capsys.readouterr()
    rows, _ = train(data / "sparse.zarr", target, tmp_path / "net" / "model.pt", tcfg, seed=5, progress=False)
    out = capsys.readouterr().out
    assert "(its data changed); starting afresh" in out
    assert [r["epoch"] for r in rows] == [0, 1, 2]


def test_the_same_data_rewritten_resumes(nn_stores, tmp_path, capsys):
    """The digest is of the content: rewriting identical data (e.g. a rerun upstream) keeps the resume."""
    root, cfg = nn_stores
    data = tmp_path / "data"
    data.mkdir()
    tcfg = {**cfg["train"], "width": 4, "epochs": 2, "lr_milestones": [1], "device": "cpu"}
    sparsify_iq(root / "iq.zarr", data / "sparse.zarr", cfg["sparse"], progress=False)
    train(data / "sparse.zarr", root / "target.zarr", tmp_path / "net" / "model.pt", tcfg, seed=5, progress=False)
    sparsify_iq(root / "iq.zarr", data / "sparse.zarr", cfg["sparse"], progress=False)
    capsys.readouterr()
    train(data / "sparse.zarr", root / "target.zarr", tmp_path / "net" / "model.pt", tcfg, seed=5, progress=False)
    assert "resuming after epoch 2" in capsys.readouterr().out


def test_a_last_checkpoint_of_this_run_with_parts_missing_starts_afresh(nn_stores, straight, tmp_path):
    """Its key matches but its content is incomplete: never resumed from, and the run still ends with the best model."""
    ckpt = torch.load(straight / "last.pt", weights_only=True)
    del ckpt["optimizer"]
    torch.save(ckpt, tmp_path / "last.pt")
    out = subprocess.run(command(nn_stores[0], tmp_path), check=True, env=ENV, capture_output=True, text=True)
    assert "is incomplete (KeyError); starting afresh" in out.stdout
    assert log_but_seconds(tmp_path) == log_but_seconds(straight)
    a, b = (torch.load(f / "model.pt", weights_only=True)["model"] for f in (straight, tmp_path))
    assert all(torch.equal(a[k], b[k]) for k in a)
