"""The tables and figures of a whole experiment grid, from the per-run ``metrics.json`` files (stage
`ulm summary`): the metrics table, Dice against concentration per method, the ablation table and the
sparsification trade-off curves of every method.

What each file scores comes with it as fields (``ulm summary --run dims=2 concentration=10`` per
metrics.json, ``--train-run dims=2 variant=pruning`` per training log), never parsed from a path or a
label; a run is shown as ``<dims>d/c<concentration>``. Network maps are named
``network_<model>_cnn`` (the full training) and ``network_sparse_<ablation>_cnn`` (one change each,
see ``train.ablations``).
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from ulm.config import ABLATIONS, network_map_name, parse_network_map_name
from ulm.errors import UlmError
from ulm.results import jackknife_interval, read_metrics_file, read_table
from ulm.store import save_figure, write_csv

ABLATION_CHANGE = {"full": "as configured"} | {
    variant: ", ".join(f"train.{key} = {str(value).lower()}" for key, value in changes.items())
    for variant, changes in ABLATIONS.items()
}
_ABLATION_OF_MAP = {network_map_name("sparse", variant): variant for variant in ABLATIONS}
FIELDS = {"dims": int, "concentration": int, "variant": str}  # the fields a --run or --train-run may give


def parse_fields(groups: list[list[str]], count: int, option: str, files: str) -> list[dict]:
    """``[["dims=2", "concentration=10"], ...]`` (one group per file, in order) -> ``[{dims: 2, concentration:
    10}, ...]``; none at all -> an empty dict per file."""
    if not groups:
        return [{} for _ in range(count)]
    if len(groups) != count:
        raise UlmError(f"summary: {len(groups)} {option} for {count} {files} files (one each, in the same order)")
    out = []
    for group in groups:
        fields = {}
        for item in group:
            key, sep, value = item.partition("=")
            if not sep or key not in FIELDS:
                raise UlmError(f"summary: {option} {item!r}: expected FIELD=VALUE with FIELD one of {sorted(FIELDS)}")
            try:
                fields[key] = FIELDS[key](value)
            except ValueError:
                raise UlmError(f"summary: {option} {item!r}: {key} must be {FIELDS[key].__name__}") from None
        out.append(fields)
    return out


def read_metrics(paths: list[str | Path], runs: list[dict] | None = None) -> list[dict]:
    """The ``metrics.json`` files, each with the ``dims`` and ``concentration`` of its ``runs`` entry (None
    where not given) and a ``label`` ``<dims>d/c<concentration>`` (else the file's own label)."""
    runs = runs or [{} for _ in paths]
    if len(runs) != len(paths):
        raise UlmError(f"summary: {len(runs)} runs described for {len(paths)} metrics files")
    out = []
    for path, run in zip(map(Path, paths), runs, strict=True):
        m = read_metrics_file(path, ("reference",))
        dims, conc = run.get("dims"), run.get("concentration")
        label = f"{dims}d/c{conc}" if dims is not None and conc is not None else m.get("label") or str(path.parent)
        twice = next((o for o in out if o["label"] == label), None)
        if twice is not None:  # the same run twice would be counted twice
            raise UlmError(f"metrics file {path}: scores the run {label} that {twice['path']} scores too")
        out.append({**m, "label": label, "dims": dims, "concentration": conc, "path": path})
    return out


def summary_table(metrics_paths: list[str | Path], out_csv: str | Path, runs: list[dict] | None = None) -> list[dict]:
    """One CSV row per (run, method): Dice (the paper's) with the half-width of its 95 % jackknife interval over
    test blocks, the one-pixel-tolerant Dice / precision / recall of the map, FRC resolution and, for the
    conventional method, localization precision / recall / Jaccard / RMSE (um)."""
    rows = []
    for m in read_metrics(metrics_paths, runs):
        loc = m.get("localization", {})
        for method, value in sorted(m.get("dice", {}).items()):
            frc = m.get("frc", {}).get(f"{method}_vs_{m['reference']}", {})
            tolerant = m.get("tolerant", {}).get(method, {})
            row = {
                "run": m["label"],
                "method": method,
                "dice": value,
                "dice_ci95": jackknife_interval(m.get("dice_loo", {}).get(method, [])),
                **tolerant,
                "frc_resolution_um": frc.get("resolution_um"),
            }
            if method == "conventional":
                row.update({k: loc.get(k) for k in ("precision", "recall", "jaccard", "rmse_um")})
            rows.append(row)
    fields = [
        "run",
        "method",
        "dice",
        "dice_ci95",
        "dice_tolerant",
        "precision_tolerant",
        "recall_tolerant",
        "frc_resolution_um",
        "precision",
        "recall",
        "jaccard",
        "rmse_um",
    ]
    if not rows:
        raise UlmError(f"summary: no Dice score in {len(metrics_paths)} metrics file(s) (did `ulm metrics` find density maps?)")
    write_csv(out_csv, rows, fields)
    return rows


def _is_ablation(method: str) -> bool:
    return method in _ABLATION_OF_MAP


def training_costs(train_metrics: list[str | Path], train_runs: list[dict]) -> dict[tuple[int, str], dict]:
    """(dims, variant) -> training seconds (sum over epochs) and best validation Dice, from the
    ``metrics.csv`` that `ulm train` writes (one network per dimension, scored at every concentration);
    ``train_runs`` gives each log's dims and variant."""
    if len(train_runs) != len(train_metrics):
        raise UlmError(f"summary: {len(train_runs)} networks described for {len(train_metrics)} training logs")
    costs = {}
    for path, run in zip(map(Path, train_metrics), train_runs, strict=True):
        if not {"dims", "variant"} <= set(run):
            raise UlmError(f"training log {path}: expected its dims and variant (--train-run dims=D variant=V)")
        epochs = read_table(path, "training log", {"val_dice": float, "seconds": float})
        dice = [e["val_dice"] for e in epochs if e["val_dice"] == e["val_dice"]]  # NaN: cascaded stage
        costs[run["dims"], run["variant"]] = {
            "train_seconds": round(sum(e["seconds"] for e in epochs), 1),
            "best_val_dice": max(dice, default=float("nan")),
        }
    return costs


def ablation_table(
    metrics_paths: list[str | Path],
    out_csv: str | Path,
    runs: list[dict] | None = None,
    train_metrics: list[str | Path] = (),
    train_runs: list[dict] = (),
) -> list[dict]:
    """Dice on the test data of the sparse network's ablations at every run (each network is trained
    once per dimension and scored at every concentration), next to the full training and conventional ULM;
    with ``train_metrics`` (the networks' training logs) also their training time (s) and best validation
    Dice. Columns: dims,
    concentration, variant, change, dice, dice_minus_full, train_seconds, best_val_dice."""
    costs = training_costs(list(train_metrics), list(train_runs))
    rows = []
    for m in read_metrics(metrics_paths, runs):
        dice = m.get("dice", {})
        variants = {_ABLATION_OF_MAP[k]: v for k, v in dice.items() if _is_ablation(k)}
        if not variants:
            continue
        full = dice.get(network_map_name("sparse"))
        variants = {"full": full, **variants} if full is not None else variants
        for variant, value in variants.items():
            delta = value - full if full is not None else None
            rows.append(
                {
                    "dims": m["dims"],
                    "concentration": m["concentration"],
                    "variant": variant,
                    "change": ABLATION_CHANGE[variant],
                    "dice": value,
                    "dice_minus_full": delta,
                    **costs.get((m["dims"], variant), {}),
                }
            )
        if "conventional" in dice:
            rows.append(
                {
                    "dims": m["dims"],
                    "concentration": m["concentration"],
                    "variant": "conventional",
                    "change": "conventional ULM",
                    "dice": dice["conventional"],
                    "dice_minus_full": None,
                }
            )
    fields = ["dims", "concentration", "variant", "change", "dice", "dice_minus_full", "train_seconds", "best_val_dice"]
    write_csv(out_csv, rows, fields)
    return rows


def plot_dice_vs_concentration(metrics_paths: list[str | Path], path: str | Path, runs: list[dict] | None = None) -> None:
    """Dice against MB concentration, one line per method (ablations left to the ablation table),
    one panel per dimensionality."""
    runs = [m for m in read_metrics(metrics_paths, runs) if m["dims"] is not None and m["concentration"] is not None]
    if not runs:
        raise UlmError("summary: no metrics with their dims and concentration to plot")
    all_dims = sorted({m["dims"] for m in runs})
    fig = Figure(figsize=(5.2 * len(all_dims), 4.0), layout="constrained")
    axes = fig.subplots(1, len(all_dims), squeeze=False)
    for ax, dims in zip(axes[0], all_dims, strict=True):
        per_method: dict[str, list[tuple[int, float, float]]] = {}
        for m in runs:
            if m["dims"] == dims:
                for method, value in m.get("dice", {}).items():
                    parsed = parse_network_map_name(method)
                    if parsed is None or (parsed["variant"] == "full" and parsed["method"] is None):  # no ablation, no sweep
                        half = jackknife_interval(m.get("dice_loo", {}).get(method, [])) or 0.0
                        per_method.setdefault(method, []).append((m["concentration"], value, half))
        for method, points in sorted(per_method.items()):
            points.sort()
            ax.errorbar(
                [p[0] for p in points],
                [p[1] for p in points],
                yerr=[p[2] for p in points],
                fmt="o:" if method == "trivial" else "o-",
                capsize=3,
                label=method.replace("_", " "),
            )
        ax.set(
            xlabel="MB concentration (MBs per frame)",
            ylabel="Dice vs ground truth (95 % jackknife interval)",
            title=f"{dims}D test data",
            ylim=(0, 1),
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, path)


def read_tradeoff(csv_paths: list[str | Path]) -> list[dict]:
    """Rows of the ``sparse-<method>.csv`` trade-off tables, each with the run (dims, concentration)
    parsed from its folder ``<dims>d/c<concentration>``."""
    rows = []
    for path in map(Path, csv_paths):
        dims, conc = path.parent.parent.name, path.parent.name
        columns = {"method": str, "configured": str, "kept_fraction": float, "mb_fraction": float}
        rows += [{**row, "dims": dims, "concentration": conc} for row in read_table(path, "trade-off table", columns)]
    return rows


def plot_tradeoff(csv_paths: list[str | Path], path: str | Path) -> None:
    """MB sites kept against fraction of sites kept, per sparsification method (colour) and
    concentration (line style), one panel per dimensionality; the configured operating points are marked."""
    rows = read_tradeoff(csv_paths)
    if not rows:
        raise UlmError("summary: the trade-off tables are empty")
    all_dims = sorted({r["dims"] for r in rows})
    methods = sorted({r["method"] for r in rows})
    concentrations = sorted({r["concentration"] for r in rows}, key=lambda c: int(c.lstrip("c")))
    colours = {m: f"C{i}" for i, m in enumerate(methods)}
    styles = dict(zip(concentrations, ["-", "--", ":", "-."] * 4, strict=False))
    fig = Figure(figsize=(5.2 * len(all_dims), 4.0), layout="constrained")
    axes = fig.subplots(1, len(all_dims), squeeze=False)
    for ax, dims in zip(axes[0], all_dims, strict=True):
        for method in methods:
            for conc in concentrations:
                curve = [r for r in rows if (r["dims"], r["method"], r["concentration"]) == (dims, method, conc)]
                if not curve:
                    continue
                curve.sort(key=lambda r: float(r["kept_fraction"]))
                x = [float(r["kept_fraction"]) for r in curve]
                y = [float(r["mb_fraction"]) for r in curve]
                ax.plot(x, y, styles[conc], color=colours[method], label=f"{method} {conc}")
                chosen = [(a, b) for a, b, r in zip(x, y, curve, strict=True) if r["configured"] == "True"]
                if chosen:
                    ax.plot(*zip(*chosen, strict=True), "o", color=colours[method])
        ax.set(
            xscale="log",
            xlabel="fraction of sites kept",
            ylabel="fraction of MB sites kept",
            ylim=(0, 1.02),
            title=f"{dims.upper()} test data (dots: configured)",
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, path)
