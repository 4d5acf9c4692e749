"""Launch geometry and stride handling shared by the kernels (pure Python, no triton)."""

from __future__ import annotations

import itertools

import pytest
import torch

from pref_core.ops._utils import (
    as_rows,
    elementwise_geometry,
    per_sample_sum,
    reduction_geometry,
)


@pytest.mark.parametrize(
    ("batch", "d"),
    list(itertools.product([1, 2, 3, 8, 1000, 5000], [1, 15, 16, 17, 1000, 1024, 1025, 262144])),
)
def test_reduction_segments_cover_each_sample_exactly_once(batch, d):
    block, segments, tiles_per_segment = reduction_geometry(batch, d)
    assert block & (block - 1) == 0 and 16 <= block <= 1024
    span = tiles_per_segment * block
    assert segments * span >= d  # every element is covered ...
    assert (segments - 1) * span < d  # ... and no segment is empty
    _, tiles = elementwise_geometry(batch, d)
    assert tiles * block >= d > (tiles - 1) * block


def test_reduction_geometry_depends_only_on_shape():
    # Determinism across GPUs: the split must not depend on the device.
    assert reduction_geometry(8, 16384) == (1024, 16, 1)
    assert reduction_geometry(2, 262144) == (1024, 256, 1)
    assert reduction_geometry(1, 10 * 1024 * 1024) == (1024, 1024, 10)


def test_as_rows_keeps_batch_strided_views_and_copies_the_rest():
    base = torch.randn(6, 4, 5)
    view, stride = as_rows(base[::2])  # rows contiguous, batch strided
    assert view.data_ptr() == base.data_ptr() and stride == 40
    view, stride = as_rows(torch.randn(1, 4, 5).expand(3, 4, 5))  # broadcast batch
    assert stride == 0
    view, stride = as_rows(base.transpose(1, 2))  # rows not contiguous: copied
    assert view.is_contiguous() and stride == 20
    view, stride = as_rows(torch.randn(3, 1, 5)[:, :, :])  # size-1 dims do not matter
    assert stride == 5


def test_per_sample_sum_of_a_vector_is_itself():
    # sum(dim=()) would reduce everything; a (B,) input has one element per sample.
    x = torch.tensor([1.0, 2.0, 3.0])
    assert per_sample_sum(x).tolist() == [1.0, 2.0, 3.0]
    assert per_sample_sum(torch.ones(2, 3, 4)).tolist() == [12.0, 12.0]
