# Evaluation on the test split: conventional ULM, density maps of every method, metrics, and the
# summary tables and figures of the whole grid.


rule conventional:
    input:
        f"{RUN_DIR}/iq.zarr",
    output:
        directory(f"{RUN_DIR}/localizations.zarr"),
    log:
        f"{LOGS}/test/{{dims}}d/c{{c}}/conventional.log",
    benchmark:
        f"{LOGS}/bench/conventional/test/{{dims}}d/c{{c}}/conventional.tsv"
    conda:
        "../../envs/simulation.yaml"
    resources:
        **resources_of("evaluation"),
    params:
        ulm=ULM,
        code=code("conventional", "imaging"),
        cfg=stage_args("conventional"),
    shell:
        "{params.ulm} conventional --quiet {params.cfg} {input} {output} > {log} 2>&1"


rule render:
    input:
        tracks=f"{RESULTS}/test/c{{c}}/tracks.zarr",
        iq=f"{RUN_DIR}/iq.zarr",
        localizations=f"{RUN_DIR}/localizations.zarr",
        preds=lambda w: list(eval_preds(w).values()),
        # the headline networks' input: the trivial predictor
        trivial=f"{RUN_DIR}/sparse-{METHOD}.zarr",
    output:
        density=directory(f"{RUN_DIR}/density"),
        comparison=report(
            f"{RUN_DIR}/comparison.png",
            caption="../report/comparison.rst",
            category="Density maps",
            subcategory="{dims}D, {c} MBs",
        ),
    log:
        f"{LOGS}/test/{{dims}}d/c{{c}}/render.log",
    benchmark:
        f"{LOGS}/bench/render/test/{{dims}}d/c{{c}}/render.tsv"
    conda:
        "../../envs/simulation.yaml"
    resources:
        **resources_of("evaluation"),
    params:
        ulm=ULM,
        code=code("render.py", "imaging"),
        cfg=stage_args("render"),
        preds=lambda w: " ".join(
            f"--pred {name}={path}" for name, path in eval_preds(w).items()
        ),
    shell:
        "{params.ulm} render --quiet {params.cfg} --localizations {input.localizations} {params.preds} --input {input.trivial}"
        " --comparison {output.comparison} {input.tracks} {input.iq} {output.density} > {log} 2>&1"


rule metrics:
    input:
        tracks=f"{RESULTS}/test/c{{c}}/tracks.zarr",
        density=f"{RUN_DIR}/density",
        localizations=f"{RUN_DIR}/localizations.zarr",
    output:
        f"{RUN_DIR}/metrics.json",
    log:
        f"{LOGS}/test/{{dims}}d/c{{c}}/metrics.log",
    benchmark:
        f"{LOGS}/bench/metrics/test/{{dims}}d/c{{c}}/metrics.tsv"
    conda:
        "../../envs/simulation.yaml"
    resources:
        **resources_of("evaluation"),
    params:
        ulm=ULM,
        code=code("metrics.py", "imaging"),
        cfg=stage_args("metrics"),
    shell:
        "{params.ulm} metrics --quiet {params.cfg} --label {wildcards.dims}d/c{wildcards.c}"
        " --localizations {input.localizations} {input.tracks} {input.density} {output} > {log} 2>&1"


