"""Every Redis key and channel name, built in one place.

The Lua library (``lua/dispatch.lua``) builds the same names from the namespace with the helpers at
its top; ``tests/dispatcher/test_keys.py`` pins the two together. Nothing else formats key strings.
All names of one namespace start with ``<namespace>:``, so two namespaces on one Redis never meet.
A hash-tagged namespace (``{name}``) puts every key and channel of the namespace, the rq queue
keys included (``rq:queue:{name}:results``), in one Redis Cluster hash slot.
"""

from __future__ import annotations

from dataclasses import dataclass

SCHEMA_VERSION = 1
LIBRARY_VERSION = 3
LIBRARY_NAME = f"dispatch_v{LIBRARY_VERSION}"


@dataclass(frozen=True, slots=True)
class Keys:
    """Key and channel names of one namespace."""

    namespace: str

    def _k(self, *parts: str) -> str:
        return ":".join((self.namespace, *parts))

    # -- jobs -------------------------------------------------------------------------------
    def job(self, job_id: str) -> str:
        """HASH: the job record."""
        return self._k("job", job_id)

    def log(self, job_id: str) -> str:
        """STREAM: the job's live output (protocol 1.1 `log`), entries attempt, seq, stream, data;
        capped by DISPATCHER_LOG_MAX_BYTES; expires with the job record."""
        return self._k("log", job_id)

    def pending(self, spec: str) -> str:
        """ZSET: pending jobs of one spec; score -priority, member '<seq>:<job id>' (age order)."""
        return self._k("pending", spec)

    @property
    def delayed(self) -> str:
        """ZSET: job id -> ms when its delayed retry is due (a `failed` from the runner with
        retries left and a retry_delay); the pods' tick moves due ones to matching."""
        return self._k("delayed")

    @property
    def leases(self) -> str:
        """ZSET: job id -> next deadline (ms) of every claimed or running job."""
        return self._k("leases")

    @property
    def seq(self) -> str:
        """STRING counter: submission order, makes equal-priority jobs first-in first-out."""
        return self._k("seq")

    @property
    def events(self) -> str:
        """STREAM: append-only, capped log of state changes."""
        return self._k("events")

    @property
    def config(self) -> str:
        """HASH: timeouts the scripts use (written by every pod at start; last writer wins)."""
        return self._k("config")

    @property
    def outbox(self) -> str:
        """ZSET: '<job id>:<attempt>' -> ms when due, every terminal outcome not yet recorded by a
        result writer (added by the function that decides the outcome; the pump re-scores an
        entry it hands out to now + visibility; the writer's ``record`` removes it)."""
        return self._k("outbox")

    def sinkbox(self, sink: str) -> str:
        """ZSET: like ``outbox``: final outcomes one sink (postgres, webhook) has not taken."""
        return self._k("sinkbox", sink)

    @property
    def sinks(self) -> str:
        """SET: names of the sinks that have a sink box (so pumps find them)."""
        return self._k("sinks")

    @property
    def stats(self) -> str:
        """HASH: monotonic counters (submitted, dispatched, completed, ...)."""
        return self._k("stats")

    def usage(self, day: str) -> str:
        """HASH: usage of one UTC day ('YYYY-MM-DD', the day jobs finished): fields
        'ms:<by>:<name>' (running milliseconds) and 'jobs:<by>:<name>' (final jobs), ``by`` one of
        spec, group, runner ('' name: none); written by the writers' ``record``, expires
        DISPATCHER_USAGE_RETENTION_DAYS after the day (``dispatcher.usage``)."""
        return self._k("usage", day)

    @property
    def usage_total(self) -> str:
        """HASH: like a ``usage`` day hash, by spec only and never expiring: every job metered
        since the namespace began (the metrics exporter's usage counters)."""
        return self._k("usage", "total")

    @property
    def schema(self) -> str:
        """STRING: schema version of this namespace's keys."""
        return self._k("schema")

    # -- runners ----------------------------------------------------------------------------
    def runner(self, name: str) -> str:
        """HASH: the runner record."""
        return self._k("runner", name)

    @property
    def runners(self) -> str:
        """SET: names of every registered runner."""
        return self._k("runners")

    def idle(self, spec: str) -> str:
        """ZSET: runners waiting in a long poll for this spec; score idle-since (ms)."""
        return self._k("idle", spec)

    @property
    def specs(self) -> str:
        """SET: every spec a registered runner serves or a job asked for."""
        return self._k("specs")

    # -- concurrency groups -----------------------------------------------------------------
    @property
    def groups(self) -> str:
        """SET: every group a job or a limit named."""
        return self._k("groups")

    def group(self, group: str) -> str:
        """HASH: the group's settings: ``limit`` (absent = config ``group_default_limit``, else
        unlimited)."""
        return self._k("group", group)

    def group_inflight(self, group: str) -> str:
        """SET: ids of the group's claimed and running jobs (never more than its limit)."""
        return self._k("group", group, "inflight")

    def group_pending(self, group: str, spec: str) -> str:
        """ZSET: the group's pending jobs of one spec, scored and named as in ``pending``."""
        return self._k("group", group, "pending", spec)

    def group_specs(self, group: str) -> str:
        """SET: specs the group has pending jobs of."""
        return self._k("group", group, "specs")

    def group_heads(self, group: str) -> str:
        """HASH: spec -> the member of ``pending(spec)`` standing for the group (its best
        pending job of that spec), present only while the group has room."""
        return self._k("group", group, "heads")

    # -- pods -------------------------------------------------------------------------------
    @property
    def pods(self) -> str:
        """ZSET: pod id -> presence deadline (ms)."""
        return self._k("pods")

    @property
    def pods_reaping(self) -> str:
        """SET: dead pods (out of ``pods``) whose runners a deep tick has not all detached yet."""
        return self._k("pods", "reaping")

    def pod_runners(self, pod: str) -> str:
        """SET: runners whose current connection is on this pod."""
        return self._k("pod", pod, "runners")

    def pod_inbox(self, pod: str) -> str:
        """SET: runners of this pod whose Redis state changed since the pod last looked."""
        return self._k("pod", pod, "inbox")

    def pod_channel(self, pod: str) -> str:
        """Sharded pub/sub channel: the pod's doorbell; each message names a runner, and a match's
        also carries the offer (``dispatcher.pod.bells.parse_bell``)."""
        return self._k("pod", pod, "bell")

    @property
    def done_channel(self) -> str:
        """Pub/sub channel: a job id each time a job reaches a final state."""
        return self._k("done")

    # -- rate limit and results ---------------------------------------------------------------
    def connect_rate(self, runner: str, minute: int) -> str:
        """STRING counter with TTL: connection attempts of one runner in one clock minute."""
        return self._k("rate", runner, str(minute))

    @property
    def results_queue(self) -> str:
        """Name of the rq queue of result batches (rq keeps it under ``rq:queue:<name>``)."""
        return f"{self.namespace}:results"

    def sink_queue(self, sink: str) -> str:
        """Name of the rq queue of one sink's batches."""
        return f"{self.namespace}:sink:{sink}"

    @staticmethod
    def rq_queue(name: str) -> str:
        """LIST: the rq queue called ``name`` (rq's own naming; the pump reads its length)."""
        return f"rq:queue:{name}"

    def batch_job_id(self, kind: str, token: str) -> str:
        """rq job id of one batch (``kind`` 'results' or a sink name; ``token`` unique). rq allows
        only letters, digits, '_' and '-' in a job id, so a hash tag's braces are left out."""
        return f"{self.namespace.strip('{}')}-{kind}-{token}"
