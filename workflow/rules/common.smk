# Helpers shared by the rules: the occbench command, its environment, input functions.

from occbench.workflow.grid import FINETUNE_SECTIONS, PATTERNS, PRETRAIN_SECTIONS, hparams_digest

OCCBENCH_ARGS = " ".join(f"--params {path}" for path in PARAMS_FILES)
OCCBENCH = f"occbench {OCCBENCH_ARGS}"
ENV = "../../environment.yml"  # used with --use-conda; relative to this folder


def pretrained_checkpoint(wildcards):
    """The checkpoint a fine-tuning run starts from; none for scratch."""
    run = GRID.pretrain_run(wildcards.backbone, wildcards.source)
    return [str(run.checkpoint)] if run else []


wildcard_constraints:
    dataset=r"[a-z0-9_]+",
    backbone=r"[a-z0-9_]+",
    method=r"[a-z0-9_]+",
    task=r"[a-z0-9_]+",
    subset=r"pretrain|labels",
    fraction=r"[0-9.e-]+",
    seed=r"[0-9]+",
    source=r"[a-z0-9_.-]+",