rule summary:
    input:
        metrics=[f"{run}/metrics.json" for run in runs()],
        tradeoff=[
            f"{run}/sparse-{m}.csv" for run in runs() for m in methods(run_dims(run))
        ],
        train=[log for log, _ in ablation_logs()],
    output:
        table=report(
            f"{RESULTS}/metrics.csv",
            caption="../report/metrics.rst",
            category="Metrics",
        ),
        dice=report(
            f"{RESULTS}/dice.png", caption="../report/dice.rst", category="Metrics"
        ),
        ablation=report(
            f"{RESULTS}/ablation.csv",
            caption="../report/ablation.rst",
            category="Metrics",
        ),
        tradeoff=report(
            f"{RESULTS}/tradeoff.png",
            caption="../report/tradeoff.rst",
            category="Sparsification",
        ),
    log:
        f"{LOGS}/summary.log",
    benchmark:
        f"{LOGS}/bench/summary/summary.tsv"
    conda:
        "../../envs/simulation.yaml"
    resources:
        **resources_of("evaluation"),
    params:
        ulm=ULM,
        code=code("summary.py", "results.py"),
        runs=" ".join(
            f"--run dims={run_dims(run)} concentration={Path(run).name[1:]}"
            for run in runs()
        ),
        train=ablation_args(),
    shell:
        "{params.ulm} summary {params.runs} {params.train} --dice-plot {output.dice} --ablation {output.ablation}"
        " --tradeoff-plot {output.tradeoff} --tradeoff {input.tradeoff} -- {input.metrics} {output.table} > {log} 2>&1"


rule claims:
    input:
        metrics=[f"{run}/metrics.json" for run in runs()],
        kept=[
            f"{run}/sparse-{m}.csv"
            for run in runs()
            for m in [METHOD, *sweep(run_dims(run))]
        ],
        memory=[f"{RESULTS}/memory/memory.json"] if config["memory"]["enabled"] else [],
        density=[
            f"{RESULTS}/test/{d}d/c{c}/density"
            for d in config["dims"]
            for c in sorted({min(concentrations(d)), max(concentrations(d))})
        ],
        train=[
            f"{RESULTS}/train/{d}d/{Path(net).name}/metrics.csv"
            for d in config["dims"]
            for net in net_dirs(d, concentrations(d)[0]).values()
        ],
    output:
        table=report(
            f"{RESULTS}/claims.csv", caption="../report/claims.rst", category="Claims"
        ),
        dice_kept=report(
            f"{RESULTS}/dice_kept.png",
            caption="../report/dice_kept.rst",
            category="Claims",
        ),
        ablation=report(
            f"{RESULTS}/ablation.png",
            caption="../report/ablation_bars.rst",
            category="Claims",
        ),
        maps=report(
            f"{RESULTS}/maps.png", caption="../report/maps.rst", category="Claims"
        ),
        learning=report(
            f"{RESULTS}/learning.png",
            caption="../report/learning.rst",
            category="Claims",
        ),
    log:
        f"{LOGS}/claims.log",
    conda:
        "../../envs/simulation.yaml"
    resources:
        **resources_of("evaluation"),
    params:
        ulm=ULM,
        code=code("claims", "results.py"),
        cfg=set_args(settings("claims")),
        memory=lambda w, input: f"--memory {input.memory[0]}" if input.memory else "",
        headline=METHOD,
    shell:
        "{params.ulm} claims {params.cfg} {params.memory} --headline-input {params.headline} --kept {input.kept}"
        " --dice-kept-plot {output.dice_kept} --ablation-plot {output.ablation} --maps-plot {output.maps}"
        " --density {input.density} --learning-plot {output.learning} --train-metrics {input.train}"
        " -- {input.metrics} {output.table} > {log} 2>&1"


rule memory:
    input:
        bench=BENCHMARKS / "memory.py",
    output:
        table=report(
            f"{RESULTS}/memory/memory.csv",
            caption="../report/memory.rst",
            category="Memory",
        ),
        plot=report(
            f"{RESULTS}/memory/memory.png",
            caption="../report/memory.rst",
            category="Memory",
        ),
        summary=f"{RESULTS}/memory/memory.json",
    log:
        f"{LOGS}/memory.log",
    benchmark:
        f"{LOGS}/bench/memory/memory.tsv"
    conda:
        "../../envs/nn.yaml"
    threads: threads_of(memory_group())
    resources:
        **resources_of(memory_group()),
    params:
        python=PYTHON,
        code=code("nn"),
        args=memory_args(),
    shell:
        "{params.python} {input.bench:q} {params.args} --threads {threads}"
        ' --out "$(dirname {output.summary:q})" > {log} 2>&1'
