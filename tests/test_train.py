"""Training and inference on real stores: best checkpoint, resume, step schedule, pred.zarr, bad input."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ulm.bubbles import simulate_tracks
from ulm.cli import main
from ulm.config import load_config
from ulm.flow import solve_flow
from ulm.forward.simulate import simulate_iq
from ulm.sparse import sparsify_iq
from ulm.store import CooStore, CooWriter
from ulm.targets import make_targets
from ulm.train import train
from ulm.vascular import build_graph

CHECK_STORES = Path(__file__).resolve().parents[2] / "shared" / "tools" / "check_stores.py"


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """8 blocks of 256 frames of 2D PSF-mode IQ from the bundled graph, sparsified, with targets."""
    root = tmp_path_factory.mktemp("nn")
    cfg = load_config(overrides=["bubbles.n_frames=2048", "sparse.block_frames=256"])
    graph = build_graph("bundled:mouse_20120409", cfg["graph"])
    simulate_tracks(graph, solve_flow(graph, cfg["flow"]), cfg["bubbles"], 1, path=root / "tracks.zarr", progress=False)
    simulate_iq(root / "tracks.zarr", root / "iq.zarr", cfg, 2, 0, progress=False)
    sparsify_iq(root / "iq.zarr", root / "sparse.zarr", cfg["sparse"], progress=False)
    make_targets(root / "tracks.zarr", root / "iq.zarr", root / "target.zarr", cfg["sparse"], progress=False)
    return root, cfg


def run_train(stores, folder, **overrides):
    root, cfg = stores
    tcfg = {**cfg["train"], "epochs": 3, "lr_milestones": [2], **overrides}
    return train(
        root / "sparse.zarr", root / "target.zarr", folder / "model.pt", tcfg, seed=5, iq_path=root / "iq.zarr", progress=False
    )


def test_best_checkpoint_tracks_the_best_epoch_and_schedule_steps_once(stores, tmp_path):
    rows, trivial = run_train(stores, tmp_path)
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    best = torch.load(tmp_path / "model.pt", weights_only=False)
    assert (
        best["val_dice"] == max(r["val_dice"] for r in rows[1:] if r["val_dice"] > rows[0]["val_dice"] - 1) or best["epoch"] == 3
    )
    assert best["val_dice"] == pytest.approx(max(r["val_dice"] for r in rows[1:]))
    lrs = [r["lr"] for r in rows[1:]]
    assert lrs[0] == lrs[1] == pytest.approx(stores[1]["train"]["lr"]) and lrs[2] == pytest.approx(0.1 * lrs[0])
    assert (tmp_path / "metrics.csv").read_text().count("\n") == 5
    assert (tmp_path / "train.png").stat().st_size > 0
    assert 0 <= trivial <= 1


def test_resumed_training_equals_an_uninterrupted_run(stores, tmp_path):
    straight, _ = run_train(stores, tmp_path / "a")
    run_train(stores, tmp_path / "b", epochs=2)  # interrupted after two epochs
    resumed, _ = run_train(stores, tmp_path / "b")
    assert len(resumed) == len(straight)
    for a, b in zip(straight, resumed, strict=True):
        assert a["val_dice"] == pytest.approx(b["val_dice"], abs=1e-6)
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5, nan_ok=True)


def test_a_changed_config_does_not_resume_a_stale_run(stores, tmp_path):
    run_train(stores, tmp_path, epochs=2)
    rows, _ = run_train(stores, tmp_path, epochs=2, lr=0.0005)  # e.g. Snakemake reruns train after a change
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert rows[1]["lr"] == pytest.approx(0.0005)


def test_infer_writes_a_contract_pred_store(stores, tmp_path):
    root, _ = stores
    run_train(stores, tmp_path, epochs=1)
    assert main(["infer", "--quiet", str(tmp_path / "model.pt"), str(root / "sparse.zarr"), str(tmp_path / "pred.zarr")]) == 0
    pred = CooStore(tmp_path / "pred.zarr", "pred")
    sparse = CooStore(root / "sparse.zarr", "sparse")
    assert len(pred) == len(sparse) and np.array_equal(pred.origin, sparse.origin)
    coords, feats = pred.block(0)
    assert coords.shape[1] == 2 and np.all(coords < np.array(pred.attrs["fine_block_shape"])) and np.all(feats > 0.5)
    if CHECK_STORES.exists():
        out = subprocess.run([sys.executable, str(CHECK_STORES), str(tmp_path / "pred.zarr")], capture_output=True, text=True)
        assert out.returncode == 0 and out.stdout.startswith("ok"), out.stdout


def test_dense_baseline_trains_and_predicts(stores, tmp_path):
    root, _ = stores
    rows, _ = run_train(stores, tmp_path, epochs=1, model="dense")
    assert np.isfinite(rows[1]["train_loss"])
    out = tmp_path / "pred.zarr"
    assert (
        main(["infer", "--quiet", "--iq", str(root / "iq.zarr"), str(tmp_path / "model.pt"), str(root / "sparse.zarr"), str(out)])
        == 0
    )
    assert len(CooStore(out, "pred")) == len(CooStore(root / "sparse.zarr"))


def _one_line_error(capsys, argv, needle):
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and needle in err[0], err


def test_checkpoint_of_another_architecture_is_rejected(stores, tmp_path, capsys):
    root, _ = stores
    run_train(stores, tmp_path, epochs=1)
    ckpt = torch.load(tmp_path / "model.pt", weights_only=False)
    ckpt["spec"]["dims"] = 3
    torch.save(ckpt, tmp_path / "other.pt")
    _one_line_error(capsys, ["infer", "--quiet", tmp_path / "other.pt", root / "sparse.zarr", tmp_path / "p.zarr"], "checkpoint")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    _one_line_error(capsys, ["infer", "--quiet", tmp_path / "junk.pt", root / "sparse.zarr", tmp_path / "p.zarr"], "junk.pt")
    assert not (tmp_path / "p.zarr").exists()


def test_store_with_wrong_channels_or_larger_blocks_is_rejected(stores, tmp_path, capsys):
    root, _ = stores
    run_train(stores, tmp_path, epochs=1)
    sparse = CooStore(root / "sparse.zarr")
    with CooWriter(tmp_path / "three.zarr", 3, 3, dict(sparse.attrs)) as w:
        w.append(np.zeros((1, 3)), np.zeros((1, 3)), sparse.origin[0])
    _one_line_error(
        capsys, ["infer", "--quiet", tmp_path / "model.pt", tmp_path / "three.zarr", tmp_path / "p.zarr"], "2 feature channels"
    )
    bigger = {**sparse.attrs, "block_shape": [512, *sparse.attrs["block_shape"][1:]]}
    with CooWriter(tmp_path / "big.zarr", 3, 2, bigger) as w:
        w.append(np.zeros((1, 3)), np.zeros((1, 2)), sparse.origin[0])
    _one_line_error(capsys, ["infer", "--quiet", tmp_path / "model.pt", tmp_path / "big.zarr", tmp_path / "p.zarr"], "trained on")


def test_three_d_network_trains_and_predicts_with_4d_convolutions(tmp_path):
    cfg = load_config(overrides=["bubbles.n_frames=256", "bubbles.concentration=20", "sparse.block_frames=64", "train.epochs=1"])
    graph = build_graph("bundled:mouse_20120409", cfg["graph"])
    simulate_tracks(graph, solve_flow(graph, cfg["flow"]), cfg["bubbles"], 1, path=tmp_path / "tracks.zarr", progress=False)
    simulate_iq(tmp_path / "tracks.zarr", tmp_path / "iq.zarr", cfg, 3, 0, progress=False)
    sparsify_iq(tmp_path / "iq.zarr", tmp_path / "sparse.zarr", cfg["sparse"], progress=False)
    make_targets(tmp_path / "tracks.zarr", tmp_path / "iq.zarr", tmp_path / "target.zarr", cfg["sparse"], progress=False)
    rows, _ = train(
        tmp_path / "sparse.zarr", tmp_path / "target.zarr", tmp_path / "model.pt", cfg["train"], seed=0, progress=False
    )
    assert np.isfinite(rows[1]["train_loss"])
    assert main(["infer", "--quiet", str(tmp_path / "model.pt"), str(tmp_path / "sparse.zarr"), str(tmp_path / "pred.zarr")]) == 0
    coords, _ = CooStore(tmp_path / "pred.zarr", "pred").block(0)
    assert coords.shape[1] == 3


def test_cascaded_training_adds_one_scale_per_stage():
    from ulm.nn.loss import supervised_scales

    assert supervised_scales(3, True) == [0, 1, 2, 3]
    assert supervised_scales(3, False) == [3]
    assert [supervised_scales(3, True, stage) for stage in range(4)] == [[0], [0, 1], [0, 1, 2], [0, 1, 2, 3]]


def test_learned_mask_trains_and_keeps_the_bubbles(stores, tmp_path, capsys):
    from ulm.mask import train_mask
    from ulm.sparse import trade_off

    root, cfg = stores
    scfg = {**cfg["sparse"], "learned_epochs": 4}
    stats = train_mask(root / "iq.zarr", root / "tracks.zarr", tmp_path / "mask.pt", scfg, 0, cfg["train"]["val_fraction"])
    assert stats["final_loss"] < stats["first_loss"]
    learned = {**scfg, "method": "learned", "mask_checkpoint": str(tmp_path / "mask.pt")}
    sparsify_iq(root / "iq.zarr", tmp_path / "sparse-learned.zarr", learned, progress=False)
    store = CooStore(tmp_path / "sparse-learned.zarr")
    assert store.attrs["method"] == "learned" and store.attrs["params"]["checkpoint"] == str(tmp_path / "mask.pt")
    point = trade_off(root / "iq.zarr", root / "tracks.zarr", learned, values=[0.5])[0]
    print(f"learned mask: keeps {point['kept_fraction']:.3f} of the sites and {point['mb_fraction']:.3f} of the MB positions")
    assert point["kept_fraction"] < 0.5 and point["mb_fraction"] > 0.8
    capsys.readouterr()
    argv = ["sparsify", "--quiet", "--set", "sparse.method=learned", str(root / "iq.zarr"), str(tmp_path / "x.zarr")]
    assert main(argv) == 2 and "mask_checkpoint" in capsys.readouterr().err
