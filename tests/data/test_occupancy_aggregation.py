"""Semantic occupancy aggregated over a sequence: hand-made frames with known answers, and the
synthetic world, whose exact occupancy the aggregation is measured against."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from occbench.data.convert import run_conversion
from occbench.data.converters.synthetic import SyntheticConverter
from occbench.data.dataset import FrameIndex
from occbench.data.frame import Frame, OccupancySpec, load_frame, occupancy_grid, save_frame
from occbench.data.occupancy_aggregation import AggregationSettings, aggregate_sequence
from occbench.data.taxonomy import CLASS_ID, EMPTY_INDEX, IGNORE_INDEX
from occbench.workflow.grid import index_path

PARAMS = yaml.safe_load((Path(__file__).parents[2] / "params.yaml").read_text())
# 1 m voxels: voxel (i, j, k) covers [-4 + i, -3 + i) x [-4 + j, -3 + j) x [-2 + k, -1 + k).
HAND = OccupancySpec((-4.0, -4.0, -2.0, 12.0, 4.0, 2.0), (1.0, 1.0, 1.0))


def voxel(x: float, y: float, z: float) -> tuple[int, int, int]:
    return int(np.floor(x + 4)), int(np.floor(y + 4)), int(np.floor(z + 2))


def wall(x: float) -> np.ndarray:
    """A dense wall of points at ``x``, across the grid's y and z."""
    y, z = np.meshgrid(np.arange(-3.95, 4.0, 0.1), np.arange(-1.95, 2.0, 0.1), indexing="ij")
    return np.stack([np.full(y.size, x), y.ravel(), z.ravel()], 1)


def hand_frame(x_shift: float, points: list[tuple[np.ndarray, str]], boxes: list[tuple], *,
               tracked: bool = True) -> Frame:
    """A frame of a sensor ``x_shift`` m along the world's x, its points (frame coordinates) by class,
    and its boxes as (x, y, z, track id) rows of upright 1 m cubes."""
    xyz = np.concatenate([p for p, _ in points])
    semantic = np.concatenate([np.full(len(p), CLASS_ID[name], np.uint8) for p, name in points])
    pose = np.eye(4)
    pose[0, 3] = x_shift
    box_rows = np.array([[x, y, z, 1.0, 1.0, 1.0, 0.0] for x, y, z, _ in boxes]).reshape(-1, 7)
    extras = {"box_track_id": np.array([track for *_, track in boxes], np.int32)} if tracked else {}
    return Frame(points=xyz, intensity=np.zeros(len(xyz)), ring=np.zeros(len(xyz)), semantic=semantic,
                 instance=np.zeros(len(xyz)), boxes=box_rows, box_labels=np.full(len(boxes), CLASS_ID["car"]),
                 pose=pose, extras=extras)


def hand_sequence(tracked: bool = True) -> list[Frame]:
    """Frame A at the world origin, frame B 2 m further along x.

    A static wall stands at world x = 6.5; a car (track 7) is at world (3.5, -2.5) in A, where A sees
    its points, and has driven to world (7.5, -2.5) in B, which sees none of it; a pedestrian box
    (track 9) stands in B at world (4.5, 0.5), where A's rays to the wall passed before it came; a
    pedestrian point without a box is in A only; vegetation outvotes a pole in one voxel, and terrain
    and sidewalk tie in another."""
    car = np.array([[3.3, -2.6, 0.4], [3.6, -2.4, 0.6], [3.5, -2.5, 0.5]])
    majority = np.array([[10.2, 2.5, -0.5], [10.4, 2.5, -0.5]])
    a = hand_frame(0.0, [(wall(6.5), "building"), (car, "car"), (np.array([[1.5, 2.5, 0.5]]), "pedestrian"),
                         (majority, "vegetation"), (np.array([[10.6, 2.5, -0.5]]), "pole"),
                         (np.array([[10.5, 3.5, -1.5]]), "terrain"), (np.array([[10.5, 3.6, -1.5]]), "sidewalk")],
                   [(3.5, -2.5, 0.5, 7)], tracked=tracked)
    b = hand_frame(2.0, [(wall(4.5), "building")], [(5.5, -2.5, 0.5, 7), (2.5, 0.5, 0.5, 9)], tracked=tracked)
    return [a, b]


