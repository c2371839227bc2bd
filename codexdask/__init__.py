"""codexdask: Dask-distributed cell and nucleus segmentation of multiplexed tissue slides."""

__version__ = "0.1.0"
