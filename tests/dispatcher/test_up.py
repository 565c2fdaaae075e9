"""`dispatcher up --demo` as a user runs it: a subprocess with an embedded Valkey."""

from __future__ import annotations

import re

import redis

from dispatcher.keys import Keys
from tests.dispatcher.upkit import UpProcess


def test_demo_jobs_end_processed_failed_and_canceled_and_survive_a_restart(tmp_path):
    data = tmp_path / "state"
    with UpProcess(data, "--demo") as up:
        up.expect("all sample jobs ended", timeout=90)
        assert up.interrupt() == 0, up.output()
    lines = up.output()
    ended = dict(re.findall(r"demo: '(\w+)' ended (\w+)", lines))
    assert ended == {"succeeds": "processed", "fails": "failed", "canceled": "canceled"}
    ids = re.findall(r"demo: submitted '\w+' as ([0-9a-f-]{36})", lines)
    assert len(ids) == 3

    # a second start on the same data directory still knows the jobs
    with UpProcess(data) as up:
        url = up.expect(r"^  Redis +(redis://127\.0\.0\.1:\d+/0)  embedded Valkey").group(1)
        command = up.expect(r"^  (DISPATCHER_REDIS_URL=\S+) \S*dispatcher submit --spec local")
        assert command.group(1) == f"DISPATCHER_REDIS_URL={url}"
        up.expect("Job log:")
        client = redis.Redis.from_url(url, decode_responses=True)
        statuses = [client.hget(Keys("dispatch").job(job_id), "status") for job_id in ids]
        client.close()
        assert up.interrupt() == 0, up.output()
    assert sorted(str(s) for s in statuses) == ["canceled", "failed", "processed"]
