"""The fine-tuning tests' working folder: the smoke dataset, its splits and an ALSO checkpoint."""

from __future__ import annotations

import os

import pytest

from smoke import make_dataset, occbench


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The smoke dataset converted, split and ALSO pre-trained once for the using module's runs (cwd)."""
    path = tmp_path_factory.mktemp("finetune")
    make_dataset(path)
    cwd = os.getcwd()
    os.chdir(path)
    assert occbench("pretrain", "--backbone", "small", "--dataset", "synthetic", "--method", "also",
                    "--fraction", "1") == 0
    yield path
    os.chdir(cwd)
