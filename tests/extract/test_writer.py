"""The store writer thread: order, a bounded queue, errors raised in the submitting thread, and a clean stop."""

from __future__ import annotations

import threading

import pytest

from clipcache.errors import InvalidParameterError, StoreWriteError
from clipcache.extract.writer import StoreWriter, writing

WAIT = 10  # seconds; only reached when the writer is broken


def _held_call():
    """A call that, once started, waits for ``release`` and then appends "first" to ``done``."""
    started, release, done = threading.Event(), threading.Event(), []

    def first():
        started.set()
        release.wait(WAIT)
        done.append("first")

    return first, started, release, done


def _blocked_writer(depth: int):
    """A writer whose thread is held inside its first call until the returned event is set, with ``depth`` calls queued."""
    first, started, release, done = _held_call()
    writer = StoreWriter(depth).start()
    writer.submit(first)
    assert started.wait(WAIT)
    for i in range(depth):
        writer.submit(done.append, i)  # the queue has room for these
    return writer, release, done


def _submit_in_thread(writer, call, *args) -> threading.Thread:
    """Submit from another thread (which may wait); what ``submit`` raises is kept in ``thread.raised``."""

    def submit():
        try:
            writer.submit(call, *args)
        except BaseException as exc:
            thread.raised.append(exc)

    thread = threading.Thread(target=submit, daemon=True)
    thread.raised = []
    thread.start()
    return thread


def test_calls_run_in_submission_order_on_one_thread():
    done, threads = [], set()

    def record(i):
        threads.add(threading.current_thread().name)
        done.append(i)

    with writing(depth=3) as writer:
        for i in range(200):
            writer.submit(record, i)
    assert done == list(range(200))
    assert threads == {"clipcache-writer"}
    assert not writer.alive


def test_submit_waits_while_the_queue_is_full():
    writer, release, done = _blocked_writer(depth=2)
    waiting = _submit_in_thread(writer, done.append, "late")
    waiting.join(0.3)
    assert waiting.is_alive()  # a third queued call does not fit
    assert done == []
    release.set()
    waiting.join(WAIT)
    assert not waiting.is_alive() and waiting.raised == []
    writer.close()
    assert done == ["first", 0, 1, "late"]


def test_a_failed_call_is_raised_in_the_submitting_thread_and_nothing_after_it_runs():
    error = StoreWriteError("s.h5: cannot append 4 rows to split 'train' (No space left on device)")
    done = []

    def fail():
        raise error

    writer = StoreWriter(depth=4).start()
    writer.submit(done.append, 0)
    writer.submit(fail)
    writer.submit(done.append, 1)  # queued after the failure: dropped
    with pytest.raises(StoreWriteError) as waited:
        writer.wait()
    assert waited.value is error
    with pytest.raises(StoreWriteError) as submitted:
        writer.submit(done.append, 2)
    assert submitted.value is error
    with pytest.raises(StoreWriteError) as closed:
        writer.close()
    assert closed.value is error
    assert done == [0]
    assert not writer.alive


def test_a_full_queue_behind_a_failed_call_does_not_hang_the_submitter():
    first, started, release, done = _held_call()

    def fail():
        raise RuntimeError("boom")

    writer = StoreWriter(depth=1).start()
    writer.submit(first)
    assert started.wait(WAIT)
    writer.submit(fail)  # fills the queue
    waiting = _submit_in_thread(writer, done.append, "late")
    release.set()
    waiting.join(WAIT)
    assert not waiting.is_alive()  # it got its place, or the failure, and returned
    assert [str(e) for e in waiting.raised] in ([], ["boom"])
    with pytest.raises(RuntimeError, match="boom"):
        writer.close()
    assert done == ["first"]


def test_the_block_s_exception_waits_for_the_queued_calls():
    writer_box, done = [], []
    with pytest.raises(ValueError, match="in the loop"), writing(depth=4) as writer:
        writer_box.append(writer)
        for i in range(4):
            writer.submit(done.append, i)
        raise ValueError("in the loop")
    assert done == [0, 1, 2, 3]  # what was handed over before the failure is written, as a serial loop would
    assert not writer_box[0].alive


def test_an_earlier_write_error_wins_over_the_block_s_exception():
    error = StoreWriteError("s.h5: disk full")

    def fail():
        raise error

    with pytest.raises(StoreWriteError) as info, writing() as writer:
        writer.submit(fail)
        raise ValueError("a later batch")
    assert info.value is error


def test_keyboard_interrupt_finishes_the_call_in_progress_and_drops_the_queue():
    writer, release, done = _blocked_writer(depth=3)
    timer = threading.Timer(0.2, release.set)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            try:
                raise KeyboardInterrupt
            except BaseException:
                writer.close(drop=True)
                raise
    finally:
        timer.cancel()
    assert done == ["first"]  # the call in progress ended; the three queued ones were dropped
    assert not writer.alive


def test_writing_drops_the_queue_on_keyboard_interrupt():
    first, started, release, done = _held_call()
    timer = threading.Timer(0.2, release.set)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt), writing(depth=2) as writer:
            writer.submit(first)
            started.wait(WAIT)
            writer.submit(done.append, 0)
            raise KeyboardInterrupt
    finally:
        timer.cancel()
    assert done == ["first"]
    assert not writer.alive


def test_keyboard_interrupt_raised_by_a_call_reaches_the_submitter():
    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), writing() as writer:
        writer.submit(interrupted)
    assert not writer.alive


def test_submit_outside_start_and_close_is_refused():
    writer = StoreWriter()
    with pytest.raises(RuntimeError, match="not running"):
        writer.submit(print)
    writer.start().close()
    with pytest.raises(RuntimeError, match="not running"):
        writer.submit(print)


def test_depth_must_be_positive():
    with pytest.raises(InvalidParameterError, match="^depth 0 must be at least 1$") as info:
        StoreWriter(0)
    assert info.value.param == "depth"
