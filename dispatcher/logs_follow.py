"""Read a job's live log from Redis, and follow it until the job is final (sync and async).

Each turn reads one page with ``dispatch_v3_log_read`` (chunks and the job's status at one
moment); while the job is not final and nothing new came, the reader blocks on the stream with
``XREAD BLOCK`` for at most ``wait`` seconds, so a chunk shows at once and a job that ends
without writing anything more is noticed within ``wait``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import redis
import redis.asyncio

from dispatcher import functions, logs
from dispatcher.errors import NotFound
from dispatcher.keys import Keys

DEFAULT_WAIT = 1.0


def _check(page: logs.Page, job_id: str, first: bool) -> bool:
    """Whether to go on after ``page``; an unknown job is an error on the first read (later, the
    record expired while it was followed: the log ends there)."""
    if page.status == "":
        if first:
            raise NotFound(f"no such job: {job_id}")
        return False
    return True


def _done(page: logs.Page, follow: bool) -> bool:
    if len(page.chunks) == page.asked:
        return False  # a full page: read on at once
    return page.complete or not follow


def read_log(
    client: redis.Redis,
    keys: Keys,
    job_id: str,
    *,
    follow: bool = False,
    wait: float = DEFAULT_WAIT,
    after: str = logs.START,
) -> Iterator[logs.LogChunk]:
    """The job's chunks after ``after``; with ``follow``, until the job is final."""
    cursor, first = after, True
    while True:
        page = functions.run_sync(client, logs.read(keys, job_id, cursor))
        if not _check(page, job_id, first):
            return
        first = False
        yield from page.chunks
        cursor = page.after(cursor)
        if _done(page, follow):
            return
        if len(page.chunks) < page.asked and not page.final:
            client.xread({keys.log(job_id): cursor}, count=1, block=max(1, int(wait * 1000)))


async def read_log_async(
    client: redis.asyncio.Redis,
    keys: Keys,
    job_id: str,
    *,
    follow: bool = False,
    wait: float = DEFAULT_WAIT,
    after: str = logs.START,
) -> AsyncIterator[logs.LogChunk]:
    """The async twin of ``read_log``."""
    cursor, first = after, True
    while True:
        page = await functions.run(client, logs.read(keys, job_id, cursor))
        if not _check(page, job_id, first):
            return
        first = False
        for chunk in page.chunks:
            yield chunk
        cursor = page.after(cursor)
        if _done(page, follow):
            return
        if len(page.chunks) < page.asked and not page.final:
            await client.xread({keys.log(job_id): cursor}, count=1, block=max(1, int(wait * 1000)))
