"""Bad input and faults, through the real CLI: each kind is refused with a message naming the file and
the problem, exit code 2 and no traceback, and nothing on disk added or changed.

CATALOGUE is the README's table "Bad input and faults", row for row: a row without a test here, or a
test without a row, fails ``test_the_readme_table_is_the_catalogue``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from occbench.cli import main
from occbench.config import merge
from occbench.io import LOCK_FILE
from occbench.models.backbone import SparseBackbone
from occbench.models.checkpoint import save_checkpoint
from occbench.workflow.grid import index_path
from occbench.models.image_encoder import ImageEncoder, save_image_encoder
from occbench.tasks.segmentation import SegmentationTask
from occbench.training.loop import STATE_FILE, step_seed
from smoke import ROOT, SMOKE_ARGS, smoke_params

CATALOGUE = [
    ("params-unknown-key", "params: an unknown key"),
    ("params-wrong-type", "params: a value of the wrong type"),
    ("params-out-of-range", "params: a value out of range"),
    ("params-fractions-not-nested", "params: fractions that do not nest"),
    ("params-transfer-unknown", "params: a transfer naming a dataset not defined"),
    ("params-teacher-unknown", "params: a teacher naming a method not defined"),
    ("params-teacher-off-grid", "params: a teacher at a fraction not in the grid"),
    ("params-no-scratch", "params: a grid without scratch"),
    ("dataset-root-missing", "dataset root: does not exist"),
    ("dataset-root-empty", "dataset root: lacks the expected layout"),
    ("dataset-root-empty-nuscenes", "dataset root: a nuScenes root without the tables of its version"),
    ("dataset-root-empty-semantickitti", "dataset root: a SemanticKITTI root without a listed sequence"),
    ("kitti-scan-truncated", "KITTI scan (.bin): truncated"),
    ("kitti-scan-empty", "KITTI scan (.bin): 0 bytes"),
    ("kitti-scan-nan", "KITTI scan (.bin): NaN or infinite coordinates"),
    ("kitti-label-fields", "KITTI labels (label_2 .txt): a line with fields missing"),
    ("kitti-label-unknown-type", "KITTI labels (label_2 .txt): an object type not in KITTI's table"),
    ("semantickitti-label-truncated", "SemanticKITTI labels (.label): truncated, or of another scan's length"),
    ("semantickitti-label-unknown-ids", "SemanticKITTI labels (.label): raw class ids not in SemanticKITTI's table"),
    ("nuscenes-lidarseg-length", "nuScenes lidarseg labels (.bin): of the wrong length"),
    ("nuscenes-lidarseg-unknown-ids", "nuScenes lidarseg labels (.bin): category indices not in category.json"),
    ("waymo-segment-truncated", "Waymo segment (.tfrecord): truncated"),
    ("waymo-segment-corrupt", "Waymo segment (.tfrecord): a record failing its CRC check"),
    ("frame-truncated", "frame file: truncated"),
    ("frame-empty-file", "frame file: 0 bytes"),
    ("frame-nan", "frame file: NaN or infinite coordinates"),
    ("frame-labels-length", "frame file: labels of the wrong length"),
    ("frame-unknown-ids", "frame file: labels with unknown class ids"),
    ("frame-zero-points", "frame file: 0 points"),
    ("frame-outside-grid", "frame file: every point outside the voxel grid"),
    ("checkpoint-missing", "checkpoint: missing"),
    ("checkpoint-truncated", "checkpoint: truncated"),
    ("checkpoint-not-a-checkpoint", "checkpoint: not an occbench checkpoint"),
    ("checkpoint-other-backbone", "checkpoint: of another backbone"),
    ("checkpoint-other-grid", "checkpoint: of another voxel grid"),
    ("checkpoint-pickled-code", "checkpoint: a pickled object that would run code"),
    ("training-loss-nan-finetune", "training: a loss that turns NaN or infinite (fine-tuning)"),
    ("training-loss-nan-pretrain", "training: a loss that turns NaN or infinite (pre-training)"),
    ("training-gradient-nan", "training: a finite loss with a non-finite gradient"),
    ("teacher-weights-other-sha256", "pinned image-teacher weights: another file than the pinned SHA-256"),
    ("teacher-weights-truncated", "pinned image-teacher weights: truncated"),
    ("teacher-weights-missing", "pinned image-teacher weights: missing"),
    ("interrupted-convert-killed", "interrupted: `occbench convert` killed mid-way"),
    ("interrupted-second-writer", "interrupted: a second `occbench finetune` of a run being trained"),
    ("interrupted-second-workflow", "interrupted: a second Snakemake workflow in the same folder"),
    ("lock-unsupported", "folder lock: a file system without POSIX locks"),
    ("disk-full-at-start", "disk full: already when a verb starts (its folder's lock file)"),
    ("disk-full-frame", "disk full: while writing a frame (`occbench convert`)"),
    ("disk-full-checkpoint", "disk full: while writing a checkpoint (`occbench pretrain`)"),
    ("disk-full-metrics", "disk full: while writing a metrics file (`occbench finetune`)"),
]

# (overlay on the smoke grid, what the message names after the file: the key path and the problem)
PARAMS = {
    "params-unknown-key": ({"grid": {"methodz": ["also"]}},
                           "grid: Additional properties are not allowed ('methodz' was unexpected)"),
    "params-wrong-type": ({"grid": {"seeds": "0"}}, "grid.seeds: '0' is not of type 'array'"),
    "params-out-of-range": ({"grid": {"label_fractions": [0.1, 1.5]}},
                            "grid.label_fractions[1]: 1.5 is greater than the maximum of 1"),
    "params-fractions-not-nested": ({"grid": {"pretrain_fractions": [0.2, 0.5, 1.0]}},
                                    "splits.pretrain_sampling: interval sampling with strides 2 and 5"),
    "params-transfer-unknown": ({"grid": {"transfers": [{"pretrain": "lyft", "finetune": "synthetic"}]}},
                                "grid.transfers[0].pretrain: dataset 'lyft' is not defined under datasets"),
    "params-teacher-unknown": ({"pretrain": {"methods": {"picture": {"teacher": {"method": "byol"}}}}},
                               "pretrain.methods.picture.teacher.method: 'byol' is not one of "
                               "['also', 'occfeat', 'occupancy_mae', 'picture', 'spot']"),
    "params-teacher-off-grid": ({"pretrain": {"methods": {"picture": {"teacher": {"method": "also",
                                                                                  "fraction": 0.5}}}}},
                                "pretrain.methods.picture.teacher.fraction: 0.5 is not one of "
                                "grid.pretrain_fractions [1.0]"),
    "params-no-scratch": ({"grid": {"methods": ["also"]}}, "grid.methods: ['also'] lacks 'scratch'"),
}

# A grid of one fine-tuning run from ALSO's checkpoint, on a world of two frames.
TINY_WORLD = {
    "grid": {"methods": ["scratch", "also"], "pretrain_fractions": [1.0], "label_fractions": [1.0],
             "seeds": [0], "label_split_seeds": [0]},
    "datasets": {"synthetic": {"num_scenes": 2, "frames_per_scene": 1, "val_fraction": 0.5,
                               "occupancy": None, "cameras": []}},
    "finetune": {"segmentation": {"epochs": [{"up_to_label_fraction": 1.0, "epochs": 4}]}},
}
CHECKPOINT = Path("results/pretrain/small/synthetic/also/pt_1/checkpoint.pt")
FINETUNE = ["finetune", "--task", "segmentation", "--backbone", "small", "--dataset", "synthetic",
            "--source", "also-synthetic-pt_1", "--label-fraction", "1", "--seed", "0"]


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` with the SHA-256 of its bytes, and every empty folder: what 'nothing lost
    or added' compares."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "empty"
            for p in sorted(root.rglob("*")) if p.is_file() or not any(p.iterdir())}


def refused(argv: list[str], capsys, *named: str) -> str:
    """Run the CLI on ``argv``: exit code 2, a one-line error naming each of ``named``, no traceback."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and " error: " in err, err
    for fragment in named:
        assert fragment in err, f"{fragment!r} not in:\n{err}"
    return err


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, list[str]]:
    """A converted two-frame world and its label split, and the CLI options that read its grid."""
    root = tmp_path_factory.mktemp("world")
    (root / "tiny.yaml").write_text(yaml.safe_dump(TINY_WORLD))
    args = [*SMOKE_ARGS, "--params", str(root / "tiny.yaml")]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        assert main([*args, "convert", "--dataset", "synthetic"]) == 0
        assert main([*args, "split", "--dataset", "synthetic", "--subset", "labels", "--fraction", "1",
                     "--split-seed", "0"]) == 0
        assert main([*args, "split", "--dataset", "synthetic", "--subset", "pretrain", "--fraction", "1"]) == 0
    return root, args


