"""A converted dataset on disk: its index and its frames (no torch here: converters use it)."""

from __future__ import annotations

import os
from pathlib import Path

from occbench.data.frame import Frame, load_frame
from occbench.io import read_json, write_json

INDEX_VERSION = 1
ENTRY_KEYS = ("id", "path", "split", "scene", "box_classes")


def write_index(path: str | os.PathLike, dataset: str, frames: list[dict]) -> None:
    """frames: [{"id", "path" (relative to the index), "split": "train" | "val", "scene",
    "box_classes": the distinct unified ids of the frame's boxes}]."""
    write_json(path, {"index_version": INDEX_VERSION, "dataset": dataset, "frames": frames})


class FrameIndex:
    """The index.json of a converted dataset."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        index = read_json(self.path)
        try:
            self.dataset = index["dataset"]
            self.frames = {entry["id"]: entry for entry in index["frames"]}
        except (KeyError, TypeError) as err:
            raise ValueError(f"{self.path}: not a frame index (missing {err})") from err
        for frame_id, entry in self.frames.items():
            missing = [key for key in ENTRY_KEYS if key not in entry]
            if missing:
                raise ValueError(f"{self.path}: frame {frame_id!r} has no {', '.join(missing)}; convert the "
                                 "dataset again with this occbench")

    def ids(self, split: str) -> list[str]:
        return sorted(frame_id for frame_id, entry in self.frames.items() if entry["split"] == split)

    def scenes(self, split: str) -> dict[str, str]:
        """Frame id -> scene of the frames of one split."""
        return {frame_id: self.frames[frame_id]["scene"] for frame_id in self.ids(split)}

    def frame_path(self, frame_id: str) -> Path:
        return self.path.parent / self.frames[frame_id]["path"]

    def load(self, frame_id: str) -> Frame:
        return load_frame(self.frame_path(frame_id))
