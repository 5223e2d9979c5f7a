"""From run directories to one summary row per (setting, label fraction, metric).

Every table, plot and the DVC metrics file are views of the frame returned by
``summarise``, so they can never disagree about a number. Each row also says
what its pre-training really trained (``pretrained_fraction``,
``untrained_modules``, from run_meta.json's "pretrained" load report), so a
table can mark a source that left part of the backbone at its random init.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import pandas as pd

from occbench.io import read_json
from occbench.metrics.stats import mean_ci95, nan_to_none
from occbench.workflow.grid import COMPUTE_MATCHED, FULL, PROBE, SCRATCH, TEACHER_SEPARATOR

# Sources that load no checkpoint, so their runs carry no load report.
UNPRETRAINED = (SCRATCH, COMPUTE_MATCHED)
# A run's coordinates as stored under "run" in run_meta.json.
COORDINATES = (
    "task",
    "backbone",
    "method",
    "pretrain_dataset",
    "pretrain_fraction",
    "finetune_dataset",
    "label_fraction",
    "seed",
    "label_split_seed",
    "mode",
)
# What the run's pre-training trained: share of the backbone's parameter values
# loaded and trained, and the top-level modules never trained, comma-separated in
# backbone order ("to_bev,bev_neck"; "" for none). NaN and "" for scratch.
PRETRAINED_COLUMNS = ("pretrained_fraction", "untrained_modules")
# One pre-training checkpoint loaded into one backbone: every run of it shares what it trained.
SOURCE_KEYS = ("backbone", "method", "pretrain_dataset", "pretrain_fraction")
# One summary row: everything but the training and label-split seeds.
SUMMARY_KEYS = (
    "task",
    "mode",
    "backbone",
    "finetune_dataset",
    "method",
    "pretrain_dataset",
    "pretrain_fraction",
    "label_fraction",
    "metric",
)
# What a pre-trained row is compared with: the scratch row of the same cell and mode (a probe with the
# random-backbone probe).
SCRATCH_MATCH_KEYS = ("task", "mode", "backbone", "finetune_dataset", "label_fraction", "metric")
# A run's scratch partner: the scratch run of the same cell, training seed and label split.
PAIR_KEYS = (*SCRATCH_MATCH_KEYS, "seed", "label_split_seed")
# What a cell's interval spans: its runs, and how many training seeds and label splits they have.
COUNT_COLUMNS = ("n_runs", "n_seeds", "n_label_splits")
# Paired difference to scratch over the cell's runs (see ``summarise``).
PAIRED_COLUMNS = ("paired_n", "paired_diff_mean", "paired_diff_ci95", "unpaired_runs")
# One table or plot per combination of these.
TABLE_KEYS = ("task", "finetune_dataset", "backbone", "mode")
# What a mode adds to the names of its tables, plots and DVC metrics keys: nothing for full, so
# they keep the names they had before modes existed.
MODE_SUFFIXES = {FULL: "", PROBE: f"_{PROBE}"}
# How a table's caption and a plot's title say what trained: "segmentation fine-tuned on synthetic".
MODE_WORDS = {FULL: "fine-tuned", PROBE: "probed (frozen backbone, head trained)"}
# One table row or plot line per combination of these.
ROW_KEYS = ("method", "pretrain_dataset", "pretrain_fraction")

# One cell's numbers in the DVC metrics file; its counts (n_runs, paired_n, ...) stay in the CSV.
DVC_METRICS = ("mean", "ci95", "delta_scratch", "paired_diff_mean", "paired_diff_ci95")

_METRIC_LABELS = {"miou": "mIoU", "accuracy": "accuracy", "geometric_iou": "geometric IoU"}


def _read_json_file(path: Path) -> Any:
    try:
        return read_json(path)
    except FileNotFoundError as err:
        raise ValueError(f"{path}: file is missing") from err


def _flatten(metrics: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for name, value in metrics.items():
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{prefix}{name}/")
        else:
            yield f"{prefix}{name}", value


def _pretrained_columns(meta_path: Path, meta: Mapping[str, Any], method: str) -> dict[str, Any]:
    """A pre-trained run without the record cannot say what it started from, so it is refused."""
    if method in UNPRETRAINED:
        return {"pretrained_fraction": math.nan, "untrained_modules": ""}
    loaded = meta.get("pretrained")
    if not isinstance(loaded, dict) or not set(PRETRAINED_COLUMNS) <= loaded.keys():
        raise ValueError(
            f"{meta_path}: 'pretrained' must hold {', '.join(PRETRAINED_COLUMNS)} (written before checkpoints "
            "recorded what pre-training trained: re-run pre-training and this fine-tuning)"
        )
    return {
        "pretrained_fraction": float(loaded["pretrained_fraction"]),
        "untrained_modules": ",".join(loaded["untrained_modules"]),
    }


def _run_rows(run_dir: Path) -> list[dict]:
    meta_path, metrics_path = run_dir / "run_meta.json", run_dir / "metrics.json"
    meta = _read_json_file(meta_path)
    run = meta.get("run") if isinstance(meta, dict) else None
    if isinstance(run, dict):
        run = {"mode": FULL, **run}  # a run recorded before modes existed was a full fine-tune
    if not isinstance(run, dict) or not set(COORDINATES) <= run.keys():
        raise ValueError(f"{meta_path}: 'run' must hold {', '.join(COORDINATES)}")
    metrics = _read_json_file(metrics_path)
    if not isinstance(metrics, dict):
        raise ValueError(f"{metrics_path}: expected a JSON object of metrics")
    coordinates = {key: run[key] for key in COORDINATES}
    coordinates.update(_pretrained_columns(meta_path, meta, run["method"]))
    rows = []
    for metric, value in _flatten(metrics):
        if value is None:  # an undefined metric (e.g. IoU of an absent class) is no observation
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{metrics_path}: metric {metric!r} is not a number: {value!r}")
        rows.append({**coordinates, "metric": metric, "value": float(value)})
    return rows


def collect_runs(run_dirs: Iterable[Path]) -> pd.DataFrame:
    """Long format, one row per (run, metric); nested metrics are flattened as "iou/road"."""
    rows = [row for run_dir in run_dirs for row in _run_rows(Path(run_dir))]
    runs = pd.DataFrame(rows, columns=[*COORDINATES, *PRETRAINED_COLUMNS, "metric", "value"])
    return runs.astype({"pretrain_fraction": float, "label_fraction": float, "pretrained_fraction": float,
                        "value": float})


def _pair_with_scratch(runs: pd.DataFrame) -> pd.DataFrame:
    """Each run with the value of its scratch partner (same PAIR_KEYS; NaN where there is none)."""
    scratch = runs[runs["method"] == SCRATCH]
    named = scratch[["pretrain_dataset", "pretrain_fraction"]].notna().any(axis=1)
    if named.any():
        raise ValueError(f"scratch runs must not name a pre-training: {scratch[named].iloc[0].to_dict()}")
    partners = scratch[[*PAIR_KEYS, "value"]].rename(columns={"value": "scratch_value"})
    return runs.merge(partners, on=list(PAIR_KEYS), how="left", validate="many_to_one")


def _paired_columns(group: pd.DataFrame) -> dict[str, Any]:
    """Mean and 95 % t half-width of run minus scratch over the runs that have a scratch partner;
    the others as "seed/label-split seed" ("2/0,1/1")."""
    diffs = group["value"] - group["scratch_value"]
    paired = diffs.notna()
    mean, ci95 = mean_ci95(diffs[paired]) if paired.any() else (math.nan, math.nan)
    unpaired = sorted(zip(group.loc[~paired, "seed"].astype(int), group.loc[~paired, "label_split_seed"].astype(int)))
    return {"paired_n": int(paired.sum()), "paired_diff_mean": mean, "paired_diff_ci95": ci95,
            "unpaired_runs": ",".join(f"{seed}/{split_seed}" for seed, split_seed in unpaired)}


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and 95 % t-interval half-width over a cell's runs, the difference to scratch, and what
    pre-training trained.

    A cell's runs are every (training seed, label-split seed) it has, one
    sample each: the interval covers both, as ``n_seeds`` and ``n_label_splits``
    count them. ``delta_scratch`` is the difference of the means;
    ``paired_diff_mean`` and ``paired_diff_ci95`` are the mean and 95 % t
    half-width of the per-run differences to the scratch run of the same
    training seed and label split, which cancel what those do to both. A run
    without a scratch partner is not dropped silently: ``paired_n`` counts the
    pairs and ``unpaired_runs`` names the others as seed/label-split seed
    ("0/0,2/1"; "" when all are paired), and tables mark the cell.
    Raising instead would refuse whole grids over a per-class IoU that is
    undefined (None) in one scratch run only.

    Scratch has no pre-training dataset or fraction (NaN), so grouping keeps
    NaN keys instead of silently dropping every scratch row. Runs of one
    pre-training that disagree on what it trained were fine-tuned from
    different checkpoints and are refused rather than averaged.
    """
    run_keys = [*COORDINATES, "metric"]
    repeated = runs.duplicated(run_keys)
    if repeated.any():
        raise ValueError(f"run collected twice: {runs.loc[repeated, run_keys].iloc[0].to_dict()}")
    sources = runs[[*SOURCE_KEYS, *PRETRAINED_COLUMNS]].drop_duplicates()
    disagreeing = sources.duplicated(list(SOURCE_KEYS), keep=False)
    if disagreeing.any():
        raise ValueError(f"runs of one pre-training disagree on what it trained: "
                         f"{sources[disagreeing].to_dict('records')[:2]}")
    records = []
    group_keys = [*SUMMARY_KEYS, *PRETRAINED_COLUMNS]  # the latter are constant within a group (checked above)
    for group_key, group in _pair_with_scratch(runs).groupby(group_keys, dropna=False, sort=True):
        mean, ci95 = mean_ci95(group["value"])
        counts = (len(group), group["seed"].nunique(), group["label_split_seed"].nunique())
        records.append({**dict(zip(group_keys, group_key)), **dict(zip(COUNT_COLUMNS, counts)),
                        "mean": mean, "ci95": ci95, **_paired_columns(group)})
    summary = pd.DataFrame(records, columns=[*group_keys, *COUNT_COLUMNS, "mean", "ci95", *PAIRED_COLUMNS])
    scratch = summary.loc[summary["method"] == SCRATCH, [*SCRATCH_MATCH_KEYS, "mean"]]
    summary = summary.merge(
        scratch.rename(columns={"mean": "scratch_mean"}), on=list(SCRATCH_MATCH_KEYS), how="left"
    )
    summary["delta_scratch"] = summary["mean"] - summary.pop("scratch_mean")
    return summary


