"""The Waymo v1 converter, run in the Waymo environment on records built from a real frame.

tests/waymo_fixture.py (in the Waymo environment) gives the real fixture frame
range images cast into a known scene; the converter then runs there too, in a
subprocess, and the frames it writes are checked here, in the main environment,
against what the fixture says it put in (expected.json).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from occbench.data.converters.waymo import track_id
from occbench.data.dataset import FrameIndex
from occbench.data.frame import occupancy_grid
from occbench.data.taxonomy import CLASS_ID, EMPTY_INDEX, IGNORE_INDEX

ROOT = Path(__file__).resolve().parents[2]
REAL = ROOT / ".." / "shared" / "data" / "real"
SOURCE = REAL / "waymo_val_fixture.tfrecord"
WAYMO_PYTHON = Path(os.environ.get("OCCBENCH_WAYMO_PYTHON", ROOT / ".venv-waymo" / "bin" / "python"))
needs_real = pytest.mark.skipif(not SOURCE.exists(), reason=f"real LiDAR test files are not at {REAL.resolve()}")
# CI builds the environment (make waymo-env): there a missing one fails instead of skipping.
needs_env = pytest.mark.skipif(
    not WAYMO_PYTHON.exists() and os.environ.get("CI") != "true",
    reason=f"no Waymo environment at {WAYMO_PYTHON}: build it with `make waymo-env`, "
           "or point OCCBENCH_WAYMO_PYTHON at its python")

# What the fixture's surfaces and labels must become, spelled out here rather than read from taxonomy.
SEGMENTED = {"ground": CLASS_ID["road"], "TYPE_VEHICLE": CLASS_ID["car"], "TYPE_SIGN": CLASS_ID["pole"]}
BOX_CLASS = {"TYPE_VEHICLE": CLASS_ID["car"], "TYPE_SIGN": None}

# Runs in the Waymo environment. The dataset converted with two workers comes
# first: forked workers hang once the parent process has run TensorFlow ops.
CONVERT = """
import dataclasses, json, sys
from occbench.data.convert import run_conversion
from occbench.data.converters.waymo import WaymoConverter
report = {}
for name, settings, workers in json.loads(sys.argv[1]):
    converter = WaymoConverter(settings)
    report[name] = {"sources": [dataclasses.asdict(s) for s in converter.sources()],
                    "failures": run_conversion(name, converter, settings, workers)}
