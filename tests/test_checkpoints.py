"""Checkpoints are data, not code: every load uses ``weights_only=True``, so a crafted pickle is refused.

A file named model.pt / last.pt / mask.pt may come from anywhere (a shared drive, a download). Unpickling
it with ``weights_only=False`` would run whatever it was built to run; here each loader is handed such a
file and must refuse it (one line, nothing executed)."""

from __future__ import annotations

import pathlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ulm.errors import UlmError


class _RunsCodeWhenUnpickled:
    """Unpickling this touches ``marker``: the stand-in for arbitrary code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


@pytest.fixture
def crafted(tmp_path) -> tuple[Path, Path]:
    """(a checkpoint-looking file holding the payload, the marker the payload would create)."""
    marker = tmp_path / "code-ran"
    path = tmp_path / "crafted.pt"
    torch.save({"architecture": "anything", "model": {}, "payload": _RunsCodeWhenUnpickled(marker)}, path)
    return path, marker


def test_the_crafted_file_does_run_code_when_loaded_unsafely(crafted):
    """The test's own premise: without weights_only the payload runs (else the tests below prove nothing)."""
    path, marker = crafted
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_ulm_infer_refuses_a_crafted_checkpoint(nn_stores, crafted, tmp_path):
    path, marker = crafted
    root = nn_stores[0]
    out = tmp_path / "pred.zarr"
    run = subprocess.run(
        [sys.executable, "-m", "ulm", "infer", "--quiet", str(path), str(root / "sparse.zarr"), str(out)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().count("\n") == 0 and f"checkpoint {path}" in run.stderr, run.stderr
    assert not marker.exists() and not out.exists()


def test_the_mask_loader_refuses_a_crafted_checkpoint(crafted):
    from ulm.nn.mask_net import load_mask

    path, marker = crafted
    with pytest.raises(UlmError, match="unreadable"):
        load_mask(path)
    assert not marker.exists()


def test_training_does_not_resume_from_a_crafted_last_checkpoint(nn_stores, crafted, tmp_path, capsys):
    from ulm.train import train

    path, marker = crafted
    root, cfg = nn_stores
    folder = tmp_path / "net"
    folder.mkdir()
    (folder / "last.pt").write_bytes(path.read_bytes())
    tcfg = {**cfg["train"], "width": 4, "epochs": 1, "lr_milestones": [1], "device": "cpu"}
    rows, _ = train(root / "sparse.zarr", root / "target.zarr", folder / "model.pt", tcfg, seed=3, progress=False)
    assert "unreadable" in capsys.readouterr().out and [r["epoch"] for r in rows] == [0, 1]
    assert not marker.exists()


def test_every_torch_load_in_the_package_and_benchmarks_is_weights_only():
    """A static check, so that a new loader cannot forget it: every ``torch.load(...)`` call passes
    ``weights_only=True``."""
    import ast

    root = Path(__file__).resolve().parents[1]
    unsafe, found = [], 0
    for path in [*root.joinpath("ulm").rglob("*.py"), *root.joinpath("benchmarks").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                found += 1
                flag = {k.arg: k.value for k in node.keywords}.get("weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    unsafe.append(f"{path.relative_to(root)}:{node.lineno}")
    assert found >= 3, "the scan found no loader: is it still looking at the right files?"
    assert not unsafe, f"torch.load without weights_only=True: {unsafe}"
