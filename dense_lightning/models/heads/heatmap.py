"""Keypoint heads made only of local layers: per-keypoint heatmaps, alone or with CenterNet.

:class:`HeatmapHead` predicts one heatmap per keypoint. :class:`PoseHead` adds what multi-person
data needs to group keypoints into instances (CenterNet's pose model): an instance-centre
heatmap with box size and offset, and each keypoint's displacement from the instance centre.
Decoding regresses keypoints from centres and snaps them to heatmap peaks
(:func:`dense_lightning.ops.decode_keypoints`). Displacements are in input pixels, so the dense
and original models agree on the lattice without rescaling.
"""

from torch import Tensor, nn

from dense_lightning.models.heads.centernet import CenterNetHead, head_branch, heatmap_branch

__all__ = ["HeatmapHead", "PoseHead"]


class HeatmapHead(nn.Module):
    """One heatmap (logits) per keypoint at every cell of the feature map.

    Args:
        in_channels: channels of the backbone feature map.
        num_keypoints: number of keypoint types ``K``.
        channels: hidden width.
        prior_prob: initial heatmap probability (see :class:`CenterNetHead`).
    """

    def __init__(
        self, in_channels: int, num_keypoints: int, channels: int = 64, prior_prob: float = 0.1
    ) -> None:
        super().__init__()
        if num_keypoints < 1:
            raise ValueError(f"num_keypoints must be >= 1, got {num_keypoints}")
        self.num_keypoints = num_keypoints
        self.branch = heatmap_branch(in_channels, num_keypoints, channels, prior_prob)

    def forward(self, x: Tensor) -> Tensor:
        """Return heatmap logits ``[B, K, h, w]`` for features ``[B, C, h, w]``."""
        return self.branch(x)


class PoseHead(nn.Module):
    """CenterNet pose head: instance centres, box size/offset, keypoint heatmaps, displacements.

    Args:
        in_channels: channels of the backbone feature map.
        num_keypoints: number of keypoint types ``K``.
        num_classes: instance classes (1 for people).
        channels: hidden width of each branch.
        prior_prob: initial probability of both heatmaps.
        size_prior: initial box side in pixels.
    """

    def __init__(
        self,
        in_channels: int,
        num_keypoints: int,
        num_classes: int = 1,
        channels: int = 64,
        prior_prob: float = 0.1,
        size_prior: float = 32.0,
    ) -> None:
        super().__init__()
        self.num_keypoints = num_keypoints
        self.centers = CenterNetHead(in_channels, num_classes, channels, prior_prob, size_prior)
        self.keypoints = HeatmapHead(in_channels, num_keypoints, channels, prior_prob)
        self.displacement = head_branch(in_channels, 2 * num_keypoints, channels)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Return raw outputs for features ``[B, C, h, w]``.

        Returns:
            The :class:`CenterNetHead` outputs plus ``keypoint_heatmap`` logits ``[B, K, h, w]``
            and ``displacement`` ``[B, 2K, h, w]`` (``(dx, dy)`` per keypoint, in pixels).
        """
        out = self.centers(x)
        out["keypoint_heatmap"] = self.keypoints(x)
        out["displacement"] = self.displacement(x)
        return out
