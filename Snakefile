# sparse-ulm: one pipeline from a vascular graph to ULM density maps (see README.md, DESIGN.md).
import sys

sys.path.insert(0, workflow.basedir)

from snakemake.exceptions import WorkflowError

from ulm.config import apply_preset, check_disjoint_test_graph, validate_config
from ulm.errors import UlmError


configfile: "config.yaml"


try:
    apply_preset(config, workflow.basedir, dict(workflow.config_settings.config))  # --config preset=NAME
    config.update(validate_config(config))  # fills every default, rejects unknown or mistyped keys
    check_disjoint_test_graph(config["graph"])  # no test vessel may reach training
except UlmError as exc:
    raise WorkflowError(str(exc)) from None


include: "workflow/rules/common.smk"
include: "workflow/rules/simulation.smk"
include: "workflow/rules/forward.smk"
include: "workflow/rules/sparse.smk"
include: "workflow/rules/network.smk"
include: "workflow/rules/evaluation.smk"


rule all:
    input:
        all_outputs(),
    default_target: True
