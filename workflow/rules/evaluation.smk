# Evaluation on the test split: conventional ULM, density maps of every method, metrics, and the
# summary tables and figures of the whole grid.

RUN_DIR = f"{RESULTS}/test/{{dims}}d/c{{c}}"


def eval_preds(w):
    """Map name -> pred.zarr of every network scored at this (dims, c) (see net_dirs)."""
    return {name: f"{net}/pred.zarr" for name, net in net_dirs(w.dims, w.c).items()}


rule conventional:
    input:
        f"{RUN_DIR}/iq.zarr",
    output:
        directory(f"{RUN_DIR}/localizations.zarr"),
    params:
        code=code("conventional.py"),
        cfg=lambda w: section("conventional", dims=w.dims),
    wildcard_constraints:
        dims="[23]",
        c=r"\d+",
    log:
        f"{LOGS}/test/{{dims}}d/c{{c}}/conventional.log",
    benchmark:
        f"{LOGS}/bench/conventional/test/{{dims}}d/c{{c}}/conventional.tsv",
    conda:
        "../../envs/simulation.yaml"
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "{ULM} conventional --quiet --set conventional={params.cfg:q} {input} {output} > {log} 2>&1"


rule render:
    input:
        tracks=f"{RESULTS}/test/c{{c}}/tracks.zarr",
        iq=f"{RUN_DIR}/iq.zarr",
        localizations=f"{RUN_DIR}/localizations.zarr",
        preds=lambda w: list(eval_preds(w).values()),
        trivial=f"{RUN_DIR}/sparse-{METHOD}.zarr",  # the headline networks' input: the trivial predictor
    output:
        density=directory(f"{RUN_DIR}/density"),
        comparison=report(f"{RUN_DIR}/comparison.png", caption="../report/comparison.rst", category="Density maps",
                          subcategory="{dims}D, {c} MBs"),  # fmt: skip
    params:
        code=code("render.py", "targets.py"),
        render=lambda w: section("render", dims=w.dims),
        sparse=lambda w: section("sparse", keep=("block_frames", "factor"), dims=w.dims),
        conventional=lambda w: section("conventional", keep=("interp_factor",), dims=w.dims),
        preds=lambda w: " ".join(f"--pred {name}={path}" for name, path in eval_preds(w).items()),
    wildcard_constraints:
        dims="[23]",
        c=r"\d+",
    log:
        f"{LOGS}/test/{{dims}}d/c{{c}}/render.log",
    benchmark:
        f"{LOGS}/bench/render/test/{{dims}}d/c{{c}}/render.tsv",
    conda:
        "../../envs/simulation.yaml"
    resources:
        mem_mb=8000,
        runtime=30,
    shell:
        "{ULM} render --quiet --set render={params.render:q} --set sparse={params.sparse:q} --set conventional={params.conventional:q}"
        " --localizations {input.localizations} {params.preds} --input {input.trivial}"
        " {input.tracks} {input.iq} {output.density} > {log} 2>&1 && cp {output.density}/comparison.png {output.comparison}"


rule metrics:
    input:
        tracks=f"{RESULTS}/test/c{{c}}/tracks.zarr",
        density=f"{RUN_DIR}/density",
        localizations=f"{RUN_DIR}/localizations.zarr",
    output:
        f"{RUN_DIR}/metrics.json",
    params:
        code=code("metrics.py"),
        metrics=lambda w: section("metrics", dims=w.dims),
        render=lambda w: section("render", dims=w.dims),
        sparse=lambda w: section("sparse", keep=("block_frames", "factor"), dims=w.dims),
    wildcard_constraints:
        dims="[23]",
        c=r"\d+",
    log:
        f"{LOGS}/test/{{dims}}d/c{{c}}/metrics.log",
    benchmark:
        f"{LOGS}/bench/metrics/test/{{dims}}d/c{{c}}/metrics.tsv",
    conda:
        "../../envs/simulation.yaml"
    shell:
        "{ULM} metrics --quiet --set metrics={params.metrics:q} --set render={params.render:q} --set sparse={params.sparse:q}"
        " --label {wildcards.dims}d/c{wildcards.c} --localizations {input.localizations} {input.tracks} {input.density} {output}"
        " > {log} 2>&1"


