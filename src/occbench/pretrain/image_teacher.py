"""One image-teacher run: an image encoder trained by masked image modelling on the camera images of a
pre-training split, through ``fit`` (so it resumes and is seeded like every training job), then saved
with its SHA-256 for the method it teaches (OccFeat) to load frozen."""

from __future__ import annotations

from occbench.data.loader import RunFrames
from occbench.io import sha256_file
from occbench.models.image_encoder import ImageEncoder, MaskedImageModel, save_image_encoder
from occbench.pretrain.job import finish_run, fit_between_pretext_measures
from occbench.training import TrainConfig, seed_everything
from occbench.workflow.grid import ImageTeacherRun, digest, image_teacher_digest

NEEDS = frozenset({"cameras"})


def train_image_teacher(params: dict, run: ImageTeacherRun) -> dict:
    """Train, save and describe the image teacher ``run``; returns its run_meta."""
    settings, execution, seed = run.settings(params), params["execution"], params["pretrain"]["seed"]
    seed_everything(seed, execution["threads"])
    frames = RunFrames.read(run.dataset, "pretrain", run.fraction)
    model = MaskedImageModel(ImageEncoder(tuple(settings["channels"])), settings["mask_ratio"])
    config = TrainConfig.from_settings(settings, seed, settings["epochs"])
    params_digest = image_teacher_digest(params, run)
    split_sha256 = sha256_file(frames.split_file)
    resume_key = digest({"params": params_digest, "split": split_sha256})
    _, measured = fit_between_pretext_measures(model, frames, frames.training_set(params, seed), NEEDS, config,
                                               execution, run.directory, resume_key, f"image teacher of {run.method}")
    meta = {
        "run": {"dataset": run.dataset, "method": run.method, "fraction": run.fraction},
        "objective": "masked image modelling",
        "settings": settings,
        "hparams_digest": params_digest,
        "resume_key": resume_key,
        "split": {"file": str(frames.split_file), "sha256": split_sha256, "frames": len(frames.train_ids)},
        **measured,
    }
    save_image_encoder(run.checkpoint, model.encoder.cpu(), meta)
    meta["sha256"] = sha256_file(run.checkpoint)
    finish_run(run.directory, meta)
    return meta
