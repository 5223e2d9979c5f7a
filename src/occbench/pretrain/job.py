"""One pre-training run: a method's loss on the shared backbone, over a data fraction."""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from occbench.data.augment import GlobalAugmentation
from occbench.data.batch import training_batch
from occbench.data.dataset import FrameIndex
from occbench.data.splits import read_split
from occbench.io import sha256_file, write_json
from occbench.models.backbone import SparseBackbone
from occbench.models.checkpoint import save_checkpoint
from occbench.models.voxelize import voxelize
from occbench.pretrain import METHODS
from occbench.progress import progress
from occbench.provenance import environment
from occbench.training import epoch_order, run_epochs, seed_everything
from occbench.workflow.grid import PRETRAIN_SECTIONS, PretrainRun, hparams_digest, index_path, split_path


def pretrain(params: dict, run: PretrainRun) -> None:
    settings = params["pretrain"]
    generator = seed_everything(settings["seed"], params["execution"]["threads"])
    index = FrameIndex(index_path(run.dataset))
    split_file = split_path(run.dataset, "pretrain", run.fraction)
    frame_ids = read_split(split_file, set(index.frames))

    backbone = SparseBackbone.from_params(params, run.backbone)
    method = METHODS[run.method](backbone, settings["methods"][run.method])
    optimizer = torch.optim.AdamW(
        [*backbone.parameters(), *method.parameters()], lr=settings["lr"], weight_decay=settings["weight_decay"]
    )
    batch_size = settings["batch_size"]
    max_points = params["voxelization"]["max_points"]
    digest = hparams_digest(params, *PRETRAIN_SECTIONS)
    augmentation = GlobalAugmentation.from_dict(params["augmentation"])
    trained: set[str] = set()  # backbone parameters the method's loss reached, for the checkpoint

    def run_epoch(epoch: int) -> dict[str, float]:
        backbone.train()
        method.train()
        order = epoch_order(frame_ids, settings["seed"], epoch)
        data_rng = np.random.default_rng([settings["seed"], epoch, 1])
        sums: dict[str, float] = {}
        steps = math.ceil(len(order) / batch_size)
        bar = progress(range(steps), desc=f"{run.method} epoch {epoch + 1}/{settings['epochs']}")
        for step in bar:
            batch = training_batch(index, order[step * batch_size:(step + 1) * batch_size],
                                   augmentation, max_points, data_rng)
            voxels = voxelize(batch.points, batch.intensity, backbone.grid)
            loss, logs = method.loss(backbone(voxels, with_bev=method.needs_bev), batch, voxels, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            trained.update(name for name, p in backbone.named_parameters() if p.grad is not None)
            optimizer.step()
            for key, value in {"loss": loss.item(), **logs}.items():
                sums[key] = sums.get(key, 0.0) + value
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        return {key: value / steps for key, value in sums.items()}

    started = time.perf_counter()
    state_path = run.directory / "train_state.pt"
    history = run_epochs(state_path, digest, settings["epochs"],
                         {"backbone": backbone, "method": method, "optimizer": optimizer}, generator, run_epoch)
    meta = {
        "run": {"backbone": run.backbone, "dataset": run.dataset, "method": run.method, "fraction": run.fraction},
        "backbone_spec": params["backbones"][run.backbone],
        "voxelization": params["voxelization"],
        "hparams_digest": digest,
        "split": {"file": str(split_file), "sha256": sha256_file(split_file), "frames": len(frame_ids)},
        "history": history,
        "wall_seconds": time.perf_counter() - started,
        **environment(),
    }
    save_checkpoint(run.checkpoint, backbone, meta, trained)
    write_json(run.directory / "run_meta.json", meta)
    state_path.unlink(missing_ok=True)
