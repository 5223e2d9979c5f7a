"""SPOT's beam re-sampling: change a sweep's beam density to close the cross-sensor gap.

LiDARs differ mostly in beam density, N_beam / (alpha_up - alpha_low) (``beam_density``).
SPOT (Yan et al., arXiv 2309.10527) augments pre-training sweeps by thinning or
densifying their beams (``BeamResampler``: with p = 0.7, then 50/50 down or up):

- ``downsample_beams`` keeps every k-th beam;
- ``upsample_beams`` inserts interpolated beams between neighbouring ones in the
  range image (ring x azimuth), without bridging depth edges.

Both need each point's beam. Where the dataset gives no ring index (KITTI
``.bin`` files), ``estimate_rings`` recovers it by clustering elevation angles.

Ring ids must count beams in elevation order: 0 = lowest (nuScenes, the
synthetic sensor and ``estimate_rings``) or 0 = highest (range-image rows) both
work, since neighbouring ids are neighbouring beams. A converter whose sensor
numbers lasers in firing order must renumber them. Resampled frames are
renumbered the same way (a frame thinned 32 -> 16 has rings 0..15), so they
look like a real sensor with that many beams and the operations compose.

The beam count of a frame without ring index is the ``num_beams`` argument of
``BeamResampler`` or, failing that, ``frame.meta["num_beams"]``; resampling
updates ``meta["num_beams"]`` when the frame has one.

Beam model used by ``estimate_rings``
    A spinning LiDAR's beams are cones of fixed elevation, but seen from the
    frame's origin they are not: each laser sits at its own height on the head
    (HDL-64E: the upper and lower blocks ~8 cm apart) and the frame's origin need
    not be the head's centre (the nuScenes sweep in the tests: ~0.23 m sideways).
    A point at range r is then seen at its beam's elevation plus about
    offset / r: up to several beam spacings within 5 m. The model is therefore
    one effective origin (3 values) plus one vertical laser offset per beam
    (kept near the common one by a ridge penalty, since a beam whose returns all
    lie at one range cannot show its offset) plus one elevation per beam.

    Fitting: (1) a grid search for the origin that makes the elevation
    histogram sharpest, from the few best heights (multi-start); (2) optimal 1-D
    k-means of the elevations (dynamic programming over a fine histogram: no
    initialisation to get wrong, uneven spacing is no problem); (3) alternate
    Gauss-Newton updates of origin, offsets and elevations with re-assignment to
    the nearest beam until nothing changes; keep the start with the smallest
    residual. Measured (tests/data/test_beams.py): 100 % agreement with the ring
    column of the real nuScenes sweep (0.5 s for 34,688 points; its ring 0 is
    the lowest beam, as here), with the scan order of the real KITTI HDL-64E
    scan (0.7 s) and with a simulated HDL-64E whose two blocks differ in spacing
    and height (0.8 s), where reading the true elevation table from the frame's
    origin gets 2 % right.

    Limits: returns closer than ``min_range`` (default 2.5 m: mostly the ego
    vehicle, where the laser offsets dominate) get ring -1; a beam needs returns
    to be found, so ``num_beams`` must be the number of beams that hit something
    (a crop to a camera's view can lose the lowest beams entirely); horizontal
    per-laser offsets and a head tilt are not modelled (measured residuals on
    the real sweeps, 0.002-0.1 degrees, say they need not be).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from occbench.data.frame import Frame

# Returns closer than this (m) are not used to fit or interpolate beams.
MIN_RANGE = 2.5
# How far (m) the effective beam origin may lie from the frame's sensor origin.
MAX_ORIGIN_SHIFT = 0.5
# Ridge weight (rad^2 / m^2) keeping a beam's own vertical offset at the common
# one unless its returns span enough ranges to show it.
OFFSET_RIDGE = 1e-3
# Points used to fit the beam model (an even stride through the sweep); all points are labelled.
FIT_POINTS = 40_000
SHARPNESS_POINTS = 10_000
# Up to this many origin heights (the sharpest, at least 3 cm apart) start a fit.
ORIGIN_STARTS = 3
# Two neighbouring returns are one surface when their ranges differ by less than
# this fraction of the nearer one; otherwise a depth edge lies between them. On
# the real nuScenes sweep (32 -> 16 -> 32) 0.1, 0.2 and 0.3 place new points
# equally well (median 2-4 cm from a held-out return); 0.2 makes twice as many
# as 0.1. Flat ground farther out is left alone: between beams 2.7 degrees
# apart its range changes by more than that.
RANGE_AGREEMENT = 0.2


def elevation_angles(points: np.ndarray, origin=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Elevation (radians, float64) of each point seen from ``origin``; 0 = horizontal."""
    rel = np.asarray(points, dtype=np.float64) - np.asarray(origin, dtype=np.float64)
    return np.arctan2(rel[:, 2], np.hypot(rel[:, 0], rel[:, 1]))


