import itertools
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator
from torch import nn

from dense_lightning.callbacks.visualization import ValidationImageLogger
from dense_lightning.data import (
    SyntheticDetectionDataModule,
    SyntheticKeypointsDataModule,
    normalize,
)
from dense_lightning.equivalent import to_dense
from dense_lightning.equivalent.cells import CellGeometry, trace_cell_geometry
from dense_lightning.tasks import KeypointEstimationTask, ObjectDetectionTask
from dense_lightning.viz import (
    VizContext,
    class_colors,
    colorize_labels,
    draw_boxes,
    draw_prediction,
    draw_skeletons,
    heat_colormap,
    ordinal,
    output_geometry,
    overlay_mask,
    paint_cells,
    palette,
    render_dense_vs_original,
    render_predictions,
    slice_batch,
    tile,
    title_height,
    title_lines,
    titled,
    to_hwc,
    to_uint8_image,
    upscale,
)
from dense_lightning.viz.cells import _FADE as FADE
from dense_lightning.viz.cells import EMPTY_CELL, cell_margins
from dense_lightning.viz.guides import _tick
from dense_lightning.viz.text import font, wrap_text


def _blank(size=32, value=100):
    return torch.full((3, size, size), value, dtype=torch.uint8)


def test_palette_is_the_voc_palette_and_stable_across_sizes():
    colors = palette(22)
    assert colors.dtype == torch.uint8 and colors.shape == (22, 3)
    assert colors[0].tolist() == [0, 0, 0]
    assert colors[1].tolist() == [128, 0, 0] and colors[2].tolist() == [0, 128, 0]
    assert colors[15].tolist() == [192, 128, 128]  # VOC "person"
    assert len({tuple(c) for c in colors.tolist()}) == 22
    assert torch.equal(palette(5), colors[:5])


def test_colorize_labels_paints_classes_and_ignored_pixels():
    labels = torch.tensor([[0, 1], [2, 255]])
    image = colorize_labels(labels, num_classes=3)
    assert image.shape == (3, 2, 2) and image.dtype == torch.uint8
    assert image[:, 0, 1].tolist() == [128, 0, 0]
    assert image[:, 1, 1].tolist() == [255, 255, 255]


def test_heat_colormap_is_dark_to_bright_and_clips():
    values = torch.linspace(-1, 2, 31).view(1, 31)
    image = heat_colormap(values).float()
    brightness = image.sum(dim=0)[0]
    inside = brightness[10:21]  # values 0..1
    assert torch.all(inside[1:] >= inside[:-1])
    assert torch.equal(brightness[:10], brightness[10].expand(10))  # clipped below
    with pytest.raises(ValueError, match="vmax > vmin"):
        heat_colormap(values, vmin=1, vmax=1)


def test_to_uint8_image_undoes_the_normalisation():
    image = torch.rand(3, 8, 8)
    restored = to_uint8_image(normalize(image))
    assert restored.dtype == torch.uint8
    assert (restored.float() - image * 255).abs().max() <= 1.0
    batch = to_uint8_image(torch.stack([normalize(image)] * 2))
    assert batch.shape == (2, 3, 8, 8)
    assert torch.equal(to_uint8_image(restored), restored)


def test_overlay_mask_leaves_background_and_ignored_pixels_alone():
    image = _blank()
    labels = torch.zeros(32, 32, dtype=torch.long)
    labels[4:10, 4:10] = 2
    labels[20:, 20:] = 255
    color = class_colors(3, background=0)[2]
    out = overlay_mask(image, labels, alpha=1.0)
    assert out[:, 5, 5].tolist() == color.tolist()
    assert torch.equal(out[:, 0, 0], image[:, 0, 0])
    assert torch.equal(out[:, 25, 25], image[:, 25, 25])
    assert torch.equal(image, _blank())  # input untouched
    assert torch.equal(overlay_mask(image, torch.zeros(32, 32)), image)
    # Half transparent inside, the full class colour on the region's edge.
    half = overlay_mask(image, labels, alpha=0.5)
    assert half[:, 4, 6].tolist() == color.tolist()
    assert half[:, 6, 6].tolist() == ((image[:, 6, 6].float() + color) / 2).round().tolist()


