"""Downstream tasks: a dict from name to task class (``execute()`` runs one fine-tuning run)."""

from occbench.tasks.segmentation import SegmentationTask

TASKS = {
    "segmentation": SegmentationTask,
}
