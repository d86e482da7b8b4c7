"""Training and inference on real stores: best checkpoint, the reference schedule, resume after a kill, pred.zarr, bad input."""

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
from ulm.nn import schedule
from ulm.nn.spec import NetSpec
from ulm.sparse import sparsify_iq
from ulm.store import CooStore, CooWriter
from ulm.targets import make_targets
from ulm.train import train
from ulm.vascular import build_graph

CHECK_STORES = Path(__file__).resolve().parents[2] / "shared" / "tools" / "check_stores.py"


@pytest.fixture(scope="module")
def stores(nn_stores):
    return nn_stores


def run_train(stores, folder, **overrides):
    root, cfg = stores
    tcfg = {**cfg["train"], "width": 4, "epochs": 3, "lr_milestones": [2], **overrides}
    return train(
        root / "sparse.zarr", root / "target.zarr", folder / "model.pt", tcfg, seed=5, iq_paths=[root / "iq.zarr"], progress=False
    )


def test_best_checkpoint_is_the_best_epoch_and_the_schedule_steps_once(stores, tmp_path):
    rows, trivial = run_train(stores, tmp_path)
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    best = torch.load(tmp_path / "model.pt", weights_only=True)
    assert best["val_dice"] == pytest.approx(max(r["val_dice"] for r in rows[1:]))
    assert best["epoch"] == max(rows[1:], key=lambda r: r["val_dice"])["epoch"]
    lrs = [r["lr"] for r in rows[1:]]
    assert lrs[0] == lrs[1] == pytest.approx(stores[1]["train"]["lr"]) and lrs[2] == pytest.approx(0.1 * lrs[0])
    assert (tmp_path / "metrics.csv").read_text().count("\n") == 5
    assert (tmp_path / "train.png").stat().st_size > 0
    assert 0 <= trivial <= 1


REFERENCE_2D = {
    "lr": 0.1,
    "epochs": 150,
    "phase2_epochs": 150,
    "phase2_lr_factor": 0.01,
    "dilate_first_phase": True,
    "cascade_epochs": 1,
}
MILESTONES_2D = [15, 45, 75, 100, 160, 200, 250]


def test_the_schedule_is_the_references():
    """lr of the optimizer the trainer builds, stepped as the trainer steps it, at the epochs the reference logs."""
    plan = schedule.phases(REFERENCE_2D, NetSpec(dims=2))
    assert [(p.epochs, p.lr, p.dilated) for p in plan] == [(150, 0.1, True), (150, pytest.approx(1e-3), False)]
    used = {}
    param = [torch.nn.Parameter(torch.zeros(1))]
    for epoch in range(1, 301):
        i, e = schedule.locate(plan, epoch)
        if e == 1:
            opt, sched = schedule.optimizer(param, plan[i], MILESTONES_2D, 0.1)
        used[epoch] = sched.get_last_lr()[0]
        opt.step()
        sched.step()
    expected = {1: 0.1, 15: 0.1, 16: 0.01, 46: 1e-3, 76: 1e-4, 101: 1e-5, 150: 1e-5, 151: 1e-3, 166: 1e-4, 300: 1e-7}
    for epoch, lr in expected.items():
        assert used[epoch] == pytest.approx(lr) == schedule.lr_at(plan, MILESTONES_2D, 0.1, epoch), epoch
    plan_3d = schedule.phases({"lr": 0.05, "epochs": 20, "phase2_epochs": 0, "dilate_first_phase": False}, NetSpec(dims=3))
    assert [schedule.lr_at(plan_3d, [15, 17], 0.1, e) for e in (1, 15, 16, 17, 18, 20)] == pytest.approx(
        [0.05, 0.05, 0.005, 0.005, 0.0005, 0.0005]
    )
    cascaded = schedule.phases({**REFERENCE_2D, "cascade_epochs": 1}, NetSpec(dims=2, cascaded=True))
    assert [(p.net_phase, p.epochs) for p in cascaded] == [(0, 1), (1, 1), (2, 1), (3, 150), (3, 150)]


def test_two_phases_restart_the_lr_and_train_the_dilated_target_first(stores, tmp_path):
    rows, _ = run_train(stores, tmp_path, epochs=2, phase2_epochs=2, lr_milestones=[1], dilate_first_phase=True)
    assert [r["phase"] for r in rows[1:]] == [0, 0, 1, 1]
    lr = stores[1]["train"]["lr"]
    assert [r["lr"] for r in rows[1:]] == pytest.approx([lr, 0.1 * lr, 0.01 * lr, 0.001 * lr])


