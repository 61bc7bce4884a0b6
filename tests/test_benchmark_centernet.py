"""The CenterNet accuracy benchmark: --quick writes both reports with every arm and verdict."""

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import accuracy_centernet as bench
from benchmarks._accuracy_stats import interval_verdict, paired_intervals, resample_weights

STEMS = {
    "detection": ("accuracy_detection", "map"),
    "keypoints": ("accuracy_keypoints", "keypoint_ap"),
}


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("centernet")
    returned = bench.main(["--quick", "--out", str(out)])
    return out, returned


# Two tasks x two seeds x four trainings and six scored arms: under 10 s on two idle cores.
@pytest.mark.parametrize("task", ["detection", "keypoints"])
def test_quick_report(quick, task):
    out, returned = quick
    stem, headline = STEMS[task]
    payload = json.loads((out / f"{stem}.json").read_text())
    md = (out / f"{stem}.md").read_text()
    assert md.startswith(f"# Accuracy ({task})")
    assert payload["task"] == task and payload["complete"] is True
    assert payload["summary"]["metric"] == headline
    for key in ("platform", "cpu_count", "torch", "torch_threads", "date", "cpu_seconds"):
        assert key in payload["machine"]
    settings, runs = payload["settings"], payload["runs"]
    assert len(runs) == len(settings["seeds"]) >= 2
    assert payload["a_long_steps"] >= settings["steps"]
    for run in runs:
        assert "replicates" not in run  # tensors stay out of the JSON
        assert set(run["metrics"]) == set(bench.ARMS)
        assert run["training"]["a"]["steps"] == run["training"]["b"]["steps"]
        assert run["training"]["b_peak"]["steps"] == settings["steps"]
        assert run["training"]["b_lattice"]["steps"] == settings["steps"]
        # (b) and the ablation train without the lattice term, (b-lattice) with it.
        assert run["training"]["b"]["lattice_loss_weight"] == 0
        assert run["training"]["b_peak"]["lattice_loss_weight"] == 0
        assert run["training"]["b_lattice"]["lattice_loss_weight"] == settings["lattice_weight"]
        assert run["training"]["a_long"]["steps"] == payload["a_long_steps"]
        # The exports equal the dense networks on the lattice; the resampling reproduces the
        # task's own metric on the whole test set.
        assert run["export_max_rel_error"] < 1e-4
        assert run["resample_max_error"] < 1e-6
        assert run["cells"]["b"][0] == run["cells"]["a"][0] * 4
        assert run["cost"]["b"]["macs"] > run["cost"]["a"]["macs"]
    arms = payload["summary"]["arms"]
    assert set(arms) == set(bench.ARMS)
    for arm in bench.ARMS:
        per_seed = [r["metrics"][arm][headline] for r in runs]
        assert arms[arm][headline]["per_seed"] == per_seed
        assert arms[arm][headline]["mean"] == pytest.approx(sum(per_seed) / len(per_seed))
    comparisons = payload["summary"]["comparisons"]
    assert set(comparisons) == {f"{x}-{y}" for x, y in bench.COMPARISONS}
    for key, c in comparisons.items():
        first, second = key.split("-", 1)
        low, high = c[headline]["ci_images"]
        assert low <= high
        assert c[headline]["diff"] == pytest.approx(
            arms[first][headline]["mean"] - arms[second][headline]["mean"]
        )
        assert (c["verdict"] == "holds") == (low > 0)
        assert (c["verdict"] == "reversed") == (high < 0)
        assert c["verdict"] in md.replace("**", "")
    assert returned[task]["summary"]["comparisons"].keys() == comparisons.keys()


def test_interval_verdict():
    assert interval_verdict([0.01, 0.2]) == "holds"
    assert interval_verdict([-0.2, -0.01]) == "reversed"
    assert interval_verdict([-0.01, 0.2]) == "inconclusive"
    assert interval_verdict([0.0, 0.2]) == "inconclusive"


def test_paired_intervals_detect_a_shift():
    g = torch.Generator().manual_seed(0)
    base = [torch.rand(500, generator=g, dtype=torch.float64) for _ in range(3)]
    better = [b + 0.1 for b in base]
    out = paired_intervals(better, base, [0.6, 0.6, 0.6], [0.5, 0.5, 0.5])
    assert out["diff"] == pytest.approx(0.1)
    assert out["per_seed"] == pytest.approx([0.1] * 3)
    assert out["ci_images"] == pytest.approx([0.1, 0.1])
    noisy = paired_intervals(base, [b.flip(0) for b in base], [0.5] * 3, [0.5] * 3)
    assert noisy["ci_images"][0] < 0 < noisy["ci_images"][1]


def test_resample_weights_count_every_draw():
    weights = resample_weights(7, 11, torch.Generator().manual_seed(0))
    assert weights.shape == (11, 7)
    assert (weights.sum(1) == 7).all()


def test_resampled_ap_reproduces_cocoeval():
    """Identity resampling reproduces the metric; duplicating every image leaves AP unchanged;
    dropping the only image with a true positive lowers it."""
    from dense_lightning.metrics.detection import DetectionMAP

    boxes = torch.tensor([[10.0, 10.0, 30.0, 30.0]])
    preds = [
        {"boxes": boxes, "scores": torch.tensor([0.9]), "labels": torch.tensor([0])},
        {"boxes": boxes + 40, "scores": torch.tensor([0.8]), "labels": torch.tensor([0])},
    ]
    target = [{"boxes": boxes, "labels": torch.tensor([0])}] * 2
    metric = DetectionMAP()
    with bench.recording_cocoeval() as made:
        metric.update(preds, target)
        value = float(metric.compute()["map"])
    (evaluator,) = made
    values = bench.resampled_ap(evaluator, torch.tensor([[1.0, 1.0], [2.0, 2.0], [0.0, 2.0]]))
    assert values[0, 0] == pytest.approx(value)
    assert values[1, 0] == pytest.approx(value)
    assert values[2, 0] == pytest.approx(0.0)
    assert 0 < value < 1
