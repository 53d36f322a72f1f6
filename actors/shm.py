"""Weight sync through one shared-memory file per run on the learner's node (`cluster.weight_sync=auto` with
CPU rollout actors, or `shm`): learner rank 0 rewrites it in place at every publish; rollout actors on the
same node map it once and copy straight from it into their engine.

Why not only Ray's object store: every publish there is a new 74 MiB object (tiny Qwen-vocab model), and
writing it costs page faults on fresh memory and a single-threaded copy — 40-50 ms against 7 ms for one
memcpy of the bytes into memory already mapped (measured 2026-12-04, bench stage weight_sync). A file that is
reused keeps its pages: a publish is one copy in, a load one copy out.

Layout: a header — magic, a sequence counter, the version it holds, the layout's length, where the tensors
start (a page boundary), the layout as JSON (name, dtype, shape, byte offset per tensor, fixed at the first
publish) — then the tensors, each 64-byte aligned.

Readers and the writer never wait for each other (async mode: a load queued behind a rollout can run while
the learner publishes the next version). A seqlock keeps a read whole: the writer makes the counter odd, writes,
stores the version, makes it even; a reader copies only between two equal even readings and else copies again,
so it always ends with one whole version — possibly newer than the one it was asked to load, which it then
reports (its samples are tagged with what they were really generated under).
"""

from __future__ import annotations

import atexit
import fcntl
import json
import mmap
import os
import re
import stat
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

MAGIC = b"VGRLWTS1"
FIXED = 40  # magic + [seq, version, layout bytes, data offset] as int64
PAGE = 4096
ALIGN = 64
SHM_DIR = Path("/dev/shm")
PREFIX = "vigorl-weights-"
# vigorl-weights-<writer pid>-<8 hex>: nothing else in /dev/shm is ever swept
_NAME = re.compile(re.escape(PREFIX) + r"(\d+)-[0-9a-f]{8}")


def available() -> bool:
    """Whether this node has a shared-memory filesystem (Linux)."""
    return SHM_DIR.is_dir() and os.access(SHM_DIR, os.W_OK)


def this_node() -> str:
    """This process's Ray node id: a weight file can be mapped only by processes on the writer's node."""
    import ray

    return ray.get_runtime_context().get_node_id()


