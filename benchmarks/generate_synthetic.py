"""How fast the synthetic world generates a dataset through the real conversion driver.

Generates about N frames (whole scenes of params.yaml's frames_per_scene) of one
sensor profile with ``occbench.data.convert.run_conversion`` in W worker
processes, into a temporary folder, with the scene and motion settings of
params.yaml's synthetic dataset. Prints frames per second, total seconds,
points per frame and the peak resident memory of this process and of its
largest worker; asserts nothing about speed.

    python benchmarks/generate_synthetic.py [--frames 1000] [--workers 2] [--profile nuscenes32]
                                            [--frames-per-scene 40] [--params params.yaml]
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from occbench.data.convert import run_conversion
from occbench.data.converters.synthetic import SyntheticConverter
from occbench.data.synthetic import SENSOR_PROFILES

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--profile", choices=sorted(SENSOR_PROFILES), default="nuscenes32")
    parser.add_argument("--frames-per-scene", type=int,
                        help="scene length (default: params.yaml's; nuScenes scenes have 40 keyframes)")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml",
                        help="the params file whose datasets.synthetic settings are used")
    args = parser.parse_args()
    settings = dict(yaml.safe_load(args.params.read_text())["datasets"]["synthetic"])
    settings["frames_per_scene"] = args.frames_per_scene or settings["frames_per_scene"]
    settings["num_scenes"] = max(2, math.ceil(args.frames / settings["frames_per_scene"]))
    settings["sensor"] = {"profile": args.profile}
    converter = SyntheticConverter(settings)
    count = len(converter.sources())
    with tempfile.TemporaryDirectory() as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            started = time.perf_counter()
            failures = run_conversion("synthetic", converter, settings, args.workers)
            seconds = time.perf_counter() - started
            frames = sorted(Path(tmp, "results/data/synthetic/frames").glob("*.npz"))
            points = [np.load(path)["points"].shape[0] for path in frames]
        finally:
            os.chdir(cwd)
    if failures:
        raise SystemExit("failed frames:\n  " + "\n  ".join(failures))
    peak_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    peak_worker = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"{args.profile}: {count} frames ({settings['num_scenes']} scenes x "
          f"{settings['frames_per_scene']}) with {args.workers} worker(s) in {seconds:.1f} s: "
          f"{count / seconds:.2f} frames/s")
    print(f"points per frame: mean {np.mean(points):.0f}, min {min(points)}, max {max(points)}")
    print(f"peak RSS: main process {peak_self:.0f} MiB, largest worker {peak_worker:.0f} MiB")


if __name__ == "__main__":
    main()
