"""One writer thread for the store, behind a bounded queue, so that encoding never waits on HDF5.

The extraction loop hands each batch's store calls to a :class:`StoreWriter`
and goes on encoding the next batch. The writer runs them on its own thread,
one at a time and in the order they were handed over, so the store sees exactly
the calls a serial loop would make: commits stay in order, and a kill at any
instant leaves the store as of its last committed batch.

Only the writer thread touches the store while it runs (h5py must not be used
from two threads at once); the loop makes its other store calls before
:meth:`StoreWriter.start` or after the writer is closed.

- The queue is bounded (``depth`` calls): a loop that encodes faster than the
  disk writes waits in :meth:`StoreWriter.submit`; at most ``depth`` encoded
  batches wait, besides the one being written.
- A failed call (a full disk, say) stops the writer: nothing handed over after
  it is run, and its exception is raised again, the same object, in the
  thread that submits or closes next.
- :func:`writing` closes the writer on the way out of its block: normally and
  on an ordinary exception, the queued calls run first; on KeyboardInterrupt
  (and other non-``Exception`` exits), the call in progress finishes and the
  queued ones are dropped. Either way the thread is stopped before the block
  is left, so the store can be closed safely.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from typing import TYPE_CHECKING

from clipcache.errors import InvalidParameterError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

__all__ = ["DEFAULT_DEPTH", "StoreWriter", "writing"]

logger = logging.getLogger(__name__)

#: Calls the queue holds besides the one being run; the extraction loop queues one call per batch.
DEFAULT_DEPTH = 2

_STOP = object()


class StoreWriter:
    """Run store calls in order on one thread, behind a queue of at most ``depth`` calls.

    Parameters
    ----------
    depth : int
        Calls that may wait in the queue; :meth:`submit` blocks while it is full.
    name : str
        The thread's name.

    Examples
    --------
    >>> writer = StoreWriter(depth=2).start()
    >>> done = []
    >>> for i in range(3):
    ...     writer.submit(done.append, i)
    >>> writer.close()
    >>> done
    [0, 1, 2]
    """

    def __init__(self, depth: int = DEFAULT_DEPTH, *, name: str = "clipcache-writer"):
        if depth < 1:
            raise InvalidParameterError(f"depth {depth} must be at least 1", param="depth")
        self.depth = depth
        self._queue: queue.Queue = queue.Queue()  # unbounded: the slots bound it, and the stop mark never waits
        self._slots = threading.Semaphore(depth)  # free places in the queue
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._error: BaseException | None = None
        self._drop = threading.Event()  # drop queued calls instead of running them
        self._closed = False

    def start(self) -> StoreWriter:
        """Start the thread; return ``self``."""
        self._thread.start()
        return self

    @property
    def error(self) -> BaseException | None:
        """The exception of the call that failed, or None."""
        return self._error

    @property
    def alive(self) -> bool:
        """Whether the thread is running."""
        return self._thread.is_alive()

    def submit(self, call: Callable[..., object], *args, **kwargs) -> None:
        """Queue ``call(*args, **kwargs)`` to run after every call submitted before it.

        Blocks while ``depth`` calls wait in the queue. The arguments are used by
        the writer thread later: arrays passed must not be modified afterwards.

        Raises
        ------
        BaseException
            The exception of an earlier call, once the writer has failed.
        RuntimeError
            The writer is closed, or was never started.
        """
        if self._closed or self._thread.ident is None:
            raise RuntimeError("the store writer is not running; submit between start and close")
        self._raise_error()
        self._slots.acquire()
        if self._error is not None:
            self._slots.release()
            self._raise_error()
        self._queue.put((call, args, kwargs))

    def wait(self) -> None:
        """Block until every call submitted so far has run (or been dropped); raise the writer's error if any."""
        self._queue.join()
        self._raise_error()

    def close(self, *, drop: bool = False) -> None:
        """Stop the thread once the queued calls have run (``drop=False``) or been dropped; wait for it.

        With ``drop=True`` only the call in progress finishes. A KeyboardInterrupt
        that arrives meanwhile makes the rest be dropped, and is raised once the
        thread has stopped, so that no store call is left running.

        Raises
        ------
        BaseException
            The exception of the call that failed, if one did (not with ``drop=True``).
        """
        if self._closed:
            return
        self._closed = True
        if drop:
            self._drop.set()
        if self._thread.ident is None:  # never started
            return
        interrupted = stop_queued = False
        while not stop_queued or self._thread.is_alive():
            try:
                if not stop_queued:
                    self._queue.put(_STOP)  # unbounded: never waits; a second mark, after an interrupt, is harmless
                    stop_queued = True
                self._thread.join()
            except KeyboardInterrupt:  # the store call in progress cannot be cut short: stop right after it
                self._drop.set()
                interrupted = True
        if interrupted:
            raise KeyboardInterrupt
        if not drop:
            self._raise_error()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while True:
            task = self._queue.get()
            try:
                if task is _STOP:
                    return
                self._slots.release()
                if self._error is None and not self._drop.is_set():
                    call, args, kwargs = task
                    try:
                        call(*args, **kwargs)
                    except BaseException as exc:  # re-raised in the submitting thread, KeyboardInterrupt included
                        logger.debug("store writer: %r failed (%r); what is queued after it is dropped", call, exc)
                        self._error = exc
            finally:
                self._queue.task_done()


@contextlib.contextmanager
def writing(depth: int = DEFAULT_DEPTH) -> Iterator[StoreWriter]:
    """A started :class:`StoreWriter`, closed on the way out of the block.

    Normally, and on an exception (an ``Exception``) inside the block, the
    queued calls run before the block is left; a failed call's exception is
    raised (in place of the block's own). On KeyboardInterrupt (or another
    ``BaseException``) the call in progress finishes and the rest are dropped.
    """
    writer = StoreWriter(depth).start()
    try:
        yield writer
    except Exception:
        writer.close()  # an earlier batch's store error comes first, as in a serial loop
        raise
    except BaseException:
        writer.close(drop=True)
        raise
    writer.close()
