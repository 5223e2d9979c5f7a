from pathlib import Path

import numpy as np
import pytest

from occbench.data.beams import (
    MIN_RANGE,
    BeamResampler,
    beam_density,
    downsample_beams,
    elevation_angles,
    estimate_rings,
    fit_beam_model,
    upsample_beams,
)
from occbench.data.frame import Frame

REAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "real"
NUSCENES = REAL / "nuscenes_LIDAR_TOP_1532402927647951.pcd.bin"
KITTI = REAL / "kitti_000008.bin"


def real_file(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path.name} is absent: the real LiDAR samples are read from {REAL.resolve()}")
    return path


def make_frame(points, ring, semantic=None, intensity=None, **meta) -> Frame:
    n = len(points)
    return Frame(
        points=points,
        intensity=np.linspace(0, 1, n) if intensity is None else intensity,
        ring=ring,
        semantic=np.arange(n) % 12 if semantic is None else semantic,
        instance=np.arange(n),
        boxes=np.array([[5, 0, 0, 4, 2, 1.5, 0.3]]),
        box_labels=np.array([8]),
        meta={"dataset": "test", "sequence": "s", "index": 0, **meta},
        extras={"occupancy": np.zeros((2, 2, 2), np.uint8)},
    )


@pytest.fixture(scope="module")
def nuscenes() -> Frame:
    """The real 32-beam nuScenes sweep: x, y, z, intensity 0..255, ring 0..31."""
    raw = np.fromfile(real_file(NUSCENES), dtype=np.float32).reshape(-1, 5)
    return make_frame(raw[:, :3], raw[:, 4].astype(np.int16), intensity=raw[:, 3] / 255, num_beams=32)


def sweep(elevations_deg, heights, head=(0.0, 0.0, 0.0), step_deg=0.4, seed=0):
    """A simulated spinning LiDAR in a street: ground 1.73 m below, walls 5-19 m around.

    Beam k leaves from ``head + (0, 0, heights[k])`` at ``elevations_deg[k]`` (ascending),
    like a real head whose lasers sit at their own heights. 1 cm range noise, 5 % dropout.
    """
    rng = np.random.default_rng(seed)
    elevation = np.radians(np.asarray(elevations_deg, dtype=np.float64))[:, None]
    azimuth = np.radians(np.arange(-180, 180, step_deg))[None, :]
    beam = np.broadcast_to(np.arange(elevation.shape[0])[:, None], (elevation.shape[0], azimuth.shape[1]))
    start = np.asarray(head, dtype=np.float64) + np.stack(
        np.broadcast_arrays(0.0, 0.0, np.asarray(heights, dtype=np.float64)[beam]), axis=-1
    )
    direction = np.stack(np.broadcast_arrays(np.cos(elevation) * np.cos(azimuth),
                                             np.cos(elevation) * np.sin(azimuth), np.sin(elevation)), axis=-1)
    with np.errstate(divide="ignore"):
        to_ground = np.where(direction[..., 2] < 0, (-1.73 - start[..., 2]) / direction[..., 2], np.inf)
    to_wall = (12 + 5 * np.sin(3 * azimuth) + 2 * np.cos(7 * azimuth)) / np.cos(elevation)
    to_wall = np.where(start[..., 2] + to_wall * direction[..., 2] < 3.0, to_wall, np.inf)
    distance = np.minimum(to_ground, to_wall) + rng.normal(0, 0.01, beam.shape)
    keep = np.isfinite(distance) & (rng.random(beam.shape) > 0.05)
    points = start + distance[..., None] * direction
    return points[keep].astype(np.float32), beam[keep].astype(np.int16)


