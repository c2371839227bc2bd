"""Exact image-wide statistics of pixel values, from chunks, in passes over boxes."""
