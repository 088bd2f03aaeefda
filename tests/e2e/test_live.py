"""Live view: the WebSocket stream, /workers, /stats and /metrics on the real services."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from datetime import UTC, datetime

import httpx
import orjson
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ADMIN_KEY, VIEWER_KEY
from tests.e2e.conftest import Stack, free_port, wait_http_ok

pytestmark = pytest.mark.e2e


def ws_url(stack: Stack, query: str) -> str:
    return stack.url.replace("http://", "ws://") + "/jobs/stream?" + query


async def collect(url: str, *, until, headers=None, timeout: float = 20.0) -> list[dict]:  # type: ignore[no-untyped-def]
    events: list[dict] = []
    async with websockets.connect(
        url, additional_headers=headers or {"Authorization": f"Bearer {ADMIN_KEY}"}
    ) as ws:
        async with asyncio.timeout(timeout):
            while not until(events):
                events.append(orjson.loads(await ws.recv()))
    return events


def finished(job_id: str):  # type: ignore[no-untyped-def]
    return lambda evs: any(
        e["event"] == "state"
        and e["job_id"] == job_id
        and e["data"]["new_status"] in ("completed", "failed")
        for e in evs
    )


def test_stream_delivers_one_jobs_events_in_order_and_filters_others(stack: Stack) -> None:
    stack.worker("w1")
    job = stack.submit({"type": "demo.progress", "payload": {"steps": 6, "delay_seconds": 0.15}})
    later_id: dict[str, str] = {}

    async def scenario() -> tuple[list[dict], list[dict]]:
        watcher = asyncio.create_task(
            collect(ws_url(stack, f"job_id={job['id']}&replay=true"), until=finished(job["id"]))
        )
        # The other client follows a job that does not exist yet: it gets nothing of the first.
        other_id = str(uuid.uuid4())
        other = asyncio.create_task(
            collect(
                ws_url(stack, "type=demo.echo&status=completed"),
                until=lambda evs: bool(later_id) and finished(later_id["id"])(evs),
            )
        )
        first = await watcher
        later = await asyncio.to_thread(
            stack.submit, {"type": "demo.echo", "payload": {"after": other_id}}
        )
        later_id["id"] = later["id"]
        second = await other
        return first, second

    first, second = asyncio.run(scenario())
    logs = [e for e in first if e["event"] == "log"]
    assert [e["data"]["message"] for e in logs] == [f"step {i} of 6" for i in range(1, 7)]
    assert [e["data"]["seq"] for e in logs] == list(range(1, 7))  # in order, none twice
    progress = [e["data"]["done"] for e in first if e["event"] == "progress"]
    assert progress and progress == sorted(progress) and progress[-1] == 6
    states = [e["data"]["new_status"] for e in first if e["event"] == "state"]
    assert states[-1] == "completed" and "running" in states
    assert {e["job_id"] for e in first} == {job["id"]}
    assert all(set(e) == {"event", "job_id", "attempt", "ts", "data"} for e in first)
    # The filtered client saw only the later echo job's completion.
    assert {e["job_id"] for e in second} == {later_id["id"]}
    assert [e["event"] for e in second] == ["state"]


def test_stream_auth_and_bad_parameters(stack: Stack) -> None:
    async def close_code(url: str, headers: dict | None = None) -> int:
        async with websockets.connect(url, additional_headers=headers or {}) as ws:
            with pytest.raises(websockets.ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), timeout=5)
            return info.value.rcvd.code if info.value.rcvd else -1

    assert asyncio.run(close_code(ws_url(stack, ""))) == 1008
    assert asyncio.run(close_code(ws_url(stack, "token=wrong"))) == 1008
    assert (
        asyncio.run(
            close_code(ws_url(stack, "replay=true"), {"Authorization": f"Bearer {ADMIN_KEY}"})
        )
        == 1008
    )
    assert (
        asyncio.run(
            close_code(ws_url(stack, "status=sleeping"), {"Authorization": f"Bearer {ADMIN_KEY}"})
        )
        == 1008
    )
    # A viewer key in ?token= is enough to watch.
    stack.worker("w1")
    job = stack.submit({"type": "demo.echo"})
    events = asyncio.run(
        collect(
            ws_url(stack, f"job_id={job['id']}&replay=true&token={VIEWER_KEY}"),
            until=finished(job["id"]),
            headers={},
        )
    )
    assert events[-1]["data"]["new_status"] == "completed"


def test_slow_client_does_not_slow_others(start_service, settings, request) -> None:  # type: ignore[no-untyped-def]
    from shared.broker import Broker
    from shared.messages import JobLog

    port = free_port()
    api = start_service(
        "api", env={"SWITCHYARD_API_PORT": str(port), "SWITCHYARD_WS_BUFFER_EVENTS": "50"}
    )
    url = f"http://127.0.0.1:{port}"
    wait_http_ok(f"{url}/healthz", api)
    stack = Stack(start_service, url, settings.database_url)
    request.addfinalizer(stack.http.close)
    stack.start("scheduler")
    stack.start("logger")
    stack.worker("w1", "--threads", "4")

    async def flood(stop: asyncio.Event) -> int:
        """4 KB log events at about 500/s: far more than the stuck client's buffers hold."""
        broker = Broker(settings.amqp_url, settings.namespace, name="test-flood")
        await broker.connect()
        fake, sent = uuid.uuid4(), 0
        try:
            while not stop.is_set():
                batch = [
                    (
                        JobLog(
                            job_id=fake,
                            type="flood",
                            attempt=1,
                            seq=sent + i,
                            level="info",
                            message="x" * 4000,
                        ),
                        None,
                    )
                    for i in range(50)
                ]
                await broker.publish_many(batch)
                sent += len(batch)
                await asyncio.sleep(0.1)
        finally:
            await broker.close()
        return sent

    async def scenario() -> tuple[list[float], list[float], list[dict], int]:
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        # A raw socket that completes the WebSocket handshake and then never reads:
        # with a tiny receive window, TCP backs up to the API at once.
        stuck = socket.socket()
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.connect(("127.0.0.1", port))
        stuck.sendall(
            f"GET /jobs/stream?token={ADMIN_KEY} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        handshake = b""
        while b"\r\n\r\n" not in handshake:
            handshake += stuck.recv(1)
        assert handshake.startswith(b"HTTP/1.1 101"), handshake
        stop = asyncio.Event()
        flooding = asyncio.create_task(flood(stop))
        lags: list[float] = []
        health: list[float] = []
        probe_ids: list[str] = []
        async with websockets.connect(
            ws_url(stack, "type=demo.echo"), additional_headers=headers
        ) as good:
            done: set[str] = set()
            all_done = asyncio.Event()

            async def read_good() -> None:  # timestamps each event as it arrives
                while True:
                    e = orjson.loads(await good.recv())
                    lags.append(
                        (datetime.now(UTC) - datetime.fromisoformat(e["ts"])).total_seconds()
                    )
                    if e["event"] == "state" and e["data"]["new_status"] == "completed":
                        done.add(e["job_id"])
                        if len(done) == 20:
                            all_done.set()

            reader = asyncio.create_task(read_good())
            async with httpx.AsyncClient(base_url=stack.url, headers=headers) as http:
                await asyncio.sleep(2)  # let the flood fill the stuck client's pipe first
                for i in range(20):
                    r = await http.post("/jobs", json={"type": "demo.echo", "payload": {"i": i}})
                    probe_ids.append(r.json()["id"])
                    t0 = time.monotonic()
                    assert (await http.get("/healthz")).status_code == 200
                    health.append(time.monotonic() - t0)
                    await asyncio.sleep(0.2)
            await asyncio.wait_for(all_done.wait(), timeout=30)
            reader.cancel()
            assert done == set(probe_ids)
        stop.set()
        sent = await flooding
        # Now the stuck client reads: it is told how much it missed, and is still connected.
        stuck.setblocking(False)
        received = b""
        async with asyncio.timeout(60):
            while b'"event":"dropped"' not in received:
                try:
                    chunk = stuck.recv(1 << 20)
                except BlockingIOError:
                    await asyncio.sleep(0.01)
                    continue
                assert chunk, "the API closed the slow client's connection"
                received += chunk
        stuck.close()
        at = received.index(b'"event":"dropped"')
        notice = orjson.loads(
            received[received.rindex(b"{", 0, at) : received.index(b"}}", at) + 2]
        )
        return lags, health, [notice], sent

    lags, health, seen, sent = asyncio.run(scenario())
    assert sent >= 2000
    assert lags and max(lags) < 1.0, (max(lags), max(health), sent)
    assert max(health) < 1.0, max(health)
    dropped = [e for e in seen if e["event"] == "dropped"]
    assert dropped[0]["data"]["count"] > 0


def test_metrics_workers_and_stats_match_the_run(stack: Stack) -> None:
    stack.worker("w1", "--cpu-units", "3", "--memory-mb", "2048", "--threads", "5")
    ok = [stack.submit({"type": "demo.echo", "payload": {"i": i}}) for i in range(4)]
    bad = stack.submit(
        {"type": "demo.fail", "payload": {"fail_times": 9}, "retry": {"max_attempts": 1}}
    )
    waiting = stack.submit(
        {"type": "demo.echo", "resources": {"cpu_units": 50}, "priority": "high"}
    )
    for j in ok:
        stack.wait_status(j["id"], "completed")
    stack.wait_status(bad["id"], "failed")

    def metrics() -> dict[tuple[str, tuple], float]:
        text = httpx.get(f"{stack.url}/metrics").text  # no key needed
        out = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def counted() -> bool:
        m = metrics()
        return (
            m.get(
                (
                    "switchyard_jobs_finished_total",
                    (("outcome", "completed"), ("type", "demo.echo")),
                )
            )
            == 4
        )

    stack.wait_for(counted, what="finished counter reaches 4")
    m = metrics()
    assert (
        m[("switchyard_jobs_finished_total", (("outcome", "failed"), ("type", "demo.fail")))] == 1
    )
    assert (
        m[("switchyard_jobs_submitted_total", (("priority", "normal"), ("type", "demo.echo")))] == 4
    )
    assert m[("switchyard_queue_depth", (("priority", "high"), ("status", "ready")))] == 1
    assert (
        m[
            (
                "switchyard_job_duration_seconds_count",
                (("outcome", "completed"), ("type", "demo.echo")),
            )
        ]
        == 4
    )
    assert m[("switchyard_dispatch_latency_seconds_count", (("type", "demo.echo"),))] == 4
    assert m[("switchyard_workers", (("state", "alive"),))] == 1
    assert m[("switchyard_worker_capacity", (("resource", "cpu_units"), ("worker", "w1")))] == 3

    workers = stack.http.get("/workers").json()
    (w,) = workers
    assert w["id"] == "w1" and w["state"] == "alive"
    assert w["capacity"] == {"cpu_units": 3, "memory_mb": 2048, "slots": 5}
    assert "demo.echo" in w["task_types"] and w["running"] == []

    stats = stack.http.get("/stats").json()
    assert stats["by_status"] == {"completed": 4, "failed": 1, "ready": 1}
    assert stats["queue_depth"]["ready"] == 1 and stats["by_priority"]["high"] == 1
    assert stats["throughput"]["completed"]["last_minute"] == 4
    assert stats["durations"]["demo.echo"]["count"] == 4
    assert (
        stats["durations"]["demo.echo"]["p95_seconds"]
        >= stats["durations"]["demo.echo"]["mean_seconds"] * 0
        >= 0
    )
    assert waiting["id"] not in w["running"]


def test_cli_logs_follow(stack: Stack) -> None:
    import subprocess
    import sys

    stack.worker("w1")
    job = stack.submit({"type": "demo.progress", "payload": {"steps": 5, "delay_seconds": 0.3}})
    stack.wait_status(job["id"], "running")
    env = {"SWITCHYARD_URL": stack.url, "SWITCHYARD_API_KEY": ADMIN_KEY, "PATH": "/usr/bin:/bin"}
    follow = subprocess.run(
        [sys.executable, "-m", "switchyard.cli", "logs", job["id"], "--follow"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert follow.returncode == 0, follow.stderr
    steps = [f"step {i} of 5" for i in range(1, 6)]

    def messages(out: str) -> list[str]:
        return [ln.split("INFO", 1)[1].strip() for ln in out.splitlines() if " INFO " in ln]

    assert messages(follow.stdout) == steps
    assert follow.stdout.strip().splitlines()[-1].startswith(f"job {job['id']} completed")
    assert "-- completed" in follow.stderr

    # Without --follow: the stored lines under their attempt's outcome.
    def plain_logs() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "switchyard.cli", "logs", job["id"]],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    # The logger writes the attempt's end in a batch, after the scheduler ended the job.
    stack.wait_for(
        lambda: plain_logs().stdout.startswith("attempt 1  completed  on w1"),
        what="the attempt's end logged",
    )
    plain = plain_logs()
    assert plain.returncode == 0 and messages(plain.stdout) == steps
    # Following a job that has already ended prints its lines too, then stops.
    after = subprocess.run(
        [sys.executable, "-m", "switchyard.cli", "logs", job["id"], "--follow"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert after.returncode == 0 and messages(after.stdout) == steps
    bad = subprocess.run(
        [sys.executable, "-m", "switchyard.cli", "--api-key", "nope", "status", job["id"]],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1 and "HTTP 401: invalid or revoked API key" in bad.stderr
    assert "from --api-key" in bad.stderr and "SWITCHYARD_API_KEY" in bad.stderr
