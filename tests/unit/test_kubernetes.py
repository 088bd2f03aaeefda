"""deploy/kubernetes renders with `kubectl kustomize`, every object validates offline (the
Kubernetes schemas of `kubernetes-validate`, KEDA's kept in deploy/kubernetes/schemas),
and the settings that matter hold: drains fit the grace period, containers have limits
and probes, images are pinned, pods run as non-root, no secret is in the repository."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from services.api.metrics import READY_JOBS_BY_TYPE, Metrics
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
SCHEMAS = KUBERNETES / "schemas"
OVERLAYS = ("dev", "production")
# The oldest Kubernetes these manifests promise to work on (policy/v1, autoscaling/v2).
KUBERNETES_VERSION = "1.29.0"
KUBECTL = shutil.which("kubectl")


def kubectl_unusable() -> str | None:
    """Why `kubectl kustomize` cannot render these manifests here, or None. The
    overlays use components, `labels` and `replicas`: kustomize v4 or later, embedded in
    kubectl from 1.21 on (Debian 12's kubernetes-client is 1.20, with kustomize v2)."""
    if KUBECTL is None:
        return (
            "kubectl not found: install it (Debian: apt-get install kubernetes-client; "
            ".ci/run does) to render deploy/kubernetes"
        )
    done = subprocess.run(
        [KUBECTL, "version", "--client"], capture_output=True, text=True, timeout=30, check=False
    )
    found = re.search(r"Kustomize Version: v(\d+)", done.stdout)
    if found is None or int(found[1]) < 4:
        return (
            f"{KUBECTL} embeds no kustomize v4+ ({done.stdout.strip()!r}): the overlays need "
            "kubectl 1.21 or later"
        )
    return None


UNUSABLE = kubectl_unusable()
kubectl_needed = pytest.mark.skipif(UNUSABLE is not None, reason=UNUSABLE or "")
Object = dict[str, Any]


def kustomize(directory: Path) -> list[Object]:
    assert KUBECTL is not None
    done = subprocess.run(
        [KUBECTL, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"kubectl kustomize {directory} failed:\n{done.stderr}"
    return [o for o in yaml.safe_load_all(done.stdout) if o]


def render_with_postgresql_scaler(tmp: Path) -> list[Object]:
    """The base with components/keda-postgresql, the alternative to the Prometheus
    trigger (kustomize takes relative paths only)."""
    up = os.path.relpath(KUBERNETES, tmp)
    (tmp / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"namespace: switchyard\nresources: [{up}/base]\n"
        f"components: [{up}/components/keda-postgresql]\n"
    )
    return kustomize(tmp)


@pytest.fixture(scope="module")
def renderings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Object]]:
    if UNUSABLE is not None:
        pytest.skip(UNUSABLE)
    out = {name: kustomize(KUBERNETES / "overlays" / name) for name in OVERLAYS}
    out["production-postgresql-scaler"] = render_with_postgresql_scaler(
        tmp_path_factory.mktemp("pg-scaler")
    )
    return out


def all_objects(renderings: dict[str, list[Object]]) -> list[tuple[str, Object]]:
    return [(name, o) for name, objects in renderings.items() for o in objects]


def pod_templates(objects: list[Object]) -> list[tuple[str, Object]]:
    """(kind/name, pod spec) of every workload."""
    out = []
    for o in objects:
        if o["kind"] in ("Deployment", "StatefulSet", "Job"):
            out.append((f"{o['kind']}/{o['metadata']['name']}", o["spec"]["template"]["spec"]))
    return out


def find(objects: list[Object], kind: str, name: str) -> Object:
    (match,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return match


def quantity(text: str | int) -> Decimal:
    """A Kubernetes quantity ("500m", "2", "1Gi") as a number."""
    units = {"m": Decimal("0.001"), "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
             "k": 10**3, "M": 10**6, "G": 10**9}  # fmt: skip
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(text))
    assert match, f"not a quantity: {text!r}"
    return Decimal(match[1]) * Decimal(units.get(match[2], 1) if match[2] else 1)


@kubectl_needed
def test_every_overlay_renders(renderings: dict[str, list[Object]]) -> None:
    for name, objects in renderings.items():
        kinds = {o["kind"] for o in objects}
        assert {"Deployment", "Service", "ConfigMap", "Job", "PodDisruptionBudget"} <= kinds, name
    assert {o["kind"] for o in renderings["dev"]} >= {"StatefulSet"}  # in-cluster infra
    assert "StatefulSet" not in {o["kind"] for o in renderings["production"]}  # external
    assert "ScaledObject" in {o["kind"] for o in renderings["production"]}


@kubectl_needed
def test_every_object_validates_against_its_schema(renderings: dict[str, list[Object]]) -> None:
    import kubernetes_validate

    keda = {
        kind: json.loads((SCHEMAS / f"keda.sh_{kind.lower()}_v1alpha1.json").read_text())
        for kind in ("ScaledObject", "TriggerAuthentication")
    }
    checked = 0
    for name, o in all_objects(renderings):
        where = f"{name}: {o['kind']}/{o['metadata']['name']}"
        if o["apiVersion"].startswith("keda.sh/"):
            try:
                jsonschema.Draft202012Validator(keda[o["kind"]]).validate(o)
            except jsonschema.ValidationError as exc:
                pytest.fail(f"{where}: {exc.message} at {list(exc.absolute_path)}")
        else:
            try:
                kubernetes_validate.validate(o, KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{where}: {exc.message} at {list(exc.absolute_path)}")
        checked += 1
    assert checked > 30


def test_the_kept_keda_schema_refuses_what_keda_would() -> None:
    """The schema can fail: a number where KEDA wants a string, an unknown field."""
    schema = json.loads((SCHEMAS / "keda.sh_scaledobject_v1alpha1.json").read_text())
    good = yaml.safe_load((KUBERNETES / "components/keda-prometheus/scaledobject.yaml").read_text())
    jsonschema.Draft202012Validator(schema).validate(good)
    bad = json.loads(json.dumps(good))
    bad["spec"]["triggers"][0]["metadata"]["threshold"] = 10
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate(bad)
    bad = json.loads(json.dumps(good))
    bad["spec"]["maxReplicas"] = 5  # the HPA's name, not KEDA's
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate(bad)


@kubectl_needed
def test_worker_drain_fits_in_its_termination_grace(renderings: dict[str, list[Object]]) -> None:
    for name, objects in renderings.items():
        config = find(objects, "ConfigMap", "switchyard-config")["data"]
        grace = float(config["SWITCHYARD_WORKER_GRACE_SECONDS"])
        cancel_grace = Settings.model_fields["cancel_grace_seconds"].default
        pod = find(objects, "Deployment", "switchyard-worker")["spec"]["template"]["spec"]
        # Drain, then the cancel grace of what is handed back, then 10 s to report and exit.
        assert pod["terminationGracePeriodSeconds"] >= grace + cancel_grace + 10, name


@kubectl_needed
def test_every_container_has_resources_and_probes(renderings: dict[str, list[Object]]) -> None:
    for name, objects in renderings.items():
        for workload, pod in pod_templates(objects):
            for c in pod["containers"]:
                where = f"{name}: {workload} container {c['name']}"
                for bound in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(c.get("resources", {}).get(bound, {})), where
                if workload.startswith("Job/"):
                    continue  # runs to completion: nothing to probe
                assert "livenessProbe" in c and "readinessProbe" in c, where


@kubectl_needed
def test_probes_use_the_health_command_of_each_service(
    renderings: dict[str, list[Object]],
) -> None:
    """The services' probes check their own event loop (python -m shared.health NAME)."""
    objects = renderings["production"]
    for service in ("scheduler", "worker", "logger"):
        pod = find(objects, "Deployment", f"switchyard-{service}")["spec"]["template"]["spec"]
        probe = pod["containers"][0]["livenessProbe"]["exec"]["command"]
        assert probe[:4] == ["python", "-m", "shared.health", service]
    api = find(objects, "Deployment", "switchyard-api")["spec"]["template"]["spec"]
    assert api["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/healthz"


@kubectl_needed
def test_images_are_pinned_and_pods_run_as_non_root(renderings: dict[str, list[Object]]) -> None:
    for name, objects in renderings.items():
        for workload, pod in pod_templates(objects):
            assert pod["securityContext"]["runAsNonRoot"] is True, f"{name}: {workload}"
            for c in pod["containers"]:
                image = c["image"]
                tag = image.rpartition("/")[2].partition(":")[2]
                assert "@sha256:" in image or (tag and tag != "latest"), f"{name}: {image}"
                assert c["securityContext"]["allowPrivilegeEscalation"] is False


def test_no_secret_value_is_kept_in_the_repository() -> None:
    """Manifests name Secrets; none defines one, nor a generator with literals."""
    files = sorted(KUBERNETES.rglob("*.yaml"))
    assert files
    for file in files:
        for o in yaml.safe_load_all(file.read_text()):
            if not isinstance(o, dict):
                continue
            assert o.get("kind") != "Secret", f"{file}: a Secret with its data in the repo"
            for generator in o.get("secretGenerator", []):
                assert not generator.get("literals"), f"{file}: secretGenerator literals"


@kubectl_needed
def test_no_rendered_secret_carries_data(renderings: dict[str, list[Object]]) -> None:
    for name, o in all_objects(renderings):
        if o["kind"] == "Secret":
            assert not o.get("data") and not o.get("stringData"), name


@kubectl_needed
def test_worker_capacity_from_the_downward_api_is_what_its_limits_say(
    renderings: dict[str, list[Object]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The downward API rounds limits.cpu / divisor up to an integer: the settings must
    then read exactly the container's limits (no 2 cores offered for 1500m)."""
    for name, objects in renderings.items():
        pod = find(objects, "Deployment", "switchyard-worker")["spec"]["template"]["spec"]
        (worker,) = pod["containers"]
        limits = worker["resources"]["limits"]
        env = {e["name"]: e for e in worker["env"]}
        values: dict[str, str] = {}
        for var, resource in (
            ("SWITCHYARD_WORKER_CPU_UNITS", "limits.cpu"),
            ("SWITCHYARD_WORKER_MEMORY_MB", "limits.memory"),
        ):
            ref = env[var]["valueFrom"]["resourceFieldRef"]
            assert ref["resource"] == resource and ref["containerName"] == worker["name"]
            limit = quantity(limits[resource.split(".")[1]])
            values[var] = str(math.ceil(limit / quantity(ref.get("divisor", "1"))))
        for var, value in values.items():
            monkeypatch.setenv(var, value)
        settings = Settings()
        assert Decimal(str(settings.worker_cpu_units)) == quantity(limits["cpu"]), name
        assert settings.worker_memory_mb == quantity(limits["memory"]) / 2**20, name


@kubectl_needed
def test_config_names_only_real_settings(renderings: dict[str, list[Object]]) -> None:
    """A misspelt variable would be ignored silently: every one must be a setting."""
    known = {f"SWITCHYARD_{field.upper()}" for field in Settings.model_fields}
    known |= {"AMQP_URL", "DATABASE_URL", "SWITCHYARD_HEALTH_DIR"}  # aliases; shared.health
    for name, objects in renderings.items():
        names = set(find(objects, "ConfigMap", "switchyard-config")["data"])
        for _, pod in pod_templates(objects):
            for c in pod["containers"]:
                names |= {e["name"] for e in c.get("env", []) if c["image"].startswith(
                    ("switchyard", "registry.example.com/switchyard"))}  # fmt: skip
        assert names <= known, f"{name}: {sorted(names - known)}"


@kubectl_needed
def test_autoscaling_targets_the_workers_on_the_ready_backlog(
    renderings: dict[str, list[Object]],
) -> None:
    exposed = {m.name for m in Metrics().registry.collect()}
    assert "switchyard_ready_jobs" in exposed
    for name in ("production", "production-postgresql-scaler"):
        objects = renderings[name]
        scaled = find(objects, "ScaledObject", "switchyard-worker")
        spec = scaled["spec"]
        target = find(objects, "Deployment", spec["scaleTargetRef"]["name"])
        assert "replicas" not in target["spec"], "KEDA owns the worker count"
        assert 1 <= spec["minReplicaCount"] < spec["maxReplicaCount"]
        down = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
        assert down["stabilizationWindowSeconds"] >= 60
        assert all(p["type"] == "Pods" and p["value"] == 1 for p in down["policies"])
        (trigger,) = spec["triggers"]
        if trigger["type"] == "prometheus":
            assert "switchyard_ready_jobs" in trigger["metadata"]["query"]
            assert float(trigger["metadata"]["threshold"]) > 0
        else:
            assert trigger["type"] == "postgresql"
            query = trigger["metadata"]["query"]
            # The same rows as the metric's claimable half: the ready queue.
            assert query == "SELECT count(*) FROM ready_jobs"
            assert "FROM ready_jobs GROUP BY type" in READY_JOBS_BY_TYPE
            auth = find(objects, "TriggerAuthentication", trigger["authenticationRef"]["name"])
            assert auth["spec"]["secretTargetRef"][0]["parameter"] == "connection"
