"""The presets: the tiny one runs the whole experiment grid for real, the paper ones list theirs."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_workflow import planned_jobs  # rule -> job count of a dry run

ROOT = Path(__file__).resolve().parents[1]


def snakemake(workdir: Path, *args: str, timeout: int = 1800, root: Path = ROOT) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(root / "Snakefile"), "--directory", str(workdir)]
    cmd += ["--configfile", str(root / "config.yaml"), "--cores", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        # one network each (sparse, dense, 3 ablations) scored at 4 concentrations; 3 methods x 2 splits x 4 concentrations
        ("paper-2d", {"train": 5, "infer": 20, "sparsify": 24, "mask": 4, "forward": 8, "conventional": 4, "memory": 1}),
        # sparse + 3 ablations, each scored at 3 concentrations; 3 methods x 2 splits x 3 concentrations
        ("paper-3d", {"train": 4, "infer": 12, "sparsify": 18, "mask": 3, "forward": 6, "conventional": 3, "memory": 1}),
        # 2D: sparse, dense, 3 ablations and 5 sweep networks, each scored at 4 concentrations; 3D: sparse, at 3; sparsify: 2D
        # 3 methods + 3 sweep points x 2 splits x 4 concentrations, 3D threshold x 2 x 3
        ("repro-cpu", {"train": 11, "infer": 43, "sparsify": 54, "mask": 4, "forward": 14, "conventional": 7, "memory": 1}),
    ],
)
def test_presets_list_their_whole_grid(tmp_path, preset, expected):
    counts = planned_jobs(snakemake(tmp_path, "-n", "--config", f"preset={preset}"))
    assert {rule: counts.get(rule) for rule in expected} == expected
    assert counts["summary"] == 1 and counts["claims"] == 1


def test_unknown_preset_is_one_clear_error(tmp_path):
    result = snakemake(tmp_path, "-n", "--config", "preset=paper-4d")
    assert result.returncode != 0
    message = "config key preset: unknown preset 'paper-4d'; available: ['paper-2d', 'paper-3d', 'repro-cpu', 'tiny']"
    assert message in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def check_tiny_run(workdir: Path) -> None:
    """The tiny preset's tables, figures and report in ``workdir`` cover its whole grid."""
    out = workdir / "results" / "tiny"
    metrics = read_csv(out / "metrics.csv")
    runs = {row["run"] for row in metrics}
    assert runs == {"2d/c2", "2d/c20", "3d/c2", "3d/c20"}
    for run in runs:
        methods = {row["method"] for row in metrics if row["run"] == run}
        assert {"conventional", "network_sparse_cnn", "network_dense_cnn"} <= methods, run
        assert all(0.0 <= float(row["dice"]) <= 1.0 for row in metrics if row["run"] == run)
    ablation = read_csv(out / "ablation.csv")
    for dims in ("2", "3"):
        for c in ("2", "20"):  # every variant is scored at every concentration
            variants = {row["variant"] for row in ablation if row["dims"] == dims and row["concentration"] == c}
            assert variants == {"full", "pruning", "deep_supervision", "cascaded", "conventional"}, (dims, c)
    figures = ("dice.png", "tradeoff.png", "memory/memory.csv", "memory/memory.png", "ablation.png", "maps.png", "learning.png")
    for name in figures:
        assert (out / name).stat().st_size > 0, name
    claims = read_csv(out / "claims.csv")
    expected = {("0", "2"), ("0", "3"), ("1a", "2"), ("1b", "2"), ("2a", "3"), ("3a", "2"), ("3b", "3"), ("5", "2"), ("5", "3")}
    assert {(r["claim"], r["dims"]) for r in claims} >= expected
    assert all(r["verdict"] in ("holds", "does not hold") for r in claims)
    for method in ("threshold", "topk", "learned"):
        assert (out / "test" / "3d" / "c20" / f"sparse-{method}.zarr").is_dir()
    report = snakemake(workdir, "--config", "preset=tiny", "--report", str(workdir / "report.html"))
    assert report.returncode == 0, report.stderr[-2000:]
    html = (workdir / "report.html").read_text(errors="replace")
    for name in ("dice.png", "ablation.csv", "tradeoff.png", "memory.png", "comparison.png"):
        assert name in html, name


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("CI", "").lower() == "true", reason="CI runs the tiny preset through SLURM (test_slurm.py)")
def test_tiny_preset_runs_the_whole_grid_and_its_report(tmp_path):
    result = snakemake(tmp_path, "--config", "preset=tiny")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert planned_jobs(snakemake(tmp_path, "-n", "--config", "preset=tiny")) == {}  # a complete run is up to date
    check_tiny_run(tmp_path)


PRESETS = sorted(p.stem for p in (ROOT / "workflow" / "presets").glob("*.yaml"))
UNTESTED_PRESETS = [p for p in PRESETS if p != "tiny"]  # tiny runs for real above, and is checked the same way
ALL_TRIGGERS = ("mtime", "params", "input", "software-env", "code")  # Snakemake's default --rerun-triggers


