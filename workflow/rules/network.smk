# The super-resolution network: train on the sparse store + targets, then predict every block.

NET = f"{RESULTS}/{{dims}}d/c{{c}}/net-{{model}}-{{method}}"
DEVICE = config["train"]["device"]  # not a param: the device does not change the result


def train_params():
    """Train keys that change the model (device, workers, resume and the grid do not)."""
    return section("train", drop=("models", "model", "device", "num_workers", "resume", "gpus"))


rule train:
    input:
        sparse=f"{RESULTS}/{{dims}}d/c{{c}}/sparse-{{method}}.zarr",
        target=f"{RESULTS}/{{dims}}d/c{{c}}/target.zarr",
        iq=f"{RESULTS}/{{dims}}d/c{{c}}/iq.zarr",
    output:
        model=f"{NET}/model.pt",
        metrics=f"{NET}/metrics.csv",
        plot=report(f"{NET}/train.png", caption="../report/train.rst", category="Network"),
    params:
        code=code("nn", "train.py", "dataset.py"),
        cfg=train_params(),
        seed=config["seed"],
    wildcard_constraints:
        dims="[23]",
        c=r"\d+",
        model="sparse|dense",
        method="threshold|topk|learned",
    log:
        f"{LOGS}/{{dims}}d/c{{c}}/train-{{model}}-{{method}}.log",
    conda:
        "../../envs/nn.yaml"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=240,
        gpu=config["train"]["gpus"],
    shell:
        "{ULM} train --quiet --set seed={params.seed} --set train={params.cfg:q} --set train.model={wildcards.model}"
        " --set train.device={DEVICE} --iq {input.iq} {input.sparse} {input.target} {output.model} > {log} 2>&1"


rule infer:
    input:
        model=f"{NET}/model.pt",
        sparse=f"{RESULTS}/{{dims}}d/c{{c}}/sparse-{{method}}.zarr",
        iq=f"{RESULTS}/{{dims}}d/c{{c}}/iq.zarr",
    output:
        directory(f"{NET}/pred.zarr"),
    params:
        code=code("infer.py", "nn", "dataset.py"),
    wildcard_constraints:
        dims="[23]",
        c=r"\d+",
        model="sparse|dense",
        method="threshold|topk|learned",
    log:
        f"{LOGS}/{{dims}}d/c{{c}}/infer-{{model}}-{{method}}.log",
    conda:
        "../../envs/nn.yaml"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=60,
        gpu=config["train"]["gpus"],
    shell:
        "{ULM} infer --quiet --set train.device={DEVICE} --iq {input.iq} {input.model} {input.sparse} {output} > {log} 2>&1"
