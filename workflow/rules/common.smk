# Helpers shared by the rule files: result paths, config slices for `params:`, the ulm command.
import json
import sys
from pathlib import Path

from ulm.vascular import resolve_source

RUN = config["run"]
RESULTS = f"results/{RUN}"
LOGS = f"logs/{RUN}"


def _conda_enabled():
    try:
        from snakemake.settings.types import DeploymentMethod

        return DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
    except (ImportError, AttributeError):
        return False


# Under --use-conda the rule's env provides python; otherwise the interpreter running snakemake.
ULM = (
    f'PYTHONPATH="{workflow.basedir}${{PYTHONPATH:+:$PYTHONPATH}}" python -m ulm'
    if _conda_enabled()
    else f'"{sys.executable}" -m ulm'
)


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


def section(name, drop=(), keep=None):
    """A config section (or the ``keep`` keys of it) as compact JSON: the `params:` that make a rule
    rerun exactly when a value it uses changes."""
    part = {k: v for k, v in config[name].items() if k not in drop and (keep is None or k in keep)}
    return json.dumps(part, sort_keys=True)


def graph_source_file():
    """The graph file the `graph` rule reads (nothing for a synthetic graph)."""
    source = resolve_source(config["graph"]["source"])
    return [] if source == "synthetic" else str(source)


def graph_seed():
    """Only a synthetic graph depends on the seed (a file source ignores it, so it does not rerun)."""
    return config["seed"] if config["graph"]["source"] == "synthetic" else 0


def all_outputs():
    ground_truth = expand(f"{RESULTS}/c{{c}}/{{name}}", c=config["concentrations"], name=["tracks.zarr", "tracks.png"])
    per_run = ["iq.zarr", "iq.png", "target.zarr"] + [f"sparse-{m}.{ext}" for m in config["sparse"]["methods"] for ext in ("zarr", "png")]
    imaging = expand(f"{RESULTS}/{{d}}d/c{{c}}/{{name}}", d=config["dims"], c=config["concentrations"], name=per_run)
    nets = [f"net-{m}-{config['sparse']['methods'][0]}/pred.zarr" for m in config["train"]["models"]]
    networks = expand(f"{RESULTS}/{{d}}d/c{{c}}/{{name}}", d=config["dims"], c=config["concentrations"], name=nets)
    evaluation = expand(f"{RESULTS}/{{d}}d/c{{c}}/comparison.png", d=config["dims"], c=config["concentrations"])
    return [f"{RESULTS}/flow.png", *ground_truth, *imaging, *networks, *evaluation, f"{RESULTS}/metrics.csv"]
