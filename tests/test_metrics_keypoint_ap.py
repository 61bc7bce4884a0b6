import contextlib
import io
import json

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from dense_lightning.metrics import (
    COCO_KEYPOINT_SIGMAS,
    DEFAULT_KEYPOINT_SIGMA,
    KeypointAP,
    keypoint_sigmas,
)


def _scene(seed, num_images=4, k=5):
    """Random instances and noisy predictions (some missing, one false positive per image)."""
    gen = torch.Generator().manual_seed(seed)
    preds, targets = [], []
    for image_id in range(num_images):
        m = int(torch.randint(1, 4, (1,), generator=gen))
        xy0 = torch.rand(m, 1, 2, generator=gen) * 100
        wh = 20 + torch.rand(m, 1, 2, generator=gen) * 60
        xy = xy0 + torch.rand(m, k, 2, generator=gen) * wh
        vis = torch.randint(0, 3, (m, k), generator=gen).float()
        vis[:, 0] = 2
        boxes = torch.cat([xy0[:, 0], xy0[:, 0] + wh[:, 0]], dim=1)
        targets.append(
            {
                "keypoints": torch.cat([xy, vis.unsqueeze(-1)], -1),
                "boxes": boxes,
                "image_id": torch.tensor(100 + image_id),
            }
        )
        noisy = xy + torch.randn(m, k, 2, generator=gen) * 4
        noisy = torch.cat([noisy, 100 + torch.rand(1, k, 2, generator=gen) * 50])[1:]
        kpts = torch.cat([noisy, torch.ones(len(noisy), k, 1)], -1)
        preds.append({"keypoints": kpts, "scores": torch.rand(len(noisy), generator=gen)})
    return preds, targets


def _reference_stats(tmp_path, preds, targets, sigmas):
    """COCOeval run the usual way, from JSON files on disk."""
    images, anns, dets = [], [], []
    for pred, gt in zip(preds, targets, strict=True):
        image_id = int(gt["image_id"])
        images.append({"id": image_id})
        for kp, box in zip(gt["keypoints"], gt["boxes"], strict=True):
            x0, y0, x1, y1 = box.tolist()
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "keypoints": kp.reshape(-1).tolist(),
                    "num_keypoints": int((kp[:, 2] > 0).sum()),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
            )
        for kp, score in zip(pred["keypoints"], pred["scores"], strict=True):
            dets.append(
                {
                    "image_id": image_id,
                    "category_id": 1,
                    "keypoints": kp.reshape(-1).tolist(),
                    "score": float(score),
                }
            )
    gt_file, dt_file = tmp_path / "gt.json", tmp_path / "dt.json"
    gt_file.write_text(
        json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "p"}]})
    )
    dt_file.write_text(json.dumps(dets))
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(gt_file))
        ev = COCOeval(coco, coco.loadRes(str(dt_file)), iouType="keypoints")
        ev.params.kpt_oks_sigmas = np.asarray(sigmas)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def test_matches_pycocotools_from_files(tmp_path):
    preds, targets = _scene(0)
    metric = KeypointAP(num_keypoints=5)
    metric.update(preds[:2], targets[:2])
    metric.update(preds[2:], targets[2:])
    out = metric.compute()
    ref = _reference_stats(tmp_path, preds, targets, [DEFAULT_KEYPOINT_SIGMA] * 5)
    assert 0.0 < float(out["keypoint_ap"]) < 1.0
    for key, i in {"keypoint_ap": 0, "keypoint_ap_50": 1, "keypoint_ap_75": 2}.items():
        assert float(out[key]) == pytest.approx(ref[i], abs=1e-6)
    assert float(out["keypoint_ar"]) == pytest.approx(ref[5], abs=1e-6)


def test_perfect_predictions_score_one():
    _, targets = _scene(1, k=17)
    preds = [
        {"keypoints": t["keypoints"].clone(), "scores": torch.ones(len(t["keypoints"]))}
        for t in targets
    ]
    metric = KeypointAP(num_keypoints=17)
    np.testing.assert_allclose(metric.sigmas, COCO_KEYPOINT_SIGMAS)
    metric.update(preds, targets)
    assert float(metric.compute()["keypoint_ap"]) == pytest.approx(1.0)


def test_no_predictions_and_no_updates():
    _, targets = _scene(2)
    metric = KeypointAP(num_keypoints=5)
    assert float(metric.compute()["keypoint_ap"]) == -1.0
    empty = [{"keypoints": torch.zeros(0, 5, 3), "scores": torch.zeros(0)} for _ in targets]
    metric.update(empty, [{k: v for k, v in t.items() if k != "image_id"} for t in targets])
    assert float(metric.compute()["keypoint_ap"]) == 0.0


def test_sigmas_validation_and_states():
    assert keypoint_sigmas(3).tolist() == [DEFAULT_KEYPOINT_SIGMA] * 3
    assert keypoint_sigmas(2, [0.1, 0.2]).tolist() == [0.1, 0.2]
    with pytest.raises(ValueError, match="need 3 positive OKS sigmas"):
        keypoint_sigmas(3, [0.1, 0.2])
    metric = KeypointAP(num_keypoints=2)
    assert all(fn.__name__ == "dim_zero_cat" for fn in metric._reductions.values())
    with pytest.raises(ValueError, match="built for 2 keypoints"):
        metric.update(*_scene(3))