def test_static_points_move_through_the_world_into_every_frame():
    grid_a, grid_b = aggregate_sequence(hand_sequence(), HAND)
    assert grid_a.labels[voxel(6.5, 0.5, 0.5)] == CLASS_ID["building"]
    # The wall is 4.5 m ahead of B; A's points of it land there too.
    assert grid_b.labels[voxel(4.5, 0.5, 0.5)] == CLASS_ID["building"]
    assert grid_b.labels[voxel(6.5, 0.5, 0.5)] != CLASS_ID["building"]


def test_a_tracked_object_is_drawn_where_its_box_is_in_each_frame():
    grid_a, grid_b = aggregate_sequence(hand_sequence(), HAND)
    assert grid_a.labels[voxel(3.5, -2.5, 0.5)] == CLASS_ID["car"]
    # B sees none of the car's points: A's, carried in the box's frame, fill B's box (world 7.5 = B's 5.5),
    assert grid_b.labels[voxel(5.5, -2.5, 0.5)] == CLASS_ID["car"]
    # and leave no trail where the car was (world 3.5 = B's 1.5).
    assert grid_b.labels[voxel(1.5, -2.5, 0.5)] != CLASS_ID["car"]
    # Without track ids the car counts in its own frame alone.
    untracked_a, untracked_b = aggregate_sequence(hand_sequence(tracked=False), HAND)
    assert untracked_a.labels[voxel(3.5, -2.5, 0.5)] == CLASS_ID["car"]
    assert (untracked_b.labels != CLASS_ID["car"]).all()


def test_a_thing_outside_every_box_stays_in_its_own_frame():
    grid_a, grid_b = aggregate_sequence(hand_sequence(), HAND)
    assert grid_a.labels[voxel(1.5, 2.5, 0.5)] == CLASS_ID["pedestrian"]
    assert (grid_b.labels != CLASS_ID["pedestrian"]).all()


def test_rays_make_free_space_and_leave_the_unseen_unknown():
    grid_a, grid_b = aggregate_sequence(hand_sequence(), HAND)
    for x in (2.5, 4.5, 5.5):  # between the sensor and the wall
        assert grid_a.labels[voxel(x, 0.5, 0.5)] == EMPTY_INDEX
    assert grid_a.labels[voxel(7.5, 0.5, 0.5)] == IGNORE_INDEX  # behind the wall
    assert grid_b.labels[voxel(5.5, 0.5, 0.5)] == IGNORE_INDEX  # behind the wall, seen from B
    # A's rays crossed world (4.5, 0.5) before B's pedestrian box stood there: free in A, unknown in B.
    assert grid_a.labels[voxel(4.5, 0.5, 0.5)] == EMPTY_INDEX
    assert grid_b.labels[voxel(2.5, 0.5, 0.5)] == IGNORE_INDEX


def test_a_voxel_takes_the_class_most_of_its_points_have_and_ties_go_to_the_lower_id():
    grid_a, _ = aggregate_sequence(hand_sequence(), HAND)
    assert grid_a.labels[voxel(10.5, 2.5, -0.5)] == CLASS_ID["vegetation"]  # 2 vegetation, 1 pole
    assert grid_a.labels[voxel(10.5, 3.5, -1.5)] == min(CLASS_ID["terrain"], CLASS_ID["sidewalk"])


def synthetic_scene(frames: int) -> tuple[SyntheticConverter, list]:
    settings = {**PARAMS["datasets"]["synthetic"], "num_scenes": 2, "frames_per_scene": frames}
    converter = SyntheticConverter(settings)
    return converter, [s for s in converter.sources() if s.scene == "0000"]


