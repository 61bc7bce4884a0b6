"""The exported model puts every prediction where the dense model put the same value.

Dense cell ``k * i`` is original cell ``i``; each task maps both to the same pixel through one
traced cell geometry, so the exported (original-stride) model's upsampled or decoded
prediction equals that of the dense prediction's lattice subsample.
"""

import pytest
import torch
import torch.nn.functional as F

from dense_lightning.equivalent import to_original
from dense_lightning.equivalent.cells import lattice_upsample
from dense_lightning.tasks import (
    KeypointEstimationTask,
    ObjectDetectionTask,
    SemanticSegmentationTask,
)

K = 32 // 8


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _pair(task_cls, **kwargs):
    torch.manual_seed(0)
    task = task_cls(backbone="test_resnet", output_stride=8, head_channels=16, **kwargs).eval()
    return task, to_original(task.model).eval()


def _lattice(outputs):
    if isinstance(outputs, dict):
        return {name: value[..., ::K, ::K] for name, value in outputs.items()}
    return outputs[..., ::K, ::K]


def test_segmentation_exported_upsampling_matches_dense():
    task, original = _pair(SemanticSegmentationTask)
    images = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        dense_logits = task.model(images)
        dense_up = task(images)
        exported_up = task.run(original, images)
    geometry = task.cells.with_stride(32)
    assert task.geometry(images, dense_logits) == geometry.with_stride(8)
    # Exported upsampled == upsampled lattice subsample of the dense logits.
    lattice_up = lattice_upsample(dense_logits[..., ::K, ::K], geometry, (96, 96))
    torch.testing.assert_close(exported_up, lattice_up, atol=1e-4, rtol=1e-4)
    # At pixel o + 32i both models give original cell i's value.
    oy, ox = geometry.offset
    assert oy == int(oy) and ox == int(ox)
    rows, cols = slice(int(oy), None, 32), slice(int(ox), None, 32)
    torch.testing.assert_close(
        dense_up[..., rows, cols], exported_up[..., rows, cols], atol=1e-4, rtol=1e-4
    )
    # The align_corners=False upsampling fails the same check: it puts original cell i at
    # 32i + 15.5 and dense cell 4i at 32i + 3.5.
    old_dense = F.interpolate(dense_logits, size=(96, 96), mode="bilinear", align_corners=False)
    old_exported = F.interpolate(
        dense_logits[..., ::K, ::K], size=(96, 96), mode="bilinear", align_corners=False
    )
    assert not torch.allclose(old_dense[..., rows, cols], old_exported[..., rows, cols], atol=1e-3)


def test_segmentation_evaluate_scores_the_given_network():
    task, original = _pair(SemanticSegmentationTask)
    images = torch.randn(2, 3, 64, 64)
    batch = {"image": images, "mask": task.run(original, images).argmax(1)}
    model = task.model
    assert task.evaluate([batch], network=original)["miou"] == pytest.approx(1.0)
    assert task.model is model and not task.training  # nothing swapped, mode restored


def _assert_same_detections(first, second):
    for a, b in zip(first, second, strict=True):
        assert a.keys() == b.keys()
        for name in a:
            torch.testing.assert_close(a[name], b[name], atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("task_cls", [ObjectDetectionTask, KeypointEstimationTask])
def test_centernet_exported_decoding_matches_dense_lattice(task_cls):
    task, original = _pair(task_cls, score_threshold=0.0)
    images = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        dense_out = task(images)
        exported_out = task.run(original, images)
    decoded_exported = task.decode(exported_out, images)
    decoded_lattice = task.decode(_lattice(dense_out), images)
    assert len(decoded_exported[0]["boxes"]) > 0
    _assert_same_detections(decoded_exported, decoded_lattice)
    # Dense cell 4i and original cell i sit on the same point of the image.
    dense_geo = task.geometry(images, dense_out["heatmap"])
    exported_geo = task.geometry(images, exported_out["heatmap"])
    cells = torch.tensor([[0.0, 0.0], [1.0, 2.0], [2.0, 1.0]])
    torch.testing.assert_close(
        dense_geo.cells_to_points(cells * K), exported_geo.cells_to_points(cells)
    )
