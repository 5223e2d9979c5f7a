"""Expand the grid of params.yaml into runs, runs into paths under results/, and
each job into the digest of what it reads (its re-run trigger and resume key)."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any, Iterator

from occbench.config import check_consistency

SCRATCH = "scratch"  # the one method without a pre-training job

# Dataset kinds converted in an environment of their own (workflow/envs/<kind>.yml):
# their official tools pin versions the rest of occbench cannot share.
OWN_ENVIRONMENT_KINDS = ("waymo",)

REPORTS = Path("reports")
RESULTS = Path("results")

# The layout of results/, as Snakemake wildcard patterns; paths below fill them in.
PATTERNS = {
    "index": "results/data/{dataset}/index.json",
    "split": "results/data/{dataset}/splits/{subset}_{fraction}.txt",
    "checkpoint": "results/pretrain/{backbone}/{dataset}/{method}/pt_{fraction}/checkpoint.pt",
    "metrics": "results/finetune/{task}/{dataset}/{backbone}/{source}/labels_{fraction}/seed_{seed}/metrics.json",
}


def fraction_tag(fraction: float) -> str:
    """Canonical text of a fraction in paths: 1.0 -> '1', 0.1 -> '0.1'."""
    return f"{fraction:g}"


def index_path(dataset: str) -> Path:
    return Path(PATTERNS["index"].format(dataset=dataset))


def data_dir(dataset: str) -> Path:
    return index_path(dataset).parent


def split_path(dataset: str, subset: str, fraction: float) -> Path:
    """Index file of a nested subset of the train frames ('pretrain' or 'labels')."""
    return Path(PATTERNS["split"].format(dataset=dataset, subset=subset, fraction=fraction_tag(fraction)))


# Between a method and its teacher's name in the method's path component and tag:
# picture+also is PICTURE taught by ALSO's run of the same backbone, dataset and fraction.
TEACHER_SEPARATOR = "+"


@dataclass(frozen=True)
class PinnedTeacher:
    """A teacher checkpoint from outside the grid: a file pinned by its SHA-256."""

    name: str
    weights: Path
    sha256: str


@dataclass(frozen=True)
class PretrainRun:
    backbone: str
    dataset: str
    method: str
    fraction: float
    # The run whose checkpoint teaches this one (a run of the grid or a pinned file), from
    # pretrain.methods.<method>.teacher; part of the run's path, tag and digest.
    teacher: "PretrainRun | PinnedTeacher | None" = None

    @property
    def variant(self) -> str:
        """The method and its teacher, as one path component: 'also', 'picture+also'."""
        if self.teacher is None:
            return self.method
        return f"{self.method}{TEACHER_SEPARATOR}{teacher_name(self.teacher, self.fraction)}"

    @property
    def checkpoint(self) -> Path:
        return Path(PATTERNS["checkpoint"].format(
            backbone=self.backbone, dataset=self.dataset, method=self.variant, fraction=fraction_tag(self.fraction)
        ))

    @property
    def directory(self) -> Path:
        return self.checkpoint.parent

    @property
    def tag(self) -> str:
        """How fine-tuning runs name their source checkpoint (one path component)."""
        return f"{self.variant}-{self.dataset}-pt_{fraction_tag(self.fraction)}"

    @property
    def teacher_file(self) -> Path | None:
        """The checkpoint this run reads as its teacher: the teacher run's, or the pinned file."""
        if self.teacher is None:
            return None
        return self.teacher.weights if isinstance(self.teacher, PinnedTeacher) else self.teacher.checkpoint


def teacher_name(teacher: "PretrainRun | PinnedTeacher", student_fraction: float) -> str:
    """A pinned file by its name; a run by its variant, with its fraction when it is not the student's."""
    if isinstance(teacher, PinnedTeacher):
        return teacher.name
    if teacher.fraction == student_fraction:
        return teacher.variant
    return f"{teacher.variant}_pt{fraction_tag(teacher.fraction)}"


def pretrain_run(params: dict[str, Any], backbone: str, dataset: str, method: str, fraction: float) -> PretrainRun:
    """The pre-training run of ``method``, with the teacher (and its teachers) its settings name."""
    spec = params["pretrain"]["methods"][method].get("teacher")
    teacher: PretrainRun | PinnedTeacher | None = None
    if spec is not None and "weights" in spec:
        teacher = PinnedTeacher(spec["name"], Path(spec["weights"]), spec["sha256"])
    elif spec is not None:
        teacher = pretrain_run(params, backbone, dataset, spec["method"], spec.get("fraction", fraction))
    return PretrainRun(backbone, dataset, method, fraction, teacher)


