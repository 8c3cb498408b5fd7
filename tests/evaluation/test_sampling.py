import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clipcache.evaluation import ProtocolError, carve_validation, sample_few_shot


@pytest.fixture
def labels():
    return np.random.default_rng(0).integers(0, 4, 200)


def test_same_seed_gives_same_support(labels):
    a, b = sample_few_shot(labels, 4, 7, 4), sample_few_shot(labels, 4, 7, 4)
    np.testing.assert_array_equal(a.rows, b.rows)


def test_k_rows_per_class(labels):
    s = sample_few_shot(labels, 5, 1, 4)
    np.testing.assert_array_equal(np.bincount(labels[s.rows], minlength=4), [5, 5, 5, 5])
    np.testing.assert_array_equal(s.per_class, [5, 5, 5, 5])


def test_different_seeds_give_different_supports(labels):
    assert not np.array_equal(sample_few_shot(labels, 4, 1, 4).rows, sample_few_shot(labels, 4, 2, 4).rows)


def test_supports_are_nested_over_shots(labels):
    small, large = sample_few_shot(labels, 2, 3, 4), sample_few_shot(labels, 8, 3, 4)
    assert set(small.rows) <= set(large.rows)


def test_only_candidates_are_drawn(labels):
    candidates = np.arange(0, 200, 2)
    s = sample_few_shot(labels, 3, 1, 4, candidates)
    assert set(s.rows) <= set(candidates)


def test_class_without_samples_raises(labels):
    with pytest.raises(ProtocolError, match=r"class 'e' \(index 4\) has no labelled sample"):
        sample_few_shot(labels, 2, 1, 5, class_names=list("abcde"))


def test_short_class_gives_all_its_rows():
    labels = np.array([0, 0, 0, 1])
    s = sample_few_shot(labels, 2, 1, 2)
    np.testing.assert_array_equal(s.per_class, [2, 1])


def test_record_lists_ids(labels):
    s = sample_few_shot(labels, 1, 1, 4)
    rec = s.record(np.array([f"id{i}" for i in s.rows]))
    assert rec["shots"] == 1 and rec["seed"] == 1 and rec["ids"] == [f"id{i}" for i in s.rows]


def test_carved_validation_is_disjoint_fixed_and_balanced(labels):
    val, train = carve_validation(labels, 5, 4)
    val2, _ = carve_validation(labels, 5, 4)
    assert not set(val) & set(train) and len(val) + len(train) == 200
    np.testing.assert_array_equal(val, val2)
    np.testing.assert_array_equal(np.bincount(labels[val], minlength=4), [5, 5, 5, 5])


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    counts=st.lists(st.integers(1, 12), min_size=2, max_size=6),
    shots=st.integers(0, 10),
    seed=st.integers(0, 2**31),
)
def test_support_takes_min_of_shots_and_class_size(counts, shots, seed):
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(len(counts)), counts))
    s = sample_few_shot(labels, shots, seed, len(counts))
    expected = counts if shots == 0 else [min(shots, c) for c in counts]
    assert s.per_class.tolist() == expected
    assert len(np.unique(s.rows)) == len(s.rows)
    assert np.bincount(labels[s.rows], minlength=len(counts)).tolist() == expected


def test_negative_shots_is_a_value_error_naming_shots(labels):
    from clipcache.errors import InvalidParameterError

    with pytest.raises(InvalidParameterError, match="shots=-1 must be a non-negative number") as err:
        sample_few_shot(labels, -1, 1, 4)
    assert err.value.param == "shots" and isinstance(err.value, ValueError)
