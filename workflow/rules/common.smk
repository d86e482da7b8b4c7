# Helpers shared by the other .smk files (functions only, no rules), with result paths, the config keys each
# job's `params:` hold (from the schema's x-stages), resources and the ulm command.
import json
import os
import shlex
import sys
from pathlib import Path

from ulm.config import (
    ABLATIONS,
    derive_seed,
    for_dims,
    network_map_name,
    schema,
    sweep_point,
)
from ulm.vascular import resolve_source

RUN = config["run"]
RESULTS = f"results/{RUN}"
RUN_OF_SPLIT = f"{RESULTS}/{{split}}/{{dims}}d/c{{c}}"  # one imaging run of a split
LOGS = f"logs/{RUN}"
RUN_DIR = f"{RESULTS}/test/{{dims}}d/c{{c}}"  # one test run: evaluation
NET = "{dims}d/net-{model}-{method}-{variant}"  # one network per dimension, model, method and variant
BENCHMARKS = (
    Path(workflow.basedir) / "benchmarks"
)  # the memory rule runs benchmarks/memory.py


class RunSetting:
    """A `params:` value that shapes how a job runs, not what it writes (the interpreter, the device, a
    dask scheduler): not a builtin type, so Snakemake leaves it out of the params it compares for reruns.
    """

    def __init__(self, text):
        self.text = str(text)

    def __str__(self):
        return self.text

    def __format__(self, spec):
        return format(self.text, spec)


def _conda_enabled():
    try:
        from snakemake.settings.types import DeploymentMethod

        return DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
    except (ImportError, AttributeError):
        return False


# Under --use-conda the rule's env provides python; otherwise the interpreter running snakemake.
PYTHON = RunSetting(
    f'PYTHONPATH="{workflow.basedir}${{PYTHONPATH:+:$PYTHONPATH}}" python'
    if _conda_enabled()
    else shlex.quote(sys.executable)
)
ULM = RunSetting(f"{PYTHON} -m ulm")


def code(*modules):
    """Digest of the ``ulm`` modules (files or packages) that a job runs, as a `params:` entry: it makes
    Snakemake rerun the rule when that code changes (Snakemake does not follow imports itself).
    """
    import hashlib

    digest = hashlib.sha256()
    for module in modules:
        path = Path(workflow.basedir) / "ulm" / module
        if not path.exists() and path.suffix == ".py":  # a module that became a package
            path = path.with_suffix("")
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def _stage_keys(node, path=()):
    """(key path, x-stages, x-split) of every leaf key of the schema."""
    for key, sub in node.get("properties", {}).items():
        if "x-stages" in sub:
            yield (*path, key), sub["x-stages"], sub.get("x-split")
        else:
            yield from _stage_keys(sub, (*path, key))


STAGE_KEYS = list(_stage_keys(schema()))


def settings(stage, dims=None, split=None, method=None):
    """The config keys whose schema entry lists ``stage`` (or ``stage:method``) in x-stages, as nested
    sections: a rule's `params:`, so that it reruns exactly when a value it uses changes. With ``dims`` 3,
    overrides_3d is laid over the config; with ``split``, keys of the other split are left out and the seed
    is the split's."""
    cfg = for_dims(config, dims) if dims is not None else config
    out = {}
    for path, stages, only in STAGE_KEYS:
        if (stage in stages or f"{stage}:{method}" in stages) and only in (None, split):
            value = cfg
            for key in path:
                value = value[key]
            node = out
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = value
    if "seed" in out and split is not None:
        out["seed"] = split_seed(split)
    return out


def set_args(values):
    """``--set`` arguments of nested settings, one per section (a section given whole, its other keys at
    their defaults, as the stage does not read them), sorted: a stable string for Snakemake to compare.
    """
    return " ".join(
        f"--set {shlex.quote(f'{key}={json.dumps(value, sort_keys=True)}')}"
        for key, value in sorted(values.items())
    )


def stage_args(stage):
    """An input function: the ``--set`` arguments of ``stage`` at a job's dims and split (the config keys
    whose schema lists the stage)."""
    return lambda w: set_args(settings(stage, dims=w.get("dims"), split=w.get("split")))


def resources_of(group):
    """mem_mb and runtime of a rule group (config `resources`)."""
    return {key: config["resources"][group][key] for key in ("mem_mb", "runtime")}


def threads_of(group):
    """Threads of a rule group (config `resources`)."""
    return config["resources"][group]["threads"]


