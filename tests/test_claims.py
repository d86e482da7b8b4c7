"""The claims check: verdicts follow the figures of their own row, scores that forgive one pixel, the
leave-one-block-out intervals, and the per-block maps that density stores carry for them."""

import csv
import itertools
import json

import numpy as np
import pytest

from ulm import claims
from ulm.cli import main
from ulm.config import network_map_name, parse_network_map_name, sweep_point, validate_config
from ulm.errors import UlmError
from ulm.metrics import dice, leave_one_block_out_dice, tolerant_scores
from ulm.results import jackknife_interval
from ulm.store import read_density, write_density

SPARSE, DENSE = network_map_name("sparse"), network_map_name("dense")


def _run(scores: dict[str, float], n_blocks: int = 8, spread: float = 0.02, seed: int = 0) -> dict:
    """A metrics.json-like run: each method's Dice, leave-one-out replicates around it, tolerant Dice."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, spread, n_blocks)  # shared between methods: paired replicates
    return {
        "dice": dict(scores),
        "dice_loo": {k: list(v + noise + rng.normal(0, spread / 4, n_blocks)) for k, v in scores.items()},
        "tolerant": {k: {"dice_tolerant": min(1.0, v + 0.2)} for k, v in scores.items()},
    }


def _runs(conventional_top: float = 0.30) -> dict:
    net = {
        SPARSE: 0.55,
        DENSE: 0.57,
        "conventional": 0.60,
        "trivial": 0.20,
        network_map_name("sparse", "pruning"): 0.50,
        network_map_name("sparse", "deep_supervision"): 0.56,
        network_map_name("sparse", method="topk"): 0.50,
        network_map_name("sparse", method="threshold-0.03"): 0.58,
        network_map_name("sparse", method="threshold-0.3"): 0.35,
        network_map_name("sparse", method="learned"): 0.53,
    }
    top = {**net, "conventional": conventional_top}
    return {
        (2, 1): _run(net),
        (2, 20): _run(top, seed=1),
        (3, 1): _run({SPARSE: 0.2, "conventional": 0.4, "trivial": 0.1}),
        (3, 30): _run({SPARSE: 0.3, "conventional": 0.05, "trivial": 0.1}, seed=2),
    }


KEPT = {
    (2, 20, "threshold"): 0.05,
    (2, 20, "topk"): 0.02,
    (2, 20, "threshold-0.03"): 0.12,
    (2, 20, "threshold-0.3"): 0.01,
    (2, 20, "learned"): 0.08,
}
MEMORY = {"ratio_2d": 3.3, "ratio_3d": 18.8, "ratio_3d_pruned": 142.0, "ratio_eq1_2d": 3.4}


def _by_claim(rows):
    return {(r["claim"], r["dims"]): r for r in rows}


def test_claims_rows_and_verdicts():
    rows = _by_claim(claims.claims_table(_runs(), MEMORY, KEPT, "threshold"))
    assert set(rows) == {
        ("0", 2),
        ("0", 3),
        ("1a", 2),
        ("1b", 2),
        ("2a", 3),
        ("2b", 3),
        ("3a", 2),
        ("3b", 3),
        ("4a", 2),
        ("4b", 2),
        ("5", 2),
    }
    assert rows["3a", 2]["verdict"] == "holds" and rows["3a", 2]["concentration"] == 20
    assert rows["3a", 2]["difference"] == pytest.approx(0.25) and rows["3a", 2]["ci95_low"] > 0
    assert rows["1a", 2]["verdict"] == "holds" and rows["1a", 2]["difference"] == pytest.approx(0.02)
    assert rows["1b", 2]["verdict"] == "holds" and rows["2a", 3]["verdict"] == "does not hold"  # 18.8 < 75
    assert rows["2b", 3]["verdict"] == "holds"
    assert rows["4a", 2]["verdict"] == "holds"  # Dice rises with the kept fraction in KEPT
    assert rows["4b", 2]["distance"] == pytest.approx(0.02) and rows["4b", 2]["verdict"] == "holds"
    assert rows["5", 2]["a"] == network_map_name("sparse", "deep_supervision") and rows["5", 2]["verdict"] == "holds"


def test_a_verdict_flips_with_its_figures():
    assert _by_claim(claims.claims_table(_runs(conventional_top=0.70)))["3a", 2]["verdict"] == "does not hold"
    runs = _runs()
    runs[2, 1]["dice"][DENSE] = 0.70  # a drop of 0.15 at 1 MB decides claim 1a
    assert _by_claim(claims.claims_table(runs))["1a", 2]["verdict"] == "does not hold"


def test_claims_csv_verdicts_recomputed_from_the_row(tmp_path):
    path = tmp_path / "claims.csv"
    claims.write_claims(claims.claims_table(_runs(), MEMORY, KEPT, "threshold"), path)
    rows = list(csv.DictReader(path.read_text().splitlines()))
    assert all(claims.verdict(r) == r["verdict"] for r in rows)
    row = next(r for r in rows if r["claim"] == "3a")
    assert row["verdict"] == "holds"
    row["ci95_low"] = "-0.01"  # break the deciding figure: the verdict follows
    assert claims.verdict(row) == "does not hold"
    memory = next(r for r in rows if r["claim"] == "1b")
    memory["ratio"] = "1.2"
    assert claims.verdict(memory) == "does not hold"
    assert claims.verdict({**row, "ci95_low": ""}) == "does not hold"  # no figure, no claim


def test_a_difference_within_noise_is_not_a_win():
    runs = _runs(conventional_top=0.54)  # 0.01 better, replicates spread 0.02 (+ 0.005 unpaired)
    runs[2, 20]["dice_loo"]["conventional"] = list(
        np.array(runs[2, 20]["dice_loo"]["conventional"]) + np.random.default_rng(5).normal(0, 0.05, 8)
    )
    row = _by_claim(claims.claims_table(runs))["3a", 2]
    assert row["difference"] > 0 and row["ci95_low"] < 0 and row["verdict"] == "does not hold"


def test_tolerant_scores_forgive_one_pixel_not_a_blob():
    truth = np.zeros((20, 20))
    truth[10, 2:18] = 1
    shifted = np.roll(truth, 1, axis=0)
    assert dice(shifted, truth) == 0.0
    assert tolerant_scores(shifted, truth) == {"dice_tolerant": 1.0, "precision_tolerant": 1.0, "recall_tolerant": 1.0}
    blob = tolerant_scores(np.ones((20, 20)), truth)
    assert blob["recall_tolerant"] == 1.0 and blob["precision_tolerant"] == pytest.approx(
        54 / 400
    )  # the 3 x 18 pixels around the line
    assert blob["dice_tolerant"] == pytest.approx((54 + 16) / (400 + 16))


def test_leave_one_block_out_dice_matches_brute_force():
    rng = np.random.default_rng(3)
    size = 50
    a = [np.unique(rng.integers(0, size, 8)) for _ in range(5)]
    b = [np.unique(rng.integers(0, size, 8)) for _ in range(5)]

    def accumulated(blocks):
        m = np.zeros(size)
        for blk in blocks:
            m[blk] = 1
        return m

    brute = [dice(accumulated(a[:i] + a[i + 1 :]), accumulated(b[:i] + b[i + 1 :])) for i in range(5)]
    assert leave_one_block_out_dice(a, b, size) == pytest.approx(brute)
    with pytest.raises(UlmError, match="blocks"):
        leave_one_block_out_dice(a, b[:4], size)


def test_jackknife_interval_of_a_mean_is_the_standard_error():
    x = np.random.default_rng(0).normal(size=30)
    replicates = [(x.sum() - xi) / (len(x) - 1) for xi in x]  # leave-one-out means
    sem = x.std(ddof=1) / np.sqrt(len(x))
    assert jackknife_interval(replicates) == pytest.approx(1.96 * sem)
    assert jackknife_interval([0.5]) is None


def test_density_store_keeps_its_blocks(tmp_path):
    attrs = {"origin_um": [0, 0], "spacing_um": [1, 1], "factor": 8, "method": "m"}
    blocks = [np.array([0, 5]), np.array([], np.int64), np.array([5, 99])]
    write_density(tmp_path / "m.zarr", np.zeros((10, 10)), attrs, blocks)
    back = read_density(tmp_path / "m.zarr").blocks
    assert [b.tolist() for b in back] == [[0, 5], [], [5, 99]]
    write_density(tmp_path / "bad.zarr", np.zeros((10, 10)), attrs, [np.array([100])])  # outside the 10 x 10 map
    with pytest.raises(UlmError, match="block_sites"):
        read_density(tmp_path / "bad.zarr")
    assert (
        read_density(tmp_path / "plain.zarr").blocks is None
        if write_density(tmp_path / "plain.zarr", np.zeros((4, 4)), attrs) is None
        else False
    )


def test_network_map_names_round_trip():
    for model, variant, method in itertools.product(
        ["sparse", "dense"], ["full", "pruning", "cascaded"], [None, "topk", "threshold-0.05"]
    ):
        name = network_map_name(model, variant, method)
        assert parse_network_map_name(name) == {"model": model, "variant": variant, "method": method}
    assert parse_network_map_name("conventional") is None
    assert sweep_point("threshold-0.05") == ("threshold", {"tau": 0.05}) and sweep_point("topk-300") == ("topk", {"topk_k": 300})


def test_config_3d_overrides_and_sweep_are_validated():
    cfg = validate_config({"overrides_3d": {"train": {"width": 4}}, "train": {"sweep": ["topk-300", "threshold-0.3"]}})
    assert cfg["overrides_3d"]["train"] == {"width": 4}
    with pytest.raises(UlmError, match=r"overrides_3d\.train\.width"):
        validate_config({"overrides_3d": {"train": {"width": 3}}})
    with pytest.raises(UlmError, match="train.sweep"):
        validate_config({"train": {"sweep": ["topk-"]}})


def test_claims_cli(tmp_path, capsys):
    paths = []
    for (d, c), run in _runs().items():
        path = tmp_path / f"{d}d-c{c}.json"
        path.write_text(json.dumps({"label": f"{d}d/c{c}", **run}))
        paths.append(str(path))
    (tmp_path / "memory.json").write_text(json.dumps(MEMORY))
    out = tmp_path / "claims.csv"
    assert (
        main(
            [
                "claims",
                "--memory",
                str(tmp_path / "memory.json"),
                "--ablation-plot",
                str(tmp_path / "ablation.png"),
                "--",
                *paths,
                str(out),
            ]
        )
        == 0
    )
    assert (tmp_path / "ablation.png").stat().st_size > 0
    assert "claim 3a (2D): holds" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"label": "c20"}))
    assert main(["claims", str(bad), str(tmp_path / "other.csv")]) == 2
    assert "is not <dims>d/c<concentration>" in capsys.readouterr().err
    assert not (tmp_path / "other.csv").exists()
