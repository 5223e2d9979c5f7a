# One pre-training job per (backbone, dataset, method, pre-training fraction); scratch has none.
# A method with a teacher waits for its checkpoint ({method} is then e.g. picture+also);
# OccFeat's self-supervised image teacher is a job of its own (rule image_teacher).


rule pretrain:
    input:
        index=PATTERNS["index"],
        split=PATTERNS["pretrain_split"],
        teacher=teacher_checkpoint,
    output:
        checkpoint=PATTERNS["checkpoint"],
    log:
        "results/logs/pretrain/{backbone}_{dataset}_{method}_{fraction}.log",
    benchmark:
        "results/benchmarks/pretrain/{backbone}_{dataset}_{method}_{fraction}.tsv"
    params:
        hparams=lambda w: pretrain_digest(config, pretrain_run(w)),
        method=lambda w: pretrain_run(w).method,
    threads: config["execution"]["threads"]
    # Before any fine-tuning that is ready too: most of the grid waits on checkpoints,
    # so a late pre-training leaves the last minutes to one job on one core.
    priority: 1
    resources:
        gpu=config["execution"]["pretrain_gpus"],
    conda:
        ENV
    # exec: occbench replaces the shell, so on SLURM's SIGTERM (time limit, preemption)
    # the job's Snakemake waits for it to save (workflow/profiles/slurm/config.yaml).
    shell:
        "exec occbench pretrain --backbone {wildcards.backbone} --dataset {wildcards.dataset}"
        " --method {params.method} --fraction {wildcards.fraction} --processes {resources.gpu} > {log} 2>&1"


# The image encoder a method (OccFeat) distils, trained self-supervised on the camera images of
# the pre-training split; one per (dataset, method, fraction), read by every backbone's run.
rule image_teacher:
    input:
        index=PATTERNS["index"],
        split=PATTERNS["pretrain_split"],
    output:
        encoder=PATTERNS["image_teacher"],
    log:
        "results/logs/image_teacher/{dataset}_{method}_{fraction}.log",
    benchmark:
        "results/benchmarks/image_teacher/{dataset}_{method}_{fraction}.tsv"
    params:
        hparams=lambda w: image_teacher_digest(config, image_teacher_run(w)),
    threads: config["execution"]["threads"]
    resources:
        gpu=1,
    conda:
        ENV
    shell:
        "exec occbench image-teacher --dataset {wildcards.dataset} --method {wildcards.method}"
        " --fraction {wildcards.fraction} > {log} 2>&1"