SPLITS = (
    "train",
    "test",
)  # networks train on `train`; every method is scored on `test` (another graph or region)
METHOD = config["sparse"]["methods"][
    0
]  # the networks train on the first sparsification method
CONCENTRATIONS = {
    2: config["concentrations"],
    3: config["concentrations_3d"] or config["concentrations"],
}
ALL_C = sorted(
    {c for d in config["dims"] for c in CONCENTRATIONS[d]}
)  # ground truth is simulated once per split and c
VARIANTS = ["full"] + list(config["train"]["ablations"])
SWEEP = [
    m for m in config["train"]["sweep"] if m != METHOD
]  # the headline network once more on each of these inputs
# variant -> its changes to the `train` section (full: as configured; the ablations: ulm.config.ABLATIONS)
ABLATION = {"full": ""} | {
    variant: " ".join(
        f"--set train.{key}={json.dumps(value)}" for key, value in changes.items()
    )
    for variant, changes in ABLATIONS.items()
}


def concentrations(dims):
    """The concentration grid of a dimensionality (concentrations, or concentrations_3d in 3D)."""
    return CONCENTRATIONS[int(dims)]


def train_concentrations(dims):
    """The one network per dimension trains on these (train.concentrations, default the dimension's grid)."""
    return config["train"]["concentrations"] or concentrations(dims)


def variants(dims):
    """full, and the ablations where train.ablation_dims asks for them."""
    return VARIANTS if int(dims) in config["train"]["ablation_dims"] else VARIANTS[:1]


def sweep(dims):
    """Sparsification inputs of the trade-off networks in this dimensionality (train.sweep, train.sweep_dims)."""
    return SWEEP if int(dims) in config["train"]["sweep_dims"] else []


def graph_source(split):
    return config["graph"]["source" if split == "train" else "test_source"]


def graph_source_file(split):
    """The graph file the `graph` rule reads (nothing for a synthetic graph)."""
    source = resolve_source(graph_source(split))
    return [] if source == "synthetic" else str(source)


def split_seed(split):
    """The master seed of a split: the test data never share random draws with the training data."""
    return (
        config["seed"]
        if split == "train"
        else derive_seed(config["seed"], "test split")
    )


def graph_seed(split):
    """Only a synthetic graph depends on the seed (a file source ignores it, so it does not rerun)."""
    return split_seed(split) if graph_source(split) == "synthetic" else 0


def graph_args(split):
    """``--set`` arguments of the `graph` rule: the split's crop box as graph.crop_um, its seed only for a
    synthetic graph (a file source ignores it, so it does not rerun); the source is a positional argument.
    """
    values = settings("graph", split=split)
    graph = values["graph"]
    graph.pop("source" if split == "train" else "test_source")
    graph["crop_um"] = graph.pop("crop_um" if split == "train" else "test_crop_um")
    values["seed"] = graph_seed(split)
    return set_args(values)


def net_dirs(dims, c):
    """Map name -> test folder of every network scored at (dims, c): each model, and the ablations of the
    sparse one (each trained once per dimension, scored at every concentration)."""
    base = f"{RESULTS}/test/{dims}d/c{c}"
    nets = {
        network_map_name(m): f"{base}/net-{m}-{METHOD}-full"
        for m in for_dims(config, dims)["train"]["models"]
    }
    nets.update(
        {
            network_map_name("sparse", v): f"{base}/net-sparse-{METHOD}-{v}"
            for v in variants(dims)[1:]
        }
    )
    nets.update(
        {
            network_map_name("sparse", method=m): f"{base}/net-sparse-{m}-full"
            for m in sweep(dims)
        }
    )
    return nets


def methods(dims):
    """The sparsification methods of a dimensionality (sparse.methods, or overrides_3d's in 3D)."""
    return for_dims(config, dims)["sparse"]["methods"]


def run_dims(run):
    """The dimensionality of a run folder .../<d>d/c<c>."""
    return int(Path(run).parent.name[:-1])


def runs(split="test"):
    """Folders of the imaging runs of a split: one per dimension and concentration of its grid."""
    return [
        f"{RESULTS}/{split}/{d}d/c{c}"
        for d in config["dims"]
        for c in concentrations(d)
    ]


