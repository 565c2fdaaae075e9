"""`dispatcher submit | cancel | job | status`: the producer's and the operator's view of jobs."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from dispatcher.cli_common import SubParsers, add_json_flag, print_json
from dispatcher.client import Client
from dispatcher.errors import InvalidInput
from dispatcher.settings import Settings


def register(subparsers: SubParsers, common: argparse.ArgumentParser) -> None:
    submit = subparsers.add_parser(
        "submit",
        parents=[common],
        help="submit a job",
        usage="%(prog)s --spec S [options] [-- CMD ARG...]",
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
    submit.add_argument("--payload", help="the job's JSON payload (an object when CMD is given)")
    add_json_flag(submit)
    submit.add_argument(
        "--wait", action="store_true", help="wait for a final state and print the job record"
    )
    submit.add_argument(
        "command", nargs="*", metavar="CMD", help="command and arguments, stored as payload.command"
    )
    submit.set_defaults(handler=submit_job)

    cancel = subparsers.add_parser("cancel", parents=[common], help="cancel a job")
    cancel.add_argument("job_id", metavar="ID")
    add_json_flag(cancel)
    cancel.set_defaults(handler=cancel_job)

    job = subparsers.add_parser("job", parents=[common], help="show a job record")
    job.add_argument("job_id", metavar="ID")
    add_json_flag(job)
    job.set_defaults(handler=show_job)

    status = subparsers.add_parser("status", parents=[common], help="show the namespace's state")
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
    with Client(settings) as client:
        job_id = client.submit(
            args.spec,
            payload,
            priority=args.priority,
            timeout=args.timeout,
            max_attempts=args.max_attempts,
        )
        if not args.wait:
            print_json({"id": job_id}) if args.json else print(job_id)
            return 0
        try:
            record = client.wait(job_id)
        except KeyboardInterrupt:
            print(f"dispatcher: stopped waiting; job {job_id} goes on", file=sys.stderr)
            raise
    print_json(record)
    if record["status"] == "processed":
        return 0
    # a CI caller can chain on the exit status: anything but success is non-zero
    print(
        f"dispatcher: job {job_id} {record['status']}: {record['error'] or ''}".rstrip(": "),
        file=sys.stderr,
    )
    return 1


def cancel_job(args: argparse.Namespace, settings: Settings) -> int:
    with Client(settings) as client:
        canceled = client.cancel(args.job_id)
        status = "canceled" if canceled else client.get(args.job_id)["status"]
    if args.json:
        print_json({"id": args.job_id, "canceled": canceled, "status": status})
    elif canceled:
        print(f"canceled {args.job_id}")
    else:
        print(f"job {args.job_id} is already {status}")
    return 0


def show_job(args: argparse.Namespace, settings: Settings) -> int:
    with Client(settings) as client:
        record = client.get(args.job_id)
    if args.json:
        print_json(record)
    else:
        print(job_summary(record))
    return 0


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


def show_status(args: argparse.Namespace, settings: Settings) -> int:
    with Client(settings) as client:
        snapshot = client.status()
    if args.json:
        print_json(snapshot)
    else:
        print(status_summary(snapshot))
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