def test_draw_boxes_colours_the_border_by_class():
    image = _blank()
    out = draw_boxes(image, torch.tensor([[4.0, 4.0, 20.0, 20.0]]), torch.tensor([0]))
    assert out[:, 4, 12].tolist() == class_colors(1)[0].tolist()  # top edge, class 0's colour
    assert torch.equal(out[:, 30, 30], image[:, 30, 30])
    captioned = draw_boxes(
        image, torch.tensor([[2.0, 2.0, 30.0, 30.0]]), torch.tensor([1]), torch.tensor([0.9]),
        class_names=["disc", "square"],
    )  # fmt: skip
    assert captioned.shape == image.shape
    assert torch.equal(draw_boxes(image, torch.zeros(0, 4)), image)


def test_draw_skeletons_hides_invisible_keypoints_and_their_bones():
    image = _blank(value=0)
    keypoints = torch.tensor([[[5.0, 16.0, 2.0], [27.0, 16.0, 2.0], [16.0, 28.0, 0.0]]])
    out = draw_skeletons(image, keypoints, skeleton=[(0, 1), (1, 2)])
    assert out[:, 16, 16].sum() > 0  # on the visible bone 0-1
    assert out[:, 24, 19].sum() == 0  # on the hidden bone 1-2
    hidden = keypoints.clone()
    hidden[..., 2] = 0
    assert torch.equal(draw_skeletons(image, hidden, [(0, 1)]), image)


def test_tile_titled_upscale_and_hwc():
    a, b = _blank(8), _blank(16)
    grid = tile([[a, b], [b]], gap=2)
    assert grid.shape == (3, 2 + 16 + 2 + 16 + 2, 2 + 8 + 2 + 16 + 2)
    wide = _blank(64)
    assert titled(wide, "input").shape == (3, 64 + title_height(), 64)
    # A title wider than its panel wraps instead of being cut; a row's titles share a height.
    title = "prediction, score >= 0.30"
    lines = wrap_text(title, 62, font())
    assert len(lines) > 1 and " ".join(lines) == title  # nothing cut
    assert title_lines(["input", title], 64) == len(lines)
    assert titled(wide, title).shape == (3, 64 + title_height(lines=len(lines)), 64)
    assert titled(wide, "input", lines=len(lines)).shape == titled(wide, title).shape
    assert upscale(a, 3).shape == (3, 24, 24)
    assert to_hwc(a).shape == (8, 8, 3)
    with pytest.raises(ValueError):
        tile([])


def test_slice_batch_cuts_tensors_and_lists():
    batch = {"image": torch.zeros(4, 3, 2, 2), "boxes": [torch.zeros(1, 4)] * 4, "n": 3}
    part = slice_batch(batch, 3, 1)
    assert part["image"].shape[0] == 2 and len(part["boxes"]) == 2 and part["n"] == 3


def _images(count=2, size=32):
    return normalize(torch.rand(count, 3, size, size))


def test_render_predictions_for_each_task_format():
    images = _images()
    ctx = VizContext(class_names=["disc", "square"], skeleton=[(0, 1)], min_size=64)
    seg = render_predictions(
        images, list(torch.randint(0, 3, (2, 32, 32))), {"mask": torch.zeros(2, 32, 32)}, ctx
    )
    # Two rows of (input, target, prediction) panels, enlarged twice, titled; a legend.
    panels = (2 + 2 * (title_height() + 64 + 2), 2 + 3 * (64 + 2))
    assert seg.dtype == torch.uint8 and seg.shape[-2] == panels[0] and seg.shape[-1] > panels[1]
    box = {"boxes": torch.tensor([[2.0, 2, 20, 20]]), "labels": torch.tensor([1]),
           "scores": torch.tensor([0.9])}  # fmt: skip
    det_batch = {"boxes": [box["boxes"]] * 2, "labels": [box["labels"]] * 2}
    det = render_predictions(images, [box, box], det_batch, ctx)
    # "prediction, score >= 0.30" takes more than a line over a 64-pixel panel.
    lines = title_lines(["prediction, score >= 0.30"], 64)
    scored_rows = 2 + 2 * (title_height(lines=lines) + 64 + 2)
    assert lines > 1 and det.shape[-2] == scored_rows and det.shape[-1] > panels[1]
    kps = torch.tensor([[[4.0, 4.0, 0.8], [20.0, 20.0, 0.9]]])
    pose = {**box, "keypoints": kps}
    kp_batch = {**det_batch, "keypoints": [kps] * 2}
    # Keypoint instances are coloured one by one: no class legend.
    assert render_predictions(images, [pose, pose], kp_batch, ctx).shape == (
        3, scored_rows, panels[1]
    )  # fmt: skip
    # Without ground truth: input and prediction only.
    alone = render_predictions(images, [pose, pose], None, ctx)
    assert alone.shape[-1] == 2 + 2 * (64 + 2)


