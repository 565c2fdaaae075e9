"""The sample jobs of `dispatcher up --demo`: one succeeds, one fails, one is canceled."""

from __future__ import annotations

from typing import Any

from dispatcher.client import Client

SAMPLES: dict[str, dict[str, Any]] = {
    "succeeds": {"command": ["sh", "-c", "echo hello from $(hostname); uname -sm"]},
    "fails": {"script": "echo 'about to fail' >&2; exit 3"},
    "canceled": {"command": ["sleep", "300"]},
}
FINAL_EVENTS = ("processed", "failed", "canceled")


class Demo:
    """Submits the samples and reports how each ended, driven by the event stream."""

    def __init__(self, client: Client, spec: str) -> None:
        self.client = client
        self.spec = spec
        self.jobs: dict[str, str] = {}  # job id -> sample name
        self.ended: dict[str, str] = {}

    def submit(self) -> None:
        for name, payload in SAMPLES.items():
            job_id = self.client.submit(self.spec, payload, timeout=600)
            self.jobs[job_id] = name
            print(f"demo: submitted {name!r} as {job_id}", flush=True)

    def on_event(self, fields: dict[str, Any]) -> None:
        job_id, event = fields.get("job", ""), fields.get("event", "")
        name = self.jobs.get(job_id)
        if name is None:
            return
        if name == "canceled" and event == "running":
            self.client.cancel(job_id)
        if event in FINAL_EVENTS and job_id not in self.ended:
            self.ended[job_id] = event
            record = self.client.get(job_id)
            detail = record.get("error") or (record.get("stdout") or "").strip()
            print(f"demo: {name!r} ended {event}  ({detail})", flush=True)
            if len(self.ended) == len(self.jobs):
                print("demo: all sample jobs ended; Ctrl-C to stop", flush=True)
