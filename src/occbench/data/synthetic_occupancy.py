"""Ground-truth semantic occupancy of a synthetic scene, in a frame's LiDAR coordinates.

The synthetic world is made of exact primitives, so its occupancy needs no
aggregation of sweeps: every voxel is labelled from the geometry itself.

Grid convention (that of ``frame.OccupancyGrid``): ``point_range`` is
[x0, y0, z0, x1, y1, z1] in LiDAR coordinates (x forward, y left, z up, the
LiDAR at the origin), each extent a whole multiple of ``voxel_size``; voxel
(i, j, k) covers the half-open box [x0 + i dx, x0 + (i + 1) dx) x ... . The
grid axes are the LiDAR's, so with a yawed or moved ``lidar_pose`` the voxels
are rotated and shifted relative to the world's streets.

Labels
    EMPTY_INDEX   free space above the ground
    ground class  the voxel through which the ground plane (world z = 0) passes,
                  from ``layout.ground_class`` at the voxel centre's world (x, y):
                  for a voxel crossed by one straight class boundary, the centre's
                  side is the one covering most of the voxel (any line through a
                  box's centre halves it)
    IGNORE_INDEX  voxels entirely below the ground: never observable
    object class  voxels a primitive overlaps, by the rule below

Overlap rule. Each voxel is split into ``subdivisions``^3 sub-cells; a
primitive occupies the voxel when it comes within one sub-cell half-diagonal
(h; 0.108 m for 0.5 m voxels and 4 subdivisions) of some sub-cell centre. This
test is conservative: any primitive that truly overlaps the voxel passes it, so
a 0.08 m pole cannot fall between samples. Boxes and cylinders use their exact
distance, so they never claim a voxel more than h away; spheroids use a lower
bound (distance in axis-scaled space times the shortest radius), which errs
towards occupying. Only voxels in a primitive's bounding box grown by h are
tested, and only those whose centre is outside but within a voxel
half-diagonal of the surface are split into sub-cells.

Conflicts. Where several primitives occupy one voxel, things
(taxonomy.THING_CLASSES) win over other primitives, so small objects are not
swallowed by the walls and trees beside them; between primitives of one tier,
the one whose surface the voxel centre lies deepest inside (signed distance: the
largest overlap) wins. In a voxel holding the ground, the ground counts as the
solid below its surface, as deep as the voxel centre is low: it keeps the voxel
unless some primitive reaches deeper, so the ground layer under a car's 0.2 m
clearance or around a pole's foot stays ground, while a building's footprint
does not. Voxels entirely below the ground stay IGNORE_INDEX whatever touches
them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from occbench.data.frame import OccupancyGrid, grid_shape, pose_problem
from occbench.data.raycast import PARAMS_PER_KIND
from occbench.data.taxonomy import CLASS_ID, EMPTY_INDEX, IGNORE_INDEX, THING_CLASSES

if TYPE_CHECKING:
    from occbench.data.synthetic import Scene

# Conflict tiers by class id: things (2) over every other primitive class (1).
_TIER = np.ones(256, dtype=np.int8)
_TIER[[CLASS_ID[name] for name in THING_CLASSES]] = 2
# Sub-cell tests at once: bounds the (pairs x sub-cells) temporaries to a few tens of MB.
_REFINE_CHUNK = 16384


def _box_distance(points: np.ndarray, params: np.ndarray) -> np.ndarray:
    """Exact signed distance to yawed boxes; ``params`` broadcasts against ``points[..., 0]``."""
    cos, sin = np.cos(params[..., 6]), np.sin(params[..., 6])
    dx, dy = points[..., 0] - params[..., 0], points[..., 1] - params[..., 1]
    beyond_x = np.abs(cos * dx + sin * dy) - params[..., 3] / 2
    beyond_y = np.abs(cos * dy - sin * dx) - params[..., 4] / 2
    beyond_z = np.abs(points[..., 2] - params[..., 2]) - params[..., 5] / 2
    outside = np.sqrt(
        np.maximum(beyond_x, 0.0) ** 2 + np.maximum(beyond_y, 0.0) ** 2 + np.maximum(beyond_z, 0.0) ** 2
    )
    return outside + np.minimum(np.maximum(np.maximum(beyond_x, beyond_y), beyond_z), 0.0)


def _cylinder_distance(points: np.ndarray, params: np.ndarray) -> np.ndarray:
    """Exact signed distance to capped vertical cylinders."""
    radial = np.hypot(points[..., 0] - params[..., 0], points[..., 1] - params[..., 1]) - params[..., 4]
    vertical = np.abs(points[..., 2] - (params[..., 2] + params[..., 3]) / 2)
    vertical -= (params[..., 3] - params[..., 2]) / 2
    outside = np.hypot(np.maximum(radial, 0.0), np.maximum(vertical, 0.0))
    return outside + np.minimum(np.maximum(radial, vertical), 0.0)


def _spheroid_distance(points: np.ndarray, params: np.ndarray) -> np.ndarray:
    """A signed distance bound for vertical spheroids: right sign, never larger in magnitude.

    Scaling by 1 / radii shrinks distances by at most 1 / min(radii), so the
    radial excess in scaled space times the shortest radius bounds the distance.
    """
    radii = np.stack([params[..., 3], params[..., 3], params[..., 4]], -1)
    scaled = np.linalg.norm((points - params[..., :3]) / radii, axis=-1)
    return (scaled - 1.0) * np.minimum(params[..., 3], params[..., 4])


def _box_bounds(params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cos, sin = np.abs(np.cos(params[:, 6])), np.abs(np.sin(params[:, 6]))
    half = np.stack([
        cos * params[:, 3] / 2 + sin * params[:, 4] / 2,
        sin * params[:, 3] / 2 + cos * params[:, 4] / 2,
        params[:, 5] / 2,
    ], 1)
    return params[:, :3] - half, params[:, :3] + half


def _cylinder_bounds(params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    radius = params[:, 4]
    lo = np.stack([params[:, 0] - radius, params[:, 1] - radius, params[:, 2]], 1)
    hi = np.stack([params[:, 0] + radius, params[:, 1] + radius, params[:, 3]], 1)
    return lo, hi


def _spheroid_bounds(params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    half = params[:, [3, 3, 4]]
    return params[:, :3] - half, params[:, :3] + half


_DISTANCE = {"box": _box_distance, "cylinder": _cylinder_distance, "spheroid": _spheroid_distance}
_BOUNDS = {"box": _box_bounds, "cylinder": _cylinder_bounds, "spheroid": _spheroid_bounds}


class _Grid:
    """The voxel grid and its placement in the world."""

    def __init__(self, lidar_pose: np.ndarray, point_range: Sequence[float],
                 voxel_size: float | Sequence[float], subdivisions: int) -> None:
        pose = np.asarray(lidar_pose, dtype=np.float64)
        problem = pose_problem(pose)
        if problem:
            raise ValueError(f"lidar_pose is not a rigid transform: {problem}")
        rotation = pose[:3, :3]
        bounds = np.asarray(point_range, dtype=np.float64)
        size = np.broadcast_to(np.asarray(voxel_size, dtype=np.float64), (3,)).copy()
        if bounds.shape != (6,) or (size <= 0).any() or (bounds[3:] <= bounds[:3]).any():
            raise ValueError(
                f"need point_range [x0, y0, z0, x1, y1, z1] with x0 < x1 etc. and voxel_size > 0, "
                f"got {list(point_range)} and {np.ravel(voxel_size).tolist()}"
            )
        cells, shape = (bounds[3:] - bounds[:3]) / size, grid_shape(bounds, size)
        if not np.allclose(cells, shape, rtol=0, atol=1e-6):
            raise ValueError(
                f"point_range {bounds.tolist()} is not a whole number of voxels of {size.tolist()} "
                f"per axis ({cells.tolist()})"
            )
        if subdivisions < 1:
            raise ValueError(f"subdivisions must be >= 1, got {subdivisions}")
        self.rotation, self.translation = rotation, pose[:3, 3]
        self.lo, self.size, self.shape = bounds[:3], size, shape
        self.point_range = tuple(float(v) for v in bounds)
        self.half_diagonal = float(np.linalg.norm(size)) / 2
        self.sub_half_diagonal = self.half_diagonal / subdivisions
        # Sub-cell centres relative to their voxel's centre, as world-frame offsets.
        steps = (np.arange(subdivisions) + 0.5) / subdivisions - 0.5
        grid = np.stack(np.meshgrid(steps, steps, steps, indexing="ij"), -1).reshape(-1, 3)
        self.sub_offsets = (grid * size) @ rotation.T

    def to_world(self, points: np.ndarray) -> np.ndarray:
        return points @ self.rotation.T + self.translation

    def ground_labels(self, layout) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Labels without primitives, which voxels hold the ground, and their centres' height.

        The labels are EMPTY above the ground, the ground class where the plane
        passes and IGNORE below; a centre's world z is its signed distance above
        the ground.
        """
        axes = [lo + (np.arange(n) + 0.5) * s for lo, n, s in zip(self.lo, self.shape, self.size)]
        row = self.rotation[2]
        height = (
            row[0] * axes[0][:, None, None] + row[1] * axes[1][None, :, None]
            + row[2] * axes[2][None, None, :] + self.translation[2]
        )
        # Half the vertical extent of a (possibly tilted) voxel.
        reach = float(np.abs(row) @ self.size) / 2
        labels = np.full(self.shape, EMPTY_INDEX, dtype=np.uint8)
        labels[height + reach <= 0] = IGNORE_INDEX
        holds_ground = (height - reach <= 0) & (height + reach > 0)
        ground = np.nonzero(holds_ground)
        centres = np.stack([axes[axis][ground[axis]] for axis in range(3)], 1)
        labels[ground] = layout.ground_class(self.to_world(centres)[:, :2])
        return labels, holds_ground, height

    def candidates(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(primitive, voxel ijk) pairs for every voxel meeting each world box [lo, hi] (K, 3)."""
        corners = np.stack(np.meshgrid([0, 1], [0, 1], [0, 1], indexing="ij"), -1).reshape(8, 3)
        world = np.where(corners[None] == 1, hi[:, None], lo[:, None])  # (K, 8, 3)
        local = (world - self.translation) @ self.rotation  # world -> LiDAR frame
        start = np.floor((local.min(1) - self.lo) / self.size)
        stop = np.floor((local.max(1) - self.lo) / self.size) + 1
        start = np.clip(start, 0, self.shape).astype(np.int64)
        extent = np.maximum(np.clip(stop, 0, self.shape).astype(np.int64) - start, 0)
        count = extent.prod(1)
        primitive = np.repeat(np.arange(len(lo)), count)
        rank = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
        ny, nz = extent[primitive, 1], extent[primitive, 2]
        offset = np.stack([rank // (ny * nz), (rank // nz) % ny, rank % nz], 1)
        return primitive, start[primitive] + offset

    def occupied(self, kind: str, params: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The (primitive, flat voxel, depth) triples of voxels the primitives occupy.

        ``depth`` is how far inside the primitive the voxel centre lies (negative outside).
        """
        lo, hi = _BOUNDS[kind](params)
        primitive, ijk = self.candidates(lo - self.sub_half_diagonal, hi + self.sub_half_diagonal)
        centres = self.to_world(self.lo + (ijk + 0.5) * self.size)
        distance = _DISTANCE[kind](centres, params[primitive])
        occupied = distance <= 0
        # Centre outside but near the surface: the sub-cells decide.
        unsure = np.nonzero((distance > 0) & (distance <= self.half_diagonal))[0]
        for first in range(0, len(unsure), _REFINE_CHUNK):
            pairs = unsure[first : first + _REFINE_CHUNK]
            points = centres[pairs, None] + self.sub_offsets[None]
            near = _DISTANCE[kind](points, params[primitive[pairs], None]) <= self.sub_half_diagonal
            occupied[pairs] = near.any(1)
        flat = np.ravel_multi_index(tuple(ijk[occupied].T), self.shape)
        return primitive[occupied], flat, -distance[occupied]


def semantic_occupancy(
    scene: Scene,
    lidar_pose: np.ndarray,
    point_range: Sequence[float],
    voxel_size: float | Sequence[float],
    *,
    subdivisions: int = 4,
) -> OccupancyGrid:
    """The semantic occupancy of ``scene`` on a grid in the LiDAR coordinates of ``lidar_pose``.

    ``scene`` needs only ``primitives`` (world coordinates) and
    ``layout.ground_class``; ``lidar_pose`` is the LiDAR-to-world transform.
    Labels and rules: module docstring.
    """
    grid = _Grid(lidar_pose, point_range, voxel_size, subdivisions)
    labels, holds_ground, height = grid.ground_labels(scene.layout)
    voxels, tiers, depths, classes = [], [], [], []
    for group in scene.primitives:
        params = np.asarray(group.params, dtype=np.float64).reshape(-1, PARAMS_PER_KIND[group.kind])
        primitive, flat, depth = grid.occupied(group.kind, params)
        semantic = np.asarray(group.semantic, dtype=np.uint8)[primitive]
        voxels.append(flat), depths.append(depth), classes.append(semantic)
        tiers.append(_TIER[semantic])
    if voxels:
        voxel, tier, depth, semantic = (np.concatenate(x) for x in (voxels, tiers, depths, classes))
        deepest = np.full(labels.size, -np.inf)
        np.maximum.at(deepest, voxel, depth)
        # Sorted by voxel, then tier, then depth: the last pair of each voxel wins.
        order = np.lexsort((depth, tier, voxel))
        voxel, semantic = voxel[order], semantic[order]
        last = np.diff(voxel, append=-1) != 0
        voxel, semantic = voxel[last], semantic[last]
        # The ground, solid below its surface, is as deep as the centre is low.
        beats_ground = ~holds_ground.reshape(-1)[voxel] | (deepest[voxel] >= -height.reshape(-1)[voxel])
        below = labels.reshape(-1)[voxel] == IGNORE_INDEX
        take = beats_ground & ~below
        labels.reshape(-1)[voxel[take]] = semantic[take]
    return OccupancyGrid(labels, grid.point_range, tuple(float(s) for s in grid.size))
