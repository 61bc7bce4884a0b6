import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dense_lightning.equivalent.cells import CellGeometry
from dense_lightning.ops import (
    decode_detections,
    decode_keypoints,
    draw_gaussians,
    encode_detection_targets,
    encode_keypoint_targets,
    gaussian_radius,
    infer_stride,
)


def _corner(stride: int) -> CellGeometry:
    """Cell j at image coordinate ``stride * j`` (pixel ``stride * j - 0.5``)."""
    return CellGeometry(stride=(stride, stride), offset=(-0.5, -0.5))


@given(
    size=st.integers(33, 300),
    log_stride=st.integers(3, 5),
    log_k=st.integers(0, 3),
)
@settings(max_examples=200, deadline=None)
def test_infer_stride_original_and_dense(size, log_stride, log_k):
    stride = 2**log_stride
    k = 2 ** min(log_k, log_stride)
    if size <= stride:
        return
    cells = math.ceil(size / stride)  # a same-padded timm CNN at its native stride
    assert infer_stride((size, size), (cells, cells)) == stride
    # Dense: k times as many cells at stride / k (the canonical dense length).
    assert infer_stride((size, size + 7), (cells * k, math.ceil((size + 7) / stride) * k)) == (
        stride // k
    )


def test_infer_stride_matches_real_backbone():
    import timm

    net = timm.create_model("resnet10t", pretrained=False, features_only=True, out_indices=(-1,))
    for size in (64, 70, 96):
        out = net(torch.zeros(1, 3, size, size + 10))[-1]
        assert infer_stride((size, size + 10), tuple(out.shape[-2:])) == 32


def test_gaussian_radius_matches_centernet_reference():
    # CenterNet's gaussian_radius((10, 10), 0.7) is the third root: (b3 + sqrt(b3^2 - 4 a3 c3)) / 2.
    a3, b3, c3 = 4 * 0.7, -2 * 0.7 * 20, (0.7 - 1) * 100
    expected = (b3 + math.sqrt(b3**2 - 4 * a3 * c3)) / 2
    got = gaussian_radius(torch.tensor(10.0), torch.tensor(10.0))
    assert float(got) == pytest.approx(expected, rel=1e-6)
    assert float(gaussian_radius(torch.tensor(0.0), torch.tensor(0.0))) == 0.0


def test_draw_gaussians_peak_max_merge_and_subcell_asymmetry():
    heat = torch.zeros(2, 9, 9)
    centers = torch.tensor([[2.3, 4.0], [6.0, 6.0], [7.4, 6.0]])
    heat, pos = draw_gaussians(
        heat, centers, torch.tensor([1.0, 1.0, 1.0]), torch.tensor([0, 1, 1])
    )
    assert heat[0, 4, 2] == 1 and pos[0, 4, 2]
    # The true centre lies right of cell 2, so the right neighbour reads higher than the left.
    assert heat[0, 4, 3] > heat[0, 4, 1]
    assert pos.sum() == 3 and pos[1, 6, 6] and pos[1, 6, 7]
    assert heat.max() == 1 and heat.min() == 0
    # Far beyond 3 sigma nothing is drawn.
    assert heat[0, 0, 8] == 0


def test_encode_detection_targets_values():
    boxes = [torch.tensor([[8.0, 16.0, 40.0, 32.0]]), torch.zeros(0, 4)]
    labels = [torch.tensor([2]), torch.zeros(0, dtype=torch.long)]
    t = encode_detection_targets(boxes, labels, num_classes=3, map_size=(8, 8), geometry=_corner(8))
    assert t["heatmap"].shape == (2, 3, 8, 8)
    # Centre (24, 24) -> cell (3, 3) anchored at pixel 24: zero offset.
    assert t["positive"][0, 2, 3, 3] and t["positive"].sum() == 1
    assert t["batch"].tolist() == [0] and t["ys"].tolist() == [3] and t["xs"].tolist() == [3]
    torch.testing.assert_close(t["size"], torch.tensor([[math.log(32.0), math.log(16.0)]]))
    torch.testing.assert_close(t["offset"], torch.zeros(1, 2))
    assert t["heatmap"][1].sum() == 0