rule summary:
    input:
        metrics=[f"{run}/metrics.json" for run in runs()],
        tradeoff=[f"{run}/sparse-{m}.csv" for run in runs() for m in methods(run_dims(run))],
        train=[f"{RESULTS}/train/{d}d/net-sparse-{METHOD}-{v}/metrics.csv" for d in config["dims"] for v in variants(d)
               if len(variants(d)) > 1],  # fmt: skip
    output:
        table=report(f"{RESULTS}/metrics.csv", caption="../report/metrics.rst", category="Metrics"),
        dice=report(f"{RESULTS}/dice.png", caption="../report/dice.rst", category="Metrics"),
        ablation=report(f"{RESULTS}/ablation.csv", caption="../report/ablation.rst", category="Metrics"),
        tradeoff=report(f"{RESULTS}/tradeoff.png", caption="../report/tradeoff.rst", category="Sparsification"),
    params:
        code=code("summary.py", "metrics.py"),
        train=lambda w, input: f"--train-metrics {' '.join(input.train)}" if input.train else "",
    log:
        f"{LOGS}/summary.log",
    benchmark:
        f"{LOGS}/bench/summary/summary.tsv",
    conda:
        "../../envs/simulation.yaml"
    shell:
        "{ULM} summary --dice-plot {output.dice} --ablation {output.ablation} --tradeoff-plot {output.tradeoff}"
        " --tradeoff {input.tradeoff} {params.train} -- {input.metrics} {output.table} > {log} 2>&1"


rule claims:
    input:
        metrics=[f"{run}/metrics.json" for run in runs()],
        kept=[f"{RESULTS}/test/{d}d/c{c}/sparse-{m}.csv" for d in config["dims"] for c in concentrations(d)
              for m in [METHOD, *sweep(d)]],  # fmt: skip
        memory=[f"{RESULTS}/memory/memory.json"] if config["memory"]["enabled"] else [],
        density=[f"{RESULTS}/test/{d}d/c{c}/density" for d in config["dims"] for c in sorted({min(concentrations(d)),
                 max(concentrations(d))})],  # fmt: skip
        train=[f"{RESULTS}/train/{d}d/{Path(net).name}/metrics.csv" for d in config["dims"]
               for net in net_dirs(d, concentrations(d)[0]).values()],  # fmt: skip
    output:
        table=report(f"{RESULTS}/claims.csv", caption="../report/claims.rst", category="Claims"),
        dice_kept=report(f"{RESULTS}/dice_kept.png", caption="../report/dice_kept.rst", category="Claims"),
        ablation=report(f"{RESULTS}/ablation.png", caption="../report/ablation_bars.rst", category="Claims"),
        maps=report(f"{RESULTS}/maps.png", caption="../report/maps.rst", category="Claims"),
        learning=report(f"{RESULTS}/learning.png", caption="../report/learning.rst", category="Claims"),
    params:
        code=code("claims.py", "claims_figures.py", "metrics.py"),
        memory=lambda w, input: f"--memory {input.memory[0]}" if input.memory else "",
        headline=METHOD,
    log:
        f"{LOGS}/claims.log",
    conda:
        "../../envs/simulation.yaml"
    shell:
        "{ULM} claims {params.memory} --headline-input {params.headline} --kept {input.kept} --dice-kept-plot {output.dice_kept}"
        " --ablation-plot {output.ablation} --maps-plot {output.maps} --density {input.density} --learning-plot {output.learning}"
        " --train-metrics {input.train} -- {input.metrics}"
        " {output.table} > {log} 2>&1"


rule memory:
    input:
        bench=BENCHMARKS / "memory.py",
    output:
        table=report(f"{RESULTS}/memory/memory.csv", caption="../report/memory.rst", category="Memory"),
        plot=report(f"{RESULTS}/memory/memory.png", caption="../report/memory.rst", category="Memory"),
        summary=f"{RESULTS}/memory/memory.json",
    params:
        code=code("nn"),
        dims=" ".join(map(str, config["dims"])),
        quick="--quick --no-rss-check" if config["memory"]["quick"] else "",
    log:
        f"{LOGS}/memory.log",
    benchmark:
        f"{LOGS}/bench/memory/memory.tsv",
    conda:
        "../../envs/nn.yaml"
    threads: 2
    resources:
        mem_mb=4000 if config["memory"]["quick"] else 16000,
        runtime=60,
    shell:
        "{PYTHON} {input.bench:q} {params.quick} --dims {params.dims} --threads {threads}"
        " --out {RESULTS}/memory > {log} 2>&1"