def test_draw_prediction_names_the_formats_it_knows():
    with pytest.raises(TypeError, match="class map"):
        draw_prediction(_blank(), {"logits": torch.zeros(1)}, VizContext())


class _TinyNet(nn.Module):
    def __init__(self, out_channels):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(8, out_channels, 3, stride=2, padding=1),
        )  # fmt: skip

    def forward(self, x):
        return self.body(x)


class _DictNet(_TinyNet):
    def forward(self, x):
        return {"heatmap": self.body(x), "size": self.body(x)[:, :2]}


class _ValidNet(nn.Module):
    """Unpadded convolutions: cell 0 sits at pixel 3, not 0, so the geometry matters.

    Its scores go on a heat scale, where nearly every cell has a colour of its own.
    """

    def __init__(self, out_channels):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, out_channels, 3, stride=2)
        )

    def forward(self, x):
        return {"heatmap": self.body(x)}


def _first_map(output):
    return output["heatmap"] if isinstance(output, dict) else output


def _panels(result, rows, size, factor, columns=3):
    """The map panels (without titles) of each row of a dense vs original picture."""
    (top, bottom), (left, right) = result.margins
    height, width = (size + (top + bottom)) * factor, (size + (left + right)) * factor
    titles = title_height(lines=title_lines(["original, stride 4", "dense, stride 1"], width))
    out = []
    for row in range(rows):
        start = 2 + row * (titles + height + 2) + titles
        band = result.image[:, start : start + height]
        out.append(
            [band[..., 2 + i * (width + 2) : 2 + i * (width + 2) + width] for i in range(columns)]
        )
    return out


@pytest.mark.parametrize(
    "net", [_TinyNet(5), _DictNet(3), _ValidNet(4)], ids=["logits", "heatmaps", "unpadded"]
)
def test_dense_vs_original_puts_each_original_cell_on_its_dense_lattice_cell(net):
    torch.manual_seed(0)
    dense = to_dense(net.eval(), 1)
    ctx = VizContext(min_size=40)
    images = _images(size=20)
    result = render_dense_vs_original(dense, images, ctx)
    (geometry,) = {trace_cell_geometry(dense)[0]}
    assert result.factor == 4 and result.max_rel_error < 1e-5 and result.geometry == geometry
    factor = 2  # 20-pixel images enlarged to 40
    scored = isinstance(net, _DictNet | _ValidNet)  # heat scale, else class colours
    cells_y, cells_x = _first_map(net(images)).shape[-2:]  # the original network's cells
    (top, _), (left, _) = result.margins
    for _, original, dense_panel in _panels(result, rows=2, size=20, factor=factor):
        assert not torch.equal(original, dense_panel)
        cells = 0
        for i, j in itertools.product(range(cells_y), range(cells_x)):
            y, x = (geometry.offset[a] + 4 * (i, j)[a] for a in (0, 1))
            if not (0 <= y < 20 and 0 <= x < 20):
                continue
            # Original cell (i, j) and dense cell (4i, 4j) sit on pixel (y, x): same colour.
            py, px = (round(y) + top) * factor + factor // 2, (round(x) + left) * factor + 1
            assert torch.equal(original[:, py, px], dense_panel[:, py, px])
            cells += 1
        assert cells >= 4
        if scored:  # elsewhere the dense map has cells of its own (scores differ cell to cell)
            assert len(dense_panel.reshape(3, -1).unique(dim=1).T) > 4 * cells
    # A guide beside the panels: a class legend for logits, a colour bar for scores, which
    # says what the scores are.
    panel_width = (20 + sum(result.margins[1])) * factor + 2
    assert result.image.shape[-1] > 2 + 3 * panel_width
    guide = result.image[:, :, 2 + 3 * panel_width :]
    if scored:
        assert result.colours.startswith("heatmap score: sigmoid")
    else:
        assert result.colours == "class of the highest logit"
    if scored:
        top = heat_colormap(torch.ones(1, 1), 0.0, 1.0)[:, 0, 0]
        assert (guide == top.view(3, 1, 1)).all(0).any()
    else:
        for color in class_colors(net.body[-1].out_channels, background=0)[1:]:
            assert (guide == color.view(3, 1, 1)).all(0).any()
    assert dense.training is False


