"""``occbench convert``: turn a dataset into occbench frames plus an index.

Every dataset kind has a converter (``occbench.data.converters.CONVERTERS``)
that lists its frames cheaply (``sources``) and reads one at a time (``load``).
This module is the one driver all of them share:

- frames are written one by one, atomically, so memory stays bounded by one
  frame per worker and a stopped conversion resumes where it stopped (a frame
  file that exists is complete; the temporary file of the frame a killed
  conversion was writing is removed: the CLI holds the folder's lock, so no
  other conversion is writing it);
- the dataset's settings are kept beside the frames: when they change, the
  frames written under the old settings are removed instead of reused;
- a frame that fails is reported with the input it came from; the others still
  convert, the index lists only the frames that exist, and the caller ends
  with the list of failures and a non-zero exit;
- a converter with ``occupancy_aggregation`` settings has each scene's
  occupancy built from its frames once they are written (blocks of
  consecutive frames, ``occbench.data.occupancy_aggregation``); a block that
  fails is reported and its frames left out of the index, and a block whose
  frames all hold the grid is not built again;
- a full disk (occbench.io.DiskFull) stops the conversion instead: the frames
  written are kept, no index is written, and a rerun once there is space
  writes the rest.
"""

from __future__ import annotations

import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from occbench.data.dataset import write_index
from occbench.data.frame import Frame, OccupancySpec, save_frame
from occbench.data.occupancy_aggregation import AggregationSettings, aggregate_scene, has_occupancy
from occbench.io import DiskFull, read_json, write_json
from occbench.progress import progress
from occbench.workflow.grid import data_dir, index_path


@dataclass(frozen=True)
class FrameSource:
    """One frame a converter can produce."""

    frame_id: str  # file stem under frames/, unique within the dataset
    scene: str  # its sequence or scene: scene-level sampling keeps or drops whole scenes
    split: str  # "train" or "val"
    location: str  # where it is read from (a file, a token): named when the frame fails


class Converter(Protocol):
    """A reader of one dataset kind, built from the dataset's settings in params.yaml."""

    # How the semantic occupancy is built from each scene's labelled points, None for not at all
    # (the synthetic world writes its exact occupancy into each frame itself).
    occupancy_aggregation: AggregationSettings | None

    def __init__(self, settings: dict[str, Any]) -> None: ...

    def sources(self) -> list[FrameSource]:
        """Every frame of the dataset, without reading the frames themselves."""

    def load(self, source: FrameSource) -> Frame:
        """Read and convert one frame; raise with the input file named when it is bad."""


# The converter of the running conversion. Worker processes are forked, so they
# inherit it (a devkit's tables, say) instead of each loading or unpickling it.
_ACTIVE: Converter | None = None


def _convert_one(source: FrameSource, frames_dir: Path) -> tuple[str | None, list[int]]:
    """Write one frame unless it is already on disk; return (error text or None, its box classes).

    The box classes go into the index, so class-balanced sampling never opens a frame.
    """
    path = frames_dir / f"{source.frame_id}.npz"
    try:
        if path.exists():
            with np.load(path, allow_pickle=False) as archive:
                box_labels = archive["box_labels"]
        else:
            frame = _ACTIVE.load(source)
            save_frame(frame, path)
            box_labels = frame.box_labels
    except DiskFull:  # the disk, not the frame: every other frame would fail the same way
        raise
    except Exception as err:  # one bad frame must not stop the others
        message = str(err).removeprefix(f"{source.location}: ")  # name the input once
        return f"{source.location}: {type(err).__name__}: {message}", []
    return None, sorted(int(label) for label in np.unique(box_labels))


def _map(job, items: list, workers: int, desc: str, chunksize: int = 1) -> list:
    """``job`` of every item, in order, with a progress bar: in ``workers`` forked processes (which
    inherit the active converter) above 1, in this one otherwise."""
    if workers <= 1:
        return [job(item) for item in progress(items, desc=desc)]
    with ProcessPoolExecutor(workers, mp_context=get_context("fork")) as pool:
        return list(progress(pool.map(job, items, chunksize=chunksize), total=len(items), desc=desc))


