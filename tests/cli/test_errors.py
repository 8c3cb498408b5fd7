"""Library errors name API parameters; the command line adds the matching flag."""

import click
from click.testing import CliRunner

from clipcache.cli.main import cli
from clipcache.errors import ClipCacheError


def _run_with_error(error: ClipCacheError) -> str:
    group = type(cli)("g")  # the class of the real group, so the same error handling

    @group.command("fail")
    @click.argument("store", required=False)
    @click.option("--feature-set")
    def fail(store, feature_set):
        raise error

    result = CliRunner().invoke(group, ["fail"])
    assert result.exit_code == 1
    return result.output


def test_param_names_the_flag_of_the_invoked_command():
    assert _run_with_error(ClipCacheError("no feature set 'x'", param="feature_set")) == (
        "Error: no feature set 'x' (--feature-set)\n"
    )


def test_param_of_an_argument_names_the_argument():
    assert _run_with_error(ClipCacheError("cannot read it", param="store")) == "Error: cannot read it (STORE)\n"


def test_unknown_or_missing_param_leaves_the_message_alone():
    assert _run_with_error(ClipCacheError("bad", param="nprobe")) == "Error: bad\n"
    assert _run_with_error(ClipCacheError("bad")) == "Error: bad\n"


def test_param_is_kept_on_the_exception():
    assert ClipCacheError("m", param="k").param == "k"
    assert ClipCacheError("m").param is None
