"""Vectorised ray casting against the few primitive kinds the synthetic world is built from.

All rays of a sweep leave one origin (a spinning LiDAR, a camera). Rays sorted
by azimuth give each primitive a contiguous window of rays that can reach its
bounding sphere; a cone test on the sphere thins those, and only the pairs left
go through the exact intersection, so the cost follows what the sensor sees
rather than rays x primitives. Each intersector takes matching rows of
ray directions and primitive parameters and returns the distance along the
unit ray to the entry point (``inf`` on a miss) and |cos| of the incidence
angle, which the sensor model turns into intensity.

Primitive parameters, one row per primitive:
    box       x, y, z (centre), dx, dy, dz, yaw      (the Frame box layout)
    cylinder  x, y, z_bottom, z_top, radius          (vertical axis)
    spheroid  x, y, z (centre), radius, half_height  (vertical axis, so yaw-free)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from occbench.data.frame import grid_shape

Intersector = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def intersect_boxes(origin: np.ndarray, dirs: np.ndarray, params: np.ndarray):
    """Slab test in the box's own frame."""
    cos_yaw, sin_yaw = np.cos(params[:, 6]), np.sin(params[:, 6])
    offset = origin - params[:, :3]
    local_origin = (
        cos_yaw * offset[:, 0] + sin_yaw * offset[:, 1],
        -sin_yaw * offset[:, 0] + cos_yaw * offset[:, 1],
        offset[:, 2],
    )
    local_dirs = (
        cos_yaw * dirs[:, 0] + sin_yaw * dirs[:, 1],
        -sin_yaw * dirs[:, 0] + cos_yaw * dirs[:, 1],
        dirs[:, 2],
    )
    t_near = np.full(len(dirs), -np.inf)
    t_far = np.full(len(dirs), np.inf)
    cos = np.zeros(len(dirs))
    with np.errstate(divide="ignore", invalid="ignore"):
        for o, d, half in zip(local_origin, local_dirs, params[:, 3:6].T / 2):
            t_a, t_b = (-half - o) / d, (half - o) / d
            entry = np.minimum(t_a, t_b)
            # The face crossed last on entry is the one hit; its normal is this axis.
            through_this_face = entry > t_near
            t_near = np.where(through_this_face, entry, t_near)
            cos = np.where(through_this_face, np.abs(d), cos)
            t_far = np.minimum(t_far, np.maximum(t_a, t_b))
    hit = (t_near <= t_far) & (t_near > 0)
    return np.where(hit, t_near, np.inf), cos


def intersect_cylinders(origin: np.ndarray, dirs: np.ndarray, params: np.ndarray):
    """Side wall and both caps of a vertical cylinder."""
    px, py = origin[0] - params[:, 0], origin[1] - params[:, 1]
    z_bottom, z_top, radius = params[:, 2], params[:, 3], params[:, 4]
    dx, dy, dz = dirs.T
    a = dx * dx + dy * dy
    half_b = dx * px + dy * py
    disc = half_b * half_b - a * (px * px + py * py - radius * radius)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_side = (-half_b - np.sqrt(disc)) / a
        z = origin[2] + t_side * dz
        t = np.where((disc >= 0) & (t_side > 0) & (z >= z_bottom) & (z <= z_top), t_side, np.inf)
        # The side normal is the horizontal offset from the axis, of length radius.
        cos = np.abs((px + t_side * dx) * dx + (py + t_side * dy) * dy) / radius
        for z_cap in (z_bottom, z_top):
            t_cap = (z_cap - origin[2]) / dz
            cap_hit = (t_cap > 0) & (t_cap < t)
            cap_hit &= (px + t_cap * dx) ** 2 + (py + t_cap * dy) ** 2 <= radius * radius
            t = np.where(cap_hit, t_cap, t)
            cos = np.where(cap_hit, np.abs(dz), cos)
    return t, cos


def intersect_spheroids(origin: np.ndarray, dirs: np.ndarray, params: np.ndarray):
    """Vertical-axis spheroid, solved as a unit sphere after scaling the axes."""
    radii = params[:, [3, 3, 4]]
    p = (origin - params[:, :3]) / radii
    d = dirs / radii
    a = (d * d).sum(1)
    half_b = (d * p).sum(1)
    disc = half_b * half_b - a * ((p * p).sum(1) - 1.0)
    with np.errstate(invalid="ignore"):
        t = (-half_b - np.sqrt(disc)) / a
    hit = (disc >= 0) & (t > 0)
    t = np.where(hit, t, np.inf)
    # The gradient of |x / radii|^2 at the hit point is the surface normal.
    normal = (p + np.where(hit, t, 0.0)[:, None] * d) / radii
    norm = np.maximum(np.linalg.norm(normal, axis=1), 1e-12)
    return t, np.abs((normal * dirs).sum(1)) / norm