def nearest_in_ring(queries, query_ring, points, ring) -> np.ndarray:
    """Distance from each query to the nearest of the 8 returns of ring ``query_ring`` closest in azimuth."""
    out = np.full(len(queries), np.inf)
    for r in np.unique(query_ring):
        mine, theirs = np.flatnonzero(query_ring == r), points[ring == r]
        if len(theirs) == 0:
            continue
        order = np.argsort(np.arctan2(theirs[:, 1], theirs[:, 0]))
        theirs = theirs[order]
        at = np.searchsorted(np.arctan2(theirs[:, 1], theirs[:, 0]),
                             np.arctan2(queries[mine, 1], queries[mine, 0]))
        around = (at[:, None] + np.arange(-4, 4)[None, :]) % len(theirs)
        out[mine] = np.linalg.norm(theirs[around] - queries[mine, None, :], axis=-1).min(axis=1)
    return out


# ------------------------------------------------------------------ helpers


def test_elevation_and_beam_density():
    points = np.array([[10.0, 0, 0], [1, 0, 1], [0, 3, -3], [1, 1, 5]])
    np.testing.assert_allclose(elevation_angles(points, origin=(1.0, 1.0, 5.0))[:3],
                               np.arctan2([-5, -4, -8], [np.hypot(9, 1), 1, np.hypot(1, 2)]))
    assert beam_density(32, 10.0, -30.0) == pytest.approx(0.8)  # nuScenes HDL-32E
    assert beam_density(64, 2.0, -24.8) == pytest.approx(64 / 26.8)  # KITTI HDL-64E
    with pytest.raises(ValueError, match="fov_up_deg > fov_down_deg"):
        beam_density(32, -30.0, 10.0)


# ------------------------------------------------------------------ estimating rings


def test_nuscenes_ring_zero_is_the_lowest_beam(nuscenes):
    """nuScenes numbers its beams bottom-up (ring 0 at -30.6 deg, ring 31 at +10.6 deg): no flip needed."""
    far = np.linalg.norm(nuscenes.points, axis=1) >= MIN_RANGE
    elevation = np.degrees(elevation_angles(nuscenes.points[far]))
    mean = np.bincount(nuscenes.ring[far], elevation) / np.bincount(nuscenes.ring[far])
    assert np.all(np.diff(mean) > 0.9)
    assert mean[0] == pytest.approx(-30.6, abs=0.5) and mean[31] == pytest.approx(10.7, abs=0.5)


def test_estimated_rings_recover_the_nuscenes_ring_column(nuscenes):
    estimated = estimate_rings(nuscenes.points, 32, nuscenes.sensor_origin)
    far = np.linalg.norm(nuscenes.points, axis=1) >= MIN_RANGE
    # A quarter of the sweep lies within 2.5 m: no-return placeholders at the origin, the ego vehicle.
    assert np.array_equal(estimated >= 0, far) and far.sum() == 26_162
    truth, found = nuscenes.ring[far].astype(int), estimated[far].astype(int)
    confusion = np.zeros((32, 32), int)
    np.add.at(confusion, (truth, found), 1)
    relabel = confusion.argmax(axis=1)
    assert sorted(relabel) == list(range(32)), "not a one-to-one relabelling"
    agreement = confusion[np.arange(32), relabel].sum() / far.sum()
    assert agreement >= 0.995  # measured: 1.0
    assert np.array_equal(relabel, np.arange(32))  # both count from the lowest beam
    elevation = elevation_angles(nuscenes.points[far])
    assert np.all(np.diff(np.bincount(found, elevation) / np.bincount(found)) > 0)


def kitti_scan_rings(points: np.ndarray) -> np.ndarray:
    """Reference beams of the KITTI scan from its storage order, counted from the lowest beam.

    The file stores one laser after the other, each sweeping left from straight
    ahead to the crop's edge at +40 deg, jumping to -40 deg and coming back to
    straight ahead: a beam ends where the azimuth crosses zero from below.
    """
    azimuth = np.degrees(np.arctan2(points[:, 1], points[:, 0]))
    wraps = np.concatenate([[0], np.cumsum(np.diff(azimuth) < -20)])
    top_down = wraps - (azimuth < 0)
    return top_down.max() - top_down