def remove_run(run: Path) -> None:
    """A run folder a case made, and the folders above it left empty: the world as the case found it."""
    shutil.rmtree(run, ignore_errors=True)
    for folder in run.parents:
        try:
            folder.rmdir()
        except OSError:
            break


def tiny_params() -> dict:
    return merge(smoke_params(), TINY_WORLD)


def write_checkpoint(path: Path, backbone: str = "small", **meta_overrides) -> None:
    """A checkpoint as pre-training writes it (its meta records the backbone and voxel grid)."""
    params = tiny_params()
    model = SparseBackbone.from_params(params, backbone)
    meta = {"backbone_spec": params["backbones"][backbone], "voxelization": params["voxelization"],
            **meta_overrides}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, model, meta, {name for name, _ in model.named_parameters()})


TRAIN_FRAME = Path("results/data/synthetic/frames/0000_000.npz")  # the training frame of TINY_WORLD
FINETUNE_SCRATCH = [*FINETUNE[:FINETUNE.index("--source") + 1], "scratch",
                    *FINETUNE[FINETUNE.index("--source") + 2:]]


def without_points(arrays: dict) -> None:
    for name in ("points", "intensity", "ring", "semantic", "instance"):
        arrays[name] = arrays[name][:0]


# How each bad frame is made from a good one's arrays, and what the refusal names besides the file.
FRAMES = {
    "frame-nan": (lambda a: a["points"].__setitem__((0, 0), np.nan), "points holds NaN or infinite values"),
    "frame-labels-length": (lambda a: a.__setitem__("semantic", a["semantic"][:-1]), "semantic has shape"),
    "frame-unknown-ids": (lambda a: a["semantic"].__setitem__(0, 200), "semantic holds unknown class id(s) [200]"),
    "frame-zero-points": (without_points, "no point falls inside the voxel grid VoxelGrid("),
    "frame-outside-grid": (lambda a: a.__setitem__("points", a["points"] + np.float32(1000)),
                           "no point falls inside the voxel grid VoxelGrid("),
}


def bad_frame(kind: str, path: Path) -> tuple[str, ...]:
    """Overwrite the frame at ``path`` with a bad one of ``kind``; what the refusal must name."""
    if kind == "frame-truncated":
        path.write_bytes(path.read_bytes()[:1000])
        return (str(path), "cannot read as a frame archive")
    if kind == "frame-empty-file":
        path.write_bytes(b"")
        return (str(path), "cannot read as a frame archive")
    edit, named = FRAMES[kind]
    with np.load(path) as archive:
        arrays = dict(archive)
    edit(arrays)
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)
    # Read before batching, a file is named by its path; batched, a frame by its id.
    return (path.stem if "voxel grid" in named else str(path), named)


class RunsCode:
    """Unpickling it touches ``marker``: the code a checkpoint from an untrusted source could carry."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def bad_checkpoint(kind: str, path: Path) -> tuple[str, ...]:
    """Write the bad checkpoint of ``kind`` at ``path``; what the refusal must name besides the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "checkpoint-missing":
        return ("no such file (a checkpoint is expected there)",)
    if kind == "checkpoint-truncated":
        write_checkpoint(path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        return ("cannot read as a checkpoint",)
    if kind == "checkpoint-not-a-checkpoint":
        torch.save({"weights": torch.zeros(3)}, path)
        return ("not an occbench checkpoint (no 'backbone' state dict)",)
    if kind == "checkpoint-other-backbone":
        write_checkpoint(path, "base")
        return ("checkpoint's backbone {'channels': [32, 64, 128], 'bev_channels': 128}",
                "is not the fine-tuning run's {'channels': [16, 32, 64], 'bev_channels': 64}")
    if kind == "checkpoint-other-grid":  # moved 10 m in x: every weight keeps its shape
        voxelization = tiny_params()["voxelization"]
        low_x, high_x = voxelization["point_cloud_range"][0], voxelization["point_cloud_range"][3]
        moved = [low_x + 10, *voxelization["point_cloud_range"][1:3], high_x + 10,
                 *voxelization["point_cloud_range"][4:]]
        write_checkpoint(path, voxelization={**voxelization, "point_cloud_range": moved})
        return (f"checkpoint's voxel grid VoxelGrid(point_cloud_range={tuple(map(float, moved))}",
                "is not the fine-tuning run's VoxelGrid(point_cloud_range="
                f"{tuple(map(float, voxelization['point_cloud_range']))}")
    if kind == "checkpoint-pickled-code":
        torch.save({"backbone": {}, "payload": RunsCode(path.with_name("ran"))}, path)
        return ("cannot read as a checkpoint", "Weights only load failed")
    raise AssertionError(kind)


def params_case(kind: str, tmp_path: Path, capsys) -> None:
    overlay, named = PARAMS[kind]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(overlay))
    before = snapshot(tmp_path)
    refused([*SMOKE_ARGS, "--params", str(bad), "validate"], capsys, f"{bad}: {named}")
    assert snapshot(tmp_path) == before


