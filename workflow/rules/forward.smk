# Imaging, for each split: ground-truth tracks -> beamformed IQ (2D linear array or 3D matrix array).

# how the frames are computed (local threads or an existing dask cluster) does not change them: not params
SCHEDULER = config["forward"]["dask_scheduler"]
ON_CLUSTER = f"--set forward.dask_scheduler={SCHEDULER}" if SCHEDULER else ""


rule forward:
    input:
        f"{RESULTS}/{{split}}/c{{c}}/tracks.zarr",
    output:
        store=directory(f"{RUN_OF_SPLIT}/iq.zarr"),
        plot=report(f"{RUN_OF_SPLIT}/iq.png", caption="../report/iq.rst", category="Imaging", subcategory="{split}"),
    params:
        code=code("forward", "imaging.py"),
        forward=lambda w: section("forward", drop=("workers", "dask_scheduler"), dims=w.dims),
        probe=section("probe"),
        seed=lambda w: split_seed(w.split),
    wildcard_constraints:
        split="train|test",
        dims="[23]",
        c=r"\d+",
    log:
        f"{LOGS}/{{split}}/{{dims}}d/c{{c}}/forward.log",
    benchmark:
        f"{LOGS}/bench/forward/{{split}}/{{dims}}d/c{{c}}/forward.tsv",
    conda:
        "../../envs/simulation.yaml"
    threads: config["forward"]["workers"]
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "{ULM} forward --quiet --dims {wildcards.dims} --set seed={params.seed} --set forward={params.forward:q}"
        " --set forward.workers={threads} {ON_CLUSTER}"
        " --set probe={params.probe:q} --plot {output.plot} {input} {output.store} > {log} 2>&1"
