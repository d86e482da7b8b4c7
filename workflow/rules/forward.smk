# Imaging: ground-truth tracks -> beamformed IQ (2D linear array or 3D matrix array).


rule forward:
    input:
        f"{RESULTS}/c{{c}}/tracks.zarr",
    output:
        store=directory(f"{RESULTS}/{{dims}}d/c{{c}}/iq.zarr"),
        plot=report(f"{RESULTS}/{{dims}}d/c{{c}}/iq.png", caption="../report/iq.rst", category="Imaging"),
    params:
        code=code("forward", "imaging.py"),
        forward=section("forward", drop=("workers", "dask_scheduler")),
        probe=section("probe"),
        seed=config["seed"],
    wildcard_constraints:
        dims="[23]",
        c=r"\d+",
    log:
        f"{LOGS}/{{dims}}d/c{{c}}/forward.log",
    conda:
        "../../envs/simulation.yaml"
    threads: config["forward"]["workers"]
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "{ULM} forward --quiet --dims {wildcards.dims} --set seed={params.seed} --set forward={params.forward:q}"
        " --set probe={params.probe:q} --plot {output.plot} {input} {output.store} > {log} 2>&1"
