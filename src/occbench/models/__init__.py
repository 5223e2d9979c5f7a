"""The shared backbone: voxelization and one spconv encoder-decoder for every method."""

from occbench.models import spconv_compat

spconv_compat.enable_cpu_training()
