"""Percentage of Correct Keypoints (PCK) for multi-instance predictions, synced across DDP."""

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["PCK", "greedy_match"]


def greedy_match(cost: Tensor) -> list[tuple[int, int]]:
    """Pair rows and columns of ``cost`` greedily, cheapest first, each used at most once.

    Infinite costs are never matched. Greedy matching is what COCO's evaluation does too, and
    needs no solver dependency.

    Args:
        cost: ``[M, N]`` matrix.

    Returns:
        ``(row, column)`` pairs.
    """
    cost = cost.clone()
    pairs: list[tuple[int, int]] = []
    for _ in range(min(cost.shape)):
        index = int(cost.argmin())
        row, col = divmod(index, cost.shape[1])
        if not torch.isfinite(cost[row, col]):
            break
        pairs.append((row, col))
        cost[row, :] = torch.inf
        cost[:, col] = torch.inf
    return pairs


class PCK(Metric):
    """Fraction of labelled ground-truth keypoints predicted within ``threshold * box size``.

    Each ground-truth instance is matched to at most one predicted instance (greedily, by mean
    normalised distance over its labelled keypoints); keypoints of unmatched instances count as
    wrong, so missed people lower the score. The box size is the longer side of the
    ground-truth box. Counts are sums, so the metric is exact under DDP.

    Args:
        num_keypoints: keypoints per instance ``K``.
        threshold: the distance, as a fraction of box size, under which a keypoint is correct.
        kwargs: passed to :class:`torchmetrics.Metric`.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    correct: Tensor
    total: Tensor

    def __init__(self, num_keypoints: int, threshold: float = 0.2, **kwargs: object) -> None:
        super().__init__(**kwargs)
        if num_keypoints < 1:
            raise ValueError(f"num_keypoints must be >= 1, got {num_keypoints}")
        if threshold <= 0:
            raise ValueError(f"threshold must be positive, got {threshold}")
        self.num_keypoints = num_keypoints
        self.threshold = threshold
        self.add_state("correct", torch.zeros(num_keypoints), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(num_keypoints), dist_reduce_fx="sum")

    def update(self, preds: list[dict[str, Tensor]], target: list[dict[str, Tensor]]) -> None:
        """Add a batch.

        Args:
            preds: per image ``keypoints`` ``[N, K, 3]`` (x, y, score) in pixels.
            target: per image ``keypoints`` ``[M, K, 3]`` (x, y, visibility) and ``boxes``
                ``[M, 4]`` xyxy, in the same pixels.
        """
        for pred, gt in zip(preds, target, strict=True):
            gt_kpts, pred_kpts = gt["keypoints"].float(), pred["keypoints"].float()
            if gt_kpts.shape[-2] != self.num_keypoints:
                raise ValueError(
                    f"PCK was built for {self.num_keypoints} keypoints, target has "
                    f"{gt_kpts.shape[-2]}"
                )
            labelled = gt_kpts[..., 2] > 0  # [M, K]
            self.total += labelled.sum(0).to(self.total)
            if len(pred_kpts) == 0 or len(gt_kpts) == 0:
                continue
            sides = (gt["boxes"][:, 2:] - gt["boxes"][:, :2]).float().amax(-1).clamp(min=1.0)
            diff = pred_kpts[None, :, :, :2] - gt_kpts[:, None, :, :2]
            dist = diff.norm(dim=-1) / sides.view(-1, 1, 1)  # [M, N, K]
            weight = labelled.unsqueeze(1).float()
            cost = (dist * weight).sum(-1) / weight.sum(-1).clamp(min=1)
            cost[~labelled.any(-1)] = torch.inf
            for row, col in greedy_match(cost):
                hit = (dist[row, col] <= self.threshold) & labelled[row]
                self.correct += hit.to(self.correct)

    def compute(self) -> Tensor:
        """Return the PCK over all keypoints seen (0 when none were labelled)."""
        return self.correct.sum() / self.total.sum().clamp(min=1)

    def per_keypoint(self) -> Tensor:
        """Return PCK per keypoint type, ``[K]`` (of the local, unsynced state)."""
        return self.correct / self.total.clamp(min=1)