# (the dataset of params.yaml, the first file or folder of its layout that an empty root lacks, and why)
EMPTY_ROOTS = {
    "dataset-root-empty": ("kitti", "ImageSets/train.txt: the train split file is missing"),
    "dataset-root-empty-nuscenes": ("nuscenes", "v1.0-mini: no nuScenes tables of version v1.0-mini here"),
    "dataset-root-empty-semantickitti": ("semantickitti",
                                         "sequences/00/velodyne: no such folder (sequence 00 of the train split)"),
}


def dataset_case(kind: str, tmp_path: Path, capsys) -> None:
    """A root that is not there, or holds none of the dataset's layout: refused naming it before anything is
    written; frames an earlier conversion (of other settings) left are kept."""
    dataset, lacks = EMPTY_ROOTS.get(kind, ("kitti", None))
    if dataset == "nuscenes":
        import importlib.util
        needs("nuscenes-devkit (pip install --no-deps nuscenes-devkit==1.2.0)",
              importlib.util.find_spec("nuscenes") is not None)
    root = tmp_path / ("absent" if kind == "dataset-root-missing" else "empty")
    earlier = tmp_path / f"results/data/{dataset}/frames"
    if lacks:
        root.mkdir()
        earlier.mkdir(parents=True)  # frames of other settings: a conversion that starts removes them
        (earlier / "settings.json").write_text('{"root": "elsewhere"}')
        (earlier / "000000.npz").write_bytes(b"an earlier frame")
    overlay = tmp_path / f"{dataset}.yaml"
    overlay.write_text(yaml.safe_dump({"datasets": {dataset: {"root": str(root)}}}))
    before = snapshot(tmp_path)
    named = f"{root}/{lacks}" if lacks else (f"datasets.kitti.root: {root}: no such directory (expected the kitti "
                                             "dataset there")
    refused([*SMOKE_ARGS, "--params", str(overlay), "convert", "--dataset", dataset], capsys, named)
    assert snapshot(tmp_path) == before and earlier.exists() == bool(lacks)


IDENTITY_CALIB = "R0_rect: 1 0 0 0 1 0 0 0 1\nTr_velo_to_cam: 1 0 0 0 0 1 0 0 0 0 1 0\n"


# A car 3.9 m by 1.6 m, 1.5 m high, 12 m ahead (camera frame: x right, y down, z forward); 15 fields.
CAR = "Car 0.00 0 -1.57 500.0 170.0 560.0 210.0 1.50 1.60 3.90 0.00 1.70 12.00 -1.57"


def write_kitti(root: Path, scans: dict[str, bytes], labels: dict[str, str] | None = None) -> None:
    """A KITTI object tree of ``scans`` (frame id -> .bin bytes), all in the train split; each frame's label_2
    file is ``labels``[frame id], else empty (no objects)."""
    for folder in ("velodyne", "label_2", "calib"):
        (root / "training" / folder).mkdir(parents=True)
    for frame_id, scan in scans.items():
        (root / "training" / "velodyne" / f"{frame_id}.bin").write_bytes(scan)
        (root / "training" / "label_2" / f"{frame_id}.txt").write_text((labels or {}).get(frame_id, ""))
        (root / "training" / "calib" / f"{frame_id}.txt").write_text(IDENTITY_CALIB)
    (root / "ImageSets").mkdir()
    (root / "ImageSets" / "train.txt").write_text("\n".join(scans) + "\n")
    (root / "ImageSets" / "val.txt").write_text("")


def kitti_case(kind: str, tmp_path: Path, capsys) -> None:
    """One bad scan (or label file) among good ones: it is named, the others convert, the index lists only them."""
    scan = np.random.default_rng(0).uniform(-20, 20, (300, 4)).astype("<f4")
    scan[:, 3] = 0.5
    if kind.startswith("kitti-label"):  # the scan good, its label file bad; the other frame has a good car
        label_2 = tmp_path / "kitti/training/label_2/000001.txt"
        bad = CAR.rsplit(" ", 1)[0] if kind == "kitti-label-fields" else CAR.replace("Car", "Hovercraft")
        named = (f"{label_2}, line 2: 14 fields, a label_2 line has 15" if kind == "kitti-label-fields" else
                 f"{label_2}: object type(s) ['Hovercraft'] are not in the KITTI mapping table")
        write_kitti(tmp_path / "kitti", {"000000": scan.tobytes(), "000001": scan.tobytes()},
                    {"000000": CAR + "\n", "000001": f"{CAR}\n{bad}\n"})
        one_frame_fails(tmp_path, "kitti", tmp_path / "kitti", tmp_path / "kitti/training/velodyne/000001.bin",
                        f"ValueError: {named}", ["000000"], capsys)
        return
    bad = {"kitti-scan-truncated": scan.tobytes()[:-3], "kitti-scan-empty": b"",
           "kitti-scan-nan": np.where(np.arange(4) == 0, np.nan, scan).astype("<f4").tobytes()}[kind]
    named = {"kitti-scan-truncated": "is not a whole number of 16-byte points", "kitti-scan-empty": "0 bytes",
             "kitti-scan-nan": "points holds NaN or infinite values"}[kind]
    write_kitti(tmp_path / "kitti", {"000000": scan.tobytes(), "000001": bad})
    one_frame_fails(tmp_path, "kitti", tmp_path / "kitti", tmp_path / "kitti/training/velodyne/000001.bin", named,
                    ["000000"], capsys)


