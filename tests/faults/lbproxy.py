"""A small load-balancing TCP proxy for the fault suite: one port in front of several pods.

Each accepted connection goes to the next upstream in round-robin order; an upstream that refuses
(or does not accept within ``connect_timeout``) is skipped for that connection, so a pod that was
killed costs a runner one refused try at most, never a connection to nowhere. With every upstream
refusing, the client's connection is closed at once (the runner backs off and tries again).

It runs on its own asyncio loop in a daemon thread, so the test's blocking calls never stall the
runners' traffic. Bytes are copied as they come; a side that closes closes the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading


class LoadBalancer:
    def __init__(self, upstreams: list[int], connect_timeout: float = 1.0) -> None:
        self.upstreams = list(upstreams)
        self.connect_timeout = connect_timeout
        self.port = 0
        self.accepted = 0
        self.skipped = 0  # upstream connects refused or timed out
        self.active = dict.fromkeys(self.upstreams, 0)  # open connections per upstream port
        self._next = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()
        server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self._loop
        ).result(10)
        self._server = server
        self.port = server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()

    async def _connect_upstream(
        self,
    ) -> tuple[int, asyncio.StreamReader, asyncio.StreamWriter] | None:
        for _ in range(len(self.upstreams)):
            port = self.upstreams[self._next % len(self.upstreams)]
            self._next += 1
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port), self.connect_timeout
                )
            except (OSError, TimeoutError):
                self.skipped += 1
                continue
            return port, reader, writer
        return None

    def busiest(self) -> int:
        """The upstream port with the most open connections now."""
        return max(self.upstreams, key=lambda port: self.active[port])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        upstream = await self._connect_upstream()
        if upstream is None:
            writer.close()
            return
        port, up_reader, up_writer = upstream
        self.active[port] += 1
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            self.active[port] -= 1


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
    except OSError:
        pass
    finally:
        dst.close()
