"""The embedded synthetic world as a dataset: frames are generated, not read.

A dataset is ``num_scenes`` scenes of ``frames_per_scene`` frames each,
``frame_interval`` seconds apart; the last ``val_fraction`` of the scenes form
the "val" split, so no scene is in both splits.
"""

from __future__ import annotations

from typing import Any

from occbench.data.convert import FrameSource
from occbench.data.frame import Frame
from occbench.data.synthetic import SceneConfig, SensorProfile, SequenceConfig, generate_frame
from occbench.data.synthetic_camera import CameraConfig
from occbench.data.frame import OccupancySpec


class SyntheticConverter:
    occupancy_aggregation = None  # each frame holds its scene's exact occupancy instead
    def __init__(self, settings: dict[str, Any]) -> None:
        self.seed = settings["seed"]
        self.num_scenes = settings["num_scenes"]
        self.val_fraction = settings["val_fraction"]
        self.sensor = SensorProfile.from_dict(settings["sensor"])
        self.scene = SceneConfig.from_dict(settings["scene"])
        self.sequence = SequenceConfig(
            frames_per_scene=settings["frames_per_scene"],
            frame_interval=settings["frame_interval"],
            ego_max_speed=settings["ego_max_speed"],
            moving_fraction=settings["moving_fraction"],
        )
        self.occupancy = OccupancySpec.from_dict(settings["occupancy"]) if settings["occupancy"] else None
        self.cameras = [CameraConfig.from_dict(camera) for camera in settings["cameras"]]
        if self.num_scenes < 2:
            raise ValueError(f"synthetic dataset: num_scenes is {self.num_scenes}, but a train and a "
                             f"val split need at least 2 scenes")

    def sources(self) -> list[FrameSource]:
        first_val = self.num_scenes - min(max(1, round(self.num_scenes * self.val_fraction)),
                                          self.num_scenes - 1)
        return [
            FrameSource(f"{scene:04d}_{frame:03d}", scene=f"{scene:04d}",
                        split="val" if scene >= first_val else "train",
                        location=f"synthetic seed {self.seed} scene {scene} frame {frame}")
            for scene in range(self.num_scenes)
            for frame in range(self.sequence.frames_per_scene)
        ]

    def load(self, source: FrameSource) -> Frame:
        scene, frame = (int(part) for part in source.frame_id.split("_"))
        return generate_frame(self.seed, scene, frame, self.sensor, self.scene, self.sequence,
                              occupancy=self.occupancy, cameras=self.cameras)