def one_frame_fails(tmp_path: Path, dataset: str, root: Path, bad: Path, named: str, good: list[str],
                    capsys, **settings) -> None:
    """`occbench convert` of ``dataset`` at ``root`` (and other ``settings``) exits 1 listing the one failed
    frame: its file ``bad`` and the problem ``named``; the dataset is untouched, the ``good`` frames convert and
    the index lists them."""
    overlay = tmp_path / f"{dataset}.yaml"
    overlay.write_text(yaml.safe_dump({"datasets": {dataset: {"root": str(root), **settings}}}))
    before = snapshot(tmp_path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:  # the verb's failure list, as a rule's job ends
        main([*SMOKE_ARGS, "--params", str(overlay), "convert", "--dataset", dataset])
    assert str(stop.value).startswith(f"occbench convert: 1 frame(s) failed:\n  {bad}: "), str(stop.value)
    assert named in str(stop.value) and "Traceback" not in capsys.readouterr().err, str(stop.value)
    after = snapshot(tmp_path)
    assert {name: after[name] for name in before} == before  # the dataset untouched
    data = f"results/data/{dataset}"
    assert sorted(set(after) - set(before)) == sorted([*(f"{data}/frames/{frame_id}.npz" for frame_id in good),
                                                       f"{data}/frames/settings.json", f"{data}/index.json"])
    index = json.loads((tmp_path / data / "index.json").read_text())
    assert sorted(frame["id"] for frame in index["frames"]) == sorted(good)


REAL = ROOT / ".." / "shared" / "data" / "real"  # real samples in the datasets' own formats (SOURCES.md there)


def needs(what: str, present: bool) -> None:
    """Skip a case whose input is absent here; CI has ../shared and the devkit, so there it fails instead."""
    if not present:
        (pytest.fail if os.environ.get("CI") == "true" else pytest.skip)(f"{what} is absent")


def real_file(name: str) -> Path:
    path = REAL / name
    needs(f"the real sample {path.resolve()} (see ../shared/data/real/SOURCES.md)", path.is_file())
    return path


IDENTITY_ROW = "1 0 0 0 0 1 0 0 0 0 1 0\n"  # a 3x4 [R|t] of no rotation or move


def semantickitti_case(kind: str, tmp_path: Path, capsys) -> None:
    """Sequence 00 of two copies of the real SemanticKITTI scan (50 points) with its real labels; the second
    scan's .label file is truncated by one label, or holds raw class 77 (no SemanticKITTI class)."""
    scan = real_file("semantickitti_00_000000.bin").read_bytes()
    labels = np.fromfile(real_file("semantickitti_00_000000.label"), dtype="<u4")
    bad = labels[:-1] if kind == "semantickitti-label-truncated" else np.where(np.arange(len(labels)) % 7 == 3,
                                                                               (labels >> 16 << 16) | 77, labels)
    sequence = tmp_path / "semantickitti/sequences/00"
    for folder in ("velodyne", "labels"):
        (sequence / folder).mkdir(parents=True)
    for index, label in enumerate((labels, bad)):
        (sequence / f"velodyne/{index:06d}.bin").write_bytes(scan)
        label.astype("<u4").tofile(sequence / f"labels/{index:06d}.label")
    (sequence / "poses.txt").write_text(IDENTITY_ROW * 2)
    (sequence / "calib.txt").write_text("Tr: " + IDENTITY_ROW)
    named = (f"{sequence}/labels/000001.label: 196 bytes, but 000001.bin has 50 points, which need 200 (one uint32 "
             "label each)" if kind == "semantickitti-label-truncated" else
             f"{sequence}/labels/000001.label: label id(s) [77] are not in the mapping table")
    one_frame_fails(tmp_path, "semantickitti", tmp_path / "semantickitti", sequence / "velodyne/000001.bin",
                    named, ["00_000000"], capsys, train_sequences=["00"], val_sequences=[])


def nuscenes_case(kind: str, tmp_path: Path, capsys) -> None:
    """The nuScenes fixture tables (tests/nuscenes_fixture.py) around the real sweep, loaded by the real
    devkit: the lidarseg file of one keyframe loses 10 labels, or holds category index 200 (category.json
    has 32)."""
    import importlib.util

    needs("nuscenes-devkit (pip install --no-deps nuscenes-devkit==1.2.0)",
          importlib.util.find_spec("nuscenes") is not None)
    from nuscenes_fixture import build_nuscenes

    fixture = build_nuscenes(tmp_path / "nuscenes", real_file("nuscenes_LIDAR_TOP_1532402927647951.pcd.bin"))
    keyframe = fixture.keyframe("scene-0103", 1)
    labels = fixture.root / f"lidarseg/v1.0-mini/{keyframe.lidar_token}_lidarseg.bin"
    raw = np.fromfile(labels, dtype=np.uint8)
    if kind == "nuscenes-lidarseg-length":
        raw = raw[:-10]
        named = f"{labels}: {len(raw)} lidarseg labels for the {len(raw) + 10} points of "
    else:
        raw[::1000] = 200
        named = f"{labels}: label id(s) [200] are not in the mapping table"
    raw.tofile(labels)
    good = [k.frame_id for k in fixture.keyframes if k.scene in ("scene-0061", "scene-0103") and k is not keyframe]
    one_frame_fails(tmp_path, "nuscenes", fixture.root, keyframe.lidar_path, f"ValueError: {named}", good, capsys)


def frame_case(kind: str, world: Path, args: list[str], capsys) -> None:
    good = TRAIN_FRAME.read_bytes()
    try:
        named = bad_frame(kind, TRAIN_FRAME)
        before = snapshot(world)
        refused([*args, *FINETUNE_SCRATCH], capsys, *named)
        assert snapshot(world) == before  # no file written: no state, model or metrics of the run
    finally:
        TRAIN_FRAME.write_bytes(good)


def checkpoint_case(kind: str, world: Path, args: list[str], capsys) -> None:
    try:
        named = bad_checkpoint(kind, CHECKPOINT)
        before = snapshot(world)
        refused([*args, *FINETUNE], capsys, str(CHECKPOINT), *named)
        assert snapshot(world) == before  # no run folder, no metrics; the checkpoint and the dataset as they were
        assert not CHECKPOINT.with_name("ran").exists()  # the pickled code never ran
    finally:
        remove_run(CHECKPOINT.parent)


HUGE_LR = {"name": "adamw", "lr": 1e30, "weight_decay": 0.01}  # the first step's update overflows the next
PRETRAIN = ["pretrain", "--backbone", "small", "--dataset", "synthetic", "--method", "also", "--fraction", "1"]
SCRATCH_RUN = Path("results/finetune/segmentation/synthetic/small/scratch/labels_1/split_0/seed_0")
# (overlay on the tiny world, the verb, its run folder, what turns non-finite at epoch 1 step 0)
TRAINING = {
    "training-loss-nan-finetune": ({"finetune": {"segmentation": {"optimizer": HUGE_LR}}}, FINETUNE_SCRATCH,
                                   SCRATCH_RUN, "loss (nan)"),
    "training-loss-nan-pretrain": ({"pretrain": {"epochs": 4, "optimizer": HUGE_LR}}, PRETRAIN, CHECKPOINT.parent,
                                   "loss (nan)"),
    "training-gradient-nan": ({}, FINETUNE_SCRATCH, SCRATCH_RUN, "gradient norm (nan)"),
}


def non_finite_gradient_at(epoch: int, step: int, loss):
    """``loss`` plus sqrt(x - x) of the predictions at one step (the loop seeds torch per step): its value is
    unchanged, its gradient not finite, as a float32 overflow in a backward pass gives."""
    def patched(self, predictions, *rest):
        value, logs = loss(self, predictions, *rest)
        if torch.initial_seed() == step_seed(0, epoch, step):
            value = value + (predictions - predictions.detach()).sqrt().sum()
        return value, logs
    return patched


def training_case(kind: str, world: Path, args: list[str], capsys) -> None:
    """Stopped at the step, before its update: the state on disk is the one before it, and a rerun resumes
    from it and stops there again; no model, metrics or checkpoint."""
    overlay, verb, run, what = TRAINING[kind]
    params = world / f"{kind}.yaml"
    params.write_text(yaml.safe_dump(overlay))
    argv, state = [*args, "--params", str(params), *verb], run / STATE_FILE
    named = (f"{run}: non-finite {what} at epoch 1 step 0; training stopped and wrote no result, the last good "
             f"resume state (epoch 1 step 0) is kept at {state} (lower the learning rate or check the inputs)",)
    try:
        with pytest.MonkeyPatch.context() as patch:
            if kind == "training-gradient-nan":
                patch.setattr(SegmentationTask, "loss", non_finite_gradient_at(1, 0, SegmentationTask.loss))
            before = snapshot(world)
            refused(argv, capsys, *named)
            after = snapshot(world)
            assert {name: after[name] for name in before} == before
            assert sorted(set(after) - set(before)) == [str(run / name) for name in
                                                        ("curves/epochs.tsv", "curves/steps.tsv", STATE_FILE)]
            saved = torch.load(state, weights_only=True)
            assert saved["progress"]["epoch"] == 1 and saved["progress"]["step"] == 0
            assert all(value.isfinite().all() for value in saved["model"].values() if value.is_floating_point())
            assert f"occbench: resuming {state} at epoch 1 step 0" in refused(argv, capsys, *named)
    finally:
        remove_run(run)
        params.unlink()


def teacher_case(kind: str, world: Path, args: list[str], capsys) -> None:
    """OccFeat pinned to an image encoder (teacher.pt): a file other than the pinned one is refused before
    pre-training reads it; no run folder is made."""
    weights = world / "teacher.pt"
    save_image_encoder(weights, ImageEncoder((4, 8)), {})
    pinned = hashlib.sha256(weights.read_bytes()).hexdigest()
    if kind == "teacher-weights-other-sha256":
        save_image_encoder(weights, ImageEncoder((4, 16)), {})
    elif kind == "teacher-weights-truncated":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif kind == "teacher-weights-missing":
        weights.unlink()
    params = tiny_params()  # one file: an overlay cannot drop the self_supervised teacher
    params["pretrain"]["methods"]["occfeat"]["teacher"] = {"name": "mae_cnn", "weights": str(weights),
                                                           "sha256": pinned}
    (world / "pinned.yaml").write_text(yaml.safe_dump(params))
    found = weights.exists() and (hashlib.sha256(weights.read_bytes()).hexdigest(), weights.stat().st_size)
    named = (f"{world / 'pinned.yaml'}: pretrain.methods.occfeat.teacher.weights: {weights}: no such file (a pinned "
             "teacher must be there before the run: nothing is downloaded)",) if not found else (
        f"{weights}: SHA-256 is {found[0]} (of {found[1]} bytes), but pretrain.methods.occfeat.teacher pins {pinned}: "
        "not the pinned teacher (truncated, or another file)",)
    try:
        before = snapshot(world)
        refused(["--params", str(world / "pinned.yaml"), *PRETRAIN[:PRETRAIN.index("--method") + 1], "occfeat",
                 *PRETRAIN[PRETRAIN.index("--method") + 2:]], capsys, *named)
        assert snapshot(world) == before
    finally:
        weights.unlink(missing_ok=True)
        (world / "pinned.yaml").unlink()


def occbench_process(argv: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    """``python -m occbench ARGV`` in ``cwd``, a job of its own; its output goes to ``log``."""
    with log.open("wb") as output:
        return subprocess.Popen([sys.executable, "-m", "occbench", *argv], cwd=cwd, stdout=output, stderr=output,
                                env={**os.environ, "PYTHONPATH": str(ROOT / "src")})


def wait_for(condition, job: subprocess.Popen, log: Path, seconds: float = 300) -> None:
    """Poll ``condition`` until it holds; fail when ``job`` ends first or ``seconds`` pass."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert job.poll() is None, f"the job ended ({job.returncode}) first:\n{log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, f"waited {seconds} s:\n{log.read_text()[-2000:]}"
        time.sleep(0.05)


def stop(job: subprocess.Popen, signum: int = signal.SIGKILL) -> int:
    """Send ``signum`` unless the job has ended; its exit code (-N: killed by signal N)."""
    if job.poll() is None:
        job.send_signal(signum)
    return job.wait(timeout=300)


# 20 frames: a conversion long enough to be killed after its first few
MANY_FRAMES = {"datasets": {"synthetic": {"num_scenes": 10, "frames_per_scene": 2, "val_fraction": 0.5,
                                          "occupancy": None, "cameras": []}}}


def frame_files(folder: Path) -> dict[str, tuple[int, int]]:
    """Each frame file's (inode, mtime in ns): a frame rewritten, even atomically, changes both."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(folder.glob("*.npz"))}


def same_frame(one: Path, other: Path) -> bool:
    """The two frame files hold the same arrays."""
    with np.load(one) as a, np.load(other) as b:
        return sorted(a.files) == sorted(b.files) and all(a[k].tolist() == b[k].tolist() for k in a.files)


def same_frames(one: Path, other: Path) -> bool:
    names = sorted(p.name for p in one.iterdir())
    return names == sorted(p.name for p in other.iterdir()) and all(
        same_frame(one / name, other / name) for name in names if name.endswith(".npz"))


def convert_killed_case(tmp_path: Path, monkeypatch, capsys) -> None:
    """SIGKILL after 3 frames: the rerun takes over the dead job's lock, writes only the missing frames,
    removes the partial one, and ends with what an uninterrupted conversion writes."""
    overlay, log = tmp_path / "many.yaml", tmp_path / "convert.log"
    overlay.write_text(yaml.safe_dump(MANY_FRAMES))
    argv = [*SMOKE_ARGS, "--params", str(overlay), "convert", "--dataset", "synthetic"]
    data = tmp_path / "killed/results/data/synthetic"
    data.parent.mkdir(parents=True)
    job = occbench_process(argv, tmp_path / "killed", log)
    try:
        wait_for(lambda: len(list((data / "frames").glob("*.npz"))) >= 3, job, log)
    finally:
        stop(job)
    assert job.returncode == -signal.SIGKILL
    finished = frame_files(data / "frames")
    assert 3 <= len(finished) < 20 and (data / LOCK_FILE).exists() and not (data / "index.json").exists()
    monkeypatch.chdir(tmp_path / "killed")
    capsys.readouterr()
    assert main(argv) == 0
    assert (f"occbench: taking over {Path('results/data/synthetic') / LOCK_FILE} from occbench convert "
            f"(pid {job.pid} on {socket.gethostname()} since ") in capsys.readouterr().err
    assert {name: stamp for name, stamp in frame_files(data / "frames").items() if name in finished} == finished
    (tmp_path / "whole").mkdir()
    monkeypatch.chdir(tmp_path / "whole")
    assert main(argv) == 0
    whole = tmp_path / "whole/results/data/synthetic"
    assert sorted(p.name for p in data.iterdir()) == sorted(p.name for p in whole.iterdir()) == ["frames",
                                                                                                "index.json"]
    assert (data / "index.json").read_text() == (whole / "index.json").read_text()
    assert same_frames(data / "frames", whole / "frames")


def second_writer_case(world: Path, args: list[str], tmp_path: Path, capsys) -> None:
    """A second fine-tuning of a run that is training is refused before it reads or writes anything; the first
    trains on, and its SIGTERM still saves its state and releases the lock."""
    overlay, log = tmp_path / "long.yaml", tmp_path / "finetune.log"
    overlay.write_text(yaml.safe_dump({"finetune": {"segmentation": {
        "epochs": [{"up_to_label_fraction": 1.0, "epochs": 1000}]}}}))
    argv, lock = [*args, "--params", str(overlay), *FINETUNE_SCRATCH], SCRATCH_RUN / LOCK_FILE
    job = occbench_process(argv, world, log)
    try:
        wait_for(lambda: (SCRATCH_RUN / "curves/steps.tsv").exists(), job, log)  # training, under its lock
        refused(argv, capsys, f"{SCRATCH_RUN}: occbench finetune (pid {job.pid} on {socket.gethostname()} since ",
                f") is writing this folder (lock {lock}); a second occbench finetune of it is refused: wait for "
                "the first to end")
        assert job.poll() is None and f"(pid {job.pid} " in lock.read_text()
        assert stop(job, signal.SIGTERM) == 128 + signal.SIGTERM
        assert (SCRATCH_RUN / STATE_FILE).exists() and not lock.exists() and not (SCRATCH_RUN / "metrics.json").exists()
    finally:
        stop(job)
        remove_run(SCRATCH_RUN)


def second_workflow_case(tmp_path: Path) -> None:
    """Snakemake's own lock refuses a workflow whose outputs a running one holds, before any job starts; the
    lock is the one a running workflow writes (.snakemake/locks/N.output.lock, one output a line)."""
    from conftest import copy_project

    project = copy_project(tmp_path / "project")
    (project / ".snakemake/locks").mkdir(parents=True)
    (project / ".snakemake/locks/0.output.lock").write_text(f"{index_path('synthetic')}\n")
    before = snapshot(project)
    result = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "--cores", "1",
                             str(index_path("synthetic"))], cwd=project, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert (f"Error: Directory cannot be locked. Please make sure that no other Snakemake process is trying to "
            f"create the same files in the following directory:\n{project}\n") in result.stdout + result.stderr
    after = snapshot(project)
    assert {name: after.get(name) for name in before} == before  # the other workflow's lock included
    assert not [name for name in set(after) - set(before) if not name.startswith(".snakemake/")]


# The Waymo conversion runs in its own environment (make waymo-env); CI builds it, so there a missing one fails.
WAYMO_PYTHON = Path(os.environ.get("OCCBENCH_WAYMO_PYTHON", ROOT / ".venv-waymo" / "bin" / "python"))


def in_waymo_env(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(WAYMO_PYTHON), *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src"), "TF_CPP_MIN_LOG_LEVEL": "2"})


@pytest.fixture(scope="module")
def waymo_records(tmp_path_factory) -> dict[str, Path]:
    """tests/waymo_fixture.py's records, built from the real Waymo frame: a truncated and a corrupt segment,
    each of two records whose first is good."""
    source = real_file("waymo_val_fixture.tfrecord")
    needs(f"the Waymo environment {WAYMO_PYTHON} (make waymo-env, or OCCBENCH_WAYMO_PYTHON)", WAYMO_PYTHON.exists())
    base = tmp_path_factory.mktemp("waymo")
    built = in_waymo_env([str(ROOT / "tests" / "waymo_fixture.py"), str(source), str(base)], base)
    assert built.returncode == 0, built.stderr[-4000:]
    files = json.loads((base / "expected.json").read_text())["files"]
    return {key: base / path for key, path in files.items()}


def waymo_case(kind: str, tmp_path: Path, records: dict[str, Path]) -> None:
    """`occbench convert` in the Waymo environment of a root whose one segment is damaged in its record 1:
    exit 1 naming the file, the record and the damage; record 0 converts and the index lists it alone."""
    damaged = records[kind.rsplit("-", 1)[1]]
    segment = tmp_path / "waymo" / damaged.parent.name / damaged.name
    segment.parent.mkdir(parents=True)
    shutil.copyfile(damaged, segment)
    overlay = tmp_path / "waymo.yaml"
    overlay.write_text(yaml.safe_dump({"datasets": {"waymo": {"root": str(tmp_path / "waymo")}}}))
    before = snapshot(tmp_path)
    done = in_waymo_env(["-m", "occbench", *SMOKE_ARGS, "--params", str(overlay), "convert", "--dataset", "waymo"],
                        tmp_path)
    why = (("): its data fails the CRC check: the file is corrupt",) if kind == "waymo-segment-corrupt" else
           (") needs ", " bytes of data but the file ends at byte ", ": it is truncated"))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-4000:]
    assert f"occbench convert: 1 frame(s) failed:\n  {segment}#record1: ValueError: {segment}: record 1 (byte " \
        in done.stderr and all(part in done.stderr for part in why), done.stderr[-4000:]
    after = snapshot(tmp_path)
    assert {name: after[name] for name in before} == before  # the dataset untouched
    assert sorted(set(after) - set(before)) == [f"results/data/waymo/frames/{segment.stem}_0000.npz",
                                                "results/data/waymo/frames/settings.json",
                                                "results/data/waymo/index.json"]
    index = json.loads((tmp_path / "results/data/waymo/index.json").read_text())
    assert [frame["id"] for frame in index["frames"]] == [f"{segment.stem}_0000"]


def lock_unsupported_case(tmp_path: Path, monkeypatch, capsys) -> None:
    """A results folder on a file system whose lockf answers ENOLCK (NFS without its lock manager; FUSE and
    SMB mounts answer ENOLCK, EOPNOTSUPP or ENOSYS): the verb refuses to start, naming the folder and what to
    do, and leaves no lock file or folder. Simulated in-process: fcntl.lockf is patched to raise
    OSError(ENOLCK), as the kernel's lockf does there; the refusal and the disk are checked for real."""
    import fcntl

    def no_locks(fd, cmd, *args):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(fcntl, "lockf", no_locks)
    before = snapshot(tmp_path)
    folder = Path("results/data/synthetic")
    refused([*SMOKE_ARGS, "convert", "--dataset", "synthetic"], capsys,
            f"occbench convert: error: {folder}: cannot lock {folder / LOCK_FILE}: its file system does not support "
            f"POSIX locks (lockf: ENOLCK, {os.strerror(errno.ENOLCK)}), so occbench convert cannot keep a second "
            "writer out and does not start: put results/ on a local file system, or on an NFS mount whose lock "
            "manager runs (rpc.statd, lockd; not mounted with nolock)")
    assert snapshot(tmp_path) == before and not Path("results").exists()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """tmp_path/results as a tmpfs of 16 MB: a real file system that fills up, unmounted after the test.
    Mounting needs root (CI runs as root: there a skip would hide that the disk-full cases never ran)."""
    results = tmp_path / "results"
    results.mkdir()
    why = None
    if os.geteuid() != 0:
        why = "the disk-full cases mount a tmpfs as the results folder, which needs root"
    else:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "occbench-test", str(results)],
                                 capture_output=True, text=True, timeout=60)
        if mounted.returncode:
            why = f"mount -t tmpfs failed ({mounted.returncode}): {mounted.stderr.strip()}"
    if why and os.environ.get("CI") == "true":
        pytest.fail(why)
    if why:
        pytest.skip(why)
    try:
        yield results
    finally:
        if subprocess.run(["umount", str(results)], timeout=60).returncode:  # busy: a failed case's traceback
            subprocess.run(["umount", "--lazy", str(results)], check=True, timeout=60)  # holds a file open


