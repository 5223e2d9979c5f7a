"""Label-efficiency tables in Markdown (README), LaTeX (paper) and CSV (re-analysis).

Cells read "mean ± ci95 (delta to scratch)" in percentage points with one
decimal; the CSV keeps the raw numbers instead of the formatted strings.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from occbench.io import write_text
from occbench.report.aggregate import (
    SCRATCH,
    TABLE_KEYS,
    format_percent,
    main_metric_rows,
    metric_label,
    row_label,
    split_rows,
)

MISSING_CELL = "–"
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
}
CSV_COLUMNS = (
    "row",
    "method",
    "pretrain_dataset",
    "pretrain_fraction",
    "label_fraction",
    "metric",
    "n_seeds",
    "mean",
    "ci95",
    "delta_scratch",
)


def format_cell(record: Mapping) -> str:
    """"41.2 ± 1.3 (+2.1)"; no interval for a single seed, no delta for scratch or without one."""
    text = f"{100 * record['mean']:.1f}"
    if not math.isnan(record["ci95"]):
        text += f" ± {100 * record['ci95']:.1f}"
    if record["method"] != SCRATCH and not math.isnan(record["delta_scratch"]):
        # Adding 0.0 turns a rounded -0.0 into 0.0, so no "-0.0" appears.
        text += f" ({round(100 * record['delta_scratch'], 1) + 0.0:+.1f})"
    return text


def latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(char, char) for char in text)


def _seed_count_text(table: pd.DataFrame) -> str:
    low, high = int(table["n_seeds"].min()), int(table["n_seeds"].max())
    return f"{low}" if low == high else f"{low}–{high}"


def _grid(table: pd.DataFrame, method_order: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """Header and body rows of formatted cells, label fractions ascending."""
    fractions = sorted(table["label_fraction"].unique())
    header = ["Method", *(f"{format_percent(f)} %" for f in fractions)]
    body = []
    for key, rows in split_rows(table, method_order):
        by_fraction = {record["label_fraction"]: record for record in rows.to_dict("records")}
        cells = [format_cell(by_fraction[f]) if f in by_fraction else MISSING_CELL for f in fractions]
        body.append([row_label(key), *cells])
    return header, body


def _markdown(caption: str, header: list[str], body: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", r"\|") for cell in cells) + " |"

    rule = "|" + "|".join([":---", *("---:" for _ in header[1:])]) + "|"
    return "\n".join([caption, "", line(header), rule, *map(line, body)]) + "\n"


def _latex(caption: str, label: str, header: list[str], body: list[list[str]]) -> str:
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


def _csv(table: pd.DataFrame, method_order: Sequence[str]) -> str:
    parts = [
        rows.sort_values("label_fraction").assign(row=row_label(key))
        for key, rows in split_rows(table, method_order)
    ]
    return pd.concat(parts)[list(CSV_COLUMNS)].to_csv(index=False, lineterminator="\n")


def write_tables(
    summary: pd.DataFrame,
    main_metrics: Mapping[str, str],
    out_dir: str | Path,
    method_order: Sequence[str] = (),
) -> list[Path]:
    """One table per (task, finetune_dataset, backbone) as {task}_{dataset}_{backbone}.{md,tex,csv}."""
    written = []
    for (task, dataset, backbone), table in main_metric_rows(summary, main_metrics).groupby(
        list(TABLE_KEYS), sort=True
    ):
        caption = (
            f"{metric_label(main_metrics[task])} (%) for {task} fine-tuned on {dataset}, "
            f"backbone {backbone}: mean ± half-width of the 95 % t-interval over "
            f"{_seed_count_text(table)} seeds; (difference to scratch) in percentage points."
        )
        header, body = _grid(table, method_order)
        stem = f"{task}_{dataset}_{backbone}"
        contents = {
            "md": _markdown(caption, header, body),
            "tex": _latex(caption, stem, header, body),
            "csv": _csv(table, method_order),
        }
        for suffix, text in contents.items():
            path = Path(out_dir) / f"{stem}.{suffix}"
            write_text(path, text)
            written.append(path)
    return written
