"""How fast, and in how much memory, the real-data converters convert, on inputs built from real scans.

The inputs come from the real test files in ../shared/data/real (SOURCES.md),
put into dataset trees by the same builders the tests use (tests/data/test_kitti.py,
tests/nuscenes_fixture.py, tests/waymo_fixture.py), with about N frames each:

- kitti: N copies of the real 17,238-point scan with label_2 (one car) and calib;
- semantickitti: N copies of the real 50-point excerpt, and, for a realistic
  figure, N scans of 120,000 points tiled from the KITTI scan (turned copies
  around the sensor) with labels of valid raw ids: road, building, vegetation
  and one car instance per copy;
- nuscenes: the fixture's v1.0-mini tables with N keyframes (the real
  34,688-point sweep seen from moving ego poses, two non-keyframe sweeps before
  each but a scene's first), converted with sweeps 0 and 2;
- waymo: N/2 copies of the fixture's two-record segment (range images cast from
  the real calibrations), built and converted with .venv-waymo/bin/python.

Each conversion is ``run_conversion`` in a fresh interpreter (python -c, cwd a
new temporary folder): peak RSS is a high-water mark over a process's life, so
this keeps one conversion's figure free of the others' and of the input
building. Printed: frames, seconds, frames/s, points per frame and the peak
RSS of that process (its VmHWM) and of its largest child (a worker, from
getrusage). Nothing is asserted.

    python benchmarks/convert_real.py [--frames 200] [--workers W] [--only kitti,semantickitti,nuscenes,waymo]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT / ".." / "shared" / "data" / "real"
WAYMO_PYTHON = ROOT / ".venv-waymo" / "bin" / "python"
sys.path.insert(0, str(ROOT / "tests"))  # the test fixture builders; pytest's `pythonpath` does this in tests

import nuscenes_fixture  # noqa: E402
from data.test_kitti import CAR, LABEL_2, rotation_z, write_kitti, write_sequence  # noqa: E402

DATASETS = ("kitti", "semantickitti", "nuscenes", "waymo")
TILED_POINTS = 120_000

# Runs in a fresh interpreter (the main or the Waymo environment), in the folder to convert into.
MEASURE = """
import json, resource, sys, time
import numpy as np
from occbench.data.convert import run_conversion
from occbench.data.converters import CONVERTERS
name, settings, workers = json.loads(sys.argv[1])
converter = CONVERTERS[settings["kind"]](settings)
started = time.perf_counter()
failures = run_conversion(name, converter, settings, workers)
seconds = time.perf_counter() - started
frames = json.load(open(f"results/data/{name}/index.json"))["frames"]
points = [np.load(f"results/data/{name}/{frame['path']}")["points"].shape[0] for frame in frames]
# Not getrusage(RUSAGE_SELF): Linux carries ru_maxrss over exec, so it would start at the launcher's RSS.
own = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
rss = [int(own.split()[1]) / 1024, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024]
print(json.dumps({"frames": len(frames), "failures": failures, "seconds": seconds,
                  "points": float(np.mean(points)), "rss": rss}))
