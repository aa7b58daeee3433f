"""The ``auditsift`` executable (``pipeline.launch``) starts the worker fork server before the CLI's imports for the
commands that start workers, so the server imports the stages while the CLI is imported, and for no other command."""
from __future__ import annotations

import subprocess
import sys

import pytest

from pipeline.launch import WORKER_COMMANDS, command_of


@pytest.mark.parametrize("argv, command", [
    (["run", "--input", "logs", "--workdir", "work"], "run"),
    (["--log-level", "INFO", "archive", "--input", "logs"], "archive"),
    (["--log-level=DEBUG", "--debug", "features", "--workdir", "work"], "features"),
    (["score", "--workdir", "run"], "score"),  # an option's value that names a command is not the command
    (["report", "--workdir", "work"], "report"),
    (["run", "--help"], None),
    (["--help"], None),
    (["--version"], None),
    (["--log-level", "run"], None),  # "run" is the option's value here
    ([], None),
])
def test_the_command_is_the_first_word_that_is_not_an_option_or_its_value(argv, command):
    assert command_of(argv) == command


def test_only_commands_that_start_workers_start_the_fork_server():
    assert WORKER_COMMANDS == {"run", "archive", "features", "score"}


# What the CLI sees when it is imported: whether the fork server is already running and whether this process has
# imported the stages yet. The launcher imports the CLI by name, so a stand-in module under that name reports it.
OBSERVE = """
import sys, types
import multiprocessing.forkserver as forkserver
observed = types.ModuleType("pipeline.cli")
observed.main = lambda: print(forkserver._forkserver._forkserver_pid is not None, "pipeline.stages.archive" in sys.modules)
sys.modules["pipeline.cli"] = observed
sys.argv = ["auditsift", *sys.argv[1:]]
from pipeline.launch import main
main()
"""


@pytest.mark.parametrize("argv, started", [(["archive", "--input", "logs"], "True"), (["report"], "False"),
                                           (["run", "--help"], "False")])
def test_the_server_is_running_before_the_cli_is_imported_and_the_stages_are_not_imported_here(argv, started):
    shown = subprocess.run([sys.executable, "-c", OBSERVE, *argv], capture_output=True, text=True, timeout=60, check=True)
    assert shown.stdout.split() == [started, "False"]


def test_python_dash_m_pipeline_runs_the_cli_through_the_launcher():
    shown = subprocess.run([sys.executable, "-m", "pipeline", "--version"], capture_output=True, text=True, timeout=60, check=True)
    assert shown.stdout.startswith("python -m pipeline, version ")