def fill_disk(folder: Path, leave: int = 0) -> Path:
    """Write zeros to ``folder``/filler until its file system has ``leave`` bytes free or fewer, as another
    writer on the same disk would fill it; the filler, to remove when space is freed."""
    filler = folder / "filler"
    with open(filler, "ab", buffering=0) as handle:
        while (free := shutil.disk_usage(folder).free) > leave:
            try:
                handle.write(bytes(min(free - leave, 1 << 20)))
            except OSError as err:
                assert err.errno == errno.ENOSPC, err
                break
    assert shutil.disk_usage(folder).free <= leave
    return filler


def temporaries(root: Path) -> list[str]:
    """atomic_path's temporary files under ``root``: a partial file a failed write left."""
    return sorted(str(p) for p in root.rglob(".*.tmp"))


def disk_full_at_start_case(tmp_path: Path, disk: Path, monkeypatch, capsys) -> None:
    """A results folder already full: the verb's first write, its lock file's holder line, is refused naming
    the lock file; it leaves no lock file and no folder, and once space is freed the rerun converts."""
    monkeypatch.chdir(tmp_path)
    filler = fill_disk(disk)
    argv = [*SMOKE_ARGS, "--params", str(tmp_path / "tiny.yaml"), "convert", "--dataset", "synthetic"]
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY_WORLD))
    before = snapshot(tmp_path)
    data = Path("results/data/synthetic")
    refused(argv, capsys, f"occbench convert: error: {data / LOCK_FILE}: cannot write it: no space left on device "
                          f"(ENOSPC) on the file system of {data}; no partial file is left: free space there and rerun")
    assert snapshot(tmp_path) == before and sorted(p.name for p in disk.iterdir()) == ["filler"]
    filler.unlink()  # space freed
    assert main(argv) == 0 and sorted(p.name for p in data.iterdir()) == ["frames", "index.json"]


