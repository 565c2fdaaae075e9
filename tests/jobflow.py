"""Drive jobs through their life by calling the Redis Function library as a pod would.

No pod runs: a fake pod id is made alive with `tick`, a runner is registered and attached to it,
and `ready`/`start`/`finish` move jobs along. Producer and result-writer tests use this to reach
every status without WebSockets.
"""

from __future__ import annotations

from typing import Any

import redis

from dispatcher import admin, functions
from dispatcher.keys import Keys

POD = "fakepod"
SPEC = "linux"


class FakePod:
    """One live fake pod holding one connected runner of ``specs``."""

    def __init__(
        self, rclient: redis.Redis, keys: Keys, runner: str = "r1", specs: tuple[str, ...] = (SPEC,)
    ) -> None:
        self.rclient, self.keys, self.runner = rclient, keys, runner
        functions.run_sync(rclient, functions.tick(keys, POD, 60_000))
        admin.add_runner(rclient, keys, runner, list(specs))
        self.conn = int(functions.run_sync(rclient, functions.attach(keys, runner, POD))["conn"])

    def ready(self) -> dict[str, Any]:
        """The runner asks for work: the offer (result 'job') or {'result': 'idle'}."""
        return functions.run_sync(
            self.rclient, functions.ready(self.keys, self.runner, self.conn, "")
        )

    def take(self) -> tuple[str, int]:
        """Take the best pending job and start it; (job id, attempt)."""
        offer = self.ready()
        assert offer["result"] == "job", offer
        job_id, attempt = str(offer["job"]), int(offer["attempt"])
        started = functions.run_sync(
            self.rclient, functions.start(self.keys, self.runner, job_id, attempt)
        )
        assert started == {"result": "ok"}, started
        return job_id, attempt

    def finish(
        self, job_id: str, attempt: int, status: str = "completed", error: str = ""
    ) -> dict[str, Any]:
        call = functions.finish(
            self.keys,
            self.runner,
            job_id,
            attempt,
            status,
            exit_code=0 if status == "completed" else 1,
            results="null",
            stdout="out\n",
            stderr=None,
            error=error,
        )
        return functions.run_sync(self.rclient, call)

    def run_next(self, status: str = "completed") -> tuple[str, int]:
        """Take, start and finish the best pending job; (job id, attempt)."""
        job_id, attempt = self.take()
        reply = self.finish(job_id, attempt, status, error="" if status == "completed" else "boom")
        assert reply["result"] == "recorded", reply
        return job_id, attempt


# The job record's fields as issue 2's contract lists them (kept apart from the implementation).
CONTRACT_FIELDS = {
    "id",
    "spec",
    "status",
    "attempt",
    "runner",
    "priority",
    "timeout",
    "payload",
    "error",
    "exit_code",
    "results",
    "created",
    "claimed",
    "started",
    "finished",
    "stdout",
    "stderr",
}
