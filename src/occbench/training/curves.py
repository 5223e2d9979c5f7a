"""Training curves as TSV files that `dvc plots show` renders (dvc.yaml declares them).

Plain TSV rather than dvclive: a resumed run must drop the rows written after its
last saved state (so that the curve of a killed and resumed run is that of an
uninterrupted one), which a file we own can do in one atomic rewrite.
"""

from __future__ import annotations

import csv
from pathlib import Path

from occbench.io import write_text


class CurveFile:
    """Rows of one curve, appended as they come; ``truncate`` keeps the rows before a step."""

    def __init__(self, path: Path, key: str):
        self.path, self.key = path, key
        self.columns: list[str] | None = None
        if path.exists():
            with path.open(newline="") as handle:
                reader = csv.DictReader(handle, delimiter="\t")
                self.columns = reader.fieldnames
                self.rows = list(reader)
        else:
            self.rows = []

    def truncate(self, before: int) -> None:
        """Keep the rows whose ``key`` column is below ``before``; rewrite the file atomically."""
        self.rows = [row for row in self.rows if int(float(row[self.key])) < before]
        self._rewrite()

    def append(self, row: dict[str, float | int]) -> None:
        if self.columns is None:
            self.columns = list(row)
            self._rewrite()
        self.rows.append({name: row.get(name, "") for name in self.columns})
        with self.path.open("a", newline="") as handle:
            csv.DictWriter(handle, self.columns, delimiter="\t").writerow(self.rows[-1])

    def _rewrite(self) -> None:
        if self.columns is None:
            return
        lines = ["\t".join(self.columns)] + ["\t".join(str(row[c]) for c in self.columns) for row in self.rows]
        write_text(self.path, "\n".join(lines) + "\n")