def disk_full_frame_case(tmp_path: Path, disk: Path, monkeypatch, capsys) -> None:
    """Conversion into a results folder with room for a few frames: the first frame that finds the disk full
    stops it, naming that frame's file; the frames written are whole and kept, no index is written, and once
    space is freed the rerun writes only the missing frames and ends as an uninterrupted conversion."""
    overlay = tmp_path / "ten.yaml"
    overlay.write_text(yaml.safe_dump(merge(MANY_FRAMES, {"datasets": {"synthetic": {"num_scenes": 5}}})))
    argv = [*SMOKE_ARGS, "--params", str(overlay), "convert", "--dataset", "synthetic"]
    (tmp_path / "whole").mkdir()
    monkeypatch.chdir(tmp_path / "whole")
    assert main(argv) == 0  # the reference, on the ordinary disk: 10 frames of about 60 kB
    whole = tmp_path / "whole/results/data/synthetic"
    monkeypatch.chdir(tmp_path)
    filler = fill_disk(disk, leave=250_000)  # room for 3 or 4 frames
    data = Path("results/data/synthetic")
    err = refused(argv, capsys, ": cannot write it: no space left on device (ENOSPC) on the file system of "
                  f"{data / 'frames'}; no partial file is left: free space there and rerun")
    failed = re.search(r"error: (\S+\.npz): cannot write it", err)
    assert failed and Path(failed[1]).parent == data / "frames" and not Path(failed[1]).exists(), err
    finished = frame_files(data / "frames")
    assert 2 <= len(finished) < 10 and temporaries(disk) == [], (finished, temporaries(disk))
    assert sorted(p.name for p in data.iterdir()) == ["frames"]  # no index, the lock released
    assert all(same_frame(data / "frames" / name, whole / "frames" / name) for name in finished)
    filler.unlink()  # space freed
    assert main(argv) == 0
    assert {name: stamp for name, stamp in frame_files(data / "frames").items() if name in finished} == finished
    assert sorted(p.name for p in data.iterdir()) == ["frames", "index.json"]
    assert (data / "index.json").read_text() == (whole / "index.json").read_text()
    assert same_frames(data / "frames", whole / "frames")


