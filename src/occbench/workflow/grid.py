"""Expand the grid of params.yaml into runs, runs into paths under results/, and
each job into the digest of what it reads (its re-run trigger and resume key)."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from functools import partial
from itertools import product
from pathlib import Path
from typing import Any, Iterator

from occbench.config import check_consistency

SCRATCH = "scratch"  # the one method without a pre-training job
# Scratch trained for the optimizer steps of a pre-training plus its fine-tuning
# (grid.compute_matched_scratch): a source of its own, with no pre-training job either.
COMPUTE_MATCHED = "scratch_matched"

# How a fine-tuning run trains the backbone (grid.finetune_modes): all of it ("full"), or not at all
# ("probe": frozen, BatchNorm statistics included; only the task head trains). The two rank methods
# differently: a probe measures what the pre-trained features carry, a full fine-tune what they start.
FULL, PROBE = "full", "probe"
FINETUNE_MODES = (FULL, PROBE)
# Each mode's folder between a run's source and its label fraction: none for full, so the runs
# finished before modes existed keep their paths.
MODE_DIRS = {FULL: "", PROBE: f"{PROBE}/"}

# Dataset kinds converted in an environment of their own (workflow/envs/<kind>.yml):
# their official tools pin versions the rest of occbench cannot share.
OWN_ENVIRONMENT_KINDS = ("waymo",)

REPORTS = Path("reports")
RESULTS = Path("results")

# The layout of results/, as Snakemake wildcard patterns; paths below fill them in.
PATTERNS = {
    "index": "results/data/{dataset}/index.json",
    "pretrain_split": "results/data/{dataset}/splits/pretrain_{fraction}.txt",
    "label_split": "results/data/{dataset}/splits/labels_{fraction}_split_{split_seed}.txt",
    "checkpoint": "results/pretrain/{backbone}/{dataset}/{method}/pt_{fraction}/checkpoint.pt",
    "image_teacher": "results/image_teacher/{dataset}/{method}/pt_{fraction}/encoder.pt",
    "metrics": "results/finetune/{task}/{dataset}/{backbone}/{source}/{mode_dir}labels_{fraction}/"
               "split_{split_seed}/seed_{seed}/metrics.json",
}


# The grid axes a task may take its own values of (grid.task_overrides).
TASK_AXES = ("label_fractions", "seeds", "label_split_seeds")


def task_axes(grid: dict[str, Any], task: str) -> dict[str, list]:
    """The label fractions, seeds and label-split seeds the runs of ``task`` take: grid.task_overrides'
    lists for the task where it names them, the grid's own otherwise."""
    overrides = grid["task_overrides"].get(task, {})
    return {axis: overrides.get(axis, grid[axis]) for axis in TASK_AXES}


def fraction_tag(fraction: float) -> str:
    """Canonical text of a fraction in paths: 1.0 -> '1', 0.1 -> '0.1', 1/6 -> '0.1666666667'.

    Ten significant digits: a job reads its fraction back from this text, and 1/k must
    still read as 1/k (six digits, '0.166667', is 1/6 to only 2e-6)."""
    return f"{fraction:.10g}"


def index_path(dataset: str) -> Path:
    return Path(PATTERNS["index"].format(dataset=dataset))


def data_dir(dataset: str) -> Path:
    return index_path(dataset).parent


def split_path(dataset: str, subset: str, fraction: float, split_seed: int | None = None) -> Path:
    """Index file of a nested subset of the train frames: 'pretrain' (seeded by splits.seed) or
    'labels' (one nested set of label fractions per label-split seed, grid.label_split_seeds)."""
    if (subset == "labels") != (split_seed is not None):
        raise ValueError(f"a {subset!r} split {'needs a' if subset == 'labels' else 'takes no'} label-split seed "
                         "(--split-seed; pre-training splits are seeded by splits.seed)")
    if subset == "pretrain":
        return Path(PATTERNS["pretrain_split"].format(dataset=dataset, fraction=fraction_tag(fraction)))
    if subset == "labels":
        return Path(PATTERNS["label_split"].format(dataset=dataset, fraction=fraction_tag(fraction),
                                                   split_seed=split_seed))
    raise ValueError(f"unknown subset {subset!r}; known: pretrain, labels")


