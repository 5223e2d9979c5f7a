"""Does ALSO learn? Held-out pretext metrics before and after one real pre-training run.

Runs ``occbench.pretrain.job.pretrain`` (what ``occbench pretrain`` runs) for
the also method on the dataset's 100 % pre-training split, from a work folder
that already holds results/data/<dataset> (``occbench convert`` + ``occbench
split --subset pretrain --fraction 1`` run there), with params.yaml plus
overlays. The method object the job builds is kept, so that
``ALSO.pretext_metrics`` can be computed on the validation frames
(``FrameIndex.ids("val")``, not augmented, backbone and decoder in eval mode,
fixed query seed) right after initialisation and after the last epoch: the
checkpoint holds only the backbone, not the decoder. ``--frozen-backbone``
trains the decoder alone on the random backbone (its weights frozen, its
BatchNorm statistics still following the data): the accuracy a decoder reaches
without the backbone learning anything. Prints one JSON line (``init``,
``after``: ``ALSO.pretext_metrics``; ``pretrain_seconds``: the job's epochs).

    python benchmarks/also_pretext.py --workdir /tmp/also [--params params.yaml --params overlay.yaml]
                                      [--frozen-backbone] [--out result.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from occbench.config import load_params
from occbench.data.batch import to_batch
from occbench.data.dataset import FrameIndex
from occbench.io import read_json
from occbench.models.voxelize import voxelize
from occbench.pretrain import job
from occbench.pretrain.also import ALSO
from occbench.workflow.grid import PretrainRun, index_path

ROOT = Path(__file__).resolve().parents[1]
QUERY_SEED = 1234


def held_out(backbone, method, batch, voxels) -> dict[str, float]:
    """Pretext metrics on the validation batch, in eval mode; the train modes are restored."""
    modes = backbone.training, method.training
    backbone.eval()
    method.eval()
    with torch.no_grad():
        metrics = method.pretext_metrics(backbone(voxels), batch, voxels, torch.Generator().manual_seed(QUERY_SEED))
    backbone.train(modes[0])
    method.train(modes[1])
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--params", type=Path, action="append")
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--backbone", default="small")
    parser.add_argument("--frozen-backbone", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    params = load_params(*[path.resolve() for path in (args.params or [ROOT / "params.yaml"])])
    out = args.out.resolve() if args.out else None
    os.chdir(args.workdir)
    index = FrameIndex(index_path(args.dataset))
    val_ids = index.ids("val")
    batch = to_batch([index.load(frame_id) for frame_id in val_ids])
    seen = {}

    def build(backbone, settings):
        method = ALSO(backbone, settings)
        voxels = voxelize(batch.points, batch.intensity, backbone.grid)
        seen.update(backbone=backbone, method=method, voxels=voxels,
                    init=held_out(backbone, method, batch, voxels))
        if args.frozen_backbone:
            backbone.requires_grad_(False)
        return method

    job.METHODS = {**job.METHODS, "also": build}
    run = PretrainRun(args.backbone, args.dataset, "also", 1.0)
    started = time.perf_counter()
    job.pretrain(params, run)
    seconds = time.perf_counter() - started
    meta = read_json(run.directory / "run_meta.json")
    after = held_out(seen["backbone"], seen["method"], batch, seen["voxels"])
    result = {
        "params": [str(path) for path in (args.params or [])],
        "frozen_backbone": args.frozen_backbone,
        "also": params["pretrain"]["methods"]["also"],
        "epochs": params["pretrain"]["epochs"], "lr": params["pretrain"]["lr"],
        "train_frames": meta["split"]["frames"], "val_frames": len(val_ids),
        "pretrain_seconds": meta["wall_seconds"], "job_seconds": seconds,
        "last_epoch": meta["history"][-1],
        "init": seen["init"], "after": after,
    }
    line = json.dumps(result)
    print(line)
    if out:
        out.write_text(line + "\n")


if __name__ == "__main__":
    main()
