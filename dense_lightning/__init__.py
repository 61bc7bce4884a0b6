"""dense-lightning: dense prediction with timm CNNs through exact equivalent mappings."""

__version__ = "0.1.0"
