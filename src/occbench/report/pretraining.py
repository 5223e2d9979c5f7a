"""Did each pre-training learn its pretext task? One long table of its held-out pretext metrics.

Every pre-training run measures its method's own pretext metrics on the
dataset's held-out frames before training and after it (pretrain/job.py,
``pretext`` in run_meta.json). ``collect_pretraining`` gathers them, one row
per (run, metric), with the run's cost; ``write_pretraining_table`` shows them
as "init → after" next to the fine-tuning tables, so a reader sees whether a
source whose fine-tuning gains nothing had learnt anything to begin with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pandas as pd

from occbench.io import read_json, write_text
from occbench.pretrain import METHODS
from occbench.report.aggregate import format_percent
from occbench.report.tables import latex_table, markdown_table
from occbench.workflow.grid import TEACHER_SEPARATOR, PretrainRun

COLUMNS = ("method", "backbone", "dataset", "pretrain_fraction", "teacher", "frames", "val_frames", "steps",
           "wall_seconds", "peak_memory_mb", "metric", "init", "final")


def collect_pretraining(runs: Iterable[PretrainRun]) -> pd.DataFrame:
    """One row per (pre-training run, pretext metric), from each run's run_meta.json."""
    rows = []
    for run in runs:
        path = run.directory / "run_meta.json"
        meta = read_json(path)
        try:
            pretext = meta["pretext"]
            common = {
                "method": run.variant, "backbone": run.backbone, "dataset": run.dataset,
                "pretrain_fraction": run.fraction, "teacher": (meta.get("teacher") or {}).get("name"),
                "frames": meta["split"]["frames"], "val_frames": pretext["val_frames"], "steps": meta["steps"],
                "wall_seconds": meta["wall_seconds"], "peak_memory_mb": meta["step_seconds"]["peak_memory_mb"],
            }
            rows += [{**common, "metric": metric, "init": pretext["init"][metric], "final": final}
                     for metric, final in sorted(pretext["final"].items())]
        except KeyError as err:
            raise ValueError(f"{path}: no {err} in a pre-training's run_meta.json; re-run that pre-training") from None
    return pd.DataFrame(rows, columns=list(COLUMNS))


def write_pretraining_table(table: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """pretraining.{md,tex}: each run's headline pretext metrics (``PretrainMethod.headline_metrics``) at
    init and after, with its cost; pretraining.csv: every metric."""
    method = table["method"].str.split(TEACHER_SEPARATOR).str[0]
    headline = [row.metric in METHODS[name].headline_metrics for name, row in zip(method, table.itertuples())]
    for variant, name in dict(zip(table["method"], method)).items():
        missing = set(METHODS[name].headline_metrics) - set(table.loc[table["method"] == variant, "metric"])
        if missing:
            raise ValueError(f"pre-training {variant}: headline metric(s) {sorted(missing)} not among its pretext "
                             f"metrics (PretrainMethod.headline_metrics of {name})")
    caption = (
        "Pretext metrics of each pre-training run on its dataset's held-out frames, before (init) and after "
        "pre-training: the method's own objective, not a downstream result (accuracy, IoU and cosine: higher is "
        "better; BCE and Chamfer: lower). Wall time of the whole job on its machine; peak memory of a step."
    )
    header = ["Method", "Pretext metric", "Init", "After", "Frames", "Steps", "Time (s)", "Peak MiB"]
    body = [
        [f"{record['method']} ({record['dataset']}, {format_percent(record['pretrain_fraction'])} %)",
         record["metric"], f"{record['init']:.3f}", f"{record['final']:.3f}", str(record["frames"]),
         str(record["steps"]), f"{record['wall_seconds']:.0f}", f"{record['peak_memory_mb']:.0f}"]
        for record in table[headline].to_dict("records")
    ]
    contents = {
        "md": markdown_table(caption, header, body),
        "tex": latex_table(caption, "pretraining", header, body),
        "csv": table.to_csv(index=False, lineterminator="\n"),
    }
    written = []
    for suffix, text in contents.items():
        path = Path(out_dir) / f"pretraining.{suffix}"
        write_text(path, text)
        written.append(path)
    return written
