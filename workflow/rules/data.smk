# Data conversion and the nested fraction index files (pre-training; labels, per label-split seed).


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


rule pretrain_split:
    input:
        index=PATTERNS["index"],
    output:
        PATTERNS["pretrain_split"],
    log:
        "results/logs/split/{dataset}_pretrain_{fraction}.log",
    benchmark:
        "results/benchmarks/split/{dataset}_pretrain_{fraction}.tsv"
    params:
        hparams=lambda w: split_digest(config, "pretrain"),
    priority: 1  # its pre-training goes first (rules/pretrain.smk)
    conda:
        ENV
    shell:
        "occbench split --dataset {wildcards.dataset} --subset pretrain --fraction {wildcards.fraction} > {log} 2>&1"


rule label_split:
    input:
        index=PATTERNS["index"],
    output:
        PATTERNS["label_split"],
    log:
        "results/logs/split/{dataset}_labels_{fraction}_split_{split_seed}.log",
    benchmark:
        "results/benchmarks/split/{dataset}_labels_{fraction}_split_{split_seed}.tsv"
    params:
        hparams=lambda w: split_digest(config, "labels", int(w.split_seed)),
    conda:
        ENV
    shell:
        "occbench split --dataset {wildcards.dataset} --subset labels --fraction {wildcards.fraction}"
        " --split-seed {wildcards.split_seed} > {log} 2>&1"