def test_estimated_rings_follow_the_scan_order_of_a_real_kitti_scan():
    """A real HDL-64E: two blocks of lasers with different spacing (1/3 and 1/2 deg) and heights."""
    points = np.fromfile(real_file(KITTI), dtype=np.float32).reshape(-1, 4)[:, :3]
    reference = kitti_scan_rings(points)
    beams = reference.max() + 1
    assert beams == 46  # the crop to the front camera loses the 18 lowest beams
    model = fit_beam_model(points, beams)
    estimated = model.assign(points)
    assert (estimated >= 0).all()  # the nearest return is 3.7 m away
    assert np.mean(estimated == reference) >= 0.99  # measured: 1.0
    spacing = np.degrees(np.diff(model.elevations))
    assert spacing[:12].mean() == pytest.approx(0.5, abs=0.1)  # lower block
    assert spacing[-20:].mean() == pytest.approx(0.36, abs=0.05)  # upper block


def test_estimate_rings_copes_with_uneven_spacing_and_laser_offsets():
    """HDL-64E-like: 32 beams 1/3 deg apart over 32 beams 1/2 deg apart, the blocks 7.5 cm apart in
    height, the head 15 cm off the frame's origin."""
    upper = np.linspace(-8.33, 2.0, 32)
    lower = np.linspace(-24.33, -8.83, 32)
    heights = np.concatenate([np.full(32, 0.125), np.full(32, 0.2)])
    points, beam = sweep(np.concatenate([lower, upper]), heights, head=(0.04, -0.15, 0.0))
    model = fit_beam_model(points, 64)
    estimated = model.assign(points)
    far = estimated >= 0
    assert far.mean() > 0.99
    assert np.mean(estimated[far] == beam[far]) >= 0.99  # measured: 1.0
    # The upper block sees walls at many ranges, which pins its lasers' height and the head's position.
    np.testing.assert_allclose(model.origin[:2], [0.04, -0.15], atol=0.01)
    np.testing.assert_allclose(model.origin[2] + model.offsets[32:], 0.2, atol=0.01)
    np.testing.assert_allclose(np.degrees(model.elevations[32:]), upper, atol=0.02)
    # Reading the true elevation table from the frame's origin mixes the beams up.
    table = np.radians(np.concatenate([lower, upper]))
    naive = np.searchsorted((table[1:] + table[:-1]) / 2, elevation_angles(points))
    assert np.mean(naive == beam) < 0.5  # measured: 0.02


def test_estimate_rings_says_when_it_cannot_work():
    points, _ = sweep(np.linspace(-20, 0, 8), np.zeros(8), step_deg=30)
    with pytest.raises(ValueError, match="at least 2"):
        estimate_rings(points, 1)
    with pytest.raises(ValueError, match="too few to find 32 beams"):
        estimate_rings(points, 32)


# ------------------------------------------------------------------ down-sampling