def beam_density(num_beams: int, fov_up_deg: float, fov_down_deg: float) -> float:
    """Beams per degree of vertical field of view: SPOT's measure of the cross-sensor gap."""
    if fov_up_deg <= fov_down_deg:
        raise ValueError(f"field of view needs fov_up_deg > fov_down_deg, got {fov_up_deg} <= {fov_down_deg}")
    return num_beams / (fov_up_deg - fov_down_deg)


# ------------------------------------------------------------------ estimating rings


@dataclass(frozen=True)
class BeamModel:
    """Where a sensor's beams are, as fitted by ``fit_beam_model``.

    Beam k leaves from ``origin + (0, 0, offsets[k])`` at elevation ``elevations[k]``
    (radians, ascending: beam 0 is the lowest). ``rms`` is the fit's residual (radians).
    """

    origin: np.ndarray
    offsets: np.ndarray
    elevations: np.ndarray
    rms: float

    @property
    def num_beams(self) -> int:
        return len(self.elevations)

    def assign(self, points: np.ndarray, min_range: float = MIN_RANGE) -> np.ndarray:
        """The beam (int16, 0 = lowest) of each point; -1 for points closer than ``min_range``."""
        rel = np.asarray(points, dtype=np.float64) - self.origin
        ring = np.full(len(rel), -1, dtype=np.int16)
        far = np.linalg.norm(rel, axis=1) >= min_range
        ring[far] = _nearest_beam(rel[far], self.offsets, self.elevations)
        return ring


def fit_beam_model(points: np.ndarray, num_beams: int, origin=(0.0, 0.0, 0.0),
                   min_range: float = MIN_RANGE) -> BeamModel:
    """Fit ``num_beams`` beams to a sweep's points (see the module docstring for the model)."""
    if num_beams < 2:
        raise ValueError(f"num_beams must be at least 2, got {num_beams}")
    origin = np.asarray(origin, dtype=np.float64)
    pts = np.asarray(points, dtype=np.float64)
    pts = pts[np.linalg.norm(pts - origin, axis=1) >= min_range]
    if len(pts) < 4 * num_beams:
        raise ValueError(
            f"{len(pts)} points lie {min_range} m or more from the sensor: too few to find {num_beams} beams"
        )
    sample = _even_subset(pts, FIT_POINTS)
    fits = [_fit_from(sample, num_beams, start, origin) for start in _origin_starts(sample, num_beams, origin)]
    return min(fits, key=lambda model: model.rms)


def estimate_rings(points: np.ndarray, num_beams: int, origin=(0.0, 0.0, 0.0),
                   min_range: float = MIN_RANGE) -> np.ndarray:
    """Beam index (int16, 0 = lowest beam) of each point, from its elevation; -1 closer than ``min_range``."""
    return fit_beam_model(points, num_beams, origin, min_range).assign(points, min_range)


def _even_subset(points: np.ndarray, limit: int) -> np.ndarray:
    """At most ``limit`` points, an even stride through the array: deterministic and spread over the sweep."""
    if len(points) <= limit:
        return points
    return points[np.linspace(0, len(points) - 1, limit).astype(np.int64)]


def _sharpness(rel: np.ndarray, low: float, width: float, bins: int) -> float:
    """Sum of squared counts of the elevation histogram (linear binning, so it varies smoothly)."""
    pos = (np.arctan2(rel[:, 2], np.hypot(rel[:, 0], rel[:, 1])) - low) / width
    pos = np.clip(pos, 0.0, bins - 1.001)
    left = pos.astype(np.int64)
    frac = pos - left
    hist = np.bincount(left, 1.0 - frac, minlength=bins) + np.bincount(left + 1, frac, minlength=bins)
    return float(hist @ hist)


