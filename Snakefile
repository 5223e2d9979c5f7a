# occbench: data -> pre-training -> fine-tuning -> aggregation, one DAG.
# Thin wiring only: the grid lives in params.yaml, the logic in `occbench` verbs,
# the run layout in occbench.workflow.grid.

from snakemake.utils import min_version, validate

from occbench.workflow.grid import Grid

min_version("9.0")

configfile: "params.yaml"
validate(config, "workflow/schemas/params.schema.yaml")

# Jobs read the same files Snakemake merged: params.yaml, then each --configfile overlay.
PARAMS_FILES = ["params.yaml", *workflow.overwrite_configfiles]
GRID = Grid(config)


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        rules.report.output,


# Every fine-tuning run of the grid, without aggregation (the target of dvc.yaml's `runs` stage).
rule runs:
    input:
        rules.aggregate.input,