@dataclass(frozen=True)
class FinetuneRun:
    task: str
    backbone: str
    finetune_dataset: str
    label_fraction: float
    seed: int
    pretrained: PretrainRun | None  # None: scratch

    @property
    def method(self) -> str:
        return self.pretrained.method if self.pretrained else SCRATCH

    @property
    def source(self) -> str:
        return self.pretrained.tag if self.pretrained else SCRATCH

    @property
    def metrics(self) -> Path:
        return Path(PATTERNS["metrics"].format(
            task=self.task, dataset=self.finetune_dataset, backbone=self.backbone, source=self.source,
            fraction=fraction_tag(self.label_fraction), seed=self.seed,
        ))

    @property
    def directory(self) -> Path:
        return self.metrics.parent

    def coordinates(self) -> dict[str, Any]:
        """The run's place in the grid, as recorded in run_meta.json and read by aggregation."""
        return {
            "task": self.task,
            "backbone": self.backbone,
            "method": self.pretrained.variant if self.pretrained else SCRATCH,
            "pretrain_dataset": self.pretrained.dataset if self.pretrained else None,
            "pretrain_fraction": self.pretrained.fraction if self.pretrained else None,
            "finetune_dataset": self.finetune_dataset,
            "label_fraction": self.label_fraction,
            "seed": self.seed,
        }


class Grid:
    """Every run the grid of a params dict asks for, and the lookups rules need."""

    def __init__(self, params: dict[str, Any]):
        check_consistency(params)
        self.params = params
        grid = params["grid"]
        # Every pre-training job, each after its teachers (which need not be in grid.methods).
        self.pretrain_runs: list[PretrainRun] = list(dict.fromkeys(
            teacher_first
            for backbone, transfer, method, fraction in product(
                grid["backbones"], grid["transfers"], grid["methods"], grid["pretrain_fractions"]
            )
            if method != SCRATCH
            for teacher_first in _with_teachers(pretrain_run(params, backbone, transfer["pretrain"], method, fraction))
        ))
        self.finetune_runs: list[FinetuneRun] = list(dict.fromkeys(self._finetune_runs()))
        self._pretrain_by_tag = {(run.backbone, run.tag): run for run in self.pretrain_runs}
        self._pretrain_by_path = {run.checkpoint: run for run in self.pretrain_runs}

    def _finetune_runs(self) -> Iterator[FinetuneRun]:
        grid = self.params["grid"]
        for task, backbone, transfer, label_fraction, seed in product(
            grid["tasks"], grid["backbones"], grid["transfers"], grid["label_fractions"], grid["seeds"]
        ):
            for method in grid["methods"]:
                if method == SCRATCH:
                    yield FinetuneRun(task, backbone, transfer["finetune"], label_fraction, seed, None)
                    continue
                for fraction in grid["pretrain_fractions"]:
                    pretrained = pretrain_run(self.params, backbone, transfer["pretrain"], method, fraction)
                    yield FinetuneRun(task, backbone, transfer["finetune"], label_fraction, seed, pretrained)

    @property
    def datasets(self) -> list[str]:
        transfers = self.params["grid"]["transfers"]
        return list(dict.fromkeys(name for t in transfers for name in (t["pretrain"], t["finetune"])))

    @property
    def splits(self) -> list[tuple[str, str, float]]:
        """(dataset, subset, fraction) of every split file the grid's runs read."""
        specs = dict.fromkeys((r.dataset, "pretrain", r.fraction) for r in self.pretrain_runs)
        specs.update(dict.fromkeys((r.finetune_dataset, "labels", r.label_fraction) for r in self.finetune_runs))
        return list(specs)

    def dataset_pattern(self, own_environment: bool) -> str:
        """Regex of the dataset names whose conversion does (not) run in its own environment."""
        names = [name for name, dataset in self.params["datasets"].items()
                 if (dataset["kind"] in OWN_ENVIRONMENT_KINDS) == own_environment]
        return "|".join(map(re.escape, names)) or "(?!)"

    def pretrain_run(self, backbone: str, source: str) -> PretrainRun | None:
        """The pre-training run a fine-tuning source tag names (None for scratch)."""
        if source == SCRATCH:
            return None
        try:
            return self._pretrain_by_tag[(backbone, source)]
        except KeyError:
            raise ValueError(f"no pre-training run {source!r} for backbone {backbone!r} in the grid") from None

    def pretrain_run_at(self, backbone: str, dataset: str, variant: str, fraction: float) -> PretrainRun:
        """The pre-training run whose checkpoint path has these wildcards (a rule's job)."""
        path = Path(PATTERNS["checkpoint"].format(backbone=backbone, dataset=dataset, method=variant,
                                                  fraction=fraction_tag(fraction)))
        try:
            return self._pretrain_by_path[path]
        except KeyError:
            raise ValueError(f"{path}: no pre-training run of the grid writes this checkpoint") from None

    def finetune_run(self, task: str, backbone: str, finetune_dataset: str, source: str,
                     label_fraction: float, seed: int) -> FinetuneRun:
        return FinetuneRun(task, backbone, finetune_dataset, label_fraction, seed,
                           self.pretrain_run(backbone, source))


def _with_teachers(run: PretrainRun) -> list[PretrainRun]:
    """The run's chain of teacher runs, the first teacher first, then the run itself."""
    chain = [run]
    while isinstance(chain[-1].teacher, PretrainRun):
        chain.append(chain[-1].teacher)
    return chain[::-1]