# Four one-frame scenes, two of them for validation (a bootstrap interval of the mIoU); one epoch of training.
DISK_WORLD = {"datasets": {"synthetic": {"num_scenes": 4, "val_fraction": 0.5}},
              "pretrain": {"epochs": 1},
              "finetune": {"segmentation": {"epochs": [{"up_to_label_fraction": 1.0, "epochs": 1}]}}}


def filling_before(write, name: str, disk: Path, filled: list[Path]):
    """``write`` (save_checkpoint, write_json) that first fills ``disk`` when it writes a file ``name``: the
    disk fills up just then (as another writer on it could make it); the ENOSPC is the kernel's."""
    def patched(*args, **kwargs):
        if Path(args[0]).name == name and not filled:
            filled.append(fill_disk(disk))
        return write(*args, **kwargs)
    return patched


def disk_full_run_case(kind: str, tmp_path: Path, disk: Path, monkeypatch, capsys) -> None:
    """Pre-training (fine-tuning) whose disk fills up as it writes its checkpoint (metrics file): refused
    naming that file, which is not left partial or at all; the resume state and every file written before
    are kept, and once space is freed the rerun resumes at the end of training and writes the rest."""
    import occbench.pretrain.job as pretrain_job
    import occbench.tasks.job as finetune_job

    monkeypatch.chdir(tmp_path)
    (tmp_path / "disk.yaml").write_text(yaml.safe_dump(merge(TINY_WORLD, DISK_WORLD)))
    args = [*SMOKE_ARGS, "--params", str(tmp_path / "disk.yaml")]
    assert main([*args, "convert", "--dataset", "synthetic"]) == 0
    subset = ["pretrain", "--fraction", "1"] if kind == "disk-full-checkpoint" else [
        "labels", "--fraction", "1", "--split-seed", "0"]
    assert main([*args, "split", "--dataset", "synthetic", "--subset", *subset]) == 0
    filled: list[Path] = []
    if kind == "disk-full-checkpoint":
        verb, run, target, kept = PRETRAIN, CHECKPOINT.parent, CHECKPOINT, ["curves", STATE_FILE]
        monkeypatch.setattr(pretrain_job, "save_checkpoint",
                            filling_before(pretrain_job.save_checkpoint, CHECKPOINT.name, disk, filled))
    else:
        verb, run, target = FINETUNE_SCRATCH, SCRATCH_RUN, SCRATCH_RUN / "metrics.json"
        kept = ["curves", "model.pt", "run_meta.json", STATE_FILE]  # written before the metrics
        monkeypatch.setattr(finetune_job, "write_json",
                            filling_before(finetune_job.write_json, target.name, disk, filled))
    refused([*args, *verb], capsys, f"error: {target}: cannot write it: no space left on device (ENOSPC) on the "
                                    f"file system of {run}; no partial file is left: free space there and rerun")
    assert filled and temporaries(disk) == [] and not target.exists()
    assert sorted(p.name for p in run.iterdir()) == kept  # the lock released
    epochs = torch.load(run / STATE_FILE, weights_only=True)["progress"]["epoch"]
    assert epochs == 1  # the state of the training's end
    filled[0].unlink()  # space freed
    capsys.readouterr()
    assert main([*args, *verb]) == 0
    assert f"occbench: resuming {run / STATE_FILE} at epoch 1 step 0" in capsys.readouterr().err
    assert not (run / STATE_FILE).exists() and temporaries(disk) == []
    if kind == "disk-full-checkpoint":
        from occbench.models.checkpoint import read_checkpoint
        assert read_checkpoint(target)["meta"]["backbone_spec"] == tiny_params()["backbones"]["small"]
        assert (run / "run_meta.json").exists()
    else:
        assert isinstance(json.loads(target.read_text()), dict)


