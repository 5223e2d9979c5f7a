"""Bad input and faults, through the real CLI: each kind is refused with a message naming the file and
the problem, exit code 2 and no traceback, and nothing on disk added or changed.

CATALOGUE is the README's table "Bad input and faults", row for row: a row without a test here, or a
test without a row, fails ``test_the_readme_table_is_the_catalogue``.
"""

from __future__ import annotations

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
    ("kitti-scan-truncated", "KITTI scan (.bin): truncated"),
    ("kitti-scan-empty", "KITTI scan (.bin): 0 bytes"),
    ("kitti-scan-nan", "KITTI scan (.bin): NaN or infinite coordinates"),
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


def dataset_case(kind: str, tmp_path: Path, capsys) -> None:
    kitti = tmp_path / ("absent" if kind == "dataset-root-missing" else "empty")
    earlier = tmp_path / "results/data/kitti/frames"
    if kind == "dataset-root-empty":
        kitti.mkdir()
        earlier.mkdir(parents=True)  # frames of other settings: a conversion that starts removes them
        (earlier / "settings.json").write_text('{"root": "elsewhere"}')
        (earlier / "000000.npz").write_bytes(b"an earlier frame")
    overlay = tmp_path / "kitti.yaml"
    overlay.write_text(yaml.safe_dump({"datasets": {"kitti": {"root": str(kitti)}}}))
    before = snapshot(tmp_path)
    named = (f"datasets.kitti.root: {kitti}: no such directory (expected the kitti dataset there"
             if kind == "dataset-root-missing" else f"{kitti}/ImageSets/train.txt: the train split file is missing")
    refused([*SMOKE_ARGS, "--params", str(overlay), "convert", "--dataset", "kitti"], capsys, named)
    assert snapshot(tmp_path) == before and earlier.exists() == (kind == "dataset-root-empty")


IDENTITY_CALIB = "R0_rect: 1 0 0 0 1 0 0 0 1\nTr_velo_to_cam: 1 0 0 0 0 1 0 0 0 0 1 0\n"


def write_kitti(root: Path, scans: dict[str, bytes]) -> None:
    """A KITTI object tree of ``scans`` (frame id -> .bin bytes), no objects, all in the train split."""
    for folder in ("velodyne", "label_2", "calib"):
        (root / "training" / folder).mkdir(parents=True)
    for frame_id, scan in scans.items():
        (root / "training" / "velodyne" / f"{frame_id}.bin").write_bytes(scan)
        (root / "training" / "label_2" / f"{frame_id}.txt").write_text("")
        (root / "training" / "calib" / f"{frame_id}.txt").write_text(IDENTITY_CALIB)
    (root / "ImageSets").mkdir()
    (root / "ImageSets" / "train.txt").write_text("\n".join(scans) + "\n")
    (root / "ImageSets" / "val.txt").write_text("")


def kitti_case(kind: str, tmp_path: Path, capsys) -> None:
    """One bad scan among good ones: it is named, the others convert, the index lists only them."""
    scan = np.random.default_rng(0).uniform(-20, 20, (300, 4)).astype("<f4")
    scan[:, 3] = 0.5
    bad = {"kitti-scan-truncated": scan.tobytes()[:-3], "kitti-scan-empty": b"",
           "kitti-scan-nan": np.where(np.arange(4) == 0, np.nan, scan).astype("<f4").tobytes()}[kind]
    named = {"kitti-scan-truncated": "is not a whole number of 16-byte points", "kitti-scan-empty": "0 bytes",
             "kitti-scan-nan": "points holds NaN or infinite values"}[kind]
    write_kitti(tmp_path / "kitti", {"000000": scan.tobytes(), "000001": bad})
    overlay = tmp_path / "kitti.yaml"
    overlay.write_text(yaml.safe_dump({"datasets": {"kitti": {"root": str(tmp_path / "kitti")}}}))
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as stop:  # the verb's failure list, as a rule's job ends
        main([*SMOKE_ARGS, "--params", str(overlay), "convert", "--dataset", "kitti"])
    assert f"occbench convert: 1 frame(s) failed:\n  {tmp_path}/kitti/training/velodyne/000001.bin: " in str(stop.value)
    assert named in str(stop.value) and "Traceback" not in capsys.readouterr().err
    after = snapshot(tmp_path)
    assert {name: after[name] for name in before} == before  # the dataset untouched
    assert sorted(set(after) - set(before)) == ["results/data/kitti/frames/000000.npz",
                                                "results/data/kitti/frames/settings.json",
                                                "results/data/kitti/index.json"]
    index = json.loads((tmp_path / "results/data/kitti/index.json").read_text())
    assert [frame["id"] for frame in index["frames"]] == ["000000"]


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


def same_frames(one: Path, other: Path) -> bool:
    def arrays(path: Path) -> dict:
        with np.load(path) as archive:
            return dict(archive)
    names = sorted(p.name for p in one.iterdir())
    return names == sorted(p.name for p in other.iterdir()) and all(
        {key: value.tolist() for key, value in arrays(one / name).items()}
        == {key: value.tolist() for key, value in arrays(other / name).items()}
        for name in names if name.endswith(".npz"))


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


SLOW = {"interrupted-second-workflow"}  # a Snakemake run: its start alone takes seconds


@pytest.mark.parametrize(("kind", "text"), [pytest.param(*row, id=row[0], marks=[pytest.mark.slow] * (row[0] in SLOW))
                                            for row in CATALOGUE])
def test_fault_is_refused_naming_file_and_problem(kind, text, world, tmp_path, monkeypatch, capsys):
    family = kind.split("-")[0]
    if kind == "interrupted-convert-killed":
        convert_killed_case(tmp_path, monkeypatch, capsys)
    elif kind == "interrupted-second-workflow":
        second_workflow_case(tmp_path)
    elif kind == "interrupted-second-writer":
        monkeypatch.chdir(world[0])
        second_writer_case(*world, tmp_path, capsys)
    elif family in ("params", "dataset", "kitti"):
        monkeypatch.chdir(tmp_path)
        {"params": params_case, "dataset": dataset_case, "kitti": kitti_case}[family](kind, tmp_path, capsys)
    else:
        root, args = world
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