"""


def measure(python: Path, label: str, settings: dict, workers: int, base: Path) -> None:
    """Convert ``settings`` with ``workers`` in a fresh process and print one row of figures."""
    cwd = Path(tempfile.mkdtemp(dir=base))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([str(python), "-c", MEASURE, json.dumps([settings["kind"], settings, workers])],
                          cwd=cwd, env=env, capture_output=True, text=True)
    shutil.rmtree(cwd)
    if done.returncode:
        print(f"{label:<28} {workers:>7}  FAILED:\n{done.stderr[-3000:]}", flush=True)
        return
    result = json.loads(done.stdout.splitlines()[-1])
    seconds, frames = result["seconds"], result["frames"]
    children = f"{result['rss'][1]:.0f}" if workers > 1 else "-"
    print(f"{label:<28} {workers:>7} {frames:>6} {seconds:>8.1f} {frames / seconds:>8.1f} {result['points']:>10.0f}"
          f" {result['rss'][0]:>9.0f} {children:>9}", flush=True)
    for failure in result["failures"][:3]:
        print(f"    failed: {failure}")


# ------------------------------------------------------------------ inputs


def kitti_tree(root: Path, frames: int) -> Path:
    write_kitti(root, {f"{i:06d}": LABEL_2 for i in range(frames)}, REAL / "kitti_000008.bin")
    return root


def tiled_scan(scan: np.ndarray, labels_from: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """TILED_POINTS points: copies of the KITTI scan turned around the sensor, labelled by where
    each point lies (road below the sensor's ground, the test's car as one instance per copy,
    vegetation beyond 30 m, building elsewhere), as uint32 raw id | instance << 16."""
    local = (scan[:, :3] - CAR[:3]) @ rotation_z(CAR[6])
    car = (np.abs(local) <= CAR[3:6] / 2).all(axis=1)
    raw = np.where(scan[:, 2] < -1.5, 40, np.where(np.hypot(scan[:, 0], scan[:, 1]) > 30, 70, 50))
    raw = np.where(car, 10, raw).astype(np.uint32)
    copies = math.ceil(TILED_POINTS / len(scan))
    scans, labels = [], []
    for k in range(copies):
        turned = scan.copy()
        turned[:, :3] = scan[:, :3] @ rotation_z(2 * math.pi * k / copies).T
        scans.append(turned)
        labels.append(raw | (car * (k + 1)).astype(np.uint32) << 16)
    return np.vstack(scans)[:TILED_POINTS], np.concatenate(labels)[:TILED_POINTS]


def semantickitti_tree(root: Path, frames: int, tiled: bool) -> Path:
    if tiled:
        scan, label = tiled_scan(np.fromfile(REAL / "kitti_000008.bin", dtype="<f4").reshape(-1, 4))
    else:
        scan = np.fromfile(REAL / "semantickitti_00_000000.bin", dtype="<f4").reshape(-1, 4)
        label = np.fromfile(REAL / "semantickitti_00_000000.label", dtype="<u4")
    write_sequence(root, "00", [scan] * frames, [label] * frames)
    return root


def nuscenes_tree(root: Path, frames: int) -> Path:
    """The fixture's tables with its train and val scene stretched to ``frames`` keyframes in all,
    0.5 s apart, each after two non-keyframe sweeps (0.15 and 0.3 s after the keyframe before it)."""
    def timeline(keyframes: int) -> tuple:
        steps = [(k * 500_000 + offset, offset == 0) for k in range(keyframes) for offset in (0, 150_000, 300_000)]
        return tuple(steps[:-2])

    original = nuscenes_fixture.SCENES
    train, val, test = original
    nuscenes_fixture.SCENES = (replace(train, lidar=timeline(max(2, math.ceil(frames / 2)))),
                               replace(val, lidar=timeline(max(2, frames // 2))), test)
    try:
        nuscenes_fixture.build_nuscenes(root, REAL / "nuscenes_LIDAR_TOP_1532402927647951.pcd.bin")
    finally:
        nuscenes_fixture.SCENES = original
    return root


def waymo_tree(root: Path, frames: int) -> Path:
    """ceil(frames / 2) copies of the fixture's good two-record segment under root/validation/."""
    records = root.parent / "waymo_records"
    subprocess.run([str(WAYMO_PYTHON), str(ROOT / "tests" / "waymo_fixture.py"),
                    str(REAL / "waymo_val_fixture.tfrecord"), str(records)],
                   check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    [good] = (records / "good" / "validation").glob("segment-*.tfrecord")
    (root / "validation").mkdir(parents=True)
    stem = good.name.removesuffix("_with_camera_labels.tfrecord")
    for copy in range(math.ceil(frames / 2)):
        shutil.copyfile(good, root / "validation" / f"{stem}_{copy:04d}_with_camera_labels.tfrecord")
    return root


# ------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--workers", type=int, action="append",
                        help="worker processes (repeatable; default: 1 and 2)")
    parser.add_argument("--only", default=",".join(DATASETS), help="comma-separated subset of " + ",".join(DATASETS))
    args = parser.parse_args()
    only = args.only.split(",")
    unknown = sorted(set(only) - set(DATASETS))
    if unknown:
        parser.error(f"--only: unknown dataset(s) {unknown}; choose from {', '.join(DATASETS)}")
    if not REAL.is_dir():
        raise SystemExit(f"the real LiDAR test files are not at {REAL.resolve()} (see SOURCES.md)")
    workers = args.workers or [1, 2]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())["datasets"]
    python = Path(sys.executable)

    print(f"inputs from {REAL.resolve()}, about {args.frames} frames each; {os.cpu_count()} CPUs")
    print("peak RSS in MiB: the converting process, and its largest child (a worker: with --workers > 1)")
    print(f"{'dataset':<28} {'workers':>7} {'frames':>6} {'seconds':>8} {'frames/s':>8} {'pts/frame':>10}"
          f" {'RSS main':>9} {'RSS child':>9}", flush=True)
    with tempfile.TemporaryDirectory(prefix="convert_real_") as tmp:
        base = Path(tmp)

        def run(label: str, settings: dict, python: Path = python) -> None:
            for count in workers:
                measure(python, label, settings, count, base)
            shutil.rmtree(settings["root"])

        if "kitti" in only:
            run("kitti", {**params["kitti"], "root": str(kitti_tree(base / "kitti", args.frames))})
        if "semantickitti" in only:
            for tiled, label in ((False, "semantickitti 50-pt excerpt"), (True, "semantickitti tiled 120k")):
                root = semantickitti_tree(base / "semantickitti", args.frames, tiled)
                run(label, {**params["semantickitti"], "root": str(root), "train_sequences": ["00"],
                            "val_sequences": []})
        if "nuscenes" in only:
            root = nuscenes_tree(base / "nuscenes", args.frames)
            for sweeps in (0, 2):
                for count in workers:
                    measure(python, f"nuscenes sweeps={sweeps}", {**params["nuscenes"], "root": str(root),
                                                                   "sweeps": sweeps}, count, base)
            shutil.rmtree(root)
        if "waymo" in only:
            if WAYMO_PYTHON.exists():
                root = waymo_tree(base / "waymo", args.frames)
                run("waymo TOP, first return", {**params["waymo"], "root": str(root)}, WAYMO_PYTHON)
            else:
                print(f"waymo: skipped, no Waymo environment at {WAYMO_PYTHON} (make waymo-env)")
    print("notes: semantickitti tiled 120k is the real 17,238-point KITTI scan tiled into 120,000-point scans\n"
          "  (turned copies) with made-up labels of valid raw ids, as the real 50-point excerpt is too small to time;\n"
          "  nuscenes frames carry the fixture's 64x48 CAM_FRONT images; waymo frames are copies of the\n"
          "  fixture segment's two records (range images cast from the real calibrations).")

if __name__ == "__main__":
    main()
