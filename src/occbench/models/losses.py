"""Losses shared by the semantic occupancy heads (SPOT's pre-training, the occupancy task).

Class-weighted cross-entropy + Lovasz-softmax (Berman et al., CVPR 2018) over
the labelled voxels of a (B, classes, X, Y, Z) logit grid; IGNORE_INDEX voxels
count nowhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from occbench.data.taxonomy import CLASS_ID, CLASSES, EMPTY_INDEX, IGNORE_INDEX, NUM_CLASSES


def occupancy_class_weights(settings: dict, key: str) -> torch.Tensor:
    """Cross-entropy weight of each occupancy class (NUM_CLASSES + 1,): ``class_weights.foreground`` for
    ``foreground_classes``, ``.empty`` for free space, ``.other`` for the rest; ``key`` names the settings."""
    unknown = sorted(set(settings["foreground_classes"]) - set(CLASSES))
    if unknown:
        raise ValueError(f"{key}.foreground_classes: {unknown} are not taxonomy classes {list(CLASSES)}")
    weights = settings["class_weights"]
    values = torch.full((NUM_CLASSES + 1,), float(weights["other"]))
    values[[CLASS_ID[name] for name in settings["foreground_classes"]]] = float(weights["foreground"])
    values[EMPTY_INDEX] = float(weights["empty"])
    return values


def lovasz_grad(sorted_truth: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss at errors sorted descending (Berman et al., Alg. 1);
    column-wise for a (V, C) matrix of 0/1 ground truth in the errors' order."""
    total = sorted_truth.sum(0)
    intersection = total - sorted_truth.cumsum(0)
    union = total + (1 - sorted_truth).cumsum(0)
    jaccard = 1 - intersection / union
    return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])


def lovasz_softmax(probabilities: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Lovasz-softmax loss (Berman et al., CVPR 2018) of (V, C) class probabilities against (V,) labels.

    The mean over the classes present in ``labels`` (Berman's ``classes='present'``)
    of the Lovasz extension of the Jaccard loss at the per-voxel errors |1[y = c] - p_c|;
    all classes are sorted at once (one sort along the voxel axis), not one by one.
    """
    if labels.numel() == 0:
        return probabilities.sum() * 0.0
    truth = F.one_hot(labels, probabilities.shape[1]).to(probabilities.dtype)
    errors = (truth - probabilities).abs()
    sorted_errors, order = errors.sort(dim=0, descending=True)
    per_class = (sorted_errors * lovasz_grad(truth.gather(0, order))).sum(0)
    return per_class[truth.sum(0) > 0].mean()


def occupancy_loss_terms(logits: torch.Tensor, target: torch.Tensor, class_weights: torch.Tensor,
                         lovasz_voxels: int | None,
                         generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(class-weighted cross-entropy, Lovasz-softmax) of (B, C, X, Y, Z) logits against (B, X, Y, Z) labels
    over the labelled voxels; the Lovasz term over ``lovasz_voxels`` of them drawn with ``generator`` when
    there are more (all without a generator or a cap): its sort is what costs."""
    cross_entropy = F.cross_entropy(logits.float(), target, weight=class_weights, ignore_index=IGNORE_INDEX)
    labelled = torch.nonzero(target.reshape(-1) != IGNORE_INDEX).squeeze(1)
    if generator is not None and lovasz_voxels is not None and labelled.numel() > lovasz_voxels:
        labelled = labelled[torch.randperm(labelled.numel(), generator=generator)[:lovasz_voxels].to(labelled.device)]
    voxel = torch.unravel_index(labelled, target.shape)
    probabilities = logits.movedim(1, -1)[voxel].float().softmax(1)
    return cross_entropy, lovasz_softmax(probabilities, target[voxel])
