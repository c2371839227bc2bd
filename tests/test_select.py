import numpy as np
import pandas as pd
import pytest

from codexdask.errors import StoreError
from codexdask.select import informative_indices, split_batches


def test_informative_indices_follow_flags():
    meta = pd.DataFrame({"is_informative": [False, True, False, True, True]})
    assert informative_indices(meta).tolist() == [1, 3, 4]


def test_informative_indices_accept_csv_strings():
    meta = pd.DataFrame({"is_informative": ["True", "false", "TRUE"]})
    assert informative_indices(meta).tolist() == [0, 2]


def test_missing_column_is_a_store_error():
    with pytest.raises(StoreError, match="is_informative"):
        informative_indices(pd.DataFrame({"patch_id": [0]}))


def test_split_batches_keeps_order_and_remainder():
    parts = split_batches(np.array([1, 3, 4, 6, 9]), 2)
    assert [p.tolist() for p in parts] == [[1, 3], [4, 6], [9]]
    assert split_batches(np.array([], dtype=np.int64), 3) == []
