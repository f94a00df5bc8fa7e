"""Datasets: loaders for the standard dataset folders and generated data.

``primaps.datasets.synthetic`` generates seeded dense features with ground
truth for benchmarks, tests and the demo.
"""
