# Helpers shared by the rule files: result paths, config slices for `params:`, the ulm command.
import json
import sys
from pathlib import Path

from ulm.config import derive_seed, for_dims, network_map_name, sweep_point
from ulm.vascular import resolve_source

RUN = config["run"]
RESULTS = f"results/{RUN}"
RUN_OF_SPLIT = f"{RESULTS}/{{split}}/{{dims}}d/c{{c}}"  # one imaging run of a split
LOGS = f"logs/{RUN}"
BENCHMARKS = Path(workflow.basedir) / "benchmarks"  # the memory rule runs benchmarks/memory.py


def _conda_enabled():
    try:
        from snakemake.settings.types import DeploymentMethod

        return DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
    except (ImportError, AttributeError):
        return False


# Under --use-conda the rule's env provides python; otherwise the interpreter running snakemake.
PYTHON = (
    f'PYTHONPATH="{workflow.basedir}${{PYTHONPATH:+:$PYTHONPATH}}" python'
    if _conda_enabled()
    else f'"{sys.executable}"'
)
ULM = f"{PYTHON} -m ulm"


def code(*modules):
    """Digest of the ``ulm`` modules (files or packages) a rule runs: as a `params:` entry it makes
    Snakemake rerun the rule when that code changes (Snakemake does not follow imports itself)."""
    import hashlib

    digest = hashlib.sha256()
    for module in modules:
        path = Path(workflow.basedir) / "ulm" / module
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def section(name, drop=(), keep=None, dims=None):
    """A config section (or the ``keep`` keys of it) as compact JSON: the `params:` that make a rule
    rerun exactly when a value it uses changes. With ``dims`` 3 the section has `overrides_3d` laid over it."""
    values = {**config[name], **(config["overrides_3d"].get(name, {}) if dims is not None and int(dims) == 3 else {})}
    part = {k: v for k, v in values.items() if k not in drop and (keep is None or k in keep)}
    return json.dumps(part, sort_keys=True)


SPLITS = ("train", "test")  # networks train on `train`; every method is scored on `test` (another graph or region)
METHOD = config["sparse"]["methods"][0]  # the networks train on the first sparsification method
CONCENTRATIONS = {2: config["concentrations"], 3: config["concentrations_3d"] or config["concentrations"]}
ALL_C = sorted({c for d in config["dims"] for c in CONCENTRATIONS[d]})  # ground truth is simulated once per split and c
VARIANTS = ["full"] + list(config["train"]["ablations"])
SWEEP = [m for m in config["train"]["sweep"] if m != METHOD]  # the headline network once more on each of these inputs


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
    return config["seed"] if split == "train" else derive_seed(config["seed"], "test split")


def graph_seed(split):
    """Only a synthetic graph depends on the seed (a file source ignores it, so it does not rerun)."""
    return split_seed(split) if graph_source(split) == "synthetic" else 0


def graph_section(split):
    """The `graph` section as one split sees it: its own crop box, no source keys (those are a param)."""
    graph = {k: v for k, v in config["graph"].items() if k not in ("source", "test_source", "crop_um", "test_crop_um")}
    graph["crop_um"] = config["graph"]["crop_um" if split == "train" else "test_crop_um"]
    return json.dumps(graph, sort_keys=True)


def net_dirs(dims, c):
    """Map name -> test folder of every network scored at (dims, c): each model, and the ablations of the
    sparse one (each trained once per dimension, scored at every concentration)."""
    base = f"{RESULTS}/test/{dims}d/c{c}"
    nets = {network_map_name(m): f"{base}/net-{m}-{METHOD}-full" for m in for_dims(config, dims)["train"]["models"]}
    nets.update({network_map_name("sparse", v): f"{base}/net-sparse-{METHOD}-{v}" for v in variants(dims)[1:]})
    nets.update({network_map_name("sparse", method=m): f"{base}/net-sparse-{m}-full" for m in sweep(dims)})
    return nets


def methods(dims):
    """The sparsification methods of a dimensionality (sparse.methods, or overrides_3d's in 3D)."""
    return for_dims(config, dims)["sparse"]["methods"]


def run_dims(run):
    """The dimensionality of a run folder .../<d>d/c<c>."""
    return int(Path(run).parent.name[:-1])


def runs(split="test"):
    """Folders of the imaging runs of a split: one per dimension and concentration of its grid."""
    return [f"{RESULTS}/{split}/{d}d/c{c}" for d in config["dims"] for c in concentrations(d)]


def all_outputs():
    ground_truth = expand(f"{RESULTS}/{{s}}/{{name}}", s=SPLITS, name=["flow.png"])
    ground_truth += expand(f"{RESULTS}/{{s}}/c{{c}}/{{name}}", s=SPLITS, c=ALL_C, name=["tracks.zarr", "tracks.png"])
    imaging = [f"{run}/{name}" for run in runs("train") + runs("test") for name in ["iq.zarr", "iq.png"]
               + [f"sparse-{m}.{ext}" for m in methods(run_dims(run)) for ext in ("zarr", "png")]]  # fmt: skip
    preds = [f"{net}/pred.zarr" for d in config["dims"] for c in concentrations(d) for net in net_dirs(d, c).values()]
    evaluation = expand(f"{{run}}/comparison.png", run=runs())
    summary = [f"{RESULTS}/{name}" for name in ("metrics.csv", "dice.png", "ablation.csv", "tradeoff.png")]
    summary += [f"{RESULTS}/{name}" for name in ("claims.csv", "dice_kept.png", "ablation.png", "maps.png", "learning.png")]
    summary += [f"{RESULTS}/memory/memory.png"] if config["memory"]["enabled"] else []
    return [*ground_truth, *imaging, *preds, *evaluation, *summary]


def train_params(w):
    """Train keys that change the model (device, workers, resume and the grid do not)."""
    grid_keys = ("models", "model", "ablations", "ablation_dims", "sweep", "sweep_dims")
    return section("train", drop=(*grid_keys, "device", "num_workers", "threads", "resume", "gpus"), dims=w.dims)


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


# keys that do not change a method's output (so changing them does not rerun it)
LEARNED_KEYS = ("learned_threshold", "learned_epochs", "mask_checkpoint")
SPARSIFY_IGNORES = {
    "threshold": ("methods", "method", "factor", "workers", "topk_k", *LEARNED_KEYS),
    "topk": ("methods", "method", "factor", "workers", "tau", *LEARNED_KEYS),
    "learned": ("methods", "method", "factor", "workers", "tau", "topk_k", "learned_epochs", "mask_checkpoint"),
}
SPARSE_INPUT = r"(threshold|topk)(-[0-9.]+)?|learned"  # a method, or a sweep point such as threshold-0.05 (train.sweep)


def sparsify_section(w):
    """The sparse keys a method (or a sweep point, which also sets its tau or k) uses, as JSON."""
    method, point = sweep_point(w.method)
    return json.dumps({**json.loads(section("sparse", drop=SPARSIFY_IGNORES[method], dims=w.dims)), **point}, sort_keys=True)
