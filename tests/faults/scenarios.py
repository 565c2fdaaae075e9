"""The fault scenarios and how each one's row is counted.

Every scenario runs the same way (``run``): bring the cluster back to health, start a steady load
of jobs (``Producer``), wait until a third of the agents run jobs, inject the fault (repeated
``Size.repeats`` times), keep the load on until a job has started after the fault ended and for
``Size.after`` s more, then wait for every submitted job to reach a final status and for every
job process to be gone. Each job exits 0 and may run ``max_attempts`` = 5 times.

How a row counts (``count``), over the jobs this scenario submitted:

- submitted: submits that landed (a submit is retried with its own id until it does);
- processed: final status ``processed`` (completed, recorded by a writer) with exit code 0;
- failed: final status ``failed`` or ``canceled``: a job that never fails on its own, so the fault
  failed it. A job whose attempt the fault ended (its agent killed, its lease lapsed) and that was
  then run again and completed is *processed*, not failed; those are counted in ``retried``;
- lost: no final status within ``Size.settle`` s of the end of the load (stuck, or completed but
  never recorded), or no record at all;
- twice: (job, attempt) pairs that the ledger shows started more than once;
- orphans: job processes of this run still alive once every job is final, agents idle, after up
  to 10 s for them to go (found by a marker in their environment);
- retried: processed jobs whose last attempt was not their first; ended: attempts ended by the
  server (events ``lease_expired``, ``start_expired``, ``released``) over the scenario's jobs;
- resume: seconds from the end of a fault to the first job start in the ledger after it (the
  worst of the repeats).
  The end of a fault: kill -9 of a pod, writer, or agents: when it happened (agents: when they
  were started again); SIGSTOP: the SIGCONT; Redis: when it answers PING again; pub/sub kills:
  the last CLIENT KILL; flood: when the flood stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench import deps
from bench.flood import bad_requests
from tests.faults.cluster import FINAL, Cluster, Proc, Producer, job_processes, wait_for

RESUME_TARGET = 2.0
ENDED = frozenset({"lease_expired", "start_expired", "released"})


@dataclass
class Row:
    scenario: str
    submitted: int = 0
    processed: int = 0
    failed: int = 0
    lost: int = 0
    twice: int = 0
    orphans: int = 0
    resume: float | None = None
    retried: int = 0
    ended: int = 0
    note: str = ""
    details: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        out = []
        if self.submitted == 0:
            out.append("no job submitted")
        for name in ("failed", "lost", "twice", "orphans"):
            if getattr(self, name):
                out.append(f"{name} = {getattr(self, name)}")
        if self.resume is None or self.resume > RESUME_TARGET:
            out.append(f"resume = {self.resume} (target <= {RESUME_TARGET} s)")
        return out


HEADER = (
    f"{'scenario':<16} {'submitted':>9} {'processed':>9} {'failed':>6} {'lost':>4} "
    f"{'twice':>5} {'orphans':>7} {'resume s':>8} {'retried':>7} {'ended':>5}  note"
)


def format_row(row: Row) -> str:
    resume = "-" if row.resume is None else f"{row.resume:.2f}"
    return (
        f"{row.scenario:<16} {row.submitted:>9} {row.processed:>9} {row.failed:>6} "
        f"{row.lost:>4} {row.twice:>5} {row.orphans:>7} {resume:>8} {row.retried:>7} "
        f"{row.ended:>5}  {row.note}"
    )


def format_table(rows: list[Row], title: str) -> str:
    return "\n".join([title, HEADER, *(format_row(r) for r in rows)])


# -- the faults: each returns (when the fault ended, a note) --------------------------------------

Inject = Callable[[Cluster, int], tuple[float, str]]


def busiest_pod(cluster: Cluster) -> Proc:
    """The pod most runners are connected to (runners stay where a reconnect put them)."""
    assert cluster.lb is not None
    return cluster.pods[cluster.pod_ports.index(cluster.lb.busiest())]


def kill_pod(cluster: Cluster, rep: int) -> tuple[float, str]:
    pod = busiest_pod(cluster)
    held = connections(cluster, pod)
    pod.kill9()
    return time.time(), f"killed {pod.name} ({held} runner connections)"


def connections(cluster: Cluster, pod: Proc) -> int:
    assert cluster.lb is not None
    return cluster.lb.active[cluster.pod_ports[cluster.pods.index(pod)]]


def stop_pod(cluster: Cluster, rep: int) -> tuple[float, str]:
    """SIGSTOP until the other pods reaped it and a lease (3 s) has passed, then SIGCONT."""
    pod = busiest_pod(cluster)
    held = connections(cluster, pod)
    with cluster.redis() as client:
        before = client.zcard(cluster.keys.pods)
        stopped = time.monotonic()
        pod.send(signal.SIGSTOP)
        try:
            wait_for(
                lambda: (
                    client.zcard(cluster.keys.pods) < before and time.monotonic() - stopped > 3.5
                ),
                30,
                f"{pod.name}'s presence to lapse past the lease",
            )
        finally:
            pod.send(signal.SIGCONT)
    return (
        time.time(),
        f"{pod.name} ({held} runner connections) stopped {time.monotonic() - stopped:.1f} s",
    )


def restart_redis(cluster: Cluster, rep: int) -> tuple[float, str]:
    assert cluster.redis_proc is not None
    sig = signal.SIGKILL if rep % 2 == 0 else signal.SIGTERM
    cluster.redis_proc.stop(sig, timeout=10)
    # down long enough that every pod, writer and agent sees it gone (a reconnect is refused)
    wait_for(lambda: not cluster.redis_answers(), 5, "Redis to stop answering")
    time.sleep(0.5)
    cluster.start_redis()
    return time.time(), f"{signal.Signals(sig).name}, same port and AOF"


def kill_writer(cluster: Cluster, rep: int) -> tuple[float, str]:
    """SIGKILL a writer while it holds a batch. Both writers are frozen (SIGSTOP); results keep
    flowing into rq, so one of them soon holds a batch: rq set its ``current_job``, or its
    BLMOVE was served (Redis popped a batch for it) while it could not run. That one is killed,
    the other one thawed: the batch dies with its writer, deterministically."""
    for writer in cluster.writers:
        writer.send(signal.SIGSTOP)
    try:
        victim = wait_for(lambda: holding_batch(cluster), 20, "a frozen writer holding a batch")
        by_pid = {w.pid: w for w in cluster.writers}
        by_pid[victim].kill9()
    finally:
        for writer in cluster.writers:
            writer.send(signal.SIGCONT)
    return time.time(), f"{by_pid[victim].name} holding a batch"


def holding_batch(cluster: Cluster) -> int:
    """The pid of a (frozen) writer that holds a batch it has not finished, or 0: rq set its
    ``current_job``, or its BLMOVE was served (the batch is in rq's intermediate queue and the
    connection no longer blocked). A connection is matched to its writer by the local port."""
    live = {str(w.pid) for w in cluster.writers if w.alive()}
    for worker in cluster.rq_workers():
        if worker.get("pid") in live and worker.get("current_job"):
            return int(worker["pid"])
    psutil = deps.psutil()
    ports = {}
    for pid in live:
        with contextlib.suppress(psutil.Error):
            for conn in psutil.Process(int(pid)).net_connections("tcp"):
                ports[conn.laddr.port] = int(pid)
    with cluster.redis() as client:
        for conn in client.client_list():
            port = int(conn.get("addr", ":0").rsplit(":", 1)[1])
            served = conn.get("cmd") == "blmove" and "b" not in conn.get("flags", "")
            if served and port in ports:
                return ports[port]
    return 0


def kill_agents(cluster: Cluster, rep: int) -> tuple[float, str]:
    """kill -9 a sixth of the agents while they run a job, then start them again."""
    want = max(2, len(cluster.agents) // 6)

    def running() -> list[str]:
        with cluster.redis() as client:
            names = []
            for name, state in cluster.runner_states().items():
                job = client.hget(cluster.keys.runner(name), "job") if state == "busy" else None
                if job and client.hget(cluster.keys.job(job), "status") == "running":
                    names.append(name)
            return names if len(names) >= want else []

    victims = wait_for(running, 20, f"{want} agents running a job")[:want]
    with cluster.redis() as client:
        jobs = {str(client.hget(cluster.keys.runner(name), "job")) for name in victims}
    by_name = {a.name: a for a in cluster.agents}
    for name in victims:
        by_name[name].kill9()
    left = len(job_processes(cluster.mark, jobs))
    for name in victims:
        by_name[name].start()
    return time.time(), f"{want} agents; {left} processes of their jobs outlived them"


def kill_pubsub(cluster: Cluster, rep: int) -> tuple[float, str]:
    """CLIENT KILL TYPE pubsub every 0.25 s for 3 s."""
    killed = 0
    with cluster.redis() as client:
        end = time.monotonic() + 3
        while time.monotonic() < end:
            killed += int(client.execute_command("CLIENT", "KILL", "TYPE", "pubsub"))
            time.sleep(0.25)
    return time.time(), f"{killed} pub/sub connections killed"


def flood(cluster: Cluster, rep: int) -> tuple[float, str]:
    """Bad handshakes at the pods from 64 connections for 4 s (from 127.0.0.2, so the per-source
    limits they trigger are not the runners' address)."""
    tally: dict[str, int] = {}
    requests = bad_requests()
    ports = cluster.pod_ports

    async def one(port: int, data: bytes) -> str:
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, local_addr=("127.0.0.2", 0)
            )
        except OSError:
            return "connect-error"
        try:
            writer.write(data)
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), 10)
            parts = line.split()
            return parts[1].decode() if len(parts) > 1 else "closed"
        except (OSError, TimeoutError):
            return "reset"
        finally:
            writer.close()

    async def loop(offset: int) -> None:
        i = offset
        while True:
            status = await one(ports[i % len(ports)], requests[i % len(requests)])
            tally[status] = tally.get(status, 0) + 1
            i += 1

    async def main() -> None:
        tasks = [asyncio.create_task(loop(i)) for i in range(64)]
        await asyncio.sleep(4)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    thread.join(30)
    sent = sum(tally.values())
    top = ", ".join(f"{k}:{v}" for k, v in sorted(tally.items(), key=lambda kv: -kv[1])[:4])
    return time.time(), f"{sent} bad handshakes ({top})"


