# occbench: data -> pre-training -> fine-tuning -> aggregation, one DAG.
# Thin wiring only: the grid lives in params.yaml, the logic in `occbench` verbs,
# the run layout and each job's digest in occbench.workflow.grid.

import os

from snakemake.utils import min_version, validate

from occbench.workflow.grid import PARAMS_ENV, Grid

min_version("9.0")

configfile: "params.yaml"
validate(config, "workflow/schemas/params.schema.yaml")

# Jobs read the same files Snakemake merged: params.yaml, then each --configfile overlay.
# They get the list from $OCCBENCH_PARAMS, not from their command line, so that the
# file names are in no re-run trigger: an overlay re-runs only the jobs whose digest
# (params.hparams) it changes. On a SLURM node the job's own snakemake gets the same
# --configfiles and sets the same variable here. `--config KEY=VALUE` would change
# Snakemake's config but not what the jobs read, so it is refused.
if workflow.config_settings.config_args:
    raise ValueError(
        "occbench jobs read params files only: put --config values in an overlay file "
        "and pass it with --configfile"
    )
PARAMS_FILES = ["params.yaml", *map(str, workflow.overwrite_configfiles)]
os.environ.update({PARAMS_ENV: os.pathsep.join(PARAMS_FILES), "OCCBENCH_SRC": f"{workflow.basedir}/src"})
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
