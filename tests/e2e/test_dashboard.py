"""The dashboard at /ui/ in a real browser: Debian's chromium driven by Playwright.

The browser loads everything from the API under test; every request to anywhere else is
blocked and fails the test. With ``SWITCHYARD_SCREENSHOTS=1`` the screenshots of each
page (1280x800) are written to ``docs/images/`` (the README shows them); otherwise to
the test's temporary directory, so that taking them is tested all the same.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import playwright.sync_api as playwright_sync
import pytest

from tests.conftest import ADMIN_KEY, ROOT, SUBMITTER_KEY, VIEWER_KEY, auth
from tests.e2e.conftest import Stack

pytestmark = pytest.mark.e2e

expect = playwright_sync.expect

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update",
]  # fmt: skip
VIEWPORT = {"width": 1280, "height": 800}
WAIT_MS = 20_000


class Tab:
    """One browser context (its own sessionStorage) and page, offline but for the API."""

    def __init__(self, browser: object, stack: Stack) -> None:
        self.stack = stack
        self.outside: list[str] = []
        self.errors: list[str] = []
        self.context = browser.new_context(viewport=VIEWPORT)  # type: ignore[attr-defined]
        self.context.route("**/*", self._only_the_api)
        self.page = self.context.new_page()
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.on("websocket", lambda ws: self._check_url(ws.url))
        self.page.set_default_timeout(WAIT_MS)

    def _check_url(self, url: str) -> bool:
        parts = urlsplit(url)
        local = parts.scheme in ("http", "ws") and parts.hostname == "127.0.0.1"
        if not local and parts.scheme != "data":
            self.outside.append(url)
        return local or parts.scheme == "data"

    def _only_the_api(self, route: object) -> None:
        if self._check_url(route.request.url):  # type: ignore[attr-defined]
            route.continue_()  # type: ignore[attr-defined]
        else:
            route.abort()  # type: ignore[attr-defined]

    def open(self, fragment: str = "", *, query: str = "") -> None:
        self.page.goto(f"{self.stack.url}/ui/{query}{fragment}")

    def go(self, fragment: str) -> None:
        """Follow an in-page link (a hash change: the page is not reloaded)."""
        self.page.evaluate("f => { window.location.hash = f; }", fragment)

    def sign_in(self, key: str) -> None:
        self.open()
        self.page.get_by_label("API key").fill(key)
        self.page.get_by_role("button", name="Sign in").click()

    def mark(self) -> None:
        """Set a flag that a reload would lose."""
        self.page.evaluate("() => { window.__notReloaded = true; }")

    def assert_not_reloaded(self) -> None:
        assert self.page.evaluate("() => window.__notReloaded === true"), "the page was reloaded"

    def check_clean(self) -> None:
        assert not self.outside, f"the dashboard asked for outside resources: {self.outside}"
        assert not self.errors, f"JavaScript errors: {self.errors}"

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def tabs(stack: Stack) -> Iterator[object]:
    """Opens browser tabs; the browser starts at the first one. Playwright's sync API
    runs an event loop in this thread while it is open, so the test starts what needs
    asyncio (workers: Stack.sql) before, and the browser is closed before the async
    fixtures' teardown."""
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"no chromium at {CHROMIUM}: apt-get install -y chromium (.ci/run does)")
    opened: list[Tab] = []
    driver: list[object] = []

    def new_tab() -> Tab:
        if not driver:
            playwright = playwright_sync.sync_playwright().start()
            driver.append(playwright)
            driver.append(playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS))
        tab = Tab(driver[1], stack)
        opened.append(tab)
        return tab

    try:
        yield new_tab
        for tab in opened:
            tab.check_clean()
    finally:
        for tab in opened:
            tab.close()
        if driver:
            driver[1].close()  # type: ignore[attr-defined]
            driver[0].stop()  # type: ignore[attr-defined]


