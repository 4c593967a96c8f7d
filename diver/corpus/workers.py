"""Worker processes for the corpus stage that may die, and die with their parent
(issue 13, item 7).

``concurrent.futures.ProcessPoolExecutor`` answers the death of one worker (the
kernel's OOM killer on a huge recording, a crash in a file reader) with
``BrokenProcessPool`` for every unfinished task: it cannot say which task killed the
worker, and it ends the work running in the others.  Here each worker runs one task at
a time and the parent knows which, so a death is that task's outcome (a
:class:`WorkerDied` with the exit status) and a fresh worker takes the next task, while
the other workers go on undisturbed.  A healthy pool costs the same as the executor:
long-lived workers, one small message per task each way.

Workers are spawned (no fork of a parent holding threads and open files) and ask the
kernel to SIGKILL them when their parent dies (Linux), so a killed ``diver corpus``
does not leave them working for hours on recordings nobody will collect.
"""

from __future__ import annotations

import os
import signal
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing import get_context
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from diver.parent_death import die_with_parent

_READY = "ready"  # a worker's first message: started, waiting for tasks


@dataclass(frozen=True)
class WorkerDied:
    """A worker ended while running a task, without an answer: ``exitcode`` as
    :attr:`multiprocessing.Process.exitcode` gives it (``-N``: killed by signal N)."""

    exitcode: int

    @property
    def reason(self) -> str:
        """Why, for qc.csv: SIGKILL is what the OOM killer sends, so it says so."""
        if self.exitcode == -signal.SIGKILL:
            return f"worker died: signal {signal.SIGKILL.value}, probably out of memory"
        if self.exitcode < 0:
            number = -self.exitcode
            try:
                name = signal.Signals(number).name
            except ValueError:  # a real-time signal has no name of its own
                return f"worker died: signal {number}"
            return f"worker died: signal {number} ({name})"
        return f"worker died: exit code {self.exitcode}"


class WorkerStartError(RuntimeError):
    """A worker died before it could take a task: the environment, not a recording."""


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, shown as its cause."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


