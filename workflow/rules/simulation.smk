# Ground truth, for each split (train, test): vascular graph -> blood flow -> microbubble tracks.


rule graph:
    input:
        lambda w: graph_source_file(w.split),
    output:
        directory(f"{RESULTS}/{{split}}/graph.zarr"),
    log:
        f"{LOGS}/{{split}}/graph.log",
    benchmark:
        f"{LOGS}/bench/graph/{{split}}/graph.tsv"
    conda:
        "../../envs/simulation.yaml"
    resources:
        **resources_of("simulation"),
    params:
        ulm=ULM,
        code=code("vascular.py"),
        cfg=lambda w: graph_args(w.split),
        source=lambda w: graph_source(w.split),
    shell:
        "{params.ulm} graph --quiet {params.cfg} {params.source:q} {output} > {log} 2>&1"


rule flow:
    input:
        f"{RESULTS}/{{split}}/graph.zarr",
    output:
        store=directory(f"{RESULTS}/{{split}}/flow.zarr"),
        plot=report(
            f"{RESULTS}/{{split}}/flow.png",
            caption="../report/flow.rst",
            category="Ground truth",
            subcategory="{split}",
        ),
    log:
        f"{LOGS}/{{split}}/flow.log",
    benchmark:
        f"{LOGS}/bench/flow/{{split}}/flow.tsv"
    conda:
        "../../envs/simulation.yaml"
    resources:
        **resources_of("simulation"),
    params:
        ulm=ULM,
        code=code("flow.py"),
        cfg=stage_args("flow"),
    shell:
        "{params.ulm} flow --quiet {params.cfg} --plot {output.plot} {input} {output.store} > {log} 2>&1"


rule bubbles:
    input:
        graph=f"{RESULTS}/{{split}}/graph.zarr",
        flow=f"{RESULTS}/{{split}}/flow.zarr",
    output:
        store=directory(f"{RESULTS}/{{split}}/c{{c}}/tracks.zarr"),
        plot=report(
            f"{RESULTS}/{{split}}/c{{c}}/tracks.png",
            caption="../report/tracks.rst",
            category="Ground truth",
            subcategory="{split}",
        ),
    log:
        f"{LOGS}/{{split}}/c{{c}}/bubbles.log",
    benchmark:
        f"{LOGS}/bench/bubbles/{{split}}/c{{c}}/bubbles.tsv"
    conda:
        "../../envs/simulation.yaml"
    threads: threads_of("simulation")
    resources:
        **resources_of("simulation"),
    params:
        ulm=ULM,
        code=code("bubbles.py"),
        cfg=stage_args("bubbles"),
    shell:
        "NUMBA_NUM_THREADS={threads} {params.ulm} bubbles --quiet {params.cfg} --set bubbles.concentration={wildcards.c}"
        " --plot {output.plot} {input.graph} {input.flow} {output.store} > {log} 2>&1"
