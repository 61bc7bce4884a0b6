"""Shared benchmark helpers: the machine record, interleaved timing, MACs, peak memory, output.

Timing rules (every benchmark follows them): warm-up runs first, then rounds in which every
candidate runs once, in an order that rotates from round to round so drift and neighbours'
load spread evenly; the figure is the median over rounds. On a CPU the default clock is the
process CPU time with one intra-op thread: this 2-core machine is shared, and CPU time leaves
out the time the process waits for a core. On CUDA the clock is the wall time between
synchronisations.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from dense_lightning.files import atomic_write_all

RESULTS = Path(__file__).resolve().parent / "results"


def parser(description: str) -> argparse.ArgumentParser:
    """The options every benchmark takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="tiny run (seconds), for the tests")
    p.add_argument("--out", type=Path, default=RESULTS, help="directory for JSON/MD/PNG")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads on CPU")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default per mode)")
    p.add_argument("--clock", choices=("cpu", "wall"), default=None, help="default: cpu on CPU")
    return p


def prepare(args: argparse.Namespace) -> torch.device:
    """Apply thread and backend settings; return the device."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            f"--device {args.device}: torch sees no CUDA device here (torch "
            f"{torch.__version__}, CUDA build {torch.version.cuda}); run on a machine with a "
            "GPU, or use --device cpu"
        )
    torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    args.clock = args.clock or ("cpu" if device.type == "cpu" else "wall")
    return device


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine(device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    """Everything needed to read the numbers: hardware, software, settings, load."""
    import timm  # imported here: only the record needs its version

    record: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "clock": args.clock,
        "quick": bool(args.quick),
    }
    if device.type == "cuda":
        record["gpu"] = torch.cuda.get_device_name(device)
        record["cuda"] = torch.version.cuda
        record["cudnn"] = torch.backends.cudnn.version()
        record["cudnn_benchmark"] = torch.backends.cudnn.benchmark
        record["tf32_conv"] = torch.backends.cudnn.allow_tf32
    return record


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    candidates: dict[str, Callable[[], Any]],
    device: torch.device,
    *,
    repeats: int,
    warmup: int = 1,
    clock: str = "cpu",
) -> dict[str, dict[str, Any]]:
    """Time candidates in rotating interleaved rounds.

    Returns:
        Per candidate: ``median`` and ``min`` seconds, ``spread`` (max - min over rounds, as a
        fraction of the median) and the raw ``times``.
    """
    now = time.process_time if clock == "cpu" else time.perf_counter
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for rnd in range(repeats):
        for name in names[rnd % len(names) :] + names[: rnd % len(names)]:
            _sync(device)
            start = now()
            candidates[name]()
            _sync(device)
            times[name].append(now() - start)
    out = {}
    for name, ts in times.items():
        median = statistics.median(ts)
        out[name] = {
            "median": median,
            "min": min(ts),
            "spread": (max(ts) - min(ts)) / median if median else 0.0,
            "times": ts,
        }
    return out


def macs(fn: Callable[[], Any]) -> int:
    """Multiply-accumulates of one call, counted by ``torch.utils.flop_counter`` (FLOPs / 2)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() // 2


class _LiveBytes(TorchDispatchMode):
    """Bytes of live tensor storages created by aten ops, and their peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self.keys: set[int] = set()

    def _free(self, key: int, nbytes: int) -> None:
        self.keys.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        # An output sharing an input's storage (a view, an in-place or out= op) allocates
        # nothing, even when the input was made before the call (the input map, a weight).
        inputs = {
            t.untyped_storage().data_ptr()
            for t in tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor)
        }
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key, nbytes = storage.data_ptr(), storage.nbytes()
                if nbytes and key not in self.keys and key not in inputs:
                    self.keys.add(key)
                    self.live += nbytes
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._free, key, nbytes)
        return out


def peak_memory(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak bytes allocated during one call, above what was allocated before it.

    CUDA: the caching allocator's peak. CPU: the peak of live tensors created by the call's
    aten ops (kernel workspaces are not seen).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with _LiveBytes() as counter:
        fn()
    return counter.peak


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_line(record: dict[str, Any]) -> str:
    """One Markdown line naming the machine and the settings."""
    hw = record.get("gpu") or f"{record['cpu']} ({record['cpu_count']} cores)"
    load = [round(v, 1) for v in record.get("load_average") or []]
    return (
        f"Measured {record['date']} on {hw}, {record['platform']}, torch {record['torch']}, "
        f"timm {record['timm']}, {record['torch_threads']} torch thread(s), "
        f"clock: {record['clock']}, load average at start {load}."
    )


def write(out: Path, stem: str, payload: dict[str, Any], markdown: str) -> list[Path]:
    """Write ``stem.json`` and ``stem.md`` into ``out``; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.json", out / f"{stem}.md"]
    texts = [json.dumps(payload, indent=1, default=str) + "\n", markdown.rstrip() + "\n"]
    atomic_write_all({p: _writer(t) for p, t in zip(paths, texts, strict=True)})
    return paths


def atomic_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    atomic_write_all({path: _writer(text)})


def _writer(text: str) -> Callable[[Path], Any]:
    return lambda tmp: Path(tmp).write_text(text)
