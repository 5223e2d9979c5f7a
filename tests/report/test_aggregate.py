import json
import math

import pytest

from occbench.report.aggregate import collect_runs, dvc_metrics, fraction_key, summarise

T_DF1, T_DF2, T_DF3 = 12.706205, 4.302653, 3.182446  # t_{0.975, df}: two, three and four runs
# (method, label_fraction) -> mIoU per seed
MIOU = {
    ("scratch", 0.1): [0.30, 0.34],
    ("scratch", 1.0): [0.50, 0.54],
    ("also", 0.1): [0.40, 0.44],
    ("also", 1.0): [0.60, 0.62],
}


# What fine-tuning's load report says of ALSO's checkpoint: the BEV neck never trained.
ALSO_LOAD = {"loaded_fraction": 1.0, "pretrained_fraction": 0.59, "untrained_modules": ["to_bev", "bev_neck"]}


def write_run(root, method, label_fraction, seed, miou, iou=None, load=ALSO_LOAD, label_split_seed=0, mode=None):
    """A run's two files; ``mode`` None records none, as runs did before fine-tuning modes existed."""
    run_dir = root / f"{method}_{label_fraction}_{seed}_{label_split_seed}_{mode}"
    run_dir.mkdir()
    pretrained = method not in ("scratch", "scratch_matched")
    run = {
        "task": "segmentation",
        "backbone": "small",
        "method": method,
        "pretrain_dataset": None if method == "scratch" else "synthetic",
        "pretrain_fraction": None if method == "scratch" else 1.0,
        "finetune_dataset": "synthetic",
        "label_fraction": label_fraction,
        "seed": seed,
        "label_split_seed": label_split_seed,
        **({} if mode is None else {"mode": mode}),
    }
    (run_dir / "run_meta.json").write_text(json.dumps({"run": run, "pretrained": load if pretrained else None}))
    metrics = {"miou": miou, "accuracy": 0.8, "iou": iou or {"road": 0.9, "pole": None}}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    return run_dir


@pytest.fixture
def run_dirs(tmp_path):
    return [
        write_run(tmp_path, method, fraction, seed, miou)
        for (method, fraction), values in MIOU.items()
        for seed, miou in enumerate(values)
    ]


def test_collect_runs_long_format(run_dirs):
    runs = collect_runs(run_dirs)
    # miou, accuracy, iou/road per run; the null IoU of "pole" is no observation.
    assert len(runs) == 8 * 3
    assert set(runs["metric"]) == {"miou", "accuracy", "iou/road"}
    row = runs[(runs["method"] == "also") & (runs["seed"] == 1) & (runs["label_fraction"] == 1.0)]
    assert row.set_index("metric")["value"].to_dict() == {"miou": 0.62, "accuracy": 0.8, "iou/road": 0.9}
    assert row["pretrain_fraction"].tolist() == [1.0] * 3
    scratch = runs[runs["method"] == "scratch"]
    assert scratch["pretrain_dataset"].isna().all() and scratch["pretrain_fraction"].isna().all()


def test_collect_runs_reads_what_pretraining_trained(run_dirs):
    runs = collect_runs(run_dirs)
    also, scratch = runs[runs["method"] == "also"], runs[runs["method"] == "scratch"]
    assert set(also["untrained_modules"]) == {"to_bev,bev_neck"}
    assert also["pretrained_fraction"].tolist() == [0.59] * len(also)
    assert set(scratch["untrained_modules"]) == {""} and scratch["pretrained_fraction"].isna().all()


def test_pretrained_run_without_load_record_is_refused(tmp_path):
    run_dir = write_run(tmp_path, "also", 0.1, 0, 0.4, load={"loaded_fraction": 1.0})
    with pytest.raises(ValueError, match=f"{run_dir / 'run_meta.json'}: 'pretrained' must hold pretrained_fraction"):
        collect_runs([run_dir])


def test_summary_carries_what_pretraining_trained_and_refuses_disagreeing_runs(run_dirs, tmp_path):
    summary = summarise(collect_runs(run_dirs))
    also, scratch = summary[summary["method"] == "also"], summary[summary["method"] == "scratch"]
    assert set(also["untrained_modules"]) == {"to_bev,bev_neck"} and set(also["pretrained_fraction"]) == {0.59}
    assert set(scratch["untrained_modules"]) == {""} and scratch["pretrained_fraction"].isna().all()
    other = write_run(tmp_path, "also", 0.1, 7, 0.4, load={**ALSO_LOAD, "untrained_modules": []})
    with pytest.raises(ValueError, match="disagree on what it trained"):
        summarise(collect_runs([*run_dirs, other]))


