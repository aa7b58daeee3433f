"""``auditsift unlock``: remove the workdir lock a dead or stuck run left."""
from __future__ import annotations

import click

from pipeline.cli.boundary import boundary
from pipeline.cli.options import config_option, workdir_option
from pipeline.cli.output import say
from pipeline.config import load_config
from pipeline.io.storage import open_storage


@click.command()
@workdir_option
@config_option
@click.option("--force", is_flag=True, help="Remove the lock even while it holds: only when its run is certainly dead.")
@boundary
def unlock(workdir, config_path, force) -> None:
    """Remove the workdir lock a dead or stuck run left, saying whose it was (host, pid, age).

    A lock whose owner is gone or that is older than storage.lock_expire_minutes is removed;
    one that still holds is refused (exit 75) unless --force."""
    say(open_storage(workdir, load_config(config_path)).unlock(force=force))
