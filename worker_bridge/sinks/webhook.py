"""The ``webhook`` sink: one signed HTTP POST per final job.

The body is the job's JSON document (``JobRecord.document``). Headers: ``X-Dispatcher-Signature:
sha256=<hex HMAC-SHA256 of the body with DISPATCHER_WEBHOOK_SECRET>`` and ``X-Dispatcher-Delivery``
(namespace:job:attempt:status, the same on every retry, so a receiver can drop repeats). Any 2xx is
a delivery; anything else, or no answer within the timeout, stops the batch: the records delivered
so far are kept, the rest are retried through rq's Retry with back-off.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from urllib.parse import urlsplit

import httpx

from dispatcher.errors import ConfigError
from worker_bridge.sinks.records import JobRecord

SIGNATURE_HEADER = "X-Dispatcher-Signature"
DELIVERY_HEADER = "X-Dispatcher-Delivery"


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def delivery_id(job: JobRecord) -> str:
    return f"{job.namespace}:{job.job_id}:{job.attempt}:{job.fields.get('status', '')}"


class WebhookSink:
    name = "webhook"

    def __init__(self, url: str, secret: str, timeout: float) -> None:
        self.url, self.secret, self.timeout = url, secret, timeout
        self._client: httpx.Client | None = None

    def check(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"DISPATCHER_WEBHOOK_URL={self.url!r} is not an http(s) URL")
        if not self.secret:
            raise ConfigError("DISPATCHER_WEBHOOK_SECRET is unset: webhook bodies must be signed")

    def _http(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(timeout=self.timeout, follow_redirects=False)
        return self._client

    def write(self, jobs: list[JobRecord]) -> None:
        from worker_bridge.sinks import SinkFailure

        for done, job in enumerate(jobs):
            body = json.dumps(job.document(), separators=(",", ":")).encode()
            headers = {
                "Content-Type": "application/json",
                SIGNATURE_HEADER: sign(self.secret, body),
                DELIVERY_HEADER: delivery_id(job),
            }
            try:
                response = self._http().post(self.url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                self.close()
                raise SinkFailure(f"webhook: {type(exc).__name__}: {exc}", done) from None
            if not response.is_success:
                raise SinkFailure(f"webhook: HTTP {response.status_code}", done)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
