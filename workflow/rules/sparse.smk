# Sparse conversion, for each split: beamformed IQ -> COO blocks for the sparse networks; 8x ground-truth
# targets and the learned mask come from the training split only.


rule mask:
    input:
        iq=f"{RESULTS}/train/{{dims}}d/c{{c}}/iq.zarr",
        tracks=f"{RESULTS}/train/c{{c}}/tracks.zarr",
    output:
        f"{RESULTS}/train/{{dims}}d/c{{c}}/mask.pt",
    log:
        f"{LOGS}/train/{{dims}}d/c{{c}}/mask.log",
    benchmark:
        f"{LOGS}/bench/mask/train/{{dims}}d/c{{c}}/mask.tsv"
    conda:
        "../../envs/nn.yaml"
    resources:
        **resources_of("imaging"),
    params:
        ulm=ULM,
        code=code("mask.py", "imaging", "nn/loss.py", "nn/mask_net.py"),
        cfg=lambda w: set_args(settings("mask", dims=w.dims, split="train")),
    shell:
        "{params.ulm} mask --quiet {params.cfg} {input.iq} {input.tracks} {output} > {log} 2>&1"


rule sparsify:
    input:
        iq=f"{RUN_OF_SPLIT}/iq.zarr",
        tracks=f"{RESULTS}/{{split}}/c{{c}}/tracks.zarr",
        mask=lambda w: (
            f"{RESULTS}/train/{w.dims}d/c{w.c}/mask.pt"
            if w.method == "learned"
            else []
        ),
    output:
        store=directory(f"{RUN_OF_SPLIT}/sparse-{{method}}.zarr"),
        csv=f"{RUN_OF_SPLIT}/sparse-{{method}}.csv",
        plot=report(
            f"{RUN_OF_SPLIT}/sparse-{{method}}.png",
            caption="../report/sparse.rst",
            category="Sparsification",
            subcategory="{split}",
        ),
    log:
        f"{LOGS}/{{split}}/{{dims}}d/c{{c}}/sparsify-{{method}}.log",
    benchmark:
        f"{LOGS}/bench/sparsify/{{split}}/{{dims}}d/c{{c}}/sparsify-{{method}}.tsv"
    conda:
        "../../envs/nn.yaml"
    threads: config["sparse"]["workers"]
    resources:
        **resources_of("imaging"),
    params:
        ulm=ULM,
        code=code("sparse.py", "imaging", "nn/mask_net.py"),
        cfg=sparsify_args,
        mask=lambda w, input: (
            f"--set sparse.mask_checkpoint={input.mask}"
            if w.method == "learned"
            else ""
        ),
    shell:
        "{params.ulm} sparsify --quiet {params.cfg} --set sparse.workers={threads} {params.mask}"
        " --tracks {input.tracks} --csv {output.csv} --plot {output.plot} {input.iq} {output.store} > {log} 2>&1"


rule targets:
    input:
        tracks=f"{RESULTS}/train/c{{c}}/tracks.zarr",
        iq=f"{RESULTS}/train/{{dims}}d/c{{c}}/iq.zarr",
    output:
        directory(f"{RESULTS}/train/{{dims}}d/c{{c}}/target.zarr"),
    log:
        f"{LOGS}/train/{{dims}}d/c{{c}}/targets.log",
    benchmark:
        f"{LOGS}/bench/targets/train/{{dims}}d/c{{c}}/targets.tsv"
    conda:
        "../../envs/nn.yaml"
    resources:
        **resources_of("imaging"),
    params:
        ulm=ULM,
        code=code("targets.py", "imaging"),
        cfg=lambda w: set_args(settings("targets", dims=w.dims, split="train")),
    shell:
        "{params.ulm} targets --quiet {params.cfg} {input.tracks} {input.iq} {output} > {log} 2>&1"
