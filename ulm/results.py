"""The per-run results files and the statistics over them (ground floor: `ulm metrics` writes them,
`ulm summary` and `ulm claims` read them): checked reading of ``metrics.json`` (and other JSON objects),
and the jackknife confidence interval of a statistic from its leave-one-out replicates."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from ulm.errors import UlmError


def read_json_object(path: str | Path, what: str, required: tuple[str, ...] = ()) -> dict:
    """A JSON file holding one object with the ``required`` keys; else one UlmError naming ``what`` and ``path``."""
    path = Path(path)
    if not path.is_file():
        raise UlmError(f"{what} {path}: not found")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        reason = f" ({exc.msg} at line {exc.lineno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise UlmError(f"{what} {path}: not valid JSON{reason}") from None
    if not isinstance(data, dict):
        raise UlmError(f"{what} {path}: expected a JSON object, got {type(data).__name__}")
    missing = [k for k in required if k not in data]
    if missing:
        raise UlmError(f"{what} {path}: missing key(s) {missing}")
    return data


def read_table(path: str | Path, what: str, columns: dict[str, type]) -> list[dict]:
    """The rows of a CSV table with a header holding ``columns`` (name -> float, int or str), each value
    converted (float: NaN allowed); else one UlmError naming ``what``, ``path`` and the row or column."""
    path = Path(path)
    if not path.is_file():
        raise UlmError(f"{what} {path}: not found")
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
            header = rows[0].keys() if rows else []
    except (UnicodeDecodeError, csv.Error) as exc:
        raise UlmError(f"{what} {path}: not a CSV text table ({type(exc).__name__})") from None
    missing = [c for c in columns if c not in header]
    if missing:
        raise UlmError(f"{what} {path}: missing column(s) {missing}" + ("" if rows else " (no rows)"))
    for i, row in enumerate(rows, start=1):
        for name, kind in columns.items():
            try:
                row[name] = kind(row[name])
            except (TypeError, ValueError):
                raise UlmError(f"{what} {path}: row {i}, column {name}: {row[name]!r} is not {kind.__name__}") from None
    return rows


def _is_number(value, finite: bool = True) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and (not finite or np.isfinite(value))


def read_metrics_file(path: str | Path, required: tuple[str, ...] = ()) -> dict:
    """A ``metrics.json`` of `ulm metrics`, checked: an object with the ``required`` keys whose ``label`` and
    ``reference`` are text, ``dice`` finite numbers per method, ``dice_loo`` lists of numbers (NaN or null
    where a replicate is undefined) and ``tolerant`` objects per method."""
    m = read_json_object(path, "metrics file", required)
    for key in ("label", "reference"):
        if key in m and not isinstance(m[key], str):
            raise UlmError(f"metrics file {path}: key {key} must be text, got {m[key]!r}")
    for key, ok, expected in (
        ("dice", lambda v: _is_number(v), "a finite number"),
        ("dice_loo", lambda v: isinstance(v, list) and all(x is None or _is_number(x, False) for x in v), "a list of numbers"),
        ("tolerant", lambda v: isinstance(v, dict), "an object"),
    ):
        if key not in m:
            continue
        if not isinstance(m[key], dict):
            raise UlmError(f"metrics file {path}: key {key} must be an object (method -> value), got {type(m[key]).__name__}")
        bad = [name for name, value in m[key].items() if not ok(value)]
        if bad:
            raise UlmError(f"metrics file {path}: key {key}.{bad[0]} must be {expected}, got {m[key][bad[0]]!r}")
    return m


def jackknife_interval(replicates, z: float = 1.96) -> float | None:
    """Half-width of the ~95 % confidence interval of a statistic from its leave-one-out replicates:
    z x sqrt((n - 1) / n x sum (r_i - mean)^2); None with fewer than 2 finite replicates."""
    r = np.asarray([x for x in replicates if x is not None and np.isfinite(x)], float)
    if len(r) < 2:
        return None
    return float(z * np.sqrt((len(r) - 1) / len(r) * np.sum((r - r.mean()) ** 2)))