def _origin_starts(points: np.ndarray, num_beams: int, origin: np.ndarray) -> list[np.ndarray]:
    """Origins where the elevation histogram is sharpest: the few best heights, then x and y for each.

    A grid, not a local search: the sharpness has narrow peaks (on the real KITTI
    scan, one per block of lasers) that a descent steps over.
    """
    sample = _even_subset(points, SHARPNESS_POINTS)
    elev = elevation_angles(sample, origin)
    low, high = np.quantile(elev, [0.001, 0.999])
    width = (high - low) / (num_beams - 1) / 8  # 8 bins per mean beam spacing
    margin = np.radians(5.0)
    bins = int((high - low + 2 * margin) / width) + 2
    low -= margin

    def sharpness(candidate: np.ndarray) -> float:
        return _sharpness(sample - candidate, low, width, bins)

    def best_along(start: np.ndarray, axis: int, steps: np.ndarray) -> np.ndarray:
        scores = []
        for step in steps:
            candidate = start.copy()
            candidate[axis] += step
            scores.append(sharpness(candidate))
        best = start.copy()
        best[axis] += steps[int(np.argmax(scores))]
        return best

    heights = np.arange(-MAX_ORIGIN_SHIFT, MAX_ORIGIN_SHIFT + 1e-9, 0.01)
    scores = np.array([sharpness(origin + [0.0, 0.0, dz]) for dz in heights])
    chosen: list[float] = []
    for index in np.argsort(-scores, kind="stable"):
        if all(abs(heights[index] - dz) >= 0.03 for dz in chosen):
            chosen.append(float(heights[index]))
        if len(chosen) == ORIGIN_STARTS:
            break
    shifts = np.arange(-MAX_ORIGIN_SHIFT, MAX_ORIGIN_SHIFT + 1e-9, 0.01)
    fine = np.arange(-0.02, 0.02 + 1e-9, 0.002)
    starts = []
    for dz in chosen:
        start = origin + [0.0, 0.0, dz]
        start = best_along(start, 0, shifts)
        start = best_along(start, 1, shifts)
        starts.append(best_along(start, 2, fine))
    return starts


def _kmeans_1d(values: np.ndarray, k: int) -> np.ndarray:
    """Optimal 1-D k-means (dynamic programming on a fine histogram): cluster index per value, ascending."""
    bins = int(np.clip(8 * k, 64, 2048))
    low, high = np.quantile(values, [0.0005, 0.9995])
    if high <= low:
        raise ValueError(f"the elevations take fewer than {k} distinct values: cannot find {k} beams")
    index = np.clip(((values - low) / (high - low) * bins).astype(np.int64), 0, bins - 1)
    weight = np.bincount(index, minlength=bins).astype(np.float64)
    if np.count_nonzero(weight) < k:
        raise ValueError(f"the elevations take fewer than {k} distinct values: cannot find {k} beams")
    first = np.bincount(index, values, minlength=bins)
    second = np.bincount(index, values * values, minlength=bins)
    cum_w, cum_1, cum_2 = (np.concatenate([[0.0], np.cumsum(a)]) for a in (weight, first, second))
    i = np.arange(bins)[:, None]
    j = np.arange(bins)[None, :]
    w = cum_w[j + 1] - cum_w[i]
    s = cum_1[j + 1] - cum_1[i]
    with np.errstate(divide="ignore", invalid="ignore"):
        cost = np.where(w > 0, cum_2[j + 1] - cum_2[i] - s * s / w, 0.0)
    cost = np.where(j >= i, np.maximum(cost, 0.0), np.inf)  # cost[i, j]: one cluster over bins i..j
    best = cost[0]
    starts_of = []
    for _ in range(1, k):
        total = np.concatenate([[np.inf], best[:-1]])[:, None] + cost
        start = np.argmin(total, axis=0)
        starts_of.append(start)
        best = total[start, np.arange(bins)]
    starts = []
    end = bins - 1
    for start in reversed(starts_of):
        starts.append(start[end])
        end = start[end] - 1
    return np.searchsorted(np.array(starts[::-1]), index, side="right")


