"""Let spconv's backward pass run on a CPU-only torch build.

spconv 2.3 asks torch for the current CUDA stream in every backward op, which
raises "Torch not compiled with CUDA enabled" on CPU builds even though the CPU
kernels ignore the stream. Returning stream 0 there is what spconv itself
passes for CPU tensors; on a CUDA machine nothing is patched.
"""

from __future__ import annotations

import torch


def _null_stream() -> int:
    return 0


def enable_cpu_backward() -> None:
    if torch.cuda.is_available():
        return
    from spconv.pytorch import cppcore, ops

    ops.get_current_stream = _null_stream
    cppcore.get_current_stream = _null_stream
