"""``occbench convert``: turn a dataset into occbench frames plus an index.

Frames are written one by one, atomically, so memory stays bounded and a
stopped conversion resumes where it stopped (a frame file that exists is
complete). A frame that fails is reported by name; the others still convert,
and the caller ends with the list of failures and a non-zero exit.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

from occbench.data.dataset import write_index
from occbench.data.frame import save_frame
from occbench.data.synthetic import SceneConfig, SensorProfile, generate_frame
from occbench.training import progress
from occbench.workflow.grid import data_dir, index_path


def _synthetic_frame(index: int, seed: int, sensor: dict, scene: dict, frames_dir: Path) -> str | None:
    """Generate frame ``index`` unless it is already on disk; return an error text on failure."""
    path = frames_dir / f"{index:06d}.npz"
    if path.exists():
        return None
    try:
        save_frame(generate_frame(seed, index, SensorProfile.from_dict(sensor), SceneConfig.from_dict(scene)), path)
    except Exception as err:  # one bad frame must not stop the others
        return f"{path}: {type(err).__name__}: {err}"
    return None


def convert_synthetic(name: str, settings: dict, workers: int) -> list[str]:
    frames_dir = data_dir(name) / "frames"
    frames_dir.mkdir(parents=True, exist_ok=True)
    count = settings["num_frames"]
    job = partial(_synthetic_frame, seed=settings["seed"], sensor=settings["sensor"],
                  scene=settings["scene"], frames_dir=frames_dir)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            outcomes = list(progress(pool.map(job, range(count), chunksize=4), total=count, desc=f"generate {name}"))
    else:
        outcomes = [job(i) for i in progress(range(count), desc=f"generate {name}")]
    failures = [outcome for outcome in outcomes if outcome]
    # The last frames form the held-out split; the frames are i.i.d. scenes.
    first_val = count - max(1, round(count * settings["val_fraction"]))
    frames = [
        {"id": f"{i:06d}", "path": f"frames/{i:06d}.npz", "split": "val" if i >= first_val else "train"}
        for i in range(count)
    ]
    write_index(index_path(name), name, frames)
    return failures


CONVERTERS = {
    "synthetic": convert_synthetic,
}


def convert(params: dict, dataset: str, workers: int = 1) -> list[str]:
    """Convert one dataset of params.yaml; return the failed frames (empty when all went well)."""
    try:
        settings = params["datasets"][dataset]
    except KeyError:
        raise ValueError(f"dataset {dataset!r} is not defined under datasets in params.yaml") from None
    return CONVERTERS[settings["kind"]](dataset, settings, workers)
