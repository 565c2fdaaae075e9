"""The ``postgres`` sink: a job-history table, one row per job (the latest attempt wins).

``worker-bridge --init-db`` creates the table; a writer checks at start that it exists. A batch is
one ``executemany`` (psycopg pipelines it) and one commit; the upsert is keyed by namespace and job
id and never lets an older attempt overwrite a newer one, so a batch written twice changes nothing.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import psycopg

from dispatcher.errors import ConfigError
from worker_bridge.sinks.records import JobRecord

log = logging.getLogger(__name__)

TABLE = "dispatcher_jobs"
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    namespace     text        NOT NULL,
    job_id        text        NOT NULL,
    spec          text        NOT NULL,
    status        text        NOT NULL,
    attempt       integer     NOT NULL,
    runner        text        NOT NULL DEFAULT '',
    priority      bigint,
    exit_code     integer,
    error         text        NOT NULL DEFAULT '',
    cancel_reason text        NOT NULL DEFAULT '',
    created_at    timestamptz,
    claimed_at    timestamptz,
    started_at    timestamptz,
    finished_at   timestamptz,
    processed_at  timestamptz,
    results       jsonb,
    stdout_tail   text        NOT NULL DEFAULT '',
    stderr_tail   text        NOT NULL DEFAULT '',
    written_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace, job_id)
);
CREATE INDEX IF NOT EXISTS {TABLE}_finished ON {TABLE} (namespace, finished_at);
CREATE INDEX IF NOT EXISTS {TABLE}_status ON {TABLE} (namespace, status);
"""
COLUMNS = (
    "namespace",
    "job_id",
    "spec",
    "status",
    "attempt",
    "runner",
    "priority",
    "exit_code",
    "error",
    "cancel_reason",
    "created_at",
    "claimed_at",
    "started_at",
    "finished_at",
    "processed_at",
    "results",
    "stdout_tail",
    "stderr_tail",
)
UPSERT = (
    f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) VALUES ("
    + ", ".join("%s::jsonb" if c == "results" else "%s" for c in COLUMNS)
    + ") ON CONFLICT (namespace, job_id) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in COLUMNS[2:])
    + f", written_at = now() WHERE {TABLE}.attempt <= EXCLUDED.attempt"
)


def _clean(value: str) -> str:
    return value.replace("\x00", "")  # PostgreSQL text cannot hold NUL


def row(job: JobRecord) -> tuple[Any, ...]:
    f = job.fields
    priority = f.get("priority") or ""
    results = f.get("results") or None
    return (
        job.namespace,
        job.job_id,
        f.get("spec", ""),
        f.get("status", ""),
        job.attempt,
        f.get("runner", ""),
        int(priority) if priority.lstrip("-").isdigit() else None,
        job.exit_code(),
        _clean(f.get("error", "")),
        f.get("cancel_reason", ""),
        job.time("created"),
        job.time("claimed"),
        job.time("started"),
        job.time("finished"),
        job.time("processed"),
        None if results is None or job.results() is None else _clean(results),
        _clean(job.tail("stdout")),
        _clean(job.tail("stderr")),
    )


def _where(url: str) -> str:
    """The database of ``url`` without credentials, for messages."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "the configured database"
    return f"{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"


class PostgresSink:
    name = "postgres"

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: psycopg.Connection[Any] | None = None

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = psycopg.connect(self.url, connect_timeout=5)
        return self._conn

    def init_db(self) -> None:
        """Create the table and its indexes (idempotent)."""
        try:
            with psycopg.connect(self.url, connect_timeout=5) as conn:
                conn.execute(SCHEMA)
        except psycopg.Error as exc:
            raise ConfigError(f"PostgreSQL at {_where(self.url)}: {_first_line(exc)}") from None

    def check(self) -> None:
        try:
            with psycopg.connect(self.url, connect_timeout=5) as conn:
                conn.execute(f"SELECT 1 FROM {TABLE} LIMIT 0")
        except psycopg.errors.UndefinedTable:
            raise ConfigError(
                f"PostgreSQL at {_where(self.url)} has no table {TABLE}: "
                "run `worker-bridge --init-db` once"
            ) from None
        except psycopg.Error as exc:
            raise ConfigError(f"PostgreSQL at {_where(self.url)}: {_first_line(exc)}") from None

    def write(self, jobs: list[JobRecord]) -> None:
        from worker_bridge.sinks import SinkFailure

        if not jobs:
            return
        rows = [row(job) for job in jobs]
        reused = self._conn is not None
        try:
            self._upsert(rows)
        except psycopg.OperationalError:
            self.close()
            if not reused:
                raise SinkFailure("postgres: the connection failed") from None
            # a kept connection may have died while idle (server restart, a proxy's timeout):
            # one fresh connection before calling it a failure
            try:
                self._upsert(rows)
            except psycopg.Error as exc:
                self.close()
                raise SinkFailure(f"postgres: {_first_line(exc)}") from None
        except psycopg.Error as exc:
            self.close()
            raise SinkFailure(f"postgres: {_first_line(exc)}") from None

    def _upsert(self, rows: list[tuple[Any, ...]]) -> None:
        conn = self._connection()
        with conn.cursor() as cur:
            cur.executemany(UPSERT, rows)
        conn.commit()

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
