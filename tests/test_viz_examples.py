"""The documentation's example pictures: regenerable by one command, small enough to commit."""

from pathlib import Path

import pytest
from PIL import Image

from dense_lightning.viz.examples import EXAMPLE_FILES, main

REPO = Path(__file__).resolve().parents[1]
MAX_BYTES = 150 * 1024


def test_committed_examples_exist_and_are_small():
    for name in EXAMPLE_FILES:
        path = REPO / "docs" / "images" / name
        assert path.is_file(), f"{path} missing: run python -m dense_lightning.viz.examples"
        assert path.stat().st_size < MAX_BYTES
        with Image.open(path) as image:
            # Readable at their own size: panels drawn twice as large as the 96-pixel images.
            assert image.format == "PNG" and image.width >= 600 and image.height >= 400


@pytest.mark.slow
def test_examples_command_writes_every_picture(tmp_path, capsys):
    main([str(tmp_path), "--steps", "0", "--image-size", "32", "--backbone", "test_resnet"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(EXAMPLE_FILES)
    printed = capsys.readouterr().out
    for name in EXAMPLE_FILES:
        assert name in printed
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG" and image.width > image.height > 0