@pytest.fixture
def shots(tmp_path: Path) -> object:
    target = ROOT / "docs" / "images" if os.environ.get("SWITCHYARD_SCREENSHOTS") else tmp_path

    def shoot(tab: Tab, name: str) -> None:
        path = target / f"dashboard-{name}.png"
        tab.page.screenshot(path=str(path))
        assert path.stat().st_size > 10_000, f"{path} looks empty"

    return shoot


def api_ok(stack: Stack, method: str, path: str, **kwargs: object) -> dict:
    r = stack.http.request(method, path, **kwargs)  # type: ignore[arg-type]
    assert r.status_code < 300, r.text
    return r.json()  # type: ignore[no-any-return]


def test_admin_watches_runs_and_steers_jobs(stack: Stack, tabs, shots) -> None:  # type: ignore[no-untyped-def]
    stack.worker("ui-w1", "--cpu-units", "2", "--memory-mb", "2048", "--threads", "4")
    tab = tabs()
    page = tab.page
    tab.sign_in(ADMIN_KEY)
    expect(page.locator("#role")).to_contain_text("(admin)")
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    assert page.evaluate("() => document.cookie") == ""
    assert page.evaluate("() => sessionStorage.getItem('switchyard.key')") == ADMIN_KEY

    # A batch DAG submitted through the API appears on the jobs page, then its nodes
    # turn completed on the graph, without a reload.
    tab.go("#/jobs")
    expect(page.locator("#jobs-table, main p.muted").first).to_be_visible()
    tab.mark()
    batch = api_ok(stack, "POST", "/jobs/batch", json={"jobs": [
        {"ref": "fetch", "type": "demo.sleep", "payload": {"seconds": 4}, "name": "ui-fetch"},
        {"ref": "left", "type": "demo.echo", "payload": {"side": "l"}, "depends_on": ["@fetch"],
         "name": "ui-left"},
        {"ref": "right", "type": "demo.echo", "payload": {"side": "r"}, "depends_on": ["@fetch"],
         "name": "ui-right"},
        {"ref": "join", "type": "demo.echo", "payload": {}, "depends_on": ["@left", "@right"],
         "name": "ui-join"},
    ]})["jobs"]  # fmt: skip
    ids = [j["id"] for j in batch]
    for job_id in ids:
        expect(page.locator(f'#jobs-table tr[data-job-id="{job_id}"]')).to_be_visible()
    tab.go(f"#/dag/{ids[0]}")
    nodes = page.locator("svg.dag a.node")
    expect(nodes).to_have_count(4)
    expect(page.locator(f'a.node[data-job-id="{ids[3]}"]')).to_have_attribute(
        "data-status", "blocked"
    )
    for job_id in ids:
        expect(page.locator(f'a.node[data-job-id="{job_id}"]')).to_have_attribute(
            "data-status", "completed"
        )
    tab.assert_not_reloaded()
    shots(tab, "dag")

    # A demo.log job's lines stream in while the page is open.
    gate = stack.submit({"type": "demo.sleep", "payload": {"seconds": 1.0}})
    logger = stack.submit({"type": "demo.log", "payload": {"lines": 40}, "depends_on": [gate["id"]],
                           "name": "ui-log"})  # fmt: skip
    tab.go(f"#/job/{logger['id']}")
    expect(page.locator("#why-reason")).to_have_text("dependencies")
    expect(page.locator("#log-lines li")).to_have_count(40)
    expect(page.locator("#log-lines li").last).to_contain_text("line 40 of 40")
    expect(page.locator("main h1 .badge")).to_have_text("completed")
    attempt = page.locator('#attempts-table tr[data-attempt="1"]')
    expect(attempt).to_contain_text("ui-w1")
    expect(attempt.locator(".badge")).to_have_text("completed")
    tab.assert_not_reloaded()
    page.locator("#logs-h").scroll_into_view_if_needed()
    shots(tab, "job")

    # Cancel a running demo.sleep from the UI: it ends cancelled.
    sleeper = stack.submit({"type": "demo.sleep", "payload": {"seconds": 60}, "name": "ui-sleep"})
    stack.wait_status(sleeper["id"], "running")
    tab.go(f"#/job/{sleeper['id']}")
    expect(page.locator("main h1 .badge")).to_have_text("running")
    expect(page.locator("#job-progress")).to_be_visible()
    page.locator("main .job-head button[data-action=cancel]").click()
    expect(page.locator("main h1 .badge")).to_have_text("cancelled")
    assert stack.job(sleeper["id"])["status"] == "cancelled"
    expect(page.locator("main .job-head button[data-action=retry]")).to_be_visible()

    # A job too large for every worker: the why panel names too_large, and for each
    # worker its free vs needed.
    big = stack.submit({"type": "demo.echo", "payload": {}, "name": "ui-too-large",
                        "resources": {"cpu_units": 16, "memory_mb": 64}})  # fmt: skip
    tab.go(f"#/job/{big['id']}")
    expect(page.locator("#why-reason")).to_have_text("too_large")
    row = page.locator('#why-workers tr[data-worker="ui-w1"]')
    expect(row.locator("td.needed")).to_have_text(re.compile(r"^16 CPU, 64 MB, 1 slot$"))
    expect(row.locator("td.free")).to_have_text(re.compile(r"^2 CPU, 20\d\d MB, \d+ slots?$"))
    expect(row).to_have_attribute("data-fits", "false")
    shots(tab, "why")

    # The workers page shows the numbers GET /workers returns.
    busy = stack.submit({"type": "demo.sleep", "payload": {"seconds": 30}, "name": "ui-busy",
                  "resources": {"cpu_units": 0.5, "memory_mb": 300}})  # fmt: skip
    stack.wait_for(lambda: stack.http.get("/workers").json()[0]["allocated"]["memory_mb"] == 300,
                   what="the busy job allocated")  # fmt: skip
    tab.go("#/workers")
    worker = api_ok(stack, "GET", "/workers")[0]
    card = page.locator('article.worker-card[data-worker-id="ui-w1"]')
    for resource, unit in (("cpu_units", " units"), ("memory_mb", " MB"), ("slots", "")):
        used, total = worker["allocated"][resource], worker["capacity"][resource]
        text = f"{fmt(used)} / {fmt(total)}{unit} allocated, {fmt(total - used)} free"
        expect(card.locator(f'[data-resource="{resource}"] .meter-text')).to_have_text(text)
    expect(card.locator(".running a")).to_have_count(len(worker["running"]))
    expect(card.locator(".badge")).to_have_text(worker["state"])
    shots(tab, "workers")

    # The other pages, for the README.
    api_ok(stack, "POST", "/schedules", json={"name": "nightly-report", "cron": "0 3 * * *",
           "timezone": "Europe/Paris", "job": {"type": "demo.echo", "payload": {}}})  # fmt: skip
    tab.go("#/schedules")
    expect(page.locator("main table tr[data-schedule-id]")).to_have_count(1)
    shots(tab, "schedules")
    tab.go("#/audit")
    expect(page.locator("main table tbody tr").first).to_be_visible()
    shots(tab, "audit")
    tab.go("#/jobs")
    expect(page.locator(f'#jobs-table tr[data-job-id="{big["id"]}"]')).to_be_visible()
    shots(tab, "jobs")
    tab.go("#/overview")
    expect(page.locator("#queue-depth")).to_be_visible()
    expect(page.locator("figure.chart")).to_have_count(2)
    # The finished-jobs chart gets a point every 2 s.
    expect(page.locator("figure.chart").first.locator("circle").first).to_be_attached()
    shots(tab, "overview")
    api_ok(stack, "PATCH", f"/jobs/{busy['id']}/cancel")  # the worker stops sooner


