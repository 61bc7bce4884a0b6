import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from dense_lightning.equivalent import to_dense
from dense_lightning.equivalent.cells import (
    CellGeometry,
    cell_geometry,
    eval_mode,
    lattice_upsample,
    trace_cell_geometry,
)


@pytest.fixture(autouse=True)
def _one_thread():
    # The probes are many small forwards: extra threads only add contention.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(
    ("layers", "stride", "offset"),
    [
        # Cell 0 of a padded 3x3/2 conv is centred on pixel 0.
        ([nn.Conv2d(3, 4, 3, 2, 1), nn.Conv2d(4, 4, 3, 2, 1)], 4, 0.0),
        # A 4x4/4 patch conv (ConvNeXt stem) reads pixels 0..3: centre 1.5; a 2x2/2 after it
        # reads cells 0 and 1: 1.5 + 4 * 0.5.
        ([nn.Conv2d(3, 4, 4, 4), nn.Conv2d(4, 4, 2, 2)], 8, 3.5),
        # Unpadded 5x5 then a padded 3x3 pool: centre 2, then 2 + 2 * 0.
        ([nn.Conv2d(3, 4, 5, 2), nn.MaxPool2d(3, 2, 1)], 4, 2.0),
        # Asymmetric: 2x2/2 conv with padding 1 reads pixels -1, 0: centre -0.5.
        ([nn.Conv2d(3, 4, 2, 2, 1)], 2, -0.5),
    ],
)
def test_traced_offset_matches_hand_computed(layers, stride, offset):
    geometry = cell_geometry(nn.Sequential(*layers))
    assert geometry == CellGeometry(stride=(stride, stride), offset=(offset, offset))


def test_non_square_and_global_gating():
    class Gated(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, (3, 5), (2, 4), (1, 0))

        def forward(self, x):
            y = self.conv(x)
            return y * y.mean(dim=(2, 3), keepdim=True).sigmoid()  # squeeze-excitation-like

    geometry = cell_geometry(Gated())
    assert geometry == CellGeometry(stride=(2, 4), offset=(0.0, 2.0))


def test_eval_mode_restores_each_submodule():
    model = nn.Sequential(nn.BatchNorm2d(2), nn.BatchNorm2d(2)).train()
    model[1].eval()
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert model.training and model[0].training and not model[1].training


def test_trace_keeps_running_statistics():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.BatchNorm2d(4)).train()
    before = model[1].running_mean.clone()
    trace_cell_geometry(model)
    assert model.training
    assert torch.equal(model[1].running_mean, before)


def test_mapping_round_trip_and_points():
    g = CellGeometry(stride=(8, 4), offset=(3.5, 1.5))
    assert g.pixel(2, 0) == 3.5 + 16 and g.cell(3.5 + 16, 0) == 2
    points = torch.tensor([[2.0, 4.0], [10.0, 20.5]])  # (x, y), pixel p covers [p, p + 1)
    cells = g.points_to_cells(points)
    assert torch.allclose(cells[0], torch.tensor([(2.0 - 0.5 - 1.5) / 4, (4.0 - 0.5 - 3.5) / 8]))
    assert torch.allclose(g.cells_to_points(cells), points)
    xs, ys = g.nearest_cells(torch.tensor([[100.0, -50.0]]), (5, 6))
    assert xs.tolist() == [5] and ys.tolist() == [0]
    assert g.with_stride(2) == CellGeometry(stride=(2, 2), offset=(3.5, 1.5))
    with pytest.raises(ValueError, match="stride"):
        CellGeometry(stride=(0, 1), offset=(0.0, 0.0))


