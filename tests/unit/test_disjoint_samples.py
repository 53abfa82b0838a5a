"""Real-data samples disjoint from an earlier one (`--exclude-seed`): a confirmation on customers or
households the choice never saw."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pricing.completejourney import sample_households
from pricing.grocery import disjoint_from
from pricing.tafeng import _sample_customers


def test_a_households_sample_excluding_another_shares_none_of_it() -> None:
    ids = pd.Index([f"h{k}" for k in range(500)])
    first = sample_households(ids, 60, 0)
    second = sample_households(ids, 60, 1, exclude_seed=0)
    assert len(first) == len(second) == 60
    assert not set(first) & set(second)
    # without the exclusion the two seeds' samples overlap (what the option is for)
    assert set(first) & set(sample_households(ids, 60, 1))
    assert np.array_equal(sample_households(ids, 60, 0, exclude_seed=None), first)


def test_a_customers_sample_excluding_another_shares_none_of_it() -> None:
    customers = np.arange(400)
    first = _sample_customers(customers, 80, 0)
    second = _sample_customers(customers, 80, 1, exclude_seed=0)
    assert len(second) == 80 and not set(first) & set(second)
    assert np.array_equal(_sample_customers(customers, 80, 0), first)  # unchanged by the option


def test_the_exclusion_needs_a_size_and_another_seed() -> None:
    codes = np.arange(10)
    with pytest.raises(ValueError, match="needs a sample size"):
        disjoint_from(codes, None, 1, 0, lambda c, n, s: c[:n])
    with pytest.raises(ValueError, match="own seed"):
        disjoint_from(codes, 3, 1, 1, lambda c, n, s: c[:n])
    assert np.array_equal(disjoint_from(codes, 3, 1, 0, lambda c, n, s: c[:n]), codes[3:])
