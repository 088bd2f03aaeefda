"""docker-compose.yml, Dockerfile and .dockerignore, checked without a Docker engine.

What ``docker compose up`` would only reveal at run time is checked here statically:
the services the design names, variable names the Settings class really reads, health
conditions that can become true, commands that name modules of this repo, a worker
that ``--scale worker=3`` can multiply within the machine, secrets that must be given,
and a broker that is not published. ``make test-compose`` (tests/compose/run.py) runs
the stack on a real engine.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import AliasChoices

from shared import health
from shared.service import run_service
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
AMQP_OVERRIDE = ROOT / "docker-compose.amqp.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

APP_SERVICES = ("api", "scheduler", "worker", "logger")
LONG_RUNNING = ("postgres", "rabbitmq", *APP_SERVICES)
DESIGN_SERVICES = ("postgres", "rabbitmq", "migrate", *APP_SERVICES)
# Everything built from this repo's image and configured through Settings.
IMAGE_SERVICES = ("migrate", *APP_SERVICES)
# Services whose own loop is checked by `python -m shared.health <service>`.
LOOP_SERVICES = ("scheduler", "worker", "logger")
# What a user puts in .env: the variables the compose file requires (no default).
USER_ENV = {"RABBITMQ_PASSWORD": "s3cretpw", "SWITCHYARD_API_KEYS": "k1:admin"}
# The machine `--scale worker=3` must fit with the default limits.
REFERENCE_MACHINE_CPUS = 2

_INTERPOLATION = re.compile(
    r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<default>[^}]*))?\}"
)


# --- helpers -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict), "docker-compose.yml must be a mapping"
    assert isinstance(data.get("services"), dict), "docker-compose.yml has no services"
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


class MissingRequired(AssertionError):
    """``${VAR:?message}`` with VAR unset: compose refuses to start, with the message."""


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's ``${VAR:-default}`` / ``${VAR-default}`` / ``${VAR:?error}`` /
    ``${VAR}``; a bare ``${VAR}`` with VAR unset is an error here (compose would silently
    use an empty string)."""
    env = USER_ENV if env is None else env

    def sub(match: re.Match[str]) -> str:
        name, op, default = match["name"], match["op"], match["default"]
        if op == ":-":
            return env.get(name) or default
        if op == "-":
            return env.get(name, default)
        if op in (":?", "?"):
            if not env.get(name) if op == ":?" else name not in env:
                raise MissingRequired(f"{name}: {default}")
            return env[name]
        if name not in env:
            raise AssertionError(f"${{{name}}} has no default: compose would use ''")
        return env[name]

    return _INTERPOLATION.sub(sub, value).replace("$$", "$")


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a dict, from either the mapping or the list form."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.split("=", 1) for item in env)
        env = {pair[0]: (pair[1] if len(pair) > 1 else "") for pair in pairs}
    return {str(k): interpolate(str(v)) for k, v in env.items()}


