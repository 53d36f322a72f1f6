"""The MLflow writer that survives an outage of the tracking server.

An unreachable tracking server does not end a run: every write (metrics, params, tags, artifacts) goes through a
`Writer` thread that keeps a failed write at the head of its queue and retries it with backoff (1 s doubling to
30 s), printing one warning per outage and one line when the server is back; a call waits for its write only
while the writer is idle and healthy (so errors that are bugs, such as an invalid metric name, still raise in the
caller), never during an outage. At the end of the run the queue is flushed: the wait goes on while writes
succeed and gives up after `tracking.flush_timeout_s` without one, with a warning saying how many were lost.
"""

from __future__ import annotations

import collections
import threading
import time

BACKOFF_S = (1.0, 30.0)  # a failed write is retried after 1 s, doubling up to 30 s
SYNC_WAIT_S = 10.0  # how long a call waits for its own write while the writer is healthy and idle
# MlflowException codes that mean "try again later" (a server down, restarting, overloaded or timing out); any
# other code is a deterministic error (a bug or a refused value) and is not retried.
_TRANSIENT_CODES = {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "IO_ERROR", "SERVICE_UNDER_MAINTENANCE",
                    "WORKSPACE_TEMPORARILY_UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED", "REQUEST_LIMIT_EXCEEDED",
                    "RESOURCE_EXHAUSTED", "COULD_NOT_ACQUIRE_LOCK"}


def warn(line: str) -> None:
    """A tracking warning on the driver's console (cluster.raystart.say: above any progress bar)."""
    from cluster.raystart import say

    say(line)


def transient(e: BaseException) -> bool:
    """Whether a failed MLflow call is worth retrying: the server unreachable, restarting, overloaded or timing
    out, or a database busy; not a refused value or a bug."""
    from mlflow.exceptions import MlflowException

    if isinstance(e, MlflowException):
        return e.error_code in _TRANSIENT_CODES
    try:
        from sqlalchemy.exc import OperationalError  # a database server down, sqlite "database is locked"
    except ImportError:  # pragma: no cover - sqlalchemy comes with mlflow
        OperationalError = ()  # noqa: N806
    return isinstance(e, (OSError, TimeoutError) + ((OperationalError,) if OperationalError else ()))


class _Op:
    __slots__ = ("what", "fn", "done", "error", "waiting")

    def __init__(self, what: str, fn):
        self.what, self.fn, self.done, self.error, self.waiting = what, fn, threading.Event(), None, False


class Writer:
    """A thread that runs MLflow writes in order (see the module doc): a transient failure keeps the write at the
    head of the queue and retries it with backoff; `close` flushes."""

    def __init__(self, name: str, where: str, backoff_s: tuple[float, float] = BACKOFF_S):
        self.where, self.backoff_s = where, backoff_s
        self._ops: collections.deque[_Op] = collections.deque()
        self._cond = threading.Condition()
        self._closing = self._give_up = False
        self.outage_since: float | None = None  # monotonic time of the first failure of the outage in progress
        self.outages = 0
        self.written = 0  # writes done (the flush's measure of progress)
        self.lost: list[str] = []  # what the flush gave up on, or a deterministic error nobody waited for
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, what: str, fn, wait_s: float = 0.0) -> None:
        """Queue `fn` (a write); wait for it up to `wait_s` s when the writer is idle and healthy, re-raising its
        error if it is not transient."""
        op = _Op(what, fn)
        with self._cond:
            if self._closing:
                raise RuntimeError(f"MLflow writer {self._thread.name}: {what} after the run ended")
            op.waiting = wait_s > 0 and not self._ops and self.outage_since is None
            self._ops.append(op)
            self._cond.notify_all()
        if op.waiting:  # until written, an outage begins (the writer takes over) or wait_s passes
            deadline = time.monotonic() + wait_s
            while not op.done.wait(0.05):
                if self.outage_since is not None or time.monotonic() > deadline:
                    break
            with self._cond:  # the writer sets an error under this lock, and reports it itself once not waited for
                op.waiting = False
                error = op.error
            if error is not None:
                raise error

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._ops)

    def _loop(self) -> None:
        delay = self.backoff_s[0]
        while True:
            with self._cond:
                while not self._ops and not self._closing:
                    self._cond.wait()
                if not self._ops or self._give_up:
                    return
                op = self._ops[0]
            try:
                op.fn()
            except Exception as e:  # noqa: BLE001 - sorted below: retried when transient, else handed back
                if transient(e):
                    if self.outage_since is None:
                        self.outage_since, self.outages = time.monotonic(), self.outages + 1
                        warn(f"[mlflow] WARNING: the tracking server {self.where} is not reachable ({short(e)}); "
                              f"the run goes on, its metrics wait in memory and are retried until it is back")
                    with self._cond:
                        self._cond.wait(delay)  # a close that gives up wakes it
                        if self._give_up:
                            return
                    delay = min(delay * 2, self.backoff_s[1])
                    continue
                with self._cond:
                    self._ops.popleft()
                    op.error = e
                    if not op.waiting:
                        self.lost.append(f"{op.what}: {short(e)}")
                        warn(f"[mlflow] WARNING: {op.what} refused by {self.where}, not retried: {short(e)}")
                op.done.set()
                continue
            with self._cond:
                self._ops.popleft()
                self.written += 1
                left = len(self._ops)
            op.done.set()
            delay = self.backoff_s[0]
            if self.outage_since is not None:
                warn(f"[mlflow] the tracking server {self.where} is back after "
                      f"{time.monotonic() - self.outage_since:.0f} s; writing what waited ({left} left)")
                self.outage_since = None

    def close(self, timeout_s: float) -> list[str]:
        """Write what is queued: wait while the server answers (a slow upload included), give up after
        `timeout_s` s of an outage without a write. Returns what was lost (the writes given up on, and refused
        writes nobody waited for)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        last, idle_since = self.written, time.monotonic()
        while self._thread.is_alive():
            self._thread.join(0.5)
            if self.written != last:
                last, idle_since = self.written, time.monotonic()
            elif self.outage_since is not None and time.monotonic() - idle_since > timeout_s:
                with self._cond:
                    self._give_up = True
                    self.lost += [op.what for op in self._ops]
                    self._ops.clear()
                    self._cond.notify_all()
                self._thread.join(timeout_s + 5)
                break
        return self.lost


def short(e: BaseException) -> str:
    """An error as one line of at most ~300 characters, its type first, for a warning."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}"
