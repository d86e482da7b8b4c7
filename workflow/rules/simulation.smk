# Ground truth: vascular graph -> blood flow -> microbubble tracks.


rule graph:
    input:
        graph_source_file(),
    output:
        directory(f"{RESULTS}/graph.zarr"),
    params:
        code=code("vascular.py"),
        cfg=section("graph"),
        source=config["graph"]["source"],
        seed=graph_seed(),
    log:
        f"{LOGS}/graph.log",
    conda:
        "../../envs/simulation.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "{ULM} graph --quiet --set seed={params.seed} --set graph={params.cfg:q} {params.source:q} {output} > {log} 2>&1"


rule flow:
    input:
        f"{RESULTS}/graph.zarr",
    output:
        store=directory(f"{RESULTS}/flow.zarr"),
        plot=report(f"{RESULTS}/flow.png", caption="../report/flow.rst", category="Ground truth"),
    params:
        code=code("flow.py"),
        cfg=section("flow"),
    log:
        f"{LOGS}/flow.log",
    conda:
        "../../envs/simulation.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "{ULM} flow --quiet --set flow={params.cfg:q} --plot {output.plot} {input} {output.store} > {log} 2>&1"


rule bubbles:
    input:
        graph=f"{RESULTS}/graph.zarr",
        flow=f"{RESULTS}/flow.zarr",
    output:
        store=directory(f"{RESULTS}/c{{c}}/tracks.zarr"),
        plot=report(f"{RESULTS}/c{{c}}/tracks.png", caption="../report/tracks.rst", category="Ground truth"),
    params:
        code=code("bubbles.py"),
        cfg=section("bubbles", drop=("concentration",)),
        seed=config["seed"],
    wildcard_constraints:
        c=r"\d+",
    log:
        f"{LOGS}/c{{c}}/bubbles.log",
    conda:
        "../../envs/simulation.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "NUMBA_NUM_THREADS={threads} {ULM} bubbles --quiet --set seed={params.seed} --set bubbles={params.cfg:q}"
        " --set bubbles.concentration={wildcards.c} --plot {output.plot} {input.graph} {input.flow} {output.store} > {log} 2>&1"
