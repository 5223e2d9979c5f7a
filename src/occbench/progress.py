"""Progress bars for anything long (conversion, training, evaluation)."""

from __future__ import annotations

import sys

from tqdm import tqdm


def progress(iterable, **kwargs):
    """A tqdm bar; in logs (no terminal) it updates rarely instead of flooding the file."""
    interactive = sys.stderr.isatty()
    return tqdm(iterable, mininterval=0.1 if interactive else 30.0, dynamic_ncols=interactive, **kwargs)
