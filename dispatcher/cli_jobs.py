"""`dispatcher submit | cancel | job | jobs | status`: the producer's and the operator's view of
jobs.

Wherever a job id is taken, a unique prefix of it is enough (``Client.resolve``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any

from dispatcher.cli_common import SubParsers, add_json_flag, epilog, print_json
from dispatcher.client import Client, EventEntry
from dispatcher.errors import InvalidInput
from dispatcher.lookup import MAX_LIMIT, STATUSES
from dispatcher.settings import Settings
from dispatcher.submission import check_spec

EXIT_WAIT_TIMEOUT = 124  # as timeout(1): the job goes on, only the waiting stopped
EXIT_INTERRUPTED = 130

SUBMIT_EXAMPLES = """\
  dispatcher submit --spec local -- make test             print the id, return at once
  dispatcher submit --spec local --wait -- sh -c 'exit 3' wait; exit status 1 when it fails
  dispatcher submit --spec local --wait-timeout 600 --json -- ./ci.sh
  dispatcher submit --spec local --retries 2 --retry-delay 30 -- ./flaky-test.sh
  dispatcher submit --spec local --payload '{"script": "make -j8", "env": {"CI": "1"}}'
  dispatcher submit --spec gpu --any-payload --payload '{"model": "x"}'  your runner's format"""

SUBMIT_NOTES = """\
payload (what the reference runner, dispatch-runner, understands):
  command   argv list, run directly (the words after -- become payload.command)
  script    shell text, run by /bin/sh -c                      (exactly one of command, script)
  env       object of strings added to the job's environment
  cwd       directory relative to the job's fresh work directory
  outputs   relative paths read back into the job's results

retries: --max-attempts counts infrastructure failures (the runner was lost: lease expired,
  runner gone); --retries counts failures of the command itself (the runner reported failed).
  --wait returns only the final outcome: a failed attempt that is retried is not one.

output: the job id first (with --json: {"id": ...}); with --wait, the final record after it (text,
or one more JSON line). Progress and warnings go to stderr.
exit status: 0 submitted, or processed when waiting; 1 failed or canceled, or an error;
124 --wait-timeout passed (the job goes on); 130 interrupted (the job goes on); 2 bad usage."""

JOBS_NOTES = f"""\
where jobs are found: every pending job (its spec's queue), every claimed or running job (the
leases), and the final jobs the event stream still names (it keeps about the last 10,000 events,
a few per job). An older record stays readable with `dispatcher job ID` until its retention ends.
Statuses: {", ".join(STATUSES)}."""

ID_NOTES = """\
ID may be any unique prefix of a job id (as the demo's log shows them); an ambiguous prefix is
refused with the matching ids."""


def _seconds(text: str) -> float:
    """argparse type: a finite number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a number of seconds > 0")
    return value


def _limit(text: str) -> int:
    """argparse type: a whole number from 1 to MAX_LIMIT."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"{value} is out of range (1..{MAX_LIMIT})")
    return value


