"""Label-efficiency and pre-training-scaling plots of each task's main metric.

Figures are drawn on the Agg canvas directly (no pyplot), so plotting needs no
display and leaves no global figure state behind in a long-running process.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from occbench.io import atomic_path
from occbench.report.aggregate import (
    MODE_SUFFIXES,
    MODE_WORDS,
    SCRATCH,
    TABLE_KEYS,
    format_percent,
    fraction_key,
    interval_span,
    main_metric_rows,
    metric_label,
    row_label,
    split_rows,
)


def _new_axes() -> tuple[Figure, Axes]:
    figure = Figure(figsize=(6.0, 4.0), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _percent_log_x(axes: Axes, fractions: Iterable[float], label: str) -> None:
    ticks = sorted(set(fractions))
    axes.set_xscale("log")
    axes.set_xticks(ticks, [f"{format_percent(f)} %" for f in ticks])
    axes.xaxis.set_minor_locator(NullLocator())
    axes.set_xlabel(label)


def _draw_line(axes: Axes, rows: pd.DataFrame, x_column: str, label: str) -> None:
    """Mean in percent with the 95 % interval as error bars (none for a single seed)."""
    rows = rows.sort_values(x_column)
    axes.errorbar(
        rows[x_column],
        100 * rows["mean"],
        yerr=100 * rows["ci95"].fillna(0.0),
        marker="o",
        capsize=3,
        label=label,
    )


def _set_title(axes: Axes, title: str, cells: pd.DataFrame) -> None:
    """The title, and beneath it what the error bars span, as a table's caption says it."""
    errors = textwrap.fill(f"error bars: 95 % t-interval over {interval_span(cells)}", 90)
    axes.set_title(f"{title}\n{errors}", fontsize="small")


def _save(figure: Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    return path


def plot_label_efficiency(
    summary: pd.DataFrame,
    main_metrics: Mapping[str, str],
    out_dir: str | Path,
    method_order: Sequence[str] = (),
) -> list[Path]:
    """label_efficiency_{task}_{dataset}_{backbone}.png: metric against label fraction (a probe's name ends
    in _probe before .png)."""
    written = []
    rows = main_metric_rows(summary, main_metrics)
    for (task, dataset, backbone, mode), table in rows.groupby(list(TABLE_KEYS), sort=True):
        figure, axes = _new_axes()
        for key, line in split_rows(table, method_order):
            _draw_line(axes, line, "label_fraction", row_label(key))
        _percent_log_x(axes, table["label_fraction"], "labelled fine-tuning data")
        axes.set_ylabel(f"{metric_label(main_metrics[task])} (%)")
        _set_title(axes, f"{task} {MODE_WORDS[mode]} on {dataset}, backbone {backbone}", table)
        axes.legend()
        name = f"label_efficiency_{task}_{dataset}_{backbone}{MODE_SUFFIXES[mode]}.png"
        written.append(_save(figure, Path(out_dir) / name))
    return written


def plot_pretrain_scaling(
    summary: pd.DataFrame,
    main_metrics: Mapping[str, str],
    out_dir: str | Path,
    method_order: Sequence[str] = (),
) -> list[Path]:
    """pretrain_scaling_{task}_{dataset}_{backbone}_labels_{key}.png: metric against pre-training fraction
    (a probe's: ..._{backbone}_probe_labels_{key}.png).

    Settings with a single pre-training fraction have nothing to scale and get no plot.
    """
    written = []
    rows = main_metric_rows(summary, main_metrics)
    for (task, dataset, backbone, mode, label_fraction), table in rows.groupby(
        [*TABLE_KEYS, "label_fraction"], sort=True
    ):
        pretrained = table[table["method"] != SCRATCH]
        if pretrained["pretrain_fraction"].nunique() < 2:
            continue
        figure, axes = _new_axes()
        for key, line in split_rows(pretrained, method_order, keys=("method", "pretrain_dataset")):
            _draw_line(axes, line, "pretrain_fraction", row_label(key))
        for scratch in table[table["method"] == SCRATCH].to_dict("records"):
            mean, ci95 = 100 * scratch["mean"], 100 * np.nan_to_num(scratch["ci95"])
            axes.axhline(mean, color="black", linestyle="--", label=SCRATCH)
            axes.axhspan(mean - ci95, mean + ci95, color="black", alpha=0.1)
        _percent_log_x(axes, pretrained["pretrain_fraction"], "pre-training data")
        axes.set_ylabel(f"{metric_label(main_metrics[task])} (%)")
        _set_title(axes, f"{task} {MODE_WORDS[mode]} on {dataset}, backbone {backbone}, "
                         f"{format_percent(label_fraction)} % labels", table)
        axes.legend()
        name = (f"pretrain_scaling_{task}_{dataset}_{backbone}{MODE_SUFFIXES[mode]}_labels_"
                f"{fraction_key(label_fraction)}.png")
        written.append(_save(figure, Path(out_dir) / name))
    return written