def test_downsample_keeps_exactly_the_even_rings(nuscenes):
    thinned = downsample_beams(nuscenes, 2)
    even = nuscenes.ring % 2 == 0
    assert thinned.num_points == 16 * 1084  # every ring of the sweep has 1084 points
    np.testing.assert_array_equal(thinned.points, nuscenes.points[even])
    np.testing.assert_array_equal(thinned.ring, nuscenes.ring[even] // 2)
    for name in ("intensity", "semantic", "instance"):
        np.testing.assert_array_equal(getattr(thinned, name), getattr(nuscenes, name)[even])
    np.testing.assert_array_equal(thinned.boxes, nuscenes.boxes)
    assert thinned.extras.keys() == nuscenes.extras.keys()
    assert thinned.meta["num_beams"] == 16 and nuscenes.meta["num_beams"] == 32
    assert nuscenes.num_points == 32 * 1084  # the input is left alone


def test_downsample_by_given_rings_drops_unknown_and_needs_some_ring():
    points = np.random.default_rng(0).normal(size=(9, 3)) + [10, 0, 0]
    frame = make_frame(points, np.full(9, -1))
    rings = np.array([0, 1, 2, 3, 4, 5, -1, 6, 3])
    thinned = downsample_beams(frame, 3, rings=rings)
    np.testing.assert_array_equal(thinned.points, points[[0, 3, 7, 8]].astype(np.float32))
    np.testing.assert_array_equal(thinned.ring, [0, 1, 2, 1])
    with pytest.raises(ValueError, match="test/s/0 has no ring index"):
        downsample_beams(frame, 2)
    with pytest.raises(ValueError, match=r"rings has shape \(3,\)"):
        downsample_beams(frame, 2, rings=np.zeros(3))
    with pytest.raises(ValueError, match="integer >= 2"):
        downsample_beams(frame, 1, rings=rings)


# ------------------------------------------------------------------ up-sampling


def test_upsampled_points_lie_on_the_held_out_rings(nuscenes):
    thinned = downsample_beams(nuscenes, 2)
    dense = upsample_beams(thinned, 2)
    original, new = slice(0, thinned.num_points), slice(thinned.num_points, None)
    np.testing.assert_array_equal(dense.points[original], thinned.points)
    np.testing.assert_array_equal(dense.ring[original], thinned.ring * 2)
    assert np.all(dense.ring[new] % 2 == 1) and dense.meta["num_beams"] == 31
    far = np.linalg.norm(nuscenes.points, axis=1) >= MIN_RANGE
    created = dense.points[new].astype(np.float64)
    assert len(created) > 0.4 * np.sum(far & (nuscenes.ring % 2 == 1))  # measured: 7,264 of 13,258
    # New ring 2j + 1 stands in for the held-out ring 2j + 1, between the kept rings 2j and 2j + 2.
    true_points, true_ring = nuscenes.points[far].astype(np.float64), nuscenes.ring[far]
    to_held_out = nearest_in_ring(created, dense.ring[new], true_points, true_ring)
    to_kept = np.minimum(nearest_in_ring(created, dense.ring[new] - 1, true_points, true_ring),
                         nearest_in_ring(created, dense.ring[new] + 1, true_points, true_ring))
    # Measured: median 1.8 cm from a held-out return, 0.06 of the way to the nearest kept return.
    assert np.median(to_held_out) < 0.05
    assert np.median(to_held_out / to_kept) < 0.15
    # A new point copies its attributes from a neighbour: a return of the ring below or above, in
    # the same column (the fixture's instance ids are the sweep's point indices).
    source = dense.instance[new]
    assert np.all(np.abs(nuscenes.ring[source] - dense.ring[new]) == 1)
    turn = np.angle(np.exp(1j * (np.arctan2(created[:, 1], created[:, 0])
                                 - np.arctan2(nuscenes.points[source, 1], nuscenes.points[source, 0]))))
    assert np.degrees(np.abs(turn)).max() < 0.5
    np.testing.assert_array_equal(dense.intensity[new], nuscenes.intensity[source])
    np.testing.assert_array_equal(dense.semantic[new], nuscenes.semantic[source])


def wall_before_background(rows_deg, step_deg=1.0):
    """A range image: a 0.5 m high wall 10 m ahead (plane x = 10) in front of a background 40 m away."""
    elevation = np.radians(np.asarray(rows_deg, dtype=np.float64))[:, None]
    azimuth = np.radians(np.arange(-30, 30.01, step_deg))[None, :]
    direction = np.stack(np.broadcast_arrays(np.cos(elevation) * np.cos(azimuth),
                                             np.cos(elevation) * np.sin(azimuth), np.sin(elevation)), axis=-1)
    to_wall = 10.0 / direction[..., 0]
    on_wall = to_wall * direction[..., 2] <= 0.5
    distance = np.where(on_wall, to_wall, 40.0)
    points = (distance[..., None] * direction).reshape(-1, 3)
    ring = np.broadcast_to(np.arange(len(rows_deg))[:, None], on_wall.shape).ravel()
    semantic = np.where(on_wall, 5, 4).ravel()
    return make_frame(points, ring, semantic=semantic), on_wall


def test_upsampling_does_not_bridge_a_depth_edge():
    rows = np.arange(-10, 10.1, 2.0)  # the wall's top edge lies between the rows at +2 and +4 deg
    frame, on_wall = wall_before_background(rows)
    dense = upsample_beams(frame, 2)
    created = dense.points[frame.num_points:].astype(np.float64)
    distance = np.linalg.norm(created, axis=1)
    wall = np.abs(created[:, 0] - 10.0) < 5e-3  # inverse-range interpolation keeps planes flat
    background = np.abs(distance - 40.0) < 1e-3
    assert np.all(wall ^ background)
    assert not np.any((distance > 12) & (distance < 39))  # nothing between wall (<= 11.7 m) and background
    top = int(np.flatnonzero(rows == 2.0)[0])
    assert not np.any(dense.ring[frame.num_points:] == 2 * top + 1)
    columns = on_wall.shape[1]
    assert wall.sum() == top * columns and background.sum() == (len(rows) - top - 2) * columns
    np.testing.assert_array_equal(dense.semantic[frame.num_points:][wall], 5)
    np.testing.assert_array_equal(dense.semantic[frame.num_points:][background], 4)


def test_upsampling_by_three_numbers_the_new_rings_in_between():
    frame, _ = wall_before_background([-6.0, -3.0, 0.0])  # all on the wall
    dense = upsample_beams(frame, 3)
    new = slice(frame.num_points, None)
    assert sorted(np.unique(dense.ring)) == list(range(7))
    np.testing.assert_array_equal(dense.ring[: frame.num_points], frame.ring * 3)
    elevation = np.degrees(elevation_angles(dense.points[new]))
    for ring, expected in ((1, -5.0), (2, -4.0), (4, -2.0), (5, -1.0)):
        np.testing.assert_allclose(elevation[dense.ring[new] == ring], expected, atol=1e-4)
    np.testing.assert_allclose(dense.points[new][:, 0], 10.0, atol=5e-3)  # 3 deg apart: off by 3 mm


# ------------------------------------------------------------------ the augmentation


def small_sweep(**meta) -> Frame:
    points, beam = sweep(np.linspace(-15, 5, 16), np.zeros(16), step_deg=2.0)
    return make_frame(points, beam, **meta)


def test_beam_resampler_applies_p_then_half_down_half_up():
    frame = small_sweep()
    augment = BeamResampler(p=0.7)
    rng = np.random.default_rng(0)
    outcomes = []
    for _ in range(400):
        out = augment(frame, rng)
        outcomes.append(np.sign(out.num_points - frame.num_points))
    kept, thinned, densified = (np.mean(np.array(outcomes) == s) for s in (0, -1, 1))
    assert kept == pytest.approx(0.3, abs=0.07)
    assert thinned == pytest.approx(0.35, abs=0.07) and densified == pytest.approx(0.35, abs=0.07)
    assert BeamResampler(p=0.0)(frame, rng) is frame
    again = [BeamResampler()(frame, np.random.default_rng(5)).num_points for _ in range(2)]
    assert again[0] == again[1]
    with pytest.raises(ValueError, match="p must lie in"):
        BeamResampler(p=1.5)


def test_beam_resampler_estimates_missing_rings_from_the_beam_count():
    frame = small_sweep(num_beams=16)
    truth = frame.ring.copy()
    frame.ring[:] = -1
    rng = np.random.default_rng(1)
    results = [BeamResampler(p=1.0)(frame, rng) for _ in range(6)]
    thinned = next(out for out in results if out.num_points < frame.num_points)
    np.testing.assert_array_equal(thinned.points, frame.points[truth % 2 == 0])
    assert thinned.meta["num_beams"] == 8
    densified = next(out for out in results if out.num_points > frame.num_points)
    np.testing.assert_array_equal(densified.ring[: frame.num_points], truth * 2)
    del frame.meta["num_beams"]
    with pytest.raises(ValueError, match="test/s/0 has no ring index and no meta"):
        BeamResampler(p=1.0)(frame, rng)
    assert BeamResampler(p=1.0, num_beams=16)(frame, rng).ring.min() >= 0
