# One fine-tuning job per (task, backbone, dataset, source, mode, label fraction, label-split seed, seed).


rule finetune:
    input:
        index=PATTERNS["index"],
        split=PATTERNS["label_split"],
        checkpoint=pretrained_checkpoint,
        pretrain_split=matched_pretrain_split,
    output:
        metrics=PATTERNS["metrics"],
    log:
        "results/logs/finetune/{mode_dir}{task}_{dataset}_{backbone}_{source}_{fraction}_{split_seed}_{seed}.log",
    benchmark:
        "results/benchmarks/finetune/{mode_dir}{task}_{dataset}_{backbone}_{source}_{fraction}_{split_seed}_{seed}.tsv"
    params:
        hparams=lambda w: finetune_digest(config, finetune_run(w)),
        mode=finetune_mode,
    threads: config["execution"]["threads"]
    resources:
        gpu=1,
    conda:
        ENV
    # exec: occbench replaces the shell, so on SLURM's SIGTERM (time limit, preemption)
    # the job's Snakemake waits for it to save (workflow/profiles/slurm/config.yaml).
    shell:
        "exec occbench finetune --task {wildcards.task} --backbone {wildcards.backbone}"
        " --dataset {wildcards.dataset} --source {wildcards.source}"
        " --label-fraction {wildcards.fraction} --label-split-seed {wildcards.split_seed}"
        " --seed {wildcards.seed} --mode {params.mode} > {log} 2>&1"