def test_paint_cells_puts_cell_j_at_its_pixel():
    colors = torch.arange(3 * 2 * 3, dtype=torch.uint8).view(3, 2, 3)
    geometry = trace_cell_geometry(_ValidNet(2).eval())[0]  # stride 4, cell 0 at pixel 3
    painted = paint_cells(colors, geometry, (12, 14))
    assert painted.shape == (3, 12, 14)
    for i, j in itertools.product(range(2), range(3)):
        y, x = 3 + 4 * i, 3 + 4 * j
        assert torch.equal(painted[:, y, x], colors[:, i, j])
    # Pixels no cell covers (before cell 0, past the last one) are grey, not the nearest cell.
    assert (painted[:, 0, 0] == EMPTY_CELL).all() and (painted[:, 11, 13] == EMPTY_CELL).all()


def test_every_cell_is_drawn_whole_even_where_it_overhangs_the_image():
    colors = (torch.arange(3 * 3 * 4, dtype=torch.uint8).view(3, 3, 4) * 7) % 200
    geometry = CellGeometry(stride=(4, 4), offset=(0.0, 0.0))  # padded: cell 0 at pixel 0
    margins = cell_margins([(geometry, (3, 4))], (12, 16))
    assert margins == ((2, 0), (2, 0))  # cell 0 covers pixels -2..1
    painted = paint_cells(colors, geometry, (12, 16), margins)
    assert painted.shape == (3, 14, 18)
    faded = (colors.float() * (1 - FADE) + 255 * FADE).round().to(torch.uint8)
    for j in range(4):  # each column of cells is 4 pixels wide, the first one too
        shades = (colors[:, 1, j], faded[:, 1, j])
        column = [x for x in range(18) if any(torch.equal(painted[:, 5, x], c) for c in shades)]
        assert column == list(range(4 * j, 4 * j + 4))
    assert (painted[:, 5, 16:] == EMPTY_CELL).all()  # past the last cell: no cell
    # The part of a cell outside the image is faded toward white; inside it is the cell's.
    assert torch.equal(painted[:, 2, 2], colors[:, 0, 0])
    assert (painted[:, 0, 0].int() > colors[:, 0, 0].int()).all()


def test_colour_bar_ticks_are_told_apart():
    for span in (0.02, 0.5, 20.0):
        ticks = [_tick(0.1 + span * i / 4, span) for i in range(5)]
        assert len(set(ticks)) == 5, ticks


def test_output_geometry_is_the_traced_one_and_survives_untraceable_networks():
    dense = to_dense(_ValidNet(2).eval(), 2)
    assert output_geometry(dense) == trace_cell_geometry(dense)[0]
    # Group normalisation mixes all positions: no cell can be traced, the nominal centre is used.
    mixing = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.GroupNorm(2, 8),
        nn.Conv2d(8, 4, 3, stride=2, padding=1),
    ).eval()  # fmt: skip
    assert output_geometry(to_dense(mixing, 2)) == CellGeometry(stride=(2, 2), offset=(0.5, 0.5))
    with pytest.raises(ValueError):
        output_geometry(mixing)


def test_dense_vs_original_needs_a_dense_network():
    with pytest.raises(ValueError, match="not dense"):
        render_dense_vs_original(_TinyNet(3), _images())


# ValidationImageLogger: the pictures reach TensorBoard; nothing is drawn for other loggers.

_SIZES = dict(image_size=32, num_train=4, num_val=4, batch_size=2)


def _fit_with(tmp_path, task, data, logger, callback):
    trainer = Trainer(
        accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=1, limit_val_batches=1,
        num_sanity_val_steps=0, logger=logger, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path,
        callbacks=[callback],
    )  # fmt: skip
    trainer.fit(task, datamodule=data)
    return trainer


def _tensorboard_images(logger):
    events = EventAccumulator(logger.log_dir, size_guidance={IMAGES: 0})
    events.Reload()
    return {tag: events.Images(tag) for tag in events.Tags()["images"]}


