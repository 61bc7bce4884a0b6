"""The accuracy benchmark's statistics: confusions, metrics, paired bootstrap, verdicts, oracle."""

import sys
from pathlib import Path

import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._accuracy_stats import (
    cell_fractions,
    confusions,
    metrics_of,
    oracle_confusions,
    paired_bootstrap,
    scores,
    verdict,
)
from dense_lightning.equivalent.cells import CellGeometry


def test_confusions_count_pixels_per_image_and_skip_ignored():
    target = torch.tensor([[[0, 1], [2, 255]], [[1, 1], [1, 1]]])
    pred = torch.tensor([[[0, 2], [2, 1]], [[1, 0], [1, 1]]])
    conf = confusions(pred, target, 3, 255)
    assert conf.shape == (2, 3, 3)
    assert conf[0].tolist() == [[1, 0, 0], [0, 0, 1], [0, 0, 1]]  # the 255 pixel is skipped
    assert conf[1].tolist() == [[0, 0, 0], [1, 3, 0], [0, 0, 0]]


def test_metrics_match_the_task_metrics():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (6, 16, 16), generator=g)
    pred = torch.where(torch.rand(6, 16, 16, generator=g) < 0.6, target, 0)
    ours = scores(confusions(pred, target, 4, None))
    miou = MulticlassJaccardIndex(num_classes=4, average="macro")(pred, target)
    acc = MulticlassAccuracy(num_classes=4, average="micro")(pred, target)
    assert ours["miou"] == pytest.approx(float(miou), abs=1e-6)
    assert ours["pixel_acc"] == pytest.approx(float(acc), abs=1e-6)


def test_miou_skips_classes_absent_from_target_and_prediction():
    conf = torch.tensor([[5.0, 0, 0], [0, 5, 0], [0, 0, 0]])
    assert float(metrics_of(conf)["miou"]) == 1.0


def _arm(correct: float, seed: int, n: int = 40):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, 3, (n, 8, 8), generator=g)
    pred = torch.where(torch.rand(n, 8, 8, generator=g) < correct, target, 0)
    return target, confusions(pred, target, 3, None)


def test_paired_bootstrap_and_verdicts():
    better = [_arm(0.9, s)[1] for s in range(3)]
    worse = [_arm(0.5, s)[1] for s in range(3)]
    up = paired_bootstrap(better, worse, replicates=300)
    lo, hi = up["miou"]["ci_images"]
    assert 0 < lo <= up["miou"]["diff"] <= hi
    assert len(up["miou"]["per_seed"]) == 3
    assert up["miou"]["ci_hierarchical"][0] <= up["miou"]["ci_hierarchical"][1]
    assert verdict(up) == "holds"
    assert verdict(paired_bootstrap(worse, better, replicates=300)) == "reversed"
    same = paired_bootstrap(better, better, replicates=100)
    assert same["miou"]["ci_images"] == [0.0, 0.0]
    assert verdict(same) == "inconclusive"


def test_paired_bootstrap_refuses_unpaired_sets():
    with pytest.raises(ValueError, match="unpaired"):
        paired_bootstrap([_arm(0.9, 0, 40)[1]], [_arm(0.9, 0, 30)[1]])


def test_verdict_mixed_when_pixel_accuracy_moves_the_other_way():
    comparison = {
        "miou": {"ci_images": [0.01, 0.05]},
        "pixel_acc": {"ci_images": [-0.05, -0.01]},
    }
    assert verdict(comparison) == "mixed"


def test_cell_fractions_average_the_window_around_each_cell():
    masks = torch.zeros(1, 8, 8, dtype=torch.long)
    masks[0, :4, :4] = 1
    geometry = CellGeometry(stride=(4, 4), offset=(2.0, 2.0))  # windows [0, 4) and [4, 8)
    fractions = cell_fractions(masks, 2, geometry, (2, 2))
    assert fractions[0, 1].tolist() == [[1.0, 0.0], [0.0, 0.0]]
    assert torch.allclose(fractions.sum(1), torch.ones(1, 2, 2))


def test_oracle_at_stride_one_is_perfect_and_floor_is_background():
    g = torch.Generator().manual_seed(1)
    masks = torch.randint(0, 3, (4, 8, 8), generator=g)
    oracle, rule = oracle_confusions(masks, 3, 255, CellGeometry((1, 1), (0.0, 0.0)), (8, 8))
    assert scores(oracle["ceiling"])["miou"] == 1.0
    assert isinstance(rule, str)
    floor = scores(oracle["floor"])
    assert floor["pixel_acc"] == pytest.approx(float((masks == 0).float().mean()))