def _nearest_beam(rel: np.ndarray, offsets: np.ndarray, elevations: np.ndarray,
                  guess: np.ndarray | None = None) -> np.ndarray:
    """Nearest beam of each point (relative to the model origin), searching two beams either side of a guess."""
    rho = np.hypot(rel[:, 0], rel[:, 1])
    if guess is None:
        seen = np.arctan2(rel[:, 2] - np.median(offsets), rho)
        guess = np.searchsorted((elevations[1:] + elevations[:-1]) / 2, seen)
    last = len(elevations) - 1
    for _ in range(2):  # a second pass follows a point whose guess was off by more than the window
        candidates = np.clip(guess[:, None] + np.arange(-2, 3)[None, :], 0, last)
        error = np.abs(np.arctan2(rel[:, 2:3] - offsets[candidates], rho[:, None]) - elevations[candidates])
        guess = candidates[np.arange(len(rel)), np.argmin(error, axis=1)]
    return guess


def _fit_from(points: np.ndarray, k: int, start: np.ndarray, origin: np.ndarray,
              max_iterations: int = 60) -> BeamModel:
    """Alternate Gauss-Newton updates of the beam model with re-assignment, from one origin."""
    centre = start.copy()
    label = _kmeans_1d(elevation_angles(points, centre), k)
    offsets = np.zeros(k)
    elevations = np.zeros(k)
    for _ in range(max_iterations):
        rel = points - centre
        rho = np.hypot(rel[:, 0], rel[:, 1])
        height = rel[:, 2] - offsets[label]
        seen = np.arctan2(height, rho)
        count = np.bincount(label, minlength=k)
        filled = count > 0
        sums = np.bincount(label, seen, minlength=k)
        elevations = np.where(filled, sums / np.maximum(count, 1), elevations)
        # Derivatives of each point's elevation by the origin (x, y, z) and by its beam's offset.
        r2 = rho * rho + height * height
        jac = np.stack([height * rel[:, 0] / (r2 * rho), height * rel[:, 1] / (r2 * rho), -rho / r2], axis=1)
        d_offset = jac[:, 2]  # raising one laser acts on its points as raising the origin does

        def centred(values: np.ndarray) -> np.ndarray:  # per-beam mean removed: the elevations absorb it
            return values - (np.bincount(label, values, minlength=k) / np.maximum(count, 1))[label]

        jac_c = np.stack([centred(jac[:, axis]) for axis in range(3)], axis=1)
        off_c = centred(d_offset)
        resid = seen - elevations[label]
        normal = np.zeros((k + 3, k + 3))
        normal[:3, :3] = jac_c.T @ jac_c
        cross = np.stack([np.bincount(label, jac_c[:, axis] * off_c, minlength=k) for axis in range(3)])
        normal[:3, 3:] = cross
        normal[3:, :3] = cross.T
        normal[3:, 3:] = np.diag(np.bincount(label, off_c * off_c, minlength=k) + OFFSET_RIDGE)
        rhs = np.concatenate([-jac_c.T @ resid,
                              -np.bincount(label, off_c * resid, minlength=k) - OFFSET_RIDGE * offsets])
        step = np.linalg.lstsq(normal, rhs, rcond=None)[0]
        centre = np.clip(centre + step[:3], origin - MAX_ORIGIN_SHIFT, origin + MAX_ORIGIN_SHIFT)
        offsets = np.clip(offsets + step[3:], -MAX_ORIGIN_SHIFT, MAX_ORIGIN_SHIFT)
        rel = points - centre
        seen = np.arctan2(rel[:, 2] - offsets[label], np.hypot(rel[:, 0], rel[:, 1]))
        elevations = np.where(filled, np.bincount(label, seen, minlength=k) / np.maximum(count, 1), elevations)
        relabelled = _nearest_beam(rel, offsets, elevations, guess=label)
        settled = np.array_equal(relabelled, label) and np.abs(step).max() < 1e-6
        label = relabelled
        if settled:
            break
    seen = np.arctan2(rel[:, 2] - offsets[label], np.hypot(rel[:, 0], rel[:, 1]))
    count = np.bincount(label, minlength=k)
    elevations = np.where(count > 0, np.bincount(label, seen, minlength=k) / np.maximum(count, 1), elevations)
    rms = float(np.sqrt(np.mean((seen - elevations[label]) ** 2)))
    order = np.argsort(elevations, kind="stable")
    return BeamModel(origin=centre, offsets=offsets[order], elevations=elevations[order], rms=rms)


# ------------------------------------------------------------------ re-sampling