def test_malformed_or_missing_files_name_the_file(run_dirs):
    broken = run_dirs[0] / "metrics.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match=str(broken)):
        collect_runs(run_dirs)
    broken.write_text(json.dumps({"miou": "high"}))
    with pytest.raises(ValueError, match="metrics.json.*'miou'"):
        collect_runs(run_dirs)
    broken.unlink()
    with pytest.raises(ValueError, match=str(broken)):
        collect_runs(run_dirs)
    meta = run_dirs[1] / "run_meta.json"
    meta.write_text(json.dumps({"run": {"task": "segmentation"}}))
    with pytest.raises(ValueError, match=str(meta)):
        collect_runs(run_dirs[1:])


def test_summarise_mean_ci_and_delta(run_dirs):
    summary = summarise(collect_runs(run_dirs))
    miou = summary[summary["metric"] == "miou"].set_index(["method", "label_fraction"])
    assert len(miou) == 4  # scratch rows survive their NaN pre-training keys
    assert miou["n_runs"].tolist() == miou["n_seeds"].tolist() == [2, 2, 2, 2]
    assert miou["n_label_splits"].tolist() == [1, 1, 1, 1]
    expected = {
        # (mean, s / sqrt(2) = |a - b| / 2, delta to scratch)
        ("scratch", 0.1): (0.32, 0.02, 0.0),
        ("scratch", 1.0): (0.52, 0.02, 0.0),
        ("also", 0.1): (0.42, 0.02, 0.10),
        ("also", 1.0): (0.61, 0.01, 0.09),
    }
    for key, (mean, standard_error, delta) in expected.items():
        row = miou.loc[key]
        assert row["mean"] == pytest.approx(mean)
        assert row["ci95"] == pytest.approx(T_DF1 * standard_error, rel=1e-6)
        assert row["delta_scratch"] == pytest.approx(delta, abs=1e-12)
    accuracy = summary[summary["metric"] == "accuracy"]
    assert accuracy["ci95"].tolist() == pytest.approx([0.0] * 4)


def test_delta_is_nan_without_scratch_and_duplicates_are_rejected(run_dirs):
    runs = collect_runs(run_dirs)
    summary = summarise(runs[runs["method"] == "also"])
    assert summary["delta_scratch"].isna().all()
    with pytest.raises(ValueError, match="twice"):
        summarise(collect_runs(run_dirs + run_dirs[:1]))


def paired_runs(tmp_path, scratch, also):
    """Runs at 10 % labels from {seed: mIoU}, in the order given."""
    dirs = [write_run(tmp_path, "scratch", 0.1, seed, miou) for seed, miou in scratch.items()]
    dirs += [write_run(tmp_path, "also", 0.1, seed, miou) for seed, miou in also.items()]
    summary = summarise(collect_runs(dirs))
    return summary[summary["metric"] == "miou"].set_index("method")


def test_paired_difference_by_hand(tmp_path):
    """Per seed also - scratch = 0.04, 0.01, 0.07: mean 0.04, s = 0.03."""
    miou = paired_runs(tmp_path, scratch={3: 0.30, 11: 0.35, 7: 0.40}, also={7: 0.47, 3: 0.34, 11: 0.36})
    also = miou.loc["also"]
    assert also["paired_n"] == 3 and also["unpaired_runs"] == ""
    assert also["paired_diff_mean"] == pytest.approx(0.04)
    assert also["paired_diff_ci95"] == pytest.approx(T_DF2 * 0.03 / math.sqrt(3), rel=1e-6)
    # Unpaired, the cell's own spread (s = 0.07 for 0.34, 0.36, 0.47) would be far wider.
    assert also["ci95"] == pytest.approx(T_DF2 * 0.07 / math.sqrt(3), rel=1e-6)
    assert also["delta_scratch"] == pytest.approx(0.04)
    scratch = miou.loc["scratch"]  # paired with itself
    assert (scratch["paired_n"], scratch["paired_diff_mean"], scratch["paired_diff_ci95"]) == (3, 0.0, 0.0)


def test_pairing_is_by_seed_not_by_order(tmp_path):
    """Seeds 3, 11, 7 against 7, 11, 3 paired in written order would give 0.17, 0.01, -0.06, a wider interval."""
    by_seed = paired_runs(tmp_path, scratch={3: 0.30, 11: 0.35, 7: 0.40}, also={3: 0.34, 11: 0.36, 7: 0.47})
    (tmp_path / "shuffled").mkdir()
    shuffled = paired_runs(tmp_path / "shuffled", scratch={3: 0.30, 11: 0.35, 7: 0.40},
                           also={7: 0.47, 11: 0.36, 3: 0.34})
    for summary in (by_seed, shuffled):
        assert summary.loc["also", "paired_diff_ci95"] == pytest.approx(T_DF2 * 0.03 / math.sqrt(3), rel=1e-6)


