"""How fast semantic occupancy is aggregated over a sequence, and how well it agrees with the exact one.

Generates S scenes of F frames of params.yaml's synthetic dataset (a sensor
profile of your choice), drops their exact occupancy and aggregates it from the
labelled points as a real dataset's conversion does
(``occbench.data.occupancy_aggregation``), one scene at a time in this process.
Prints seconds per scene and per frame, the peak resident memory, and the
agreement with the exact grid: the share of occupied voxels with the exact class,
of free voxels empty in the exact grid, and how many more voxels the sequence
labels than each frame alone. Asserts nothing about speed.

    python benchmarks/aggregate_occupancy.py [--scenes 2] [--frames-per-scene 6] [--profile nuscenes32]
                                             [--params params.yaml]
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np
import yaml

from occbench.data.converters.synthetic import SyntheticConverter
from occbench.data.frame import occupancy_grid
from occbench.data.occupancy_aggregation import aggregate_sequence
from occbench.data.synthetic import SENSOR_PROFILES
from occbench.data.taxonomy import EMPTY_INDEX

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=2)
    parser.add_argument("--frames-per-scene", type=int, help="scene length (default: params.yaml's)")
    parser.add_argument("--profile", choices=sorted(SENSOR_PROFILES), default="nuscenes32")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    args = parser.parse_args()
    settings = dict(yaml.safe_load(args.params.read_text())["datasets"]["synthetic"])
    settings["frames_per_scene"] = args.frames_per_scene or settings["frames_per_scene"]
    settings["num_scenes"] = max(2, args.scenes)
    settings["sensor"] = {"profile": args.profile}
    converter = SyntheticConverter(settings)
    seconds, counts = [], np.zeros(6)
    for scene in range(args.scenes):
        frames = [converter.load(source) for source in converter.sources() if source.scene == f"{scene:04d}"]
        exact = np.stack([occupancy_grid(frame).labels for frame in frames])
        for frame in frames:
            del frame.extras["occupancy"]
        started = time.perf_counter()
        aggregated = np.stack([grid.labels for grid in aggregate_sequence(frames, converter.occupancy)])
        seconds.append(time.perf_counter() - started)
        alone = np.stack([aggregate_sequence([frame], converter.occupancy)[0].labels for frame in frames])
        occupied, free = aggregated < EMPTY_INDEX, aggregated == EMPTY_INDEX
        counts += [occupied.sum(), (aggregated[occupied] == exact[occupied]).sum(), free.sum(),
                   (exact[free] == EMPTY_INDEX).sum(), (alone < EMPTY_INDEX).sum(), (alone == EMPTY_INDEX).sum()]
    frames_per_scene = settings["frames_per_scene"]
    print(f"{args.profile}: {args.scenes} scene(s) of {frames_per_scene} frames: {np.mean(seconds):.2f} s a scene, "
          f"{np.mean(seconds) / frames_per_scene:.2f} s a frame")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    print(f"occupied voxels with the exact class: {counts[1] / counts[0]:.4f}; free voxels empty in the exact "
          f"grid: {counts[3] / counts[2]:.4f}")
    print(f"voxels labelled, sequence / each frame alone: occupied {counts[0] / counts[4]:.2f}x, "
          f"free {counts[2] / counts[5]:.2f}x")


if __name__ == "__main__":
    main()