def read_summary(path: str | Path) -> pd.DataFrame:
    """summary.csv as ``summarise`` wrote it: list columns stay text ("2" is a seed, not the number 2.0)."""
    return pd.read_csv(path, dtype={"unpaired_runs": str, "untrained_modules": str})


def main_metric_rows(summary: pd.DataFrame, main_metrics: Mapping[str, str]) -> pd.DataFrame:
    """The summary rows of each task's headline metric (segmentation -> miou)."""
    unconfigured = sorted(set(summary["task"]) - set(main_metrics))
    if unconfigured:
        raise ValueError(f"no main metric configured for task(s) {unconfigured}")
    return summary[summary["metric"] == summary["task"].map(main_metrics)]


def format_percent(fraction: float) -> str:
    """0.1 -> "10", 0.001 -> "0.1": a fraction as a short percentage number."""
    return f"{fraction * 100:g}"


def fraction_key(fraction: float) -> str:
    """0.1 -> "10pct", 0.001 -> "0p1pct": dot-free because DVC joins nested keys with "."."""
    if not 0 < fraction <= 1:
        raise ValueError(f"a fraction must lie in (0, 1], got {fraction}")
    return format_percent(fraction).replace(".", "p") + "pct"


def metric_label(metric: str) -> str:
    return _METRIC_LABELS.get(metric, metric)


