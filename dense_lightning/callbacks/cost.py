"""What a network costs per image: floating-point operations (exact) and time (this machine).

Timing on a shared machine is noisy: another process holding the cores for a while makes
whichever network runs then look slow (an exported model measured 3x slower than the dense
one it was derived from, with 4x fewer operations). So the networks are timed in turns, one
pass each per round, in alternating order, and each gets the median of its passes. On the
CPU the clock is this process's CPU time (all its threads), which time spent waiting for a
core does not advance; on CUDA it is the wall time between synchronisations.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["measure_cost", "measure_costs"]


@torch.no_grad()
def measure_costs(
    networks: Mapping[str, nn.Module],
    images: Tensor,
    *,
    method: str = "forward",
    repeats: int = 5,
) -> dict[str, dict[str, float | str]]:
    """GFLOPs and milliseconds per image of each network on ``images``, in eval mode.

    GFLOPs are counted from the operators that run (a dilated convolution costs as many
    operations per output as the strided one it replaces, over more outputs), so they do not
    depend on the machine. Milliseconds are the median of ``repeats`` passes over the batch
    per network, taken in turns after one warm-up pass each (see the module docstring),
    divided by the batch size.

    Args:
        networks: name -> network; their train/eval modes are restored afterwards.
        images: a batch ``[B, C, H, W]`` on the networks' device.
        method: the forward method to call (``"forward"`` or ``"forward_features"``).
        repeats: timed passes per network.

    Returns:
        name -> ``{"gflops", "ms", "clock"}`` per image; ``clock`` is ``"cpu"`` (this
        process's CPU time) or ``"cuda"`` (wall time on the GPU).

    Raises:
        ValueError: ``images`` is empty or ``repeats`` is below 1.
    """
    if images.shape[0] == 0 or repeats < 1:
        raise ValueError(f"Need a non-empty batch and repeats >= 1; got {images.shape[0]} images.")
    modes = {name: network.training for name, network in networks.items()}
    runs = {name: getattr(network.eval(), method) for name, network in networks.items()}
    clock = "cuda" if images.is_cuda else "cpu"
    try:
        flops = {}
        for name, run in runs.items():
            with FlopCounterMode(display=False) as counter:
                run(images[:1])
            flops[name] = counter.get_total_flops()
            run(images)  # warm-up: caches, allocators, lazily chosen kernels
        timings: dict[str, list[float]] = {name: [] for name in runs}
        names = list(runs)
        for round_ in range(repeats):
            for name in names if round_ % 2 == 0 else names[::-1]:
                timings[name].append(_timed(runs[name], images))
    finally:
        for name, network in networks.items():
            network.train(modes[name])
    return {
        name: {
            "gflops": flops[name] / 1e9,
            "ms": 1000.0 * statistics.median(timings[name]) / images.shape[0],
            "clock": clock,
        }
        for name in runs
    }


def measure_cost(
    network: nn.Module, images: Tensor, *, method: str = "forward", repeats: int = 5
) -> dict[str, float | str]:
    """:func:`measure_costs` of one network: ``{"gflops", "ms", "clock"}`` per image."""
    return measure_costs({"network": network}, images, method=method, repeats=repeats)["network"]


def _timed(run: Callable[[Tensor], object], images: Tensor) -> float:
    """Seconds one pass takes: CPU time of this process, or wall time on a synchronised GPU."""
    if images.is_cuda:
        torch.cuda.synchronize(images.device)
        start = time.perf_counter()
        run(images)
        torch.cuda.synchronize(images.device)
        return time.perf_counter() - start
    start = time.process_time()
    run(images)
    return time.process_time() - start