def test_cascaded_training_has_no_output_until_its_last_phase(stores, tmp_path):
    rows, _ = run_train(stores, tmp_path, epochs=1, cascaded=True, prune=True)
    assert [r["phase"] for r in rows[1:]] == [0, 1, 2, 3]
    assert all(np.isnan(r["val_dice"]) for r in rows[1:4]) and np.isfinite(rows[4]["val_dice"])
    assert torch.load(tmp_path / "model.pt", weights_only=True)["epoch"] == 4


def test_one_network_trains_on_several_stores(stores, tmp_path):
    root, cfg = stores
    tcfg = {**cfg["train"], "width": 4, "epochs": 1}
    rows, _ = train([root / "sparse.zarr"] * 2, [root / "target.zarr"] * 2, tmp_path / "model.pt", tcfg, seed=0, progress=False)
    assert np.isfinite(rows[1]["train_loss"])


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


def test_dense_twin_trains_and_predicts(stores, tmp_path):
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
    infer = ["infer", "--quiet", None, root / "sparse.zarr", tmp_path / "p.zarr"]
    ckpt = torch.load(tmp_path / "model.pt", weights_only=True)
    old = {k: v for k, v in ckpt.items() if k != "architecture"}  # the old compact network's checkpoints had no such key
    torch.save(old, tmp_path / "old.pt")
    _one_line_error(capsys, [*infer[:2], tmp_path / "old.pt", *infer[3:]], "not this network")
    other = {**ckpt, "spec": {**ckpt["spec"], "dims": 3}}
    torch.save(other, tmp_path / "other.pt")
    _one_line_error(capsys, [*infer[:2], tmp_path / "other.pt", *infer[3:]], "weights do not fit")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    _one_line_error(capsys, [*infer[:2], tmp_path / "junk.pt", *infer[3:]], "junk.pt")
    assert not (tmp_path / "p.zarr").exists()


def test_store_with_wrong_channels_or_block_sizes_is_rejected(stores, tmp_path, capsys):
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
    odd = {**sparse.attrs, "block_shape": [100, *sparse.attrs["block_shape"][1:]]}
    for name in ("odd.zarr", "odd-target.zarr"):
        kind = "sparse" if name == "odd.zarr" else "target"
        with CooWriter(tmp_path / name, 3, 2 if name == "odd.zarr" else 1, {**odd, "factor": 8}, kind=kind) as w:
            for origin in sparse.origin[:4]:
                w.append(np.zeros((1, 3)), np.zeros((1, 2 if name == "odd.zarr" else 1)), origin)
    argv = ["train", "--quiet", tmp_path / "odd.zarr", tmp_path / "odd-target.zarr", tmp_path / "m" / "model.pt"]
    _one_line_error(capsys, argv, "multiple of 128")
    assert not (tmp_path / "m").exists() and not (tmp_path / "p.zarr").exists()


def test_three_d_network_trains_and_predicts_with_4d_convolutions(tmp_path):
    cfg = load_config(
        overrides=[
            "bubbles.n_frames=512",
            "bubbles.concentration=20",
            "sparse.block_frames=128",
            "train.epochs=1",
            "train.width=4",
        ]
    )
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


def test_reference_targets_are_the_rounded_positions_of_each_frame(stores, tmp_path):
    root, cfg = stores
    make_targets(
        root / "tracks.zarr",
        root / "iq.zarr",
        tmp_path / "positions.zarr",
        {**cfg["sparse"], "target": "positions"},
        progress=False,
    )
    positions, paths = CooStore(tmp_path / "positions.zarr", "target"), CooStore(root / "target.zarr", "target")
    n_pos = sum(len(positions.block(b)[0]) for b in range(len(positions)))
    n_path = sum(len(paths.block(b)[0]) for b in range(len(paths)))
    assert 0 < n_pos < n_path  # points, not the segments between them
    for b in range(len(positions)):
        pos_sites = {tuple(r) for r in positions.block(b)[0].tolist()}
        assert pos_sites <= {tuple(r) for r in paths.block(b)[0].tolist()}  # every point lies on its path


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