def _none_if_missing(value: Any) -> Any:
    return None if pd.isna(value) else value


def _count_text(counts: pd.Series, noun: str) -> str:
    """"3 training seeds", "1–3 training seeds", "1 training seed"."""
    low, high = int(counts.min()), int(counts.max())
    return f"{low if low == high else f'{low}–{high}'} {noun}{'' if high == 1 else 's'}"


def _span_text(cells: pd.DataFrame) -> str:
    """What the intervals of some cells span: training seeds, label splits, or both."""
    seeds, splits = _count_text(cells["n_seeds"], "training seed"), _count_text(cells["n_label_splits"], "label split")
    if cells["n_label_splits"].max() == 1:
        return f"{seeds}, all on one label split per label fraction"
    if cells["n_seeds"].max() == 1:
        return f"{splits}, all with one training seed"
    return f"{seeds} × {splits}, one run each"


def interval_span(table: pd.DataFrame) -> str:
    """What the intervals of a table's or plot's cells span, for its caption ("... over <this>"): one
    clause per set of label fractions whose intervals vary the same axes (at 100 % labels the grid
    runs one label split, as every split holds every frame)."""
    most = table.groupby("label_fraction")[["n_seeds", "n_label_splits"]].transform("max")
    by_axes = table.groupby([most["n_seeds"] > 1, most["n_label_splits"] > 1], sort=False)
    if by_axes.ngroups == 1:
        return _span_text(table)
    clauses = []
    for _, cells in sorted(by_axes, key=lambda group: group[1]["label_fraction"].min()):
        fractions = ", ".join(f"{format_percent(f)} %" for f in sorted(cells["label_fraction"].unique()))
        clauses.append(f"{_span_text(cells)} (at {fractions} labels)")
    return " and ".join(clauses)


