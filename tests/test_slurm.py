"""The workflow on a real SLURM cluster through workflow/profiles/slurm (start one with .ci/slurm-up.sh).

Skipped where no cluster answers, except under CI=true, where .ci/run starts one: there a missing
cluster fails. Conda is not available on the test machine, so the runs use the profile minus its
`software-deployment-method: conda` line (written to a temporary profile); every other key is the
shipped profile's.
"""

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_presets import check_tiny_run
from test_workflow import SMALL  # the same small run as the local workflow tests

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "workflow" / "profiles" / "slurm" / "config.yaml"
CORE_RULES = {"graph", "flow", "bubbles", "forward", "mask", "sparsify", "targets", "train", "infer", "conventional", "memory"}
SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (.+?)\)\.$", re.M)


def _unavailable(reason: str):
    """Skip, or fail under CI=true (where .ci/run starts the cluster before the tests)."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {reason}; .ci/slurm-up.sh should have started the cluster")
    pytest.skip(f"{reason} (start a single-node cluster with `sudo bash .ci/slurm-up.sh`)")


@pytest.fixture(scope="module")
def cluster() -> str:
    """The partition's node name, once sinfo shows it usable and the SLURM executor plugin imports."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        _unavailable("Slurm client commands (sinfo, sbatch) are not on PATH")
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        _unavailable("snakemake-executor-plugin-slurm is not installed (pip install -e '.[test]')")
    try:
        state = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        _unavailable("sinfo did not answer within 30 s")
    nodes = dict(line.split() for line in state.stdout.splitlines() if len(line.split()) == 2)
    usable = [node for node, st in nodes.items() if st.rstrip("*") in ("idle", "mix", "alloc")]
    if state.returncode != 0 or not usable:
        _unavailable(f"the Slurm cluster is not up (sinfo: {(state.stdout + state.stderr).strip() or 'no nodes'})")
    return usable[0]


@pytest.fixture(scope="module")
def profile(tmp_path_factory) -> Path:
    """The shipped profile without conda (no conda here); every other key unchanged."""
    settings = yaml.safe_load(PROFILE.read_text())
    settings.pop("software-deployment-method")
    folder = tmp_path_factory.mktemp("profile")
    (folder / "config.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    return folder


def snakemake_slurm(
    workdir: Path, profile: Path, *args: str, timeout: float, config: dict = SMALL
) -> tuple[subprocess.CompletedProcess, float]:
    """Run snakemake with the profile; on a timeout, cancel this run's SLURM jobs and fail."""
    cfg_file = workdir / "config-run.yaml"
    cfg_file.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(workdir)]
    cmd += ["--configfile", str(cfg_file), "--profile", str(profile), *args]
    start = time.monotonic()
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            run_id = re.search(r"SLURM run ID: (\S+)", out)
            if run_id:  # the plugin names every job of a run after the run ID
                subprocess.run(["scancel", "--name", run_id[1]], capture_output=True, timeout=30)
            pytest.fail(f"snakemake did not finish within {timeout} s (hung?); last output:\n{out[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, ""), time.monotonic() - start


def test_profile_submits_to_slurm_with_conda_and_polls_with_squeue():
    settings = yaml.safe_load(PROFILE.read_text())
    assert settings["executor"] == "slurm"
    assert settings["software-deployment-method"] == "conda"
    assert settings["slurm-status-command"] == "squeue"
    # the plugin falls back to sacct (which hangs without accounting) unless MinJobAge >= 3 x this delay;
    # Slurm's default MinJobAge is 300 s, .ci/slurm-up.sh sets 600 s
    assert 3 * settings["slurm-init-seconds-before-status-checks"] <= 300
    assert {"slurm_partition", "mem_mb", "runtime", "cpus_per_task"} <= set(settings["default-resources"])


@pytest.mark.slow
def test_tiny_preset_runs_every_job_as_a_slurm_job(cluster, profile, tmp_path):
    # the tiny jobs peak below 1.1 GB (logs/tiny/bench): ask for 3 GB, not the paper-size 16 GB, so that the
    # 2-CPU node runs two at a time
    small = [f"{rule}:mem_mb=3000" for rule in ("train", "infer", "forward", "sparsify", "targets", "mask", "render")]
    result, seconds = snakemake_slurm(tmp_path, profile, "--set-resources", *small, timeout=2400, config={"preset": "tiny"})
    out = result.stdout
    assert result.returncode == 0, out[-5000:]
    assert "SLURM run ID: " in out
    check_tiny_run(tmp_path)

    # every job but the local `all` went through sbatch, and its SLURM log shows it ran that rule on the node
    stats = out.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    planned = {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", stats, re.M) if m[1] not in ("total", "all")}
    assert set(planned) >= CORE_RULES
    submitted = SUBMITTED.findall(out)
    assert len(submitted) == sum(planned.values()), out[-5000:]
    slurm_ids = set()
    for _, slurm_id, log in submitted:
        rule = re.search(r"/rule_(\w+)/", log)[1]
        assert rule in planned
        text = Path(log).read_text()
        assert f"rule {rule}:" in text and f"Host: {cluster}" in text, text[-2000:]
        slurm_ids.add(slurm_id)

    # and Slurm itself (squeue keeps finished jobs for MinJobAge; no accounting needed) saw them complete
    run_id = re.search(r"SLURM run ID: (\S+)", out)[1]
    squeue = subprocess.run(["squeue", "-h", "--states=all", "--name", run_id, "-o", "%i|%T"], capture_output=True, text=True)
    states = dict(line.split("|") for line in squeue.stdout.split())
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True).stdout
    min_job_age = int(re.search(r"^MinJobAge\s*=\s*(\d+)", config, re.M)[1])
    if min_job_age > seconds + 60:  # .ci/slurm-up.sh: 600 s, so every job of the run is still listed
        assert states == dict.fromkeys(slurm_ids, "COMPLETED")
    else:  # a cluster that forgets finished jobs sooner still lists the last ones
        assert states and set(states) <= slurm_ids and set(states.values()) == {"COMPLETED"}
    print(f"\n{len(slurm_ids)} SLURM jobs ({', '.join(sorted(planned))}) in {seconds:.0f} s")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("resource", "message"),
    [
        ("graph:mem_mb=100000000", "Memory specification can not be satisfied"),
        ("graph:slurm_partition=nosuchpartition", "invalid partition specified: nosuchpartition"),
    ],
)
def test_a_request_the_cluster_cannot_satisfy_stops_the_run_with_one_clear_error(cluster, profile, tmp_path, resource, message):
    # without the memory study, whose job is submitted beside the graph jobs and would be waited for
    no_memory = {**SMALL, "memory": {"enabled": False}}
    result, seconds = snakemake_slurm(tmp_path, profile, "--set-resources", resource, timeout=180, config=no_memory)
    out = result.stdout
    assert result.returncode != 0
    assert out.count("SLURM sbatch failed") == 2, out[-5000:]  # the first jobs, graph of train and of test, are refused
    assert message in out, out[-5000:]
    assert "Error in rule graph:" in out
    assert not list((tmp_path / "results").rglob("graph.zarr"))
    assert seconds < 120, f"took {seconds:.0f} s to stop"
