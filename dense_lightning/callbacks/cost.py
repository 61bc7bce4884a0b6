"""What a network costs per image: floating-point operations (exact) and time (this machine)."""

from __future__ import annotations

import time

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["measure_cost"]


@torch.no_grad()
def measure_cost(
    network: nn.Module, images: Tensor, *, method: str = "forward", repeats: int = 3
) -> dict[str, float]:
    """GFLOPs and milliseconds per image of ``network`` on ``images``, in eval mode.

    GFLOPs are counted from the operators that run (a dilated convolution costs as many
    operations per output as the strided one it replaces, over more outputs), so they do not
    depend on the machine. Milliseconds are the fastest of ``repeats`` timed passes over the
    batch after one warm-up pass, divided by the batch size: compare them only between runs
    on the same, otherwise idle, machine.

    Args:
        network: the network to measure; its train/eval mode is restored afterwards.
        images: a batch ``[B, C, H, W]`` on the network's device.
        method: the forward method to call (``"forward"`` or ``"forward_features"``).
        repeats: timed passes; the fastest counts.

    Returns:
        ``{"gflops": ..., "ms": ...}`` per image.

    Raises:
        ValueError: ``images`` is empty or ``repeats`` is below 1.
    """
    if images.shape[0] == 0 or repeats < 1:
        raise ValueError(f"Need a non-empty batch and repeats >= 1; got {images.shape[0]} images.")
    run = getattr(network, method)
    was_training = network.training
    network.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            run(images[:1])
        timings = []
        for _ in range(repeats + 1):  # the first pass warms up caches and allocators
            _synchronize(images)
            start = time.perf_counter()
            run(images)
            _synchronize(images)
            timings.append(time.perf_counter() - start)
    finally:
        network.train(was_training)
    return {
        "gflops": counter.get_total_flops() / 1e9,
        "ms": 1000.0 * min(timings[1:]) / images.shape[0],
    }


def _synchronize(images: Tensor) -> None:
    """Wait for queued GPU work, so that timings measure the computation and not its launch."""
    if images.is_cuda:
        torch.cuda.synchronize(images.device)
