"""Array assertions shared by the format tests."""

from __future__ import annotations

import numpy as np


def assert_same_tensors(got: dict, sent: dict) -> None:
    assert list(got) == list(sent)
    for name, array in sent.items():
        assert got[name].dtype == array.dtype, name
        assert got[name].shape == array.shape, name
        np.testing.assert_array_equal(got[name], array, err_msg=name)
