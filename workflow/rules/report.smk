# Aggregation over seeds into reports/: tables, plots and the DVC metrics file.


rule aggregate:
    input:
        [str(run.metrics) for run in GRID.finetune_runs],
    output:
        metrics="reports/metrics.json",
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
