"""The occbench command line: one verb per step of the DAG.

Snakemake rules and DVC stages call these verbs and nothing else, so every step
can also be run, debugged and resumed by hand.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

from occbench.config import load_params
from occbench.io import NO_SPACE, DiskFull, disk_full, folder_lock
from occbench.preemption import Preempted
from occbench.workflow.grid import FINETUNE_MODES, FULL, PARAMS_ENV, REPORTS, Grid, params_files_from_env


def _writing(folder: Path, args) -> contextlib.AbstractContextManager:
    """The verb's output folder, locked while it writes there (by rank 0, the rank that writes)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return contextlib.nullcontext()
    return folder_lock(folder, f"occbench {args.verb}")


def _convert(args, params) -> None:
    from occbench.data.convert import convert
    from occbench.workflow.grid import data_dir

    with _writing(data_dir(args.dataset), args):
        failures = convert(params, args.dataset, workers=args.workers)
    if failures:
        raise SystemExit(f"occbench convert: {len(failures)} frame(s) failed:\n  " + "\n  ".join(failures))


def _split(args, params) -> None:
    from occbench.data.dataset import FrameIndex
    from occbench.data.splits import nested_subset, write_split
    from occbench.workflow.grid import index_path, split_inputs, split_path

    path = split_path(args.dataset, args.subset, args.fraction, args.split_seed)
    index = FrameIndex(index_path(args.dataset))
    drawn = split_inputs(params, args.subset, args.split_seed)
    write_split(path, nested_subset(index.scenes("train"), args.fraction, drawn["seed"], drawn["sampling"]))


def _pretrain(args, params) -> None:
    from occbench.pretrain.job import pretrain
    from occbench.workflow.grid import pretrain_run

    run = pretrain_run(params, args.backbone, args.dataset, args.method, args.fraction)
    with _writing(run.directory, args):
        pretrain(params, run)


def _image_teacher(args, params) -> None:
    from occbench.pretrain.image_teacher import train_image_teacher
    from occbench.workflow.grid import ImageTeacherRun

    run = ImageTeacherRun(args.dataset, args.method, args.fraction)
    with _writing(run.directory, args):
        meta = train_image_teacher(params, run)
    print({"sha256": meta["sha256"], **meta["pretext"]})


def _finetune(args, params) -> None:
    from occbench.tasks.job import finetune

    modes = params["grid"]["finetune_modes"]
    if args.mode not in modes:
        raise ValueError(f"--mode {args.mode!r} is not one of grid.finetune_modes {modes} of "
                         f"{' + '.join(map(str, args.params))} (modes: {', '.join(FINETUNE_MODES)})")
    run = Grid(params).finetune_run(args.task, args.backbone, args.dataset, args.source,
                                    args.label_fraction, args.seed, args.label_split_seed, args.mode)
    with _writing(run.directory, args):
        metrics = finetune(params, run)
    print({key: value for key, value in metrics.items() if not isinstance(value, dict)})


def _aggregate(args, params) -> None:
    from occbench.report.summary import aggregate

    aggregate(Grid(params), args.out)


def _report(args, params) -> None:
    from occbench.report.summary import report

    report(Grid(params), args.out)


def _validate(args, params) -> None:
    grid = Grid(params)
    print(f"{' + '.join(map(str, args.params))}: valid; {len(grid.pretrain_runs)} pre-training and "
          f"{len(grid.finetune_runs)} fine-tuning runs")


def _processes_option(verb: argparse.ArgumentParser) -> None:
    verb.add_argument("--processes", type=int, default=1,
                      help="data-parallel processes, one per GPU (launched through torchrun; default 1)")