# a Snakemake run: its start alone takes seconds; TensorFlow's import and the Waymo fixture take more
SLOW = {"interrupted-second-workflow", "waymo-segment-truncated", "waymo-segment-corrupt"}


@pytest.mark.parametrize(("kind", "text"), [pytest.param(*row, id=row[0], marks=[pytest.mark.slow] * (row[0] in SLOW))
                                            for row in CATALOGUE])
def test_fault_is_refused_naming_file_and_problem(kind, text, request, tmp_path, monkeypatch, capsys):
    family = kind.split("-")[0]
    if kind == "lock-unsupported":
        lock_unsupported_case(tmp_path, monkeypatch, capsys)
    elif kind == "disk-full-at-start":
        disk_full_at_start_case(tmp_path, request.getfixturevalue("small_disk"), monkeypatch, capsys)
    elif kind == "disk-full-frame":
        disk_full_frame_case(tmp_path, request.getfixturevalue("small_disk"), monkeypatch, capsys)
    elif family == "waymo":
        waymo_case(kind, tmp_path, request.getfixturevalue("waymo_records"))
    elif family == "disk":
        disk_full_run_case(kind, tmp_path, request.getfixturevalue("small_disk"), monkeypatch, capsys)
    elif kind == "interrupted-convert-killed":
        convert_killed_case(tmp_path, monkeypatch, capsys)
    elif kind == "interrupted-second-workflow":
        second_workflow_case(tmp_path)
    elif kind == "interrupted-second-writer":
        world = request.getfixturevalue("world")
        monkeypatch.chdir(world[0])
        second_writer_case(*world, tmp_path, capsys)
    elif family in ("params", "dataset", "kitti", "semantickitti", "nuscenes"):
        monkeypatch.chdir(tmp_path)
        {"params": params_case, "dataset": dataset_case, "kitti": kitti_case, "semantickitti": semantickitti_case,
         "nuscenes": nuscenes_case}[family](kind, tmp_path, capsys)
    else:
        root, args = request.getfixturevalue("world")
        monkeypatch.chdir(root)
        {"frame": frame_case, "checkpoint": checkpoint_case, "training": training_case,
         "teacher": teacher_case}[family](
            kind, root, args, capsys)


def test_the_pickled_payload_is_live(tmp_path):
    """The pickled-code case proves something only if unpickling the file without weights_only runs it."""
    marker = tmp_path / "ran"
    torch.save({"payload": RunsCode(marker)}, tmp_path / "c.pt")
    torch.load(tmp_path / "c.pt", weights_only=False)
    assert marker.exists()


def readme_table() -> list[str]:
    """The first cell of each row of the README's table under '## Bad input and faults'."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Bad input and faults\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    assert rows[0].lower().split("|")[1:4] == [" input ", " what occbench says ", " what is kept "], rows[0]
    assert re.fullmatch(r"\|[-| ]+\|", rows[1])
    return [row.split("|")[1].strip() for row in rows[2:]]


def test_the_readme_table_is_the_catalogue():
    assert readme_table() == [text for _, text in CATALOGUE]
