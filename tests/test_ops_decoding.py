import math

import pytest
import torch

from dense_lightning.equivalent.cells import CellGeometry
from dense_lightning.ops import (
    decode_detections,
    draw_gaussians,
    heatmap_focal_loss,
    heatmap_nms,
    masked_l1_loss,
    refine_peaks,
    topk_peaks,
)

# Cell j of this map at image coordinate 8j (pixel 8j - 0.5).
_CORNER_8 = CellGeometry(stride=(8, 8), offset=(-0.5, -0.5))


def test_heatmap_nms_keeps_only_local_maxima():
    heat = torch.zeros(1, 1, 5, 5)
    heat[0, 0, 1, 1] = 0.9
    heat[0, 0, 1, 2] = 0.5
    heat[0, 0, 3, 4] = 0.7
    kept = heatmap_nms(heat)
    assert kept[0, 0].nonzero().tolist() == [[1, 1], [3, 4]]


def test_topk_peaks_global_and_per_channel():
    heat = torch.zeros(2, 3, 4, 5)
    heat[0, 2, 1, 3] = 0.9
    heat[0, 0, 3, 0] = 0.8
    heat[1, 1, 2, 2] = 0.7
    peaks = topk_peaks(heat, 2)
    assert peaks["scores"].shape == (2, 2)
    assert peaks["channels"][0].tolist() == [2, 0]
    assert peaks["ys"][0].tolist() == [1, 3] and peaks["xs"][0].tolist() == [3, 0]
    per = topk_peaks(heat, 1, per_channel=True)
    assert per["scores"].shape == (2, 3, 1)
    assert per["ys"][1, 1, 0] == 2 and per["xs"][1, 1, 0] == 2
    assert topk_peaks(heat, 1000)["scores"].shape == (2, 60)  # k clipped to the cell count


def _gaussian_map(cx, cy, size=12, sigma=1.2):
    ys, xs = torch.meshgrid(torch.arange(float(size)), torch.arange(float(size)), indexing="ij")
    return torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma**2))[None, None]


@pytest.mark.parametrize("method", ["quarter", "soft_argmax"])
@pytest.mark.parametrize(("cx", "cy"), [(5.3, 6.0), (4.8, 7.35), (6.0, 5.62)])
def test_refinement_moves_toward_true_centre(method, cx, cy):
    heat = _gaussian_map(cx, cy)
    ch = torch.zeros(1, 1, dtype=torch.long)
    ys, xs = torch.tensor([[round(cy)]]), torch.tensor([[round(cx)]])
    dx, dy = refine_peaks(heat, ch, ys, xs, method)
    before = math.hypot(round(cx) - cx, round(cy) - cy)
    after = math.hypot(round(cx) + float(dx) - cx, round(cy) + float(dy) - cy)
    assert after < before


def test_refinement_at_the_border_and_none():
    heat = torch.zeros(1, 1, 4, 4)
    heat[0, 0, 0, 0] = 1.0
    heat[0, 0, 0, 1] = 0.5
    zero = torch.zeros(1, 1, dtype=torch.long)
    dx, dy = refine_peaks(heat, zero, zero, zero, "quarter")
    assert float(dx) == 0.25 and float(dy) == 0.0
    dx, dy = refine_peaks(heat, zero, zero, zero, "none")
    assert float(dx) == 0.0 and float(dy) == 0.0
    with pytest.raises(ValueError, match="unknown refine method"):
        refine_peaks(heat, zero, zero, zero, "bogus")


def test_decode_detections_suppresses_duplicate_neighbours_and_clips():
    # Two adjacent dense cells both fire on one object: box NMS keeps one.
    heat = torch.full((1, 1, 8, 8), -10.0)
    heat[0, 0, 2, 2] = 3.0
    heat[0, 0, 2, 4] = 2.0
    size = torch.full((1, 2, 8, 8), math.log(20.0))
    offset = torch.zeros(1, 2, 8, 8)
    offset[0, 0, 2, 4] = -12.0  # points back to the first object's centre
    dets = decode_detections(
        {"heatmap": heat, "size": size, "offset": offset},
        _CORNER_8,
        score_threshold=0.1,
        image_size=(64, 64),
    )[0]
    assert len(dets["boxes"]) == 1
    torch.testing.assert_close(dets["boxes"][0], torch.tensor([6.0, 6.0, 26.0, 26.0]))
    far = {"heatmap": heat, "size": size * 2, "offset": offset}
    clipped = decode_detections(far, _CORNER_8, score_threshold=0.1, image_size=(64, 64))[0]
    assert clipped["boxes"].min() >= 0 and clipped["boxes"].max() <= 64


def test_focal_loss_prefers_the_target():
    target = torch.zeros(1, 1, 6, 6)
    centre, sigma, channel = torch.tensor([[2.0, 3.0]]), torch.tensor([1.0]), torch.tensor([0])
    heat, pos = draw_gaussians(target[0], centre, sigma, channel)
    target, pos = heat[None], pos[None]
    good = torch.log(target.clamp(1e-3, 1 - 1e-3) / (1 - target.clamp(1e-3, 1 - 1e-3)))
    bad = torch.zeros_like(good)
    assert heatmap_focal_loss(good, target, pos) < 0.1 * heatmap_focal_loss(bad, target, pos)
    assert torch.isfinite(heatmap_focal_loss(torch.full_like(good, 1e4), target, pos))


def test_masked_l1_loss_masks_and_keeps_graph_when_empty():
    pred = torch.tensor([[[1.0, 2.0], [5.0, 5.0]]], requires_grad=True)
    target = torch.zeros(1, 2, 2)
    loss = masked_l1_loss(pred, target, torch.tensor([[True, False]]))
    assert float(loss) == 1.5
    empty = torch.zeros(0, 2, requires_grad=True)
    loss = masked_l1_loss(empty, torch.zeros(0, 2))
    loss.backward()
    assert float(loss) == 0.0
