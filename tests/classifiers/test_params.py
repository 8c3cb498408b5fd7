"""Declared parameter rules: every parameter is checked when fit starts, before any data is read."""

from numbers import Integral, Real

import numpy as np
import pytest

from clipcache import ClipCacheError
from clipcache.classifiers import (
    ClassMeanClassifier,
    GDAClassifier,
    InvalidParameterError,
    KNNClassifier,
    LogitBiasFusion,
    LogitEnsemble,
    SelectByValidation,
    TipAdapter,
    TransductiveGDA,
    ZeroShotClassifier,
)
from clipcache.classifiers._params import (
    Device,
    Grid,
    HasMethods,
    Interval,
    Options,
    validate_parameters,
)

ESTIMATORS = [
    ZeroShotClassifier,
    ClassMeanClassifier,
    GDAClassifier,
    LogitEnsemble,
    TipAdapter,
    LogitBiasFusion,
    KNNClassifier,
    TransductiveGDA,
    SelectByValidation,
]


class _Untouchable:
    """Stands for data that must not be read: any use of it raises."""

    def __array__(self, *args, **kwargs):
        raise AssertionError("the data was read before the parameters were checked")

    def __len__(self):
        raise AssertionError("the data was read before the parameters were checked")


class _BadType:
    def __repr__(self):
        return "<bad>"


def test_invalid_parameter_error_is_a_value_error_and_a_clipcache_error():
    assert issubclass(InvalidParameterError, ValueError) and issubclass(InvalidParameterError, ClipCacheError)


@pytest.mark.parametrize("cls", ESTIMATORS, ids=lambda c: c.__name__)
def test_constraints_declare_exactly_the_init_parameters(cls):
    assert set(cls._parameter_constraints) == set(cls().get_params(deep=False))


@pytest.mark.parametrize("cls", ESTIMATORS, ids=lambda c: c.__name__)
def test_init_is_keyword_only(cls):
    first = next(iter(cls().get_params(deep=False)))
    with pytest.raises(TypeError, match="positional argument"):
        cls(getattr(cls(), first))


@pytest.mark.parametrize(
    ("cls", "name"),
    [(cls, name) for cls in ESTIMATORS for name in cls().get_params(deep=False)],
    ids=lambda v: v if isinstance(v, str) else v.__name__,
)
def test_a_bad_value_of_any_parameter_raises_before_the_data_is_read(cls, name):
    est = cls(**{name: _BadType()})
    with pytest.raises(InvalidParameterError) as info:
        est.fit(_Untouchable(), _Untouchable())
    assert str(info.value).startswith(f"{cls.__name__} got {name}=<bad>; {name} must be ")
    assert info.value.param == name
    assert not str(info.value).endswith(".")


@pytest.mark.parametrize(
    ("est", "message"),
    [
        (GDAClassifier(shrinkage=1.5), "GDAClassifier got shrinkage=1.5; shrinkage must be a number in [0, 1]"),
        (GDAClassifier(priors="flat"), "GDAClassifier got priors='flat'; priors must be 'uniform' or 'empirical'"),
        (GDAClassifier(device=0), "GDAClassifier got device=0; device must be None or a torch device name such as "
                                  "'cpu' or 'cuda'"),
        (KNNClassifier(n_neighbors=0), "KNNClassifier got n_neighbors=0; n_neighbors must be an int >= 1"),
        (KNNClassifier(n_neighbors=2.0), "KNNClassifier got n_neighbors=2.0; n_neighbors must be an int >= 1"),
        (KNNClassifier(n_neighbors=True), "KNNClassifier got n_neighbors=True; n_neighbors must be an int >= 1"),
        (ClassMeanClassifier(logit_scale=0), "ClassMeanClassifier got logit_scale=0; logit_scale must be a number > 0"),
        (ClassMeanClassifier(logit_scale=float("nan")),
         "ClassMeanClassifier got logit_scale=nan; logit_scale must be a number > 0"),
        (ClassMeanClassifier(normalize="yes"), "ClassMeanClassifier got normalize='yes'; normalize must be a bool"),
        (TipAdapter(alpha=-1.0), "TipAdapter got alpha=-1.0; alpha must be a number >= 0"),
        (TipAdapter(beta_grid=[]), "TipAdapter got beta_grid=[]; beta_grid must be None or a non-empty 1-D sequence "
                                   "of finite numbers >= 0"),
        (LogitEnsemble(alpha_grid=[0.1, np.inf]), "LogitEnsemble got alpha_grid=[0.1, inf]; alpha_grid must be None "
                                                  "or a non-empty 1-D sequence of finite numbers >= 0"),
        (LogitEnsemble(model=GDAClassifier), "LogitEnsemble got model=<class 'clipcache.classifiers.gda.GDAClassifier"
                                             "'>; model must be None or an estimator with fit and logits methods"),
        (LogitBiasFusion(uncertainty="variance"), "LogitBiasFusion got uncertainty='variance'; uncertainty must be "
                                                  "'kurtosis' or 'entropy'"),
        (LogitBiasFusion(aux_dim=0), "LogitBiasFusion got aux_dim=0; aux_dim must be an int >= 1"),
        (ZeroShotClassifier(text_embeddings="prompts"), "ZeroShotClassifier got text_embeddings='prompts'; "
                                                        "text_embeddings must be None or an array-like"),
        (GDAClassifier(center="pool"), "GDAClassifier got center='pool'; center must be None, 'support' or an "
                                       "array-like"),
        (GDAClassifier(solver="svd"), "GDAClassifier got solver='svd'; solver must be 'auto', 'covariance' or "
                                      "'woodbury'"),
        (TransductiveGDA(covariance="diag"), "TransductiveGDA got covariance='diag'; covariance must be 'support' "
                                             "or 'em'"),
        (TransductiveGDA(center="test"), "TransductiveGDA got center='test'; center must be None, 'support' or "
                                         "'transductive' or an array-like"),
        (SelectByValidation(tolerance=-1), "SelectByValidation got tolerance=-1; tolerance must be a number >= 0"),
    ],
)
def test_messages_name_the_estimator_the_parameter_and_what_it_accepts(est, message):
    with pytest.raises(InvalidParameterError) as info:
        est.fit(_Untouchable(), _Untouchable())
    assert str(info.value) == message


