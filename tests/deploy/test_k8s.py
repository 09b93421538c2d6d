"""deploy/k8s and the Grafana dashboard, checked offline: no cluster, KEDA or Grafana runs here."""

from __future__ import annotations

import copy
import json
import os
import re
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

import shared.metrics
from shared.metrics import QUEUE_BACKLOG, QUEUE_DEPTH
from shared.models import InferenceType
from shared.registry import load_registry
from shared.settings import Settings
from tests.deploy.common import (
    K8S,
    ROOT,
    container,
    dockerfile_user,
    filled,
    redis_flags,
    secret_env,
    selects,
    strings_in,
)

DASHBOARD = ROOT / "deploy" / "grafana" / "easel-dashboard.json"
NGINX = ROOT / "deploy" / "nginx"
UPSTREAM_SERVER = re.compile(r"^(\s*server\s+)(\S+);", re.MULTILINE)
K8S_VERSION = "1.37"
KEDA_API = "keda.sh/v1alpha1"
KEDA_KINDS = {"ScaledObject", "TriggerAuthentication"}
REDIS_POLICIES = {
    "--appendonly": "yes",
    "--appendfsync": "everysec",
    "--maxmemory-policy": "noeviction",
}

Doc = dict[str, Any]


def load_manifests() -> list[tuple[str, Doc]]:
    """Every document of every manifest in deploy/k8s, with its file name."""
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


MANIFESTS = load_manifests()


def named(kind: str) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for _, d in MANIFESTS if d["kind"] == kind}


def workers() -> dict[InferenceType, Doc]:
    """The worker Deployments, by the GPU class their label names."""
    return {
        InferenceType(d["metadata"]["labels"]["easel/gpu-class"]): d
        for d in named("Deployment").values()
        if d["metadata"]["labels"].get("app.kubernetes.io/component") == "worker"
    }


def scaled_objects_by_target() -> dict[str, Doc]:
    return {d["spec"]["scaleTargetRef"]["name"]: d for d in named("ScaledObject").values()}


def workloads() -> dict[str, Doc]:
    """Every Deployment and StatefulSet, by name."""
    return {**named("Deployment"), **named("StatefulSet")}


def pod_labels(workload: Doc) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def secrets_read(workload: Doc) -> set[str]:
    """The Secrets a workload's container reads, whole or by key."""
    spec = container(workload)
    whole = {s["secretRef"]["name"] for s in spec.get("envFrom", []) if "secretRef" in s}
    return whole | {name for name, _ in secret_env(spec).values()}


Peers = tuple[set[str], set[str], bool, set[int]]