def command(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command")
    assert cmd, "no command"
    return shlex.split(cmd) if isinstance(cmd, str) else [str(part) for part in cmd]


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    """target -> condition (the short list form means service_started)."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def port_mappings(
    service: dict[str, Any], env: dict[str, str] | None = None
) -> list[tuple[str | None, int]]:
    """(published host port or None, container port) for every ``ports`` entry."""
    return [(published, container) for _, published, container in port_bindings(service, env)]


def port_bindings(
    service: dict[str, Any], env: dict[str, str] | None = None
) -> list[tuple[str, str | None, int]]:
    """(host address or "" for all, published port or None, container port)."""
    result: list[tuple[str, str | None, int]] = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            published = entry.get("published")
            result.append(
                (
                    str(entry.get("host_ip", "")),
                    str(published) if published else None,
                    int(entry["target"]),
                )
            )
            continue
        spec = interpolate(str(entry), env).split("/", 1)[0]  # drop "/tcp"
        parts = spec.rsplit(":", 2)
        container = int(parts[-1])
        published = parts[-2] if len(parts) >= 2 and parts[-2] else None
        address = parts[0] if len(parts) == 3 else ""
        result.append((address, published, container))
    return result


def settings_env_names() -> set[str]:
    """Every environment variable name Settings reads (upper case; it is case-insensitive)."""
    prefix = Settings.model_config.get("env_prefix") or ""
    names: set[str] = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(choice.upper() for choice in alias.choices if isinstance(choice, str))
        elif isinstance(alias, str):
            names.add(alias.upper())
        else:
            names.add(f"{prefix}{name}".upper())
    return names


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    result = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        result.append((instruction.upper(), args.strip()))
    return result


# --- the compose file ----------------------------------------------------------------


def test_interpolation_helper() -> None:
    assert interpolate("${A:-x:y}") == "x:y"
    assert interpolate("${A:-x}", {"A": "set"}) == "set"
    assert interpolate("${A:-x}", {"A": ""}) == "x"
    assert interpolate("${A-x}", {"A": ""}) == ""
    with pytest.raises(AssertionError):
        interpolate("${A}")
    assert interpolate("${A:?say A}", {"A": "v"}) == "v"
    with pytest.raises(MissingRequired, match="say A"):
        interpolate("${A:?say A}", {"A": ""})
    with pytest.raises(MissingRequired):
        interpolate("${A?say A}", {})


def test_services_named_by_the_design_exist(services: dict[str, Any]) -> None:
    missing = [name for name in DESIGN_SERVICES if name not in services]
    assert not missing, f"docker-compose.yml lacks {missing}"


def test_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for volume in service.get("volumes") or []:
            source = volume["source"] if isinstance(volume, dict) else str(volume).split(":")[0]
            if source.startswith((".", "/", "~")):
                continue  # a bind mount
            assert source in declared, f"{name}: volume {source!r} is not declared"


def test_postgres(services: dict[str, Any]) -> None:
    pg = services["postgres"]
    assert str(pg["image"]).split(":")[0] == "postgres"
    assert str(pg["image"]).split(":")[1].split(".")[0] == "16"
    env = environment(pg)
    assert env["POSTGRES_PASSWORD"] and env["POSTGRES_DB"]
    assert "pg_isready" in json.dumps(pg["healthcheck"]["test"])
    assert any(
        "/var/lib/postgresql/data" in (v["target"] if isinstance(v, dict) else str(v))
        for v in pg.get("volumes") or []
    ), "postgres data is not on a volume"


def test_rabbitmq_has_the_management_ui_on_loopback(services: dict[str, Any]) -> None:
    rabbit = services["rabbitmq"]
    image, _, tag = str(rabbit["image"]).partition(":")
    assert image == "rabbitmq"
    assert "management" in tag, f"{rabbit['image']} has no management UI"
    # Not 15672 on the host: a local RabbitMQ (every development machine here) holds it.
    assert port_bindings(rabbit, USER_ENV) == [("127.0.0.1", "15673", 15672)]
    moved = {**USER_ENV, "RABBITMQ_MANAGEMENT_PORT": "25000"}
    assert port_bindings(rabbit, moved) == [("127.0.0.1", "25000", 15672)]
    test = rabbit["healthcheck"]["test"]
    argv = shlex.split(test) if isinstance(test, str) else test[1:]
    assert argv == ["rabbitmq-diagnostics", "-q", "ping"]


@pytest.mark.parametrize("name", DESIGN_SERVICES)
def test_depends_on_conditions_can_be_met(services: dict[str, Any], name: str) -> None:
    for target, condition in depends_on(services[name]).items():
        assert target in services, f"{name} depends on unknown service {target!r}"
        assert target != name
        if condition == "service_healthy":
            check = services[target].get("healthcheck") or {}
            test = check.get("test")
            assert test and test != ["NONE"] and not check.get("disable"), (
                f"{name} waits for {target} to be healthy, but {target} has no healthcheck"
            )
        elif condition == "service_completed_successfully":
            assert services[target].get("restart", "no") in ("no", "on-failure"), (
                f"{name} waits for {target} to complete, but {target} restarts forever"
            )
        else:
            assert condition == "service_started", f"{name}: unknown condition {condition!r}"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_wait_for_their_backends(services: dict[str, Any], name: str) -> None:
    deps = depends_on(services[name])
    assert deps.get("postgres") == "service_healthy"
    assert deps.get("rabbitmq") == "service_healthy"
    assert deps.get("migrate") == "service_completed_successfully"


def test_migrate_is_one_shot_and_waits_for_the_database(services: dict[str, Any]) -> None:
    migrate = services["migrate"]
    # `switchyard db upgrade` creates the database if missing and retries until it
    # answers (shared/dbtools.py), so a slow PostgreSQL start does not fail the stack.
    assert command(migrate) == ["switchyard", "db", "upgrade"]
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert 'switchyard = "switchyard.cli:main"' in pyproject
    assert migrate.get("restart", "no") == "no"
    assert depends_on(migrate).get("postgres") == "service_healthy"


def test_no_amqp_port_on_the_host(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for _, published, container in port_bindings(service):
            assert container != 5672 and published != "5672", f"{name} publishes AMQP"


def test_the_amqp_override_publishes_it_on_loopback() -> None:
    override = yaml.safe_load(AMQP_OVERRIDE.read_text(encoding="utf-8"))
    rabbit = override["services"]["rabbitmq"]
    assert port_bindings(rabbit, {}) == [("127.0.0.1", "5673", 5672)]
    wide = {"RABBITMQ_AMQP_BIND": "0.0.0.0", "RABBITMQ_AMQP_PORT": "5672"}
    assert port_bindings(rabbit, wide) == [("0.0.0.0", "5672", 5672)]


def test_broker_credentials_come_from_the_environment(services: dict[str, Any]) -> None:
    rabbit_raw = services["rabbitmq"]["environment"]
    with pytest.raises(MissingRequired, match="RABBITMQ_PASSWORD"):
        interpolate(str(rabbit_raw["RABBITMQ_DEFAULT_PASS"]), {})
    rabbit = environment(services["rabbitmq"])
    assert rabbit["RABBITMQ_DEFAULT_PASS"] == USER_ENV["RABBITMQ_PASSWORD"]
    assert rabbit["RABBITMQ_DEFAULT_USER"] not in ("", "guest")
    for name in IMAGE_SERVICES:
        raw = str(services[name]["environment"]["AMQP_URL"])
        with pytest.raises(MissingRequired, match="RABBITMQ_PASSWORD"):
            interpolate(raw, {})
        amqp = urlsplit(environment(services[name])["AMQP_URL"])
        assert (amqp.username, amqp.password) == (
            rabbit["RABBITMQ_DEFAULT_USER"],
            rabbit["RABBITMQ_DEFAULT_PASS"],
        ), f"{name} does not log in as the broker's user"


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_long_running_services_restart(services: dict[str, Any], name: str) -> None:
    assert services[name].get("restart") == "unless-stopped"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_command_is_a_module_of_this_repo(services: dict[str, Any], name: str) -> None:
    assert command(services[name]) == ["python", "-m", f"services.{name}"]
    assert (ROOT / "services" / name).is_dir(), f"services/{name}/ does not exist"


def test_app_services_share_one_image(services: dict[str, Any]) -> None:
    images = {
        json.dumps([services[n].get("image"), services[n].get("build")]) for n in IMAGE_SERVICES
    }
    assert len(images) == 1, f"image/build differ between app services: {images}"
    build = services["api"].get("build")
    context = build if isinstance(build, str) else (build or {}).get("context", ".")
    assert (ROOT / context / "Dockerfile").resolve() == DOCKERFILE


def test_settings_reader_knows_the_documented_names() -> None:
    names = settings_env_names()
    for documented in (
        "DATABASE_URL",
        "AMQP_URL",
        "SWITCHYARD_NAMESPACE",
        "SWITCHYARD_API_HOST",
        "SWITCHYARD_API_PORT",
        "SWITCHYARD_API_KEYS",
        "SWITCHYARD_DEV",
    ):
        assert documented in names
    assert "SWITCHYARD_API_HOTS" not in names


@pytest.mark.parametrize("name", IMAGE_SERVICES)
def test_app_env_names_are_read_by_settings(services: dict[str, Any], name: str) -> None:
    # Settings ignores unknown variables (extra="ignore"): a typo would go unnoticed.
    unknown = sorted(set(map(str.upper, environment(services[name]))) - settings_env_names())
    assert not unknown, f"{name}: Settings reads none of {unknown}"


@pytest.mark.parametrize("name", IMAGE_SERVICES)
def test_app_env_builds_settings_that_reach_the_stack(
    services: dict[str, Any], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in list(os.environ):
        if var.upper() in settings_env_names() or var.upper().startswith("SWITCHYARD_"):
            monkeypatch.delenv(var)
    for var, value in environment(services[name]).items():
        monkeypatch.setenv(var, value)
    settings = Settings()

    db = urlsplit(settings.database_url)
    pg_env = environment(services["postgres"])
    assert db.scheme == "postgresql+asyncpg"
    assert db.hostname == "postgres" and db.hostname in services
    assert (db.port or 5432) == 5432
    assert db.path.lstrip("/") == pg_env["POSTGRES_DB"]
    assert db.username == pg_env.get("POSTGRES_USER", "postgres")
    assert db.password == pg_env["POSTGRES_PASSWORD"]

    amqp = urlsplit(settings.amqp_url)
    assert amqp.scheme == "amqp"
    assert amqp.hostname == "rabbitmq" and amqp.hostname in services
    assert (amqp.port or 5672) == 5672
    assert settings.namespace == "switchyard"


def test_api_listens_on_all_interfaces_with_keys(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    api = services["api"]
    raw_keys = str(api["environment"]["SWITCHYARD_API_KEYS"])
    assert raw_keys.startswith("${SWITCHYARD_API_KEYS:?"), "API keys must be given, no default"
    with pytest.raises(MissingRequired, match="SWITCHYARD_API_KEYS"):
        interpolate(raw_keys, {})

    for var in list(os.environ):
        if var.upper().startswith("SWITCHYARD_"):
            monkeypatch.delenv(var)
    for var, value in environment(api).items():
        monkeypatch.setenv(var, value)
    settings = Settings()
    assert settings.api_host == "0.0.0.0"
    assert settings.api_keys == {"k1": "admin"}
    assert not settings.dev

    monkeypatch.setenv(
        "SWITCHYARD_API_KEYS", interpolate(raw_keys, {"SWITCHYARD_API_KEYS": "k1:viewer"})
    )
    assert Settings().api_keys == {"k1": "viewer"}

    assert (str(settings.api_port), settings.api_port) in port_mappings(api)


def test_api_healthcheck_uses_python_not_curl(services: dict[str, Any]) -> None:
    test = services["api"]["healthcheck"]["test"]
    assert isinstance(test, list) and test[0] == "CMD"
    assert test[1:3] == ["python", "-c"]
    code = test[3]
    assert "http://127.0.0.1:8000/healthz" in code
    compile(code, "<api healthcheck>", "exec")
    for name in IMAGE_SERVICES:
        check = json.dumps((services[name].get("healthcheck") or {}).get("test", []))
        assert "curl" not in check and "wget" not in check, f"{name}: slim has no curl/wget"


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        body = b'{"status": "ok"}' if self.path == "/healthz" else b"{}"
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[HTTPServer]:
    server = HTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_api_healthcheck_exit_code_follows_healthz(
    services: dict[str, Any], health_server: HTTPServer, status: int, healthy: bool
) -> None:
    _Health.status = status
    code = services["api"]["healthcheck"]["test"][3].replace(
        "127.0.0.1:8000", f"127.0.0.1:{health_server.server_address[1]}"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
    assert (result.returncode == 0) is healthy, result.stderr.decode(errors="replace")


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_every_long_running_service_has_a_healthcheck(services: dict[str, Any], name: str) -> None:
    check = services[name].get("healthcheck") or {}
    assert check.get("test") and not check.get("disable"), f"{name} has no healthcheck"
    if name in LOOP_SERVICES:
        assert check["test"] == ["CMD", "python", "-m", "shared.health", name]
        # Docker gives up after interval x retries: more than the check's own limit
        # would hide nothing, less would flap on one slow beat.
        assert health.DEFAULT_MAX_AGE_SECONDS > 2 * health.BEAT_SECONDS


def test_workers_have_limits_that_three_fit_in_the_machine(services: dict[str, Any]) -> None:
    worker = services["worker"]
    cpus = float(interpolate(str(worker["cpus"])))
    memory = interpolate(str(worker["mem_limit"]))
    assert 0 < cpus and 3 * cpus <= REFERENCE_MACHINE_CPUS, f"3 x {cpus} CPUs on 2 cores"
    assert re.fullmatch(r"\d+[mg]", memory), memory
    assert float(interpolate(str(worker["cpus"]), {"WORKER_CPUS": "1.5"})) == 1.5
    # Docker kills after stop_grace_period: the worker's drain grace (30 s) must fit.
    assert int(str(worker["stop_grace_period"]).rstrip("s")) > Settings().worker_grace_seconds


def test_health_check_follows_the_heartbeat_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SWITCHYARD_HEALTH_DIR", str(tmp_path))
    healthy, why = health.check("worker", 30)
    assert not healthy and "no heartbeat" in why
    health.health_file("worker").touch()
    assert health.check("worker", 30)[0]
    assert not health.check("worker", 30, now=time.time() + 31)[0]
    result = subprocess.run(
        [sys.executable, "-m", "shared.health", "worker", "--max-age", "30"],
        env={**os.environ, "SWITCHYARD_HEALTH_DIR": str(tmp_path)},
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    os.utime(health.health_file("worker"), (time.time() - 60, time.time() - 60))
    result = subprocess.run(
        [sys.executable, "-m", "shared.health", "worker", "--max-age", "30"],
        env={**os.environ, "SWITCHYARD_HEALTH_DIR": str(tmp_path)},
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 1 and b"silent for 60" in result.stderr


def test_run_service_touches_the_heartbeat_while_its_loop_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SWITCHYARD_HEALTH_DIR", str(tmp_path))
    path = health.health_file("logger")
    seen: list[float] = []

    async def serve(settings: Settings, stop: asyncio.Event) -> int:
        for _ in range(1000):  # up to 10 s for the first beat
            if path.exists():
                break
            await asyncio.sleep(0.01)
        seen.append(path.stat().st_mtime)
        return 7

    assert run_service("logger", serve, gc_tuning=False) == 7
    assert seen and time.time() - seen[0] < 10
    assert health.check("logger", 30)[0]


def test_worker_can_be_scaled(services: dict[str, Any]) -> None:
    worker = services["worker"]
    assert "container_name" not in worker, "container_name forbids --scale worker=N"
    published = [host for host, _ in port_mappings(worker) if host]
    assert not published, f"host ports {published} forbid --scale worker=N"
    assert "hostname" not in worker


# --- Dockerfile and .dockerignore ------------------------------------------------------


def test_dockerfile_base_is_python_311() -> None:
    froms = [args.split()[0] for ins, args in dockerfile_instructions() if ins == "FROM"]
    assert froms, "Dockerfile has no FROM"
    final = froms[-1]
    assert re.fullmatch(r"python:3\.11(\.\d+)?(-[a-z0-9.-]+)?(@sha256:[0-9a-f]{64})?", final), final


def test_dockerfile_installs_the_project_and_runs_the_api() -> None:
    instructions = dockerfile_instructions()
    runs = " ".join(args for ins, args in instructions if ins == "RUN")
    assert re.search(r"pip install[^&;]*\s\.(\s|$)", runs), "the project is not pip-installed"
    assert not re.search(r"pip install[^&;]*\s(-e|--editable)\s", runs), "editable install"
    assert "[dev]" not in runs, "dev extras in the image"

    copied = " ".join(args for ins, args in instructions if ins in ("COPY", "ADD"))
    for needed in ("alembic.ini", "shared", "services", "switchyard", "pyproject.toml"):
        assert needed in copied, f"{needed} is not copied into the image"

    cmds = [args for ins, args in instructions if ins == "CMD"]
    assert cmds and json.loads(cmds[-1]) == ["python", "-m", "services.api"]


def test_dockerfile_runs_as_non_root() -> None:
    users = [args.split(":")[0] for ins, args in dockerfile_instructions() if ins == "USER"]
    assert users, "no USER: the container runs as root"
    assert users[-1] not in ("root", "0")


def test_dockerignore_keeps_the_context_small() -> None:
    patterns = {
        line.strip().strip("/")
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    for needed in (".venv", ".git", "bench/results", ".pytest_cache", ".ruff_cache"):
        assert needed in patterns, f".dockerignore does not exclude {needed}"
    assert any("__pycache__" in p for p in patterns)
    for kept in ("pyproject.toml", "alembic.ini", "shared", "services", "switchyard"):
        assert kept not in patterns, f".dockerignore excludes {kept}, which the image needs"


def test_prometheus_scrapes_the_api(services: dict[str, Any]) -> None:
    prom = services["prometheus"]
    assert prom["profiles"] == ["monitoring"]
    assert prom["image"].startswith("prom/prometheus:")
    mount = next(v for v in prom["volumes"] if v.endswith("/etc/prometheus/prometheus.yml:ro"))
    config = yaml.safe_load((ROOT / mount.split(":")[0].removeprefix("./")).read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["api:8000"]
    assert services["api"]["ports"][0].endswith(":8000") or "8000" in str(
        services["api"]["ports"][0]
    )
