# The super-resolution networks, as the reference's experiment: per dimension ONE network (per model and
# variant) trained on the training split at the training concentrations (train.concentrations, default all
# of the grid, mixed), then run on every block of the test split at every concentration. Variants: full (the
# `train` section as given) and the ablations.

from ulm.config import ABLATIONS

NET = "{dims}d/net-{model}-{method}-{variant}"  # one network per dimension, model, method and variant
DEVICE = config["train"]["device"]  # not a param: the device does not change the result
# variant -> its changes to the `train` section (full: as configured; the ablations: ulm.config.ABLATIONS)
ABLATION = {"full": "", **{v: " ".join(f"--set train.{k}={json.dumps(x)}" for k, x in c.items()) for v, c in ABLATIONS.items()}}
NET_WILDCARDS = {"dims": "[23]", "c": r"\d+", "model": "sparse|dense", "method": SPARSE_INPUT,
                 "variant": "|".join(ABLATION)}  # fmt: skip


rule train:
    input:
        unpack(training_stores),
    output:
        model=f"{RESULTS}/train/{NET}/model.pt",
        metrics=f"{RESULTS}/train/{NET}/metrics.csv",
        plot=report(f"{RESULTS}/train/{NET}/train.png", caption="../report/train.rst", category="Network"),
    params:
        code=code("nn", "train.py", "dataset.py"),
        cfg=train_params,
        seed=config["seed"],
        ablation=lambda w: ABLATION[w.variant],
        stores=train_args,
    wildcard_constraints:
        **NET_WILDCARDS,
    log:
        f"{LOGS}/train/{NET}.log",
    benchmark:
        f"{LOGS}/bench/train/train/{NET}.tsv",
    conda:
        "../../envs/nn.yaml"
    threads: config["train"]["threads"]
    resources:
        mem_mb=16000,
        runtime=240,
        gpu=config["train"]["gpus"],
    shell:
        "{ULM} train --quiet --set seed={params.seed} --set train={params.cfg:q} --set train.model={wildcards.model}"
        " {params.ablation} --set train.device={DEVICE} {params.stores} {output.model} > {log} 2>&1"


rule infer:
    input:
        model=f"{RESULTS}/train/{NET}/model.pt",
        sparse=f"{RESULTS}/test/{{dims}}d/c{{c}}/sparse-{{method}}.zarr",
        iq=f"{RESULTS}/test/{{dims}}d/c{{c}}/iq.zarr",
    output:
        directory(f"{RESULTS}/test/{{dims}}d/c{{c}}/net-{{model}}-{{method}}-{{variant}}/pred.zarr"),
    params:
        code=code("infer.py", "nn", "dataset.py"),
    wildcard_constraints:
        **NET_WILDCARDS,
    log:
        f"{LOGS}/test/{{dims}}d/c{{c}}/net-{{model}}-{{method}}-{{variant}}-infer.log",
    benchmark:
        f"{LOGS}/bench/infer/test/{{dims}}d/c{{c}}/net-{{model}}-{{method}}-{{variant}}-infer.tsv",
    conda:
        "../../envs/nn.yaml"
    threads: config["train"]["threads"]
    resources:
        mem_mb=16000,
        runtime=60,
        gpu=config["train"]["gpus"],
    shell:
        "{ULM} infer --quiet --set train.device={DEVICE} --iq {input.iq} {input.model} {input.sparse} {output} > {log} 2>&1"