# ------------------------------------------------------------------ digests
# What each job reads of the params, and its digest. The digest is a rule's
# `params.hparams` (Snakemake re-runs a job when its digest changes) and the
# training jobs' resume key (combined at run time with the SHA-256 of the split
# file and of the source checkpoint). Each covers exactly what its job reads:
# another method's or task's block, another backbone's spec, and the execution
# settings that change where a job runs, not what it computes (threads, profile,
# device, loader workers, how often state is saved) are left out; only
# `execution.amp` changes numerics and is in.

# Where a job reads the list of params files (params.yaml, then each overlay) when
# its command line names none: the Snakefile sets it, so the file names are part
# of no job's command line and no re-run trigger.
PARAMS_ENV = "OCCBENCH_PARAMS"

# The splits key that decides how each subset's fractions are sampled.
SPLIT_SAMPLING = {"pretrain": "pretrain_sampling", "labels": "label_sampling"}


def params_files_from_env(environ: dict[str, str] | None = None) -> list[Path]:
    """The params files named by OCCBENCH_PARAMS (os.pathsep-separated); [] when unset."""
    value = (os.environ if environ is None else environ).get(PARAMS_ENV, "")
    return [Path(name) for name in value.split(os.pathsep) if name]


def canonical(value: Any) -> Any:
    """A params value as its YAML means it: 1 and 1.0 are one number, tuples are lists."""
    if isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {str(key): canonical(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(item) for item in value]
    return value


def digest(inputs: Any) -> str:
    """16 hex digits of the SHA-256 of a JSON-able value, independent of key order."""
    text = json.dumps(canonical(inputs), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def dataset_inputs(params: dict[str, Any], dataset: str) -> dict[str, Any]:
    """What converting one dataset reads: its own block under `datasets`."""
    return {"dataset": dataset, "settings": params["datasets"][dataset]}


def split_inputs(params: dict[str, Any], subset: str) -> dict[str, Any]:
    """What writing a split of `subset` ('pretrain' or 'labels') reads: the seed and its sampling."""
    splits = params["splits"]
    return {"subset": subset, "seed": splits["seed"], "sampling": splits[SPLIT_SAMPLING[subset]]}


def training_inputs(params: dict[str, Any], backbone: str, dataset: str, subset: str) -> dict[str, Any]:
    """What every training run reads besides its own section: the voxel grid, its backbone, the
    augmentation, its dataset, how its split was drawn, and mixed precision."""
    return {
        "voxelization": params["voxelization"],
        "backbone": params["backbones"][backbone],
        "augmentation": params["augmentation"],
        "dataset": params["datasets"][dataset],
        "split": split_inputs(params, subset),
        "amp": params["execution"]["amp"],
    }


def pretrain_inputs(params: dict[str, Any], run: PretrainRun) -> dict[str, Any]:
    """Every params value a pre-training run reads, and nothing else; for a teacher run, that
    run's digest (so its settings count), for a pinned teacher, the file's SHA-256."""
    pretrain = params["pretrain"]
    inputs = {
        "run": {"backbone": run.backbone, "dataset": run.dataset, "method": run.method, "fraction": run.fraction},
        "pretrain": {key: value for key, value in pretrain.items() if key != "methods"},
        "method": pretrain["methods"][run.method],
        **training_inputs(params, run.backbone, run.dataset, "pretrain"),
    }
    if isinstance(run.teacher, PinnedTeacher):
        inputs["teacher"] = {"sha256": run.teacher.sha256}
    elif run.teacher is not None:
        inputs["teacher"] = {"pretrain_digest": pretrain_digest(params, run.teacher)}
    return inputs


def finetune_inputs(params: dict[str, Any], run: FinetuneRun) -> dict[str, Any]:
    """Every params value a fine-tuning run reads, and nothing else; for a pre-trained
    source, that run's digest (so its settings count) and the minimum loaded fraction."""
    finetune = params["finetune"]
    source = None
    if run.pretrained is not None:
        source = {"pretrain_digest": pretrain_digest(params, run.pretrained),
                  "min_loaded_fraction": finetune["min_loaded_fraction"]}
    return {
        "run": run.coordinates(),
        "task": finetune[run.task],
        **training_inputs(params, run.backbone, run.finetune_dataset, "labels"),
        "source": source,
    }


def dataset_digest(params: dict[str, Any], dataset: str) -> str:
    return digest(dataset_inputs(params, dataset))


def split_digest(params: dict[str, Any], subset: str) -> str:
    return digest(split_inputs(params, subset))


def pretrain_digest(params: dict[str, Any], run: PretrainRun) -> str:
    """Re-run trigger and resume key of a pre-training run."""
    return digest(pretrain_inputs(params, run))


def finetune_digest(params: dict[str, Any], run: FinetuneRun) -> str:
    """Re-run trigger and resume key of a fine-tuning run."""
    return digest(finetune_inputs(params, run))