def _launch_ranks(args, argv: list[str]) -> None:
    """Replace this process by torchrun running ``args.processes`` ranks of the same command.

    exec, not a child: the cluster's preemption signal then reaches torchrun, which
    passes it to every rank, and each rank saves and exits as one process would.
    """
    position = argv.index("--processes")
    rank_argv = argv[:position] + argv[position + 2:]
    os.execv(sys.executable, [sys.executable, "-m", "torch.distributed.run", "--standalone",
                              f"--nproc_per_node={args.processes}", "-m", "occbench", *rank_argv])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="occbench", description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, action="append",
                        help="experiment grid and hyperparameters (default: the files named by "
                             f"${PARAMS_ENV}, separated by {os.pathsep!r}, else params.yaml); "
                             "repeat to overlay a file on the previous ones, e.g. .test/params.yaml")
    verbs = parser.add_subparsers(dest="verb", required=True)

    verb = verbs.add_parser("convert", help="generate or convert a dataset into occbench frames")
    verb.add_argument("--dataset", required=True)
    verb.add_argument("--workers", type=int, default=1)
    verb.set_defaults(handler=_convert)

    verb = verbs.add_parser("split", help="write a nested, seeded subset of the training frames")
    verb.add_argument("--dataset", required=True)
    verb.add_argument("--subset", choices=["pretrain", "labels"], required=True)
    verb.add_argument("--fraction", type=float, required=True)
    verb.add_argument("--split-seed", type=int,
                      help="label-split seed (grid.label_split_seeds) of a 'labels' split; "
                           "'pretrain' splits are seeded by splits.seed")
    verb.set_defaults(handler=_split)

    verb = verbs.add_parser("pretrain", help="pre-train the backbone with one method")
    verb.add_argument("--backbone", required=True)
    verb.add_argument("--dataset", required=True)
    verb.add_argument("--method", required=True)
    verb.add_argument("--fraction", type=float, required=True)
    _processes_option(verb)
    verb.set_defaults(handler=_pretrain)

    verb = verbs.add_parser("image-teacher", help="train the self-supervised image teacher of a method (OccFeat) "
                                                  "on the camera images of a pre-training split")
    verb.add_argument("--dataset", required=True)
    verb.add_argument("--method", required=True, help="the method whose teacher.self_supervised settings it follows")
    verb.add_argument("--fraction", type=float, required=True)
    verb.set_defaults(handler=_image_teacher)

    verb = verbs.add_parser("finetune", help="fine-tune one downstream run and evaluate it")
    verb.add_argument("--task", required=True)
    verb.add_argument("--backbone", required=True)
    verb.add_argument("--dataset", required=True, help="fine-tuning dataset")
    verb.add_argument("--source", required=True,
                      help="'scratch', a pre-training tag METHOD-DATASET-pt_FRACTION, or a compute-matched "
                           "scratch scratch_matched-DATASET-pt_FRACTION")
    verb.add_argument("--label-fraction", type=float, required=True)
    verb.add_argument("--seed", type=int, required=True, help="training seed")
    verb.add_argument("--label-split-seed", type=int, default=0,
                      help="which nested label split (grid.label_split_seeds; default 0)")
    verb.add_argument("--mode", default=FULL,
                      help=f"how the backbone trains, one of grid.finetune_modes ({', '.join(FINETUNE_MODES)}): "
                           f"full fine-tuning or a probe of the frozen backbone (default {FULL})")
    _processes_option(verb)
    verb.set_defaults(handler=_finetune)

    verb = verbs.add_parser("aggregate", help="collect the grid's runs into summary tables and DVC metrics")
    verb.add_argument("--out", type=Path, default=REPORTS)
    verb.set_defaults(handler=_aggregate)

    verb = verbs.add_parser("report", help="write the papers' tables and plots from the summary")
    verb.add_argument("--out", type=Path, default=REPORTS)
    verb.set_defaults(handler=_report)

    verb = verbs.add_parser("validate", help="check params.yaml and count the runs of its grid")
    verb.set_defaults(handler=_validate)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if getattr(args, "processes", 1) > 1 and "WORLD_SIZE" not in os.environ:
        _launch_ranks(args, argv)
    started = time.perf_counter()
    try:
        args.params = args.params or params_files_from_env() or [Path("params.yaml")]
        params = load_params(*args.params)
        args.handler(args, params)
    except Preempted as stop:  # saved its state: a requeued or retried job resumes it
        print(f"occbench {args.verb}: {stop}", file=sys.stderr)
        return 128 + stop.signum
    except (ValueError, FileNotFoundError, ImportError, FloatingPointError) as err:  # bad input, a missing
        # tool or a diverged loss: say which
        if os.environ.get("OCCBENCH_DEBUG"):
            raise
        print(f"occbench {args.verb}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk: DiskFull names the file being written; else the OSError's file
        if err.errno not in NO_SPACE or os.environ.get("OCCBENCH_DEBUG"):
            raise
        full = err if isinstance(err, DiskFull) or err.filename is None else disk_full(err.filename, err)
        print(f"occbench {args.verb}: error: {full}", file=sys.stderr)
        return 2
    print(f"occbench {args.verb}: done in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
