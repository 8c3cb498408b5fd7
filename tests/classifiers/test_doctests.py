"""The ``Examples`` sections of clipcache.classifiers run, and print what they say."""

import doctest
import importlib
import pkgutil

import pytest

import clipcache.classifiers

MODULES = ["clipcache.classifiers"] + sorted(
    m.name for m in pkgutil.iter_modules(clipcache.classifiers.__path__, "clipcache.classifiers.")
)

# Every public estimator and the model-file functions carry an Examples section.
DOCUMENTED = {
    "clipcache.classifiers.zeroshot": ["ZeroShotClassifier"],
    "clipcache.classifiers.prototypes": ["ClassMeanClassifier"],
    "clipcache.classifiers.gda": ["GDAClassifier"],
    "clipcache.classifiers.ensemble": ["LogitEnsemble"],
    "clipcache.classifiers.tip": ["TipAdapter"],
    "clipcache.classifiers.fusion": ["LogitBiasFusion"],
    "clipcache.classifiers.knn": ["KNNClassifier"],
    "clipcache.classifiers.transductive": ["TransductiveGDA"],
    "clipcache.classifiers.selection": ["SelectByValidation"],
    "clipcache.classifiers.io": ["save_model", "load_model"],
}


def _run(module_name: str) -> tuple[dict[str, int], list[str], int]:
    """Examples per object, the failure reports, and the number of failed examples."""
    module = importlib.import_module(module_name)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    out: list[str] = []
    examples = {}
    for test in doctest.DocTestFinder(exclude_empty=True).find(module, module_name):
        if test.examples:
            runner.run(test, out=out.append)
            examples[test.name.removeprefix(module_name + ".")] = len(test.examples)
    return examples, out, runner.failures


def test_every_estimator_module_is_collected():
    assert set(DOCUMENTED) <= set(MODULES)


@pytest.mark.parametrize("module_name", MODULES)
def test_examples_pass(module_name):
    examples, out, failures = _run(module_name)
    assert failures == 0, "".join(out)
    documented = DOCUMENTED.get(module_name, [])
    assert {name: examples.get(name, 0) > 0 for name in documented} == dict.fromkeys(documented, True)
