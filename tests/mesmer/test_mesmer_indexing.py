"""Boxes and padded index maps of codexdask.mesmer.indexing."""

from __future__ import annotations

import numpy as np
import pytest

from codexdask.errors import InputError
from codexdask.mesmer.indexing import Box, check_inside, check_window, padded_source_index, span


def test_box_algebra() -> None:
    a, b = Box(0, 0, 10, 20), Box(5, 15, 30, 40)
    assert a.shape == (10, 20) and a.rows == (0, 10) and a.cols == (0, 20)
    assert a.union(b) == Box(0, 0, 30, 40)
    assert a.intersection(b) == Box(5, 15, 10, 20)
    assert a.intersection(Box(20, 30, 25, 35)).is_empty()
    assert Box.whole((7, 9)).contains(Box(1, 2, 7, 9)) and not a.contains(b)
    image = np.arange(30 * 40).reshape(30, 40)
    window = image[b.slices()]
    assert np.array_equal(window[a.intersection(b).slices(b)], image[5:10, 15:20])


@pytest.mark.parametrize("size", [1, 2, 3, 5, 11])
def test_reflect_index_is_numpy_pad(size: int) -> None:
    data = np.arange(size) * 7 + 3
    for before in range(0, 30, 4):
        for after in range(0, 30, 7):
            index = padded_source_index(size, before, after, "reflect")
            assert np.array_equal(data[index], np.pad(data, (before, after), mode="reflect"))
            constant = padded_source_index(size, before, after, "constant")
            padded = np.where(constant >= 0, data[np.maximum(constant, 0)], 0)
            assert np.array_equal(padded, np.pad(data, (before, after)))


def test_span_and_checks() -> None:
    assert span(np.array([-1, 4, 2, -1])) == (2, 5)
    assert span(np.array([-1, -1])) == (0, 0)
    with pytest.raises(InputError, match="inside"):
        check_inside(Box(0, 0, 11, 5), (10, 10), "out_box")
    with pytest.raises(InputError, match="required box"):
        check_window(np.zeros((4, 4)), Box(0, 0, 4, 4), Box(0, 0, 5, 4), "raw")
    with pytest.raises(InputError, match="shape"):
        check_window(np.zeros((3, 4)), Box(0, 0, 4, 4), Box(0, 0, 2, 2), "raw")
    with pytest.raises(InputError, match="pad mode"):
        padded_source_index(4, 1, 1, "edge")
