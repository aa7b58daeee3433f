"""What every stage shares in one run: storage, config, cluster, run id, timings, counts, progress.

State that must survive between separately scheduled stages lives in the workdir at
``state/cluster=<c>/latest.json`` (what the last archive, features, train and score
steps produced), so ``auditsift features`` after ``auditsift archive`` needs no flags.
"""
from __future__ import annotations

import logging
import secrets
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Iterator

from pipeline.config import Config
from pipeline.io.storage import Storage, safe_segment

log = logging.getLogger(__name__)

ProgressFactory = Callable[[str, int | None], "ProgressHandle"]


class ProgressHandle:
    """Progress reporting for one step; the CLI supplies a rich-backed one, tests and Step Functions none."""

    def advance(self, amount: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def no_progress(description: str, total: int | None) -> ProgressHandle:
    return ProgressHandle()


def new_run_id(now: datetime | None = None) -> str:
    """Sortable, unique enough for one workdir: UTC time to the second plus 6 hex digits."""

    moment = now or datetime.now(timezone.utc)
    return f"{moment.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"


@dataclass
class RunContext:
    storage: Storage
    config: Config
    run_id: str
    progress: ProgressFactory = no_progress
    timings: dict[str, float] = field(default_factory=dict)
    notify: Callable[[str], None] = log.info

    @property
    def cluster(self) -> str:
        return self.config.cluster

    @property
    def state_key(self) -> str:
        return f"state/cluster={safe_segment(self.cluster)}/latest.json"

    def read_state(self) -> dict:
        return self.storage.read_json_or(self.state_key, {})

    def update_state(self, section: str, value: dict) -> None:
        state = self.read_state()
        state[section] = value
        self.storage.write_json(self.state_key, state)

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        log.info("%s: started", stage)
        try:
            yield
        finally:
            self.timings[stage] = round(time.perf_counter() - started, 3)
            log.info("%s: %.1fs", stage, self.timings[stage])

    def cluster_key(self, area: str) -> str:
        return f"{area}/cluster={safe_segment(self.cluster)}"
