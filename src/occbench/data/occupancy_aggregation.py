"""Semantic occupancy of real data, built from the labelled points of a sequence.

Real datasets have labelled points, not labelled space. SPOT's targets and the
occupancy task need a label for every voxel, so each frame's grid is built, in
the way of Occ3D and OpenOccupancy, from all frames of its sequence (the
conversion cuts long sequences into blocks of ``frames_per_block`` frames, each
aggregated on its own):

Occupied. A voxel holding at least one labelled point takes the class most of
its points have (ties: the lower class id). The points come from every frame:
    static points  those inside no box, of a non-thing class, moved through the
                   world frame (each frame's ``pose``);
    objects        the points inside a tracked box (``box_track_id``), in that
                   box's own frame, placed where the box is in the frame being
                   built: a car seen from behind early and from the side later
                   is whole in every frame it has a box in;
    own frame only points of a box without a track id, and points of a thing
                   class inside no box (they may move): in their frame alone.
Free. A voxel the sensor saw all the way through: rays of the sequence's frames,
from each frame's sensor origin towards its labelled returns, cross the cells
holding all eight of the voxel's octant centres, on a world-aligned grid of
half the voxel size. All eight, not the centre alone: rays grazing the ground
cross the upper half of the voxels the ground plane passes through, which
hold ground all the same (one octant would call 10 % of the free voxels of
the synthetic test scene wrongly free, nearly all of them ground; eight,
1.5 %). Rays stop ``RAY_STOP_SHORT`` voxel edges before their return, so the
surface's own cells are not crossed. Voxels whose centre is inside a box of
the frame being built are never free: another frame's rays may have crossed
that place before the object came.
Unknown (IGNORE_INDEX). Every other voxel: behind surfaces, under the ground,
inside objects.

Only labelled points count (semantic != IGNORE_INDEX): unlabelled returns
(nuScenes' non-key sweeps, say) carry no class, and their sensor origin is not
the frame's. A voxel that holds points takes them over any ray crossing it.
On the synthetic world, where the exact occupancy exists, this agrees with it as
``tests/data/test_occupancy_aggregation.py`` states.

Why a world grid: exact traversal of every ray of a sequence in each frame's own
(rotated) grid costs frames^2 traversals, 1600 for a nuScenes scene; one world
grid costs a traversal per frame plus eight lookups per voxel and frame.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from occbench.data.frame import (Frame, OccupancyGrid, OccupancySpec, inside_boxes, load_frame, pose_problem,
                                 save_frame, set_occupancy)
from occbench.data.raycast import voxels_crossed
from occbench.data.taxonomy import CLASS_ID, EMPTY_INDEX, IGNORE_INDEX, NUM_CLASSES, THING_CLASSES

@dataclass(frozen=True)
class AggregationSettings:
    """A real dataset's ``occupancy`` setting: the grid, and how many consecutive frames of a scene
    are aggregated together (a SemanticKITTI sequence of 4,541 scans is cut into blocks of that many;
    a nuScenes scene of about 40 keyframes fits in one)."""

    grid: OccupancySpec
    frames_per_block: int

    @classmethod
    def from_settings(cls, settings: dict) -> AggregationSettings | None:
        """From a dataset's settings; None where its ``occupancy`` is null."""
        occupancy = settings["occupancy"]
        if occupancy is None:
            return None
        return cls(OccupancySpec.from_dict(occupancy), occupancy["frames_per_block"])


# How far before its return a free-space ray stops, in voxel edges (of the shortest edge).
RAY_STOP_SHORT = 0.5
# The centres of a voxel's eight octants, in voxel edges from its centre.
_OCTANTS = np.stack(np.meshgrid(*[[-0.25, 0.25]] * 3, indexing="ij"), -1).reshape(8, 3)
_THING_IDS = np.array([CLASS_ID[name] for name in THING_CLASSES])