def fmt(n: float) -> str:
    """As the page writes numbers: integers plain, others with at most 2 decimals."""
    return str(int(n)) if float(n).is_integer() else f"{n:.2f}".rstrip("0").rstrip(".")


def test_viewer_sees_no_actions_and_bulk_cancel_counts_first(stack: Stack, tabs, shots) -> None:  # type: ignore[no-untyped-def]
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    delayed = [
        stack.submit(
            {"type": "demo.echo", "payload": {"n": i}, "run_at": later, "name": f"ui-delayed-{i}"}
        )
        for i in range(3)
    ]
    failed = stack.submit({"type": "demo.echo", "payload": {}, "depends_on": [delayed[0]["id"]]})
    api_ok(stack, "PATCH", f"/jobs/{delayed[0]['id']}/cancel")
    stack.wait_status(failed["id"], "failed")

    # A viewer, with the key in the URL of the first load: the key leaves the URL at
    # once, stays in this tab's sessionStorage, and no action button is shown.
    viewer = tabs()
    viewer.open("#/jobs", query=f"?token={VIEWER_KEY}")
    page = viewer.page
    expect(page.locator("#role")).to_contain_text("(viewer)")
    assert "token" not in page.url and VIEWER_KEY not in page.url
    assert page.evaluate("() => sessionStorage.getItem('switchyard.key')") == VIEWER_KEY
    assert page.evaluate("() => document.cookie") == ""
    expect(page.locator(f'#jobs-table tr[data-job-id="{failed["id"]}"]')).to_be_visible()
    expect(page.locator("main button[data-action]")).to_have_count(0)
    expect(page.locator("section.bulk")).to_have_count(0)
    expect(page.locator("main")).not_to_contain_text("null")
    expect(page.locator("#nav a[data-page=audit]")).to_be_hidden()
    viewer.go(f"#/job/{failed['id']}")
    expect(page.locator("main h1 .badge")).to_have_text("failed")
    expect(page.locator("main button")).to_have_count(0)

    # A submitter sees actions on its own jobs only (GET /api-keys/me says which).
    own = httpx.post(
        f"{stack.url}/jobs",
        json={"type": "demo.echo", "run_at": later, "name": "ui-own"},
        headers=auth(SUBMITTER_KEY),
    ).json()
    submitter = tabs()
    submitter.open("#/jobs?status=pending&type=demo.echo", query=f"?token={SUBMITTER_KEY}")
    expect(submitter.page.locator("#role")).to_contain_text("(submitter)")
    expect(submitter.page.locator("#jobs-table tbody tr")).to_have_count(3)
    buttons = submitter.page.locator("#jobs-table button[data-action=cancel]")
    expect(buttons).to_have_count(1)
    expect(
        submitter.page.locator(
            f'#jobs-table tr[data-job-id="{own["id"]}"] button[data-action=cancel]'
        )
    ).to_have_count(1)
    api_ok(stack, "PATCH", f"/jobs/{own['id']}/cancel")

    # An admin cancels the delayed jobs in bulk: the dry run's count comes first, and
    # nothing is cancelled before the confirmation.
    admin = tabs()
    admin.sign_in("not-a-key")
    expect(admin.page.locator("#login-error")).to_have_text(
        "This key is not valid (or was revoked)."
    )
    assert admin.page.evaluate("() => sessionStorage.getItem('switchyard.key')") is None
    admin.sign_in(ADMIN_KEY)
    expect(admin.page.locator("#role")).to_contain_text("(admin)")
    admin.go("#/jobs?name=ui-delayed-")
    expect(admin.page.locator("#jobs-table tbody tr")).to_have_count(3)
    expect(
        admin.page.locator("button[data-action=bulk-cancel]")
    ).to_be_enabled()  # the name search is part of a bulk filter
    admin.go("#/jobs?status=pending&type=demo.echo")
    rows = admin.page.locator("#jobs-table tbody tr")
    expect(rows).to_have_count(2)
    expect(admin.page.locator("#jobs-table button[data-action=cancel]")).to_have_count(2)
    admin.page.locator("button[data-action=bulk-cancel]").click()
    count = admin.page.locator("#bulk-count")
    expect(count).to_contain_text("2 jobs match; 2 would be cancelled")
    assert [stack.job(j["id"])["status"] for j in delayed[1:]] == ["pending", "pending"]
    shots(admin, "bulk")
    admin.page.locator("button[data-action=bulk-cancel-confirm]").click()
    expect(admin.page.locator("#bulk-result")).to_contain_text("2 jobs cancelled")
    assert [stack.job(j["id"])["status"] for j in delayed[1:]] == ["cancelled", "cancelled"]
    expect(rows).to_have_count(0)

    # Signed out: the key is gone from the tab.
    admin.page.get_by_role("button", name="Sign out").click()
    expect(admin.page.get_by_label("API key")).to_be_visible()
    assert admin.page.evaluate("() => sessionStorage.getItem('switchyard.key')") is None
    shots(admin, "login")


