"""TCP forwarders on the outer address of a host's link, to a server on loopback.

A worker in a network namespace cannot see this host's loopback, where the local
PostgreSQL and RabbitMQ listen; the forwarder listens on the link's address instead,
so the worker reaches them over the link and only over it (setting the link down cuts
it, as a lost network would: no reset, the packets just stop).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading


class Forwarder:
    """``with Forwarder([(listen_host, listen_port, (target_host, target_port)), …]):``"""

    def __init__(self, routes: list[tuple[str, int, tuple[str, int]]]) -> None:
        self.routes = routes
        self._loop = asyncio.new_event_loop()
        self._servers: list[asyncio.Server] = []
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="forwarder", daemon=True)

    def __enter__(self) -> Forwarder:
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            for host, port, target in self.routes:
                handler = functools.partial(self._pipe_both, target=target)
                server = self._loop.run_until_complete(asyncio.start_server(handler, host, port))
                self._servers.append(server)
        except BaseException as exc:  # surfaced by __enter__
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()

    async def _shutdown(self) -> None:
        for server in self._servers:
            server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _pipe_both(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: tuple[str, int]
    ) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(
            self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer)
        )

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass  # the other side went away: close ours too
        finally:
            with contextlib.suppress(ConnectionError, OSError):
                writer.close()
