# Aggregation over seeds into reports/: tables, plots and the DVC metrics file.


rule aggregate:
    input:
        metrics=[str(run.metrics) for run in GRID.finetune_runs],
        checkpoints=[str(run.checkpoint) for run in GRID.pretrain_runs],  # their run_meta.json: pretext metrics
    output:
        metrics="reports/metrics.json",
        pretraining="reports/pretraining.csv",
        curves=directory("reports/curves"),
        summary="reports/summary.csv",
        runs="reports/runs.csv",
    log:
        "results/logs/aggregate.log",
    benchmark:
        "results/benchmarks/aggregate.tsv"
    conda:
        ENV
    shell:
        "occbench aggregate --out reports > {log} 2>&1"


rule report:
    input:
        summary="reports/summary.csv",
        pretraining="reports/pretraining.csv",
    output:
        tables=directory("reports/tables"),
        figures=directory("reports/figures"),
    log:
        "results/logs/report.log",
    benchmark:
        "results/benchmarks/report.tsv"
    conda:
        ENV
    shell:
        "occbench report --out reports > {log} 2>&1"
