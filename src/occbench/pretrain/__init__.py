"""Pre-training methods: one file each, holding its targets and its loss.

A method is an nn.Module built from (backbone, its params.yaml settings) with
``needs_bev`` and ``loss(output, batch, voxels, generator) -> (loss, logs)``.
It owns its heads; only the backbone's weights are kept after pre-training.
``scratch`` is not here: it is the absence of pre-training (see grid.SCRATCH).
"""

from occbench.pretrain.also import ALSO
from occbench.pretrain.occfeat import OccFeat
from occbench.pretrain.occupancy_mae import OccupancyMAE
from occbench.pretrain.picture import PICTURE
from occbench.pretrain.spot import SPOT

METHODS = {
    "also": ALSO,
    "occfeat": OccFeat,
    "occupancy_mae": OccupancyMAE,
    "picture": PICTURE,
    "spot": SPOT,
}
