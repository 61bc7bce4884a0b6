"""Encoder-decoder models: probes they accept, outputs already dense, a dense encoder inside."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dense_lightning.equivalent import (
    EquivalentLayer,
    get_dense_info,
    is_dense,
    to_dense,
    to_original,
    verify_equivalence,
)
from dense_lightning.errors import ConfigurationError


class Encoder(nn.Module):
    """Four stride-2 levels: features at strides 2, 4, 8, 16."""

    def __init__(self) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU())
            for c in (3, 8, 8, 8)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class DeepLabLike(nn.Module):
    """A head on the deepest level, upsampled back to the input by a factor it is told."""

    def __init__(self, upsample: int = 16) -> None:
        super().__init__()
        self.encoder = Encoder()
        self.head = nn.Conv2d(8, 2, 3, 1, 1)
        self.upsample = upsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.head(self.encoder(x)[-1]), scale_factor=self.upsample)


class UNetLike(DeepLabLike):
    """Joins each level with the next finer one after upsampling it by 2."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        y = features[-1]
        for skip in reversed(features[:-1]):
            y = F.interpolate(y, scale_factor=2.0) + skip
        return F.interpolate(self.head(y), scale_factor=2.0)


class NeedsLargeInputs(nn.Module):
    """A pyramid of max pools on a stride-4 map: inputs under 256 px fail (like smp's PAN)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, 4, 1)
        self.pyramid = nn.Sequential(*(nn.MaxPool2d(2) for _ in range(6)))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        y = self.stem(x)
        return [y, self.pyramid(y)]


def _models() -> list[nn.Module]:
    torch.manual_seed(0)
    return [DeepLabLike().eval(), UNetLike().eval()]


@pytest.mark.parametrize("model", _models(), ids=["deeplab", "unet"])
def test_a_model_at_its_output_stride_already_is_returned_unchanged(model):
    dense = to_dense(model, 1)
    assert not any(isinstance(m, EquivalentLayer) for m in dense.modules())
    info = get_dense_info(dense)
    assert (info.output_stride, info.original_stride, info.factor) == (1, 1, 1)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(dense(x), model(x), rtol=0, atol=0)
    assert not is_dense(to_original(dense))


def test_asking_an_encoder_decoder_for_a_coarser_stride_points_to_its_encoder():
    with pytest.raises(ConfigurationError, match=r'submodule="<encoder attribute>"') as error:
        to_dense(DeepLabLike(), 8)
    assert "outputs are at stride 1 already" in str(error.value)


def test_probes_grow_until_the_model_accepts_them():
    model = NeedsLargeInputs().eval()
    dense = to_dense(model, 1)  # traced at 384 px: 96 and 192 fail in the pyramid
    x = torch.randn(1, 3, 256, 256)
    assert verify_equivalence(model, dense, x, check_phases=False).equivalent


def test_a_dense_encoder_inside_a_model_that_takes_its_stride():
    torch.manual_seed(0)
    model = DeepLabLike(upsample=16).eval()
    dense = to_dense(model, 4, submodule="encoder")
    assert get_dense_info(dense) is None and get_dense_info(model.encoder) is None
    info = get_dense_info(dense.encoder)
    assert (info.output_stride, info.original_stride) == (4, 16)
    x = torch.randn(1, 3, 64, 64)
    report = verify_equivalence(model.encoder, dense.encoder, x, check_phases=False)
    assert report.equivalent and [o.factor for o in report.outputs][-2:] == [(2, 2), (4, 4)]
    dense.upsample = 4  # its decoder follows the encoder stride, as smp's DeepLab does
    assert dense(x).shape == model(x).shape
    # Converting again at another stride redoes the encoder; back to the original at the end.
    again = to_dense(dense, 8, submodule="encoder")
    assert get_dense_info(again.encoder).output_stride == 8
    restored = to_original(again)
    assert not is_dense(restored) and get_dense_info(restored.encoder) is None
    with torch.no_grad():
        torch.testing.assert_close(restored.encoder(x), model.encoder(x), rtol=0, atol=0)


def test_a_decoder_that_needs_the_original_strides_is_a_clear_error():
    with pytest.raises(ConfigurationError, match="does not accept the dense encoder's outputs"):
        to_dense(UNetLike(), 4, submodule="encoder")


def test_a_missing_submodule_names_the_children():
    with pytest.raises(ConfigurationError, match=r"no submodule 'backbone'.*\['encoder', 'head'\]"):
        to_dense(DeepLabLike(), 4, submodule="backbone")
