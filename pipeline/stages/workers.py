"""Worker processes for the CPU-bound parts of the archive and features stages.

Python runs one thread of Python code at a time, so the stages use processes to keep more
than one core busy. The helpers here make that safe for a scheduled job:

- workers are forked from a *fork server* (``worker_context``): a fresh interpreter started once per run,
  which imports the stages' modules (``PRELOAD``) and then forks a worker per request. Nothing is
  inherited from the run's threads, locks or AWS clients, as with spawned interpreters, but the
  imports are paid once per run instead of once per worker: a spawned archive worker took 0.45 s to
  import its stage and a features worker 0.7 s (pandas), two of each in a large ``auditsift run``.
  ``start`` keeps workers from re-running the caller's ``__main__``;
- a worker dies with the run (``exit_with_parent``), so a killed run leaves none behind;
- an error in a worker is raised in the parent, in input order, as a sequential loop would;
- ``ordered_map`` yields results in input order and keeps at most ``in_flight`` items between
  the two sides, so memory does not grow with the input.

Whatever is parallel, outputs must not depend on it: callers pass the same inputs through the
same code and combine the results in input order.
"""
from __future__ import annotations

import ctypes
import multiprocessing
import multiprocessing.forkserver
import os
import pickle
import queue
import select
import signal
import sys
import threading
import time
import types
from typing import Callable, Iterable, Iterator

# Where the workers' targets live: imported once by the fork server, before any worker is forked.
PRELOAD = ["pipeline.stages.archive", "pipeline.stages.features", "pipeline.stages.score"]


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def worker_context():
    """The multiprocessing context workers start in: the fork server where the platform has one, else spawn."""
    if "forkserver" not in multiprocessing.get_all_start_methods():  # pragma: no cover - not Linux or macOS
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)  # read once, when the server starts
    return context


def start_fork_server() -> None:
    """Start the fork server now, without waiting for it: its imports (0.65 s) then run on another core while the
    caller imports its own, instead of after them when the first worker is asked for (``pipeline.launch`` calls this
    before the CLI's imports). A server nothing uses costs that one core's 0.65 s and exits with this process."""
    if usable_cores() > 1 and worker_context().get_start_method() == "forkserver":
        multiprocessing.forkserver.ensure_running()


def stop_fork_server() -> None:
    """Stop the fork server, if this process started one, and wait for it: its workers' CPU time then counts in this
    process's ``RUSAGE_CHILDREN``, as a spawned worker's does (``tools.bench`` measures phases so). The next worker
    starts a new server."""
    server = getattr(multiprocessing.forkserver, "_forkserver", None)
    if server is not None:
        server._stop()  # the documented-for-tests way to stop it; the server keeps no other handle


def start(processes) -> None:
    """Start worker processes without re-running the caller's ``__main__`` in them: the workers
    need only the module their target lives in, and a script or notebook without an
    ``if __name__ == "__main__"`` guard would otherwise run its top-level code again in each."""
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        for process in processes:
            process.start()
    finally:
        sys.modules["__main__"] = main


def stop(processes) -> None:
    for process in processes:
        if process.is_alive():
            process.terminate()
        process.join()


def exit_with_parent(parent: int) -> None:
    """In a worker: die when the run (process ``parent``) dies, so a killed run leaves no workers.

    A forked worker's parent process is the fork server, which outlives the run while any worker holds
    it, so the worker watches the run itself: a thread waits on a pidfd of the run (Linux 5.3; PID reuse
    cannot fool it) and exits when it is readable; without pidfds (macOS) it checks every second that the
    run's process exists. ``PR_SET_PDEATHSIG`` (Linux) also covers a spawned worker, whose parent is the run."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass
    try:
        watched = os.pidfd_open(parent)
    except ProcessLookupError:
        os._exit(1)
    except (OSError, AttributeError):  # no pidfds: macOS, Linux before 5.3
        watch, argument = _exit_when_gone, parent
    else:
        watch, argument = _exit_when_readable, watched
    threading.Thread(target=watch, args=(argument,), name="auditsift-watch-run", daemon=True).start()


def _exit_when_readable(fd: int) -> None:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    poller.poll()
    os._exit(1)


def _exit_when_gone(pid: int, every: float = 1.0) -> None:
    while True:
        try:
            os.kill(pid, 0)
        except (ProcessLookupError, PermissionError):  # gone, or another user's process has its number now
            os._exit(1)
        time.sleep(every)


def picklable(error: BaseException) -> BaseException:
    """The error itself if it survives pickling (AuditsiftError does, with its hint), else its text."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")


def receive(results, processes, what: str = "worker") -> tuple:
    """The next message from ``results``; raises if a worker died without sending its error."""
    while True:
        try:
            return results.get(timeout=1.0)
        except queue.Empty:
            dead = [p for p in processes if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"{what} {dead[0].name} died (exit code {dead[0].exitcode})") from None


def ordered_map(function: Callable, items: Iterable, workers: int, setup: Callable | None = None, setup_args: tuple = (),
                in_flight: int | None = None, name: str = "auditsift-worker") -> Iterator:
    """``function(state, item)`` for every item, computed in ``workers`` worker processes and yielded
    in input order; ``state = setup(*setup_args)`` is built once per worker. ``items`` is consumed
    lazily, at most ``in_flight`` (default 2 per worker) ahead of what has been yielded. The first
    error, in input order, is raised here. ``function`` and ``setup`` must be module-level."""
    in_flight = in_flight or 2 * workers
    context = worker_context()
    tasks, results = context.Queue(), context.Queue()
    processes = [context.Process(target=_map_worker, name=f"{name}-{n}", daemon=True,
                                 args=(function, setup, setup_args, tasks, results, os.getpid()))
                 for n in range(workers)]
    start(processes)
    try:
        source = iter(items)
        done: dict[int, tuple[bool, object]] = {}
        sent = received = 0
        exhausted = False
        while True:
            while not exhausted and sent - received < in_flight:
                try:
                    item = next(source)
                except StopIteration:
                    exhausted = True
                    break
                tasks.put((sent, item))
                sent += 1
            if exhausted and received == sent:
                break
            while received not in done:
                index, ok, value = receive(results, processes)
                done[index] = (ok, value)
            ok, value = done.pop(received)
            received += 1
            if not ok:
                raise value
            yield value
        for _ in processes:
            tasks.put(None)
        for process in processes:
            process.join(timeout=10)
    finally:
        stop(processes)
        tasks.cancel_join_thread()


def _map_worker(function, setup, setup_args, tasks, results, parent: int) -> None:
    exit_with_parent(parent)
    try:
        state = setup(*setup_args) if setup is not None else None
    except Exception as error:
        state, failure = None, picklable(error)
    else:
        failure = None
    while (task := tasks.get()) is not None:
        index, item = task
        if failure is not None:
            results.put((index, False, failure))
            continue
        try:
            results.put((index, True, function(state, item)))
        except Exception as error:
            results.put((index, False, picklable(error)))
