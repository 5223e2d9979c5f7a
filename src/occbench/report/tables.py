"""Label-efficiency tables in Markdown (README), LaTeX (paper) and CSV (re-analysis).

Cells read "mean ± ci95 (paired difference to scratch ± its ci95)" in
percentage points with one decimal; the CSV keeps the raw numbers instead of
the formatted strings. The intervals span a cell's runs, one per (training
seed, label-split seed), and the caption says which of the two vary. The
bracket pairs each run with the scratch run of the same training seed and
label split, so what those do to both cancels; a cell with a run that has no
scratch partner is marked ‡ and the caption names the runs left unpaired.
Compute-matched scratch (scratch_matched) is a row of its own, paired the same way.

A source whose pre-training never trained some backbone modules (ALSO never
reaches the BEV neck) gets a marker (†, then ††, ... for each distinct case)
after its row label, and the caption says which modules were not pre-trained
and what share of the backbone therefore starts fine-tuning from random init:
otherwise "pre-trained" would claim more than the checkpoint holds.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from occbench.io import write_text
from occbench.report.aggregate import (
    COMPUTE_MATCHED,
    MODE_SUFFIXES,
    MODE_WORDS,
    SCRATCH,
    TABLE_KEYS,
    format_percent,
    interval_span,
    main_metric_rows,
    metric_label,
    row_label,
    split_rows,
)

MISSING_CELL = "–"
MARKER = "†"
UNPAIRED_MARKER = "‡"
# Named parts of the backbone (models/backbone.py), so a caption says "BEV neck" for to_bev + bev_neck.
BACKBONE_PARTS = {
    "encoder": ("stem", "down1", "down2"),
    "decoder": ("up2", "fuse1", "up1", "fuse0"),
    "BEV neck": ("to_bev", "bev_neck"),
}
_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "–": "--",
    MARKER: r"\textdagger{}",
    UNPAIRED_MARKER: r"\textdaggerdbl{}",
}
CSV_COLUMNS = (
    "row",
    "method",
    "pretrain_dataset",
    "pretrain_fraction",
    "label_fraction",
    "metric",
    "n_runs",
    "n_seeds",
    "n_label_splits",
    "mean",
    "ci95",
    "delta_scratch",
    "paired_n",
    "paired_diff_mean",
    "paired_diff_ci95",
    "unpaired_runs",
    "pretrained_fraction",
    "untrained_modules",
)


def _interval(mean: float, ci95: float, signed: bool = False) -> str:
    """"41.2 ± 1.3" in percentage points; no ± for a single seed. Adding 0.0 turns a rounded -0.0 into 0.0."""
    text = f"{round(100 * mean, 1) + 0.0:{'+' if signed else ''}.1f}"
    return text if math.isnan(ci95) else f"{text} ± {100 * ci95:.1f}"


def _listed(value: object) -> str:
    """A comma-separated list column; "" reads back from CSV as NaN."""
    return value if isinstance(value, str) else ""


def format_cell(record: Mapping) -> str:
    """"41.2 ± 1.3 (+2.1 ± 0.8)"; no bracket for scratch or without a partner, ‡ when a run has none."""
    text = _interval(record["mean"], record["ci95"])
    if record["method"] == SCRATCH:
        return text
    if record["paired_n"] > 0:
        text += f" ({_interval(record['paired_diff_mean'], record['paired_diff_ci95'], signed=True)})"
    if record["paired_n"] < record["n_runs"]:
        text += f" {UNPAIRED_MARKER}"
    return text


def latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(char, char) for char in text)


def _untrained_note(record: Mapping) -> str | None:
    """"BEV neck (to_bev, bev_neck) not pre-trained: 40.2 % of the backbone starts from random init", or None."""
    modules = _listed(record["untrained_modules"])
    if not modules:
        return None
    names = modules.split(",")
    parts = {part: members for part, members in BACKBONE_PARTS.items() if set(members) <= set(names)}
    named = {name for members in parts.values() for name in members}
    described = [f"{part} ({', '.join(members)})" for part, members in parts.items()]
    described += [name for name in names if name not in named]
    share = 100 * (1 - record["pretrained_fraction"])
    return f"{' and '.join(described)} not pre-trained: {share:.1f} % of the backbone starts from random init"


def _row_labels(table: pd.DataFrame, method_order: Sequence[str]) -> tuple[dict[tuple, str], list[str]]:
    """Row key -> label with its marker, and the caption's marker legend entries.

    Every run of a row fine-tunes from one checkpoint (``summarise`` checks it),
    so the row's first record says what that checkpoint's pre-training trained.
    """
    labels: dict[tuple, str] = {}
    markers: dict[str, str] = {}  # note -> marker, in row order
    for key, rows in split_rows(table, method_order):
        note = _untrained_note(rows.iloc[0])
        labels[key] = row_label(key)
        if note is not None:
            markers.setdefault(note, MARKER * (len(markers) + 1))
            labels[key] += f" {markers[note]}"
    return labels, [f"{marker} {note}" for note, marker in markers.items()]


def _unpaired_note(table: pd.DataFrame, method_order: Sequence[str], labels: Mapping[tuple, str]) -> str | None:
    """The caption's ‡ legend: which cells have runs without a scratch run of the same training seed
    and label split, or None."""
    cells = []
    for key, rows in split_rows(table, method_order):
        for record in rows.sort_values("label_fraction").to_dict("records"):
            if record["method"] != SCRATCH and record["paired_n"] < record["n_runs"]:
                unpaired = _listed(record["unpaired_runs"]).split(",")
                cells.append(f"{labels[key]} at {format_percent(record['label_fraction'])} %: "
                             f"{record['paired_n']} of {record['n_runs']} runs paired, no scratch run of "
                             f"seed/label split {', '.join(unpaired)}")
    if not cells:
        return None
    return f"{UNPAIRED_MARKER} Bracket over fewer runs than the cell: {'; '.join(cells)}."


def _grid(table: pd.DataFrame, method_order: Sequence[str],
          labels: Mapping[tuple, str]) -> tuple[list[str], list[list[str]]]:
    """Header and body rows of formatted cells, label fractions ascending."""
    fractions = sorted(table["label_fraction"].unique())
    header = ["Method", *(f"{format_percent(f)} %" for f in fractions)]
    body = []
    for key, rows in split_rows(table, method_order):
        by_fraction = {record["label_fraction"]: record for record in rows.to_dict("records")}
        cells = [format_cell(by_fraction[f]) if f in by_fraction else MISSING_CELL for f in fractions]
        body.append([labels[key], *cells])
    return header, body


def markdown_table(caption: str, header: list[str], body: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", r"\|") for cell in cells) + " |"

    rule = "|" + "|".join([":---", *("---:" for _ in header[1:])]) + "|"
    return "\n".join([caption, "", line(header), rule, *map(line, body)]) + "\n"


def latex_table(caption: str, label: str, header: list[str], body: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "    " + " & ".join(map(latex_escape, cells)) + r" \\"

    return "\n".join(
        [
            r"% Requires \usepackage{booktabs}.",
            r"\begin{table}[t]",
            r"  \centering",
            rf"  \caption{{{latex_escape(caption)}}}",
            rf"  \label{{tab:{label}}}",
            rf"  \begin{{tabular}}{{l{'r' * (len(header) - 1)}}}",
            r"    \toprule",
            line(header),
            r"    \midrule",
            *map(line, body),
            r"    \bottomrule",
            r"  \end{tabular}",
            r"\end{table}",
        ]
    ) + "\n"


def _csv(table: pd.DataFrame, method_order: Sequence[str], labels: Mapping[tuple, str]) -> str:
    parts = [
        rows.sort_values("label_fraction").assign(row=labels[key])
        for key, rows in split_rows(table, method_order)
    ]
    return pd.concat(parts)[list(CSV_COLUMNS)].to_csv(index=False, lineterminator="\n")


def write_tables(
    summary: pd.DataFrame,
    main_metrics: Mapping[str, str],
    out_dir: str | Path,
    method_order: Sequence[str] = (),
    more_metrics: Mapping[str, Sequence[str]] | None = None,
) -> list[Path]:
    """One table per (task, finetune_dataset, backbone, mode) as {task}_{dataset}_{backbone}.{md,tex,csv}
    (full fine-tuning) or {task}_{dataset}_{backbone}_probe.{md,tex,csv}, and per metric of ``more_metrics``
    (task -> further headline metrics, detection's NDS) one more, its stem ending in _{metric} lower-cased."""
    written = _write_metric_tables(summary, main_metrics, out_dir, method_order, "")
    for task, metrics in (more_metrics or {}).items():
        for metric in metrics:
            written += _write_metric_tables(summary[summary["task"] == task], {task: metric}, out_dir,
                                            method_order, f"_{metric.lower()}")
    return written


def _write_metric_tables(summary: pd.DataFrame, main_metrics: Mapping[str, str], out_dir: str | Path,
                         method_order: Sequence[str], stem_end: str) -> list[Path]:
    written = []
    for (task, dataset, backbone, mode), table in main_metric_rows(summary, main_metrics).groupby(
        list(TABLE_KEYS), sort=True
    ):
        caption = (
            f"{metric_label(main_metrics[task])} (%) for {task} {MODE_WORDS[mode]} on {dataset}, "
            f"backbone {backbone}: mean ± half-width of the 95 % t-interval over "
            f"{interval_span(table)}; (paired difference to scratch) in percentage points: mean ± half-width "
            "of the 95 % t-interval, over the same runs, of each run minus the scratch run of its training "
            "seed and label split."
        )
        if (table["method"] == COMPUTE_MATCHED).any():
            caption += (f" {COMPUTE_MATCHED} (D, P %): scratch trained for as many optimizer steps as "
                        "pre-training on P % of D plus fine-tuning, rounded up to whole epochs.")
        labels, legend = _row_labels(table, method_order)
        if legend:
            caption += (" Marked sources left backbone modules untrained in pre-training (no gradient reached "
                        f"them). {'. '.join(legend)}.")
        unpaired = _unpaired_note(table, method_order, labels)
        if unpaired:
            caption += f" {unpaired}"
        header, body = _grid(table, method_order, labels)
        stem = f"{task}_{dataset}_{backbone}{MODE_SUFFIXES[mode]}{stem_end}"
        contents = {
            "md": markdown_table(caption, header, body),
            "tex": latex_table(caption, stem, header, body),
            "csv": _csv(table, method_order, labels),
        }
        for suffix, text in contents.items():
            path = Path(out_dir) / f"{stem}.{suffix}"
            write_text(path, text)
            written.append(path)
    return written
