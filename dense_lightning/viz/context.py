"""What drawing needs to know about the data (names, skeleton, classes) and display settings."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from lightning.pytorch import LightningModule

from dense_lightning.viz.colors import class_colors

__all__ = ["MAX_LEGEND_ENTRIES", "VizContext", "class_entries"]

#: Legends list every class up to this many; beyond it, only the classes in the picture.
MAX_LEGEND_ENTRIES = 16


@dataclass
class VizContext:
    """What drawing needs to know about the data, plus display settings.

    Attributes:
        class_names: name of each class index (captions and legends).
        skeleton: keypoint index pairs joined by a bone.
        num_classes: classes of the task (legend length).
        ignore_index: mask label that is not drawn.
        background: label of class maps left unpainted, so the image shows through (in
            raw class-score maps it is painted dark grey); ``None`` paints every class.
        score_threshold: predicted boxes and instances scored below it are not drawn.
        min_size: panels are enlarged (nearest neighbour) until their shorter side is this.
        mute: images under drawings are shown in grey, washed this far toward light grey
            (0: plain grey levels, 1: flat), so that class colours and captions stand out.
    """

    class_names: list[str] | None = None
    skeleton: list[tuple[int, int]] | None = None
    num_classes: int | None = None
    ignore_index: int | None = 255
    background: int | None = 0
    score_threshold: float = 0.3
    min_size: int = 128
    mute: float = 0.4

    @classmethod
    def from_module(
        cls, pl_module: LightningModule, datamodule: Any = None, **kwargs: Any
    ) -> VizContext:
        """Read names, skeleton and classes from the DataModule and the task's hparams."""
        hparams = getattr(pl_module, "hparams", {})
        names = getattr(datamodule, "class_names", None)
        skeleton = getattr(datamodule, "skeleton", None)
        return cls(
            class_names=list(names) if names is not None else None,
            skeleton=[(int(a), int(b)) for a, b in skeleton] if skeleton else None,
            num_classes=hparams.get("num_classes"),
            ignore_index=hparams.get("ignore_index", 255),
            **kwargs,
        )

    def class_name(self, label: int) -> str:
        """The name of class ``label`` (``"class <label>"`` when there are no names)."""
        if self.class_names is not None and 0 <= label < len(self.class_names):
            return self.class_names[label]
        return f"class {label}"


def class_entries(
    num_classes: int,
    ctx: VizContext,
    background: int | None = None,
    present: Collection[int] | None = None,
    background_shown: bool = False,
) -> list[tuple[str, tuple[int, int, int]]]:
    """Legend entries ``(name, colour)`` of classes ``0 .. num_classes - 1``, in the colours drawn.

    Args:
        num_classes: number of classes.
        ctx: names.
        background: class coloured as background (see :func:`class_colors`).
        present: classes in the picture; with more than :data:`MAX_LEGEND_ENTRIES` classes
            only these are listed.
        background_shown: list the background class (it is painted, not see-through).
    """
    colors = class_colors(num_classes, background).tolist()
    entries = []
    for label in range(num_classes):
        if label == background and not background_shown:
            continue
        if num_classes > MAX_LEGEND_ENTRIES and present is not None and label not in present:
            continue
        r, g, b = colors[label]
        entries.append((ctx.class_name(label), (int(r), int(g), int(b))))
    return entries
