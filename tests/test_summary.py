"""The grid's tables and figures from per-run metrics.json files and trade-off tables."""

import csv
import json
from pathlib import Path

import pytest

from ulm.errors import UlmError
from ulm.summary import ablation_table, plot_dice_vs_concentration, plot_tradeoff, summary_table


def write_metrics(folder: Path, label: str, dice: dict) -> Path:
    path = folder / label.replace("/", "_") / "metrics.json"  # a folder that names no run: the fields do
    path.parent.mkdir(parents=True)
    loc = {"precision": 0.9, "recall": 0.8, "jaccard": 0.7, "rmse_um": 5.0}
    path.write_text(json.dumps({"label": label, "reference": "ground_truth", "dice": dice, "localization": loc}))
    return path


RUNS = [{"dims": 2, "concentration": 2}, {"dims": 2, "concentration": 20}]


@pytest.fixture
def grid(tmp_path) -> list[Path]:
    low = {"conventional": 0.8, "network_sparse_cnn": 0.6}
    high = {"conventional": 0.5, "network_sparse_cnn": 0.55}
    high |= {"network_sparse_pruning_cnn": 0.52, "network_sparse_cascaded_cnn": 0.58}
    return [write_metrics(tmp_path, "low", low), write_metrics(tmp_path, "high", high)]


def read(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_summary_table_has_a_row_per_run_and_method(grid, tmp_path):
    rows = summary_table(grid, tmp_path / "m.csv", RUNS)
    assert len(rows) == 6
    table = read(tmp_path / "m.csv")
    assert {(r["run"], r["method"]) for r in table} >= {("2d/c2", "conventional"), ("2d/c20", "network_sparse_cascaded_cnn")}
    assert [r["recall"] for r in table if r["method"] == "conventional"] == ["0.8", "0.8"]


def test_ablation_table_compares_each_variant_with_the_full_training(grid, tmp_path):
    rows = ablation_table(grid, tmp_path / "a.csv", RUNS)
    by_variant = {r["variant"]: r for r in rows}
    assert set(by_variant) == {"full", "pruning", "cascaded", "conventional"}  # only the run with ablations
    assert by_variant["pruning"]["dice_minus_full"] == pytest.approx(-0.03)
    assert by_variant["cascaded"]["change"] == "train.cascaded = true, train.prune = true"
    assert {r["concentration"] for r in rows} == {20}


def test_figures_are_written_and_empty_input_is_one_clear_error(grid, tmp_path):
    plot_dice_vs_concentration(grid, tmp_path / "dice.png", RUNS)
    assert (tmp_path / "dice.png").stat().st_size > 10_000
    table = tmp_path / "2d" / "c2" / "sparse-threshold.csv"
    table.parent.mkdir(parents=True)
    rows = [("0.5", "0.01", "0.3"), ("0.1", "0.05", "0.9"), ("0.01", "0.2", "1.0")]
    lines = ["method,parameter,kept_fraction,mb_fraction,configured"]
    lines += [f"threshold,{p},{k},{m},{p == '0.1'}" for p, k, m in rows]
    table.write_text("\n".join(lines) + "\n")
    plot_tradeoff([table], tmp_path / "tradeoff.png")
    assert (tmp_path / "tradeoff.png").stat().st_size > 10_000
    with pytest.raises(UlmError, match="not found"):
        plot_tradeoff([tmp_path / "missing.csv"], tmp_path / "t2.png")
    with pytest.raises(UlmError, match="no metrics with their dims and concentration"):
        plot_dice_vs_concentration([write_metrics(tmp_path, "odd", {"conventional": 0.5})], tmp_path / "d2.png")


def test_ablation_table_adds_training_time_and_validation_dice(grid, tmp_path):
    logs, nets = [], []
    for variant, seconds in (("full", [0.0, 1.0, 2.0]), ("pruning", [0.0, 3.0, 4.0])):
        log = tmp_path / "train" / f"net-{len(logs)}" / "metrics.csv"  # the path names no network: the fields do
        log.parent.mkdir(parents=True)
        nets.append({"dims": 2, "variant": variant})
        rows = [f"{e},0.01,0.5,0.5,{0.1 * e},{s}" for e, s in enumerate(seconds)]
        log.write_text("\n".join(["epoch,lr,train_loss,val_loss,val_dice,seconds", *rows]) + "\n")
        logs.append(log)
    by_variant = {r["variant"]: r for r in ablation_table(grid, tmp_path / "a.csv", RUNS, logs, nets)}
    assert by_variant["full"]["train_seconds"] == 3.0 and by_variant["pruning"]["train_seconds"] == 7.0
    assert by_variant["pruning"]["best_val_dice"] == pytest.approx(0.2)
    assert "train_seconds" not in by_variant["cascaded"]  # no log given: the cells stay empty
    with pytest.raises(UlmError, match="1 networks described for 2 training logs"):
        ablation_table(grid, tmp_path / "b.csv", RUNS, logs, nets[:1])


def test_the_cli_reads_what_each_file_scores_from_its_fields(grid, tmp_path):
    from ulm.cli import main

    args = ["summary", "--run", "dims=2", "concentration=2", "--run", "dims=2", "concentration=20"]
    assert main([*args, "--dice-plot", str(tmp_path / "d.png"), "--", *map(str, grid), str(tmp_path / "m.csv")]) == 0
    assert {r["run"] for r in read(tmp_path / "m.csv")} == {"2d/c2", "2d/c20"}
    assert (tmp_path / "d.png").stat().st_size > 10_000
    assert main(["summary", "--run", "dims=2", "--", *map(str, grid), str(tmp_path / "n.csv")]) == 2  # one --run per file
    assert main(["summary", "--run", "dims=two", "--run", "dims=2", "--", *map(str, grid), str(tmp_path / "n.csv")]) == 2
    assert not (tmp_path / "n.csv").exists()
