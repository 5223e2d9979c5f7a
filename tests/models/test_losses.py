"""Lovasz-softmax, shared by the semantic occupancy heads, against a brute-force Lovasz extension."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from occbench.models.losses import lovasz_softmax


def _jaccard_loss(mispredicted: set[int], truth: set[int]) -> float:
    """Berman et al.'s Delta_J: 1 - |truth & prediction| / |truth | prediction| of a mispredicted set."""
    return len(mispredicted) / len(truth | mispredicted) if mispredicted else 0.0


def _lovasz_brute_force(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Lovasz extension of Delta_J per present class as the max over all orders of the set function's
    increments (Delta_J is submodular: the extension is the support function of its base polytope)."""
    losses = []
    for c in sorted(set(labels.tolist())):
        truth = set(np.flatnonzero(labels == c).tolist())
        errors = np.abs((labels == c).astype(float) - probabilities[:, c])
        best = -math.inf
        for order in itertools.permutations(range(len(labels))):
            value, before = 0.0, set()
            for i in order:
                value += errors[i] * (_jaccard_loss(before | {i}, truth) - _jaccard_loss(before, truth))
                before = before | {i}
            best = max(best, value)
        losses.append(best)
    return float(np.mean(losses))


@pytest.mark.parametrize("seed", range(4))
def test_lovasz_softmax_equals_a_brute_force_lovasz_extension_of_the_jaccard_loss(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, 6)
    probabilities = rng.dirichlet(np.ones(4), 6)  # class 3 is never a label: it is not present
    loss = lovasz_softmax(torch.tensor(probabilities), torch.tensor(labels))
    assert loss.item() == pytest.approx(_lovasz_brute_force(probabilities, labels), abs=1e-9)


def test_lovasz_softmax_of_hard_predictions_is_one_minus_the_jaccard_index():
    labels = np.array([0, 0, 1, 1, 1, 2, 2, 0])
    predicted = np.array([0, 1, 1, 1, 2, 2, 0, 0])
    ious = []
    for c in range(3):
        truth, prediction = set(np.flatnonzero(labels == c)), set(np.flatnonzero(predicted == c))
        ious.append(len(truth & prediction) / len(truth | prediction))
    one_hot = F.one_hot(torch.tensor(predicted), 4).double()
    assert lovasz_softmax(one_hot, torch.tensor(labels)).item() == pytest.approx(1 - np.mean(ious))
