# Ground truth, for each split (train, test): vascular graph -> blood flow -> microbubble tracks.

SPLIT = f"{RESULTS}/{{split}}"


rule graph:
    input:
        lambda w: graph_source_file(w.split),
    output:
        directory(f"{SPLIT}/graph.zarr"),
    params:
        code=code("vascular.py"),
        cfg=lambda w: graph_section(w.split),
        source=lambda w: graph_source(w.split),
        seed=lambda w: graph_seed(w.split),
    wildcard_constraints:
        split="train|test",
    log:
        f"{LOGS}/{{split}}/graph.log",
    benchmark:
        f"{LOGS}/bench/graph/{{split}}/graph.tsv",
    conda:
        "../../envs/simulation.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "{ULM} graph --quiet --set seed={params.seed} --set graph={params.cfg:q} {params.source:q} {output} > {log} 2>&1"


rule flow:
    input:
        f"{SPLIT}/graph.zarr",
    output:
        store=directory(f"{SPLIT}/flow.zarr"),
        plot=report(f"{SPLIT}/flow.png", caption="../report/flow.rst", category="Ground truth", subcategory="{split}"),
    params:
        code=code("flow.py"),
        cfg=section("flow"),
    wildcard_constraints:
        split="train|test",
    log:
        f"{LOGS}/{{split}}/flow.log",
    benchmark:
        f"{LOGS}/bench/flow/{{split}}/flow.tsv",
    conda:
        "../../envs/simulation.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "{ULM} flow --quiet --set flow={params.cfg:q} --plot {output.plot} {input} {output.store} > {log} 2>&1"


rule bubbles:
    input:
        graph=f"{SPLIT}/graph.zarr",
        flow=f"{SPLIT}/flow.zarr",
    output:
        store=directory(f"{SPLIT}/c{{c}}/tracks.zarr"),
        plot=report(f"{SPLIT}/c{{c}}/tracks.png", caption="../report/tracks.rst", category="Ground truth", subcategory="{split}"),
    params:
        code=code("bubbles.py"),
        cfg=section("bubbles", drop=("concentration",)),
        seed=lambda w: split_seed(w.split),
    wildcard_constraints:
        split="train|test",
        c=r"\d+",
    log:
        f"{LOGS}/{{split}}/c{{c}}/bubbles.log",
    benchmark:
        f"{LOGS}/bench/bubbles/{{split}}/c{{c}}/bubbles.tsv",
    conda:
        "../../envs/simulation.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "NUMBA_NUM_THREADS={threads} {ULM} bubbles --quiet --set seed={params.seed} --set bubbles={params.cfg:q}"
        " --set bubbles.concentration={wildcards.c} --plot {output.plot} {input.graph} {input.flow} {output.store} > {log} 2>&1"
