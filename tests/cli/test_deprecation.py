"""Old spellings of options keep working for one release, with one line on stderr."""

import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from clipcache.cli.deprecation import Command, deprecated_alias
from clipcache.cli.main import cli

MESSAGE = "clipcache: {old} is deprecated and will be removed in the next release; use {new}\n"


@click.command("toy", cls=Command)
@click.option("--feature-set", "feature_set")
@deprecated_alias("--features", "feature_set")
@click.option("--exclusive/--no-exclusive", default=True)
@deprecated_alias("--shared", "exclusive", value=False, instead="--no-exclusive")
def toy(feature_set, exclusive):
    click.echo(f"{feature_set} {exclusive}")


@pytest.mark.parametrize("args, stdout, stderr", [
    ([], "None True\n", ""),
    (["--feature-set", "clip"], "clip True\n", ""),
    (["--features", "clip"], "clip True\n", MESSAGE.format(old="--features", new="--feature-set")),
    (["--no-exclusive"], "None False\n", ""),
    (["--shared"], "None False\n", MESSAGE.format(old="--shared", new="--no-exclusive")),
    (["--features=aux", "--shared"], "aux False\n",
     MESSAGE.format(old="--features", new="--feature-set") + MESSAGE.format(old="--shared", new="--no-exclusive")),
])
def test_an_alias_sets_the_new_parameter_and_says_so_on_stderr(args, stdout, stderr):
    result = CliRunner().invoke(toy, args)
    assert (result.exit_code, result.stdout, result.stderr) == (0, stdout, stderr)


@pytest.mark.parametrize("args, message", [
    (["--features", "a", "--feature-set", "b"], "--features is the old spelling of --feature-set; give only --feature-set"),
    (["--shared", "--exclusive"], "--shared is the old spelling of --no-exclusive; give only --no-exclusive"),
])
def test_both_spellings_at_once_are_a_usage_error(args, message):
    result = CliRunner().invoke(toy, args)
    assert result.exit_code == 2 and result.output.splitlines()[-1] == f"Error: {message}"


def test_aliases_are_hidden_from_help():
    out = CliRunner().invoke(toy, ["--help"]).output
    assert "--feature-set" in out and "--no-exclusive" in out
    assert "--features" not in out and "--shared" not in out


@pytest.fixture
def merge_calls(monkeypatch):
    """Replace the library merge by a recorder: [(inputs, output, layout, overwrite)]."""
    from clipcache.extract import merge

    calls = []

    def fake(inputs, output, *, layout="copy", overwrite=False):
        calls.append(([Path(p).name for p in inputs], Path(output).name, layout, overwrite))
        return merge.MergeReport(path=str(output), rows={"train": 3}, shards=len(inputs), layout=layout)

    monkeypatch.setattr(merge, "merge_stores", fake)
    return calls


@pytest.fixture
def shards(tmp_path):
    for name in ("s0.h5", "s1.h5"):
        (tmp_path / name).write_bytes(b"")
    return tmp_path


def test_merge_takes_inputs_and_output_with_o(merge_calls, shards):
    result = CliRunner().invoke(cli, ["merge", str(shards / "s0.h5"), str(shards / "s1.h5"), "-o", str(shards / "m.h5")])
    assert result.exit_code == 0, result.output
    assert merge_calls == [(["s0.h5", "s1.h5"], "m.h5", "copy", False)]
    assert (result.stdout, result.stderr) == (f"Merged 2 shards into {shards / 'm.h5'} (copy): train 3 rows\n", "")


def test_merge_old_positional_output_still_works(merge_calls, shards):
    args = [str(shards / "m.h5"), str(shards / "s0.h5"), str(shards / "s1.h5"), "--layout", "virtual"]
    result = CliRunner().invoke(cli, ["merge", *args])
    assert result.exit_code == 0, result.output
    assert merge_calls == [(["s0.h5", "s1.h5"], "m.h5", "virtual", False)]
    assert result.stderr == MESSAGE.format(old="merge OUTPUT INPUTS...", new="merge INPUTS... -o OUTPUT")


@pytest.mark.parametrize("args, message", [
    (["s0.h5"], "Error: give the merged store with -o OUTPUT"),
    (["s0.h5", "s1.h5", "-o", "s1.h5"], "Error: {dir}/s1.h5 already exists; pass --overwrite to replace it"),
    (["s0.h5", "nope.h5", "-o", "m.h5"], "Error: Invalid value for 'INPUTS...': File '{dir}/nope.h5' does not exist."),
])
def test_merge_refuses_bad_arguments_before_merging(merge_calls, shards, args, message):
    paths = [a if a.startswith("-") else str(shards / a) for a in args]
    result = CliRunner().invoke(cli, ["merge", *paths])
    assert result.exit_code == 2 and result.output.splitlines()[-1] == message.format(dir=shards)
    assert merge_calls == []


def test_the_command_line_imports_no_heavy_library():
    """``clipcache --help`` reads the method list from clipcache.evaluation without importing scikit-learn."""
    code = ("import sys, clipcache.cli.main; "
            "print(sorted(m for m in ('sklearn', 'faiss', 'torch', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out == "[]\n"