@pytest.mark.parametrize(
    "task_name",
    ["segmentation", pytest.param("detection", marks=pytest.mark.slow),
     pytest.param("keypoints", marks=pytest.mark.slow)],
)  # fmt: skip
def test_validation_pictures_reach_tensorboard(tmp_path, seg_task, seg_data, task_name):
    torch.manual_seed(0)
    task, data = {
        "segmentation": lambda: (seg_task(), seg_data(**_SIZES)),
        "detection": lambda: (
            ObjectDetectionTask(backbone="test_resnet", num_classes=3, output_stride=8),
            SyntheticDetectionDataModule(num_classes=3, **_SIZES),
        ),
        "keypoints": lambda: (
            KeypointEstimationTask(backbone="test_resnet", output_stride=8, head_channels=16),
            SyntheticKeypointsDataModule(**_SIZES),
        ),
    }[task_name]()
    logger = TensorBoardLogger(tmp_path, name="tb")
    callback = ValidationImageLogger(max_images=2, min_size=32)
    _fit_with(tmp_path, task, data, logger, callback)
    images = _tensorboard_images(logger)
    assert set(images) == {"val/predictions", "val/dense_vs_original"}
    assert [len(v) for v in images.values()] == [1, 1]
    dense = images["val/dense_vs_original"][0]
    # Input | original | dense, a legend or colour bar, and a line of explanation below.
    assert dense.width > 2 + 3 * (32 + 2) and dense.height > 2 + 2 * (title_height() + 32 + 2)
    caption = callback.last_captions["val/dense_vs_original"]
    assert "original stride 32 vs dense stride 8" in caption
    assert float(caption.rsplit(" ", 1)[-1].rstrip(")")) < 1e-4


def test_original_network_gets_the_prediction_grid_only(tmp_path, seg_task, seg_data):
    logger = TensorBoardLogger(tmp_path, name="tb")
    task = seg_task(output_stride=None)
    _fit_with(tmp_path, task, seg_data(**_SIZES), logger, ValidationImageLogger(max_images=1))
    assert set(_tensorboard_images(logger)) == {"val/predictions"}


def test_nothing_is_drawn_without_an_image_logger(tmp_path, seg_task, seg_data, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("drew pictures nobody can see")

    monkeypatch.setattr(ValidationImageLogger, "render", fail)
    _fit_with(
        tmp_path, seg_task(), seg_data(**_SIZES), CSVLogger(tmp_path), ValidationImageLogger()
    )


def test_draws_on_the_first_validation_batch_of_every_nth_epoch():
    callback = ValidationImageLogger(every_n_epochs=2)
    loggers = [TensorBoardLogger("unused")]

    def trainer(epoch, sanity=False, rank_zero=True, image_loggers=loggers):
        return SimpleNamespace(
            current_epoch=epoch, sanity_checking=sanity, is_global_zero=rank_zero,
            loggers=image_loggers,
        )  # fmt: skip

    assert callback.should_log(trainer(1), 0, 0)
    assert not callback.should_log(trainer(0), 0, 0)  # epochs 2, 4... (1-based)
    assert not callback.should_log(trainer(1), 1, 0)  # later batches
    assert not callback.should_log(trainer(1), 0, 1)  # later dataloaders
    assert not callback.should_log(trainer(1, sanity=True), 0, 0)
    assert not callback.should_log(trainer(1, rank_zero=False), 0, 0)
    assert not callback.should_log(trainer(1, image_loggers=[CSVLogger("unused")]), 0, 0)


def test_a_module_can_draw_its_own_pictures(tmp_path, seg_task, seg_data):
    task = seg_task()
    task.visualize = lambda batch, max_images: {"custom": _blank(8)}
    logger = TensorBoardLogger(tmp_path, name="tb")
    _fit_with(tmp_path, task, seg_data(**_SIZES), logger, ValidationImageLogger())
    assert set(_tensorboard_images(logger)) == {"val/custom"}


def test_validation_image_logger_checks_its_arguments():
    with pytest.raises(ValueError, match="every_n_epochs"):
        ValidationImageLogger(every_n_epochs=0)


def test_ordinal():
    assert [ordinal(n) for n in (1, 2, 3, 4, 8, 11, 12, 16, 22)] == [
        "1st", "2nd", "3rd", "4th", "8th", "11th", "12th", "16th", "22nd",
    ]  # fmt: skip