def _forget_stale_frames(frames_dir: Path, settings: dict[str, Any]) -> None:
    """Remove frames converted under other settings; remember the current ones."""
    record = frames_dir / "settings.json"
    if frames_dir.exists() and (not record.exists() or read_json(record) != settings):
        shutil.rmtree(frames_dir)
    frames_dir.mkdir(parents=True, exist_ok=True)
    write_json(record, settings)


def run_conversion(name: str, converter: Converter, settings: dict[str, Any], workers: int) -> list[str]:
    """Convert every frame of ``converter`` into results/data/<name>/; return the failures."""
    global _ACTIVE
    frames_dir = data_dir(name) / "frames"
    sources = converter.sources()  # first: a root without the dataset's layout leaves nothing behind
    ids = [source.frame_id for source in sources]
    if len(set(ids)) != len(ids):
        raise ValueError(f"dataset {name!r}: its converter lists some frame ids twice")
    _forget_stale_frames(frames_dir, settings)
    for partial_frame in frames_dir.glob(".*.tmp"):  # atomic_path's temporaries, of a killed conversion
        partial_frame.unlink()
    job = partial(_convert_one, frames_dir=frames_dir)
    _ACTIVE = converter
    try:
        outcomes = _map(job, sources, workers, f"convert {name}", chunksize=4)
    finally:
        _ACTIVE = None
    failures = [error for error, _ in outcomes if error]
    converted = [(source, box_classes) for source, (error, box_classes) in zip(sources, outcomes) if not error]
    if converter.occupancy_aggregation is not None:
        failed = _aggregate_occupancy(name, frames_dir, [source for source, _ in converted],
                                      converter.occupancy_aggregation, workers)
        failures += sorted(set(failed.values()))
        converted = [(source, classes) for source, classes in converted if source.frame_id not in failed]
    frames = [
        {"id": source.frame_id, "path": f"frames/{source.frame_id}.npz", "split": source.split,
         "scene": source.scene, "box_classes": box_classes}
        for source, box_classes in converted
    ]
    write_index(index_path(name), name, frames)
    return failures


def _aggregate_one(paths: list[Path], grid: OccupancySpec) -> str | None:
    """Build one block's occupancy; return the error text, None when it went well."""
    try:
        aggregate_scene(paths, grid)
    except DiskFull:  # the disk, not the block: stops the conversion as a frame's would
        raise
    except Exception as err:  # one bad block must not stop the others
        return f"{type(err).__name__}: {err}"
    return None


def _aggregate_occupancy(name: str, frames_dir: Path, sources: list[FrameSource],
                         settings: AggregationSettings, workers: int) -> dict[str, str]:
    """Build the occupancy of every block of frames not yet holding it; return the failures by frame id."""
    scenes: dict[str, list[FrameSource]] = {}
    for source in sources:
        scenes.setdefault(source.scene, []).append(source)
    size = settings.frames_per_block
    blocks = [frames[first : first + size] for frames in scenes.values() for first in range(0, len(frames), size)]
    todo = [block for block in blocks
            if not all(has_occupancy(frames_dir / f"{s.frame_id}.npz", settings.grid) for s in block)]
    job = partial(_aggregate_one, grid=settings.grid)
    paths = [[frames_dir / f"{source.frame_id}.npz" for source in block] for block in todo]
    errors = _map(job, paths, workers, f"occupancy {name}")
    failed = {}
    for block, error in zip(todo, errors):
        if error:
            message = (f"{frames_dir}: occupancy of scene {block[0].scene}, frames {block[0].frame_id} to "
                       f"{block[-1].frame_id}: {error}")
            failed.update({source.frame_id: message for source in block})
    return failed


def convert(params: dict, dataset: str, workers: int = 1) -> list[str]:
    """Convert one dataset of params.yaml; return the failed frames (empty when all went well)."""
    from occbench.data.converters import CONVERTERS

    try:
        settings = params["datasets"][dataset]
    except KeyError:
        raise ValueError(f"dataset {dataset!r} is not defined under datasets in params.yaml") from None
    converter = CONVERTERS[settings["kind"]](settings)  # first: it names the tools a kind lacks
    if "root" in settings and not Path(settings["root"]).is_dir():
        raise ValueError(f"datasets.{dataset}.root: {settings['root']}: no such directory (expected the "
                         f"{settings['kind']} dataset there; README, section Data)")
    return run_conversion(dataset, converter, settings, workers)
