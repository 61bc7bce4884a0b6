"""Benchmark 4: does dense training, inverse-transferred, beat training at the original stride?

For each seed, from one initialisation and one budget (steps, batch, optimiser, schedule):

(a) the baseline task trained at the backbone's own stride;
(b) the same task converted with ``to_dense`` (``--output-stride``) and trained;
(c) (b) inverse-transferred with ``to_original``: the architecture of (a), (b)'s weights.

Each is scored on the same test split, with its test-time cost (MACs and CPU time per image).
The claim under test: (c) beats (a) at (a)'s cost. The defaults rerun in under 20 minutes on 2
quiet CPU cores.

    python -m benchmarks.accuracy [--quick] [--out DIR] [--task segmentation|keypoints]
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import time
import warnings
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from torch import nn

from benchmarks import _common as C
from benchmarks._accuracy_report import markdown, plot
from dense_lightning.data import SyntheticKeypointsDataModule, SyntheticSegmentationDataModule
from dense_lightning.equivalent import to_original
from dense_lightning.tasks import KeypointEstimationTask, SemanticSegmentationTask


@dataclass(frozen=True)
class Spec:
    """One benchmark task: classes, settings and the metric that decides."""

    task: type
    data: type
    metric: str
    task_kwargs: dict[str, Any]
    data_kwargs: dict[str, Any]
    output_stride: int


SPECS = {
    "segmentation": Spec(
        SemanticSegmentationTask, SyntheticSegmentationDataModule, "miou",
        dict(backbone="resnet18", num_classes=4, head="fcn", head_channels=64, lr=2e-3,
             scheduler="cosine", warmup_steps=20),
        dict(num_classes=4, image_size=96, num_train=1024, num_val=16, num_test=128,
             batch_size=16, seed=0),
        output_stride=8,
    ),
    "keypoints": Spec(
        KeypointEstimationTask, SyntheticKeypointsDataModule, "keypoint_ap",
        dict(backbone="resnet18", head_channels=32, lr=2e-3, scheduler="cosine",
             warmup_steps=20),
        dict(image_size=96, num_train=1024, num_val=16, num_test=128, batch_size=16, seed=0),
        output_stride=8,
    ),
}  # fmt: skip
QUICK = dict(backbone="test_resnet", head_channels=8)
QUICK_DATA = dict(image_size=64, num_train=8, num_val=4, num_test=8, batch_size=4)


def _quiet() -> None:
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)


def train(spec: Spec, args: argparse.Namespace, seed: int, output_stride: int | None) -> Any:
    """Build and fit one task; the initial weights depend on ``seed`` only."""
    torch.manual_seed(seed)
    task_kwargs = {**spec.task_kwargs, **(QUICK if args.quick else {})}
    task = spec.task(**task_kwargs, output_stride=None)
    if output_stride is not None:
        # The same initial tensors, converted: to_dense never changes a parameter.
        dense = spec.task(**task_kwargs, output_stride=output_stride)
        dense.load_state_dict(task.state_dict(), strict=True)
        task = dense
    L.seed_everything(seed, verbose=False)  # the same batches in the same order for a and b
    trainer = L.Trainer(
        max_steps=args.steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        num_sanity_val_steps=0, accelerator="cpu", devices=1,
    )  # fmt: skip
    start = time.perf_counter()
    trainer.fit(task, datamodule=data(spec, args))
    task.train_seconds = time.perf_counter() - start
    return task.eval()


def data_kwargs(spec: Spec, args: argparse.Namespace) -> dict[str, Any]:
    """The data settings after ``--quick`` and ``--image-size``."""
    kwargs = {**spec.data_kwargs, **(QUICK_DATA if args.quick else {})}
    return {**kwargs, "image_size": args.image_size or kwargs["image_size"]}


def data(spec: Spec, args: argparse.Namespace) -> L.LightningDataModule:
    """The data module (fixed data seed: every run sees the same images)."""
    return spec.data(**data_kwargs(spec, args))


def predict(task: Any, network: nn.Module, images: torch.Tensor) -> Any:
    """``task(images)`` with ``network`` in place of ``task.model`` (e.g. the exported one)."""
    saved = task.model
    task.model = network
    try:
        return task(images)
    finally:
        task.model = saved


def cost(task: Any, networks: dict[str, nn.Module], images: torch.Tensor, repeats: int) -> dict:
    """Test-time MACs and CPU time per image of each network inside the task's forward."""
    calls = {name: (lambda n=net: predict(task, n, images)) for name, net in networks.items()}
    with torch.no_grad():
        macs = {name: C.macs(call) / len(images) for name, call in calls.items()}
        times = C.interleaved(calls, images.device, repeats=repeats, clock="cpu")
    return {
        name: {"macs_per_image": macs[name], "cpu_s_per_image": t["median"] / len(images)}
        for name, t in times.items()
    }