print(json.dumps(report))
"""


def run_waymo(args: list[str], cwd: Path) -> str:
    done = subprocess.run([str(WAYMO_PYTHON), *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src"), "TF_CPP_MIN_LOG_LEVEL": "2"})
    if done.returncode:
        pytest.fail(f"{' '.join(args[:2])} failed in the Waymo environment:\n{done.stderr[-4000:]}")
    return done.stdout


# The settings of params.yaml's waymo dataset: the top LiDAR, first return.
TOP_FIRST = {"kind": "waymo", "lasers": ["TOP"], "return_index": 1, "occupancy": None}
# Wide enough for the fixture's vehicle, 70 m ahead; 1 m voxels keep it small.
OCCUPANCY = {"range": [-80.0, -80.0, -4.0, 80.0, 80.0, 4.0], "voxel_size": [1.0, 1.0, 1.0], "frames_per_block": 200}


@pytest.fixture(scope="module")
def waymo(tmp_path_factory):
    """The fixture records and four conversions of them: good, damaged, all lasers, second return."""
    base = tmp_path_factory.mktemp("waymo")
    records = base / "records"
    run_waymo([str(ROOT / "tests" / "waymo_fixture.py"), str(SOURCE), str(records)], base)
    expected = json.loads((records / "expected.json").read_text())
    datasets = [
        ["damaged", {**TOP_FIRST, "root": str(records / "damaged")}, 2],
        ["good", {**TOP_FIRST, "root": str(records / "good")}, 1],
        ["all", {**TOP_FIRST, "root": str(records / "good"), "lasers": ["ALL"]}, 1],
        ["second", {**TOP_FIRST, "root": str(records / "good"), "return_index": 2}, 1],
        ["occupancy", {**TOP_FIRST, "root": str(records / "good"), "occupancy": OCCUPANCY}, 1],
    ]
    report = json.loads(run_waymo(["-c", CONVERT, json.dumps(datasets)], base).splitlines()[-1])
    indexes = {name: FrameIndex(base / "results" / "data" / name / "index.json") for name, _, _ in datasets}
    return {"records": records, "expected": expected, "report": report, "indexes": indexes}


def frames(waymo, dataset: str):
    index = waymo["indexes"][dataset]
    return [index.load(frame_id) for frame_id in index.ids("val")]


def inside(points: np.ndarray, box, margin: float) -> np.ndarray:
    """Whether each point lies in a Waymo box (x, y, z, length, width, height, heading) grown by ``margin``."""
    x, y, z, length, width, height, heading = box
    c, s = math.cos(heading), math.sin(heading)
    local = points - [x, y, z]
    along = np.stack([c * local[:, 0] + s * local[:, 1], -s * local[:, 0] + c * local[:, 1], local[:, 2]], axis=1)
    return (np.abs(along) <= np.array([length, width, height]) / 2 + margin).all(axis=1)


def surface_masks(frame, expected) -> dict[str, np.ndarray]:
    """Which points came from which kind of surface, told apart by their intensity tanh(raw)."""
    return {kind: np.abs(frame.intensity - math.tanh(raw)) < 1e-6 for kind, raw in expected["raw_intensity"].items()}


def check_on_scene(frame, expected, frame_expected, laser_counts: dict) -> None:
    """Every point lies on the surface its intensity names: the ground plane or a label box."""
    masks = surface_masks(frame, expected)
    assert sum(mask.sum() for mask in masks.values()) == frame.num_points  # no other intensity
    for kind, mask in masks.items():
        assert mask.sum() == sum(counts[kind] for counts in laser_counts.values()), kind
    ground = frame.points[masks["ground"]]
    np.testing.assert_allclose(ground[:, 2], expected["ground_z"], atol=0.01)
    for kind in ("TYPE_VEHICLE", "TYPE_SIGN"):
        boxes = [label["box"] for label in frame_expected["labels"] if label["type"] == kind]
        hit = np.zeros(masks[kind].sum(), dtype=bool)
        for box in boxes:
            hit |= inside(frame.points[masks[kind]], box, margin=0.02)
        assert hit.all(), f"{(~hit).sum()} {kind} points outside every {kind} box"


@pytest.mark.parametrize("wrong", [{"lasers": ["TOP", "MIDDLE"]}, {"lasers": []}, {"return_index": 3}])
def test_bad_settings_are_named(wrong):
    from occbench.data.converters.waymo import WaymoConverter

    with pytest.raises(ValueError, match=next(iter(wrong))):
        WaymoConverter({**TOP_FIRST, "root": "waymo", **wrong})


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is not None, reason="tensorflow is installed here")
def test_missing_tools_name_the_waymo_environment():
    from occbench.data.converters.waymo import WaymoConverter

    with pytest.raises(ImportError, match=r"\.venv-waymo.*waymo-open-dataset-tf-2-12-0==1\.6\.7"):
        WaymoConverter({**TOP_FIRST, "root": "waymo"})


@needs_real
@needs_env
def test_sources_list_each_record_and_each_damage(waymo):
    records, context = waymo["records"], waymo["expected"]["context_name"]
    files = {key: records / path for key, path in waymo["expected"]["files"].items()}
    good = waymo["report"]["good"]["sources"]
    stem = files["good"].stem
    assert good == [{"frame_id": f"{stem}_{n:04d}", "scene": stem, "split": "val",
                     "location": f"{files['good']}#record{n}"} for n in range(2)]
    damaged = {(s["frame_id"], s["split"], s["location"]) for s in waymo["report"]["damaged"]["sources"]}
    assert damaged == {
        (f"{files[key].stem}_{n:04d}", split, f"{files[key]}#record{n}")
        for key, split in (("corrupt", "val"), ("truncated", "train")) for n in range(2)
    }
    assert context in stem


@needs_real
@needs_env
def test_damaged_records_fail_by_name_and_the_others_convert(waymo):
    files = {key: waymo["records"] / path for key, path in waymo["expected"]["files"].items()}
    failures = waymo["report"]["damaged"]["failures"]
    assert len(failures) == 2
    truncated, corrupt = sorted(failures)  # training/ before validation/
    assert corrupt.startswith(f"{files['corrupt']}#record1: ValueError") and "CRC" in corrupt
    assert truncated.startswith(f"{files['truncated']}#record1: ValueError") and "truncated" in truncated
    index = waymo["indexes"]["damaged"]
    assert sorted(index.frames) == sorted(f"{files[key].stem}_0000" for key in ("corrupt", "truncated"))
    for frame_id in index.frames:
        assert index.load(frame_id).num_points == sum(waymo["expected"]["frames"][0]["points"]["1"]["TOP"].values())
    assert waymo["report"]["good"]["failures"] == []


@needs_real
@needs_env
def test_top_points_lie_on_the_cast_scene(waymo):
    expected = waymo["expected"]
    converted = frames(waymo, "good")
    assert len(converted) == 2
    for frame, frame_expected in zip(converted, expected["frames"]):
        top = frame_expected["points"]["1"]["TOP"]
        assert frame.num_points == sum(top.values())
        check_on_scene(frame, expected, frame_expected, {"TOP": top})
        assert frame.intensity.min() >= 0 and frame.intensity.max() <= 1


@needs_real
@needs_env
def test_rings_count_up_from_the_lowest_beam(waymo):
    expected = waymo["expected"]
    inclination = np.degrees(expected["top_inclinations"])  # lowest beam first
    speed, sweep = expected["ego"]["speed"], expected["ego"]["sweep"]
    for frame in frames(waymo, "good"):
        assert frame.ring.min() == 0 and frame.ring.max() == 63
        ground = surface_masks(frame, expected)["ground"]
        points, ring = frame.points[ground].astype(np.float64), frame.ring[ground]
        # Each point's elevation seen from where the sensor was when it fired (the sweep drives forward).
        origin = frame.sensor_origin.astype(np.float64)
        azimuth = np.arctan2(points[:, 1] - origin[1], points[:, 0] - origin[0])
        fired = origin + np.outer(speed * sweep * (1 - azimuth / np.pi) / 2, [1.0, 0.0, 0.0])
        offset = points - fired
        elevation = np.degrees(np.arctan2(offset[:, 2], np.hypot(offset[:, 0], offset[:, 1])))
        assert np.abs(elevation - inclination[ring]).max() < 0.2  # the extrinsic tilts by ~0.1 deg
        assert len(np.unique(ring)) > 30


@needs_real
@needs_env
def test_segmentation_labels_map_when_the_frame_has_them(waymo):
    expected = waymo["expected"]
    unlabelled, labelled = frames(waymo, "good")
    assert not expected["frames"][0]["segmentation"] and expected["frames"][1]["segmentation"]
    assert (unlabelled.semantic == IGNORE_INDEX).all() and (unlabelled.instance == 0).all()
    for kind, mask in surface_masks(labelled, expected).items():
        assert (labelled.semantic[mask] == SEGMENTED[kind]).all(), kind
        assert (labelled.instance[mask] == (expected["car_instance"] if kind == "TYPE_VEHICLE" else 0)).all()


@needs_real
@needs_env
def test_boxes_pose_and_meta(waymo):
    expected = waymo["expected"]
    top_extrinsic = np.array(expected["top_extrinsic"])
    for n, (frame, frame_expected) in enumerate(zip(frames(waymo, "good"), expected["frames"])):
        labels = frame_expected["labels"]
        assert len(labels) == 18
        kept = [label for label in labels if BOX_CLASS[label["type"]] is not None]
        np.testing.assert_allclose(frame.boxes, [label["box"] for label in kept], rtol=1e-6, atol=1e-5)
        assert frame.box_labels.tolist() == [BOX_CLASS[label["type"]] for label in kept]
        np.testing.assert_allclose(frame.extras["box_velocity"], [label["speed"] for label in kept], rtol=1e-6)
        # Each object keeps its track id in both records, and distinct objects get distinct ids.
        assert frame.extras["box_track_id"].tolist() == [track_id(label["id"]) for label in kept]
        assert len(set(frame.extras["box_track_id"].tolist())) == len({label["id"] for label in kept})
        np.testing.assert_allclose(frame.pose, frame_expected["pose"], rtol=0, atol=1e-9)
        np.testing.assert_allclose(frame.sensor_origin, top_extrinsic[:3, 3], atol=1e-6)
        assert frame.meta["dataset"] == "waymo" and frame.meta["sensor"] == "waymo64"
        assert frame.meta["sequence"] == frame.meta["context_name"] == expected["context_name"]
        assert frame.meta["index"] == n
        assert frame.meta["timestamp_micros"] == frame_expected["timestamp_micros"]
        assert frame.meta["timestamp"] == pytest.approx(frame_expected["timestamp_micros"] / 1e6, abs=1e-6)


@needs_real
@needs_env
def test_all_lasers_follow_each_other_in_rings(waymo):
    expected = waymo["expected"]
    for frame, frame_expected in zip(frames(waymo, "all"), expected["frames"]):
        lasers = frame_expected["points"]["1"]
        assert frame.meta["lasers"] == ["TOP", "FRONT", "SIDE_LEFT", "SIDE_RIGHT", "REAR"]
        assert frame.num_points == sum(sum(counts.values()) for counts in lasers.values())
        check_on_scene(frame, expected, frame_expected, lasers)
        starts = [0, 64, 264, 464, 664, 864]  # TOP has 64 rows, the short-range lasers 200 each
        for name, low, high in zip(lasers, starts, starts[1:]):
            assert ((frame.ring >= low) & (frame.ring < high)).sum() == sum(lasers[name].values()), name


@needs_real
@needs_env
def test_second_return(waymo):
    expected = waymo["expected"]
    for frame, frame_expected in zip(frames(waymo, "second"), expected["frames"]):
        second = frame_expected["points"]["2"]
        assert frame.meta["return_index"] == 2
        assert 0 < frame.num_points == sum(second["TOP"].values())
        check_on_scene(frame, expected, frame_expected, second)


@needs_real
@needs_env
def test_occupancy_is_aggregated_over_the_segment_in_the_waymo_environment(waymo):
    """Record 0 has no segmentation labels: its grid comes from record 1's labelled points, the ground
    moved through the poses and the vehicle's points carried by its track id into record 0's box."""
    assert waymo["report"]["occupancy"]["failures"] == []
    unlabelled, labelled = frames(waymo, "occupancy")
    assert (unlabelled.semantic == IGNORE_INDEX).all()
    for frame in (unlabelled, labelled):
        grid = occupancy_grid(frame)
        assert grid.labels.shape == (160, 160, 8)
        vehicle = [box for box, label in zip(frame.boxes, frame.box_labels) if label == CLASS_ID["car"]]
        centres = grid.centres().reshape(-1, 3)
        in_vehicle = np.zeros(len(centres), bool)
        for box in vehicle:
            in_vehicle |= inside(centres, box, margin=0.0)
        flat = grid.labels.reshape(-1)
        assert (flat[in_vehicle] == CLASS_ID["car"]).any()
        assert (flat == CLASS_ID["road"]).sum() > 100 and (flat == EMPTY_INDEX).sum() > 1000
    # Record 1's own labelled points sit in occupied voxels, nearly all of their class; the one of its
    # 108,166 that does not lies on a voxel face (y = -8 m exactly), where its trip through the world
    # frame and back moves it by a rounding error into the next voxel.
    grid = occupancy_grid(labelled)
    seen = labelled.semantic != IGNORE_INDEX
    coords, kept = grid.voxel_of(labelled.points[seen])
    held = grid.labels[tuple(coords[kept].T)]
    assert (held < EMPTY_INDEX).mean() > 0.9999 and (held == labelled.semantic[seen][kept]).mean() > 0.97