def test_degenerate_boxes_are_skipped():
    boxes = [torch.tensor([[5.0, 5.0, 5.0, 20.0], [0.0, 0.0, 16.0, 16.0]])]
    t = encode_detection_targets(boxes, [torch.tensor([0, 0])], 1, (4, 4), _corner(16))
    assert t["positive"].sum() == 1 and len(t["batch"]) == 1


def _perfect_detection_outputs(targets, num_classes):
    heat = targets["heatmap"].clamp(1e-4, 1 - 1e-4)
    logits = torch.log(heat / (1 - heat))
    b, _, h, w = heat.shape
    size = torch.zeros(b, 2, h, w)
    offset = torch.zeros(b, 2, h, w)
    size[targets["batch"], :, targets["ys"], targets["xs"]] = targets["size"]
    offset[targets["batch"], :, targets["ys"], targets["xs"]] = targets["offset"]
    return {"heatmap": logits, "size": size, "offset": offset}


@pytest.mark.parametrize("stride", [4, 8, 16, 32])
def test_detection_round_trip_any_stride(stride):
    boxes = [torch.tensor([[10.0, 12.0, 50.0, 40.0], [70.0, 64.0, 120.0, 126.0]])]
    labels = [torch.tensor([0, 1])]
    cells = math.ceil(128 / stride)
    t = encode_detection_targets(boxes, labels, 2, (cells, cells), _corner(stride))
    dets = decode_detections(_perfect_detection_outputs(t, 2), _corner(stride), score_threshold=0.5)
    order = dets[0]["labels"].argsort()
    torch.testing.assert_close(dets[0]["boxes"][order], boxes[0], atol=1e-3, rtol=0)
    assert dets[0]["labels"][order].tolist() == [0, 1]


def test_keypoint_targets_mask_unlabelled_and_outside():
    boxes = [torch.tensor([[8.0, 8.0, 56.0, 56.0]])]
    kpts = [torch.tensor([[[16.0, 16.0, 2.0], [40.0, 40.0, 0.0], [200.0, 10.0, 2.0]]])]
    centres = encode_detection_targets(boxes, [torch.tensor([0])], 1, (8, 8), _corner(8))
    t = encode_keypoint_targets(boxes, kpts, (8, 8), _corner(8), centres)
    assert t["keypoint_mask"].tolist() == [[True, False, False]]
    assert t["keypoint_heatmap"][0, 0, 2, 2] == 1
    assert t["keypoint_heatmap"][0, 1].sum() == 0 and t["keypoint_heatmap"][0, 2].sum() == 0
    # Displacement in pixels from the instance anchor (centre 32, 32 -> cell 4 at pixel 32).
    torch.testing.assert_close(t["displacement"][0, 0], torch.tensor([-16.0, -16.0]))


@pytest.mark.parametrize("stride", [2, 4, 8])
def test_keypoint_round_trip_snaps_to_refined_peaks(stride):
    boxes = [torch.tensor([[4.0, 6.0, 44.0, 58.0], [40.0, 8.0, 60.0, 30.0]])]
    kpts = [
        torch.tensor(
            [
                [[10.3, 12.6, 2.0], [30.0, 40.2, 1.0], [20.0, 50.0, 0.0]],
                [[45.7, 12.2, 2.0], [55.1, 20.9, 2.0], [50.0, 25.0, 2.0]],
            ]
        )
    ]
    cells = 64 // stride
    geometry = _corner(stride)
    det = encode_detection_targets(boxes, [torch.tensor([0, 0])], 1, (cells, cells), geometry)
    kp = encode_keypoint_targets(boxes, kpts, (cells, cells), geometry, det)
    out = _perfect_detection_outputs(det, 1)
    heat = kp["keypoint_heatmap"].clamp(1e-4, 1 - 1e-4)
    out["keypoint_heatmap"] = torch.log(heat / (1 - heat))
    # Perturb the regressed displacements: snapping to the heatmap must undo it.
    disp = torch.zeros(1, 6, cells, cells)
    disp[det["batch"], :, det["ys"], det["xs"]] = (kp["displacement"] + 1.5).reshape(-1, 6)
    out["displacement"] = disp
    result = decode_keypoints(out, geometry, score_threshold=0.5)[0]
    assert len(result["boxes"]) == 2
    order = result["boxes"][:, 0].argsort()
    pred = result["keypoints"][order]
    labelled = kpts[0][..., 2] > 0
    err = (pred[..., :2] - kpts[0][..., :2]).norm(dim=-1)[labelled]
    # Peaks are located to a quarter cell: the error stays well below one cell.
    assert err.max() < 0.6 * stride


