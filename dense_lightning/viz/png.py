"""Pictures to PNG files, atomically and with the umask's permissions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import Tensor

from dense_lightning.files import atomic_write_all
from dense_lightning.viz.text import to_pil

__all__ = ["png_writer", "save_png"]


def png_writer(picture: Tensor, palette: bool = False) -> Callable[[Path], None]:
    """A writer for :func:`~dense_lightning.files.atomic_write_all` saving ``picture`` as PNG.

    Args:
        picture: ``uint8 [3, H, W]``.
        palette: store 256 adaptive colours instead of full RGB: several times smaller for
            pictures of flat colours (documentation), at a slight loss on photographs.
    """

    def write(path: Path) -> None:
        image = to_pil(picture)
        if palette:
            image = image.quantize(colors=256, method=2, dither=0)
        image.save(path, format="PNG", optimize=palette)

    return write


def save_png(path: str | Path, picture: Tensor, palette: bool = False) -> None:
    """Write ``uint8 [3, H, W]`` to ``path`` as PNG, atomically, with the umask's permissions.

    A reader sees either no file or the whole picture, never a partial PNG.

    Args:
        path: the file.
        picture: the picture.
        palette: see :func:`png_writer`.
    """
    atomic_write_all({Path(path): png_writer(picture, palette)})
