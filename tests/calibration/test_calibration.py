"""Temperature scaling: the fitted T is the NLL minimum, and it makes confidences honest."""

import numpy as np
import pytest
import scipy.special

from clipcache.calibration import TEMPERATURE_BOUNDS, TemperatureScaling, fit_temperature, nll
from clipcache.errors import InvalidFeaturesError, InvalidParameterError, NotFittedError
from clipcache.evaluation.metrics import expected_calibration_error


def _reference_nll(z, y, t):
    s = z / t
    return float(np.mean(-np.log(scipy.special.softmax(s, axis=1)[np.arange(len(y)), y])))


def _sampled(n=4000, c=5, scale=4.0, seed=0):
    """Labels drawn from softmax(z0), logits reported as scale * z0: the true temperature is ``scale``."""
    rng = np.random.default_rng(seed)
    z0 = rng.normal(size=(n, c)) * 1.5
    p = scipy.special.softmax(z0, axis=1)
    y = np.array([rng.choice(c, p=row) for row in p])
    return z0 * scale, y


def test_nll_equals_the_reference_formula():
    z, y = _sampled(n=300)
    for t in (0.5, 1.0, 3.0):
        assert nll(z, y, t) == pytest.approx(_reference_nll(z, y, t), rel=1e-12)


def test_fit_temperature_is_the_brute_force_grid_minimum():
    z, y = _sampled(n=1500, seed=1)
    grid = np.exp(np.linspace(np.log(0.05), np.log(50.0), 20001))
    values = np.array([_reference_nll(z, y, t) for t in grid[::20]])  # coarse pass
    best = grid[::20][np.argmin(values)]
    fine = grid[(grid > best / 1.02) & (grid < best * 1.02)]
    fine_best = fine[np.argmin([_reference_nll(z, y, t) for t in fine])]
    t = fit_temperature(z, y)
    assert t == pytest.approx(fine_best, rel=2e-4)
    assert _reference_nll(z, y, t) <= _reference_nll(z, y, fine_best) + 1e-10


def test_fit_temperature_recovers_the_scale_of_overconfident_logits():
    z, y = _sampled(n=20000, scale=4.0, seed=2)
    assert 3.6 < fit_temperature(z, y) < 4.4


def test_ece_falls_on_miscalibrated_logits():
    z, y = _sampled(n=6000, scale=5.0, seed=3)
    half = len(z) // 2
    ts = TemperatureScaling().fit(z[:half], y[:half])
    before = expected_calibration_error(scipy.special.softmax(z[half:], axis=1), y[half:])
    after = expected_calibration_error(ts.transform(z[half:]), y[half:])
    assert before > 0.15
    assert after < 0.03
    assert ts.nll_after_ < ts.nll_before_


def test_transform_keeps_the_argmax_and_sums_to_one():
    z, y = _sampled(n=200, seed=4)
    ts = TemperatureScaling().fit(z, y)
    p = ts.transform(z)
    assert p.dtype == np.float32 and p.shape == z.shape
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(p.argmax(axis=1), z.argmax(axis=1))
    np.testing.assert_allclose(ts.scale(z), z / ts.temperature_, rtol=1e-6)


def test_fixed_temperature_is_used_as_given():
    z, y = _sampled(n=50)
    ts = TemperatureScaling(temperature=2.5).fit(z, y)
    assert ts.temperature_ == 2.5
    np.testing.assert_allclose(ts.transform(z), scipy.special.softmax(z / 2.5, axis=1), rtol=1e-5)


def test_separable_logits_fall_towards_zero_with_a_note(caplog):
    z = np.array([[10.0, 0.0], [0.0, 10.0]])
    with caplog.at_level("INFO"):
        t = fit_temperature(z, np.array([0, 1]))
    assert TEMPERATURE_BOUNDS[0] <= t < 0.1
    assert nll(z, [0, 1], t) < 1e-9
    assert "no interior minimum" in caplog.text


def test_a_minimum_beyond_the_upper_bound_stops_on_it(caplog):
    z = np.array([[1e7, 0.0], [1e7, 0.0]])  # one right, one wrong: the NLL falls as T grows
    with caplog.at_level("INFO"):
        t = fit_temperature(z, np.array([0, 1]))
    assert t == pytest.approx(TEMPERATURE_BOUNDS[1], rel=1e-3)
    assert "no interior minimum" in caplog.text


@pytest.mark.parametrize(
    "logits, y, message",
    [
        (np.array([[0.0, np.nan]]), np.array([0]), "NaN"),
        (np.zeros((2, 3)), np.array([0, 3]), "column indices"),
        (np.zeros((2, 3)), np.array([0]), "one label per row"),
        (np.zeros(3), np.array([0]), "(n, C)"),
        (np.zeros((0, 3)), np.zeros(0, dtype=int), "no validation logits"),
    ],
)
def test_bad_input_is_a_clear_error(logits, y, message):
    with pytest.raises(InvalidFeaturesError, match=message.replace("(", r"\(").replace(")", r"\)")):
        fit_temperature(logits, y)


def test_unfitted_and_bad_parameter():
    with pytest.raises(NotFittedError):
        TemperatureScaling().transform(np.zeros((1, 2)))
    with pytest.raises(InvalidParameterError) as info:
        TemperatureScaling(temperature=-1.0).fit(np.zeros((1, 2)), np.array([0]))
    assert info.value.param == "temperature"
