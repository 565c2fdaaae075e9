"""`dispatcher usage`, ``Client.usage`` and ``AsyncClient.usage`` against a real Redis; and the
whole path with real processes (pod, runner agents, two racing writers, the installed command)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from dispatcher import functions
from dispatcher.cli import main
from dispatcher.client import AsyncClient, Client
from dispatcher.errors import InvalidInput
from dispatcher.keys import Keys
from dispatcher.settings import Settings
from tests.faults.cluster import Cluster, Size, wait_for
from tests.jobflow import SPEC, FakePod
from worker_bridge.tasks import WriterContext, process_batch

DISPATCHER = str(Path(sys.executable).parent / "dispatcher")
CTX = WriterContext(Settings())


class Jobs:
    """Finished, recorded jobs on fake pods' runners; the usage they must show."""

    def __init__(self, rclient: redis.Redis, keys: Keys) -> None:
        self.rclient, self.keys = rclient, keys
        self.pods = {name: FakePod(rclient, keys, runner=name) for name in ("r1", "r2")}
        self.ms: dict[str, int] = {}
        self.day = ""

    def run(self, runner: str, status: str, group: str = "") -> str:
        functions.run_sync(self.rclient, functions.submit(self.keys, "", SPEC, "{}", 0, 60, 1))
        pod = self.pods[runner]
        job_id, attempt = pod.take()
        if group:
            self.rclient.hset(self.keys.job(job_id), "group", group)
        pod.finish(job_id, attempt, status, error="" if status == "completed" else "boom")
        process_batch(
            self.keys.namespace, [f"{job_id}:{attempt}"], connection=self.rclient, ctx=CTX
        )
        started, finished = self.rclient.hmget(self.keys.job(job_id), "started", "finished")
        assert started and finished
        self.ms[job_id] = int(finished) - int(started)
        self.day = dt.datetime.fromtimestamp(int(finished) / 1000, dt.UTC).date().isoformat()
        return job_id


@pytest.fixture
def jobs(rclient: redis.Redis, keys: Keys) -> Jobs:
    made = Jobs(rclient, keys)
    made.run("r1", "completed", "org-42")
    made.run("r1", "completed")
    made.run("r2", "failed")
    return made


