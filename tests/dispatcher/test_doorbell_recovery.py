"""The doorbell comes back after any failure, not only Redis errors (a real subscription)."""

from __future__ import annotations

import asyncio

from dispatcher.pod.bells import Bell
from dispatcher.pod.doorbell import Doorbell
from dispatcher.settings import Settings
from tests.dispatcher.support import RClient, eventually


async def test_an_unexpected_error_in_the_doorbell_does_not_end_it(
    settings: Settings, rclient: RClient
) -> None:
    channel = f"{settings.namespace}:pod:x:bell"
    rung: list[Bell] = []
    confirmations = 0

    async def on_subscribed() -> None:
        nonlocal confirmations
        confirmations += 1
        if confirmations == 1:
            raise RuntimeError("a bug in the reconcile")

    bell = Doorbell(settings, channel, rung.append, on_subscribed)
    task = asyncio.create_task(bell.run())
    try:
        await eventually(lambda: confirmations == 2 and bell.live, 5.0, what="resubscribed")
        rclient.spublish(channel, "r1")
        await eventually(lambda: rung == [Bell("r1")], 5.0, what="a bell after the recovery")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
