"""Real Snakemake runs: the chain to tracks.zarr, and dry runs proving parameter-aware reruns."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
import zarr

ROOT = Path(__file__).resolve().parents[1]
CHECK_STORES = ROOT.parent / "shared" / "tools" / "check_stores.py"
SMALL = {
    "run": "t",
    "concentrations": [3],
    "bubbles": {"n_frames": 512, "chunk_frames": 128},
    "sparse": {"block_frames": 128},  # the network pools time by 128: 4 blocks, 3 to train and 1 to validate
    "train": {"epochs": 1, "width": 4},
    "memory": {"quick": True},  # the quick study (2D only: ~1.5 min on 2 cores), so that the rerun tests cover its rule
}
EVALUATION = {"render": 1, "metrics": 1, "summary": 1, "claims": 1}
NETWORK = {"train": 1, "infer": 1, **EVALUATION}
# two splits (train, test) and two sparsification methods by default; targets for training, conventional ULM on test
IMAGING = {"forward": 2, "sparsify": 4, "targets": 1, "conventional": 1, **NETWORK}
GROUND_TRUTH = {"bubbles": 2, **IMAGING}
# a test graph that crops the default one: only the test split and what scores it rerun
TEST_ONLY = {"graph": 1, "flow": 1, "bubbles": 1, "forward": 1, "sparsify": 2, "conventional": 1, "infer": 1, **EVALUATION}


@pytest.fixture(scope="module")
def workflow_copy(tmp_path_factory) -> Path:
    """The workflow and package copied aside, so that a test may edit its code."""
    copy = tmp_path_factory.mktemp("repo")
    for name in ("Snakefile", "config.yaml", "workflow", "ulm", "envs", "benchmarks"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, copy / name)
    return copy


def snakemake(workdir: Path, config: dict, *args: str, snakefile: Path = ROOT / "Snakefile") -> subprocess.CompletedProcess:
    cfg_file = workdir / f"config-{abs(hash(repr(config)))}.yaml"
    cfg_file.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(snakefile), "--directory", str(workdir)]
    cmd += ["--configfile", str(cfg_file), "--cores", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def planned_jobs(result: subprocess.CompletedProcess) -> dict[str, int]:
    """Rule -> job count from a dry run's job stats (empty when nothing is to be done)."""
    assert result.returncode == 0, result.stderr
    text = result.stdout + result.stderr
    if "Nothing to be done" in text:
        return {}
    stats = text.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", stats, re.M) if m[1] != "total"}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, workflow_copy):
    workdir = tmp_path_factory.mktemp("wf")
    result = snakemake(workdir, SMALL, snakefile=workflow_copy / "Snakefile")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workdir


