"""A worker dies with the run it works for, however it was started: forked workers' parent is the fork server, which
outlives the run, so each watches the run's process itself (``pipeline.stages.workers.exit_with_parent``)."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

WORKER = """
import os, sys, time
import pipeline.stages.workers as workers
if sys.argv[2] == "poll":
    del os.pidfd_open  # as on macOS, or Linux before 5.3
workers.exit_with_parent(int(sys.argv[1]))
print("watching", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("watch", ["pidfd", "poll"])
def test_a_worker_exits_when_the_run_it_watches_is_killed(watch):
    run = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    worker = subprocess.Popen([sys.executable, "-c", WORKER, str(run.pid), watch], stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout.readline().strip() == "watching"
        time.sleep(0.2)
        assert worker.poll() is None, "the worker left while the run was alive"
        run.kill()
        run.wait()
        assert worker.wait(timeout=20) == 1
    finally:
        for process in (run, worker):
            if process.poll() is None:
                process.kill()


def test_a_worker_whose_run_is_already_gone_exits_at_once():
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    worker = subprocess.run([sys.executable, "-c", WORKER, str(gone.pid), "pidfd"], capture_output=True, text=True, timeout=60)
    assert worker.returncode == 1 and "watching" not in worker.stdout
