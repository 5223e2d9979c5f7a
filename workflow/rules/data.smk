# Data conversion and the nested fraction index files.


rule convert:
    output:
        index=PATTERNS["index"],
    log:
        "results/logs/convert/{dataset}.log",
    benchmark:
        "results/benchmarks/convert/{dataset}.tsv"
    wildcard_constraints:
        dataset=GRID.dataset_pattern(own_environment=False),
    params:
        occbench="occbench",
        hparams=lambda w: dataset_digest(config, w.dataset),
    threads: 2
    conda:
        ENV
    shell:
        "{params.occbench} convert --dataset {wildcards.dataset} --workers {threads} > {log} 2>&1"


# Waymo's official tools pin TensorFlow 2.13 and numpy 1.23, so its conversion
# runs in its own environment (`--sdm conda` builds it), from the source tree
# ($OCCBENCH_SRC, set by the Snakefile: no path in params, so moving the project
# re-runs nothing).
use rule convert as convert_waymo with:
    wildcard_constraints:
        dataset=GRID.dataset_pattern(own_environment=True),
    params:
        occbench='PYTHONPATH="$OCCBENCH_SRC" python -m occbench',
        hparams=lambda w: dataset_digest(config, w.dataset),
    conda:
        "../envs/waymo.yml"


rule split:
    input:
        index=PATTERNS["index"],
    output:
        PATTERNS["split"],
    log:
        "results/logs/split/{dataset}_{subset}_{fraction}.log",
    benchmark:
        "results/benchmarks/split/{dataset}_{subset}_{fraction}.tsv"
    params:
        hparams=lambda w: split_digest(config, w.subset),
    conda:
        ENV
    shell:
        "occbench split --dataset {wildcards.dataset} --subset {wildcards.subset}"
        " --fraction {wildcards.fraction} > {log} 2>&1"
