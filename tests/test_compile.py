"""torch.compile traces a dense model whole: one graph, no graph break."""

from __future__ import annotations

import pytest
import timm
import torch

from dense_lightning.equivalent import to_dense


@pytest.mark.slow  # dynamo traces ~200 modules: tens of seconds on a loaded CPU
def test_dense_efficientnet_b0_compiles_to_one_graph():
    torch.manual_seed(0)
    model = timm.create_model("efficientnet_b0", pretrained=False, num_classes=0).eval()
    dense = to_dense(model, 8, method="forward_features")
    assert dense.dense_info.regions  # its squeeze-excitation gates run per phase
    x = torch.randn(1, 3, 64, 64)
    torch._dynamo.reset()
    try:
        explained = torch._dynamo.explain(dense.forward_features)(x)
    finally:
        torch._dynamo.reset()
    assert explained.graph_break_count == 0, [str(b.reason) for b in explained.break_reasons]
    assert explained.graph_count == 1
