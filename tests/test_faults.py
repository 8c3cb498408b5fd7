"""The fault-injection harness that the reliability tests build on."""

import errno
import signal
import sys
import types

import pytest

from tests.conftest import write_synthetic_store
from tests.faults import Fault, install, run_cli


def test_child_runs_the_command_without_a_fault(tmp_path):
    write_synthetic_store(tmp_path / "s.h5")
    result = run_cli(["info", tmp_path / "s.h5"])
    assert result.returncode == 0, result.stderr
    assert "train: 40 rows" in result.stdout


def test_kill_before_the_named_call(tmp_path):
    write_synthetic_store(tmp_path / "s.h5")
    result = run_cli(["info", tmp_path / "s.h5"], Fault("clipcache.feature_store.store.FeatureStore.describe"))
    assert result.returncode == -signal.SIGKILL
    assert result.stdout == ""


def test_enospc_is_one_line_naming_the_cause(tmp_path):
    write_synthetic_store(tmp_path / "s.h5")
    fault = Fault("clipcache.feature_store.store.FeatureStore.describe", action="enospc")
    result = run_cli(["info", tmp_path / "s.h5"], fault)
    assert result.returncode == 1
    assert result.stderr == "Error: No space left on device\n"


def test_the_nth_call_acts_and_after_lets_the_call_run_first(monkeypatch):
    effects = []
    module = types.ModuleType("fault_target")
    module.write = lambda value: effects.append(value)
    monkeypatch.setitem(sys.modules, "fault_target", module)
    install(Fault("fault_target.write", call=2, when="after", action="enospc"))
    module.write("a")
    with pytest.raises(OSError) as exc:
        module.write("b")
    assert exc.value.errno == errno.ENOSPC
    assert effects == ["a", "b"]
    module.write("c")  # only the second call fails
    assert effects == ["a", "b", "c"]