def row_key(record: Mapping[str, Any], keys: Sequence[str] = ROW_KEYS) -> tuple:
    """The row a summary record belongs to, with NaN as None so keys compare equal."""
    return tuple(_none_if_missing(record[key]) for key in keys)


def _row_rank(key: tuple, method_order: Sequence[str]) -> tuple:
    method, *rest = key
    name = method.split(TEACHER_SEPARATOR)[0]  # picture+also ranks as picture
    position = method_order.index(name) if name in method_order else len(method_order)
    baseline = UNPRETRAINED.index(method) if method in UNPRETRAINED else len(UNPRETRAINED)
    return (baseline, position, method, *((value is None, value or 0) for value in rest))


def split_rows(
    frame: pd.DataFrame, method_order: Sequence[str] = (), keys: Sequence[str] = ROW_KEYS
) -> list[tuple[tuple, pd.DataFrame]]:
    """(row key, rows) pairs: scratch first, compute-matched scratch next, then methods in
    method_order, unknown ones last."""
    row_keys = [row_key(record, keys) for record in frame.to_dict("records")]
    ordered = sorted(set(row_keys), key=lambda key: _row_rank(key, list(method_order)))
    return [(key, frame[[candidate == key for candidate in row_keys]]) for key in ordered]


def row_label(key: tuple) -> str:
    """Human label, e.g. "also (synthetic, 100 %)"; scratch is just "scratch"."""
    method, dataset, *fraction = key
    details = [dataset] if dataset is not None else []
    details += [f"{format_percent(f)} %" for f in fraction if f is not None]
    return f"{method} ({', '.join(details)})" if details else method


def _dvc_row_id(key: tuple) -> str:
    method, dataset, fraction = key
    if method == SCRATCH:
        return SCRATCH
    return f"{method}@{dataset}_pt_{fraction_key(fraction)}"


def dvc_metrics(summary: pd.DataFrame, main_metrics: Mapping[str, str]) -> dict:
    """Nested numbers for the DVC metrics file.

    task (with its mode's suffix: "segmentation", "segmentation_probe") -> finetune_dataset -> backbone
    -> row id ("scratch", "also@synthetic_pt_100pct") -> "labels_10pct" -> {"mean", "ci95",
    "delta_scratch", "paired_diff_mean", "paired_diff_ci95"}, NaN written as null.
    """
    metrics: dict = {}
    for record in main_metric_rows(summary, main_metrics).to_dict("records"):
        path = [
            record["task"] + MODE_SUFFIXES[record["mode"]],
            record["finetune_dataset"],
            record["backbone"],
            _dvc_row_id(row_key(record)),
            f"labels_{fraction_key(record['label_fraction'])}",
        ]
        dotted = [key for key in path if "." in key]
        if dotted:
            raise ValueError(f"DVC metric keys must not contain '.': {dotted}")
        node = metrics
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = {name: nan_to_none(record[name]) for name in DVC_METRICS}
    return metrics
