"""Make spconv 2.3's CPU path usable for training: backward at all, and correct results.

1. spconv asks torch for the current CUDA stream in every backward op, which
   raises "Torch not compiled with CUDA enabled" on CPU builds even though the
   CPU kernels ignore the stream. Returning stream 0 there is what spconv
   itself passes for CPU tensors.
2. spconv's CPU gather-GEMM-scatter ops (``indice_conv`` and friends) scatter-add
   into the output from several OpenMP threads without synchronisation: with
   torch using 2 threads a SubMConv3d output differs from dense conv3d by up to
   0.5 in about 80 % of runs (float64), with 1 thread never. On CPU those ops
   therefore run single-threaded; everything else keeps torch's thread count.

On a CUDA machine nothing is patched.
"""

from __future__ import annotations

import functools

import torch

# spconv.pytorch.ops functions that scatter into shared outputs on CPU.
_RACY_CPU_OPS = ("indice_conv", "indice_conv_backward", "indice_maxpool", "indice_maxpool_backward")


def _null_stream() -> int:
    return 0


def _single_threaded(op):
    @functools.wraps(op)
    def run(*args, **kwargs):
        threads = torch.get_num_threads()
        if threads == 1:
            return op(*args, **kwargs)
        torch.set_num_threads(1)
        try:
            return op(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)

    return run


def enable_cpu_training() -> None:
    if torch.cuda.is_available():
        return
    from spconv.pytorch import cppcore, ops

    ops.get_current_stream = _null_stream
    cppcore.get_current_stream = _null_stream
    for name in _RACY_CPU_OPS:
        op = getattr(ops, name)
        if not hasattr(op, "__wrapped__"):
            setattr(ops, name, _single_threaded(op))
