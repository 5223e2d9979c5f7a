import numpy as np
import pytest

from occbench.data.taxonomy import (
    CLASS_ID,
    CLASSES,
    EMPTY_INDEX,
    IGNORE_INDEX,
    MAPPINGS,
    NUSCENES,
    SEMANTICKITTI,
    THING_CLASSES,
    map_labels,
)


@pytest.mark.parametrize("source", sorted(MAPPINGS))
def test_every_table_maps_onto_unified_classes_or_ignore(source):
    targets = set(MAPPINGS[source].values())
    assert targets <= set(CLASSES) | {None}


def test_the_point_label_tables_reach_every_unified_class():
    """Cross-dataset fine-tuning needs each unified class to come from each labelled source;
    the one documented gap is nuScenes, which has no pole class."""
    for table in (SEMANTICKITTI, MAPPINGS["waymo_segmentation"]):
        assert set(table.values()) - {None} == set(CLASSES)
    assert set(CLASSES) - set(NUSCENES.values()) == {"pole"}


def test_tables_cover_the_official_label_sets():
    assert len(NUSCENES) == 32  # nuScenes lidarseg's 32 raw categories
    assert sorted(SEMANTICKITTI) == [0, 1, 10, 11, 13, 15, 16, 18, 20, 30, 31, 32, 40, 44, 48, 49, 50, 51, 52,
                                     60, 70, 71, 72, 80, 81, 99, *range(252, 260)]
    assert len(MAPPINGS["waymo_segmentation"]) == 23


def test_special_ids_stay_apart_from_classes():
    assert EMPTY_INDEX == len(CLASSES) < IGNORE_INDEX
    assert all(name in CLASS_ID for name in THING_CLASSES)


def test_map_labels_maps_and_names_unknown_ids():
    raw = np.array([[0, 10], [252, 81]])
    assert map_labels(raw, SEMANTICKITTI, "x.label").tolist() == [
        [IGNORE_INDEX, CLASS_ID["car"]], [CLASS_ID["car"], CLASS_ID["pole"]]]
    with pytest.raises(ValueError, match=r"seq/000001\.label: label id\(s\) \[-1, 77, 300\]"):
        map_labels(np.array([10, 77, 300, -1]), SEMANTICKITTI, "seq/000001.label")