@pytest.mark.parametrize(
    "est",
    [
        GDAClassifier(precision="shrinkage", shrinkage=0, priors="empirical", device=None),
        KNNClassifier(n_neighbors=np.int64(3), metric="ip"),
        ClassMeanClassifier(logit_scale=np.float32(50), normalize=np.bool_(False)),
        TipAdapter(alpha=0, beta=np.float64(2.0), alpha_grid=np.array([0.0, 1.0]), beta_grid=(1, 2)),
        LogitBiasFusion(aux_dim=np.int64(2), aux=GDAClassifier(), power_grid=[0, 0.5]),
    ],
    ids=lambda e: type(e).__name__,
)
def test_numpy_scalars_tuples_and_bounds_are_accepted(est, blobs):
    assert est.fit(blobs["X"], blobs["y"]).score(blobs["Xt"], blobs["yt"]) > 0.5


def test_a_center_vector_of_the_wrong_length_names_center(blobs):
    with pytest.raises(InvalidParameterError) as info:
        ClassMeanClassifier(center=np.zeros(3)).fit(blobs["X"], blobs["y"])
    assert str(info.value) == (
        "ClassMeanClassifier got a center of shape (3,); center must be a finite mean vector of shape (16,), "
        "'support' or None"
    )
    assert info.value.param == "center"


@pytest.mark.parametrize("candidates", [[], [("gda", GDAClassifier())], [(1, GDAClassifier(), 0)]])
def test_select_candidates_must_be_name_estimator_level(blobs, candidates):
    with pytest.raises(InvalidParameterError) as info:
        SelectByValidation(candidates=candidates).fit(blobs["X"], blobs["y"])
    assert info.value.param == "candidates"


def test_aux_dim_must_leave_a_clip_column(blobs):
    with pytest.raises(InvalidParameterError) as info:
        LogitBiasFusion(aux_dim=16).fit(blobs["X"], blobs["y"])
    assert str(info.value) == (
        "LogitBiasFusion got aux_dim=16 but X has 16 feature(s); aux_dim must leave at least one CLIP column"
    )
    assert info.value.param == "aux_dim"


@pytest.mark.parametrize("cls", [LogitEnsemble, TipAdapter, LogitBiasFusion, TransductiveGDA, SelectByValidation],
                         ids=lambda c: c.__name__)
def test_validation_data_comes_in_pairs_and_is_checked_before_the_data_is_read(cls):
    with pytest.raises(InvalidParameterError, match=f"{cls.__name__}.fit got only one of X_val and y_val"):
        cls().fit(_Untouchable(), _Untouchable(), X_val=_Untouchable())


def test_fit_chunks_checks_parameters_before_reading_a_chunk():
    def chunks():
        raise AssertionError("the data was read before the parameters were checked")

    with pytest.raises(InvalidParameterError) as info:
        GDAClassifier(precision="oas").fit_chunks(chunks)
    assert info.value.param == "precision"


def test_interval_bounds_and_kinds():
    closed = Interval(Real, 0, 1, closed="both")
    half_open = Interval(Integral, 1, None, closed="left")
    assert [closed.is_satisfied_by(v) for v in (0, 0.5, 1, 1.01, -0.0, float("nan"), True, "0.5")] == [
        True, True, True, False, True, False, False, False,
    ]
    assert [half_open.is_satisfied_by(v) for v in (1, np.int32(7), 0, 2.0, False)] == [True, True, False, False, False]
    assert [str(Interval(Real, 0, 1, closed=c)) for c in ("both", "left", "right", "neither")] == [
        "a number in [0, 1]", "a number in [0, 1)", "a number in (0, 1]", "a number in (0, 1)",
    ]
    assert str(Interval(Real, None, 3, closed="neither")) == "a number < 3"


def test_options_grid_methods_and_device():
    assert [Options("a", "b").is_satisfied_by(v) for v in ("a", "c", None)] == [True, False, False]
    assert [Grid().is_satisfied_by(v) for v in ([0, 1], (2.5,), np.zeros(3), [], [[1, 2]], [-1], 3.0, ["x"])] == [
        True, True, True, False, False, False, False, False,
    ]
    assert [HasMethods("fit", "logits").is_satisfied_by(v) for v in (GDAClassifier(), GDAClassifier, object())] == [
        True, False, False,
    ]
    assert [Device().is_satisfied_by(v) for v in ("cuda:1", 0, None)] == [True, False, False]


def test_an_undeclared_parameter_is_a_programming_error():
    with pytest.raises(TypeError, match="declares no constraint for parameter 'k'"):
        validate_parameters("Thing", {}, {"k": 1})


def test_an_unknown_device_name_raises_before_the_data_is_read():
    with pytest.raises(InvalidParameterError, match="device 'gpu0' is not a torch device") as info:
        GDAClassifier(device="gpu0").fit(_Untouchable(), _Untouchable())
    assert info.value.param == "device"
