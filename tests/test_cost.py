"""The cost per image: operations counted, time measured so that load on the machine is not."""

import time

import pytest
import torch
from torch import nn

from dense_lightning.callbacks import measure_cost
from dense_lightning.callbacks.cost import measure_costs


class Descheduled(nn.Module):
    """A convolution whose passes also wait, as when another process holds the cores."""

    def __init__(self, wait: float):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.wait = wait

    def forward(self, x):
        time.sleep(self.wait)
        return self.conv(x)


def test_time_spent_waiting_for_the_cpu_does_not_count():
    images = torch.randn(2, 3, 32, 32)
    net = Descheduled(wait=0.05).train()
    cost = measure_cost(net, images, repeats=3)
    assert cost["clock"] == "cpu" and net.training  # its mode is given back
    # 50 ms of waiting per pass would be 25 ms per image on a wall clock.
    assert 0 < cost["ms"] < 10
    assert cost["gflops"] == pytest.approx(2 * 4 * 3 * 9 * 32 * 32 / 1e9)


def test_networks_are_timed_in_turns_and_each_gets_its_median():
    calls = []

    class Recorder(nn.Module):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def forward(self, x):
            calls.append(self.name)
            return x * 2

    costs = measure_costs({"a": Recorder("a"), "b": Recorder("b")}, torch.ones(1, 3, 8, 8))
    assert set(costs) == {"a", "b"}
    timed = calls[4:]  # after a counted pass and a warm-up pass each
    assert timed == ["a", "b", "b", "a", "a", "b", "b", "a", "a", "b"]
    with pytest.raises(ValueError, match="repeats"):
        measure_cost(Recorder("a"), torch.ones(1, 3, 8, 8), repeats=0)
