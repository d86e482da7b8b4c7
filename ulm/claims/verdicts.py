"""The paper's claims, checked on a run: one row per claim with the figures that
decide it and a verdict computed from those figures by the row's own rule.

Rules, fixed before any result was seen (a rule reads fields of its own row, see :func:`verdict`):

- "beats": the paired difference of Dice (a - b, the paper's Dice: no tolerance) at the highest test
  concentration has a 95 % jackknife confidence interval (leave one test block out) above 0;
- "small drop" (claim 1a): the dense twin's Dice exceeds the sparse network's by at most 0.05 at every
  test concentration (the largest drop decides);
- "about N x less memory": the measured (or fitted) dense / sparse peak ratio is at least 0.75 N;
- trade-off (claim 4a): Dice rises with the fraction of sites kept (Spearman rank correlation > 0 over the
  sweep's operating points at the highest concentration); 4b: the learned mask within 0.05 of thresholding;
- ablations (claim 5): no variant gains more than 0.05 Dice over the headline network (limited benefit).

Every row also carries the tolerant Dice (one-pixel tolerance, :func:`ulm.metrics.tolerant_scores`) of
the methods it compares, so that a network that paints a blob is seen for what it is.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from ulm.config import ABLATIONS, network_map_name, parse_network_map_name
from ulm.errors import UlmError
from ulm.results import jackknife_interval, read_json_object, read_metrics_file, read_table
from ulm.store import write_csv

SPARSE, DENSE, CONVENTIONAL, TRIVIAL = network_map_name("sparse"), network_map_name("dense"), "conventional", "trivial"
MARGIN = 0.05  # Dice: a "small drop", "comparable", "limited benefit"
MEMORY_CLAIMS = {2: 2.0, 3: 100.0}  # the paper's dense / sparse memory ratios
MEMORY_SLACK = 0.75  # "about N x": at least 0.75 N
COLUMNS = [
    "claim",
    "dims",
    "concentration",
    "statement",
    "a",
    "b",
    "dice_a",
    "dice_b",
    "difference",
    "ci95_low",
    "ci95_high",
    "tolerant_a",
    "tolerant_b",
    "ratio",
    "rule",
    "verdict",
    "detail",
]
_LABEL = re.compile(r"^([23])d/c(\d+)$")
_RULE = re.compile(r"^(\w+) (>|>=|<=) (-?[0-9.]+)$")


def verdict(row: dict) -> str:
    """``holds`` / ``does not hold`` from the row's ``rule`` ("<field> <op> <number>") and that field of
    the row; ``does not hold`` when the field is missing (no figure, no claim)."""
    match = _RULE.match(row["rule"])
    if not match:
        raise UlmError(f"claims: rule {row['rule']!r} is not '<field> <op> <number>'")
    value = row.get(match[1])
    if value is None or value == "" or not math.isfinite(float(value)):
        return "does not hold"
    value, target = float(value), float(match[3])
    ok = {">": value > target, ">=": value >= target, "<=": value <= target}[match[2]]
    return "holds" if ok else "does not hold"


def read_runs(paths: list[str | Path]) -> dict[tuple[int, int], dict]:
    """(dims, concentration) -> metrics.json of that test run (labelled ``<d>d/c<c>`` by `ulm metrics`)."""
    runs = {}
    for path in map(Path, paths):
        m = read_metrics_file(path, ("label",))
        match = _LABEL.match(m["label"])
        if not match:
            raise UlmError(f"metrics file {path}: label {m.get('label')!r} is not <dims>d/c<concentration>")
        if "dice" not in m:
            raise UlmError(f"metrics file {path}: missing key(s) ['dice'] (scores of the density maps)")
        key = int(match[1]), int(match[2])
        if key in runs:
            raise UlmError(f"metrics file {path}: scores the run {m['label']} that {runs[key]['path']} scores too")
        runs[key] = {**m, "path": str(path)}
    return runs


MEMORY_KEYS = ("ratio_2d", "ratio_3d", "ratio_3d_pruned")


def read_memory(path: str | Path) -> dict:
    """``memory.json`` of the memory study (benchmarks/memory.py --out), checked: a JSON object with at least one
    of ratio_2d / ratio_3d, and every dense / sparse ratio that the claims read a positive finite number."""
    memory = read_json_object(path, "memory file")
    if not any(k in memory for k in MEMORY_KEYS[:2]):
        raise UlmError(f"memory file {path}: missing key ratio_2d or ratio_3d (dense / sparse peak memory)")
    for key in MEMORY_KEYS + tuple(k.replace("ratio_", "ratio_eq1_") for k in MEMORY_KEYS):
        value = memory.get(key)
        if key in memory and not (
            isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
        ):
            raise UlmError(f"memory file {path}: key {key} must be a positive finite number, got {value!r}")
    return memory


def _difference(run: dict, a: str, b: str) -> dict:
    """Dice of a and b, a - b with its jackknife 95 % interval, and their tolerant Dice (None where missing)."""
    dice, loo, tol = run.get("dice", {}), run.get("dice_loo", {}), run.get("tolerant", {})
    out = {
        "a": a,
        "b": b,
        "dice_a": dice.get(a),
        "dice_b": dice.get(b),
        "tolerant_a": tol.get(a, {}).get("dice_tolerant"),
        "tolerant_b": tol.get(b, {}).get("dice_tolerant"),
    }
    if out["dice_a"] is None or out["dice_b"] is None:
        return out
    out["difference"] = out["dice_a"] - out["dice_b"]
    half = jackknife_interval(np.subtract(loo[a], loo[b])) if a in loo and b in loo else None
    if half is not None:
        out["ci95_low"], out["ci95_high"] = out["difference"] - half, out["difference"] + half
    return out


def _row(claim: str, dims: int | None, c: int | None, statement: str, rule: str, **figures) -> dict:
    row = {"claim": claim, "dims": dims, "concentration": c, "statement": statement, "rule": rule, **figures}
    row["verdict"] = verdict(row)
    return row


def _beats(claim: str, runs: dict, dims: int, a: str, b: str, statement: str) -> dict | None:
    top = max((c for d, c in runs if d == dims), default=None)
    if top is None or a not in runs[dims, top].get("dice", {}) or b not in runs[dims, top].get("dice", {}):
        return None
    return _row(claim, dims, top, statement, "ci95_low > 0", **_difference(runs[dims, top], a, b))


def memory_rows(memory: dict | None) -> list[dict]:
    """Claims 1b, 2a, 2b: dense / sparse peak memory of a training step (benchmarks/memory.py's summary)."""
    if memory is None:
        return []
    rows = []
    for claim, dims, key, what in (
        ("1b", 2, "ratio_2d", "headline"),
        ("2a", 3, "ratio_3d", "headline"),
        ("2b", 3, "ratio_3d_pruned", "pruning variant"),
    ):
        if key in memory:
            target = MEMORY_SLACK * MEMORY_CLAIMS[dims]
            rows.append(
                _row(
                    claim,
                    dims,
                    None,
                    f"{dims}D: the sparse network ({what}) needs about {MEMORY_CLAIMS[dims]:g}x less memory "
                    "than its dense twin (one training step, the paper's block)",
                    f"ratio >= {target:g}",
                    a=f"sparse {what}",
                    b="dense twin",
                    ratio=memory[key],
                    detail=f"Eq. 1 predicts {memory.get(key.replace('ratio_', 'ratio_eq1_'), float('nan')):.3g}x",
                )
            )
    return rows


def dense_rows(runs: dict) -> list[dict]:
    """Claim 1a: the 2D sparse network within a small Dice drop of its dense twin, at every concentration."""
    points = sorted((c, _difference(m, DENSE, SPARSE)) for (d, c), m in runs.items() if d == 2 and DENSE in m.get("dice", {}))
    if not points:
        return []
    c_worst, worst = max(points, key=lambda p: p[1]["difference"])
    detail = "; ".join(f"c{c}: dense {p['dice_a']:.3f} sparse {p['dice_b']:.3f}" for c, p in points)
    return [
        _row(
            "1a",
            2,
            c_worst,
            f"2D: the sparse network's Dice is within {MARGIN} of its dense twin's (largest drop over the test concentrations)",
            f"difference <= {MARGIN}",
            **worst,
            detail=detail,
        )
    ]


def tradeoff_rows(runs: dict, kept: dict[tuple[int, int, str], float], headline_input: str) -> list[dict]:
    """Claims 4a / 4b from the sweep networks at the highest 2D concentration (``kept``: (dims, c, input
    label) -> fraction of sites kept on the test data; ``headline_input``: the headline network's input label)."""
    rows = []
    for dims in sorted({d for d, _ in runs}):
        top = max(c for d, c in runs if d == dims)
        points = dice_vs_kept(runs[dims, top], kept, dims, top, headline_input)
        swept = [p for p in points if p["method"] in ("threshold", "topk")]
        if len(swept) >= 3:
            rho = _spearman([p["kept"] for p in swept], [p["dice"] for p in swept])
            detail = "; ".join(f"{p['label']}: kept {p['kept']:.4f} Dice {p['dice']:.3f}" for p in points)
            rows.append(
                _row(
                    "4a",
                    dims,
                    top,
                    f"{dims}D: a sparser input loses information: Dice rises with the fraction of "
                    "sites kept (threshold and top-k sweeps; Spearman correlation)",
                    "ratio > 0",
                    ratio=rho,
                    a="Dice",
                    b="kept fraction",
                    detail=detail,
                )
            )
        by_label = {p["label"]: p for p in points}
        if "learned" in by_label and "threshold" in by_label:
            diff = _difference(runs[dims, top], by_label["learned"]["map"], by_label["threshold"]["map"])
            rows.append(
                _row(
                    "4b",
                    dims,
                    top,
                    f"{dims}D: the learned mask is within {MARGIN} of thresholding (Dice of the "
                    "network trained and scored on each input)",
                    f"distance <= {MARGIN}",
                    distance=abs(diff.get("difference", float("nan"))),
                    **diff,
                )
            )
    return rows


def dice_vs_kept(run: dict, kept: dict, dims: int, c: int, headline_input: str) -> list[dict]:
    """The sweep's points at one run: label, method, kept fraction, Dice and map name of each network
    trained and scored on one sparsification (the headline network is the configured first method)."""
    points = []
    for name, value in run.get("dice", {}).items():
        parsed = parse_network_map_name(name)
        if parsed is None or parsed["model"] != "sparse" or parsed["variant"] != "full":
            continue
        label = parsed["method"] or headline_input
        if (dims, c, label) in kept:
            points.append(
                {"label": label, "method": label.partition("-")[0], "kept": kept[dims, c, label], "dice": value, "map": name}
            )
    return sorted(points, key=lambda p: p["kept"])


def ablation_rows(runs: dict) -> list[dict]:
    """Claim 5, per dimensionality at its highest concentration: no variant gains more than MARGIN."""
    rows = []
    for dims in sorted({d for d, _ in runs}):
        top = max(c for d, c in runs if d == dims)
        run = runs[dims, top]
        gains = {v: _difference(run, network_map_name("sparse", v), SPARSE) for v in ABLATIONS}
        gains = {v: g for v, g in gains.items() if g.get("difference") is not None}
        if not gains:
            continue
        best = max(gains, key=lambda v: gains[v]["difference"])
        detail = "; ".join(f"{v}: {g['dice_a']:.3f} ({g['difference']:+.3f})" for v, g in gains.items())
        rows.append(
            _row(
                "5",
                dims,
                top,
                f"{dims}D: pruning, deep supervision and cascaded training bring limited benefit "
                f"(no variant gains more than {MARGIN} Dice over the headline network)",
                f"difference <= {MARGIN}",
                **gains[best],
                detail=f"headline {gains[best]['dice_b']:.3f}; {detail}",
            )
        )
    return rows


def claims_table(
    runs: dict, memory: dict | None = None, kept: dict | None = None, headline_input: str = "threshold"
) -> list[dict]:
    """Every row: 0 (prerequisite: the networks beat the trivial predictor), 1a/1b, 2a/2b, 3a/3b, 4a/4b, 5."""
    rows = []
    for dims in (2, 3):
        rows.append(
            _beats(
                "0",
                runs,
                dims,
                SPARSE,
                TRIVIAL,
                f"{dims}D: the sparse network beats the trivial predictor (its input upsampled) at the highest concentration",
            )
        )
    rows += dense_rows(runs) + memory_rows(memory)
    for claim, dims in (("3a", 2), ("3b", 3)):
        rows.append(
            _beats(
                claim,
                runs,
                dims,
                SPARSE,
                CONVENTIONAL,
                f"{dims}D: at the highest concentration the sparse network beats conventional ULM",
            )
        )
    rows += tradeoff_rows(runs, kept or {}, headline_input) + ablation_rows(runs)
    rows = [r for r in rows if r is not None]
    return sorted(rows, key=lambda r: (r["claim"], r["dims"] or 0))


def write_claims(rows: list[dict], path: str | Path) -> None:
    """claims.csv: COLUMNS, floats to 4 significant digits."""

    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else ("" if v is None else v)

    if not rows:
        raise UlmError("claims: no claim can be checked from these metrics files (each needs the maps it compares)")
    columns = COLUMNS + ["distance"]
    write_csv(path, ({k: fmt(r.get(k)) for k in columns} for r in rows), columns, extrasaction="ignore")


def read_kept(csv_paths: list[str | Path]) -> dict[tuple[int, int, str], float]:
    """(dims, c, input label) -> kept fraction of the configured point, from the test split's
    ``<d>d/c<c>/sparse-<label>.csv`` trade-off tables."""
    kept = {}
    for path in map(Path, csv_paths):
        match = re.match(r"^([23])d$", path.parent.parent.name), re.match(r"^c(\d+)$", path.parent.name)
        if not all(match) or not path.name.startswith("sparse-"):
            raise UlmError(f"trade-off table {path}: expected .../<d>d/c<c>/sparse-<input>.csv")
        rows = read_table(path, "trade-off table", {"configured": str, "kept_fraction": float})
        configured = [r for r in rows if r["configured"] == "True"]
        if configured:
            kept[int(match[0][1]), int(match[1][1]), path.stem.removeprefix("sparse-")] = configured[0]["kept_fraction"]
    return kept


def _spearman(x: list[float], y: list[float]) -> float:
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    if np.std(rx) == 0 or np.std(ry) == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])