def _box_to_frame(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotations (M, 3, 3) and centres (M, 3) taking box-local coordinates to frame coordinates."""
    cos, sin = np.cos(boxes[:, 6].astype(np.float64)), np.sin(boxes[:, 6].astype(np.float64))
    rotation = np.zeros((len(boxes), 3, 3))
    rotation[:, 0, 0], rotation[:, 0, 1], rotation[:, 1, 0], rotation[:, 1, 1] = cos, -sin, sin, cos
    rotation[:, 2, 2] = 1.0
    return rotation, boxes[:, :3].astype(np.float64)


@dataclass
class _FramePoints:
    """What one frame gives the sequence: its labelled points, sorted into static, tracked and own."""

    pose: np.ndarray
    origin_world: np.ndarray
    labelled_world: np.ndarray  # every labelled return, for the free-space rays
    own_points: np.ndarray  # frame coordinates
    own_semantic: np.ndarray
    boxes: np.ndarray
    track_ids: np.ndarray | None


def _split_frame(frame: Frame, static: list, tracks: dict) -> _FramePoints:
    problem = pose_problem(frame.pose)
    if problem:
        meta = frame.meta
        raise ValueError(f"frame {meta.get('dataset', '?')}/{meta.get('sequence', '?')}/{meta.get('index', '?')}: "
                         f"its pose is not a finite rigid transform: {problem}")
    labelled = frame.semantic != IGNORE_INDEX
    points, semantic = frame.points[labelled].astype(np.float64), frame.semantic[labelled]
    inside = inside_boxes(points, frame.boxes)
    box_of = np.where(inside.any(1), inside.argmax(1), -1) if len(frame.boxes) else np.full(len(points), -1)
    track_ids = frame.extras.get("box_track_id")
    in_tracked_box = box_of >= 0 if track_ids is not None else np.zeros(len(points), bool)
    is_static = (box_of < 0) & ~np.isin(semantic, _THING_IDS)
    own = ~is_static & ~in_tracked_box
    rotation, translation = frame.pose[:3, :3], frame.pose[:3, 3]
    world = points @ rotation.T + translation
    static.append((world[is_static], semantic[is_static]))
    if track_ids is not None:
        box_rotation, box_centre = _box_to_frame(frame.boxes)
        for box in np.unique(box_of[in_tracked_box]):
            member = box_of == box
            local = (points[member] - box_centre[box]) @ box_rotation[box]  # rows times R = R^T applied
            tracks.setdefault(int(track_ids[box]), []).append((local, semantic[member]))
    origin = rotation @ frame.sensor_origin.astype(np.float64) + translation
    return _FramePoints(frame.pose, origin, world, points[own], semantic[own], frame.boxes,
                        None if track_ids is None else np.asarray(track_ids))


def _majority_labels(flat: np.ndarray, semantic: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The voxels holding points and the most frequent class of each (ties: the lower id)."""
    key = flat * NUM_CLASSES + semantic
    pairs, counts = np.unique(key, return_counts=True)
    voxel, cls = pairs // NUM_CLASSES, pairs % NUM_CLASSES
    # Sorted by voxel, then count, then -class: the last pair of each voxel wins.
    order = np.lexsort((-cls, counts, voxel))
    voxel, cls = voxel[order], cls[order]
    last = np.diff(voxel, append=-1) != 0
    return voxel[last], cls[last].astype(np.uint8)


class _WorldFreeSpace:
    """Cells of a world-aligned grid that some ray of the sequence crossed."""

    def __init__(self, frames: list[_FramePoints], spec: OccupancySpec) -> None:
        self.cell = np.asarray(spec.voxel_size) / 2
        corners = np.stack(np.meshgrid(*[[spec.point_range[a], spec.point_range[a + 3]] for a in range(3)],
                                       indexing="ij"), -1).reshape(8, 3)
        world = np.concatenate([corners @ f.pose[:3, :3].T + f.pose[:3, 3] for f in frames])
        self.lower = np.floor(world.min(0) / self.cell) * self.cell
        upper = np.ceil(world.max(0) / self.cell) * self.cell
        self.shape = np.round((upper - self.lower) / self.cell).astype(int)
        point_range = [*self.lower, *upper]
        stop_short = RAY_STOP_SHORT * min(spec.voxel_size)
        self.free = np.zeros(tuple(self.shape), dtype=bool)
        for f in frames:
            direction = f.labelled_world - f.origin_world
            distance = np.linalg.norm(direction, axis=1, keepdims=True)
            keep = distance[:, 0] > stop_short
            ends = f.origin_world + direction[keep] * (1 - stop_short / distance[keep])
            self.free |= voxels_crossed(f.origin_world, ends, point_range, self.cell)

    def lookup(self, world: np.ndarray) -> np.ndarray:
        coords = np.floor((world - self.lower) / self.cell).astype(np.int64)
        inside = ((coords >= 0) & (coords < self.shape)).all(1)
        free = np.zeros(len(world), bool)
        c = coords[inside]
        free[inside] = self.free[c[:, 0], c[:, 1], c[:, 2]]
        return free


def aggregate_sequence(frames: Iterable[Frame], spec: OccupancySpec) -> list[OccupancyGrid]:
    """The semantic occupancy of each frame of one sequence, in its own coordinates (module docstring).

    Each frame is read once and only its labelled points kept, so ``frames`` may be a generator
    that loads them one at a time."""
    static: list = []
    tracks: dict[int, list] = {}
    split = [_split_frame(frame, static, tracks) for frame in frames]
    static_world = np.concatenate([p for p, _ in static]) if static else np.zeros((0, 3))
    static_semantic = np.concatenate([s for _, s in static]) if static else np.zeros(0, np.uint8)
    track_points = {k: (np.concatenate([p for p, _ in v]), np.concatenate([s for _, s in v]))
                    for k, v in tracks.items()}
    free_space = _WorldFreeSpace(split, spec)
    centres = spec.unknown_grid().centres().reshape(-1, 3)  # in frame coordinates: the same for every frame
    grids = []
    for f in split:
        grid = spec.unknown_grid()
        rotation, translation = f.pose[:3, :3], f.pose[:3, 3]
        parts = [((static_world - translation) @ rotation, static_semantic), (f.own_points, f.own_semantic)]
        if f.track_ids is not None:
            box_rotation, box_centre = _box_to_frame(f.boxes)
            for box, track in enumerate(f.track_ids):
                if int(track) in track_points:
                    local, semantic = track_points[int(track)]
                    parts.append((local @ box_rotation[box].T + box_centre[box], semantic))
        points = np.concatenate([p for p, _ in parts])
        semantic = np.concatenate([s for _, s in parts])
        coords, inside = grid.voxel_of(points)
        flat = np.ravel_multi_index(tuple(coords[inside].T), grid.labels.shape)
        voxel, cls = _majority_labels(flat, semantic[inside].astype(np.int64))
        free = np.arange(len(centres))  # narrowed octant by octant: most voxels fail the first
        for octant in _OCTANTS * np.asarray(spec.voxel_size):
            free = free[free_space.lookup((centres[free] + octant) @ rotation.T + translation)]
        if len(f.boxes):
            free = free[~inside_boxes(centres[free], f.boxes).any(1)]
        labels = grid.labels.reshape(-1)
        labels[free] = EMPTY_INDEX
        labels[voxel] = cls
        grids.append(grid)
    return grids


def has_occupancy(path: Path, spec: OccupancySpec) -> bool:
    """Whether the frame file at ``path`` already holds an occupancy grid of ``spec``."""
    with np.load(path, allow_pickle=False) as archive:
        if "occupancy" not in archive.files:
            return False
        grid = json.loads(str(archive["meta"])).get("occupancy") or {}
    return grid == {"range": list(spec.point_range), "voxel_size": list(spec.voxel_size)}


def aggregate_scene(paths: Sequence[Path], spec: OccupancySpec) -> None:
    """Build the occupancy of one scene's frame files and write it into each (atomically, frame by frame).

    A scene stopped half-way has frames with and frames without it: its next run
    builds it again from all of them, so no frame keeps a grid of fewer frames."""
    grids = aggregate_sequence((load_frame(path) for path in paths), spec)
    for path, grid in zip(paths, grids):
        frame = load_frame(path)
        set_occupancy(frame, grid)
        save_frame(frame, path)
