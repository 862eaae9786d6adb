"""Where a study lives: a journal file (one machine, or a shared file system for Slurm job arrays), or
a database URL (PostgreSQL, MySQL, SQLite) for workers on several machines. Both with heartbeats, so
a trial whose worker was killed is failed and queued again instead of blocking the study."""

from __future__ import annotations

import random
import time
import warnings
from pathlib import Path

import optuna
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from ..errors import CxrlabError

HEARTBEAT_SECONDS = 20  # a running trial's worker says it is alive this often
GRACE_FACTOR = 3  # and is taken for dead after this many intervals of silence
MAX_RETRY = 3  # a trial whose worker died is run again at most this many times
JOURNAL_NAME = "study.journal"


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """Optuna's journal storage with the heartbeats its RDB storage has (Optuna gives the journal none,
    and a Slurm job array is exactly where workers get killed): the heartbeat is a trial system
    attribute holding the worker's clock, so the machines sharing the file need synchronised clocks (NTP),
    as they do for Slurm itself."""

    KEY = "cxrlab:heartbeat"

    def __init__(self, path: str | Path, interval: int, grace: int):
        super().__init__(JournalFileBackend(str(path)))
        self._interval, self._grace = interval, grace
        self._stale_callback = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self.set_trial_system_attr(trial_id, self.KEY, time.time())
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another worker declared this trial dead while we were slow; its state stays as it says

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        stale = []
        for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            last = t.system_attrs.get(self.KEY)
            if last is None and t.datetime_start is not None:
                last = t.datetime_start.timestamp()
            if last is not None and now - float(last) > self._grace:
                stale.append(t._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self._interval

    def get_heartbeat_stale_trial_callback(self):
        return self._stale_callback


def open_storage(url: str | None, out: Path, heartbeat: int = HEARTBEAT_SECONDS):
    """An Optuna storage for `url`: None means a journal file in `out`; `journal:PATH` a journal file
    there; anything else a SQLAlchemy database URL (postgresql://user:pass@host/db). A database that
    cannot be reached is a one-line error naming it."""
    with warnings.catch_warnings():  # heartbeats and their retry callback are "experimental" in Optuna 5
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _open(url, out, heartbeat)


def _open(url: str | None, out: Path, heartbeat: int):
    grace = heartbeat * GRACE_FACTOR
    if url is None or url.startswith("journal:"):
        path = out / JOURNAL_NAME if url is None else Path(url[len("journal:"):]).expanduser()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        except OSError as exc:
            raise CxrlabError(f"{path}: cannot create the study's journal file ({exc.strerror or exc})") from None
        return HeartbeatJournalStorage(path, heartbeat, grace)
    if "://" not in url:
        raise CxrlabError(f"--storage {url!r}: give a database URL (postgresql://user:password@host:5432/db) "
                          "or journal:PATH")
    for attempt in range(6):
        try:
            return RDBStorage(url, engine_kwargs=_engine_kwargs(url), heartbeat_interval=heartbeat,
                              grace_period=grace,
                              heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY))
        except Exception as exc:  # SQLAlchemy's and the driver's errors have no common base worth naming
            # machines that start together on an empty database all create Optuna's tables, and all but one
            # fail (optuna/optuna#1092: no fix upstream); once the winner has made them, opening succeeds
            if attempt < 5 and _lost_table_race(exc):
                time.sleep(0.5 + random.random() * 2 ** attempt)
                continue
            raise CxrlabError(f"--storage {_redact(url)}: cannot open the study database "
                              f"({_first_line(exc)})") from None


def _lost_table_race(exc: BaseException) -> bool:
    text = str(exc)
    return "already exists" in text or "duplicate key" in text or "UNIQUE constraint failed" in text


def _engine_kwargs(url: str) -> dict:
    # fail in seconds, not after the operating system's TCP timeout, when the server is not there
    return {"connect_args": {"connect_timeout": 10}} if url.startswith("postgresql") else {}


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    head, sep, rest = url.partition("://")
    if "@" in rest and ":" in rest.split("@", 1)[0]:
        user = rest.split("@", 1)[0].split(":", 1)[0]
        return f"{head}{sep}{user}:***@{rest.split('@', 1)[1]}"
    return url


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