def register(subparsers: SubParsers, common: argparse.ArgumentParser) -> None:
    submit = subparsers.add_parser(
        "submit",
        parents=[common],
        help="submit a job",
        usage="%(prog)s --spec S [options] [-- CMD ARG...]",
        description="Submit a job for runners of spec S. Its payload is --payload (JSON), with "
        "CMD ARG... (after --) as payload.command.",
        epilog=epilog(SUBMIT_EXAMPLES, notes=SUBMIT_NOTES),
    )
    submit.add_argument("--spec", required=True, help="runner spec the job needs")
    submit.add_argument("--priority", type=int, default=0, help="larger runs first (default 0)")
    submit.add_argument("--timeout", type=float, help="seconds, counted from start (3600)")
    submit.add_argument(
        "--max-attempts",
        type=int,
        default=1,
        help="attempts allowed when a runner is lost (default 1)",
    )
    submit.add_argument(
        "--group",
        metavar="NAME",
        help="concurrency group: at most its limit of jobs run at once (dispatcher group set)",
    )
    submit.add_argument(
        "--retries",
        type=int,
        default=0,
        metavar="N",
        help="queue the job again up to N times when its command fails (default 0)",
    )
    submit.add_argument(
        "--retry-delay",
        type=float,
        default=0,
        metavar="SECONDS",
        help="wait this long before each such retry (default 0)",
    )
    submit.add_argument("--payload", help="the job's JSON payload (an object when CMD is given)")
    submit.add_argument(
        "--any-payload",
        action="store_true",
        help="send a payload the reference runner would refuse (for runners of your own)",
    )
    add_json_flag(submit)
    submit.add_argument(
        "--wait", action="store_true", help="wait for a final state and print the job record"
    )
    submit.add_argument(
        "--wait-timeout",
        type=_seconds,
        metavar="SECONDS",
        help="stop waiting after this long (implies --wait; exit status 124, the job goes on)",
    )
    submit.add_argument(
        "command", nargs="*", metavar="CMD", help="command and arguments, stored as payload.command"
    )
    submit.set_defaults(handler=submit_job)

    cancel = subparsers.add_parser(
        "cancel",
        parents=[common],
        help="cancel a job",
        description="Cancel a job: a pending one leaves its queue, a running one is stopped.",
        epilog=epilog(
            "  dispatcher cancel 3c1e0f2a\n  dispatcher cancel 3c1e0f2a --json", notes=ID_NOTES
        ),
    )
    cancel.add_argument("job_id", metavar="ID")
    add_json_flag(cancel)
    cancel.set_defaults(handler=cancel_job)

    job = subparsers.add_parser(
        "job",
        parents=[common],
        help="show a job record",
        description="Show one job's record: status, runner, times, payload, results, output tails.",
        epilog=epilog(
            "  dispatcher job 3c1e0f2a\n  dispatcher job 3c1e0f2a --json", notes=ID_NOTES
        ),
    )
    job.add_argument("job_id", metavar="ID")
    add_json_flag(job)
    job.set_defaults(handler=show_job)

    jobs = subparsers.add_parser(
        "jobs",
        parents=[common],
        help="list jobs, newest first",
        description="List jobs, newest submission first, filtered by status, spec and runner.",
        epilog=epilog(
            "  dispatcher jobs\n"
            "  dispatcher jobs --status failed --limit 5\n"
            "  dispatcher jobs --spec local --runner local-1 --json",
            notes=JOBS_NOTES,
        ),
    )
    jobs.add_argument("--status", choices=STATUSES, help="only jobs in this status now")
    jobs.add_argument("--spec", help="only jobs of this spec")
    jobs.add_argument("--runner", help="only jobs whose current or last attempt ran there")
    jobs.add_argument(
        "--limit", type=_limit, default=20, metavar="N", help=f"at most N (1..{MAX_LIMIT}; 20)"
    )
    add_json_flag(jobs)
    jobs.set_defaults(handler=list_jobs)

    status = subparsers.add_parser(
        "status",
        parents=[common],
        help="show the namespace's state",
        description="Pods, runners, jobs in flight, queues per spec, counters, results queue.",
        epilog=epilog("  dispatcher status\n  dispatcher status --json"),
    )
    add_json_flag(status)
    status.set_defaults(handler=show_status)


def build_payload(payload_json: str | None, command: list[str]) -> Any:
    """``--payload`` parsed, with ``command`` set on top as ``payload["command"]``."""
    payload: Any = None
    if payload_json is not None:
        try:
            payload = json.loads(payload_json)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"--payload is not valid JSON: {exc}") from None
    if command:
        if payload is None:
            payload = {}
        if not isinstance(payload, dict):
            raise InvalidInput("--payload must be a JSON object when a command is given")
        payload = {**payload, "command": list(command)}
    return payload


