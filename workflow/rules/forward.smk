# Imaging, for each split: ground-truth tracks -> beamformed IQ (2D linear array or 3D matrix array).


rule forward:
    input:
        f"{RESULTS}/{{split}}/c{{c}}/tracks.zarr",
    output:
        store=directory(f"{RUN_OF_SPLIT}/iq.zarr"),
        plot=report(
            f"{RUN_OF_SPLIT}/iq.png",
            caption="../report/iq.rst",
            category="Imaging",
            subcategory="{split}",
        ),
    log:
        f"{LOGS}/{{split}}/{{dims}}d/c{{c}}/forward.log",
    benchmark:
        f"{LOGS}/bench/forward/{{split}}/{{dims}}d/c{{c}}/forward.tsv"
    conda:
        "../../envs/simulation.yaml"
    threads: config["forward"]["workers"]
    resources:
        **resources_of("imaging"),
    params:
        ulm=ULM,
        code=code("forward", "imaging"),
        cfg=stage_args("forward"),
        # where the frames are computed (local threads or an existing dask cluster) does not change them
        scheduler=RunSetting(
            f"--set forward.dask_scheduler={shlex.quote(config['forward']['dask_scheduler'])}"
            if config["forward"]["dask_scheduler"]
            else ""
        ),
    shell:
        "{params.ulm} forward --quiet --dims {wildcards.dims} {params.cfg} --set forward.workers={threads} {params.scheduler}"
        " --plot {output.plot} {input} {output.store} > {log} 2>&1"
