"""One converter per dataset kind (``kind:`` of a dataset in params.yaml).

Each module imports its dataset's tools (nuscenes-devkit, waymo-open-dataset)
only when a converter is built, so this registry imports anywhere.
"""

from occbench.data.converters.kitti import KittiDetectionConverter, SemanticKittiConverter
from occbench.data.converters.nuscenes import NuScenesConverter
from occbench.data.converters.synthetic import SyntheticConverter
from occbench.data.converters.waymo import WaymoConverter

CONVERTERS = {
    "synthetic": SyntheticConverter,
    "semantickitti": SemanticKittiConverter,
    "kitti": KittiDetectionConverter,
    "nuscenes": NuScenesConverter,
    "waymo": WaymoConverter,
}