class Cli:
    def __init__(self, redis_url: str, namespace: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.base = ["--redis-url", redis_url, "--namespace", namespace]
        self.capsys = capsys

    def __call__(self, *args: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        try:
            code = main([*self.base, *args])
        except SystemExit as exit_:  # argparse's usage errors
            code = int(exit_.code or 0)
        out, err = self.capsys.readouterr()
        return code, out, err


@pytest.fixture
def cli(redis_url: str, namespace: str, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(redis_url, namespace, capsys)


def seconds(ms: int) -> float:
    return round(ms / 1000, 3)


def test_usage_json_by_runner_and_spec(cli: Cli, jobs: Jobs) -> None:
    ids = list(jobs.ms)
    code, out, err = cli("usage", "--json", "--by", "runner", "--since", "yesterday")
    assert code == 0 and err == ""
    report = json.loads(out)
    r1 = seconds(jobs.ms[ids[0]] + jobs.ms[ids[1]])
    assert report["by"] == "runner"
    assert {(r["name"], r["runner_seconds"], r["jobs"]) for r in report["totals"]} == {
        ("r1", r1, 2),
        ("r2", seconds(jobs.ms[ids[2]]), 1),
    }
    assert [d["day"] for d in report["days"]] == [jobs.day]
    assert report["jobs"] == 3
    code, out, _ = cli("usage", "--json")
    by_spec = json.loads(out)
    assert by_spec["totals"] == [
        {"name": SPEC, "runner_seconds": seconds(sum(jobs.ms.values())), "jobs": 3}
    ]


def test_usage_by_group_names_jobs_without_one(cli: Cli, jobs: Jobs) -> None:
    code, out, _ = cli("usage", "--by", "group")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("usage by group from ") and lines[0].endswith("(UTC days)")
    assert lines[1].split() == ["DAY", "GROUP", "RUNNER-SECONDS", "JOBS"]
    assert any(line.split()[:2] == ["total", "org-42"] for line in lines)
    assert any(
        line.split()[:2] == ["total", "(none)"] and line.split()[-1] == "2" for line in lines
    )
    assert lines[-1].split()[:2] == ["total", "(all)"] and lines[-1].split()[-1] == "3"


def test_a_range_without_usage_says_so(cli: Cli, jobs: Jobs) -> None:
    code, out, _ = cli("usage", "--since", "2020-01-01", "--until", "2020-01-31")
    assert (code, out.strip()) == (0, "no usage from 2020-01-01 to 2020-01-31 (UTC days)")
    code, out, _ = cli("usage", "--since", "2020-01-01", "--until", "2020-01-31", "--json")
    assert json.loads(out)["days"] == [] and json.loads(out)["jobs"] == 0


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (("--since", "2026-13-01"), 1, "dispatcher: invalid since '2026-13-01': a date YYYY-MM-DD"),
        (("--until", "soon"), 1, "dispatcher: invalid until 'soon'"),
        (("--since", "2026-12-02", "--until", "2026-12-01"), 1, "dispatcher: invalid range: since"),
        (
            ("--since", "2001-01-01", "--until", "2026-01-01"),
            1,
            "dispatcher: invalid range: at most",
        ),
        (("--by", "org"), 2, "dispatcher usage: error: argument --by: invalid choice: 'org'"),
    ],
)
def test_bad_input_is_one_line_and_a_failure_status(
    cli: Cli, rclient: redis.Redis, keys: Keys, args: tuple[str, ...], status: int, message: str
) -> None:
    before = sorted(rclient.scan_iter(match=f"{keys.namespace}:*"))
    code, out, err = cli("usage", *args, "--json")
    assert code == status and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith(message), err
    assert sorted(rclient.scan_iter(match=f"{keys.namespace}:*")) == before


def test_the_clients_agree_with_the_command(
    cli: Cli, jobs: Jobs, settings: Settings, rclient: redis.Redis
) -> None:
    _, out, _ = cli("usage", "--json", "--by", "runner")
    with Client(settings) as client:
        assert client.usage(by="runner") == json.loads(out)
        assert client.usage(since=dt.date.fromisoformat(jobs.day))["jobs"] == 3
        with pytest.raises(InvalidInput, match="invalid by"):
            client.usage(by="pod")

    async def read() -> tuple[dict[str, Any], dict[str, Any]]:
        async with AsyncClient(settings) as aclient:
            with pytest.raises(InvalidInput, match="after until"):
                await aclient.usage(since="today", until="yesterday")
            return await aclient.usage(by="runner"), await aclient.usage(by="group")

    by_runner, by_group = asyncio.run(read())
    assert by_runner == json.loads(out)
    assert by_group["runner_seconds"] == by_runner["runner_seconds"]


# -- the whole path, real processes ------------------------------------------------------------


@pytest.fixture
def world(tmp_path: Path) -> Any:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    size = Size(agents=3, rate=0, job_seconds=(1.0,), before=0, after=0, repeats=1)
    cluster = Cluster(tmp_path, size, pod_count=1, writer_count=2)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


def test_real_runners_and_racing_writers_meter_each_job_once(world: Cluster) -> None:
    """Jobs sleeping 1 s on real agents, recorded by two worker-bridge processes; the installed
    `dispatcher usage` shows each job once, with at least its sleep as running time."""
    with Client(world.settings) as client:
        # the fault kit's 3 s start deadline can lapse on a loaded machine: a retried attempt is
        # fine here (usage meters the final one), a job failed for it is not what is tested
        ids = [client.submit("faults", world.payload(1.0), max_attempts=5) for _ in range(6)]
        for job_id in ids:
            assert client.wait(job_id, timeout=90)["status"] == "processed"
    records = world.job_records(ids)
    assert {r["status"] for r in records.values()} == {"processed"}
    with world.redis() as r:
        times = [r.hmget(world.keys.job(j), "started", "finished") for j in ids]
    expected = sum(int(f) - int(s) for s, f in times)
    done = subprocess.run(
        [DISPATCHER, "usage", "--json", "--by", "runner", "--since", "yesterday"],
        env=world.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["jobs"] == len(ids)
    assert report["runner_seconds"] == seconds(expected) >= len(ids) * 1.0
    assert sum(r["jobs"] for r in report["totals"]) == len(ids)
    assert {r["name"] for r in report["totals"]} <= {f"r{i}" for i in range(3)}
    # the writers may see the batch again (a pump's re-hand-out): nothing more is counted
    with world.redis() as r:
        wait_for(lambda: r.zcard(world.keys.outbox) == 0, 30, "outbox drained")
    again = subprocess.run(
        [DISPATCHER, "usage", "--json", "--since", "yesterday"],
        env=world.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(again.stdout)["jobs"] == len(ids)
