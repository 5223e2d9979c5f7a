"""occbench: a reproducible benchmark for occupancy-based LiDAR pre-training."""

__version__ = "0.1.0"