def all_outputs():
    ground_truth = expand(f"{RESULTS}/{{s}}/{{name}}", s=SPLITS, name=["flow.png"])
    ground_truth += expand(
        f"{RESULTS}/{{s}}/c{{c}}/{{name}}",
        s=SPLITS,
        c=ALL_C,
        name=["tracks.zarr", "tracks.png"],
    )
    imaging = [f"{run}/{name}" for run in runs("train") + runs("test") for name in ["iq.zarr", "iq.png"]
               + [f"sparse-{m}.{ext}" for m in methods(run_dims(run)) for ext in ("zarr", "png")]]  # fmt: skip
    preds = [
        f"{net}/pred.zarr"
        for d in config["dims"]
        for c in concentrations(d)
        for net in net_dirs(d, c).values()
    ]
    evaluation = expand(f"{{run}}/comparison.png", run=runs())
    summary = [
        f"{RESULTS}/{name}"
        for name in ("metrics.csv", "dice.png", "ablation.csv", "tradeoff.png")
    ]
    summary += [
        f"{RESULTS}/{name}"
        for name in (
            "claims.csv",
            "dice_kept.png",
            "ablation.png",
            "maps.png",
            "learning.png",
        )
    ]
    summary += [f"{RESULTS}/memory/memory.png"] if config["memory"]["enabled"] else []
    return [*ground_truth, *imaging, *preds, *evaluation, *summary]


def training_stores(w):
    """sparse, target and iq stores of every training concentration, in order."""
    folders = [f"{RESULTS}/train/{w.dims}d/c{c}" for c in train_concentrations(w.dims)]
    return {
        "sparse": [f"{r}/sparse-{w.method}.zarr" for r in folders],
        "target": [f"{r}/target.zarr" for r in folders],
        "iq": [f"{r}/iq.zarr" for r in folders],
    }


def train_args(w, input):
    """--iq each store, then the SPARSE TARGET pairs."""
    iqs = " ".join(f"--iq {iq}" for iq in input.iq)
    pairs = " ".join(f"{s} {t}" for s, t in zip(input.sparse, input.target))
    return f"{iqs} {pairs}"


SPARSE_INPUT = r"(threshold|topk)(-[0-9.]+)?|learned"  # a method, or a sweep point such as threshold-0.05 (train.sweep)


def sparsify_args(w):
    """``--set`` arguments of a sparsification input: the keys its method uses, a sweep point's tau or k."""
    method, point = sweep_point(w.method)
    values = settings("sparsify", dims=w.dims, split=w.split, method=method)
    values["sparse"].update(point, method=method)
    return set_args(values)


def eval_preds(w):
    """Map name -> pred.zarr of every network scored at this (dims, c) (see net_dirs)."""
    return {name: f"{net}/pred.zarr" for name, net in net_dirs(w.dims, w.c).items()}


def memory_args():
    """benchmarks/memory.py arguments from the keys of the memory stage (the run's dims, memory.quick)."""
    values = settings("memory")
    quick = "--quick --no-rss-check " if values["memory"]["quick"] else ""
    return f"{quick}--dims {' '.join(map(str, values['dims']))}"


def memory_group():
    """The resources group of the memory study: the quick one, or the full one."""
    return "memory_quick" if config["memory"]["quick"] else "memory"


def ablation_logs():
    """(training log, (dims, variant)) of the headline sparse network and its ablations, where there are any."""
    return [
        (f"{RESULTS}/train/{d}d/net-sparse-{METHOD}-{v}/metrics.csv", (d, v))
        for d in config["dims"]
        if len(variants(d)) > 1
        for v in variants(d)
    ]


def ablation_args():
    """`ulm summary` arguments of the ablation training logs: the files, and what each one trained."""
    logs = ablation_logs()
    if not logs:
        return ""
    runs = " ".join(f"--train-run dims={d} variant={v}" for _, (d, v) in logs)
    return f"--train-metrics {' '.join(log for log, _ in logs)} {runs}"


def drop_dir_timestamps(root):
    """Remove the ``.snakemake_timestamp`` Snakemake leaves in each directory output (a zarr store or a
    density folder) under ``root``, which zarr warns about, giving the directory its mtime: Snakemake then
    reads the same mtime from the directory itself, so nothing looks newer than it was.
    """
    for folder, subdirs, files in os.walk(root):
        if ".snakemake_timestamp" in files:
            stamp = Path(folder) / ".snakemake_timestamp"
            times = (stamp.stat().st_atime, stamp.stat().st_mtime)
            stamp.unlink()
            os.utime(folder, times)
        if folder.endswith(".zarr") or Path(folder).name == "density":
            # a store's (or density folder's) own folders are not outputs: not walked
            subdirs[:] = []
