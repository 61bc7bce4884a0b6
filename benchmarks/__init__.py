"""Benchmarks: timm coverage, speed (dense, shift-and-stitch, dilation, export), accuracy, overhead.

Run each with ``python -m benchmarks.<name> [--quick] [--out DIR]``; see ``benchmarks/README.md``.
"""
