"""Expand the grid of params.yaml into runs, and runs into paths under results/."""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any, Iterator

from occbench.config import check_consistency
from occbench.io import sha256_json

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


@dataclass(frozen=True)
class PretrainRun:
    backbone: str
    dataset: str
    method: str
    fraction: float

    @property
    def checkpoint(self) -> Path:
        return Path(PATTERNS["checkpoint"].format(
            backbone=self.backbone, dataset=self.dataset, method=self.method, fraction=fraction_tag(self.fraction)
        ))

    @property
    def directory(self) -> Path:
        return self.checkpoint.parent

    @property
    def tag(self) -> str:
        """How fine-tuning runs name their source checkpoint (one path component)."""
        return f"{self.method}-{self.dataset}-pt_{fraction_tag(self.fraction)}"


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
            "method": self.method,
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
        self.pretrain_runs: list[PretrainRun] = list(dict.fromkeys(
            PretrainRun(backbone, transfer["pretrain"], method, fraction)
            for backbone, transfer, method, fraction in product(
                grid["backbones"], grid["transfers"], grid["methods"], grid["pretrain_fractions"]
            )
            if method != SCRATCH
        ))
        self.finetune_runs: list[FinetuneRun] = list(dict.fromkeys(self._finetune_runs()))
        self._pretrain_by_tag = {(run.backbone, run.tag): run for run in self.pretrain_runs}

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
                    pretrained = PretrainRun(backbone, transfer["pretrain"], method, fraction)
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

    def finetune_run(self, task: str, backbone: str, finetune_dataset: str, source: str,
                     label_fraction: float, seed: int) -> FinetuneRun:
        return FinetuneRun(task, backbone, finetune_dataset, label_fraction, seed,
                           self.pretrain_run(backbone, source))


# The params sections each training job depends on: its hparams digest (resume key,
# Snakemake re-run trigger) covers exactly these.
PRETRAIN_SECTIONS = ("pretrain", "voxelization", "backbones", "augmentation")
FINETUNE_SECTIONS = ("finetune", "voxelization", "backbones", "augmentation")


def hparams_digest(params: dict[str, Any], *sections: str) -> str:
    """Hash of the named params sections: a Snakemake rule re-runs when it changes."""
    return sha256_json({name: params[name] for name in sections})[:16]