def test_ui_is_served_without_a_key_and_loads_nothing_from_elsewhere(stack: Stack) -> None:
    r = stack.http.get("/ui/", headers={"Authorization": ""})
    assert r.status_code == 200, r.text
    assert "text/html" in r.headers["content-type"]
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["referrer-policy"] == "no-referrer"
    ui = ROOT / "services" / "api" / "ui"
    for path in ui.rglob("*"):
        if path.suffix in (".html", ".js", ".css"):
            text = path.read_text()
            assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", text), path
            assert stack.http.get(f"/ui/{path.relative_to(ui)}").status_code == 200


def test_a_burst_of_events_is_coalesced(stack: Stack, tabs) -> None:  # type: ignore[no-untyped-def]
    """Thousands of state events in a few seconds: the page applies them a few times a
    second (not once per event), its main thread is never blocked long, and it ends
    showing the final states."""
    stack.worker("ui-burst", "--threads", "8", "--cpu-units", "8", "--memory-mb", "4096")
    tab = tabs()
    page = tab.page
    tab.sign_in(ADMIN_KEY)
    expect(page.locator("#role")).to_contain_text("(admin)")
    tab.go("#/jobs?type=demo.echo")
    expect(page.get_by_text("No job matches.")).to_be_visible()
    page.evaluate(
        """() => {
          window.__longestTask = 0;
          new PerformanceObserver((list) => {
            for (const e of list.getEntries()) {
              window.__longestTask = Math.max(window.__longestTask, e.duration);
            }
          }).observe({ type: "longtask" });
        }"""
    )
    before = page.evaluate("() => ({ ...window.switchyard.live })")
    started = time.monotonic()
    jobs = 1500
    for batch in range(jobs // 500):
        body = {"jobs": [{"ref": f"j{i}", "type": "demo.echo", "payload": {"b": batch, "i": i}}
                         for i in range(500)]}  # fmt: skip
        api_ok(stack, "POST", "/jobs/batch", json=body)

    def all_completed() -> bool:
        return stack.http.get("/stats").json()["by_status"].get("completed", 0) == jobs

    stack.wait_for(all_completed, timeout=90, what=f"{jobs} jobs completed")
    expect(page.locator('#jobs-table .badge[data-status="completed"]')).to_have_count(50)
    elapsed = time.monotonic() - started
    after = page.evaluate("() => ({ ...window.switchyard.live })")
    events = after["events"] - before["events"]
    flushes = after["flushes"] - before["flushes"]
    longest = page.evaluate("() => window.__longestTask")
    print(f"{events} events in {elapsed:.1f} s ({events / elapsed:.0f}/s): {flushes} renders, "
          f"longest main-thread task {longest:.0f} ms")  # fmt: skip
    assert events >= 2 * jobs, "the stream did not carry the burst"
    assert flushes <= elapsed / 0.25 + 5, f"{flushes} renders in {elapsed:.1f} s: not coalesced"
    assert longest < 250, f"the page's main thread was blocked for {longest:.0f} ms"
    assert page.evaluate("() => 1 + 1") == 2
