import pytest

from occbench.data.splits import nested_subset, read_split, write_split

IDS = [f"{i:06d}" for i in range(200)]


def test_fractions_are_nested_and_sized():
    sizes = {}
    previous: set[str] = set()
    for fraction in (0.01, 0.1, 0.5, 1.0):
        subset = nested_subset(IDS, fraction, seed=3)
        assert len(subset) == len(set(subset))
        assert previous <= set(subset)
        previous = set(subset)
        sizes[fraction] = len(subset)
    assert sizes == {0.01: 2, 0.1: 20, 0.5: 100, 1.0: 200}


def test_subset_depends_on_split_seed_only_not_on_order_of_ids():
    assert nested_subset(IDS, 0.1, seed=3) == nested_subset(list(reversed(IDS)), 0.1, seed=3)
    assert nested_subset(IDS, 0.1, seed=3) != nested_subset(IDS, 0.1, seed=4)


def test_split_files_round_trip_and_bad_files_are_named(tmp_path):
    path = tmp_path / "labels_0.1.txt"
    write_split(path, ["000001", "000007"])
    assert read_split(path, set(IDS)) == ["000001", "000007"]
    with pytest.raises(ValueError, match=f"{path}: 1 frame id"):
        write_split(path, ["000001", "999999"])
        read_split(path, set(IDS))
    path.write_text("\n")
    with pytest.raises(ValueError, match=f"{path}: split file lists no frames"):
        read_split(path)
