"""Training overhead of the Lightning task over a plain PyTorch loop.

Both train the same network (the task's ``model``, dense) from the same initial weights on the
same pre-rendered batches, with the same optimiser (AdamW, same learning rate and weight decay)
and a per-step LambdaLR; the plain loop does forward (with the task's bilinear upsampling),
cross-entropy, backward and step, nothing else. The Lightning run is the task as shipped
(metrics updated and logged every step) under a Trainer without logger, progress bar or
checkpointing. Steps/s are measured after warm-up steps, in interleaved rounds, as process CPU
time with one thread. Target: overhead under 5%.

    python -m benchmarks.overhead [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from benchmarks import _common as C
from benchmarks.accuracy import _quiet
from dense_lightning.data import SyntheticSegmentationDataset
from dense_lightning.tasks import SemanticSegmentationTask

CONFIGS = {
    "resnet18_os8_96px_b8": dict(backbone="resnet18", output_stride=8, size=96, batch=8),
    "test_resnet_os8_64px_b8": dict(backbone="test_resnet", output_stride=8, size=64, batch=8),
}
QUICK = {"test_resnet_os8_32px_b2": dict(backbone="test_resnet", output_stride=8, size=32, batch=2)}


class _NoTrainMetrics(SemanticSegmentationTask):
    """The task without its per-step training metrics: the cost of the wrapper alone."""

    def update_metrics(self, metrics: Any, outputs: Any, batch: dict[str, Any]) -> None:
        if metrics is not self.train_metrics:
            super().update_metrics(metrics, outputs, batch)


def make_task(cfg: dict[str, Any], cls: type = SemanticSegmentationTask) -> Any:
    torch.manual_seed(0)
    return cls(
        backbone=cfg["backbone"], num_classes=4, output_stride=cfg["output_stride"],
        head_channels=32, lr=1e-3, scheduler="none",
    )  # fmt: skip


def make_batches(cfg: dict[str, Any], count: int) -> list[dict[str, torch.Tensor]]:
    """Pre-rendered batches, so that neither side pays for data."""
    data = SyntheticSegmentationDataset(count * cfg["batch"], 4, cfg["size"], seed=0)
    samples = [data[i] for i in range(len(data))]
    b = cfg["batch"]
    return [
        {key: torch.stack([s[key] for s in samples[i : i + b]]) for key in ("image", "mask")}
        for i in range(0, len(samples), b)
    ]


class _StepClock(Callback):
    """CPU time from the start of batch ``first`` to the end of the last batch."""

    def __init__(self, first: int) -> None:
        self.first, self.start, self.stop = first, 0.0, 0.0

    def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, idx: int) -> None:
        if idx == self.first:
            self.start = time.process_time()

    def on_train_batch_end(self, trainer: Any, module: Any, out: Any, batch: Any, idx: int) -> None:
        self.stop = time.process_time()


def lightning_steps(cfg: dict, batches: list, warmup: int, cls: type) -> float:
    """Seconds (CPU) of the timed steps under the Lightning Trainer."""
    task, clock = make_task(cfg, cls), _StepClock(warmup)
    trainer = L.Trainer(
        max_steps=len(batches), logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        num_sanity_val_steps=0, accelerator="cpu", devices=1, callbacks=[clock],
    )  # fmt: skip
    trainer.fit(task, train_dataloaders=DataLoader(batches, batch_size=None))
    return clock.stop - clock.start


def plain_steps(cfg: dict, batches: list, warmup: int) -> float:
    """Seconds (CPU) of the timed steps in a plain PyTorch loop on the same network."""
    task = make_task(cfg)
    model = task.model.train()
    hp = task.hparams
    optimizer = torch.optim.AdamW(model.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    criterion = torch.nn.CrossEntropyLoss(ignore_index=255)
    start = 0.0
    for i, batch in enumerate(DataLoader(batches, batch_size=None)):
        if i == warmup:
            start = time.process_time()
        images = batch["image"]
        logits = F.interpolate(model(images), size=images.shape[-2:], mode="bilinear")
        loss = criterion(logits, batch["mask"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    return time.process_time() - start


def measure(cfg: dict, args: argparse.Namespace) -> dict[str, Any]:
    batches = make_batches(cfg, args.warmup + args.steps)
    task_cls = {
        "lightning": SemanticSegmentationTask,
        "lightning_no_train_metrics": _NoTrainMetrics,
    }
    runs: dict[str, Callable[[], float]] = {
        name: (lambda c=c: lightning_steps(cfg, batches, args.warmup, c))
        for name, c in task_cls.items()
    }
    runs["plain"] = lambda: plain_steps(cfg, batches, args.warmup)
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for rnd in range(args.repeats):  # interleaved, rotating which goes first
        for name in names[rnd % len(names) :] + names[: rnd % len(names)]:
            seconds[name].append(runs[name]())
    median = {name: statistics.median(v) for name, v in seconds.items()}
    return {
        "config": cfg,
        "seconds": seconds,
        "steps_per_s": {name: args.steps / t for name, t in median.items()},
        "overhead": median["lightning"] / median["plain"] - 1.0,
        "overhead_no_train_metrics": median["lightning_no_train_metrics"] / median["plain"] - 1.0,
        "per_step_ms": {name: 1e3 * t / args.steps for name, t in median.items()},
    }


def markdown(payload: dict[str, Any]) -> str:
    rows = []
    for name, r in payload["rows"].items():
        ms = r["per_step_ms"]
        rows.append([
            name, f"{r['steps_per_s']['plain']:.2f}", f"{r['steps_per_s']['lightning']:.2f}",
            f"{ms['lightning'] - ms['plain']:+.1f}", f"{100 * r['overhead']:+.1f}%",
            "yes" if r["overhead"] < 0.05 else "**no**",
            f"{ms['lightning_no_train_metrics'] - ms['plain']:+.1f}",
            f"{100 * r['overhead_no_train_metrics']:+.1f}%",
        ])  # fmt: skip
    s = payload["settings"]
    return "\n".join([
        "# Training overhead: Lightning task vs plain PyTorch loop",
        "",
        C.machine_line(payload["machine"]),
        f"{s['steps']} timed steps after {s['warmup']} warm-up steps, median of {s['repeats']} "
        "interleaved runs per side; steps/s in CPU time.",
        "",
        C.table(["config", "plain steps/s", "task steps/s", "ms / step added", "overhead",
                 "< 5%", "ms / step added, no train metrics", "overhead, no train metrics"],
                rows),
        "",
        "The task as shipped updates its training metrics (mIoU, pixel accuracy) every step, "
        "which the plain loop does not; the last two columns take them out (the wrapper alone).",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    args = p.parse_args(argv)
    _quiet()
    device = C.prepare(args)
    args.steps = args.steps or (2 if args.quick else 30)
    args.warmup = args.warmup or (1 if args.quick else 3)
    args.repeats = args.repeats or (1 if args.quick else 3)
    record = C.machine(device, args)
    rows = {name: measure(cfg, args) for name, cfg in (QUICK if args.quick else CONFIGS).items()}
    for name, r in rows.items():
        print(f"{name}: overhead {100 * r['overhead']:+.1f}%", flush=True)
    settings = {"steps": args.steps, "warmup": args.warmup, "repeats": args.repeats}
    payload = {"benchmark": "overhead", "machine": record, "settings": settings, "rows": rows}
    C.write(args.out, "overhead", payload, markdown(payload))
    return payload


if __name__ == "__main__":
    main()
