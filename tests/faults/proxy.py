"""A TCP proxy the fault tests put between the services and PostgreSQL / RabbitMQ, so
a test can cut and restore connections without touching the shared local servers."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from concurrent.futures import Future

from tests.e2e.conftest import free_port


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.cut_off = False
        self.refused = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tcp-proxy", daemon=True)

    def __enter__(self) -> TcpProxy:
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        self._call(self._close_all)
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _shutdown(self) -> None:
        self._server.close()
        self._close_all()
        # The pipes end by themselves once their transports are aborted.
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        await asyncio.wait(tasks, timeout=3) if tasks else None
        await self._server.wait_closed()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", self.port)
        )
        self._ready.set()
        self._loop.run_forever()

    def _call(self, fn: object) -> None:
        done: Future[None] = Future()

        def run() -> None:
            try:
                fn()  # type: ignore[operator]
                done.set_result(None)
            except Exception as exc:  # surface it in the test thread
                done.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        done.result(5)

    def cut(self) -> None:
        """Drop every open connection and refuse new ones until restore()."""

        def go() -> None:
            self.cut_off = True
            self._close_all()

        self._call(go)

    def restore(self) -> None:
        def go() -> None:
            self.cut_off = False

        self._call(go)

    def _close_all(self) -> None:
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut_off:
            self.refused += 1
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.discard(writer)
        self._writers.discard(up_writer)