def admitted(workload: Doc, policies: list[Doc] | None = None) -> Peers:
    """Who the NetworkPolicies (deploy/k8s's unless given) let connect to a workload's pods:
    the workloads of this namespace, the other namespaces (by name), whether anyone at all,
    and on which ports."""
    labels, everyone = pod_labels(workload), workloads()
    pods: set[str] = set()
    namespaces: set[str] = set()
    anyone = False
    ports: set[int] = set()
    for policy in named("NetworkPolicy").values() if policies is None else policies:
        if not selects(policy["spec"]["podSelector"], labels):
            continue
        for rule in policy["spec"].get("ingress", []):
            ports |= {p["port"] for p in rule["ports"]}
            anyone |= "from" not in rule
            for peer in rule.get("from", []):
                assert len(peer) == 1, f"{policy['metadata']['name']}: one selector per peer"
                if "podSelector" in peer:
                    pods |= {
                        n
                        for n, w in everyone.items()
                        if selects(peer["podSelector"], pod_labels(w))
                    }
                else:
                    namespaces.add(
                        peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                    )
    return pods, namespaces, anyone, ports


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No EASEL_* variable from the machine running the tests leaks into Settings()."""
    for name in [n for n in os.environ if n.startswith("EASEL_")]:
        monkeypatch.delenv(name)
    return monkeypatch


# Kubernetes schemas


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(on_disk)
    assert kustomization["namespace"] == named("Namespace").popitem()[0]


@pytest.mark.parametrize(
    "doc",
    [d for _, d in MANIFESTS if d["kind"] not in KEDA_KINDS],
    ids=[
        f"{f}:{d['kind']}/{d['metadata']['name']}"
        for f, d in MANIFESTS
        if d["kind"] not in KEDA_KINDS
    ],
)
def test_manifest_matches_the_kubernetes_schema(doc: Doc) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_schema_check_would_catch_a_mistake() -> None:
    broken = copy.deepcopy(workers()[InferenceType.A10G])
    broken["spec"]["template"]["spec"]["nodeSelektor"] = {"x": "y"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_only_keda_resources_skip_the_schema() -> None:
    keda = [d for _, d in MANIFESTS if d["apiVersion"] == KEDA_API]
    assert {d["kind"] for d in keda} == KEDA_KINDS
    assert all(d["kind"] not in KEDA_KINDS for _, d in MANIFESTS if d not in keda)


def test_every_reference_to_a_config_map_or_secret_resolves() -> None:
    config_maps, secrets = named("ConfigMap"), named("Secret")
    for workload in [*named("Deployment").values(), *named("StatefulSet").values()]:
        spec = container(workload)
        for source in spec.get("envFrom", []):
            if "configMapRef" in source:
                assert source["configMapRef"]["name"] in config_maps
            else:
                assert source["secretRef"]["name"] in secrets
        for var in spec.get("env", []):
            if ref := var.get("valueFrom", {}).get("secretKeyRef"):
                assert ref["key"] in secrets[ref["name"]]["stringData"]


def test_every_service_selects_a_workload_and_a_named_port() -> None:
    workloads = [*named("Deployment").values(), *named("StatefulSet").values()]
    for name, service in named("Service").items():
        chosen = [
            w
            for w in workloads
            if service["spec"]["selector"].items()
            <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(chosen) == 1, name
        ports = {p["name"] for p in container(chosen[0])["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports, name


# Queues and autoscaling


def test_queue_names_match_the_settings_one_per_gpu_class(clean_env: pytest.MonkeyPatch) -> None:
    queues = {str(k): v for k, v in Settings().queues.items()}
    assert json.loads(named("ConfigMap")["easel-config"]["data"]["EASEL_QUEUES"]) == queues
    list_names = [
        so["spec"]["triggers"][0]["metadata"]["listName"] for so in named("ScaledObject").values()
    ]
    assert sorted(list_names) == sorted(queues.values())
    assert set(workers()) == set(InferenceType)


def test_each_worker_consumes_the_queue_its_scaled_object_watches(
    clean_env: pytest.MonkeyPatch,
) -> None:
    config = named("ConfigMap")["easel-config"]["data"]
    secret = filled(named("Secret")["easel-secrets"]["stringData"])
    by_target = scaled_objects_by_target()
    registry = load_registry()
    for gpu, deployment in workers().items():
        spec = container(deployment)
        assert spec["command"] == ["easel", "worker", "--gpu", gpu.value]
        env = {**config, **secret, **{v["name"]: v["value"] for v in spec["env"]}}
        for name, value in env.items():
            clean_env.setenv(name, value)
        settings = Settings()
        assert settings.worker_gpu == gpu
        trigger = by_target[deployment["metadata"]["name"]]["spec"]["triggers"][0]
        assert settings.queue_for(settings.worker_gpu) == trigger["metadata"]["listName"]
        assert settings.warm_models, f"{gpu}: readiness means nothing without a warm model"
        for app_id in settings.warm_models:
            registry.check_runnable(app_id, gpu)


def test_scaled_objects_scale_each_worker_from_zero_on_its_redis_list() -> None:
    by_target = scaled_objects_by_target()
    worker_names = {d["metadata"]["name"] for d in workers().values()}
    assert set(by_target) == worker_names
    auths, secrets = named("TriggerAuthentication"), named("Secret")
    for so in named("ScaledObject").values():
        assert (so["apiVersion"], so["kind"]) == (KEDA_API, "ScaledObject")
        assert so["spec"]["minReplicaCount"] == 0
        assert so["spec"]["maxReplicaCount"] >= 1
        (trigger,) = so["spec"]["triggers"]
        assert trigger["type"] == "redis"
        assert int(trigger["metadata"]["listLength"]) >= 1
        auth = auths[trigger["authenticationRef"]["name"]]
        assert auth["apiVersion"] == KEDA_API
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["key"] in secrets[ref["name"]]["stringData"]


def test_keda_watches_the_redis_the_workers_use() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    service = named("Service")["redis"]
    (port,) = service["spec"]["ports"]
    url = urlsplit(named("Secret")["easel-secrets"]["stringData"]["EASEL_REDIS_URL"])
    assert (url.hostname, url.port) == ("redis", port["port"])
    expected = f"redis.{kustomization['namespace']}.svc.cluster.local:{port['port']}"
    for so in named("ScaledObject").values():
        metadata = so["spec"]["triggers"][0]["metadata"]
        assert metadata["address"] == expected
        assert metadata["databaseIndex"] == url.path.lstrip("/")


# Workers, API, webhooks, Flower


def test_every_worker_gets_one_gpu_on_its_class_of_node() -> None:
    for gpu, deployment in workers().items():
        pod = deployment["spec"]["template"]
        spec = container(deployment)
        assert int(spec["resources"]["limits"]["nvidia.com/gpu"]) == 1
        assert gpu.value.upper() in pod["spec"]["nodeSelector"]["nvidia.com/gpu.product"]
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
            "spec"
        ]["tolerations"]
        assert spec["readinessProbe"]["exec"]["command"] == ["python", "-m", "worker.ready"]
        assert {"name": "metrics", "containerPort": 9100} in spec["ports"]
        assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
        assert pod["metadata"]["annotations"]["prometheus.io/port"] == "9100"


def test_api_is_probed_and_scales_on_cpu() -> None:
    api = named("Deployment")["easel-api"]
    spec = container(api)
    assert spec["command"] == ["easel", "api", "--bind", "0.0.0.0:8000"]
    assert {"name": "http", "containerPort": 8000} in spec["ports"]
    assert spec["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert spec["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert "cpu" in spec["resources"]["requests"]  # utilization is measured against it
    hpa = named("HorizontalPodAutoscaler")["easel-api"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "easel-api"
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]


def test_webhook_deliverer_and_flower_run() -> None:
    deployments = named("Deployment")
    assert container(deployments["easel-webhooks"])["command"] == ["easel", "webhooks"]
    flower = container(deployments["flower"])
    assert flower["command"][:2] == ["celery", "--broker=$(EASEL_REDIS_URL)"]
    assert "flower" in flower["command"]
    assert "EASEL_REDIS_URL" in {v["name"] for v in flower["env"]}


# The nginx proxy in front of the API (deploy/nginx/easel.conf says why it is required)


def test_proxy_config_is_the_compose_one_pointed_at_the_api_service() -> None:
    """tests/deploy/test_compose.py pins the config's timeouts, buffering and limits; this
    pins that Kubernetes runs that very config, but for the upstream address."""
    compose_conf = (NGINX / "easel.conf").read_text()
    assert [m[2] for m in UPSTREAM_SERVER.finditer(compose_conf)] == ["api:8000"]
    (api_port,) = named("Service")["easel-api"]["spec"]["ports"]
    k8s_conf = UPSTREAM_SERVER.sub(rf"\g<1>easel-api:{api_port['port']};", compose_conf)
    assert named("ConfigMap")["easel-proxy"]["data"] == {
        "nginx.conf": (NGINX / "nginx.conf").read_text(),
        "easel.conf": k8s_conf,
    }


def test_proxy_runs_unprivileged_with_its_config_and_is_probed_through_to_the_api() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert "proxy.yaml" in kustomization["resources"]
    proxy = named("Deployment")["easel-proxy"]
    pod, spec = proxy["spec"]["template"]["spec"], container(proxy)
    conf = named("ConfigMap")["easel-proxy"]["data"]
    assert proxy["spec"]["replicas"] == 2
    assert spec["image"].startswith("nginxinc/nginx-unprivileged:")
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["name"]: m["mountPath"] for m in spec["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    (config,) = [
        n for n, v in volumes.items() if v.get("configMap", {}).get("name") == "easel-proxy"
    ]
    assert spec["command"] == ["nginx", "-c", f"{mounts[config]}/nginx.conf"]
    assert f"include {mounts[config]}/easel.conf;" in conf["nginx.conf"]
    assert "/tmp" in mounts.values()  # pid, buffered bodies: the only place nginx writes
    listen = re.search(r"^\s*listen\s+(\d+);", conf["easel.conf"], re.MULTILINE)
    assert listen and {"name": "http", "containerPort": int(listen[1])} in spec["ports"]
    assert spec["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert "cpu" in spec["resources"]["requests"] and "memory" in spec["resources"]["limits"]
    # nginx stops gracefully: a request it holds for the API may take proxy_read_timeout.
    read = re.search(r"proxy_read_timeout\s+(\d+)s;", conf["easel.conf"])
    assert read and pod["terminationGracePeriodSeconds"] > int(read[1])


def test_proxy_is_the_only_public_service() -> None:
    services = named("Service")
    public = {n for n, s in services.items() if s["spec"].get("type", "ClusterIP") != "ClusterIP"}
    assert public == {"easel-proxy"}
    proxy = services["easel-proxy"]["spec"]
    labels = named("Deployment")["easel-proxy"]["spec"]["template"]["metadata"]["labels"]
    assert proxy["selector"].items() <= labels.items()
    assert [p["targetPort"] for p in proxy["ports"]] == ["http"]
    # The client's own address, for the per-client connection limit and X-Forwarded-For.
    assert proxy["externalTrafficPolicy"] == "Local"


# Redis durability, in Kubernetes and in docker-compose


def test_redis_keeps_an_fsynced_append_only_file_and_never_evicts() -> None:
    redis = named("StatefulSet")["redis"]
    spec = container(redis)
    assert redis_flags(spec["args"]).items() >= REDIS_POLICIES.items()
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    mount = {m["name"]: m["mountPath"] for m in spec["volumeMounts"]}[claim["metadata"]["name"]]
    assert mount == redis_flags(spec["args"])["--dir"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert redis_flags(compose["services"]["redis"]["command"]).items() >= REDIS_POLICIES.items()


# Safe defaults (docs/kubernetes.md, "Security defaults")

WORKERS = {f"easel-worker-{gpu}" for gpu in InferenceType}
REDIS_CLIENTS = {"easel-api", "easel-webhooks", "flower", *WORKERS}
KEDA_NAMESPACE = "keda"  # docs/kubernetes.md's helm install
PROMETHEUS_NAMESPACE = "monitoring"


def redis_password() -> str:
    password: str = named("Secret")["easel-redis-auth"]["stringData"]["password"]
    return password


def test_redis_requires_the_password_every_redis_url_carries() -> None:
    spec = container(named("StatefulSet")["redis"])
    assert redis_flags(spec["args"])["--requirepass"] == "$(REDIS_PASSWORD)"
    auth = ("easel-redis-auth", "password")
    assert secret_env(spec) == {"REDIS_PASSWORD": auth, "REDISCLI_AUTH": auth}
    assert spec["readinessProbe"]["exec"]["command"][0] == "redis-cli"  # REDISCLI_AUTH: logged in
    assert redis_password()
    urls = [s for _, doc in MANIFESTS for s in strings_in(doc) if "redis://" in s]
    assert urls == [named("Secret")["easel-secrets"]["stringData"]["EASEL_REDIS_URL"]]
    assert urlsplit(urls[0]).password == redis_password()


def test_every_redis_client_gets_the_url_with_the_password() -> None:
    """The URL (and its password) lives in easel-secrets; every Redis client reads it there."""
    users = {n for n, w in workloads().items() if "easel-secrets" in secrets_read(w)}
    assert users == REDIS_CLIENTS
    flower = container(named("Deployment")["flower"])
    assert secret_env(flower)["EASEL_REDIS_URL"] == ("easel-secrets", "EASEL_REDIS_URL")
    assert "--broker=$(EASEL_REDIS_URL)" in flower["command"]


def test_keda_reads_queue_lengths_with_the_redis_password() -> None:
    auths = named("TriggerAuthentication")
    for so in named("ScaledObject").values():
        (trigger,) = so["spec"]["triggers"]
        assert "password" not in trigger["metadata"]  # never inline
        auth = auths[trigger["authenticationRef"]["name"]]
        assert {"parameter": "password", "name": "easel-redis-auth", "key": "password"} in auth[
            "spec"
        ]["secretTargetRef"]


def test_flower_is_internal_and_asks_for_a_login() -> None:
    service = named("Service")["flower"]
    assert service["spec"]["type"] == "ClusterIP"
    assert not named("Ingress")
    flower = named("Deployment")["flower"]
    spec = container(flower)
    assert "--basic-auth=$(EASEL_FLOWER_AUTH)" in spec["command"]
    assert secret_env(spec)["EASEL_FLOWER_AUTH"] == ("easel-flower-auth", "basic-auth")
    user, _, password = named("Secret")["easel-flower-auth"]["stringData"]["basic-auth"].partition(
        ":"
    )
    assert user and password
    readers = {n for n, w in workloads().items() if "easel-flower-auth" in secrets_read(w)}
    assert readers == {"flower"}
    assert spec["readinessProbe"]["httpGet"]["path"] == "/healthcheck"  # needs no login


def test_network_policies_deny_every_ingress_not_listed() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert "network-policy.yaml" in kustomization["resources"]
    (deny,) = [p for p in named("NetworkPolicy").values() if not p["spec"]["podSelector"]]
    assert deny["spec"]["policyTypes"] == ["Ingress"] and "ingress" not in deny["spec"]


def test_only_redis_clients_and_keda_reach_redis_and_the_rest_is_as_intended() -> None:
    """Each workload admits exactly these peers: (workloads, namespaces, anyone, port name)."""
    intended: dict[str, tuple[set[str], set[str], bool, str | None]] = {
        "redis": (REDIS_CLIENTS, {KEDA_NAMESPACE}, False, "redis"),
        "easel-api": ({"easel-proxy"}, {PROMETHEUS_NAMESPACE}, False, "http"),
        "easel-proxy": (set(), set(), True, "http"),
        "easel-webhooks": (set(), set(), False, None),
        "flower": (set(), set(), False, None),
        **{name: (set(), {PROMETHEUS_NAMESPACE}, False, "metrics") for name in WORKERS},
    }
    assert set(intended) == set(workloads())
    for name, workload in workloads().items():
        pods, namespaces, anyone, ports = admitted(workload)
        wanted_pods, wanted_namespaces, wanted_anyone, port_name = intended[name]
        assert (pods, namespaces, anyone) == (wanted_pods, wanted_namespaces, wanted_anyone), name
        container_ports = {
            p["name"]: p["containerPort"] for p in container(workload).get("ports", [])
        }
        assert ports == ({container_ports[port_name]} if port_name else set()), name


def test_policy_check_would_catch_a_pod_let_in() -> None:
    assert selects({}, {"a": "b"})
    assert selects({"matchExpressions": [{"key": "c", "operator": "Exists"}]}, {"c": "x"})
    assert not selects({"matchLabels": {"a": "b"}}, {"a": "c"})
    assert not selects({"matchExpressions": [{"key": "c", "operator": "In", "values": ["x"]}]}, {})
    redis = workloads()["redis"]
    leaky = copy.deepcopy(named("NetworkPolicy")["redis"])
    (rule,) = leaky["spec"]["ingress"]
    rule["from"][0]["podSelector"]["matchExpressions"][1]["values"].append("proxy")
    assert admitted(redis, [leaky])[0] == REDIS_CLIENTS | {"easel-proxy"}
    del rule["from"]  # from anywhere
    assert admitted(redis, [leaky])[2] is True


def test_easel_pods_run_as_their_images_non_root_users() -> None:
    images = {"easel-api": dockerfile_user("api"), "easel-worker": dockerfile_user("worker")}
    for name, workload in workloads().items():
        pod, spec = workload["spec"]["template"]["spec"], container(workload)
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] > 0, name
        if spec["image"] in images:
            uid, gid = images[spec["image"]]
            assert (context["runAsUser"], context["runAsGroup"]) == (uid, gid), name
        if name != "redis":  # the official image's entrypoint is left as it ships
            assert spec["securityContext"]["allowPrivilegeEscalation"] is False, name
            assert spec["securityContext"]["capabilities"]["drop"] == ["ALL"], name
    config = named("ConfigMap")["easel-config"]["data"]
    for name in WORKERS:  # the model volume is the worker user's
        pod = workloads()[name]["spec"]["template"]["spec"]
        assert pod["securityContext"]["fsGroup"] == dockerfile_user("worker")[1]
        mounts = {m["mountPath"] for m in container(workloads()[name])["volumeMounts"]}
        assert config["EASEL_MODEL_DIR"] in mounts


# The Grafana dashboard

METRICS: dict[str, set[str]] = {
    "easel_jobs_total": {"state", "app_id", "inference_type"},
    "easel_queue_wait_seconds": {"app_id", "inference_type"},
    "easel_model_load_seconds": {"app_id", "inference_type"},
    "easel_inference_seconds": {"app_id", "inference_type"},
    "easel_upload_seconds": {"app_id", "inference_type"},
    "easel_end_to_end_seconds": {"app_id", "inference_type"},
    "easel_batch_images": {"app_id", "inference_type"},
    "easel_batch_jobs": {"app_id", "inference_type"},
    "easel_gpu_idle_seconds": {"inference_type"},
    "easel_queue_depth": {"inference_type"},
    "easel_queue_backlog": {"inference_type", "key"},
    "easel_worker_inflight": {"worker"},
    "easel_gpu_memory_bytes": {"device"},
    "easel_http_requests_total": {"method", "endpoint", "status"},
    "easel_http_request_seconds": {"method", "endpoint"},
}
HISTOGRAMS = {n for n in METRICS if n.endswith("_seconds")} | {
    "easel_batch_images",
    "easel_batch_jobs",
}
SCRAPE_LABELS = {"instance", "job"}
PROMQL_WORDS = {"and", "or", "unless", "bool", "offset"}


def series(name: str) -> tuple[str, set[str]]:
    """The metric a series name belongs to, and the labels it carries; KeyError if unknown."""
    if name in METRICS:
        return name, METRICS[name]
    base, _, suffix = name.rpartition("_")
    if base in HISTOGRAMS and suffix in {"bucket", "sum", "count"}:
        return base, METRICS[base] | ({"le"} if suffix == "bucket" else set())
    raise KeyError(name)


def metrics_in(expr: str) -> set[str]:
    """The Easel metrics a PromQL expression reads; AssertionError on an unknown name or label."""
    expr = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)
    expr = re.sub(r"\[[^\]]*\]|\$\{?\w+\}?", "", expr)  # ranges, Grafana variables
    found: dict[str, set[str]] = {}
    for name, matchers in re.findall(r"(?<![\w.])([A-Za-z_:][\w:]*)\s*\{([^}]*)\}", expr):
        _, labels = series(name)
        used = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers))
        assert used <= labels, f"{name} has no label {used - labels} in {expr}"
    expr = re.sub(r"\{[^}]*\}", "", expr)
    groupings = re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr)
    expr = re.sub(r"\b(?:by|without)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"(?<![\w.])[A-Za-z_:][\w:]*\s*\(", "(", expr)  # functions, aggregations
    for name in re.findall(r"(?<![\w.])[A-Za-z_:][\w:]*", expr):
        if name not in PROMQL_WORDS:
            try:
                base, labels = series(name)
            except KeyError:
                raise AssertionError(f"unknown metric {name!r} in {expr}") from None
            found[base] = labels
    available = set().union(*found.values(), SCRAPE_LABELS) if found else set()
    for grouping in groupings:
        used = {label.strip() for label in grouping.split(",")}
        assert used <= available, f"no metric here has {used - available}: {expr}"
    return set(found)


def panels(dashboard: Doc) -> list[Doc]:
    flat = []
    for panel in dashboard["panels"]:
        flat += [panel, *panel.get("panels", [])]
    return flat


@pytest.fixture(scope="module")
def dashboard() -> Doc:
    data: Doc = json.loads(DASHBOARD.read_text())
    return data


@pytest.fixture(scope="module")
def queries(dashboard: Doc) -> dict[str, list[str]]:
    """Every PromQL expression, by panel title."""
    return {p["title"]: [t["expr"] for t in p.get("targets", [])] for p in panels(dashboard)}


def test_dashboard_queries_read_only_known_metrics_and_labels(
    dashboard: Doc, queries: dict[str, list[str]]
) -> None:
    for title, exprs in queries.items():
        for expr in exprs:
            assert metrics_in(expr), f"{title}: {expr} reads no Easel metric"
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            call = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable["definition"])
            assert call, variable["definition"]
            assert call[2] in series(call[1])[1]


def test_metric_check_would_catch_a_typo_or_a_wrong_label() -> None:
    assert metrics_in('sum by (state) (rate(easel_jobs_total{app_id="x"}[5m]))') == {
        "easel_jobs_total"
    }
    with pytest.raises(AssertionError, match="unknown metric"):
        metrics_in("sum(rate(easel_job_total[5m]))")
    with pytest.raises(AssertionError, match="no label"):
        metrics_in('easel_queue_depth{gpu="a10g"}')
    with pytest.raises(AssertionError, match="no metric here has"):
        metrics_in("sum by (worker) (easel_queue_depth)")


def defined_metrics() -> dict[str, set[str]]:
    """Every metric shared/metrics.py defines, by the name a scrape shows, with its labels."""
    # Names only: api/metrics.py builds these per scrape.
    found = {QUEUE_DEPTH: {"inference_type"}, QUEUE_BACKLOG: {"inference_type", "key"}}
    for value in vars(shared.metrics).values():
        if isinstance(value, MetricWrapperBase):
            suffix = "_total" if value._type == "counter" else ""  # a Counter's name drops it
            found[value._name + suffix] = set(value._labelnames)
    return found


def test_the_dashboards_metrics_are_the_ones_shared_metrics_defines() -> None:
    assert defined_metrics() == METRICS


def test_every_metric_appears_in_a_panel(queries: dict[str, list[str]]) -> None:
    seen = set().union(*(metrics_in(e) for exprs in queries.values() for e in exprs))
    assert seen == set(METRICS)


def test_each_stage_histogram_shows_p50_and_p95_and_the_api_p99(
    queries: dict[str, list[str]],
) -> None:
    exprs = [re.sub(r"\s+", "", e) for es in queries.values() for e in es]
    for metric in {n for n in HISTOGRAMS if n.endswith("_seconds")} - {
        "easel_http_request_seconds"
    }:
        for quantile in ("0.5", "0.95"):
            assert any(
                f"histogram_quantile({quantile}," in e and f"{metric}_bucket" in e for e in exprs
            ), (
                metric,
                quantile,
            )
    assert any(
        "histogram_quantile(0.99," in e and "easel_http_request_seconds_bucket" in e for e in exprs
    )


def test_the_asked_for_panels_exist_with_unique_ids(
    dashboard: Doc, queries: dict[str, list[str]]
) -> None:
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids))
    flat = {title: " ".join(exprs) for title, exprs in queries.items()}
    assert "by (state)" in flat["Job rate by state"]
    assert "by (inference_type)" in flat["Queue depth per GPU class"]
    assert "by (worker)" in flat["In-flight jobs per worker"]
    assert "easel_batch_images_bucket" in flat["Images per pipeline call"]
    assert "easel_batch_jobs_bucket" in flat["Jobs per pipeline call"]
    mean = flat["Mean images and jobs per call"]
    for name in ("images", "jobs"):  # a mean per call: the sum's rate over the count's
        assert f"rate(easel_batch_{name}_sum" in mean and f"rate(easel_batch_{name}_count" in mean
    assert 'status=~"5.."' in flat["Error rate"] and 'state="failed"' in flat["Error rate"]
