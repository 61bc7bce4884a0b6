"""The keypoint metrics synced over two real gloo processes equal one process seeing all data."""

import json
import subprocess
import sys

# Run as a script in fresh interpreters (not mp.spawn) so nothing depends on how pytest named
# this module.
WORKER = r"""
import json, sys
import torch
import torch.distributed as dist
from dense_lightning.metrics import PCK, KeypointAP

rank, world, init, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
gen = torch.Generator().manual_seed(0)
preds, targets = [], []
for image_id in range(6):
    m, k = 3, 5
    xy0 = torch.rand(m, 1, 2, generator=gen) * 100
    xy = xy0 + torch.rand(m, k, 2, generator=gen) * 50
    vis = torch.randint(1, 3, (m, k), generator=gen).float()
    kpts = torch.cat([xy, vis.unsqueeze(-1)], -1)
    boxes = torch.cat([xy0[:, 0], xy0[:, 0] + 50], dim=1)
    targets.append({"keypoints": kpts, "boxes": boxes, "image_id": torch.tensor(image_id)})
    noisy = torch.cat([xy + torch.randn(m, k, 2, generator=gen) * 3, torch.ones(m, k, 1)], -1)
    n = 1 + image_id % 3  # some instances missed
    preds.append({"keypoints": noisy[:n], "scores": torch.rand(m, generator=gen)[:n]})

dist.init_process_group("gloo", init_method="file://" + init, rank=rank, world_size=world)
pck, ap = PCK(num_keypoints=5), KeypointAP(num_keypoints=5)
pck.update(preds[rank::world], targets[rank::world])
ap.update(preds[rank::world], targets[rank::world])
synced = {"pck": float(pck.compute()), **{k: float(v) for k, v in ap.compute().items()}}
if rank == 0:
    pck, ap = PCK(5, sync_on_compute=False), KeypointAP(5, sync_on_compute=False)
    pck.update(preds, targets)
    ap.update(preds, targets)
    single = {"pck": float(pck.compute()), **{k: float(v) for k, v in ap.compute().items()}}
    with open(out, "w") as f:
        json.dump({"synced": synced, "single": single}, f)
dist.destroy_process_group()
"""


def test_metrics_sync_across_two_processes(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = tmp_path / "result.json"
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(rank), "2", str(tmp_path / "init"), str(out)]
        )
        for rank in range(2)
    ]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    result = json.loads(out.read_text())
    assert 0.0 < result["single"]["keypoint_ap"] < 1.0
    assert 0.0 < result["single"]["pck"] < 1.0
    assert result["synced"] == result["single"]