@pytest.fixture(scope="module")
def frozen_workflow(tmp_path_factory) -> Path:
    """The workflow and package copied aside: the `code` params digest ulm's sources, which must not change
    (someone editing the checkout) between the run and the dry run that checks it."""
    copy = tmp_path_factory.mktemp("repo")
    for name in ("Snakefile", "config.yaml", "workflow", "ulm", "envs", "benchmarks"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, copy / name)
    return copy


@pytest.mark.slow
@pytest.mark.parametrize("preset", [None, *UNTESTED_PRESETS], ids=["demo", *UNTESTED_PRESETS])
def test_a_complete_run_leaves_nothing_to_do(tmp_path, frozen_workflow, preset):
    """After a complete run of the demo (config.yaml) or of a preset, a dry run plans no job.

    Running the presets for real would take hours, so the run is Snakemake's own ``--touch``: every output
    of the DAG (listed by ``--summary``) is made empty (``.zarr`` and suffix-less outputs as directories,
    the workflow's ``directory()`` outputs; a mistake here fails ``--touch`` on that path), then ``--touch
    --forceall`` executes every job as a touch, in DAG order. That goes through the scheduler's
    postprocessing like a real job: Snakemake records each output's metadata (params, rule code, input
    list, software stack; checked below), and a later dry run evaluates every rerun trigger against it, in
    a new process that recomputes the params, inputs and code digests. So this catches a param or input
    that differs between invocations (a temporary path, a timestamp, an unordered dict or set, a float
    formatted differently) and a rule whose code text changes; not a job that rewrites an upstream output
    while it runs (none does: the stages write their stores to a temporary path and move them into place),
    which the real runs (tests/test_workflow.py, the tiny preset) cover. ``--list-changes params`` is no
    help: Snakemake 9.27 lists every output with params there, changed or not.
    """
    run = ["--config", f"preset={preset}"] if preset else []
    summary = snakemake(tmp_path, "--summary", *run, root=frozen_workflow)
    assert summary.returncode == 0, summary.stderr[-2000:]
    outputs = [line.split("\t")[0] for line in summary.stdout.splitlines()[1:] if "\t" in line]
    assert len(outputs) > 40
    for name in outputs:
        path = tmp_path / name
        if path.suffix in ("", ".zarr"):
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
    touch = snakemake(tmp_path, "--touch", "--forceall", *run, root=frozen_workflow)
    assert touch.returncode == 0, touch.stdout[-2000:] + touch.stderr[-2000:]
    records = [json.loads(f.read_text()) for f in (tmp_path / ".snakemake" / "metadata").iterdir()]
    assert len(records) == len(outputs)  # one per output, in the format whose params a dry run compares (6+)
    assert all(r["record_format_version"] >= 6 and r["params"] and r["code"] and not r["incomplete"] for r in records)
    assert planned_jobs(snakemake(tmp_path, "-n", "--rerun-triggers", *ALL_TRIGGERS, *run, root=frozen_workflow)) == {}
    if preset is None:  # not vacuous: a changed parameter is seen through the recorded params alone
        changed = snakemake(tmp_path, "-n", "--rerun-triggers", "params", "--config", "seed=1234", root=frozen_workflow)
        assert planned_jobs(changed)["bubbles"] == 2
        assert "Params have changed since last execution" in changed.stdout + changed.stderr


@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        (
            "paper-2d",
            {
                "width": 16,
                "prune": False,
                "deep_supervision": False,
                "cascaded": False,
                "lr": 0.1,
                "epochs": 150,
                "phase2_epochs": 150,
                "phase2_lr_factor": 0.01,
                "dilate_first_phase": True,
                "batch_size": 8,
                "lr_milestones": [15, 45, 75, 100, 160, 200, 250],
                "lr_gamma": 0.1,
            },
        ),
        (
            "paper-3d",
            {
                "width": 16,
                "prune": False,
                "deep_supervision": False,
                "cascaded": False,
                "lr": 0.05,
                "epochs": 20,
                "phase2_epochs": 0,
                "dilate_first_phase": False,
                "batch_size": 2,
                "lr_milestones": [15, 17],
                "lr_gamma": 0.1,
            },
        ),
    ],
)
def test_paper_presets_train_the_reference_headline_network_with_its_schedule(preset, expected):
    """The presets lay over config.yaml (whose demo trains another variant): nothing of it may leak in."""
    from ulm.config import apply_preset, validate_config

    cfg = yaml.safe_load((ROOT / "config.yaml").read_text()) | {"preset": preset}
    cfg = validate_config(apply_preset(cfg, ROOT))
    assert {k: cfg["train"][k] for k in expected} == expected
    assert cfg["sparse"]["target"] == "positions" and cfg["sparse"]["block_frames"] == 512 and cfg["sparse"]["tile_px"] == 32
    assert cfg["train"]["concentrations"] is None  # one network on the mixed concentrations