def test_lattice_upsample_puts_cells_on_their_pixels():
    g = CellGeometry(stride=(4, 4), offset=(1.0, 2.0))
    maps = torch.randn(2, 3, 5, 6)
    up = lattice_upsample(maps, g, (20, 24))
    # Cell (i, j) at pixel (1 + 4i, 2 + 4j); halfway between two cells the mean of both.
    assert torch.allclose(up[..., 1::4, 2::4], maps)
    assert torch.allclose(up[..., 1, 4], (maps[..., 0, 0] + maps[..., 0, 1]) / 2)
    # Before the first and after the last cell: that cell's value, no extrapolation.
    assert torch.allclose(up[..., 0, 0], maps[..., 0, 0])
    assert torch.allclose(up[..., 19, 23], maps[..., 4, 5])


def test_lattice_upsample_dense_agrees_with_lattice_subsample():
    dense = torch.randn(1, 2, 12, 12)
    original = dense[..., ::4, ::4]
    g = CellGeometry(stride=(32, 32), offset=(0.0, 0.0))
    up_dense = lattice_upsample(dense, g.with_stride(8), (96, 96))
    up_orig = lattice_upsample(original, g, (96, 96))
    # Pixel 32i is original cell i and dense cell 4i: the same value.
    assert torch.equal(up_dense[..., ::32, ::32], original)
    assert torch.equal(up_orig[..., ::32, ::32], original)
    # align_corners=False bilinear puts original cell i at 32i + 15.5 and dense cell 4i at
    # 32i + 3.5: the same check fails for it.
    old_dense = F.interpolate(dense, size=(96, 96), mode="bilinear", align_corners=False)
    old_orig = F.interpolate(original, size=(96, 96), mode="bilinear", align_corners=False)
    assert not torch.allclose(old_dense[..., ::32, ::32], old_orig[..., ::32, ::32], atol=1e-3)


def test_upsample_keeps_dtype_and_gradient():
    maps = torch.randn(1, 2, 3, 3, requires_grad=True)
    up = lattice_upsample(maps, CellGeometry((4, 4), (0.0, 0.0)), (12, 12))
    up.sum().backward()
    assert up.dtype == maps.dtype and maps.grad is not None


def test_outputs_with_different_geometries_are_named():
    class Pyramid(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 2, 3, 2, 1)
            self.b = nn.Conv2d(2, 2, 3, 2, 1)

        def forward(self, x):
            y = self.a(x)
            return [y, self.b(y)]

    assert [g.stride for g in trace_cell_geometry(Pyramid())] == [(2, 2), (4, 4)]
    with pytest.raises(ValueError, match="trace_cell_geometry"):
        cell_geometry(Pyramid())


def test_global_mixing_is_reported():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.GroupNorm(1, 4))
    with pytest.raises(ValueError, match="mixes all positions"):
        cell_geometry(model)


def _timm_dense_pair(name: str, output_stride: int):
    model = timm.create_model(name, pretrained=False, features_only=True, out_indices=(-1,))
    return model.eval(), to_dense(model, output_stride)


def test_dense_model_has_original_offset_fast():
    original, dense = _timm_dense_pair("resnet10t", 8)
    g = cell_geometry(original)
    assert g.stride == (32, 32)
    assert cell_geometry(dense) == g.with_stride(8)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "offset"), [("resnet18", 0.0), ("convnext_atto", 15.5), ("regnetx_002", 0.0)]
)
def test_dense_model_has_original_offset(name, offset):
    original, dense = _timm_dense_pair(name, 8)
    g = cell_geometry(original)
    assert g == CellGeometry(stride=(32, 32), offset=(offset, offset))
    assert cell_geometry(dense) == g.with_stride(8)


@pytest.mark.parametrize("name", ["efficientnet_b0", "regnety_002"])
def test_squeeze_excitation_gates_on_the_dense_map_keep_the_trace_local(name):
    # Their dense gates reduce a [N, C, H/k, k, W/k, k] phase view over axes 2 and 4: a NaN read
    # there must count as a spatial reduction, or it reaches every cell of its phase.
    original, dense = _timm_dense_pair(name, 8)
    assert cell_geometry(dense) == cell_geometry(original).with_stride(8)
