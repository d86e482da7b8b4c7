# The super-resolution networks, as the reference's experiment: per dimension ONE network (per model and
# variant) trained on the training split at the training concentrations (train.concentrations, default all
# of the grid, mixed), then run on every block of the test split at every concentration. Variants: full (the
# `train` section as given) and the ablations (ulm.config.ABLATIONS, see ABLATION in common.smk).


rule train:
    input:
        unpack(training_stores),
    output:
        model=f"{RESULTS}/train/{NET}/model.pt",
        metrics=f"{RESULTS}/train/{NET}/metrics.csv",
        plot=report(
            f"{RESULTS}/train/{NET}/train.png",
            caption="../report/train.rst",
            category="Network",
        ),
    log:
        f"{LOGS}/train/{NET}.log",
    benchmark:
        f"{LOGS}/bench/train/train/{NET}.tsv"
    conda:
        "../../envs/nn.yaml"
    threads: config["train"]["threads"]
    resources:
        **resources_of("network"),
        gpu=config["train"]["gpus"],
    params:
        ulm=ULM,
        code=code("nn", "train.py", "plots.py", "imaging"),
        cfg=lambda w: set_args(settings("train", dims=w.dims, split="train")),
        ablation=lambda w: ABLATION[w.variant],
        stores=train_args,
        device=RunSetting(config["train"]["device"]),  # the device does not change the result
    shell:
        "{params.ulm} train --quiet {params.cfg} --set train.model={wildcards.model} {params.ablation}"
        " --set train.device={params.device} {params.stores} {output.model} > {log} 2>&1"


rule infer:
    input:
        model=f"{RESULTS}/train/{NET}/model.pt",
        sparse=f"{RESULTS}/test/{{dims}}d/c{{c}}/sparse-{{method}}.zarr",
        iq=f"{RESULTS}/test/{{dims}}d/c{{c}}/iq.zarr",
    output:
        directory(
            f"{RESULTS}/test/{{dims}}d/c{{c}}/net-{{model}}-{{method}}-{{variant}}/pred.zarr"
        ),
    log:
        f"{LOGS}/test/{{dims}}d/c{{c}}/net-{{model}}-{{method}}-{{variant}}-infer.log",
    benchmark:
        f"{LOGS}/bench/infer/test/{{dims}}d/c{{c}}/net-{{model}}-{{method}}-{{variant}}-infer.tsv"
    conda:
        "../../envs/nn.yaml"
    threads: config["train"]["threads"]
    resources:
        **resources_of("network"),
        gpu=config["train"]["gpus"],
    params:
        ulm=ULM,
        code=code("infer.py", "nn", "imaging"),
        device=RunSetting(config["train"]["device"]),
    shell:
        "{params.ulm} infer --quiet --set train.device={params.device} --iq {input.iq} {input.model} {input.sparse} {output}"
        " > {log} 2>&1"
