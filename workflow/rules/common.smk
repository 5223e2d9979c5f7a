# Helpers shared by the rules: the conda environment, input functions, and the run
# a job's wildcards name (whose digest is the job's params.hparams).
#
# A job's command line names no params file (they come from $OCCBENCH_PARAMS, see the
# Snakefile) and its `params.hparams` is the digest of exactly the params values it
# reads (occbench.workflow.grid): Snakemake's `params` trigger re-runs a job when,
# and only when, one of those values changes.

from occbench.workflow.grid import (
    PATTERNS,
    dataset_digest,
    finetune_digest,
    image_teacher_digest,
    pretrain_digest,
    split_digest,
)

ENV = "../../environment.yml"  # used with --use-conda; relative to this folder


def pretrain_run(wildcards):
    """The run whose checkpoint path the wildcards name; {method} is its variant ('picture+also')."""
    return GRID.pretrain_run_at(wildcards.backbone, wildcards.dataset, wildcards.method, float(wildcards.fraction))


def image_teacher_run(wildcards):
    """The image-teacher run whose encoder path the wildcards name ({method}: the method it teaches)."""
    return GRID.image_teacher_run_at(wildcards.dataset, wildcards.method, float(wildcards.fraction))


def teacher_checkpoint(wildcards):
    """The checkpoint a pre-training run learns from (a teacher run's, an image teacher's or a pinned
    file); none for most."""
    teacher = pretrain_run(wildcards).teacher_file
    return [str(teacher)] if teacher else []


def finetune_run(wildcards):
    return GRID.finetune_run(wildcards.task, wildcards.backbone, wildcards.dataset, wildcards.source,
                             float(wildcards.fraction), int(wildcards.seed), int(wildcards.split_seed),
                             GRID.mode_at(wildcards.mode_dir))


def finetune_mode(wildcards, output):
    """The run's fine-tuning mode, for its command line. It takes `output` because it is read off the
    output path ({mode_dir}), and Snakemake leaves params derived from outputs out of its `params`
    trigger: a new param would otherwise re-run every full run finished before modes existed."""
    return GRID.mode_at(wildcards.mode_dir)


def pretrained_checkpoint(wildcards):
    """The checkpoint a fine-tuning run starts from; none for scratch."""
    run = finetune_run(wildcards)
    return [str(run.pretrained.checkpoint)] if run.pretrained else []


def matched_pretrain_split(wildcards):
    """The pre-training split whose frames count a compute-matched scratch run's steps; none otherwise."""
    run = finetune_run(wildcards)
    return [str(run.compute_matched.split)] if run.compute_matched else []


wildcard_constraints:
    dataset=r"[a-z0-9_]+",
    backbone=r"[a-z0-9_]+",
    method=r"[a-z0-9_]+(\+[a-z0-9_.]+)*",
    task=r"[a-z0-9_]+",
    fraction=r"[0-9.e-]+",
    seed=r"[0-9]+",
    split_seed=r"[0-9]+",
    source=r"[a-z0-9_.+-]+",
    mode_dir=r"(probe/)?",  # grid.MODE_DIRS: full runs have no folder of their own