SCENARIOS: dict[str, Inject] = {
    "pod-kill-9": kill_pod,
    "pod-sigstop": stop_pod,
    "redis-restart": restart_redis,
    "writer-kill-9": kill_writer,
    "agent-kill-9": kill_agents,
    "pubsub-kill": kill_pubsub,
    "handshake-flood": flood,
}


# -- one scenario end to end ----------------------------------------------------------------------


def run(cluster: Cluster, name: str) -> Row:
    inject = SCENARIOS[name]
    size = cluster.size
    cluster.heal()
    first_line = len(cluster.ledger.entries())
    with cluster.redis() as client:
        last = client.xrevrange(cluster.keys.events, count=1)
    since = last[0][0] if last else "0"
    producer = Producer(cluster)
    producer.start()
    notes = []
    ends: list[float] = []
    try:
        busy = max(2, len(cluster.agents) // 3)
        wait_for(
            lambda: list(cluster.runner_states().values()).count("busy") >= busy,
            30,
            f"{busy} agents busy",
        )
        time.sleep(size.before)  # load shape: the fault hits a system in full flow
        for rep in range(size.repeats):
            if rep:
                cluster.heal(idle=False)
                time.sleep(size.before)
            end, note = inject(cluster, rep)
            ends.append(end)
            notes.append(note)
        wait_for(
            lambda: any(e[0] == "start" and e[4] >= ends[-1] for e in cluster.ledger.entries()),
            30,
            "a job to start after the fault",
        )
        time.sleep(size.after)  # load shape: more work after the fault
    finally:
        producer.stop()
    row = Row(name, note="; ".join(dict.fromkeys(notes)))
    count(cluster, row, producer, first_line, ends)
    with cluster.redis() as client:
        events = client.xrange(cluster.keys.events, f"({since}", "+")
    wanted = set(producer.submitted)
    row.ended = sum(
        1 for _, fields in events if fields.get("event") in ENDED and fields.get("job") in wanted
    )
    return row


def count(
    cluster: Cluster, row: Row, producer: Producer, first_line: int, ends: list[float]
) -> None:
    ids = list(producer.submitted)
    row.submitted = len(ids)
    if producer.gave_up:
        row.details.append(f"submits that never landed: {len(producer.gave_up)}")

    def all_final() -> bool:
        return all(r.get("status") in FINAL for r in cluster.job_records(ids).values())

    with contextlib.suppress(AssertionError):
        wait_for(all_final, cluster.size.settle, "every job final", interval=0.2)
    records = cluster.job_records(ids)
    for job_id, rec in records.items():
        status = rec.get("status")
        if status == "processed" and rec.get("exit_code") == "0":
            row.processed += 1
        elif status in FINAL:
            row.failed += 1
            row.details.append(f"{job_id}: {status} attempt {rec.get('attempt')}: {rec}")
        else:
            row.lost += 1
            row.details.append(f"{job_id}: not final: {rec}")
        if int(rec.get("attempt") or 0) > 1:
            row.retried += 1
    wanted = set(ids)
    entries = [e for e in cluster.ledger.entries()[first_line:] if e[1] in wanted]
    starts: dict[tuple[str, int], list[int]] = {}
    for kind, job, attempt, pid, _ in entries:
        if kind == "start":
            starts.setdefault((job, attempt), []).append(pid)
    for (job, attempt), pids in starts.items():
        if len(pids) > 1:
            row.twice += 1
            row.details.append(f"{job} attempt {attempt} started {len(pids)} times: pids {pids}")
    resumes = []
    for end in ends:  # the worst of the repeats
        after = [e[4] for e in entries if e[0] == "start" and e[4] >= end]
        resumes.append(min(after) - end if after else None)
    row.resume = (
        None if None in resumes or not resumes else max(r for r in resumes if r is not None)
    )
    with contextlib.suppress(AssertionError):
        wait_for(lambda: not job_processes(cluster.mark), 10, "job processes gone", interval=0.1)
    left = job_processes(cluster.mark)
    row.orphans = len(left)
    if left:
        row.details.append(f"job processes left: {left}")
