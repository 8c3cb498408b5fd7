"""The extract, text, merge and demo-data commands."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from click.testing import CliRunner

from clipcache import FeatureStore
from clipcache.cli.main import cli


@pytest.fixture
def runner():
    return CliRunner()


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*.png")):
        h.update(path.relative_to(folder).as_posix().encode() + path.read_bytes())
    return h.hexdigest()


def test_demo_data_is_deterministic(runner, tmp_path):
    for name in ("a", "b"):
        result = runner.invoke(cli, ["demo-data", str(tmp_path / name), "--train-per-class", "2", "--test-per-class", "1"])
        assert result.exit_code == 0, result.output
    assert "Wrote 12 images of 4 classes" in result.output
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")


def test_demo_data_refuses_a_filled_folder_unless_overwritten(runner, tmp_path):
    args = ["demo-data", str(tmp_path / "d"), "--train-per-class", "2", "--test-per-class", "1"]
    assert runner.invoke(cli, args).exit_code == 0
    first = _digest(tmp_path / "d")
    (tmp_path / "d" / "train" / "circle" / "stale.png").write_bytes(b"x")
    again = runner.invoke(cli, args)
    assert again.exit_code == 1 and "already holds a train or test folder" in again.output
    assert runner.invoke(cli, [*args, "--overwrite"]).exit_code == 0
    assert _digest(tmp_path / "d") == first  # the stale file is gone, the rest redrawn identically


def test_extract_with_templates_and_info(runner, image_folder, tmp_path):
    store = tmp_path / "s.h5"
    args = ["extract", str(image_folder), str(store), "--model", "clipcache-tiny-vit", "--pretrained", "none",
            "--templates", "simple", "--workers", "0", "--batch-size", "5"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "train 12, test 6 rows of clip" in result.output
    with FeatureStore(store) as fs:
        assert fs.text_names == ["simple"] and fs.n_rows("train") == 12


@pytest.mark.parametrize(("flags", "graphs"), [([], True), (["--no-cuda-graphs"], False), (["--cuda-graphs"], True)])
def test_cuda_graphs_are_on_unless_turned_off(runner, image_folder, tmp_path, monkeypatch, flags, graphs):
    from clipcache.extract import loop

    seen = []
    real = loop.extract
    monkeypatch.setattr(loop, "extract", lambda store, config, options, **kw: seen.append(options) or real(
        store, config, options, **kw))
    args = ["extract", str(image_folder), str(tmp_path / "s.h5"), "--model", "clipcache-tiny-vit", "--pretrained",
            "none", "--workers", "0", "--batch-size", "6", *flags]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert [options.cuda_graphs for options in seen] == [graphs]


def test_conflicting_flags_are_rejected_before_work(runner, image_folder, tmp_path):
    store = tmp_path / "s.h5"
    result = runner.invoke(cli, ["extract", str(image_folder), str(store), "--aux", "efficientnet-lite0", "--resume", "--overwrite"])
    assert result.exit_code == 2 and "contradict" in result.output
    assert not store.exists()


def test_model_without_pretrained_is_rejected(runner, image_folder, tmp_path):
    result = runner.invoke(cli, ["extract", str(image_folder), str(tmp_path / "s.h5"), "--model", "ViT-B-32"])
    assert result.exit_code == 2 and "--pretrained" in result.output


def test_library_error_is_one_line(runner, image_folder, tmp_path):
    result = runner.invoke(cli, ["extract", str(image_folder), str(tmp_path / "s.h5"), "--aux", "resnet"])
    assert result.exit_code == 1
    assert result.output.strip().startswith("Error:") and len(result.output.strip().splitlines()) == 1


def test_skipped_images_are_reported(runner, image_folder, tmp_path):
    (image_folder / "test" / "square" / "001.png").write_bytes(b"broken")
    args = ["extract", str(image_folder), str(tmp_path / "s.h5"), "--model", "clipcache-tiny-vit", "--pretrained", "none",
            "--split", "test", "--workers", "0"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "Skipped 1 unreadable images" in result.output and "[test] test/square/001.png" in result.output


def test_shard_and_merge_commands(runner, image_folder, tmp_path):
    base = ["extract", str(image_folder), "--model", "clipcache-tiny-vit", "--pretrained", "none", "--workers", "0",
            "--batch-size", "4"]
    for i in range(2):
        result = runner.invoke(cli, base[:2] + [str(tmp_path / f"s{i}.h5")] + base[2:] + ["--shard", f"{i}/2"])
        assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["merge", str(tmp_path / "s0.h5"), str(tmp_path / "s1.h5"), "-o", str(tmp_path / "m.h5")])
    assert result.exit_code == 0, result.output
    assert "Merged 2 shards" in result.output and "train 12" in result.output


def test_bad_shard_value(runner, image_folder, tmp_path):
    result = runner.invoke(cli, ["extract", str(image_folder), str(tmp_path / "s.h5"), "--aux", "efficientnet-lite0", "--shard", "2/2"])
    assert result.exit_code == 1 and "0 <= i < n" in result.output


def test_text_command(runner, image_folder, tmp_path):
    store = tmp_path / "s.h5"
    runner.invoke(cli, ["extract", str(image_folder), str(store), "--model", "clipcache-tiny-vit", "--pretrained", "none",
                        "--split", "test", "--workers", "0"])
    result = runner.invoke(cli, ["text", str(store), "--templates", "imagenet80"])
    assert result.exit_code == 0, result.output
    assert "160 prompts for 2 classes" in result.output


def test_torchrun_rank_writes_its_own_shard(runner, image_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    args = ["extract", str(image_folder), str(tmp_path / "feats.h5"), "--model", "clipcache-tiny-vit", "--pretrained", "none",
            "--workers", "0", "--batch-size", "4", "--device", "cpu"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    with FeatureStore(tmp_path / "feats.shard-01-of-02.h5") as fs:
        assert fs.metadata["shard"]["index"] == 1 and fs.n_rows("train") == 8  # batches 1-2 of 3
    assert not (tmp_path / "feats.h5").exists()


def test_resume_of_finished_run_with_templates_succeeds(runner, image_folder, tmp_path):
    args = ["extract", str(image_folder), str(tmp_path / "s.h5"), "--model", "clipcache-tiny-vit", "--pretrained", "none",
            "--split", "test", "--templates", "simple", "--workers", "0"]
    assert runner.invoke(cli, args).exit_code == 0
    result = runner.invoke(cli, args + ["--resume"])
    assert result.exit_code == 0, result.output
    assert "0 images encoded" in result.output


@pytest.mark.parametrize(
    ("waited", "device", "decode", "hint"),
    [
        (0.6, "cpu", "auto", "more --workers (now 3) may"),
        (0.6, "cuda", "cpu", "more --workers (now 3) or --decode gpu may"),
        (0.6, "cuda", "gpu", "more --workers (now 3) may"),
        (0.4, "cpu", "auto", None),
    ],
)
def test_report_suggests_more_workers_when_the_encoding_waited_for_them(capsys, waited, device, decode, hint):
    from clipcache.cli.extract import _print_report
    from clipcache.extract.loop import ExtractReport, RunOptions

    report = ExtractReport(path="s.h5", encoded=100, seconds=10.0, rows={"test": 100}, feature_sets=["clip"])
    report.waits["workers"] = waited * 10.0
    _print_report(report, RunOptions(workers=3, device=device, decode=decode))
    out, err = capsys.readouterr()
    assert "100 images encoded in 10.0 s" in out
    if hint is None:
        assert "Hint" not in err
    else:
        assert f"waited {waited:.0%} of its time for images to be decoded" in err and hint in err


def test_waits_add_up_to_less_than_the_encoding_time(image_folder, tmp_path):
    from clipcache.extract.loop import WAIT_STAGES, ExtractConfig, RunOptions, extract

    config = ExtractConfig(source=str(image_folder), model="clipcache-tiny-vit", pretrained="none", batch_size=4)
    report = extract(tmp_path / "s.h5", config, RunOptions(progress=False, workers=1))
    assert set(report.waits) == set(WAIT_STAGES)
    assert report.waits["workers"] > 0 and report.waits["decode"] == 0.0  # the cpu path has no decode thread
    assert sum(report.waits.values()) < report.seconds
