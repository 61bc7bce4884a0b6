"""Readable pictures: captions inside the image and apart, legends, colour bars, thresholds."""

import itertools

import pytest
import torch

from dense_lightning.viz import (
    BACKGROUND_COLOR,
    LabelBox,
    VizContext,
    class_colors,
    colorbar,
    draw_boxes,
    heat_colormap,
    layout_labels,
    legend,
    mute,
    prediction_legend,
    render_predictions,
    text_color,
    title_height,
)
from dense_lightning.viz.text import fit_text, font, text_size, wrap_text


def _blank(size=64, value=0):
    return torch.full((3, size, size), value, dtype=torch.uint8)


def _has_color(picture, color):
    return bool((picture == torch.tensor(color, dtype=torch.uint8).view(3, 1, 1)).all(0).any())


def _crowd(count=12, size=64, seed=0):
    """Many overlapping boxes, some touching the image's edges."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(count, 2, generator=g) * size
    wh = 6 + torch.rand(count, 2, generator=g) * 20
    boxes = torch.cat([xy - wh / 2, xy + wh / 2], dim=1).clamp(0, size)
    boxes[0] = torch.tensor([40.0, 50.0, 64.0, 64.0])  # bottom-right corner
    boxes[1] = torch.tensor([0.0, 0.0, 10.0, 8.0])  # top-left corner
    return boxes


def test_class_colors_are_distinct_and_keep_their_class_whatever_the_background():
    colors = class_colors(30)
    assert colors.dtype == torch.uint8 and len({tuple(c) for c in colors.tolist()}) == 30
    with_background = class_colors(5, background=0)
    assert with_background[0].tolist() == list(BACKGROUND_COLOR)
    # Segmentation's class 1 (after background) is coloured like detection's class 0.
    assert torch.equal(with_background[1:], class_colors(4))
    assert text_color((255, 255, 0)) == (0, 0, 0) and text_color((0, 0, 128)) == (255, 255, 255)


@pytest.mark.parametrize("seed", range(4))
def test_caption_layout_stays_inside_the_image_without_overlap(seed):
    boxes = _crowd(seed=seed)
    sizes = [(30, 12)] * len(boxes)
    spots = layout_labels(boxes, sizes, (64, 64))
    placed = [s for s in spots if s is not None]
    assert len(placed) >= 3
    assert all(s.inside(64, 64) for s in placed)
    assert not any(a.overlaps(b) for a, b in itertools.combinations(placed, 2))
    # The corner boxes are placed first, so they get captions, pulled inside the image.
    assert spots[0] is not None and spots[1] is not None
    assert spots[0].x + spots[0].width <= 64 and spots[1].y >= 0


def test_a_caption_wider_than_the_image_is_not_placed():
    assert layout_labels(torch.tensor([[0.0, 0, 10, 10]]), [(80, 12)], (64, 64)) == [None]
    assert LabelBox(0, 0, 5, 5).overlaps(LabelBox(4, 4, 5, 5))
    assert not LabelBox(0, 0, 5, 5).overlaps(LabelBox(5, 0, 5, 5))


def test_drawn_captions_are_where_the_layout_puts_them_and_readable():
    boxes = _crowd(count=8)
    labels = torch.arange(8) % 3
    scores = torch.linspace(0.95, 0.6, 8)
    names = ["disc", "square", "triangle"]
    out = draw_boxes(_blank(), boxes, labels, scores, names)
    face = font()
    texts = [f"{names[int(a)]} {float(b):.2f}" for a, b in zip(labels, scores, strict=True)]
    sizes = [(w + 4, h + 2) for w, h in (text_size(fit_text(t, 60, face), face) for t in texts)]
    spots = layout_labels(boxes, sizes, (64, 64))
    colors = class_colors(3)
    drawn = 0
    for spot, label in zip(spots, labels, strict=True):
        if spot is None:
            continue
        patch = out[:, spot.y : spot.y + spot.height, spot.x : spot.x + spot.width]
        color = colors[label].view(3, 1)
        # The caption's patch is the class colour, with text of the contrasting colour on it.
        share = (patch.reshape(3, -1) == color).all(0).float().mean()
        assert share > 0.5
        ink = torch.tensor(text_color(colors[label].tolist())).view(3, 1)
        pixels = patch.reshape(3, -1).float()
        near_ink = (pixels - ink).abs().sum(0) < (pixels - color).abs().sum(0)
        assert near_ink.sum() >= 10  # anti-aliased letters, mostly of the ink colour
        drawn += 1
    assert drawn >= 3


def test_score_threshold_drops_low_score_boxes():
    boxes = torch.tensor([[4.0, 4.0, 28.0, 28.0], [36.0, 36.0, 60.0, 60.0]])
    labels, scores = torch.tensor([0, 1]), torch.tensor([0.9, 0.2])
    out = draw_boxes(_blank(), boxes, labels, scores, score_threshold=0.5, captions=False)
    assert out[:, 4, 16].tolist() == class_colors(1)[0].tolist()  # kept box: top edge
    assert out[:, 36, 48].tolist() == [0, 0, 0]  # dropped box: nothing drawn
    both = draw_boxes(_blank(), boxes, labels, scores, score_threshold=0.1, captions=False)
    assert both[:, 36, 48].tolist() == class_colors(2)[1].tolist()
    with pytest.raises(ValueError, match="needs the boxes' scores"):
        draw_boxes(_blank(), boxes, labels, score_threshold=0.5)


def test_box_edges_have_a_dark_outline_for_contrast():
    out = draw_boxes(_blank(value=255), torch.tensor([[10.0, 10.0, 40.0, 40.0]]), captions=False)
    assert out[:, 9, 20].tolist() == [0, 0, 0]  # outside the edge
    assert out[:, 10, 20].tolist() == class_colors(1)[0].tolist()


def test_legend_lists_each_class_in_its_colour():
    entries = [(f"class {i}", tuple(class_colors(6)[i].tolist())) for i in range(6)]
    panel = legend(entries, height=80, title="classes")
    assert panel.shape[-2] == 80
    for _, color in entries:
        assert _has_color(panel, color)
    # Entries that do not fit one column go into more columns, not below the panel.
    assert legend(entries, height=40).shape[-1] > legend(entries, height=200).shape[-1]
    with pytest.raises(ValueError, match="at least one"):
        legend([], height=50)


def test_colorbar_spans_the_colour_map_from_vmin_to_vmax():
    bar = colorbar(0.0, 0.5, height=120, label="score")
    assert bar.shape[-2] == 120
    for value in (0.0, 0.5):
        top = heat_colormap(torch.tensor([[value]]), 0.0, 0.5)[:, 0, 0].tolist()
        assert _has_color(bar, top)
    with pytest.raises(ValueError, match="vmax > vmin"):
        colorbar(1.0, 1.0, height=120)
    # Beside a picture too short for a readable bar, the bar is taller than the picture.
    assert colorbar(0.0, 1.0, height=10).shape[-2] > 10
    assert legend([("disc", (30, 144, 255))], height=5).shape[-2] > 5


def test_prediction_grids_carry_a_class_legend():
    names = ["background", "disc", "square", "triangle"]
    ctx = VizContext(class_names=names, num_classes=4, min_size=64)
    images = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    mask = torch.zeros(32, 32, dtype=torch.long)
    mask[4:12, 4:12], mask[20:28, 20:28] = 1, 3
    seg = render_predictions(images, [mask], {"mask": mask[None]}, ctx)
    panels_width = 2 + 3 * (64 + 2)
    assert seg.shape[-1] > panels_width
    guide = seg[:, :, panels_width:]
    colors = class_colors(4, background=0)
    for label in (1, 2, 3):  # every class, present or not; background is see-through
        assert _has_color(guide, colors[label].tolist())
    assert [name for name, _ in prediction_legend([mask], None, ctx)] == names[1:]
    boxes = {"boxes": torch.tensor([[2.0, 2, 20, 20]]), "labels": torch.tensor([1]),
             "scores": torch.tensor([0.9])}  # fmt: skip
    det_ctx = VizContext(class_names=names[1:], min_size=64)
    det = render_predictions(images, [boxes], None, det_ctx)
    assert det.shape[-1] > 2 + 2 * (64 + 2)
    for color in class_colors(3).tolist():
        assert _has_color(det[:, :, 2 + 2 * (64 + 2) :], color)


def test_text_helpers_fit_and_wrap():
    face = font()
    assert text_size(fit_text("a very long class name indeed", 40, face), face)[0] <= 40
    assert fit_text("a very long class name", 40, face).endswith("…")
    lines = wrap_text("one two three four five six seven eight", 60, face)
    assert len(lines) > 1 and all(text_size(line, face)[0] <= 60 for line in lines)
    assert title_height() >= text_size("Ag", face)[1]


def test_images_under_drawings_are_grey_so_only_classes_have_colour():
    disc = class_colors(1)[0]
    image = disc.view(3, 1, 1).expand(3, 16, 16).clone()  # a picture in the disc colour
    muted = mute(image, 0.4)
    assert torch.equal(muted[0], muted[1]) and torch.equal(muted[1], muted[2])
    ctx = VizContext(class_names=["background", "disc"], num_classes=2, min_size=16)
    nothing = torch.zeros(16, 16, dtype=torch.long)
    grid = render_predictions(image[None], [nothing], None, ctx)
    prediction = grid[:, 2 + title_height() : 2 + title_height() + 16, 2 + 18 : 2 + 18 + 16]
    assert not _has_color(prediction, disc.tolist())
    assert _has_color(grid[:, :, 2 : 2 + 16], disc.tolist())  # the input panel keeps its colours
