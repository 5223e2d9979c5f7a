import json

import numpy as np
import pytest

from occbench.data.convert import FrameSource, convert, run_conversion
from occbench.data.dataset import FrameIndex
from occbench.data.frame import Frame
from smoke import smoke_params


class TinyConverter:
    """Three scenes of two frames; frame 0001_1 fails when ``broken`` says so."""

    occupancy_aggregation = None

    def __init__(self, settings):
        self.settings = settings

    def sources(self):
        return [
            FrameSource(f"{scene:04d}_{index}", f"{scene:04d}", "val" if scene == 2 else "train",
                        location=f"/data/scan_{scene}_{index}.bin")
            for scene in range(3) for index in range(2)
        ]

    def load(self, source):
        if source.frame_id in self.settings.get("broken", []):
            raise ValueError(f"{source.location}: truncated after 12 bytes")
        n = 5 + int(source.scene)
        return Frame(points=np.full((n, 3), self.settings["value"]), intensity=np.zeros(n), ring=np.zeros(n),
                     semantic=np.zeros(n), instance=np.zeros(n), boxes=np.ones((2, 7)),
                     box_labels=[int(source.scene) + 8] * 2,
                     meta={"dataset": "tiny"})


def test_conversion_resumes_and_only_writes_missing_frames(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = smoke_params()
    assert convert(params, "synthetic") == []
    index = FrameIndex("results/data/synthetic/index.json")
    train, val = index.ids("train"), index.ids("val")
    assert train and val and not set(index.scenes("train").values()) & set(index.scenes("val").values())
    kept, lost = index.frame_path(train[0]), index.frame_path(val[0])
    kept_mtime, lost_points = kept.stat().st_mtime_ns, index.load(val[0]).points
    lost.unlink()

    assert convert(params, "synthetic", workers=2) == []
    assert kept.stat().st_mtime_ns == kept_mtime  # finished frames are not redone
    assert np.array_equal(index.load(val[0]).points, lost_points)  # same frame again
    assert not list(tmp_path.rglob("*.tmp"))


def test_frame_that_fails_is_named_and_the_others_still_convert(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    failures = run_conversion("tiny", TinyConverter({"value": 1.0, "broken": ["0001_1"]}),
                              {"value": 1.0}, workers=2)
    assert failures == ["/data/scan_1_1.bin: ValueError: truncated after 12 bytes"]
    written = sorted(p.name for p in (tmp_path / "results/data/tiny/frames").glob("*.npz"))
    assert written == ["0000_0.npz", "0000_1.npz", "0001_0.npz", "0002_0.npz", "0002_1.npz"]
    index = json.loads((tmp_path / "results/data/tiny/index.json").read_text())
    assert [f["id"] for f in index["frames"]] == [name[:-4] for name in written]  # only frames that exist
    assert {f["id"]: f["scene"] for f in index["frames"]}["0002_1"] == "0002"
    assert {f["id"]: f["box_classes"] for f in index["frames"]}["0002_1"] == [10]  # for class balancing


def test_changed_settings_reconvert_instead_of_reusing_stale_frames(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_conversion("tiny", TinyConverter({"value": 1.0}), {"value": 1.0}, workers=1) == []
    assert run_conversion("tiny", TinyConverter({"value": 2.0}), {"value": 2.0}, workers=1) == []
    index = FrameIndex("results/data/tiny/index.json")
    assert (index.load("0000_0").points == 2.0).all()
    (tmp_path / "results/data/tiny/index.json").unlink()
    assert run_conversion("tiny", TinyConverter({"value": 2.0}), {"value": 2.0}, workers=1) == []
    resumed = FrameIndex("results/data/tiny/index.json")
    assert resumed.frames["0001_0"]["box_classes"] == [9]  # read back from a frame that was not redone


def test_duplicate_frame_ids_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    converter = TinyConverter({"value": 1.0})
    converter.sources = lambda: [FrameSource("a", "s", "train", "x")] * 2
    with pytest.raises(ValueError, match="lists some frame ids twice"):
        run_conversion("tiny", converter, {}, workers=1)
