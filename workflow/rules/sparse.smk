# Sparse conversion, for each split: beamformed IQ -> COO blocks for the sparse networks; 8x ground-truth
# targets and the learned mask come from the training split only.


rule mask:
    input:
        iq=f"{RESULTS}/train/{{dims}}d/c{{c}}/iq.zarr",
        tracks=f"{RESULTS}/train/c{{c}}/tracks.zarr",
    output:
        f"{RESULTS}/train/{{dims}}d/c{{c}}/mask.pt",
    params:
        code=code("mask.py"),
        cfg=lambda w: section("sparse", keep=("block_frames", "learned_epochs"), dims=w.dims),
        val_fraction=config["train"]["val_fraction"],
        seed=config["seed"],
    wildcard_constraints:
        dims="[23]",
        c=r"\d+",
    log:
        f"{LOGS}/train/{{dims}}d/c{{c}}/mask.log",
    benchmark:
        f"{LOGS}/bench/mask/train/{{dims}}d/c{{c}}/mask.tsv",
    conda:
        "../../envs/nn.yaml"
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "{ULM} mask --quiet --set seed={params.seed} --set sparse={params.cfg:q} --set train.val_fraction={params.val_fraction}"
        " {input.iq} {input.tracks} {output} > {log} 2>&1"


rule sparsify:
    input:
        iq=f"{RUN_OF_SPLIT}/iq.zarr",
        tracks=f"{RESULTS}/{{split}}/c{{c}}/tracks.zarr",
        mask=lambda w: f"{RESULTS}/train/{w.dims}d/c{w.c}/mask.pt" if w.method == "learned" else [],
    output:
        store=directory(f"{RUN_OF_SPLIT}/sparse-{{method}}.zarr"),
        csv=f"{RUN_OF_SPLIT}/sparse-{{method}}.csv",
        plot=report(f"{RUN_OF_SPLIT}/sparse-{{method}}.png", caption="../report/sparse.rst", category="Sparsification",
                    subcategory="{split}"),  # fmt: skip
    params:
        code=code("sparse.py", "imaging.py"),
        cfg=sparsify_section,
        method=lambda w: sweep_point(w.method)[0],
        mask=lambda w, input: f"--set sparse.mask_checkpoint={input.mask}" if w.method == "learned" else "",
    wildcard_constraints:
        split="train|test",
        dims="[23]",
        c=r"\d+",
        method=SPARSE_INPUT,
    log:
        f"{LOGS}/{{split}}/{{dims}}d/c{{c}}/sparsify-{{method}}.log",
    benchmark:
        f"{LOGS}/bench/sparsify/{{split}}/{{dims}}d/c{{c}}/sparsify-{{method}}.tsv",
    conda:
        "../../envs/nn.yaml"
    threads: config["sparse"]["workers"]
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "{ULM} sparsify --quiet --set sparse={params.cfg:q} --set sparse.method={params.method} {params.mask}"
        " --tracks {input.tracks} --csv {output.csv} --plot {output.plot} {input.iq} {output.store} > {log} 2>&1"


rule targets:
    input:
        tracks=f"{RESULTS}/train/c{{c}}/tracks.zarr",
        iq=f"{RESULTS}/train/{{dims}}d/c{{c}}/iq.zarr",
    output:
        directory(f"{RESULTS}/train/{{dims}}d/c{{c}}/target.zarr"),
    params:
        code=code("targets.py", "sparse.py", "imaging.py"),
        cfg=lambda w: section("sparse", keep=("block_frames", "tile_px", "tile_overlap_px", "factor", "target"), dims=w.dims),
    wildcard_constraints:
        dims="[23]",
        c=r"\d+",
    log:
        f"{LOGS}/train/{{dims}}d/c{{c}}/targets.log",
    benchmark:
        f"{LOGS}/bench/targets/train/{{dims}}d/c{{c}}/targets.tsv",
    conda:
        "../../envs/nn.yaml"
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "{ULM} targets --quiet --set sparse={params.cfg:q} {input.tracks} {input.iq} {output} > {log} 2>&1"