def bounding_spheres(kind: str, params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre (K, 3) and radius (K,) of a sphere around each primitive."""
    if kind == "box":
        return params[:, :3], np.linalg.norm(params[:, 3:6], axis=1) / 2
    if kind == "cylinder":
        centre = np.stack([params[:, 0], params[:, 1], (params[:, 2] + params[:, 3]) / 2], 1)
        return centre, np.hypot(params[:, 4], (params[:, 3] - params[:, 2]) / 2)
    return params[:, :3], np.maximum(params[:, 3], params[:, 4])


PARAMS_PER_KIND = {"box": 7, "cylinder": 5, "spheroid": 5}
INTERSECTORS: dict[str, Intersector] = {
    "box": intersect_boxes,
    "cylinder": intersect_cylinders,
    "spheroid": intersect_spheroids,
}


@dataclass(frozen=True)
class Primitives:
    """Primitives of one kind, each with the labels and reflectivity of its surface."""

    kind: str
    params: np.ndarray  # (K, P) float64, layout per kind (module docstring)
    semantic: np.ndarray  # (K,) unified class id
    instance: np.ndarray  # (K,) object id, 0 = none
    reflectivity: np.ndarray  # (K,) in [0, 1]

    def __post_init__(self) -> None:
        if self.kind not in INTERSECTORS:
            raise ValueError(f"unknown primitive kind {self.kind!r}")


@dataclass(frozen=True)
class Trace:
    """Nearest surface per ray; range is ``inf`` (and the rest meaningless) on a miss."""

    range: np.ndarray
    cos_incidence: np.ndarray
    semantic: np.ndarray
    instance: np.ndarray
    reflectivity: np.ndarray


def _azimuth_windows(origin: np.ndarray, kind: str, params: np.ndarray):
    """Per primitive, from ``origin``: the unit direction to its bounding sphere (K, 3), the
    cosine of the cone the sphere subtends (K,), and the centre (K,) and half-width (K,) of the
    azimuth window that holds every ray able to hit it (half-width pi: any azimuth).

    A ray's horizontal projection must pass within the sphere's radius of the sphere's
    horizontal centre, so its azimuth is within asin(radius / horizontal distance) of the
    centre's azimuth; when the origin lies inside that horizontal disk, any azimuth can.
    """
    centre, radius = bounding_spheres(kind, params)
    offset = centre - origin
    distance = np.maximum(np.linalg.norm(offset, axis=1), 1e-12)
    horizontal = np.hypot(offset[:, 0], offset[:, 1])
    # A ray meets the sphere iff its angle to the centre is below asin(radius / distance).
    min_cos = np.where(distance <= radius, -1.0, np.sqrt(np.maximum(1 - (radius / distance) ** 2, 0.0)))
    with np.errstate(divide="ignore", invalid="ignore"):
        half_width = np.where(horizontal > radius, np.arcsin(radius / horizontal) + 1e-9, np.pi)
    return offset / distance[:, None], min_cos, np.arctan2(offset[:, 1], offset[:, 0]), half_width


def _candidate_pairs(dirs, order, extended_azimuth, unit, min_cos, centre_azimuth, half_width):
    """(ray, primitive) index pairs whose ray passes through the primitive's bounding sphere.

    ``order`` sorts the rays by azimuth and ``extended_azimuth`` is the sorted azimuths three
    times over, shifted by -2 pi, 0 and 2 pi, so that every window, even one across +-pi, is
    one slice of it: only the rays in the window get the cone test.
    """
    count = len(order)
    full = half_width >= np.pi
    first = np.where(full, count, np.searchsorted(extended_azimuth, centre_azimuth - half_width))
    stop = np.where(full, 2 * count,
                    np.searchsorted(extended_azimuth, centre_azimuth + half_width, "right"))
    sizes = stop - first
    prim = np.repeat(np.arange(len(sizes)), sizes)
    position = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes - first, sizes)
    ray = order[position % max(count, 1)]
    close = np.einsum("ij,ij->i", dirs[ray], unit[prim]) >= min_cos[prim]
    return ray[close], prim[close]


def trace(
    primitives: Sequence[Primitives],
    origin: np.ndarray,
    dirs: np.ndarray,
    max_pairs: int = 1 << 20,
) -> Trace:
    """Nearest hit of each unit ray ``dirs`` (R, 3) from ``origin`` among all primitives.

    Primitives go through in batches of about ``max_pairs`` azimuth-window candidates, which
    bounds the memory of the culling step.
    """
    origin = np.asarray(origin, dtype=np.float64)
    azimuth = np.arctan2(dirs[:, 1], dirs[:, 0])
    order = np.argsort(azimuth, kind="stable")
    extended = np.concatenate([azimuth[order] + shift for shift in (-2 * np.pi, 0.0, 2 * np.pi)])
    rays, ts, coss, ids = [np.zeros(0, np.int64)], [np.zeros(0)], [np.zeros(0)], [np.zeros(0, np.int64)]
    first_id = 0
    for group in primitives:
        unit, min_cos, centre_azimuth, half_width = _azimuth_windows(origin, group.kind, group.params)
        # Window sizes, as if the rays were spread evenly in azimuth, decide the batches.
        window = np.minimum(len(dirs), len(dirs) * half_width / np.pi + 1)
        batch_of = np.cumsum(window) // max_pairs
        for batch in np.split(np.arange(len(group.params)), np.flatnonzero(np.diff(batch_of)) + 1):
            ray, prim = _candidate_pairs(dirs, order, extended, unit[batch], min_cos[batch],
                                         centre_azimuth[batch], half_width[batch])
            prim = batch[prim]
            t, cos = INTERSECTORS[group.kind](origin, dirs[ray], group.params[prim])
            hit = np.isfinite(t)
            rays.append(ray[hit]), ts.append(t[hit]), coss.append(cos[hit])
            ids.append(first_id + prim[hit])
        first_id += len(group.params)
    ray, t, cos, ids = (np.concatenate(x) for x in (rays, ts, coss, ids))
    # Per ray, the first pair in (ray, t) order is the nearest hit.
    order = np.lexsort((t, ray))
    ray, first = np.unique(ray[order], return_index=True)
    nearest = order[first]
    best_range = np.full(len(dirs), np.inf)
    best_cos = np.zeros(len(dirs))
    best_id = np.zeros(len(dirs), dtype=np.int64)  # index into the concatenated primitives
    best_range[ray] = t[nearest]
    best_cos[ray] = cos[nearest]
    best_id[ray] = ids[nearest]

    def gather(field: str, dtype) -> np.ndarray:
        values = np.concatenate([getattr(g, field) for g in primitives] + [np.zeros(1)])
        return values.astype(dtype)[best_id]

    return Trace(
        range=best_range,
        cos_incidence=best_cos,
        semantic=gather("semantic", np.uint8),
        instance=gather("instance", np.int32),
        reflectivity=gather("reflectivity", np.float64),
    )


def intersect_ground(origin: np.ndarray, dirs: np.ndarray, ground_z: float = 0.0):
    """Distance to the plane z = ``ground_z`` (``inf`` for rays not going down) and |cos|."""
    with np.errstate(divide="ignore"):
        t = (ground_z - origin[2]) / dirs[:, 2]
    return np.where(t > 0, t, np.inf), np.abs(dirs[:, 2])


# Rays traversed at once by voxels_crossed: bounds its (rays x plane crossings) temporaries to tens of MB.
RAYS_PER_CHUNK = 4096


def voxels_crossed(origin: np.ndarray, ends: np.ndarray, point_range: Sequence[float],
                   voxel_size: Sequence[float]) -> np.ndarray:
    """(X, Y, Z) bool: the voxels of the grid ``point_range`` / ``voxel_size`` that the segments from
    ``origin`` (3,) to ``ends`` (N, 3) cross or end in.

    Exact traversal: a segment from s to e (in voxel units) enters a new voxel at each integer plane
    it crosses, so the voxels it visits are the one holding s and, for each crossing of plane m along
    axis a at t = (m - s_a) / (e_a - s_a), the voxel of s + t (e - s) with coordinate a set to m (going
    up) or m - 1 (going down); plus the one holding e. Only planes inside the grid are crossed.
    """
    lower, size = np.asarray(point_range[:3], np.float64), np.asarray(voxel_size, np.float64)
    shape = grid_shape(point_range, voxel_size)
    start = (np.asarray(origin, np.float64) - lower) / size
    mask = np.zeros(shape, dtype=bool)

    def mark(coords: np.ndarray) -> None:
        coords = coords[((coords >= 0) & (coords < shape)).all(1)]
        mask[coords[:, 0], coords[:, 1], coords[:, 2]] = True

    mark(np.floor(start).astype(np.int64)[None])
    ends = np.asarray(ends, np.float64).reshape(-1, 3)
    for first_ray in range(0, len(ends), RAYS_PER_CHUNK):
        end = (ends[first_ray : first_ray + RAYS_PER_CHUNK] - lower) / size
        mark(np.floor(end).astype(np.int64))
        step = end - start
        for axis in range(3):
            low, high = np.minimum(end[:, axis], start[axis]), np.maximum(end[:, axis], start[axis])
            first = np.maximum(np.floor(low) + 1, 0).astype(np.int64)
            last = np.minimum(np.ceil(high) - 1, shape[axis]).astype(np.int64)
            count = np.maximum(last - first + 1, 0)
            ray = np.repeat(np.arange(len(end)), count)
            plane = first[ray] + np.arange(len(ray)) - np.repeat(np.cumsum(count) - count, count)
            t = (plane - start[axis]) / step[ray, axis]
            coords = np.floor(start + t[:, None] * step[ray]).astype(np.int64)
            coords[:, axis] = np.where(step[ray, axis] > 0, plane, plane - 1)
            mark(coords)
    return mask
