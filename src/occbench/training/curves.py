"""Training curves as TSV files that `dvc plots show` renders (dvc.yaml declares them).

Plain TSV rather than dvclive: a resumed run must drop the rows written after its
last saved state (so that the curve of a killed and resumed run is that of an
uninterrupted one), which a file we own can do in one atomic rewrite.
"""

from __future__ import annotations

import csv
import io
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
            self._writer(handle).writerow(self.rows[-1])

    def _writer(self, handle) -> csv.DictWriter:
        return csv.DictWriter(handle, self.columns, delimiter="\t", lineterminator="\n")

    def _rewrite(self) -> None:
        if self.columns is None:
            return
        text = io.StringIO()
        writer = self._writer(text)
        writer.writeheader()
        writer.writerows(self.rows)
        write_text(self.path, text.getvalue())