def submit_job(args: argparse.Namespace, settings: Settings) -> int:
    payload = build_payload(args.payload, args.command)
    wait = args.wait or args.wait_timeout is not None
    with Client(settings) as client:
        # read first: a Redis that does not answer is one line at once (the submit itself retries
        # connection errors for a while, so that a Redis restart loses no submission)
        runners = client.runners()
        since = client.last_event_id() if wait else "$"  # progress: every event of the job
        try:
            job_id = client.submit(
                args.spec,
                payload,
                priority=args.priority,
                timeout=args.timeout,
                max_attempts=args.max_attempts,
                retries=args.retries,
                retry_delay=args.retry_delay,
                group=args.group,
                check_payload=not args.any_payload,
            )
        except ValueError as exc:
            if args.payload is None and not args.command and "payload" in str(exc):
                raise InvalidInput(
                    f"{exc}: give the command after --, or --payload '{{\"script\": ...}}'"
                ) from None
            raise
        print_json({"id": job_id}) if args.json else print(job_id)
        sys.stdout.flush()  # the id is out before any wait, whatever happens next
        warn_if_unserved(runners, args.spec)
        if not wait:
            return 0
        try:
            record = client.wait(
                job_id, args.wait_timeout, progress=lambda e: report(job_id, e), since=since
            )
        except TimeoutError:
            current = client.get(job_id)["status"]
            print(
                f"dispatcher: stopped waiting after {args.wait_timeout:g} s; job {job_id} is "
                f"{current} and goes on (dispatcher job {job_id[:8]})",
                file=sys.stderr,
            )
            return EXIT_WAIT_TIMEOUT
        except KeyboardInterrupt:
            print(f"dispatcher: stopped waiting; job {job_id} goes on", file=sys.stderr)
            return EXIT_INTERRUPTED
    print_json(record) if args.json else print(job_summary(record))
    if record["status"] == "processed":
        return 0
    # a CI caller can chain on the exit status: anything but success is non-zero
    print(
        f"dispatcher: job {job_id} {record['status']}: {record['error'] or ''}".rstrip(": "),
        file=sys.stderr,
    )
    return 1


def warn_if_unserved(runners: list[dict[str, Any]], spec: str) -> None:
    """One stderr line when no registered runner serves ``spec`` (the job would wait forever),
    naming the specs that have runners; a shorter one when its runners are all offline."""
    serving = [r for r in runners if spec in r["specs"]]
    if not serving:
        served = sorted({s for r in runners for s in r["specs"]})
        where = f"runners serve: {', '.join(served)}" if served else "there are no runners at all"
        print(
            f"dispatcher: warning: no runner is registered for spec {spec!r}; the job waits "
            f"until one is ({where})",
            file=sys.stderr,
        )
    elif all(r["state"] == "offline" for r in serving):
        names = ", ".join(r["name"] for r in serving)
        print(
            f"dispatcher: note: the runners of spec {spec!r} are offline now ({names})",
            file=sys.stderr,
        )


PROGRESS: dict[str, str] = {
    "claimed": "claimed by {runner} (attempt {attempt})",
    "running": "running on {runner}",
    "start_expired": "not started by {runner} in time; queued again",
    "lease_expired": "lost its runner {runner} (lease expired)",
    "released": "back in the queue ({runner} did not ask again)",
    "retry": "attempt {attempt} failed on {runner}; retry {retry} in {delay_ms} ms",
    "completed": "completed; a result writer records it",
    "failed": "failed: {error}",
    "canceled": "canceled ({error})",
    "processed": "processed",
}


def report(job_id: str, event: EventEntry) -> None:
    """One stderr line per status change of the job being waited for."""
    template = PROGRESS.get(event.get("event", ""))
    if template is None:
        return  # submitted (the id is printed already), recorded, ...
    fields = {"runner": "?", "attempt": "?", "error": "", **event}
    stamp = time.strftime("%H:%M:%S", time.localtime(int(event.get("ts") or 0) / 1000))
    print(f"dispatcher: {stamp} job {job_id[:8]} {template.format(**fields)}", file=sys.stderr)


def cancel_job(args: argparse.Namespace, settings: Settings) -> int:
    with Client(settings) as client:
        job_id = client.resolve(args.job_id)
        canceled = client.cancel(job_id)
        status = "canceled" if canceled else client.get(job_id)["status"]
    if args.json:
        print_json({"id": job_id, "canceled": canceled, "status": status})
    elif canceled:
        print(f"canceled {job_id}")
    else:
        print(f"job {job_id} is already {status}")
    return 0


def show_job(args: argparse.Namespace, settings: Settings) -> int:
    with Client(settings) as client:
        record = client.get(client.resolve(args.job_id))
    if args.json:
        print_json(record)
    else:
        print(job_summary(record))
    return 0