def _layout(state: dict[str, torch.Tensor]) -> tuple[list[dict], int]:
    entries, offset = [], 0
    for name, t in state.items():
        offset = -(-offset // ALIGN) * ALIGN
        nbytes = t.numel() * t.element_size()
        entries.append({"name": name, "dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape),
                        "offset": offset, "nbytes": nbytes})
        offset += nbytes
    return entries, offset


def _views(buf: mmap.mmap, entries: list[dict], start: int) -> dict[str, torch.Tensor]:
    """Tensors aliasing the mapping (no copy), in layout order."""
    out = {}
    for e in entries:
        raw = torch.frombuffer(buf, dtype=torch.uint8, count=e["nbytes"], offset=start + e["offset"]) \
            if e["nbytes"] else torch.empty(0, dtype=torch.uint8)
        out[e["name"]] = raw.view(getattr(torch, e["dtype"])).view(e["shape"])
    return out


def _counters(buf: mmap.mmap) -> np.ndarray:
    """[seq, version, layout bytes, data offset]: int64 views of header bytes 8..40."""
    return np.frombuffer(buf, dtype=np.int64, count=4, offset=8)


def _signature(state: dict[str, torch.Tensor]) -> list[tuple]:
    return [(n, str(t.dtype).removeprefix("torch."), list(t.shape)) for n, t in state.items()]


def sweep(directory: Path = SHM_DIR) -> list[Path]:
    """Remove the weight files of learners that are gone (a killed process cannot remove its own; they would
    hold a model's worth of shared memory until reboot). Returns what it removed.

    A file is removed only when all of these hold: its name is vigorl's (`vigorl-weights-<pid>-<hex>`), it is a
    regular file of this user, its writer's pid is not alive here, and nobody holds its lock — the writer keeps an
    exclusive `flock` on it for its life, which also covers a writer in another PID namespace (containers that
    share /dev/shm see each other's files but not each other's pids). Anything else — another user's file, a
    file that vanishes meanwhile, one we may not open — is left alone, never an error."""
    gone = []
    for f in directory.glob(PREFIX + "*"):
        m = _NAME.fullmatch(f.name)
        if m is None:
            continue
        try:
            st = f.lstat()
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or Path(f"/proc/{m.group(1)}").exists():
                continue
            fd = os.open(f, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: its writer lives
                f.unlink()
                gone.append(f)
            finally:
                os.close(fd)
        except OSError:  # vanished, locked, or not ours to open: leave it
            continue
    return gone


class WeightFile:
    """The writer (learner rank 0). `write` is one copy of `state` into the file; the first call fixes the
    layout, and a later state with other names, dtypes or shapes is an error naming the first difference."""

    def __init__(self, directory: Path = SHM_DIR):
        sweep(Path(directory))
        self.path = Path(directory) / f"{PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._buf: mmap.mmap | None = None
        self._lock: int | None = None  # the fd whose exclusive flock tells `sweep` this file's writer lives

    def write(self, version: int, state: dict[str, torch.Tensor]) -> str:
        """Publish `state` as `version`; returns the file's path."""
        if self._buf is None:
            self._create(state)
        if (now := _signature(state)) != self._signature:
            first = next((a for a, b in zip(now, self._signature) if a != b), f"{len(now)} tensors, not "
                                                                             f"{len(self._signature)}")
            raise ValueError(f"weight file {self.path}: the published state no longer matches its layout: {first}")
        seq = self._counters
        seq[0] += 1  # odd: a write is in progress
        for t, dst in zip(state.values(), self._views.values()):
            dst.copy_(t.detach())
        seq[1] = version
        seq[0] += 1  # even: whole
        return str(self.path)

    def _create(self, state: dict[str, torch.Tensor]) -> None:
        entries, size = _layout(state)
        layout = json.dumps(entries).encode()
        start = -(-(FIXED + len(layout)) // PAGE) * PAGE
        total = start + max(size, 1)
        # created under a name `sweep` never matches, locked, then renamed: no moment where another run's sweep
        # could take the file for a dead writer's
        hidden = self.path.with_name("." + self.path.name)
        fd = os.open(hidden, os.O_CREAT | os.O_RDWR | os.O_EXCL, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # reserve every page now: a full /dev/shm is this clear error, not a SIGBUS in the middle of a write
            os.posix_fallocate(fd, 0, total)
            self._buf = mmap.mmap(fd, total)
            os.rename(hidden, self.path)
        except OSError as e:
            if self._buf is not None:
                self._buf.close()
                self._buf = None
            os.close(fd)
            hidden.unlink(missing_ok=True)
            free = os.statvfs(self.path.parent)
            raise OSError(f"weight file {self.path}: {total / 2**30:.2f} GiB needed, {free.f_bavail * free.f_frsize / 2**30:.2f}"
                          f" GiB free in {self.path.parent} ({e.strerror}): free some or set "
                          f"cluster.weight_sync=object_store") from e
        self._lock = fd  # held open (and locked) until close()
        self._buf[:8] = MAGIC
        self._buf[FIXED:FIXED + len(layout)] = layout
        self._counters = _counters(self._buf)
        self._counters[:] = (0, -1, len(layout), start)
        self._signature = _signature(state)
        self._views = _views(self._buf, entries, start)
        atexit.register(self.close)  # a learner that exits normally leaves nothing in /dev/shm

    def close(self) -> None:
        """Remove the file (readers that mapped it keep their mapping until they drop it)."""
        self.path.unlink(missing_ok=True)
        if self._lock is not None:
            os.close(self._lock)
        self._views, self._counters, self._buf, self._lock = {}, None, None, None


class WeightReader:
    """A rollout actor's view of the learner's weight file, mapped once per path."""

    def __init__(self):
        self.path: str | None = None

    def _open(self, path: str) -> None:
        import warnings

        fd = os.open(path, os.O_RDONLY)
        try:
            buf = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        if buf[:8] != MAGIC:
            raise ValueError(f"{path} is not a vigorl weight file")
        counters = _counters(buf)
        entries = json.loads(buf[FIXED:FIXED + int(counters[2])])
        with warnings.catch_warnings():  # torch warns that the mapping is read-only: nothing writes through it
            warnings.simplefilter("ignore", UserWarning)
            self.views = _views(buf, entries, int(counters[3]))
        self.path, self._counters = path, counters

    def read(self, path: str, load: Callable[[dict[str, torch.Tensor]], object], timeout_s: float = 60.0) -> int:
        """Run `load(tensors)` (they alias the file: copy out of them, keep no reference) on one whole version
        and return that version; `load` runs again if the learner wrote meanwhile."""
        if path != self.path:
            self._open(path)
        seq = self._counters
        deadline = time.monotonic() + timeout_s
        while True:
            before = int(seq[0])
            if before % 2 == 0 and int(seq[1]) >= 0:
                load(self.views)
                version = int(seq[1])
                if int(seq[0]) == before:
                    return version
            if time.monotonic() > deadline:
                raise TimeoutError(f"weight file {path}: no whole version to read in {timeout_s:.0f} s "
                                   f"(sequence {int(seq[0])}, version {int(seq[1])}): is the learner stuck "
                                   f"in a publish?")
            time.sleep(0.001)