@pytest.mark.slow
def test_pipeline_writes_contract_stores_and_plots(finished_run):
    out = finished_run / "results" / "t"
    per_split = ["graph.zarr", "flow.zarr", "flow.png", "c3/tracks.zarr", "c3/tracks.png", "2d/c3/iq.zarr", "2d/c3/iq.png"]
    per_split += ["2d/c3/sparse-threshold.zarr", "2d/c3/sparse-topk.csv", "2d/c3/sparse-topk.png"]
    produced = [f"{split}/{name}" for split in ("train", "test") for name in per_split]
    produced += ["train/2d/c3/target.zarr", "train/2d/net-sparse-threshold-full/model.pt"]
    produced += ["test/2d/c3/net-sparse-threshold-full/pred.zarr", "test/2d/c3/localizations.zarr"]
    produced += ["test/2d/c3/density/network_sparse_cnn.zarr", "test/2d/c3/comparison.png", "test/2d/c3/metrics.json"]
    produced += ["metrics.csv", "dice.png", "ablation.csv", "tradeoff.png"]
    produced += ["claims.csv", "dice_kept.png", "ablation.png", "maps.png", "learning.png"]
    produced += ["test/2d/c3/density/trivial.zarr", "memory/memory.csv", "memory/memory.png", "memory/memory.json"]
    for name in produced:
        assert (out / name).exists(), name
    assert not (out / "test/2d/c3/density/comparison.png").exists()  # render writes the figure where the rule names it
    assert not list(out.rglob("*.tmp"))
    if CHECK_STORES.exists():
        check = subprocess.run([sys.executable, str(CHECK_STORES), str(out)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout
        assert check.stdout.count("ok ") == 15, check.stdout


RERUN_CASES = [
    ({}, {}),
    ({"flow": {"pressure_artery_mmHg": 80.0}}, {"flow": 2, **GROUND_TRUTH, "all": 1}),
    ({"graph": {"merge_tol_um": 0.5}}, {"graph": 2, "flow": 2, **GROUND_TRUTH, "all": 1}),
    ({"graph": {"test_crop_um": [0, 1e4, 0, 1e4, 0, 1e4]}}, {**TEST_ONLY, "all": 1}),
    ({"bubbles": {"n_frames": 300, "chunk_frames": 64}}, {**GROUND_TRUTH, "all": 1}),
    ({"seed": 4}, {**GROUND_TRUTH, "all": 1}),
    # one network trained on both concentrations, inferred and scored at each
    ({"concentrations": [3, 5]}, {**GROUND_TRUTH, "infer": 2, "render": 2, "metrics": 2, "all": 1}),
    ({"forward": {"snr_db": 20.0}}, {**IMAGING, "all": 1}),
    ({"forward": {"workers": 1}}, {}),
    ({"forward": {"dask_scheduler": "tcp://127.0.0.1:8786"}}, {}),  # where the frames are computed does not change them
    ({"probe": {"f_number": 1.5}}, {**IMAGING, "all": 1}),
    ({"dims": [2, 3]}, {**IMAGING, "memory": 1, "all": 1}),  # the memory study measures every dimension of the run
    ({"sparse": {"block_frames": 128, "tau": 0.2}}, {"sparsify": 2, **NETWORK, "all": 1}),
    ({"sparse": {"block_frames": 128, "topk_k": 500}}, {"sparsify": 2, "summary": 1, "all": 1}),
    ({"sparse": {"block_frames": 128, "factor": 4}}, {"targets": 1, **NETWORK, "all": 1}),
    ({"sparse": {"block_frames": 256}}, {"sparsify": 4, "targets": 1, **NETWORK, "all": 1}),
    ({"train": {"epochs": 2, "width": 4}}, {**NETWORK, "all": 1}),
    ({"train": {"epochs": 1, "width": 4, "device": "cpu", "threads": 1}}, {}),
    ({"train": {"epochs": 1, "width": 4, "ablations": ["pruning"]}}, {**NETWORK, "all": 1}),
    ({"conventional": {"max_gap_frames": 1}}, {"conventional": 1, **EVALUATION, "all": 1}),
    ({"render": {"gamma": 1.0}}, {**EVALUATION, "all": 1}),
    ({"metrics": {"frc_split": "frames"}}, {"metrics": 1, "summary": 1, "claims": 1, "all": 1}),
    ({"memory": {"quick": False}}, {"memory": 1, "claims": 1, "all": 1}),
    ({"memory": {"enabled": False}}, {"claims": 1, "all": 1}),  # claims without the memory study
    ({"resources": {"imaging": {"mem_mb": 100}, "network": {"runtime": 5}}}, {}),  # what a job asks for changes no output
    # a 3D setting does not touch a 2D run
    ({"concentrations_3d": [5]}, {}),
    ({"overrides_3d": {"train": {"width": 8}, "sparse": {"tau": 0.3}}}, {}),
    # one more network of the sparsification sweep: its input in both splits, its training, inference and scores
    (
        {"train": {"epochs": 1, "width": 4, "sweep": ["threshold-0.2"]}},
        {"sparsify": 2, "train": 1, "infer": 1, **EVALUATION, "all": 1},
    ),
]


def test_rerun_cases_cover_every_config_section():
    from ulm.config import schema

    covered = {key for change, _ in RERUN_CASES for key in change}
    assert covered == set(schema()["properties"]) - {"preset", "run"}  # a new run name or preset reruns everything


def _other_value(sub: dict):
    """A valid value other than the default of a schema leaf, or None where none is easy to make."""
    types = sub["type"] if isinstance(sub["type"], list) else [sub["type"]]
    default = sub["default"]
    if "enum" in sub:
        return next(v for v in sub["enum"] if v != default)
    if "boolean" in types:
        return not default
    if "integer" in types:
        return (default or sub.get("minimum", 1)) + 1
    if "string" in types:
        return "tcp://127.0.0.1:8786" if default is None else f"{default}x"
    return None


def _no_stage_keys(node=None, path=()):
    """(key path, another valid value) of every schema leaf that declares no stage and chooses no job."""
    from ulm.config import schema

    for key, sub in (node or schema())["properties"].items():
        if "x-stages" not in sub:
            yield from _no_stage_keys(sub, (*path, key))
        elif not sub["x-stages"] and not sub.get("x-grid") and _other_value(sub) is not None:
            yield (*path, key), _other_value(sub)


def test_every_schema_leaf_declares_the_stages_it_affects():
    from ulm.config import schema

    rules = {"graph", "flow", "bubbles", "forward", "mask", "sparsify", "targets", "train", "infer", "conventional"}
    rules |= {"render", "metrics", "summary", "claims", "memory"}

    def leaves(node):
        for sub in node["properties"].values():
            yield from leaves(sub) if "x-stages" not in sub else [sub]

    stages = [stage.partition(":")[0] for sub in leaves(schema()) for stage in sub["x-stages"]]
    assert set(stages) <= rules
    assert len(list(_no_stage_keys())) >= 15  # workers, device, threads, resources, the keys set per job


@pytest.mark.slow
def test_keys_declared_for_no_stage_plan_nothing(finished_run, workflow_copy):
    """Every key whose schema entry lists no stage, changed at once: a dry run plans no job."""
    change: dict = {}
    for path, value in _no_stage_keys():
        node = change
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    config = {**SMALL, **{k: {**SMALL.get(k, {}), **v} if isinstance(v, dict) else v for k, v in change.items()}}
    assert config["train"]["epochs"] == 1 and config["forward"]["workers"] == 3
    assert config["resources"]["network"]["mem_mb"] == 16001 and config["train"]["device"] != "auto"
    assert planned_jobs(snakemake(finished_run, config, "-n", snakefile=workflow_copy / "Snakefile")) == {}


@pytest.mark.slow
def test_stores_open_without_a_warning(finished_run):
    """Snakemake's .snakemake_timestamp is gone from the stores, so zarr (and xarray) list them without warning."""
    import warnings

    import xarray

    out = finished_run / "results" / "t"
    stores = [out / "test/graph.zarr", out / "test/c3/tracks.zarr", out / "test/2d/c3/iq.zarr"]
    stores += [out / "test/2d/c3/density/trivial.zarr", out / "test/2d/c3/net-sparse-threshold-full/pred.zarr"]
    assert not list(out.rglob(".snakemake_timestamp"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for store in stores:
            assert list(zarr.open_group(store, mode="r").members(max_depth=None)), store
        xarray.open_zarr(out / "test/graph.zarr", consolidated=False).close()


@pytest.mark.slow
@pytest.mark.parametrize(("change", "expected"), RERUN_CASES)
def test_changing_a_parameter_reruns_only_its_stage_and_downstream(finished_run, workflow_copy, change, expected):
    config = {**SMALL, **change}
    assert planned_jobs(snakemake(finished_run, config, "-n", snakefile=workflow_copy / "Snakefile")) == expected


def test_forward_jobs_attach_to_the_configured_dask_scheduler(tmp_path):
    address = "tcp://10.0.0.7:8786"
    result = snakemake(tmp_path, {**SMALL, "forward": {"dask_scheduler": address}}, "-n", "-p")
    assert result.returncode == 0, result.stderr[-2000:]
    commands = [line for line in result.stdout.splitlines() if " -m ulm forward " in line]
    assert len(commands) == 2 and all(f"--set forward.dask_scheduler={address}" in c for c in commands)


@pytest.mark.slow
def test_bad_config_key_fails_before_any_job(tmp_path):
    result = snakemake(tmp_path, {**SMALL, "flow": {"presure_artery_mmHg": 1}}, "-n")
    assert result.returncode != 0
    assert "unknown key(s) ['presure_artery_mmHg']" in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_test_data_from_the_training_graph_is_refused_before_any_job(tmp_path):
    result = snakemake(tmp_path, {**SMALL, "graph": {"test_source": "bundled:mouse_20120409"}}, "-n")
    assert result.returncode != 0
    assert "'bundled:mouse_20120409' is also the training graph" in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("module", "expected"),
    [
        ("flow.py", {"flow": 2, **GROUND_TRUTH, "all": 1}),
        ("forward/psf.py", {**IMAGING, "all": 1}),
        ("targets.py", {"targets": 1, **NETWORK, "all": 1}),
        ("nn/spec.py", {**NETWORK, "memory": 1, "all": 1}),  # the memory study measures the network
        ("summary.py", {"summary": 1, "all": 1}),
    ],
)
def test_editing_a_stage_module_reruns_that_stage_and_downstream(finished_run, workflow_copy, module, expected):
    path = workflow_copy / "ulm" / module
    original = path.read_text()
    try:
        path.write_text(original + "\n# an edit\n")
        assert planned_jobs(snakemake(finished_run, SMALL, "-n", snakefile=workflow_copy / "Snakefile")) == expected
    finally:
        path.write_text(original)


@pytest.mark.slow
def test_report_gathers_figures_and_tables(finished_run, workflow_copy):
    result = snakemake(finished_run, SMALL, "--report", str(finished_run / "report.html"), snakefile=workflow_copy / "Snakefile")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    html = (finished_run / "report.html").read_text(errors="replace")
    names = ("comparison.png", "metrics.csv", "flow.png", "train.png", "dice.png", "ablation.csv", "tradeoff.png", "claims.csv")
    for name in names:
        assert name in html
    assert "sparse-ulm, run" in html and "bundled:mouse_20100203" in html  # the workflow page, from the run's config
    assert "many 128-frame blocks" in html and "512-frame" not in html  # captions take their numbers from the run


@pytest.mark.slow
def test_report_before_outputs_exist_is_one_clear_error(tmp_path, workflow_copy):
    result = snakemake(tmp_path, SMALL, "--report", str(tmp_path / "report.html"), snakefile=workflow_copy / "Snakefile")
    assert result.returncode != 0
    assert "marked for report but does not exist" in result.stdout + result.stderr
    assert not (tmp_path / "report.html").exists()