def downsample_beams(frame: Frame, factor: int, rings: np.ndarray | None = None) -> Frame:
    """A new frame with only the beams whose ring id is a multiple of ``factor``, renumbered 0, 1, ...

    ``rings`` overrides ``frame.ring`` (e.g. ``estimate_rings`` for a frame without
    ring index). Points of unknown ring (-1) belong to no kept beam and are dropped;
    boxes, pose and extras are kept.
    """
    _check_factor(factor)
    ring = _rings_of(frame, rings)
    keep = (ring >= 0) & (ring % factor == 0)
    meta = dict(frame.meta)
    if "num_beams" in meta:
        meta["num_beams"] = -(-int(meta["num_beams"]) // factor)
    return _with_points(frame, meta, points=frame.points[keep], intensity=frame.intensity[keep],
                        ring=ring[keep] // factor, semantic=frame.semantic[keep], instance=frame.instance[keep])


def upsample_beams(frame: Frame, factor: int, rings: np.ndarray | None = None, *,
                   min_range: float = MIN_RANGE, range_agreement: float = RANGE_AGREEMENT) -> Frame:
    """A new frame with ``factor - 1`` interpolated beams between each pair of neighbouring beams.

    Works in the range image (ring x azimuth), each return at its exact azimuth
    rather than in a binned column: bins whose edges fall on the sensor's firing
    grid split a column's returns at random, and lasers fire at slightly
    different azimuths. A return's neighbour is the return of the next ring
    nearest in azimuth, if within 3/4 of the azimuth step (the median step
    between a beam's neighbouring returns). A new point is made for each return
    whose neighbour exists, neither being closer than ``min_range``, and whose
    range agrees with it (differs by less than ``range_agreement`` times the
    nearer one); otherwise a depth edge (or nothing) lies between them and
    interpolating would invent a surface. Elevation and azimuth are interpolated
    linearly, range through its inverse, which is exact to first order for any
    plane (ground, walls): linear range would put new ground points below the
    ground. A new point copies intensity, class and instance from whichever
    neighbour is nearer to it. Original beam r becomes ring ``r * factor``, the
    new ones fill in between; the original points come first, unchanged.
    """
    _check_factor(factor)
    ring = _rings_of(frame, rings).astype(np.int64)
    origin = frame.sensor_origin.astype(np.float64)
    rel = frame.points.astype(np.float64) - origin
    distance = np.linalg.norm(rel, axis=1)
    azimuth = np.arctan2(rel[:, 1], rel[:, 0])
    elevation = np.arctan2(rel[:, 2], np.hypot(rel[:, 0], rel[:, 1]))
    anchor = np.flatnonzero((ring >= 0) & (distance >= min_range))
    a, b = _column_neighbours(anchor, ring, azimuth, frame)
    near = np.minimum(distance[a], distance[b])
    same_surface = np.abs(distance[a] - distance[b]) < range_agreement * near
    a, b = a[same_surface], b[same_surface]

    t = (np.arange(1, factor) / factor)[None, :]
    new_elevation = elevation[a, None] + t * (elevation[b] - elevation[a])[:, None]
    turn = np.angle(np.exp(1j * (azimuth[b] - azimuth[a])))  # shortest way round, across +-pi too
    new_azimuth = azimuth[a, None] + t * turn[:, None]
    new_distance = 1.0 / (1.0 / distance[a, None] + t * (1.0 / distance[b] - 1.0 / distance[a])[:, None])
    direction = np.stack([np.cos(new_elevation) * np.cos(new_azimuth),
                          np.cos(new_elevation) * np.sin(new_azimuth),
                          np.sin(new_elevation)], axis=-1)
    new_points = (new_distance[..., None] * direction).reshape(-1, 3)
    a_rep, b_rep = np.repeat(a, factor - 1), np.repeat(b, factor - 1)
    nearer_a = np.linalg.norm(new_points - rel[a_rep], axis=1) <= np.linalg.norm(new_points - rel[b_rep], axis=1)
    source = np.where(nearer_a, a_rep, b_rep)
    new_ring = (ring[a, None] * factor + np.arange(1, factor)[None, :]).ravel()

    meta = dict(frame.meta)
    if "num_beams" in meta:
        meta["num_beams"] = (int(meta["num_beams"]) - 1) * factor + 1
    return _with_points(
        frame, meta,
        points=np.concatenate([frame.points, (new_points + origin).astype(np.float32)]),
        intensity=np.concatenate([frame.intensity, frame.intensity[source]]),
        ring=np.concatenate([np.where(ring >= 0, ring * factor, -1), new_ring]),
        semantic=np.concatenate([frame.semantic, frame.semantic[source]]),
        instance=np.concatenate([frame.instance, frame.instance[source]]),
    )


def _with_points(frame: Frame, meta: dict, **per_point: np.ndarray) -> Frame:
    """``frame`` with new per-point arrays and meta; boxes, pose and extras kept."""
    return Frame(**per_point, boxes=frame.boxes, box_labels=frame.box_labels, pose=frame.pose,
                 sensor_origin=frame.sensor_origin, meta=meta, extras=dict(frame.extras))


@dataclass(frozen=True)
class BeamResampler:
    """SPOT's beam re-sampling augmentation: with probability ``p`` thin or densify the beams, 50/50.

    A frame without ring index (every ring -1) gets ``estimate_rings`` with
    ``num_beams`` or, when that is None, ``frame.meta["num_beams"]``; estimating
    costs ~0.5 s a sweep, so a converter that stores estimated rings saves it
    every epoch.
    """

    p: float = 0.7
    down_factor: int = 2
    up_factor: int = 2
    num_beams: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"BeamResampler: p must lie in [0, 1], got {self.p}")
        _check_factor(self.down_factor)
        _check_factor(self.up_factor)

    def __call__(self, frame: Frame, rng: np.random.Generator) -> Frame:
        if rng.random() >= self.p:
            return frame
        thin = rng.random() < 0.5
        rings = frame.ring if (frame.ring >= 0).any() else self._estimate(frame)
        if thin:
            return downsample_beams(frame, self.down_factor, rings)
        return upsample_beams(frame, self.up_factor, rings)

    def _estimate(self, frame: Frame) -> np.ndarray:
        num_beams = self.num_beams if self.num_beams is not None else frame.meta.get("num_beams")
        if num_beams is None:
            raise ValueError(
                f"{_describe(frame)} has no ring index and no meta['num_beams']: give BeamResampler num_beams"
            )
        return estimate_rings(frame.points, int(num_beams), frame.sensor_origin)


def _check_factor(factor: int) -> None:
    if int(factor) != factor or factor < 2:
        raise ValueError(f"a beam re-sampling factor must be an integer >= 2, got {factor}")


def _describe(frame: Frame) -> str:
    meta = frame.meta
    return f"frame {meta.get('dataset', '?')}/{meta.get('sequence', '?')}/{meta.get('index', '?')}"


def _rings_of(frame: Frame, rings: np.ndarray | None) -> np.ndarray:
    ring = frame.ring if rings is None else np.asarray(rings)
    if ring.shape != (frame.num_points,):
        raise ValueError(f"{_describe(frame)}: rings has shape {ring.shape}, expected ({frame.num_points},)")
    if not (ring >= 0).any():
        raise ValueError(f"{_describe(frame)} has no ring index: pass rings=estimate_rings(...)")
    return ring


def _column_neighbours(anchor: np.ndarray, ring: np.ndarray, azimuth: np.ndarray,
                       frame: Frame) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (a, b) of returns: b is the return of ring ring[a] + 1 nearest in azimuth to a, if near enough."""
    order = anchor[np.lexsort((azimuth[anchor], ring[anchor]))]
    rings, azimuths = ring[order], azimuth[order]
    steps = np.diff(azimuths)[np.diff(rings) == 0]
    if steps.size == 0:
        raise ValueError(f"{_describe(frame)}: no beam has two returns to measure the azimuth step from")
    tolerance = 0.75 * np.median(steps)
    above_first = np.searchsorted(rings, rings + 1, side="left")  # the ring above spans [first, last)
    above_last = np.searchsorted(rings, rings + 1, side="right")
    span = np.maximum(above_last - above_first, 1)
    # The two returns of the ring above either side of a's azimuth, wrapping round at the ring's ends.
    key = rings * 8.0 + azimuths  # azimuths lie in [-pi, pi]: rings stay apart
    at = np.searchsorted(key, (rings + 1) * 8.0 + azimuths)
    candidates = above_first[:, None] + (np.stack([at - 1, at], axis=1) - above_first[:, None]) % span[:, None]
    candidates = np.minimum(candidates, len(order) - 1)
    gap = np.abs(np.angle(np.exp(1j * (azimuths[candidates] - azimuths[:, None]))))
    best = candidates[np.arange(len(order)), np.argmin(gap, axis=1)]
    paired = (above_last > above_first) & (gap.min(axis=1) <= tolerance)
    return order[paired], order[best[paired]]