# Between a method and its teacher's name in the method's path component and tag:
# picture+also is PICTURE taught by ALSO's run of the same backbone, dataset and fraction.
TEACHER_SEPARATOR = "+"
# The teacher name of an image encoder the DAG trains (ImageTeacherRun): occfeat+selfsup_image.
IMAGE_TEACHER = "selfsup_image"


@dataclass(frozen=True)
class PinnedTeacher:
    """A teacher checkpoint from outside the grid: a file pinned by its SHA-256; ``kind``: how the method
    reads it, where it reads more than one kind (OccFeat: occbench_image_encoder or dinov2)."""

    name: str
    weights: Path
    sha256: str
    kind: str | None = None


@dataclass(frozen=True)
class ImageTeacherRun:
    """An image encoder the DAG trains self-supervised on the camera images of a pre-training split
    (occbench image-teacher), for the method whose settings describe it
    (pretrain.methods.<method>.teacher.self_supervised); no backbone: any backbone's run reads it."""

    dataset: str
    method: str
    fraction: float

    @property
    def checkpoint(self) -> Path:
        return Path(PATTERNS["image_teacher"].format(dataset=self.dataset, method=self.method,
                                                     fraction=fraction_tag(self.fraction)))

    @property
    def directory(self) -> Path:
        return self.checkpoint.parent

    def settings(self, params: dict[str, Any]) -> dict[str, Any]:
        """Its training settings; a ValueError if the method's teacher is not a self-supervised image encoder."""
        spec = params["pretrain"]["methods"][self.method].get("teacher") or {}
        if "self_supervised" not in spec:
            raise ValueError(f"pretrain.methods.{self.method}.teacher is not a self-supervised image encoder "
                             "(self_supervised: {...})")
        return spec["self_supervised"]


@dataclass(frozen=True)
class PretrainRun:
    backbone: str
    dataset: str
    method: str
    fraction: float
    # The run whose checkpoint teaches this one (a run of the grid, an image teacher the grid
    # trains, or a pinned file), from pretrain.methods.<method>.teacher; part of the run's path,
    # tag and digest.
    teacher: "PretrainRun | PinnedTeacher | ImageTeacherRun | None" = None

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


def teacher_name(teacher: "PretrainRun | PinnedTeacher | ImageTeacherRun", student_fraction: float) -> str:
    """A pinned file by its name, an image teacher of the DAG as IMAGE_TEACHER; a run by its variant,
    with its fraction when it is not the student's."""
    if isinstance(teacher, PinnedTeacher):
        return teacher.name
    if isinstance(teacher, ImageTeacherRun):
        return IMAGE_TEACHER
    if teacher.fraction == student_fraction:
        return teacher.variant
    return f"{teacher.variant}_pt{fraction_tag(teacher.fraction)}"


def pretrain_run(params: dict[str, Any], backbone: str, dataset: str, method: str, fraction: float) -> PretrainRun:
    """The pre-training run of ``method``, with the teacher (and its teachers) its settings name."""
    spec = params["pretrain"]["methods"][method].get("teacher")
    teacher: PretrainRun | PinnedTeacher | ImageTeacherRun | None = None
    if spec is not None and "weights" in spec:
        teacher = PinnedTeacher(spec["name"], Path(spec["weights"]), spec["sha256"], spec.get("kind"))
    elif spec is not None and "self_supervised" in spec:
        teacher = ImageTeacherRun(dataset, method, fraction)
    elif spec is not None:
        teacher = pretrain_run(params, backbone, dataset, spec["method"], spec.get("fraction", fraction))
    return PretrainRun(backbone, dataset, method, fraction, teacher)


@dataclass(frozen=True)
class MatchedPretraining:
    """The pre-training whose optimizer steps a compute-matched scratch run adds to its fine-tuning:
    that of `dataset` at `fraction`, the same for every method (they share pretrain.epochs and batch_size)."""

    dataset: str
    fraction: float

    @property
    def tag(self) -> str:
        return f"{COMPUTE_MATCHED}-{self.dataset}-pt_{fraction_tag(self.fraction)}"

    @property
    def split(self) -> Path:
        """The pre-training split whose frames count the pre-training's steps."""
        return split_path(self.dataset, "pretrain", self.fraction)