def test_seed_without_scratch_partner_is_named_not_dropped(tmp_path):
    """Seed 2 has no scratch run: the pairs are seeds 0 and 1 (0.04, 0.01), and summarise says so."""
    also = paired_runs(tmp_path, scratch={0: 0.30, 1: 0.35}, also={0: 0.34, 1: 0.36, 2: 0.47}).loc["also"]
    assert (also["n_runs"], also["paired_n"], also["unpaired_runs"]) == (3, 2, "2/0")
    assert also["paired_diff_mean"] == pytest.approx(0.025)
    assert also["paired_diff_ci95"] == pytest.approx(T_DF1 * 0.015, rel=1e-6)
    (tmp_path / "none").mkdir()
    alone = paired_runs(tmp_path / "none", scratch={}, also={0: 0.34, 2: 0.47}).loc["also"]
    assert (alone["paired_n"], alone["unpaired_runs"]) == (0, "0/0,2/0")
    assert math.isnan(alone["paired_diff_mean"]) and math.isnan(alone["paired_diff_ci95"])


# (training seed, label-split seed) -> mIoU at 10 % labels: two seeds crossed with two label splits.
CROSSED = {
    "scratch": {(0, 0): 0.30, (0, 1): 0.40, (1, 0): 0.32, (1, 1): 0.38},
    "also": {(0, 0): 0.36, (0, 1): 0.41, (1, 0): 0.35, (1, 1): 0.42},
}


def crossed_summary(tmp_path, runs=CROSSED):
    dirs = [write_run(tmp_path, method, 0.1, seed, miou, label_split_seed=split)
            for method, by_cell in runs.items() for (seed, split), miou in by_cell.items()]
    summary = summarise(collect_runs(dirs))
    return summary[summary["metric"] == "miou"].set_index("method")


def test_pairing_covers_training_seeds_and_label_splits(tmp_path):
    """Per (seed, split) also - scratch = 0.06, 0.01, 0.03, 0.04: mean 0.035, s = sqrt(0.00130 / 3).
    Pairing by seed alone could not tell the two splits of a seed apart (merge many-to-one fails)."""
    also = crossed_summary(tmp_path).loc["also"]
    assert (also["n_runs"], also["n_seeds"], also["n_label_splits"], also["paired_n"]) == (4, 2, 2, 4)
    assert also["paired_diff_mean"] == pytest.approx(0.035)
    assert also["paired_diff_ci95"] == pytest.approx(T_DF3 * math.sqrt(0.0013 / 3) / 2, rel=1e-6)
    # The cell's own interval spans all four runs: 0.36, 0.41, 0.35, 0.42, mean 0.385, s^2 = 0.0037 / 3.
    assert also["mean"] == pytest.approx(0.385)
    assert also["ci95"] == pytest.approx(T_DF3 * math.sqrt(0.0037 / 3) / 2, rel=1e-6)


def test_run_without_scratch_partner_names_its_seed_and_label_split(tmp_path):
    scratch = {cell: miou for cell, miou in CROSSED["scratch"].items() if cell != (1, 1)}
    also = crossed_summary(tmp_path, {"scratch": scratch, "also": CROSSED["also"]}).loc["also"]
    assert (also["paired_n"], also["unpaired_runs"]) == (3, "1/1")
    assert also["paired_diff_mean"] == pytest.approx((0.06 + 0.01 + 0.03) / 3)


def test_a_probe_pairs_with_the_random_backbone_probe_and_never_with_full_scratch(tmp_path):
    """Full runs (recorded without a mode, as before modes existed): also - scratch = 0.06, 0.02 per seed;
    probes: 0.15, 0.19. Each mean 0.04 / 0.17 with s / sqrt(2) = 0.02; pairing a probe with full scratch
    would give -0.10 and -0.14."""
    values = {("full", "scratch"): (0.30, 0.40), ("full", "also"): (0.36, 0.42),
              ("probe", "scratch"): (0.05, 0.07), ("probe", "also"): (0.20, 0.26)}
    dirs = [write_run(tmp_path, method, 0.1, seed, miou, mode=None if mode == "full" else mode)
            for (mode, method), by_seed in values.items() for seed, miou in enumerate(by_seed)]
    runs = collect_runs(dirs)
    assert runs.drop_duplicates(["mode", "method", "seed"])["mode"].value_counts().to_dict() == {"full": 4, "probe": 4}
    summary = summarise(runs)
    miou = summary[summary["metric"] == "miou"].set_index(["mode", "method"])
    for mode, paired_mean, delta in (("full", 0.04, 0.04), ("probe", 0.17, 0.17)):
        also = miou.loc[(mode, "also")]
        assert (also["n_runs"], also["paired_n"], also["unpaired_runs"]) == (2, 2, "")
        assert also["paired_diff_mean"] == pytest.approx(paired_mean)
        assert also["paired_diff_ci95"] == pytest.approx(T_DF1 * 0.02, rel=1e-6)
        assert also["delta_scratch"] == pytest.approx(delta)
    metrics = dvc_metrics(summary, {"segmentation": "miou"})
    assert set(metrics) == {"segmentation", "segmentation_probe"}  # full keeps the key it had before modes
    cell = metrics["segmentation_probe"]["synthetic"]["small"]["also@synthetic_pt_100pct"]["labels_10pct"]
    assert cell["paired_diff_mean"] == pytest.approx(0.17)


