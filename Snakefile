# sparse-ulm: one pipeline from a vascular graph to ULM density maps (see README.md, docs/architecture.md).
import sys

sys.path.insert(0, workflow.basedir)

from snakemake.exceptions import WorkflowError

from ulm.config import apply_preset, check_disjoint_test_graph, validate_config
from ulm.errors import UlmError


configfile: "config.yaml"


try:
    # --config preset=NAME
    apply_preset(config, workflow.basedir, dict(workflow.config_settings.config))
    # fills every default, rejects unknown or mistyped keys
    config.update(validate_config(config))
    # no test vessel may reach training
    check_disjoint_test_graph(config["graph"])
except UlmError as exc:
    raise WorkflowError(str(exc)) from None


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


wildcard_constraints:
    split="train|test",
    dims="[23]",
    c=r"\d+",
    model="sparse|dense",
    method=SPARSE_INPUT,
    variant="|".join(ABLATION),


include: "workflow/rules/simulation.smk"
include: "workflow/rules/forward.smk"
include: "workflow/rules/sparse.smk"
include: "workflow/rules/network.smk"
include: "workflow/rules/evaluation.smk"


rule all:
    default_target: True
    input:
        all_outputs(),


onsuccess:
    drop_dir_timestamps(RESULTS)


onerror:
    drop_dir_timestamps(RESULTS)
