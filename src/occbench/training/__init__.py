"""The one training engine: every pre-training method and every downstream task trains through ``fit``."""

from occbench.training.loop import FitResult, TrainConfig, fit, load_torch, save_torch, seed_everything

__all__ = ["FitResult", "TrainConfig", "fit", "load_torch", "save_torch", "seed_everything"]
