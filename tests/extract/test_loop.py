"""The extraction loop: stored values, skipped images, resume after SIGKILL, shards and merge."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from clipcache import FeatureStore
from clipcache.errors import DatasetError, StoreError, StoreMismatchError
from clipcache.extract.images import load_image
from clipcache.extract.loop import ExtractConfig, RunOptions, extract
from clipcache.extract.merge import merge_stores
from clipcache.extract.plan import shard_range
from clipcache.extract.transforms import augmented_view, view_params
from clipcache.extract.writer import DEFAULT_DEPTH, StoreWriter
from tests.extract.helpers import interrupt_append, snapshot

QUIET = RunOptions(progress=False)


def _config(folder, **kw) -> ExtractConfig:
    base = dict(source=str(folder), model="clipcache-tiny-vit", pretrained="none", aux=("efficientnet-lite0",),
                image_size=64, batch_size=4)
    base.update(kw)
    return ExtractConfig(**base)


def _corrupt(folder) -> None:
    (folder / "train" / "circle" / "002.png").write_bytes(b"not an image at all")
    data = (folder / "train" / "square" / "004.png").read_bytes()
    (folder / "train" / "square" / "004.png").write_bytes(data[: len(data) // 3])


def test_stored_features_equal_direct_model_call(image_folder, tmp_path):
    store = tmp_path / "s.h5"
    extract(store, _config(image_folder, splits=("test",), image_size=None), QUIET)
    from clipcache.extract.backbones import build_open_clip, build_timm

    with FeatureStore(store) as fs:
        paths = list(fs.paths("test"))
        stored = {name: fs.features("test", name) for name in ("clip", "efficientnet-lite0")}
    images = [load_image(image_folder / p) for p in paths]
    clip, lite0 = build_open_clip("clipcache-tiny-vit", "none"), build_timm("efficientnet-lite0")
    with torch.inference_mode():
        x = torch.stack([clip.image_preprocess()(im) for im in images])
        direct_clip = F.normalize(clip.module.encode_image(x), dim=-1).numpy()
        x = torch.stack([lite0.image_preprocess()(im) for im in images])
        assert x.shape[-1] == 224
        direct_lite0 = F.normalize(lite0.module(x), dim=-1).numpy()
    np.testing.assert_allclose(stored["clip"], direct_clip, atol=1e-5)
    np.testing.assert_allclose(stored["efficientnet-lite0"], direct_lite0, atol=1e-5)


def test_rows_follow_dataset_order_with_labels(image_folder, tmp_path):
    report = extract(tmp_path / "s.h5", _config(image_folder), QUIET)
    snap = snapshot(tmp_path / "s.h5")
    assert report.rows == {"train": 12, "test": 6}
    assert snap["train"]["ids"][:2] == ["train/circle/000.png", "train/circle/001.png"]
    assert snap["train"]["labels"] == [0] * 6 + [1] * 6
    assert snap["train"]["complete"] and snap["test"]["complete"]


def test_provenance_is_recorded(image_folder, tmp_path):
    extract(tmp_path / "s.h5", _config(image_folder, splits=("test",)), QUIET)
    with FeatureStore(tmp_path / "s.h5") as fs:
        clip = fs.feature_sets["clip"].provenance
        lite0 = fs.feature_sets["efficientnet-lite0"].provenance
        config = fs.metadata["extract"]
    assert clip["model"] == "clipcache-tiny-vit" and clip["pretrained"] == "none" and clip["random_init"]
    assert lite0["weights_sha256"].startswith("579344248a93")
    assert lite0["preprocess"]["image_size"] == 64 and lite0["dataset"] == str(image_folder)
    assert {"torch", "timm", "open_clip"} <= set(lite0["library_versions"]) and "created" in lite0
    assert config["batch_size"] == 4 and config["splits"] == ["test"]


def test_corrupt_images_are_recorded_and_skipped(image_folder, tmp_path):
    _corrupt(image_folder)
    report = extract(tmp_path / "s.h5", _config(image_folder, splits=("train",)), QUIET)
    skipped = report.skipped["train"]
    assert [s[0] for s in skipped] == ["train/circle/002.png", "train/square/004.png"]
    assert all(reason for _, _, reason in skipped)
    snap = snapshot(tmp_path / "s.h5")
    assert len(snap["train"]["ids"]) == 10 and "train/circle/002.png" not in snap["train"]["ids"]


def test_strict_makes_a_corrupt_image_fatal(image_folder, tmp_path):
    _corrupt(image_folder)
    with pytest.raises(DatasetError, match="train/circle/002.png"):
        extract(tmp_path / "s.h5", _config(image_folder, splits=("train",)), RunOptions(progress=False, strict=True))


def test_float16_storage(image_folder, tmp_path):
    extract(tmp_path / "s.h5", _config(image_folder, splits=("test",), dtype="float16"), QUIET)
    with FeatureStore(tmp_path / "s.h5") as fs:
        assert fs.feature_sets["clip"].dtype == "float16"
        x = fs.features("test", "clip")
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x, x.astype(np.float16).astype(np.float32))


def test_existing_store_needs_resume_or_overwrite(image_folder, tmp_path):
    extract(tmp_path / "s.h5", _config(image_folder, splits=("test",)), QUIET)
    with pytest.raises(StoreError, match="already exists; set resume to continue it"):
        extract(tmp_path / "s.h5", _config(image_folder, splits=("test",)), QUIET)


def test_resume_with_other_flags_is_refused(image_folder, tmp_path):
    extract(tmp_path / "s.h5", _config(image_folder, splits=("test",)), QUIET)
    with pytest.raises(StoreMismatchError, match="batch_size"):
        extract(tmp_path / "s.h5", _config(image_folder, splits=("test",), batch_size=2), QUIET, resume=True)


_KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, torch, h5py
    torch.set_num_threads({threads})
    from clipcache.feature_store import FeatureStore
    from clipcache.extract.loop import ExtractConfig, RunOptions, extract
    real_append, real_flush, calls, dying = FeatureStore.append, h5py.File.flush, [0], [False]
    def append(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == {kill_at}:
            if {mid_write}:
                dying[0] = True  # die at the first flush: rows written, not yet committed
            else:
                os.kill(os.getpid(), signal.SIGKILL)
        return real_append(self, *args, **kwargs)
    def flush(self):
        if dying[0]:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_flush(self)
    FeatureStore.append, h5py.File.flush = append, flush
    extract({path!r}, ExtractConfig(**{config!r}), RunOptions(progress=False))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("mid_write", [False, True], ids=["between-batches", "mid-append"])
def test_sigkilled_run_resumes_to_identical_store(image_folder, tmp_path, mid_write):
    _corrupt(image_folder)
    config = _config(image_folder)
    extract(tmp_path / "full.h5", config, QUIET)
    killed = tmp_path / "killed.h5"
    kwargs = {k: getattr(config, k) for k in ("source", "model", "pretrained", "aux", "image_size", "batch_size")}
    script = _KILL_SCRIPT.format(threads=torch.get_num_threads(), kill_at=3, mid_write=mid_write, path=str(killed), config=kwargs)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    with FeatureStore(killed, "a") as fs:
        assert fs.n_rows("train") == 7  # two committed batches of 4, less one skipped image
        assert [s[0] for s in fs.skipped("train")] == ["train/circle/002.png", "train/square/004.png"]
    extract(killed, config, QUIET, resume=True)
    assert snapshot(killed) == snapshot(tmp_path / "full.h5")


#: _KILL_SCRIPT, with its killing append held until the loop has queued ``depth`` later batches to the writer.
_KILL_QUEUED_SCRIPT = _KILL_SCRIPT.replace(
    "\nextract(",
    textwrap.dedent(
        """
        import sys, threading
        from clipcache.extract.writer import StoreWriter
        real_submit, killing_append, submitted, changed = StoreWriter.submit, FeatureStore.append, [0], threading.Condition()
        def submit(self, *args, **kwargs):
            real_submit(self, *args, **kwargs)
            with changed:
                submitted[0] += 1
                changed.notify_all()
        def held_append(self, *args, **kwargs):  # the writer thread
            if calls[0] + 1 == {kill_at}:
                with changed:
                    if not changed.wait_for(lambda: submitted[0] >= {kill_at} + {depth}, timeout=60):
                        sys.exit(3)  # the queue never filled
            return killing_append(self, *args, **kwargs)
        StoreWriter.submit, FeatureStore.append = submit, held_append
        extract(""",
    ),
)


@pytest.mark.slow
@pytest.mark.parametrize("mid_write", [False, True], ids=["before-the-write", "mid-write"])
def test_sigkill_with_writes_queued_resumes_to_identical_store(image_folder, tmp_path, mid_write):
    """Killed while the writer holds batch 3 of train and batches 4 and 5 wait in its queue: the store reads as of batch 2."""
    _corrupt(image_folder)
    config = _config(image_folder, batch_size=2)  # train: 6 batches
    extract(tmp_path / "full.h5", config, QUIET)
    killed = tmp_path / "killed.h5"
    kwargs = {k: getattr(config, k) for k in ("source", "model", "pretrained", "aux", "image_size", "batch_size")}
    script = _KILL_QUEUED_SCRIPT.format(
        threads=torch.get_num_threads(), kill_at=3, depth=DEFAULT_DEPTH, mid_write=mid_write, path=str(killed), config=kwargs
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    with FeatureStore(killed, "a") as fs:
        assert fs.n_rows("train") == 3  # two committed batches of 2, less one skipped image
        assert [s[0] for s in fs.skipped("train")] == ["train/circle/002.png"]
        assert not fs.is_complete("train") and fs.n_rows("test") == 0
    extract(killed, config, QUIET, resume=True)
    assert snapshot(killed) == snapshot(tmp_path / "full.h5")


def test_resume_of_complete_store_encodes_nothing(image_folder, tmp_path):
    extract(tmp_path / "s.h5", _config(image_folder, splits=("test",)), QUIET)
    report = extract(tmp_path / "s.h5", _config(image_folder, splits=("test",)), QUIET, resume=True)
    assert report.encoded == 0 and report.rows == {"test": 6}


@pytest.mark.parametrize("layout", ["copy", "virtual"])
def test_shards_merged_equal_single_run(image_folder, tmp_path, layout):
    _corrupt(image_folder)
    extract(tmp_path / "full.h5", _config(image_folder), QUIET)
    shards = []
    for i in range(3):
        shards.append(tmp_path / f"shard{i}.h5")
        extract(shards[-1], _config(image_folder, shard=(i, 3)), QUIET)
    merged = tmp_path / "merged.h5"
    report = merge_stores(shards[::-1], merged, layout=layout)
    assert report.rows == {"train": 10, "test": 6}
    assert snapshot(merged) == snapshot(tmp_path / "full.h5")


def test_merge_refuses_missing_shard(image_folder, tmp_path):
    for i in range(2):
        extract(tmp_path / f"shard{i}.h5", _config(image_folder, splits=("test",), shard=(i, 3)), QUIET)
    with pytest.raises(StoreMismatchError, match="shard 2/3 is missing"):
        merge_stores([tmp_path / "shard0.h5", tmp_path / "shard1.h5"], tmp_path / "m.h5")


def test_augmented_views_are_stored_with_view_index(image_folder, tmp_path):
    extract(tmp_path / "s.h5", _config(image_folder, splits=("test",), augment_views=3, seed=5), QUIET)
    snap = snapshot(tmp_path / "s.h5")["test"]
    assert snap["views"] == [0, 1, 2] * 6
    assert snap["ids"][:3] == ["test/circle/000.png"] * 3
    with FeatureStore(tmp_path / "s.h5") as fs:
        x = fs.features("test", "clip")
    assert not np.allclose(x[0], x[1])


def test_augmented_view_matches_seeded_recipe(image_folder, tmp_path):
    from clipcache.extract.backbones import build_open_clip

    extract(tmp_path / "s.h5", _config(image_folder, splits=("test",), aux=(), augment_views=2, seed=5), QUIET)
    with FeatureStore(tmp_path / "s.h5") as fs:
        stored = fs.features("test", "clip", rows=[3])
    image = load_image(image_folder / "test/circle/001.png")
    # dataset sample 1 of split test, view 1
    params = view_params(image.width, image.height, np.random.default_rng([5, 1, 1]))
    clip = build_open_clip("clipcache-tiny-vit", "none", seed=5)  # --seed also seeds random init
    with torch.inference_mode():
        direct = clip.features(augmented_view(image, params, clip.preprocess)[None]).numpy()
    np.testing.assert_allclose(stored, direct, atol=1e-5)


def test_augmented_views_change_with_seed(image_folder, tmp_path):
    for seed in (1, 2):
        extract(tmp_path / f"s{seed}.h5", _config(image_folder, splits=("test",), aux=(), augment_views=2, seed=seed), QUIET)
    a, b = snapshot(tmp_path / "s1.h5")["test"], snapshot(tmp_path / "s2.h5")["test"]
    assert a["clip"] != b["clip"]


@given(n=st.integers(0, 500), batch=st.integers(1, 64), count=st.integers(1, 9))
def test_shard_ranges_tile_the_items_on_batch_boundaries(n, batch, count):
    ranges = [shard_range(n, batch, i, count) for i in range(count)]
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    for (_, stop), (start, _) in zip(ranges, ranges[1:], strict=False):
        assert stop == start
    assert all(start % batch == 0 or start == n for start, _ in ranges)


def test_workers_do_not_change_results(image_folder, tmp_path):
    extract(tmp_path / "a.h5", _config(image_folder, splits=("test",)), QUIET)
    extract(tmp_path / "b.h5", _config(image_folder, splits=("test",)), RunOptions(progress=False, workers=2))
    assert snapshot(tmp_path / "a.h5") == snapshot(tmp_path / "b.h5")


def test_no_backbone_is_rejected(image_folder, tmp_path):
    from clipcache.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="no backbone was given") as info:
        extract(tmp_path / "s.h5", _config(image_folder, model=None, aux=()), QUIET)
    assert info.value.param == "model"
    assert not os.path.exists(tmp_path / "s.h5")


def test_interrupted_run_with_views_resumes_to_identical_store(image_folder, tmp_path, monkeypatch):
    config = _config(image_folder, splits=("train",), aux=(), augment_views=3, batch_size=5)
    extract(tmp_path / "full.h5", config, QUIET)
    interrupt_append(monkeypatch, at=3)
    with pytest.raises(KeyboardInterrupt):
        extract(tmp_path / "cut.h5", config, QUIET)
    monkeypatch.undo()
    with FeatureStore(tmp_path / "cut.h5") as fs:
        assert fs.n_rows("train") == 10 and fs.views("train")[-1] == 0  # the cut falls between views of one image
    extract(tmp_path / "cut.h5", config, QUIET, resume=True)
    assert snapshot(tmp_path / "cut.h5") == snapshot(tmp_path / "full.h5")


def test_only_the_writer_thread_touches_the_store_while_it_runs(image_folder, tmp_path, monkeypatch):
    """Each split's completion mark is the writer's too: after the split's last rows, before the next split's."""
    _corrupt(image_folder)
    calls, running = [], [False]
    for name, member in vars(FeatureStore).items():
        if name.startswith("__") or not (callable(member) or isinstance(member, property)):
            continue

        def spy(real, name=name):
            def wrapper(*args, **kwargs):
                split = args[1] if len(args) > 1 and isinstance(args[1], str) else None
                calls.append((name, threading.current_thread().name, running[0], split))
                return real(*args, **kwargs)

            return wrapper

        monkeypatch.setattr(FeatureStore, name, property(spy(member.fget)) if isinstance(member, property) else spy(member))
    real_start, real_close = StoreWriter.start, StoreWriter.close

    def start(self):
        running[0] = True
        return real_start(self)

    def close(self, **kwargs):
        try:
            real_close(self, **kwargs)
        finally:
            running[0] = False

    monkeypatch.setattr(StoreWriter, "start", start)
    monkeypatch.setattr(StoreWriter, "close", close)
    extract(tmp_path / "s.h5", _config(image_folder, aux=()), QUIET)
    while_running = [(name, thread, split) for name, thread, now, split in calls if now]
    assert {thread for _, thread, _ in while_running} == {"clipcache-writer"}
    assert {"append", "record_skipped"} <= {name for name, _, _ in while_running}
    commits = [(name, split) for name, _, split in while_running if name in ("append", "mark_complete")]
    # batches of 4: train's 12 images, 2 of them unreadable, are 3 batches; test's 6 are 2
    assert commits == [("append", "train")] * 3 + [("mark_complete", "train")] + [("append", "test")] * 2 + [
        ("mark_complete", "test")]
    assert [name for name, *_ in calls].count("mark_complete") == 2


def test_a_failed_write_stops_the_loop_at_the_next_batch(image_folder, tmp_path, monkeypatch):
    """The loop learns of the writer's failure at its next hand-over and encodes no further batch."""
    encoded = []

    def append(self, split, **kwargs):
        raise StoreError(f"{self.path}: refused on purpose")

    from clipcache.extract import loop

    real_encode = loop._encode

    def encode(*args):
        encoded.append(1)
        return real_encode(*args)

    monkeypatch.setattr(FeatureStore, "append", append)
    monkeypatch.setattr(loop, "_encode", encode)
    with pytest.raises(StoreError, match="refused on purpose"):
        extract(tmp_path / "s.h5", _config(image_folder, splits=("train",), aux=(), batch_size=1), QUIET)
    # of 12 batches: the one written, the queued ones, and the one whose hand-over met the failure
    assert len(encoded) <= 2 + DEFAULT_DEPTH
    monkeypatch.undo()
    with FeatureStore(tmp_path / "s.h5") as fs:
        assert fs.n_rows("train") == 0 and not fs.is_complete("train")


def _replaying_capture(replays: list):
    """A stand-in for ``loop._capture_cuda_graph`` on the CPU: its replay calls the function again on the static
    input and writes the static output in place, as a CUDA graph's replay does; ``replays`` gets each batch size."""

    def capture(function, static_input):
        static_output = function(static_input)

        def replay():
            replays.append(static_input.shape[0])
            static_output.copy_(function(static_input))

        return replay, static_output

    return capture


def test_graphed_features_replay_full_batches_and_encode_the_others_eagerly(tiny_clip):
    from clipcache.extract import loop

    replays = []
    graphed = loop._GraphedFeatures(tiny_clip, 4, capture=_replaying_capture(replays))
    generator = torch.Generator().manual_seed(0)
    x, y = (torch.rand(4, 3, 32, 32, generator=generator) for _ in range(2))
    with torch.inference_mode():
        fx, fy, fz = graphed.features(x), graphed.features(y), graphed.features(x[:3])
        ex, ey, ez = (tiny_clip.features(t) for t in (x, y, x[:3]))
    assert replays == [4, 4]  # the partial batch is encoded by the backbone
    assert graphed.name == "clip"
    # each call's features are its own: the second replay does not change the first one's
    assert torch.equal(fx, ex) and torch.equal(fy, ey) and torch.equal(fz, ez) and not torch.equal(fx, fy)


@pytest.mark.parametrize(
    "options",
    [RunOptions(device="cpu"), RunOptions(device="cuda", cuda_graphs=False), RunOptions(device="cuda", compile=True)],
    ids=["cpu", "cuda, off", "cuda, compiled"],
)
def test_graphs_are_taken_on_cuda_only_when_asked_and_not_compiled(tiny_clip, options):
    """No capture is tried (it would fail here, with no CUDA device) on a CPU, when turned off, or with compile."""
    from clipcache.extract import loop

    assert options.cuda_graphs == (options.device == "cpu" or options.compile)  # on unless turned off
    assert loop._encoders([tiny_clip], 4, options) == [tiny_clip]


def test_a_backbone_whose_capture_fails_is_encoded_eagerly_with_a_warning(tiny_clip, monkeypatch, caplog):
    """Graphs are on by default on a CUDA device: a tower that cannot be captured must not stop the run."""
    import contextlib
    import logging

    from clipcache.extract import loop

    def capture(function, static_input):
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing\nmore detail")

    monkeypatch.setattr(loop, "_capture_cuda_graph", capture)
    monkeypatch.setattr(loop.torch.cuda, "device", lambda device: contextlib.nullcontext())  # no CUDA device here
    with caplog.at_level(logging.WARNING, logger=loop.logger.name):
        assert loop._encoders([tiny_clip], 4, RunOptions(device="cuda")) == [tiny_clip]
    assert caplog.messages == [
        "clip: its image tower could not be captured in a CUDA graph (CUDA error: operation not permitted when stream "
        "is capturing); encoding it eagerly"
    ]


def test_a_run_encoding_through_graphs_stores_what_the_eager_run_stores(image_folder, tmp_path, monkeypatch):
    from clipcache.extract import loop

    extract(tmp_path / "eager.h5", _config(image_folder), QUIET)
    replays = []
    monkeypatch.setattr(loop, "_encoders", lambda backbones, batch_size, options: [
        loop._GraphedFeatures(b, batch_size, capture=_replaying_capture(replays)) for b in backbones])
    extract(tmp_path / "graphed.h5", _config(image_folder), QUIET)
    # batches of 4: train 12 items (3 full batches), test 6 (1 full, 1 of 2); two backbones
    assert replays == [4] * 8
    assert snapshot(tmp_path / "graphed.h5") == snapshot(tmp_path / "eager.h5")


def test_an_interrupted_run_leaves_no_worker_behind(image_folder, tmp_path):
    """The DataLoader's workers stop when a run is interrupted, though the interrupt's traceback keeps the loop's
    frames alive (the garbage collector is off here), and the store can be resumed at once."""
    import gc
    import multiprocessing

    from tests.extract.helpers import interrupted_extract

    options = RunOptions(workers=2, progress=False)
    gc.disable()
    try:
        interrupted_extract(tmp_path / "s.h5", _config(image_folder), options)
        assert multiprocessing.active_children() == []
        extract(tmp_path / "s.h5", _config(image_folder), options, resume=True)
    finally:
        gc.enable()
    extract(tmp_path / "whole.h5", _config(image_folder), options)
    assert snapshot(tmp_path / "s.h5") == snapshot(tmp_path / "whole.h5")


def test_one_set_of_workers_serves_every_split(image_folder, tmp_path, monkeypatch):
    """The workers are started once a run, not once a split, and the store is the one of a run without workers."""
    from clipcache.extract import loop

    started = []

    class CountingLoader(loop.DataLoader):
        def __iter__(self):
            started.append(self.num_workers)
            return super().__iter__()

    monkeypatch.setattr(loop, "DataLoader", CountingLoader)
    extract(tmp_path / "workers.h5", _config(image_folder, aux=()), RunOptions(workers=2, progress=False))
    assert started == [2]
    with FeatureStore(tmp_path / "workers.h5") as fs:
        assert fs.splits == ["test", "train"] and fs.is_complete("train") and fs.is_complete("test")
    extract(tmp_path / "serial.h5", _config(image_folder, aux=()), QUIET)
    assert snapshot(tmp_path / "workers.h5") == snapshot(tmp_path / "serial.h5")


def test_a_run_stopped_before_a_split_s_completion_mark_resumes_to_the_same_store(image_folder, tmp_path, monkeypatch):
    """Every row of train is committed but not its mark; the resume marks it, encodes test, and equals a whole run."""
    real_mark = FeatureStore.mark_complete

    def mark_complete(self, split):
        if split == "train":
            raise KeyboardInterrupt
        return real_mark(self, split)

    config = _config(image_folder, aux=())
    monkeypatch.setattr(FeatureStore, "mark_complete", mark_complete)
    with pytest.raises(KeyboardInterrupt):
        extract(tmp_path / "cut.h5", config, QUIET)
    monkeypatch.undo()
    with FeatureStore(tmp_path / "cut.h5") as fs:
        assert fs.n_rows("train") == 12 and not fs.is_complete("train")
    extract(tmp_path / "cut.h5", config, QUIET, resume=True)
    extract(tmp_path / "whole.h5", config, QUIET)
    assert snapshot(tmp_path / "cut.h5") == snapshot(tmp_path / "whole.h5")


def test_the_splits_dataset_maps_its_indices_to_each_split_s_items():
    from clipcache.extract.loop import _SplitsDataset

    splits = _SplitsDataset([["a0", "a1", "a2"], [], ["c0"], ["d0", "d1"]])
    assert len(splits) == 6 and splits.offsets == [0, 3, 3, 4, 6]
    assert [splits[i] for i in range(6)] == ["a0", "a1", "a2", "c0", "d0", "d1"]
