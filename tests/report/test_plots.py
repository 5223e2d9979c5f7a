from itertools import product

import pandas as pd

from occbench.report import plots
from occbench.report.aggregate import summarise
from occbench.report.plots import plot_label_efficiency, plot_pretrain_scaling

MAIN_METRICS = {"segmentation": "miou"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_summary(pretrain_fractions, label_split_seeds=(0,)):
    """Two seeds of scratch and of ALSO at each pre-training fraction, three label fractions, on each label split."""
    base = {"task": "segmentation", "backbone": "small", "finetune_dataset": "synthetic", "metric": "miou",
            "mode": "full"}
    scratch = {"method": "scratch", "pretrain_dataset": None, "pretrain_fraction": None,
               "pretrained_fraction": None, "untrained_modules": ""}
    rows = []
    for label_fraction in (0.01, 0.1, 1.0):
        for seed, split_seed in product((0, 1), label_split_seeds):
            run = {**base, "label_fraction": label_fraction, "seed": seed, "label_split_seed": split_seed}
            rows.append({**run, **scratch, "value": 0.3 + 0.1 * label_fraction + 0.01 * seed})
            for fraction in pretrain_fractions:
                also = {"method": "also", "pretrain_dataset": "synthetic", "pretrain_fraction": fraction,
                        "pretrained_fraction": 0.59, "untrained_modules": "to_bev,bev_neck"}
                value = 0.35 + 0.1 * label_fraction + 0.05 * fraction + 0.02 * seed
                rows.append({**run, **also, "value": value})
    return summarise(pd.DataFrame(rows))


def assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 10_000  # axes, lines and labels, not an empty canvas


def test_label_efficiency_plot(tmp_path):
    paths = plot_label_efficiency(make_summary([0.5, 1.0]), MAIN_METRICS, tmp_path, method_order=["also"])
    assert paths == [tmp_path / "label_efficiency_segmentation_synthetic_small.png"]
    assert_png(paths[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == [paths[0].name]  # no temp files left


def test_plot_titles_say_what_the_error_bars_span(tmp_path, monkeypatch):
    titles = []
    monkeypatch.setattr(plots, "_save", lambda figure, path: titles.append(figure.axes[0].get_title()) or path)
    plot_label_efficiency(make_summary([1.0], label_split_seeds=(0, 3)), MAIN_METRICS, tmp_path)
    plot_pretrain_scaling(make_summary([0.5, 1.0]), MAIN_METRICS, tmp_path)
    assert titles[0] == ("segmentation fine-tuned on synthetic, backbone small\n"
                         "error bars: 95 % t-interval over 2 training seeds × 2 label splits, one run each")
    assert titles[1] == ("segmentation fine-tuned on synthetic, backbone small, 1 % labels\n"
                         "error bars: 95 % t-interval over 2 training seeds, all on one label split per label\nfraction")
    plot_label_efficiency(make_summary([1.0]).assign(mode="probe"), MAIN_METRICS, tmp_path)
    assert titles[-1].startswith("segmentation probed (frozen backbone, head trained) on synthetic, backbone small\n")


def test_pretrain_scaling_one_plot_per_label_fraction(tmp_path):
    paths = plot_pretrain_scaling(make_summary([0.5, 1.0]), MAIN_METRICS, tmp_path)
    stem = "pretrain_scaling_segmentation_synthetic_small_labels"
    assert [path.name for path in paths] == [f"{stem}_{key}.png" for key in ("1pct", "10pct", "100pct")]
    for path in paths:
        assert_png(path)


def test_a_probe_is_plotted_apart_and_full_keeps_its_names(tmp_path):
    summary = make_summary([0.5, 1.0])
    both = pd.concat([summary, summary.assign(mode="probe")])
    assert [path.name for path in plot_label_efficiency(both, MAIN_METRICS, tmp_path)] == [
        "label_efficiency_segmentation_synthetic_small.png", "label_efficiency_segmentation_synthetic_small_probe.png"]
    scaling = [path.name for path in plot_pretrain_scaling(both, MAIN_METRICS, tmp_path)]
    assert scaling[:3] == [f"pretrain_scaling_segmentation_synthetic_small_labels_{key}.png"
                           for key in ("1pct", "10pct", "100pct")]
    assert scaling[3:] == [f"pretrain_scaling_segmentation_synthetic_small_probe_labels_{key}.png"
                           for key in ("1pct", "10pct", "100pct")]


def test_pretrain_scaling_skipped_for_a_single_fraction(tmp_path):
    assert plot_pretrain_scaling(make_summary([1.0]), MAIN_METRICS, tmp_path) == []
    assert list(tmp_path.iterdir()) == []
