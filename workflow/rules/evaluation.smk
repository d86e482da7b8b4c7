# Evaluation: conventional ULM, density maps of every method, metrics, and one summary table.

RUN_DIR = f"{RESULTS}/{{dims}}d/c{{c}}"
# every network of the grid, trained on the first sparsification method, is drawn and scored
# (map names must not start or end with a store kind such as sparse: check_stores.py reads kinds from names)
EVAL_NETS = {f"network_{m}_cnn": f"{RUN_DIR}/net-{m}-{config['sparse']['methods'][0]}/pred.zarr" for m in config["train"]["models"]}


rule conventional:
    input:
        f"{RUN_DIR}/iq.zarr",
    output:
        directory(f"{RUN_DIR}/localizations.zarr"),
    params:
        code=code("conventional.py"),
        cfg=section("conventional"),
    wildcard_constraints:
        dims="[23]",
        c=r"\d+",
    log:
        f"{LOGS}/{{dims}}d/c{{c}}/conventional.log",
    conda:
        "../../envs/simulation.yaml"
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "{ULM} conventional --quiet --set conventional={params.cfg:q} {input} {output} > {log} 2>&1"


rule render:
    input:
        tracks=f"{RESULTS}/c{{c}}/tracks.zarr",
        iq=f"{RUN_DIR}/iq.zarr",
        localizations=f"{RUN_DIR}/localizations.zarr",
        **EVAL_NETS,
    output:
        density=directory(f"{RUN_DIR}/density"),
        comparison=report(f"{RUN_DIR}/comparison.png", caption="../report/comparison.rst", category="Density maps",
                          subcategory="{dims}D, {c} MBs"),  # fmt: skip
    params:
        code=code("render.py", "targets.py"),
        render=section("render"),
        sparse=section("sparse", keep=("block_frames", "factor")),
        conventional=section("conventional", keep=("interp_factor",)),
        val_fraction=config["train"]["val_fraction"],
        preds=lambda w, input: " ".join(f"--pred {name}={input[name]}" for name in EVAL_NETS),
    wildcard_constraints:
        dims="[23]",
        c=r"\d+",
    log:
        f"{LOGS}/{{dims}}d/c{{c}}/render.log",
    conda:
        "../../envs/simulation.yaml"
    resources:
        mem_mb=8000,
        runtime=30,
    shell:
        "{ULM} render --quiet --set render={params.render:q} --set sparse={params.sparse:q} --set conventional={params.conventional:q}"
        " --set train.val_fraction={params.val_fraction} --localizations {input.localizations} {params.preds}"
        " {input.tracks} {input.iq} {output.density} > {log} 2>&1 && cp {output.density}/comparison.png {output.comparison}"


rule metrics:
    input:
        tracks=f"{RESULTS}/c{{c}}/tracks.zarr",
        density=f"{RUN_DIR}/density",
        localizations=f"{RUN_DIR}/localizations.zarr",
    output:
        f"{RUN_DIR}/metrics.json",
    params:
        code=code("metrics.py"),
        metrics=section("metrics"),
        render=section("render"),
        sparse=section("sparse", keep=("block_frames", "factor")),
    wildcard_constraints:
        dims="[23]",
        c=r"\d+",
    log:
        f"{LOGS}/{{dims}}d/c{{c}}/metrics.log",
    conda:
        "../../envs/simulation.yaml"
    shell:
        "{ULM} metrics --quiet --set metrics={params.metrics:q} --set render={params.render:q} --set sparse={params.sparse:q}"
        " --label {wildcards.dims}d/c{wildcards.c} --localizations {input.localizations} {input.tracks} {input.density} {output}"
        " > {log} 2>&1"


rule summary:
    input:
        expand(f"{RESULTS}/{{dims}}d/c{{c}}/metrics.json", dims=config["dims"], c=config["concentrations"]),
    output:
        report(f"{RESULTS}/metrics.csv", caption="../report/metrics.rst", category="Metrics"),
    log:
        f"{LOGS}/summary.log",
    conda:
        "../../envs/simulation.yaml"
    shell:
        "{ULM} summary {input} {output} > {log} 2>&1"