def run_seed(spec: Spec, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """Train (a) and (b), derive (c), score all three."""
    baseline = train(spec, args, seed, None)
    dense = train(spec, args, seed, args.output_stride or spec.output_stride)
    exported = to_original(dense.model)
    # (c) has (a)'s architecture: its weights load into (a)'s network, key for key.
    copy.deepcopy(baseline.model).load_state_dict(exported.state_dict(), strict=True)
    dm = data(spec, args)
    dm.setup("test")
    loader = dm.test_dataloader()
    scores = {
        "a_baseline": baseline.evaluate(loader),
        "b_dense": dense.evaluate(loader),
        "c_exported": dense.evaluate(loader, network=exported),
    }
    images = next(iter(loader))["image"][: args.cost_batch]
    networks = {"a_baseline": baseline.model, "b_dense": dense.model, "c_exported": exported}
    return {
        "seed": seed,
        "scores": scores,
        "cost": cost(dense, networks, images, args.repeats),
        "train_seconds": {"a_baseline": baseline.train_seconds, "b_dense": dense.train_seconds},
    }


def summarise(runs: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """Mean, spread and paired differences over seeds."""
    out: dict[str, Any] = {}
    for key in ("a_baseline", "b_dense", "c_exported"):
        values = [r["scores"][key][metric] for r in runs]
        out[key] = {
            "mean": statistics.mean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values),
            "max": max(values),
            "macs_per_image": runs[0]["cost"][key]["macs_per_image"],
            "cpu_ms_per_image": 1e3 * statistics.median(r["cost"][key]["cpu_s_per_image"]
                                                        for r in runs),
        }  # fmt: skip
    diffs = [r["scores"]["c_exported"][metric] - r["scores"]["a_baseline"][metric] for r in runs]
    out["c_minus_a"] = {
        "mean": statistics.mean(diffs),
        "std": statistics.stdev(diffs) if len(diffs) > 1 else 0.0,
        "per_seed": diffs,
        "wins": sum(d > 0 for d in diffs),
    }
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--task", choices=sorted(SPECS), default="segmentation")
    p.add_argument("--seeds", nargs="+", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--output-stride", type=int, default=None)
    p.add_argument("--cost-batch", type=int, default=8)
    p.add_argument("--image-size", type=int, default=None)
    args = p.parse_args(argv)
    _quiet()
    device = C.prepare(args)
    spec = SPECS[args.task]
    args.seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    args.steps = args.steps or (2 if args.quick else 300)
    args.repeats = args.repeats or (1 if args.quick else 5)
    record = C.machine(device, args)
    start, cpu_start = time.perf_counter(), time.process_time()
    runs = [run_seed(spec, args, seed) for seed in args.seeds]
    record["wall_seconds"] = time.perf_counter() - start
    record["cpu_seconds"] = time.process_time() - cpu_start
    settings = {
        "task": args.task, "metric": spec.metric, "steps": args.steps, "seeds": args.seeds,
        "output_stride": args.output_stride or spec.output_stride,
        "task_kwargs": {**spec.task_kwargs, **(QUICK if args.quick else {})},
        "data_kwargs": data_kwargs(spec, args),
    }  # fmt: skip
    payload = {
        "benchmark": "accuracy", "machine": record, "settings": settings, "runs": runs,
        "summary": summarise(runs, spec.metric),
    }  # fmt: skip
    C.write(args.out, f"accuracy_{args.task}", payload, markdown(payload))
    plot(payload, args.out / f"accuracy_{args.task}.png")
    return payload


if __name__ == "__main__":
    main()
