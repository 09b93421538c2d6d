"""deploy/k8s/sentinel, the Component that gives deploy/k8s a Redis that fails over, checked
offline: built here as kustomize builds it (and compared with kustomize where kubectl is
installed), then read as the cluster would run it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from shared.models import InferenceType
from shared.redisconn import broker_transport_options, broker_url, sentinel_addresses
from shared.settings import Settings
from tests.deploy.common import (
    K8S,
    Doc,
    container,
    filled,
    redis_flags,
    secret_env,
    selects,
)

COMPONENT = K8S / "sentinel"
K8S_VERSION = "1.37"
KEDA_API = "keda.sh/v1alpha1"
# A patch merges these lists of a built-in kind entry by entry, on this key (kustomize's
# strategic merge); any other list, and every list of a custom resource, is replaced.
MERGE_KEYS = {"containers": "name", "env": "name", "volumes": "name", "volumeMounts": "mountPath"}
REDIS_POLICIES = {
    "--appendonly": "yes",
    "--appendfsync": "everysec",
    "--maxmemory-policy": "noeviction",
}
REDIS_CLIENTS = {"api", "worker", "webhooks", "flower"}  # pod components
KEDA_NAMESPACE = "keda"

Key = tuple[str, str]


def documents(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def kustomization(directory: Path) -> Doc:
    data: Doc = yaml.safe_load((directory / "kustomization.yaml").read_text())
    return data


def patched(base: Any, patch: Any, strategic: bool, key: str | None = None) -> Any:
    """``patch`` applied to ``base`` as kustomize applies a patch file: mappings merge, and a
    MERGE_KEYS list of a built-in kind (``strategic``) merges entry by entry, the patch's
    entries first; any other list is the patch's."""
    if isinstance(base, dict) and isinstance(patch, dict):
        return {
            k: patched(base[k], v, strategic, k) if k in base else v for k, v in patch.items()
        } | {k: v for k, v in base.items() if k not in patch}
    merge_key = MERGE_KEYS.get(key or "") if strategic else None
    if merge_key and isinstance(base, list) and isinstance(patch, list):
        old = {entry[merge_key]: entry for entry in base}
        new = {entry[merge_key] for entry in patch}
        merged = [
            patched(old[e[merge_key]], e, strategic) if e[merge_key] in old else e for e in patch
        ]
        return merged + [entry for entry in base if entry[merge_key] not in new]
    return patch


def build() -> dict[Key, Doc]:
    """deploy/k8s with the Component added, by (kind, name); namespace and labels left out."""
    docs = {
        (d["kind"], d["metadata"]["name"]): d
        for path in kustomization(K8S)["resources"]
        for d in documents(K8S / path)
    }
    component = kustomization(COMPONENT)
    for path in component["resources"]:
        for doc in documents(COMPONENT / path):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in docs, f"{path}: {key} is deploy/k8s's already"
            docs[key] = doc
    for entry in component["patches"]:
        for patch in documents(COMPONENT / entry["path"]):
            key = (patch["kind"], patch["metadata"]["name"])
            assert key in docs, f"{entry['path']}: no {key} to patch"
            docs[key] = patched(docs[key], patch, strategic=patch["apiVersion"] != KEDA_API)
    return docs


BUILT = build()
NAMESPACE: str = kustomization(K8S)["namespace"]


def named(kind: str) -> dict[str, Doc]:
    return {name: d for (k, name), d in BUILT.items() if k == kind}


def pod_labels(workload: Doc) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def pod_dns(statefulset: Doc, ordinal: int) -> str:
    """The DNS name of one pod of a StatefulSet, through its headless Service."""
    name, service = statefulset["metadata"]["name"], statefulset["spec"]["serviceName"]
    assert named("Service")[service]["spec"]["clusterIP"] == "None"
    return f"{name}-{ordinal}.{service}.{NAMESPACE}.svc.cluster.local"


def sentinel_addresses_deployed() -> list[str]:
    """host:port of every Sentinel pod."""
    sentinels = named("StatefulSet")["redis-sentinel"]
    (port,) = named("Service")[sentinels["spec"]["serviceName"]]["spec"]["ports"]
    replicas = sentinels["spec"]["replicas"]
    return [f"{pod_dns(sentinels, i)}:{port['port']}" for i in range(replicas)]


def easel_env() -> dict[str, str]:
    """What an Easel pod reads (easel-config and easel-secrets), placeholders filled."""
    config = named("ConfigMap")["easel-config"]["data"]
    return {**config, **filled(named("Secret")["easel-secrets"]["stringData"])}


