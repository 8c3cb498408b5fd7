"""The light option helpers of clipcache.evaluation.options."""

def test_format_hyperparameters_keeps_names_and_formats_numbers():
    from clipcache.evaluation.options import format_hyperparameters

    assert format_hyperparameters({"alpha": 2.5, "k": 3, "method": "gda", "flag": True}) == "alpha=2.5, k=3, method=gda, flag=True"
    assert format_hyperparameters({"beta": 1e-7}, " = ") == "beta = 1e-07"
    assert format_hyperparameters({}) == "none"