def test_on_the_synthetic_world_the_aggregate_agrees_with_the_exact_occupancy():
    """Measured on this scene (6 frames, the default world's sensor and 0.5 m grid): 97.6 % of the
    occupied voxels carry the exact class and 99.95 % are occupied in the exact grid; 98.5 % of the
    free voxels are empty in it (one octant instead of eight: 90 %); 78 % of the empty voxels a frame's
    own rays cross come out free; the sequence gives 2.2 times the occupied and 3.1 times the free
    voxels of each frame alone."""
    converter, sources = synthetic_scene(6)
    frames = [converter.load(source) for source in sources]
    exact = [occupancy_grid(frame).labels for frame in frames]
    for frame in frames:
        del frame.extras["occupancy"]
    spec = converter.occupancy
    grids = [grid.labels for grid in aggregate_sequence(frames, spec)]
    alone = [aggregate_sequence([frame], spec)[0].labels for frame in frames]
    aggregated, true = np.stack(grids), np.stack(exact)
    occupied, free = aggregated < EMPTY_INDEX, aggregated == EMPTY_INDEX
    truly_occupied = true < EMPTY_INDEX
    assert (aggregated[occupied] == true[occupied]).mean() > 0.96
    assert truly_occupied[occupied].mean() > 0.998
    assert (true[free] == EMPTY_INDEX).mean() > 0.98
    single = np.stack(alone)
    assert occupied.sum() > 2 * (single < EMPTY_INDEX).sum()
    assert free.sum() > 2.8 * (single == EMPTY_INDEX).sum()


class AggregatedSynthetic(SyntheticConverter):
    """The synthetic world converted as a real dataset is: frames without their exact occupancy,
    the occupancy aggregated from the scene's labelled points."""

    def __init__(self, settings: dict, frames_per_block: int) -> None:
        super().__init__(settings)
        self.occupancy_aggregation = AggregationSettings(self.occupancy, frames_per_block)
        self.occupancy = None


def test_conversion_aggregates_each_block_resumes_and_reports_a_bad_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = {**PARAMS["datasets"]["synthetic"], "num_scenes": 2, "frames_per_scene": 3,
                "sensor": {"profile": "nuscenes32", "azimuth_step_deg": 1.0}}
    converter = AggregatedSynthetic(settings, frames_per_block=2)
    assert run_conversion("agg", converter, settings, workers=1) == []
    index = FrameIndex(index_path("agg"))
    first = index.load("0000_000")
    grid = occupancy_grid(first)
    assert grid.point_range == converter.occupancy_aggregation.grid.point_range
    # Its block is frames 0 and 1: frame 0 equals aggregating those two alone.
    paths = {n: index.frame_path(f"0000_00{n}") for n in range(3)}
    frames = [load_frame(paths[n]) for n in (0, 1)]
    for frame in frames:
        del frame.extras["occupancy"]
    block = aggregate_sequence(frames, converter.occupancy_aggregation.grid)
    assert np.array_equal(grid.labels, block[0].labels)
    # A rerun builds nothing again; a block with a frame lacking the grid (a killed run) is built again.
    stamps = {n: path.stat().st_mtime_ns for n, path in paths.items()}
    stripped = load_frame(paths[1])
    del stripped.extras["occupancy"]
    stripped.meta.pop("occupancy")
    save_frame(stripped, paths[1])
    assert run_conversion("agg", converter, settings, workers=1) == []
    assert paths[0].stat().st_mtime_ns != stamps[0] and paths[2].stat().st_mtime_ns == stamps[2]
    assert np.array_equal(occupancy_grid(load_frame(paths[0])).labels, grid.labels)
    assert occupancy_grid(load_frame(paths[1])) is not None
    # A frame the aggregation cannot use: its block is reported, left out of the index, the rest kept.
    broken = load_frame(paths[2])
    broken.pose[0, 3] = np.nan
    del broken.extras["occupancy"]
    save_frame(broken, paths[2])
    failures = run_conversion("agg", converter, settings, workers=1)
    assert len(failures) == 1 and "scene 0000, frames 0000_002 to 0000_002" in failures[0]
    assert "its pose is not a finite rigid transform" in failures[0]
    ids = list(FrameIndex(index_path("agg")).frames)
    assert "0000_002" not in ids and {"0000_000", "0000_001", "0001_000"} <= set(ids)
