"""LiDAR semantic segmentation: a linear head on the backbone's per-voxel features.

Training uses the labelled frames of one nested label fraction; evaluation
scores every point of every held-out frame, carrying voxel predictions back to
the points (points outside the voxel grid take their nearest voxel), so the
figure is the full-cloud mIoU, not a training-loop proxy (ALSO#5).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from occbench.data.augment import GlobalAugmentation
from occbench.data.batch import to_batch, training_batch
from occbench.data.dataset import FrameIndex
from occbench.data.splits import read_split
from occbench.data.taxonomy import CLASSES, IGNORE_INDEX, NUM_CLASSES
from occbench.io import sha256_file, sha256_json, write_json
from occbench.metrics.segmentation import ConfusionMatrix, segmentation_metrics
from occbench.models.backbone import SparseBackbone
from occbench.models.checkpoint import load_backbone, read_checkpoint
from occbench.models.voxelize import points_to_voxel_rows, voxelize
from occbench.progress import progress
from occbench.provenance import environment
from occbench.training import epoch_order, run_epochs, save_torch, seed_everything
from occbench.workflow.grid import FINETUNE_SECTIONS, FinetuneRun, hparams_digest, index_path, split_path


def epochs_for(schedule: list[dict], label_fraction: float) -> int:
    """Fewer labels, more epochs: the first schedule entry covering the fraction."""
    for entry in sorted(schedule, key=lambda e: e["up_to_label_fraction"]):
        if label_fraction <= entry["up_to_label_fraction"]:
            return entry["epochs"]
    raise ValueError(f"no epoch schedule entry covers label fraction {label_fraction}")


class SegmentationModel(nn.Module):
    def __init__(self, backbone: SparseBackbone):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.out_channels, NUM_CLASSES)

    def forward(self, voxels) -> torch.Tensor:
        return self.head(self.backbone(voxels).voxel_features.features)


class SegmentationTask:
    main_metric = "miou"

    def __init__(self, params: dict, run: FinetuneRun):
        self.params, self.run = params, run
        self.settings = params["finetune"]["segmentation"]

    def initial_model(self) -> tuple[SegmentationModel, dict | None]:
        """Seeded random init, then the pre-trained backbone if the run has one."""
        model = SegmentationModel(SparseBackbone.from_params(self.params, self.run.backbone))
        if self.run.pretrained is None:
            return model, None
        checkpoint_path = self.run.pretrained.checkpoint
        checkpoint = read_checkpoint(checkpoint_path)
        report = load_backbone(model.backbone, checkpoint["backbone"], checkpoint["trained_parameters"],
                               self.params["finetune"]["min_loaded_fraction"], str(checkpoint_path))
        print(f"loaded {report.loaded_fraction:.1%} of the backbone from {checkpoint_path}, "
              f"{report.pretrained_fraction:.1%} pre-trained; never trained: "
              f"{', '.join(report.untrained_modules) or 'none'}")
        return model, {"checkpoint": str(checkpoint_path), "sha256": sha256_file(checkpoint_path),
                       **report.as_dict()}

    def execute(self) -> dict:
        run, settings = self.run, self.settings
        generator = seed_everything(run.seed, self.params["execution"]["threads"])
        model, load_report = self.initial_model()
        index = FrameIndex(index_path(run.finetune_dataset))
        split_file = split_path(run.finetune_dataset, "labels", run.label_fraction)
        train_ids = read_split(split_file, set(index.frames))
        val_ids = index.ids("val")
        if not val_ids:
            raise ValueError(f"{index.path}: dataset has no 'val' frames to evaluate on")
        epochs = epochs_for(settings["epochs"], run.label_fraction)
        batch_size = settings["batch_size"]
        steps_per_epoch = math.ceil(len(train_ids) / batch_size)
        optimizer = torch.optim.AdamW(model.parameters(), lr=settings["lr"], weight_decay=settings["weight_decay"])
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, settings["lr"], total_steps=epochs * steps_per_epoch)
        max_points = self.params["voxelization"]["max_points"]
        grid = model.backbone.grid
        augmentation = GlobalAugmentation.from_dict(self.params["augmentation"])

        def run_epoch(epoch: int) -> dict[str, float]:
            model.train()
            order = epoch_order(train_ids, run.seed, epoch)
            data_rng = np.random.default_rng([run.seed, epoch, 1])
            total = 0.0
            bar = progress(range(steps_per_epoch), desc=f"segmentation epoch {epoch + 1}/{epochs}")
            for step in bar:
                batch = training_batch(index, order[step * batch_size:(step + 1) * batch_size],
                                       augmentation, max_points, data_rng)
                voxels = voxelize(batch.points, batch.intensity, grid)
                voxel_logits = model(voxels)
                inside = [rows >= 0 for rows in voxels.point_voxel]
                logits = voxel_logits[torch.cat([rows[m] for rows, m in zip(voxels.point_voxel, inside)])]
                labels = torch.cat([labels[m] for labels, m in zip(batch.semantic, inside)])
                loss = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                total += loss.item()
                bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
            return {"loss": total / steps_per_epoch}

        started = time.perf_counter()
        run.directory.mkdir(parents=True, exist_ok=True)
        state_path = run.directory / "train_state.pt"
        digest = hparams_digest(self.params, *FINETUNE_SECTIONS)
        history = run_epochs(state_path, digest, epochs,
                             {"model": model, "optimizer": optimizer, "scheduler": scheduler}, generator, run_epoch)
        train_seconds = time.perf_counter() - started
        metrics = evaluate(model, index, val_ids, batch_size)
        save_torch(model.state_dict(), run.directory / "model.pt")
        write_json(run.directory / "run_meta.json", {
            "run": run.coordinates(),
            "seed": run.seed,
            "epochs": epochs,
            "hparams_digest": digest,
            "params_sha256": sha256_json(self.params),
            "splits": {
                "labels": {"file": str(split_file), "sha256": sha256_file(split_file), "frames": len(train_ids)},
                "val": {"sha256": sha256_json(val_ids), "frames": len(val_ids)},
            },
            "pretrained": load_report,
            "history": history,
            "train_seconds": train_seconds,
            "eval_seconds": time.perf_counter() - started - train_seconds,
            **environment(),
        })
        write_json(run.metrics, metrics)
        state_path.unlink(missing_ok=True)
        return metrics


@torch.no_grad()
def evaluate(model: SegmentationModel, index: FrameIndex, frame_ids: list[str], batch_size: int) -> dict:
    """Confusion over every point of the given frames."""
    model.eval()
    confusion = ConfusionMatrix(NUM_CLASSES, IGNORE_INDEX)
    grid = model.backbone.grid
    for start in progress(range(0, len(frame_ids), batch_size), desc="evaluate"):
        batch = to_batch([index.load(i) for i in frame_ids[start:start + batch_size]])
        voxels = voxelize(batch.points, batch.intensity, grid)
        voxel_prediction = model(voxels).argmax(dim=1)
        for rows, labels in zip(points_to_voxel_rows(voxels, batch.points, grid), batch.semantic):
            confusion.update(voxel_prediction[rows], labels)
    return segmentation_metrics(confusion, CLASSES)
