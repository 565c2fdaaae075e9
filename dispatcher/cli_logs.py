"""`dispatcher logs ID [--follow] [--json]`: a job's live output (protocol 1.1 `log`)."""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from dispatcher.cli_common import SubParsers, add_json_flag, epilog, print_json
from dispatcher.client import Client
from dispatcher.logs import LogChunk
from dispatcher.settings import Settings

LOGS_NOTES = """\
output: stdout and stderr chunks in the order the dispatcher stored them, merged on stdout; a
line '--- attempt N ---' where a later attempt of the job begins; a note from the dispatcher when
chunks were dropped past DISPATCHER_LOG_MAX_BYTES. With --json, one object per chunk and line:
{"id", "attempt", "seq", "stream" (stdout, stderr or note), "data"}.
Logs are best effort (a runner that reconnects may lose a little output) and expire with the job
record. exit status: 0 printed (with --follow: the job is final); 1 unknown job or an error."""


def register(subparsers: SubParsers, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "logs",
        parents=[common],
        help="print a job's live output",
        description="Print the output a job's runner streamed so far; with --follow, print it as "
        "it arrives and return when the job is final.",
        epilog=epilog(
            "  dispatcher logs 3f2a\n  dispatcher logs 3f2a --follow\n"
            "  dispatcher logs 3f2a --json | jq -r 'select(.stream == \"stderr\") | .data'",
            notes=LOGS_NOTES,
        ),
    )
    parser.add_argument("job_id", metavar="ID", help="job id (or a unique prefix)")
    parser.add_argument(
        "-f", "--follow", action="store_true", help="keep printing until the job is final"
    )
    add_json_flag(parser)
    parser.set_defaults(handler=logs)


def logs(args: argparse.Namespace, settings: Settings) -> int:
    with Client(settings) as client:
        job_id = client.resolve(args.job_id)
        printer = ChunkPrinter(sys.stdout)
        for chunk in client.logs(job_id, follow=args.follow):
            if args.json:
                print_json(chunk.as_json())
                sys.stdout.flush()
            else:
                printer.write(chunk)
    return 0


class ChunkPrinter:
    """Chunks as plain text, with a header where a later attempt begins."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.attempt = 0
        self.at_line_start = True

    def write(self, chunk: LogChunk) -> None:
        if self.attempt and chunk.attempt != self.attempt:
            start = "" if self.at_line_start else "\n"
            self.out.write(f"{start}--- attempt {chunk.attempt} ---\n")
        self.attempt = chunk.attempt
        self.out.write(chunk.data)
        if chunk.data:
            self.at_line_start = chunk.data.endswith("\n")
        self.out.flush()
