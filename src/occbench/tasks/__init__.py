"""Downstream tasks: a dict from name to task class (head, loss, evaluator, main metric); tasks/job.py runs them."""

from occbench.tasks.detection import DetectionTask
from occbench.tasks.occupancy import OccupancyTask
from occbench.tasks.segmentation import SegmentationTask

TASKS = {
    "segmentation": SegmentationTask,
    "occupancy": OccupancyTask,
    "detection": DetectionTask,
}
