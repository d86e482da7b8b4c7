"""Cost of each preset (job time, peak memory), measured on a finished run of the tiny preset and
extrapolated to the paper presets.

    snakemake --cores 2 --config preset=tiny          # first: every rule writes logs/tiny/bench/<rule>/...tsv
    python benchmarks/preset_cost.py [WORKDIR] [--markdown]

Measured: Snakemake's ``benchmark:`` record of every job of the tiny run: wall seconds and peak resident
set (its ``cpu_time`` is sampled, and misses most of a job shorter than the sampling interval, so the
job's wall time is the measure; a tiny job uses 1 or 2 cores). Extrapolated, job by job of each preset's grid:

- concentration: a power law through the tiny run's two concentrations, per rule, dimensionality
  and network (cost ~ c^alpha, alpha clipped to [0, 1.5]);
- frames: every stage but graph, flow, summary and memory scales with ``bubbles.n_frames``;
- training: times the ratio of epochs and of the kernel volume in (dims + 1) dimensions (conv cost),
  the learned mask times the ratio of ``sparse.learned_epochs``;
- a job's fixed start (imports, timed here) does not scale; the rest of its wall time does;
- memory study: ``memory.quick: false`` measures ~6x more configurations (benchmarks/memory.py);
- peak memory: the tiny job's peak, the training jobs' plus the growth of a batch (block frames x
  batch size) over the tiny one's (an upper bound: spconv's pruned sites grow less).

Lower bounds, not promises: the wall time assumes the jobs pack perfectly into the slots. The grid's
job counts are checked against ``snakemake -n`` of each preset.
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ulm.config import apply_preset, validate_config  # noqa: E402

PRESETS = ("tiny", "paper-2d", "paper-3d")


@dataclass(frozen=True)
class Job:
    """One job of a grid: rule, dimensionality (0: none), concentration (0: none), network name."""

    rule: str
    dims: int = 0
    c: int = 0
    net: str = ""


def preset_config(name: str) -> dict:
    cfg = {"preset": name}
    apply_preset(cfg, ROOT)
    return validate_config(cfg)


def grid(cfg: dict) -> list[Job]:
    """Every job of a preset, mirroring workflow/rules (two splits; networks on the first method)."""
    dims, concs, methods = cfg["dims"], cfg["concentrations"], cfg["sparse"]["methods"]
    top = max(concs)
    jobs = [Job(rule) for rule in ("graph", "flow") for _ in range(2)] + [Job("summary")]
    jobs += [Job("memory")] if cfg["memory"]["enabled"] else []
    jobs += [Job("bubbles", 0, c) for c in concs for _ in range(2)]
    for d in dims:
        for c in concs:
            jobs += [Job("forward", d, c)] * 2 + [Job("sparsify", d, c)] * 2 * len(methods)
            jobs += [Job(rule, d, c) for rule in ("targets", "conventional", "render", "metrics")]
            jobs += [Job("mask", d, c)] if "learned" in methods else []
            nets = [f"{m}-full" for m in cfg["train"]["models"]]
            nets += [f"sparse-{v}" for v in cfg["train"]["ablations"]] if c == top else []
            jobs += [Job(rule, d, c, net) for net in nets for rule in ("train", "infer")]
    return jobs


def dry_run_counts(preset: str) -> dict[str, int]:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--configfile", str(ROOT / "config.yaml")]
    cmd += ["-n", "--cores", "2", "--config", f"preset={preset}", "--directory", str(ROOT / "benchmarks" / "out" / "dry")]
    text = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    stats = text.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", stats, re.M) if m[1] not in ("total", "all")}


def read_bench(logs: Path) -> dict[Job, dict]:
    """Measured cost of every job of the tiny run, keyed like :func:`grid`'s jobs (several jobs of
    one key, e.g. the two splits, are averaged)."""
    found: dict[Job, list[dict]] = {}
    for path in sorted(logs.glob("bench/*/**/*.tsv")):
        rule = path.relative_to(logs / "bench").parts[0]
        text = str(path)
        d = re.search(r"/([23])d/", text)
        c = re.search(r"/c(\d+)/", text)
        net = re.search(r"net-(sparse|dense)-[a-z]+-(\w+?)(?:-infer)?\.tsv$", text)
        key = Job(rule, int(d[1]) if d else 0, int(c[1]) if c else 0, f"{net[1]}-{net[2]}" if net else "")
        with open(path, newline="") as fh:
            row = next(csv.DictReader(fh, delimiter="\t"))
        record = {"wall_s": float(row["s"]), "rss_mb": float(row["max_rss"])}
        found.setdefault(key, []).append(record)
    if not found:
        raise SystemExit(f"no benchmark records under {logs}/bench: run the tiny preset first (see the docstring)")
    return {key: {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]} for key, rows in found.items()}


def concentration_law(measured: dict[Job, dict], job: Job, tiny_concs: list[int]) -> float:
    """Seconds of ``job``'s rule (same dims and network) at concentration ``job.c``, from the tiny
    run's concentrations by a power law."""
    if job.c == 0:
        return measured[job]["wall_s"]
    lo, hi = min(tiny_concs), max(tiny_concs)
    at = {c: measured.get(Job(job.rule, job.dims, c, job.net)) for c in (lo, hi)}
    at = {c: m["wall_s"] for c, m in at.items() if m is not None}
    if len(at) == 1 or job.c in at:  # measured (an ablation exists at the highest concentration only)
        return at.get(job.c, next(iter(at.values())))
    alpha = min(1.5, max(0.0, math.log(at[hi] / at[lo]) / math.log(hi / lo)))
    return at[hi] * (job.c / hi) ** alpha