def list_jobs(args: argparse.Namespace, settings: Settings) -> int:
    if args.spec is not None:
        check_spec(args.spec)
    with Client(settings) as client:
        found = client.jobs(
            status=args.status, spec=args.spec, runner=args.runner, limit=args.limit
        )
    if args.json:
        print_json(found)
    elif not found:
        print("no jobs")
    else:
        print(jobs_table(found))
    return 0


def jobs_table(found: list[dict[str, Any]]) -> str:
    header = ("ID", "STATUS", "SPEC", "RUNNER", "CREATED", "OUTCOME")
    rows = [header] + [
        (
            j["id"],
            j["status"],
            j["spec"],
            j["runner"] or "-",
            (j["created"] or "-").replace("T", " ")[:19],
            _outcome(j),
        )
        for j in found
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _outcome(job: dict[str, Any]) -> str:
    if job["error"]:
        return str(job["error"])[:40]
    return "" if job["exit_code"] is None else f"exit {job['exit_code']}"


def job_summary(record: dict[str, Any]) -> str:
    """A job record as aligned text lines; the output tails at the end."""
    lines = [
        f"job       {record['id']}",
        f"spec      {record['spec']}",
        f"status    {record['status']}",
    ]
    if record["error"]:
        lines.append(f"error     {record['error']}")
    runner = f" on {record['runner']}" if record["runner"] else ""
    lines.append(f"attempt   {record['attempt']} of max {record['max_attempts']}{runner}")
    lines.append(f"priority  {record['priority']}, timeout {record['timeout']} s")
    lines += retry_lines(record)
    for field in ("created", "claimed", "started", "finished", "exit_code"):
        if record[field] is not None:
            lines.append(f"{field.replace('_', ' '):<9} {record[field]}")
    lines.append(f"payload   {json.dumps(record['payload'], ensure_ascii=False)}")
    if record["results"] is not None:
        lines.append(f"results   {json.dumps(record['results'], ensure_ascii=False)}")
    for stream in ("stdout", "stderr"):
        if record[stream]:
            lines += [f"--- {stream} (tail) ---", record[stream].rstrip("\n")]
    return "\n".join(lines)


def retry_lines(record: dict[str, Any]) -> list[str]:
    """The retries used and one line per ended attempt (the record's history)."""
    lines = []
    if record.get("retries"):
        delay = f", {record['retry_delay']} s apart" if record.get("retry_delay") else ""
        lines.append(f"retries   {record['retries_used']} of {record['retries']} used{delay}")
    if record.get("retry_at"):
        lines.append(f"retry at  {record['retry_at']}")
    if record.get("attempts"):
        lines.append("attempts  (ended, oldest first)")
    for a in record.get("attempts") or []:
        code = "" if a["exit_code"] is None else f" exit {a['exit_code']}"
        error = f": {a['error']}" if a["error"] else ""
        retried = " (retried)" if a["retried"] else ""
        on = a["runner"] or "-"
        lines.append(f"  #{a['attempt']} {on} {a['status']}{code}{retried}{error}"[:160])
    return lines


def show_status(args: argparse.Namespace, settings: Settings) -> int:
    with Client(settings) as client:
        snapshot = client.status()
    if args.json:
        print_json(snapshot)
    else:
        from dispatcher.cli_human import print_status  # rich, only for the text view

        print_status(snapshot)
    return 0


def status_summary(s: dict[str, Any]) -> str:
    runners, res = s["runners"], s["results"]
    lines = [
        f"namespace {s['namespace']} at {s['time']}",
        f"pods      {len(s['pods'])} live" + (f": {', '.join(s['pods'])}" if s["pods"] else ""),
        f"runners   {runners['total']} ({runners['idle']} idle, {runners['busy']} busy, "
        f"{runners['offline']} offline)",
        f"in flight {s['leases']} jobs claimed or running",
        f"results   {res['queued']} queued, {res['retrying']} retrying, {res['failed']} failed "
        f"(rq queue {res['queue']})",
    ]
    if s["specs"]:
        width = max(len(spec) for spec in s["specs"])
        lines.append(f"{'spec':<{width}}  pending  idle runners")
        lines += [
            f"{spec:<{width}}  {v['pending']:>7}  {v['idle_runners']:>12}"
            for spec, v in s["specs"].items()
        ]
    if s["counters"]:
        lines.append("counters  " + " ".join(f"{k}={v}" for k, v in s["counters"].items()))
    return "\n".join(lines)