@dataclass(frozen=True)
class FinetuneRun:
    task: str
    backbone: str
    finetune_dataset: str
    label_fraction: float
    seed: int
    label_split_seed: int  # which nested set of label splits it fine-tunes on
    pretrained: PretrainRun | None  # None: scratch
    compute_matched: MatchedPretraining | None = None  # scratch trained as long as this pre-training + fine-tuning
    mode: str = FULL  # FINETUNE_MODES

    def __post_init__(self):
        if self.pretrained is not None and self.compute_matched is not None:
            raise ValueError("a compute-matched run is scratch: it has no pre-trained source")
        if self.mode not in MODE_DIRS:
            raise ValueError(f"unknown fine-tuning mode {self.mode!r}; known: {', '.join(FINETUNE_MODES)} "
                             "(grid.finetune_modes)")
        if self.mode == PROBE and self.compute_matched is not None:
            raise ValueError("a compute-matched scratch run trains the backbone as long as pre-training does; "
                             "a probe trains no backbone, so there is no probe of it")

    @property
    def method(self) -> str:
        if self.pretrained:
            return self.pretrained.variant  # picture+also: a method taught by another is its own row
        return COMPUTE_MATCHED if self.compute_matched else SCRATCH

    @property
    def source(self) -> str:
        if self.pretrained:
            return self.pretrained.tag
        return self.compute_matched.tag if self.compute_matched else SCRATCH

    @property
    def metrics(self) -> Path:
        return Path(PATTERNS["metrics"].format(
            task=self.task, dataset=self.finetune_dataset, backbone=self.backbone, source=self.source,
            mode_dir=MODE_DIRS[self.mode], fraction=fraction_tag(self.label_fraction),
            split_seed=self.label_split_seed, seed=self.seed,
        ))

    @property
    def directory(self) -> Path:
        return self.metrics.parent

    def coordinates(self) -> dict[str, Any]:
        """The run's place in the grid, as recorded in run_meta.json and read by aggregation; a
        compute-matched run names the pre-training it is matched to as its pre-training."""
        matched = self.pretrained or self.compute_matched
        return {
            "task": self.task,
            "backbone": self.backbone,
            "method": self.method,
            "pretrain_dataset": matched.dataset if matched else None,
            "pretrain_fraction": matched.fraction if matched else None,
            "finetune_dataset": self.finetune_dataset,
            "label_fraction": self.label_fraction,
            "seed": self.seed,
            "label_split_seed": self.label_split_seed,
            "mode": self.mode,
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
        self.image_teacher_runs: list[ImageTeacherRun] = list(dict.fromkeys(
            run.teacher for run in self.pretrain_runs if isinstance(run.teacher, ImageTeacherRun)))
        self.finetune_runs: list[FinetuneRun] = list(dict.fromkeys(self._finetune_runs()))
        self._pretrain_by_tag = {(run.backbone, run.tag): run for run in self.pretrain_runs}
        self._pretrain_by_path = {run.checkpoint: run for run in self.pretrain_runs}
        self._matched_by_tag = {run.compute_matched.tag: run.compute_matched
                                for run in self.finetune_runs if run.compute_matched}

    @staticmethod
    def label_split_seeds(axes: dict[str, Any], label_fraction: float) -> list[int]:
        """The label-split seeds a label fraction runs: all of ``axes``' label_split_seeds (the grid's or a
        task's, task_axes), but only the first at fraction 1, where every seed's split holds every frame
        (more runs would repeat it)."""
        seeds = axes["label_split_seeds"]
        return seeds if label_fraction < 1 else seeds[:1]

    def _finetune_runs(self) -> Iterator[FinetuneRun]:
        """Every mode's runs, the first mode's first; scratch probes the random backbone (the baseline of
        whether pre-trained features carry anything), compute-matched scratch is full fine-tuning only.
        Each task takes its own label fractions and seeds where grid.task_overrides names them."""
        grid = self.params["grid"]
        for mode, task in product(grid["finetune_modes"], grid["tasks"]):
            yield from self._task_runs(mode, task, task_axes(grid, task))

    def _task_runs(self, mode: str, task: str, axes: dict[str, list]) -> Iterator[FinetuneRun]:
        grid = self.params["grid"]
        for backbone, transfer, label_fraction, seed in product(
            grid["backbones"], grid["transfers"], axes["label_fractions"], axes["seeds"]
        ):
            for split_seed in self.label_split_seeds(axes, label_fraction):
                run = partial(FinetuneRun, task, backbone, transfer["finetune"], label_fraction, seed, split_seed,
                              mode=mode)
                for method in grid["methods"]:
                    if method == SCRATCH:
                        yield run(None)
                        continue
                    for fraction in grid["pretrain_fractions"]:
                        yield run(pretrain_run(self.params, backbone, transfer["pretrain"], method, fraction))
                # check_consistency: the grid has a pre-training to match
                if grid["compute_matched_scratch"] and mode == FULL:
                    for fraction in grid["pretrain_fractions"]:
                        yield run(None, MatchedPretraining(transfer["pretrain"], fraction))

    @property
    def datasets(self) -> list[str]:
        transfers = self.params["grid"]["transfers"]
        return list(dict.fromkeys(name for t in transfers for name in (t["pretrain"], t["finetune"])))

    @property
    def splits(self) -> list[tuple[str, str, float, int | None]]:
        """(dataset, subset, fraction, label-split seed or None) of every split file the grid's runs read."""
        specs = dict.fromkeys((r.dataset, "pretrain", r.fraction, None) for r in self.pretrain_runs)
        specs.update(dict.fromkeys((r.finetune_dataset, "labels", r.label_fraction, r.label_split_seed)
                                   for r in self.finetune_runs))
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

    def image_teacher_run_at(self, dataset: str, method: str, fraction: float) -> ImageTeacherRun:
        """The image-teacher run whose checkpoint path has these wildcards (a rule's job)."""
        run = ImageTeacherRun(dataset, method, fraction)
        if run not in self.image_teacher_runs:
            raise ValueError(f"{run.checkpoint}: no image-teacher run of the grid writes this checkpoint")
        return run

    def finetune_run(self, task: str, backbone: str, finetune_dataset: str, source: str,
                     label_fraction: float, seed: int, label_split_seed: int, mode: str = FULL) -> FinetuneRun:
        if source in self._matched_by_tag:
            return FinetuneRun(task, backbone, finetune_dataset, label_fraction, seed, label_split_seed, None,
                               self._matched_by_tag[source], mode)
        if source.startswith(f"{COMPUTE_MATCHED}-"):
            raise ValueError(f"no compute-matched source {source!r} in the grid: grid.compute_matched_scratch is off "
                             "or the grid has no such pre-training")
        return FinetuneRun(task, backbone, finetune_dataset, label_fraction, seed, label_split_seed,
                           self.pretrain_run(backbone, source), mode=mode)

    @staticmethod
    def mode_at(mode_dir: str) -> str:
        """The fine-tuning mode whose folder a run path has ({mode_dir}: '' or 'probe/')."""
        modes = {folder: mode for mode, folder in MODE_DIRS.items()}
        if mode_dir not in modes:
            raise ValueError(f"{mode_dir!r} is no fine-tuning mode's folder; known: {list(modes)}")
        return modes[mode_dir]


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


def split_inputs(params: dict[str, Any], subset: str, split_seed: int | None = None) -> dict[str, Any]:
    """What writing a split of `subset` reads: its seed (splits.seed for 'pretrain', the file's own
    label-split seed for 'labels') and its sampling."""
    splits = params["splits"]
    seed = splits["seed"] if subset == "pretrain" else split_seed
    return {"subset": subset, "seed": seed, "sampling": splits[SPLIT_SAMPLING[subset]]}


def training_inputs(params: dict[str, Any], backbone: str, dataset: str, subset: str,
                    split_seed: int | None = None) -> dict[str, Any]:
    """What every training run reads besides its own section: the voxel grid, its backbone, the
    augmentation, its dataset, how its split was drawn, and mixed precision."""
    return {
        "voxelization": params["voxelization"],
        "backbone": params["backbones"][backbone],
        "augmentation": params["augmentation"],
        "dataset": params["datasets"][dataset],
        "split": split_inputs(params, subset, split_seed),
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
    elif isinstance(run.teacher, ImageTeacherRun):
        inputs["teacher"] = {"image_teacher_digest": image_teacher_digest(params, run.teacher)}
    elif run.teacher is not None:
        inputs["teacher"] = {"pretrain_digest": pretrain_digest(params, run.teacher)}
    return inputs


def image_teacher_inputs(params: dict[str, Any], run: ImageTeacherRun) -> dict[str, Any]:
    """What training an image teacher reads: its settings, the pre-training seed, its dataset and split,
    the augmentation and point budget of the training frames, and mixed precision."""
    return {
        "run": {"dataset": run.dataset, "method": run.method, "fraction": run.fraction},
        "settings": run.settings(params),
        "seed": params["pretrain"]["seed"],
        "augmentation": params["augmentation"],
        "max_points": params["voxelization"]["max_points"],
        "dataset": params["datasets"][run.dataset],
        "split": split_inputs(params, "pretrain"),
        "amp": params["execution"]["amp"],
    }


# What a probe run's settings (finetune.<task>.probe) may replace of its task's.
PROBE_OVERRIDES = ("optimizer", "schedule", "grad_clip", "epochs")


def task_settings(params: dict[str, Any], run: FinetuneRun) -> dict[str, Any]:
    """What the run trains with: its task's block, without the probe's settings for a full run; for a
    probe, the block with finetune.<task>.probe's values in place and the backbone frozen
    (backbone_lr_scale 0, which freezes its BatchNorm statistics too: tasks.base.FinetuneModel)."""
    settings = {key: value for key, value in params["finetune"][run.task].items() if key != PROBE}
    if run.mode == PROBE:
        settings.update(params["finetune"][run.task].get(PROBE, {}), backbone_lr_scale=0)
    return settings


def finetune_inputs(params: dict[str, Any], run: FinetuneRun) -> dict[str, Any]:
    """Every params value a fine-tuning run reads, and nothing else; for a pre-trained
    source, that run's digest (so its settings count) and the minimum loaded fraction;
    for a compute-matched one, what fixes the pre-training's step count. The label-split
    seed enters through the split alone, so a run on split 0 keeps the digest it had
    before label-split seeds existed; likewise the mode enters a probe's digest only, so
    a full run keeps the digest it had before modes existed."""
    finetune = params["finetune"]
    source = None
    if run.pretrained is not None:
        source = {"pretrain_digest": pretrain_digest(params, run.pretrained),
                  "min_loaded_fraction": finetune["min_loaded_fraction"]}
    if run.compute_matched is not None:
        pretrain = params["pretrain"]
        source = {"pretrain_epochs": pretrain["epochs"], "pretrain_batch_size": pretrain["batch_size"],
                  "pretrain_dataset": params["datasets"][run.compute_matched.dataset],
                  "pretrain_split": split_inputs(params, "pretrain")}
    coordinates = run.coordinates()
    del coordinates["label_split_seed"]
    if run.mode == FULL:
        del coordinates["mode"]
    return {
        "run": coordinates,
        "task": task_settings(params, run),
        **training_inputs(params, run.backbone, run.finetune_dataset, "labels", run.label_split_seed),
        "source": source,
    }


def dataset_digest(params: dict[str, Any], dataset: str) -> str:
    return digest(dataset_inputs(params, dataset))


def split_digest(params: dict[str, Any], subset: str, split_seed: int | None = None) -> str:
    return digest(split_inputs(params, subset, split_seed))


def pretrain_digest(params: dict[str, Any], run: PretrainRun) -> str:
    """Re-run trigger and resume key of a pre-training run."""
    return digest(pretrain_inputs(params, run))


def image_teacher_digest(params: dict[str, Any], run: ImageTeacherRun) -> str:
    """Re-run trigger and resume key of an image-teacher run."""
    return digest(image_teacher_inputs(params, run))


def finetune_digest(params: dict[str, Any], run: FinetuneRun) -> str:
    """Re-run trigger and resume key of a fine-tuning run."""
    return digest(finetune_inputs(params, run))