def test_compute_matched_scratch_has_no_load_report_and_is_paired_like_any_source(tmp_path):
    runs = {**CROSSED, "scratch_matched": {(0, 0): 0.33, (0, 1): 0.42, (1, 0): 0.33, (1, 1): 0.40}}
    matched = crossed_summary(tmp_path, runs).loc["scratch_matched"]
    assert matched["pretrain_fraction"] == 1.0 and math.isnan(matched["pretrained_fraction"])
    assert (matched["paired_n"], matched["paired_diff_mean"]) == (4, pytest.approx((0.03 + 0.02 + 0.01 + 0.02) / 4))


def test_scratch_naming_a_pretraining_is_refused(run_dirs):
    runs = collect_runs(run_dirs)
    runs.loc[runs["method"] == "scratch", "pretrain_dataset"] = "synthetic"
    with pytest.raises(ValueError, match="scratch runs must not name a pre-training"):
        summarise(runs)


def test_dvc_metrics_numbers_only_and_dot_free_keys(run_dirs):
    summary = summarise(collect_runs(run_dirs))
    metrics = dvc_metrics(summary, {"segmentation": "miou"})
    rows = metrics["segmentation"]["synthetic"]["small"]
    assert set(rows) == {"scratch", "also@synthetic_pt_100pct"}
    assert set(rows["scratch"]) == {"labels_10pct", "labels_100pct"}
    cell = rows["also@synthetic_pt_100pct"]["labels_100pct"]
    assert set(cell) == {"mean", "ci95", "delta_scratch", "paired_diff_mean", "paired_diff_ci95"}
    assert cell["mean"] == pytest.approx(0.61)
    assert cell["ci95"] == pytest.approx(T_DF1 * 0.01, rel=1e-6)
    assert cell["delta_scratch"] == pytest.approx(0.09)
    # Per seed 0.60 - 0.50 = 0.10 and 0.62 - 0.54 = 0.08: s / sqrt(2) = 0.01.
    assert cell["paired_diff_mean"] == pytest.approx(0.09)
    assert cell["paired_diff_ci95"] == pytest.approx(T_DF1 * 0.01, rel=1e-6)

    def walk(node, path=()):
        for key, value in node.items():
            assert "." not in key, path + (key,)
            if isinstance(value, dict):
                yield from walk(value, path + (key,))
            else:
                yield value

    values = list(walk(metrics))
    assert len(values) == 4 * 5
    assert all(type(value) is float for value in values)
    json.dumps(metrics, allow_nan=False)


def test_dvc_metrics_writes_single_seed_interval_as_null(tmp_path):
    run_dir = write_run(tmp_path, "scratch", 0.1, 0, 0.3)
    metrics = dvc_metrics(summarise(collect_runs([run_dir])), {"segmentation": "miou"})
    assert metrics["segmentation"]["synthetic"]["small"]["scratch"]["labels_10pct"] == {
        "mean": 0.3,
        "ci95": None,
        "delta_scratch": 0.0,
        "paired_diff_mean": 0.0,
        "paired_diff_ci95": None,
    }
    with pytest.raises(ValueError, match="main metric"):
        dvc_metrics(summarise(collect_runs([run_dir])), {})


@pytest.mark.parametrize(
    ("fraction", "key"),
    [(1.0, "100pct"), (0.1, "10pct"), (0.01, "1pct"), (0.001, "0p1pct"), (0.25, "25pct"), (0.005, "0p5pct")],
)
def test_fraction_key(fraction, key):
    assert fraction_key(fraction) == key


def test_fraction_key_rejects_non_fractions():
    for bad in (0.0, 1.5, math.nan):
        with pytest.raises(ValueError):
            fraction_key(bad)
