import pytest
import torch

from dense_lightning.metrics import PCK, greedy_match


def _target(kpts, boxes):
    return {"keypoints": torch.tensor(kpts, dtype=torch.float32), "boxes": torch.tensor(boxes)}


def _pred(kpts):
    kpts = torch.tensor(kpts, dtype=torch.float32)
    return {"keypoints": kpts, "scores": torch.ones(len(kpts))}


GT = _target(
    [[[10, 10, 2], [20, 20, 2], [30, 30, 0]], [[60, 60, 2], [70, 70, 1], [80, 80, 2]]],
    [[0.0, 0.0, 40.0, 40.0], [50.0, 50.0, 100.0, 100.0]],
)


def test_perfect_predictions_in_any_order_score_one():
    metric = PCK(num_keypoints=3)
    pred = GT["keypoints"].flip(0).clone()
    pred[..., 2] = 0.9
    metric.update([_pred(pred.tolist())], [GT])
    assert float(metric.compute()) == 1.0
    assert metric.per_keypoint().tolist() == [1.0, 1.0, 1.0]


def test_threshold_is_relative_to_box_size():
    metric = PCK(num_keypoints=3, threshold=0.2)
    pred = GT["keypoints"].clone()
    pred[0, :, 0] += 7.0  # 7 px < 0.2 * 40 = 8 px: still correct
    pred[1, 0, 0] += 11.0  # 11 px > 0.2 * 50 = 10 px: wrong
    metric.update([_pred(pred.tolist())], [GT])
    # Five labelled keypoints (the third of instance 0 is unlabelled), four correct.
    assert float(metric.compute()) == pytest.approx(4 / 5)


def test_missed_instances_count_as_wrong_and_empty_inputs():
    metric = PCK(num_keypoints=3)
    metric.update([_pred(GT["keypoints"][:1].tolist())], [GT])
    assert float(metric.compute()) == pytest.approx(2 / 5)
    metric.reset()
    metric.update([{"keypoints": torch.zeros(0, 3, 3), "scores": torch.zeros(0)}], [GT])
    assert float(metric.compute()) == 0.0
    metric.reset()
    assert float(metric.compute()) == 0.0


def test_rejects_wrong_keypoint_count():
    with pytest.raises(ValueError, match="num_keypoints"):
        PCK(num_keypoints=0)
    metric = PCK(num_keypoints=4)
    with pytest.raises(ValueError, match="built for 4 keypoints"):
        metric.update([_pred(GT["keypoints"].tolist())], [GT])


def test_states_reduce_by_sum_for_ddp():
    metric = PCK(num_keypoints=3)
    assert set(metric._defaults) == {"correct", "total"}
    assert all(fn.__name__ == "dim_zero_sum" for fn in metric._reductions.values())


def test_greedy_match_cheapest_first():
    cost = torch.tensor([[1.0, 0.5], [0.2, 3.0], [torch.inf, torch.inf]])
    assert sorted(greedy_match(cost)) == [(0, 1), (1, 0)]
    assert greedy_match(torch.full((2, 2), torch.inf)) == []