def _serve(conn: Connection, parent: int, fn: Callable[..., Any]) -> None:
    """A worker's life: ``fn(*task)`` for each task the parent sends, until it hangs up.

    Ctrl-C reaches the whole process group; the parent alone handles it (and stops the
    workers), so an interrupted run never reads as a worker dying on its recording.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Orphaned, a worker would run its recording to the end and wait for tasks forever;
    # run_in_workers starts every worker from its caller's thread, which waits for them.
    die_with_parent(parent)
    conn.send(_READY)
    while True:
        try:
            task = conn.recv()
        except EOFError:  # the parent is done with us
            return
        _reply(conn, _answer(fn, task))


def _answer(fn: Callable[..., Any], task: tuple[Any, ...]) -> tuple[Any, ...]:
    """``(True, result)``, or ``(False, exception, traceback text)`` when ``fn`` raised."""
    try:
        return (True, fn(*task))
    except Exception as exc:
        return (False, exc, traceback.format_exc())


def _reply(conn: Connection, answer: tuple[Any, ...]) -> None:
    """Send ``answer``; one that cannot be pickled goes as a RuntimeError saying so: the
    worker dying of it instead would read as the task having killed it.  (A message is
    pickled whole before a byte is written, so a failed one leaves nothing on the pipe.)"""
    try:
        conn.send(answer)
    except OSError:
        raise  # the parent hung up: nobody to tell
    except Exception as exc:
        ok, value, *remote = answer
        problem = RuntimeError(f"the worker could not send back its {type(value).__name__}: {exc}")
        conn.send((False, problem, traceback.format_exc() if ok else remote[0]))


@dataclass
class _Worker:
    process: BaseProcess
    conn: Connection
    ready: bool = False
    task: int | None = None  # index of the task it is running


class _Pool:
    """The workers of one :func:`run_in_workers` call and the tasks not yet given out."""

    def __init__(self, fn: Callable[..., Any], tasks: Sequence[tuple[Any, ...]], jobs: int):
        self.fn = fn
        self.pending = deque(enumerate(tasks))
        self.jobs = min(jobs, len(tasks))
        self.workers: list[_Worker] = []

    def _start(self) -> _Worker:
        ctx = get_context("spawn")
        mine, theirs = ctx.Pipe()
        process = ctx.Process(
            target=_serve, args=(theirs, os.getpid(), self.fn), name="diver-worker"
        )
        process.start()
        theirs.close()  # the worker's end: once it exits, reading ours gives EOFError
        return _Worker(process, mine)

    def results(self) -> Iterator[tuple[int, Any]]:
        """``(index, result)`` as each task finishes, until every task has."""
        while len(self.workers) < self.jobs:
            self.workers.append(self._start())
        while self.workers:
            for conn in wait([w.conn for w in self.workers]):
                worker = next(w for w in self.workers if w.conn is conn)
                yield from self._heard(worker)

    def _heard(self, worker: _Worker) -> Iterator[tuple[int, Any]]:
        """Act on what ``worker`` said (or on its death): yield a finished task's result,
        then give the worker its next task, or let it go when none is left."""
        try:
            message = worker.conn.recv()
        except EOFError:
            yield from self._buried(worker)
            return
        if message == _READY:
            worker.ready = True
        else:
            index, worker.task = worker.task, None
            ok, result, *remote = message
            if not ok:
                raise result from RemoteTraceback(remote[0])
            yield index, result
        if self.pending:
            self._give(worker)
        else:
            self.workers.remove(worker)
            _stop([worker])

    def _give(self, worker: _Worker) -> None:
        worker.task, task = self.pending.popleft()
        try:
            worker.conn.send(task)
        except (BrokenPipeError, ConnectionResetError):  # it died idle: not this task's doing
            self.pending.appendleft((worker.task, task))
            worker.task = None  # the next wait() reads its end of file

    def _buried(self, worker: _Worker) -> Iterator[tuple[int, Any]]:
        """A worker died: its task (if any) failed with :class:`WorkerDied`, and a fresh
        worker takes its place while tasks are left."""
        self.workers.remove(worker)
        worker.conn.close()
        worker.process.join()
        exitcode = worker.process.exitcode
        if not worker.ready:
            raise WorkerStartError(
                f"a worker process ended before it could start (exit status {exitcode}); "
                "see the messages above"
            )
        if worker.task is not None:
            yield worker.task, WorkerDied(exitcode if exitcode is not None else 0)
        if self.pending:
            self.workers.append(self._start())

    def stop(self) -> None:
        _stop(self.workers)


def _stop(workers: list[_Worker]) -> None:
    """Hang up on every worker and wait for it; one still starting or running a task is
    terminated."""
    for worker in workers:
        if worker.task is not None or not worker.ready:
            worker.process.terminate()
        worker.conn.close()
    for worker in workers:
        worker.process.join(timeout=10)
        if worker.process.exitcode is None:
            worker.process.kill()
            worker.process.join()


def run_in_workers(
    fn: Callable[..., Any], tasks: Sequence[tuple[Any, ...]], jobs: int
) -> Iterator[tuple[int, Any]]:
    """``fn(*task)`` for every task in up to ``jobs`` worker processes, yielding
    ``(index in tasks, result)`` as each finishes, in no particular order.

    A worker that dies on a task yields :class:`WorkerDied` as that task's result and is
    replaced.  An exception ``fn`` raises is raised here (the worker's traceback as its
    cause) after every worker is stopped, as they are when the caller stops early:
    close the generator (``contextlib.closing``) rather than leave that to garbage
    collection.  ``fn`` must be importable by name (workers are spawned).
    """
    pool = _Pool(fn, tasks, jobs)
    try:
        yield from pool.results()
    finally:
        pool.stop()