EASEL_ENV = easel_env()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No EASEL_* variable from the machine running the tests leaks into Settings()."""
    for name in [n for n in os.environ if n.startswith("EASEL_")]:
        monkeypatch.delenv(name)
    return monkeypatch


@pytest.fixture
def settings(clean_env: pytest.MonkeyPatch) -> Settings:
    """Settings() as every Easel pod builds it with the Component."""
    for name, value in EASEL_ENV.items():
        clean_env.setenv(name, value)
    return Settings()


# The Component and its build


def test_component_lists_every_file_and_the_base_offers_it() -> None:
    component = kustomization(COMPONENT)
    assert (component["apiVersion"], component["kind"]) == (
        "kustomize.config.k8s.io/v1alpha1",
        "Component",
    )
    listed = [*component["resources"], *(p["path"] for p in component["patches"])]
    on_disk = {p.name for p in COMPONENT.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(listed) == sorted(on_disk)
    assert component["namespace"] == NAMESPACE
    assert component["labels"] == kustomization(K8S)["labels"]
    assert "# components:\n#   - sentinel\n" in (K8S / "kustomization.yaml").read_text()


def test_patch_merge_follows_kustomize_s_rules() -> None:
    base = {"containers": [{"name": "a", "env": [{"name": "X"}], "command": ["x"], "image": "i"}]}
    patch = {"containers": [{"name": "a", "env": [{"name": "Y"}], "command": ["y"]}]}
    (entry,) = patched(base, patch, strategic=True)["containers"]
    assert entry == {
        "name": "a",
        "env": [{"name": "Y"}, {"name": "X"}],
        "command": ["y"],
        "image": "i",
    }
    assert patched(base, patch, strategic=False) == patch  # a custom resource's lists


@pytest.mark.parametrize(
    "key",
    [k for k, d in BUILT.items() if d["apiVersion"] != KEDA_API],
    ids=[f"{k}/{n}" for (k, n), d in BUILT.items() if d["apiVersion"] != KEDA_API],
)
def test_built_manifest_matches_the_kubernetes_schema(key: Key) -> None:
    kubernetes_validate.validate(BUILT[key], K8S_VERSION, strict=True)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (its kustomize) is absent")
def test_this_build_is_kustomize_s(tmp_path: Path) -> None:
    """What kustomize itself builds from an overlay that adds the Component to deploy/k8s."""
    overlay = {
        "resources": [os.path.relpath(K8S, tmp_path)],
        "components": [os.path.relpath(COMPONENT, tmp_path)],
    }
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(overlay))
    output = subprocess.run(
        ["kubectl", "kustomize", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert output.returncode == 0, output.stderr
    # deploy/k8s's own transformers, which build() leaves out: namespace, labels, images.
    tagged = {f"{i['name']}:{i['newTag']}": i["name"] for i in kustomization(K8S)["images"]}
    built = {}
    for doc in yaml.safe_load_all(output.stdout):
        for spec in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            spec["image"] = tagged.get(spec["image"], spec["image"])
        assert doc["metadata"].pop("namespace", NAMESPACE) == NAMESPACE
        labels = doc["metadata"].get("labels", {})
        assert labels.pop("app.kubernetes.io/part-of") == "easel"
        if not labels:
            del doc["metadata"]["labels"]
        built[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    ours = {f"{kind}/{name}": doc for (kind, name), doc in BUILT.items()}
    assert json.dumps(built, sort_keys=True) == json.dumps(ours, sort_keys=True)


def test_every_reference_to_a_config_map_a_secret_or_a_script_resolves() -> None:
    config_maps, secrets = named("ConfigMap"), named("Secret")
    for workload in [*named("Deployment").values(), *named("StatefulSet").values()]:
        pod, spec = workload["spec"]["template"]["spec"], container(workload)
        for var in spec.get("env", []):
            ref = var.get("valueFrom", {})
            if found := ref.get("secretKeyRef"):
                assert found["key"] in secrets[found["name"]]["stringData"], var["name"]
            if found := ref.get("configMapKeyRef"):
                assert found["key"] in config_maps[found["name"]]["data"], var["name"]
        volumes = {
            v["name"]: v["configMap"]["name"] for v in pod.get("volumes", []) if "configMap" in v
        }
        mounted = {m["mountPath"]: volumes.get(m["name"]) for m in spec.get("volumeMounts", [])}
        assert all(name in config_maps for name in volumes.values())
        command = spec.get("command", [])
        if command[:1] == ["sh"]:  # a start script from a mounted ConfigMap
            directory, _, script = command[1].rpartition("/")
            assert script in config_maps[str(mounted[directory])]["data"], command


# The Sentinel group


def test_three_sentinels_and_two_data_nodes_spread_over_nodes() -> None:
    sentinels, data = named("StatefulSet")["redis-sentinel"], named("StatefulSet")["redis"]
    assert sentinels["spec"]["replicas"] == 3 and data["spec"]["replicas"] >= 2
    for workload in (sentinels, data):
        spread = workload["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
        (term,) = spread["preferredDuringSchedulingIgnoredDuringExecution"]
        assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert selects(term["podAffinityTerm"]["labelSelector"], labels)
        (claim,) = workload["spec"]["volumeClaimTemplates"]  # config files survive a restart
        mounts = {m["name"]: m["mountPath"] for m in container(workload)["volumeMounts"]}
        assert mounts[claim["metadata"]["name"]] == "/data"
    # Names resolve before the pods are ready: Sentinel resolves them when it starts.
    for service in ("redis", "redis-sentinel"):
        assert named("Service")[service]["spec"]["publishNotReadyAddresses"] is True
    # A Sentinel is ready only with a quorum, which takes a peer: they start together.
    assert sentinels["spec"]["podManagementPolicy"] == "Parallel"
    budgets = named("PodDisruptionBudget")
    assert budgets["redis-sentinel"]["spec"]["minAvailable"] == 2
    assert budgets["redis"]["spec"]["maxUnavailable"] == 1
    assert selects(budgets["redis-sentinel"]["spec"]["selector"], pod_labels(sentinels))
    assert selects(budgets["redis"]["spec"]["selector"], pod_labels(data))


def test_data_nodes_keep_redis_yaml_s_flags_and_start_through_the_script() -> None:
    spec = container(named("StatefulSet")["redis"])
    assert spec["args"][0] == "redis-server"
    assert redis_flags(spec["args"]).items() >= REDIS_POLICIES.items()
    assert redis_flags(spec["args"])["--dir"] == "/data"
    assert spec["command"] == ["sh", "/scripts/redis-node.sh"]
    script = scripts()["redis-node.sh"]
    assert "shift  # redis-server" in script
    assert 'exec redis-server "$conf" "$@" --masterauth "$REDIS_PASSWORD"' in script
    auth = ("easel-redis-auth", "password")
    assert secret_env(spec)["REDIS_PASSWORD"] == auth
    assert secret_env(spec)["SENTINEL_PASSWORD"] == ("easel-redis-auth", "sentinel-password")


def test_sentinels_watch_the_name_easel_asks_for_with_the_secrets_passwords() -> None:
    sentinels = named("StatefulSet")["redis-sentinel"]
    spec = container(sentinels)
    assert spec["command"] == ["sh", "/scripts/sentinel.sh"]
    assert spec["image"] == container(named("StatefulSet")["redis"])["image"]
    refs = {v["name"]: v["valueFrom"] for v in spec["env"]}
    for name in ("EASEL_REDIS_MASTER_NAME", "EASEL_REDIS_SENTINELS"):
        assert refs[name] == {"configMapKeyRef": {"name": "easel-config", "key": name}}
    assert secret_env(spec) == {
        "REDIS_PASSWORD": ("easel-redis-auth", "password"),
        "SENTINEL_PASSWORD": ("easel-redis-auth", "sentinel-password"),
        "REDISCLI_AUTH": ("easel-redis-auth", "sentinel-password"),  # the probe's login
    }
    (port,) = spec["ports"]
    (service_port,) = named("Service")["redis-sentinel"]["spec"]["ports"]
    assert port["containerPort"] == service_port["port"] == 26379
    assert "port 26379" in scripts()["sentinel.sh"]
    probe = spec["readinessProbe"]["exec"]["command"]
    assert 'sentinel ckquorum "$EASEL_REDIS_MASTER_NAME"' in probe[-1]


def test_passwords_are_the_same_strings_wherever_they_appear() -> None:
    auth = named("Secret")["easel-redis-auth"]["stringData"]
    easel = named("Secret")["easel-secrets"]["stringData"]
    assert easel["EASEL_REDIS_PASSWORD"] == auth["password"]
    assert urlsplit(easel["EASEL_REDIS_URL"]).password == auth["password"]
    assert easel["EASEL_REDIS_SENTINEL_PASSWORD"] == auth["sentinel-password"]
    assert auth["sentinel-password"] != auth["password"]  # two secrets, two placeholders


# Easel, KEDA and Flower on the Sentinels


def test_every_easel_process_asks_all_three_sentinels(settings: Settings) -> None:
    assert settings.redis_sentinels == sentinel_addresses_deployed()
    assert sentinel_addresses(settings)  # host:port pairs Easel can parse
    assert settings.redis_password is not None and settings.redis_sentinel_password is not None
    data_replicas = named("StatefulSet")["redis"]["spec"]["replicas"]
    assert 1 <= settings.redis_wait_replicas <= data_replicas - 1
    for workload in [*named("Deployment").values()]:
        spec = container(workload)
        sources = {
            s.get("configMapRef", s.get("secretRef", {})).get("name")
            for s in spec.get("envFrom", [])
        }
        if "easel-secrets" in sources:
            assert "easel-config" in sources, workload["metadata"]["name"]


def test_keda_reads_each_class_s_list_through_the_sentinels(settings: Settings) -> None:
    auths, secrets = named("TriggerAuthentication"), named("Secret")
    by_target = {so["spec"]["scaleTargetRef"]["name"]: so for so in named("ScaledObject").values()}
    assert set(by_target) == {f"easel-worker-{gpu}" for gpu in InferenceType}
    db = urlsplit(settings.redis_url).path.lstrip("/")
    for gpu in InferenceType:
        (trigger,) = by_target[f"easel-worker-{gpu}"]["spec"]["triggers"]
        metadata = trigger["metadata"]
        assert trigger["type"] == "redis-sentinel"
        assert metadata["addresses"].split(",") == settings.redis_sentinels
        assert metadata["sentinelMaster"] == settings.redis_master_name
        assert metadata["listName"] == settings.queue_for(gpu)
        assert metadata["databaseIndex"] == db
        assert int(metadata["listLength"]) >= 1 and metadata["activationListLength"] == "0"
        assert not {"password", "sentinelPassword"} & set(metadata)  # never inline
        auth = auths[trigger["authenticationRef"]["name"]]["spec"]["secretTargetRef"]
        parameters = {ref["parameter"]: (ref["name"], ref["key"]) for ref in auth}
        assert parameters == {
            "password": ("easel-redis-auth", "password"),
            "sentinelPassword": ("easel-redis-auth", "sentinel-password"),
        }
        for name, key in parameters.values():
            assert key in secrets[name]["stringData"]


def test_flower_reads_the_broker_easel_uses_with_its_transport_options(
    settings: Settings, clean_env: pytest.MonkeyPatch
) -> None:
    flower = named("Deployment")["flower"]
    spec = container(flower)
    password = EASEL_ENV["EASEL_REDIS_PASSWORD"]
    command = [a.replace("$(EASEL_REDIS_PASSWORD)", password) for a in spec["command"]]
    assert command[:2] == ["celery", f"--broker={broker_url(settings)}"]
    assert "--basic-auth=$(EASEL_FLOWER_AUTH)" in command
    workdir = next(a for a in command if a.startswith("--workdir=")).split("=", 1)[1]
    module = next(a for a in command if a.startswith("--config=")).split("=", 1)[1]
    mounts = {m["name"]: m["mountPath"] for m in spec["volumeMounts"]}
    (volume,) = [v for v in flower["spec"]["template"]["spec"]["volumes"] if "configMap" in v]
    assert mounts[volume["name"]] == workdir
    source = named("ConfigMap")[volume["configMap"]["name"]]["data"][f"{module}.py"]
    refs = {v["name"]: v["valueFrom"] for v in spec["env"]}
    assert secret_env(spec)["EASEL_REDIS_PASSWORD"] == ("easel-secrets", "EASEL_REDIS_PASSWORD")
    assert secret_env(spec)["EASEL_REDIS_SENTINEL_PASSWORD"] == (
        "easel-secrets",
        "EASEL_REDIS_SENTINEL_PASSWORD",
    )
    assert refs["EASEL_REDIS_MASTER_NAME"]["configMapKeyRef"]["name"] == "easel-config"
    for name in ("EASEL_REDIS_MASTER_NAME", "EASEL_REDIS_SENTINEL_PASSWORD"):
        clean_env.setenv(name, EASEL_ENV[name])
    namespace: dict[str, Any] = {}
    exec(compile(source, f"{module}.py", "exec"), namespace)
    expected = broker_transport_options(settings)
    assert namespace["broker_transport_options"] == {
        "master_name": expected["master_name"],
        "sentinel_kwargs": {"password": expected["sentinel_kwargs"]["password"]},
    }


# Who may connect, and as whom


def admitted_components(policy: Doc) -> tuple[set[str], set[str], set[int]]:
    """The easel pod components, the namespaces and the ports one NetworkPolicy admits."""
    components: set[str] = set()
    namespaces: set[str] = set()
    ports: set[int] = set()
    for rule in policy["spec"]["ingress"]:
        ports |= {p["port"] for p in rule["ports"]}
        for peer in rule["from"]:
            if "podSelector" in peer:
                for component in ("api", "worker", "webhooks", "flower", "redis", "sentinel"):
                    labels = {"app.kubernetes.io/name": "easel"}
                    if selects(
                        peer["podSelector"], labels | {"app.kubernetes.io/component": component}
                    ):
                        components.add(component)
            else:
                namespaces.add(
                    peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                )
    return components, namespaces, ports


def test_redis_and_sentinels_admit_easel_keda_and_each_other_only() -> None:
    policies = named("NetworkPolicy")
    group = REDIS_CLIENTS | {"redis", "sentinel"}
    for name, workload in (("redis", "redis"), ("redis-sentinel", "redis-sentinel")):
        policy = policies[name]
        statefulset = named("StatefulSet")[workload]
        assert selects(policy["spec"]["podSelector"], pod_labels(statefulset))
        (port,) = container(statefulset)["ports"]
        assert admitted_components(policy) == (group, {KEDA_NAMESPACE}, {port["containerPort"]})


def test_sentinel_pods_run_as_the_image_s_redis_user_without_privileges() -> None:
    sentinels = named("StatefulSet")["redis-sentinel"]
    pod, spec = sentinels["spec"]["template"]["spec"], container(sentinels)
    data = named("StatefulSet")["redis"]["spec"]["template"]["spec"]["securityContext"]
    context = pod["securityContext"]
    assert context["runAsNonRoot"] is True
    assert (context["runAsUser"], context["fsGroup"]) == (data["runAsUser"], data["fsGroup"])
    assert spec["securityContext"]["allowPrivilegeEscalation"] is False
    assert spec["securityContext"]["capabilities"]["drop"] == ["ALL"]


# The start scripts, run with stand-ins for hostname, redis-cli and redis-server


def scripts() -> dict[str, str]:
    found: dict[str, str] = named("ConfigMap")["redis-sentinel-scripts"]["data"]
    return found


class Pod:
    """Runs one pod's start script in ``root``: its /data and /scripts are directories there,
    and the Sentinels answer get-master-addr-by-name as ``answers`` says."""

    def __init__(self, root: Path, answers: dict[str, str]) -> None:
        self.root = root
        (root / "bin").mkdir(parents=True, exist_ok=True)
        (root / "scripts").mkdir(exist_ok=True)
        for name, text in scripts().items():
            text = text.replace("/scripts/", f"{root}/scripts/").replace("/data/", f"{root}/data/")
            (root / "scripts" / name).write_text(text)
        stand_ins = {
            "hostname": '[ "$1" = -f ] && echo "$FQDN" || echo "${FQDN%%.*}"',
            "timeout": 'shift; exec "$@"',
            "redis-server": 'echo "$@"',
            "redis-cli": (
                "while [ $# -gt 0 ]; do case $1 in -h) host=$2; shift 2;; -p|--raw) "
                '[ "$1" = -p ] && shift; shift;; *) break;; esac; done\n'
                f'echo "$REDISCLI_AUTH $*" >> {root}/asked\n'
                f'line=$(grep "^$host " {root}/answers) || exit 1\n'
                'echo "${line#* }" | tr "|" "\\n"'
            ),
        }
        for name, body in stand_ins.items():
            path = root / "bin" / name
            path.write_text(f"#!/bin/sh\n{body}\n")
            path.chmod(0o755)
        (root / "answers").write_text("".join(f"{h} {a}\n" for h, a in answers.items()))

    def start(self, script: str, statefulset: str, ordinal: int, *args: str) -> str:
        """Run the script as pod ``ordinal``; what it starts redis-server with."""
        (self.root / "data").mkdir(exist_ok=True)
        workload = named("StatefulSet")[statefulset]
        env = {
            "PATH": f"{self.root}/bin:{os.environ['PATH']}",
            "HOSTNAME": f"{statefulset}-{ordinal}",
            "FQDN": pod_dns(workload, ordinal),
            "EASEL_REDIS_SENTINELS": EASEL_ENV["EASEL_REDIS_SENTINELS"],
            "EASEL_REDIS_MASTER_NAME": EASEL_ENV["EASEL_REDIS_MASTER_NAME"],
            "REDIS_PASSWORD": "redis-pw",
            "SENTINEL_PASSWORD": "sentinel-pw",
        }
        done = subprocess.run(
            ["sh", str(self.root / "scripts" / script), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return done.stdout.strip()

    def config(self, name: str) -> list[str]:
        return (self.root / "data" / name).read_text().splitlines()


needs_sh = pytest.mark.skipif(shutil.which("sh") is None, reason="no POSIX shell")
DATA = named("StatefulSet")["redis"]
SENTINELS = named("StatefulSet")["redis-sentinel"]


@needs_sh
def test_a_new_group_starts_with_pod_0_as_the_primary(tmp_path: Path) -> None:
    args = container(DATA)["args"]
    for ordinal in (0, 1):
        pod = Pod(tmp_path / str(ordinal), answers={})  # no Sentinel answers yet
        started = pod.start("redis-node.sh", "redis", ordinal, *args)
        me = pod_dns(DATA, ordinal)
        path = f"{tmp_path}/{ordinal}/data/redis.conf"
        assert started == " ".join(
            [path, *args[1:], "--masterauth", "redis-pw", "--replica-announce-ip", me]
        )
        expected = [] if ordinal == 0 else [f"replicaof {pod_dns(DATA, 0)} 6379"]
        assert pod.config("redis.conf") == expected
    pod = Pod(tmp_path / "sentinel", answers={})
    assert (
        pod.start("sentinel.sh", "redis-sentinel", 2)
        == f"{tmp_path}/sentinel/data/sentinel.conf --sentinel"
    )
    conf = pod.config("sentinel.conf")
    monitor = f"sentinel monitor easel {pod_dns(DATA, 0)} 6379 2"
    assert conf.index("sentinel resolve-hostnames yes") < conf.index(monitor)
    assert {
        "port 26379",
        "sentinel announce-hostnames yes",
        f"sentinel announce-ip {pod_dns(SENTINELS, 2)}",
        "sentinel auth-pass easel redis-pw",
        "requirepass sentinel-pw",
        "sentinel sentinel-pass sentinel-pw",
    } <= set(conf)


@needs_sh
def test_a_pod_without_a_config_follows_the_primary_the_sentinels_name(tmp_path: Path) -> None:
    """After a failover to redis-1, a pod that lost its volume joins it; a Sentinel that
    refuses (wrong password) or is the pod itself is not an answer."""
    primary = pod_dns(DATA, 1)
    sentinels = [a.rsplit(":", 1)[0] for a in sentinel_addresses_deployed()]
    answers = {sentinels[0]: "NOAUTH Authentication required.", sentinels[1]: f"{primary}|6379"}
    pod = Pod(tmp_path / "node", answers)
    pod.start("redis-node.sh", "redis", 0, *container(DATA)["args"])
    assert pod.config("redis.conf") == [f"replicaof {primary} 6379"]
    asked = (tmp_path / "node" / "asked").read_text().splitlines()
    assert asked[0] == "sentinel-pw sentinel get-master-addr-by-name easel"
    pod = Pod(tmp_path / "sentinel-1", answers)
    pod.start("sentinel.sh", "redis-sentinel", 1)  # asks 0 (refuses) and 2 (silent), not itself
    assert f"sentinel monitor easel {pod_dns(DATA, 0)} 6379 2" in pod.config("sentinel.conf")
    pod = Pod(tmp_path / "sentinel-2", answers)
    pod.start("sentinel.sh", "redis-sentinel", 2)
    assert f"sentinel monitor easel {primary} 6379 2" in pod.config("sentinel.conf")


@needs_sh
def test_a_restarted_pod_keeps_the_config_sentinel_left(tmp_path: Path) -> None:
    for script, statefulset, name in (
        ("redis-node.sh", "redis", "redis.conf"),
        ("sentinel.sh", "redis-sentinel", "sentinel.conf"),
    ):
        pod = Pod(tmp_path / name, answers={})
        (tmp_path / name / "data").mkdir()
        (tmp_path / name / "data" / name).write_text("what Sentinel wrote\n")
        pod.start(script, statefulset, 0, "redis-server")
        assert pod.config(name) == ["what Sentinel wrote"]
        assert not (tmp_path / name / "asked").exists()
