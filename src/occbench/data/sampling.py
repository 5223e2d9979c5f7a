"""Class-balanced frame sampling (CBGS-like), as SPOT uses it: rare object classes are seen more often.

For each foreground class i, with N_i the number of frames that contain it:

    n_i = N_i / sum_j N_j,    m = 1 / N_fg,    s_i = sqrt(m / n_i)

N_fg counts the classes that occur at all: a class absent from the dataset (no
trucks in Waymo's boxes) has no frames to repeat, and counting it would only
shrink every other s_i.

From classes to frames: CBGS draws s_i * N_i frames per class, so a frame with
several classes is drawn once per class and a frame without objects never; SPOT
pre-trains on every frame's geometry, so here each frame is repeated by

    factor = max(1, max over its classes of s_i)

The max gives each frame the boost its rarest class needs without stacking the
boosts of the common classes that come along (the reasoning of repeat-factor
sampling, Gupta et al., LVIS 2019); the floor of 1 keeps every frame, with or
without objects, in every epoch. A fractional factor is rounded up or down at
random each epoch (1.4: twice in 40 % of epochs), so its expectation is exact.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping, Sequence

import numpy as np

from occbench.data.dataset import FrameIndex
from occbench.data.taxonomy import CLASS_ID, THING_CLASSES

THING_IDS: tuple[int, ...] = tuple(CLASS_ID[name] for name in THING_CLASSES)


def class_sample_factors(frame_classes: Sequence[Collection[int]],
                         classes: Sequence[int] = THING_IDS) -> dict[int, float]:
    """s_i of each class in ``classes`` that occurs in some frame (absent classes are left out)."""
    wanted = set(classes)
    counts = dict.fromkeys(classes, 0)
    for present in frame_classes:
        for label in wanted.intersection(present):
            counts[label] += 1
    occurring = {label: n for label, n in counts.items() if n > 0}
    total = sum(occurring.values())
    target = 1.0 / max(len(occurring), 1)
    return {label: float(np.sqrt(target / (n / total))) for label, n in occurring.items()}


def class_balanced_weights(frame_classes: Sequence[Collection[int]],
                           classes: Sequence[int] = THING_IDS) -> np.ndarray:
    """Expected number of times (float64, >= 1) each frame is shown per epoch."""
    factors = class_sample_factors(frame_classes, classes)
    return np.array(
        [max([1.0, *(factors[label] for label in factors.keys() & set(present))]) for present in frame_classes]
    )


def class_balanced_order(frame_ids: Sequence[str], frame_classes: Mapping[str, Collection[int]],
                         seed: int, epoch: int, classes: Sequence[int] = THING_IDS) -> list[str]:
    """The frames of one epoch, each repeated by its class-balanced factor, shuffled.

    The same (seed, epoch) always gives the same list; another epoch rounds and
    shuffles anew. ``frame_classes`` maps each id to its classes (``frame_class_sets``).
    """
    missing = [frame_id for frame_id in frame_ids if frame_id not in frame_classes]
    if missing:
        raise KeyError(f"no classes known for frame(s) {missing[:5]}")
    weights = class_balanced_weights([frame_classes[frame_id] for frame_id in frame_ids], classes)
    rng = np.random.default_rng([seed, epoch])
    whole = np.floor(weights)
    copies = whole.astype(np.int64) + (rng.random(len(weights)) < weights - whole)
    repeated = np.repeat(np.arange(len(frame_ids)), copies)
    return [frame_ids[i] for i in rng.permutation(repeated)]


def frame_class_sets(index: FrameIndex | str | os.PathLike, split: str | None = None,
                     classes: Sequence[int] = THING_IDS) -> dict[str, frozenset[int]]:
    """The foreground classes of each frame of ``index`` (one split, or all), from its boxes' labels.

    The conversion driver records each frame's box classes in the index, so no
    frame is opened here.
    """
    if not isinstance(index, FrameIndex):
        index = FrameIndex(index)
    ids = index.ids(split) if split is not None else sorted(index.frames)
    wanted = frozenset(classes)
    return {frame_id: frozenset(index.frames[frame_id]["box_classes"]) & wanted for frame_id in ids}