def scale(job: Job, cfg: dict, tiny: dict) -> float:
    """Factor from a tiny job to this preset's job (besides concentration)."""
    if job.rule in ("graph", "flow", "summary"):
        return 1.0
    if job.rule == "memory":
        return 1.0 if cfg["memory"]["quick"] == tiny["memory"]["quick"] else 6.0
    factor = cfg["bubbles"]["n_frames"] / tiny["bubbles"]["n_frames"]
    if job.rule == "train":
        kernel = (cfg["train"]["kernel"] / tiny["train"]["kernel"]) ** (job.dims + 1)
        factor *= cfg["train"]["epochs"] / tiny["train"]["epochs"] * kernel
    if job.rule == "infer":
        factor *= (cfg["train"]["kernel"] / tiny["train"]["kernel"]) ** (job.dims + 1)
    if job.rule == "mask":
        factor *= cfg["sparse"]["learned_epochs"] / tiny["sparse"]["learned_epochs"]
    return factor


def peak_mb(job: Job, measured: dict[Job, dict], cfg: dict, tiny: dict) -> float:
    """Peak resident set (MB) of ``job``: the tiny job's, the training jobs' growth scaled by the batch."""
    candidates = [m for key, m in measured.items() if (key.rule, key.dims, key.net) == (job.rule, job.dims, job.net)]
    rss = max(m["rss_mb"] for m in candidates)
    if job.rule == "train":
        base = min(m["rss_mb"] for key, m in measured.items() if key.rule == "infer")  # torch + spconv loaded
        batch = cfg["train"]["batch_size"] * cfg["sparse"]["block_frames"]
        rss = base + (rss - base) * batch / (tiny["train"]["batch_size"] * tiny["sparse"]["block_frames"])
    return rss


def startup_seconds() -> float:
    """Wall time of a job's fixed start (Python, torch, spconv and ulm imports), which does not scale."""
    times = []
    for _ in range(2):  # the second run, with the file cache warm, as in a pipeline
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch, spconv.pytorch, ulm.train"], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times[-1]


def cost_table(measured: dict[Job, dict], preset: str, tiny: dict, startup: float) -> list[dict]:
    """Per rule: jobs, job hours and the largest peak resident set of the preset's grid (the work of
    a job scales, its ``startup`` seconds do not)."""
    cfg = preset_config(preset)
    rows: dict[str, dict] = {}
    for job in grid(cfg):
        row = rows.setdefault(job.rule, {"rule": job.rule, "jobs": 0, "job_h": 0.0, "peak_mb": 0.0})
        row["jobs"] += 1
        seconds = concentration_law(measured, job, tiny["concentrations"])
        fixed = min(seconds, startup)
        row["job_h"] += (fixed + (seconds - fixed) * scale(job, cfg, tiny)) / 3600
        row["peak_mb"] = max(row["peak_mb"], peak_mb(job, measured, cfg, tiny))
    return list(rows.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", nargs="?", type=Path, default=ROOT, help="where the tiny preset ran (default: the repo)")
    parser.add_argument("--slots", type=int, default=2, help="jobs running at a time, for the wall-time lower bound")
    parser.add_argument("--no-check", action="store_true", help="skip the job-count check against snakemake -n")
    args = parser.parse_args()
    tiny = preset_config("tiny")
    measured = read_bench(args.workdir / "logs" / tiny["run"])
    startup = startup_seconds()
    print(f"tiny run measured: {len(measured)} kinds of job; a job's fixed start (imports) here: {startup:.1f} s")
    print(f"| preset | jobs | job time (sum) | wall, {args.slots} jobs at a time (lower bound) | largest peak memory |")
    print("|---|---|---|---|---|")
    for preset in PRESETS:
        rows = cost_table(measured, preset, tiny, startup)
        if not args.no_check:
            counts = dry_run_counts(preset)
            mine = {r["rule"]: r["jobs"] for r in rows}
            assert mine == counts, f"{preset}: grid {mine} != snakemake -n {counts}"
        job_h = sum(r["job_h"] for r in rows)
        top = max(rows, key=lambda r: r["peak_mb"])
        print(
            f"| {preset} | {sum(r['jobs'] for r in rows)} | {_hours(job_h)} | {_hours(job_h / args.slots)} "
            f"| {top['peak_mb'] / 1000:.1f} GB ({top['rule']}) |"
        )
        share = sorted(rows, key=lambda r: -r["job_h"])[:3]
        largest = ", ".join(f"{r['rule']} {r['job_h'] / job_h:.0%}" for r in share)
        print(f"|  | | {largest} | | |")


def _hours(h: float) -> str:
    return f"{h * 60:.1f} min" if h < 1 else f"{h:.1f} h" if h < 48 else f"{h / 24:.0f} days"


if __name__ == "__main__":
    main()