def test_dense_regression_cells_are_each_phases_nearest_cell():
    # Dense stride 8, original stride 32 (k = 4), cell 0 centred on pixel 0.
    dense = CellGeometry(stride=(8, 8), offset=(0.0, 0.0))
    original = dense.with_stride(32)
    boxes = [torch.tensor([[30.0, 50.0, 70.6, 91.8], [100.0, 4.0, 126.0, 30.0]])]
    labels = [torch.tensor([0, 1])]
    t = encode_detection_targets(boxes, labels, 2, (16, 16), dense, reach=16.0)
    centre = (boxes[0][0, :2] + boxes[0][0, 2:]) / 2
    rows = {(int(y), int(x)): i for i, (y, x) in enumerate(zip(t["ys"], t["xs"], strict=True))}
    assert len(t["ys"]) == len(rows)  # one target per cell
    # Phase (a, b) of the dense map is the original network on a view shifted by (8a, 8b)
    # pixels: its cells are 4i + a. Each phase's nearest cell to the centre regresses it, with
    # the offset from that cell's own position.
    for a in range(4):
        for b in range(4):
            shifted = CellGeometry(stride=(32, 32), offset=(8.0 * a, 8.0 * b))
            xs, ys = shifted.nearest_cells(centre.view(1, 2), (4, 4))
            row = rows[(4 * int(ys) + a, 4 * int(xs) + b)]
            assert int(t["instance"][row]) == 0
            point = dense.cells_to_points(torch.tensor([[4.0 * int(xs) + b, 4.0 * int(ys) + a]]))[0]
            torch.testing.assert_close(t["offset"][row], centre - point)
    assert int((t["instance"] == 0).sum()) == 16
    # The exported network's maps (every 4th cell) get their own targets: each object is
    # regressed at the original lattice's nearest cell, the border object included.
    lattice = encode_detection_targets(boxes, labels, 2, (4, 4), original, reach=16.0)
    centres = (boxes[0][:, :2] + boxes[0][:, 2:]) / 2
    for n, c in enumerate(centres):
        xs, ys = original.nearest_cells(c.view(1, 2), (4, 4))
        hits = (lattice["ys"] == int(ys)) & (lattice["xs"] == int(xs))
        assert int(lattice["instance"][hits]) == n
    # Without reach only the peak cells regress.
    peak_only = encode_detection_targets(boxes, labels, 2, (16, 16), dense)
    assert len(peak_only["ys"]) == 2


def test_keypoint_displacements_follow_the_regression_cells():
    geometry = CellGeometry(stride=(8, 8), offset=(0.0, 0.0))
    boxes = [torch.tensor([[8.0, 8.0, 56.0, 56.0]])]
    kpts = [torch.tensor([[[16.0, 20.0, 2.0], [40.0, 40.0, 0.0]]])]
    centres = encode_detection_targets(boxes, [torch.tensor([0])], 1, (8, 8), geometry, 16.0)
    t = encode_keypoint_targets(boxes, kpts, (8, 8), geometry, centres)
    assert t["displacement"].shape == (len(centres["ys"]), 2, 2)
    points = geometry.cells_to_points(torch.stack([centres["xs"], centres["ys"]], -1).float())
    torch.testing.assert_close(t["displacement"][:, 0], kpts[0][0, 0, :2] - points)
    assert t["keypoint_mask"].all(dim=0).tolist() == [True, False]


@pytest.mark.parametrize("offset", [0.0, 15.5])
def test_round_trip_with_traced_offsets(offset):
    geometry = CellGeometry(stride=(16, 16), offset=(offset, offset))
    boxes = [torch.tensor([[10.0, 12.0, 50.0, 40.0], [70.0, 64.0, 120.0, 126.0]])]
    labels = [torch.tensor([0, 1])]
    t = encode_detection_targets(boxes, labels, 2, (8, 8), geometry, reach=8.0)
    dets = decode_detections(_perfect_detection_outputs(t, 2), geometry, score_threshold=0.5)
    order = dets[0]["labels"].argsort()
    torch.testing.assert_close(dets[0]["boxes"][order], boxes[0], atol=1e-3, rtol=0)
