import numpy as np
import pytest

from occbench.data.splits import (
    check_nesting,
    nested_subset,
    read_split,
    sampling_stride,
    subset_size,
    write_split,
)

# 20 scenes of 10 frames; ids sort in temporal order within a scene.
SCENES = {f"{s:04d}_{f:03d}": f"{s:04d}" for s in range(20) for f in range(10)}
IDS = sorted(SCENES)


@pytest.mark.parametrize("seed", [0, 3, 7])
@pytest.mark.parametrize("sampling", ["frames", "interval", "scenes"])
def test_fractions_are_nested_and_sized_for_each_seed(sampling, seed):
    previous: set[str] = set()
    sizes = {}
    for fraction in (1.0, 0.1, 0.01) if sampling == "interval" else (1.0, 0.5, 0.1):
        subset = nested_subset(SCENES, fraction, seed=seed, sampling=sampling)
        assert len(subset) == len(set(subset))
        assert not previous or set(subset) <= previous
        previous = set(subset)
        sizes[fraction] = len(subset)
    expected = {
        "frames": {1.0: 200, 0.5: 100, 0.1: 20},
        "interval": {1.0: 200, 0.1: 20, 0.01: 2},
        "scenes": {1.0: 200, 0.5: 100, 0.1: 20},
    }
    assert sizes == expected[sampling]


def test_interval_keeps_every_kth_frame_and_scenes_keep_whole_scenes():
    assert nested_subset(SCENES, 0.1, 0, "interval") == IDS[::10]
    kept = nested_subset(SCENES, 0.25, 0, "scenes")
    kept_scenes = {SCENES[frame_id] for frame_id in kept}
    assert kept_scenes == {"0000", "0004", "0008", "0012", "0016"}
    assert len(kept) == 10 * len(kept_scenes)  # every frame of a kept scene


@pytest.mark.parametrize("sampling", ["frames", "interval", "scenes"])
def test_subset_depends_on_split_seed_only_not_on_order_of_ids(sampling):
    reordered = dict(reversed(list(SCENES.items())))
    assert nested_subset(SCENES, 0.1, 3, sampling) == nested_subset(reordered, 0.1, 3, sampling)
    # Seeds below the stride (10 here) keep pairwise different frames.
    drawn = [frozenset(nested_subset(SCENES, 0.1, seed, sampling)) for seed in range(10)]
    assert len(set(drawn)) == 10


def test_seed_0_keeps_the_first_and_a_seed_shifts_the_start_cyclically():
    """Seed 0 is the split files written before split seeds existed; seed s starts at the s-th frame (scene)."""
    assert nested_subset(SCENES, 0.1, 0, "frames") == [IDS[i] for i in np.random.default_rng(0).permutation(200)[:20]]
    assert nested_subset(SCENES, 0.1, 3, "interval") == IDS[3::10]
    assert {SCENES[f] for f in nested_subset(SCENES, 0.25, 0, "scenes")} == {"0000", "0004", "0008", "0012", "0016"}
    assert {SCENES[f] for f in nested_subset(SCENES, 0.25, 3, "scenes")} == {"0003", "0007", "0011", "0015", "0019"}
    # 20 scenes at stride 3 from scene 19 on, wrapping: 19, 2, 5, 8, 11, 14, 17 (7 of them, as from scene 0).
    wrapped = {int(SCENES[f]) for f in nested_subset(SCENES, 1 / 3, 19, "scenes")}
    assert wrapped == {19, 2, 5, 8, 11, 14, 17}
    assert nested_subset(SCENES, 1.0, 5, "scenes") == IDS  # every frame, whatever the seed


def test_strides_must_be_whole_and_nest():
    assert sampling_stride(0.2) == 5 and sampling_stride(1 / 3) == 3
    with pytest.raises(ValueError, match="0.3 is not 1/k"):
        sampling_stride(0.3)
    check_nesting([0.01, 0.1, 1.0], "interval")
    check_nesting([0.3, 0.7], "frames")  # random subsets always nest
    with pytest.raises(ValueError, match="strides 2 and 5"):
        check_nesting([0.5, 0.2], "scenes")


def test_subset_size_keeps_at_least_one_frame():
    assert subset_size(0.001, 36) == 1
    assert subset_size(0.1, 36) == 4
    assert subset_size(1.0, 36) == 36
    assert subset_size(0.3, 10) == 3  # no float creep to 4


def test_split_files_round_trip_and_bad_files_are_named(tmp_path):
    path = tmp_path / "labels_0.1.txt"
    write_split(path, ["0000_001", "0000_007"])
    assert read_split(path, set(IDS)) == ["0000_001", "0000_007"]
    write_split(path, ["0000_001", "9999_999"])
    with pytest.raises(ValueError, match=f"{path}: 1 frame id"):
        read_split(path, set(IDS))
    path.write_text("\n")
    with pytest.raises(ValueError, match=f"{path}: split file lists no frames"):
        read_split(path)
