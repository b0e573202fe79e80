import pytest

from nerf_pipeline.runtime.errors import DataError
from nerf_pipeline.stages.split import split_views


def test_last_order_is_the_keras_example_split():
    train, val = split_views(100, 0.2, "last", seed=0)
    assert train == list(range(80)) and val == list(range(80, 100))


def test_shuffled_split_is_deterministic_and_disjoint():
    train, val = split_views(100, 0.2, "shuffled", seed=1)
    assert (train, val) == split_views(100, 0.2, "shuffled", seed=1)
    assert (train, val) != split_views(100, 0.2, "shuffled", seed=2)
    assert len(train) == 80 and len(val) == 20 and not set(train) & set(val)
    assert sorted(train + val) == list(range(100))


@pytest.mark.parametrize("num_views, fraction", [(1, 0.2), (3, 0.9), (2, 0.6)])
def test_too_few_views_are_refused(num_views, fraction):
    with pytest.raises(DataError, match="too few"):
        split_views(num_views, fraction, "shuffled", seed=0)
