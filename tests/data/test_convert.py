import numpy as np

from occbench.data.convert import convert
from occbench.data.dataset import FrameIndex
from smoke import smoke_params


def test_conversion_resumes_and_only_writes_missing_frames(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = smoke_params()
    assert convert(params, "synthetic") == []
    index = FrameIndex("results/data/synthetic/index.json")
    assert len(index.ids("train")) == 4 and len(index.ids("val")) == 2
    kept = index.frame_path(index.ids("train")[0])
    lost = index.frame_path(index.ids("val")[0])
    kept_mtime, lost_points = kept.stat().st_mtime_ns, index.load(index.ids("val")[0]).points
    lost.unlink()

    assert convert(params, "synthetic", workers=2) == []
    assert kept.stat().st_mtime_ns == kept_mtime  # finished frames are not redone
    assert np.array_equal(index.load(index.ids("val")[0]).points, lost_points)  # same frame again
    assert not list(tmp_path.rglob("*.tmp"))


def test_frame_that_fails_is_named_and_the_others_still_convert(tmp_path, monkeypatch):
    import occbench.data.convert as convert_module

    real = convert_module.generate_frame

    def broken_at_3(seed, index, sensor, scene):
        if index == 3:
            raise ValueError("ray caster exploded")
        return real(seed, index, sensor, scene)

    monkeypatch.setattr(convert_module, "generate_frame", broken_at_3)
    monkeypatch.chdir(tmp_path)
    failures = convert(smoke_params(), "synthetic")
    assert failures == ["results/data/synthetic/frames/000003.npz: ValueError: ray caster exploded"]
    written = sorted(p.name for p in (tmp_path / "results/data/synthetic/frames").iterdir())
    assert written == ["000000.npz", "000001.npz", "000002.npz", "000004.npz", "000005.npz"]
