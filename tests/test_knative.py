"""Deployment artefacts: valid for the real APIs, and true to what the code does."""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
import requests
import yaml

from .conftest import REPO, shared_file
from .container.checks import start_slow_fusion
from .server import CONFIG_VARS, free_port

KNATIVE = REPO / "knative"
BUILTIN_VERSION = "1.33.0"


def manifests() -> list[tuple[Path, dict]]:
    docs = []
    for path in sorted(KNATIVE.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [(path, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def crd_schemas() -> dict[tuple[str, str], dict]:
    schemas = {("sources.knative.dev/v1", "SinkBinding"): SINKBINDING_SCHEMA}
    optional = shared_file("testdata", "knative").joinpath("crd-sinkbinding.yaml")
    for name in ("crd-service.yaml", "crd-broker.yaml", "crd-trigger.yaml", *(["crd-sinkbinding.yaml"] if optional.exists() else [])):
        for doc in yaml.safe_load_all(shared_file("testdata", "knative", name).read_text()):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = doc["spec"]["group"], doc["spec"]["names"]["kind"]
            for version in doc["spec"]["versions"]:
                schemas[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return schemas


def strict(schema: dict) -> dict:
    """The CRD schema as `kubectl apply` validates it (field validation Strict): objects with declared
    properties reject unknown fields unless they preserve unknown fields."""
    schema = dict(schema)
    if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        schema.setdefault("additionalProperties", False)
        schema["properties"] = {k: strict(v) for k, v in schema["properties"].items()}
    if isinstance(schema.get("items"), dict):
        schema["items"] = strict(schema["items"])
    if isinstance(schema.get("additionalProperties"), dict):
        schema["additionalProperties"] = strict(schema["additionalProperties"])
    return schema


# The SinkBinding CRD (sources.knative.dev/v1) is not among ../shared's schemas yet: the fields the
# function's binding may use, as knative/eventing declares them in config/core/resources/sinkbindings.yaml
# (spec.subject: apiVersion, kind, name or selector, namespace; spec.sink: ref, uri, CACerts;
# spec.ceOverrides.extensions). A crd-sinkbinding.yaml in ../shared/testdata/knative replaces it.
_REF = {"type": "object", "properties": {k: {"type": "string"} for k in ("apiVersion", "kind", "name", "namespace")}}
SINKBINDING_SCHEMA = {"type": "object", "properties": {"spec": {"type": "object", "required": ["subject", "sink"], "properties": {
    "subject": {"type": "object", "required": ["apiVersion", "kind"], "properties": {
        **_REF["properties"], "selector": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}},
    "sink": {"type": "object", "properties": {"ref": _REF, "uri": {"type": "string"}, "CACerts": {"type": "string"}}},
    "ceOverrides": {"type": "object", "properties": {
        "extensions": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}}}}}


def validate_knative(doc: dict, schemas: dict) -> None:
    schema = strict(schemas[(doc["apiVersion"], doc["kind"])])
    for key, kind in (("apiVersion", "string"), ("kind", "string"), ("metadata", "object")):
        schema["properties"].setdefault(key, {"type": kind})
    jsonschema.Draft7Validator(schema).validate(doc)


def service_doc() -> dict:
    return next(d for _, d in manifests() if d["kind"] == "Service" and d["metadata"]["name"] == "facefusion")


def overlay_service() -> dict:
    """The Service as the init-prefetch overlay patches it (its JSON patch applied here)."""
    import jsonpatch

    overlay = yaml.safe_load((KNATIVE / "overlays" / "init-prefetch" / "kustomization.yaml").read_text())
    patch = next(p for p in overlay["patches"] if p["target"]["kind"] == "Service")
    return jsonpatch.apply_patch(copy.deepcopy(service_doc()), yaml.safe_load(patch["patch"]))


def test_every_manifest_is_valid():
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    schemas = crd_schemas()
    seen = set()
    for path, doc in manifests():
        seen.add(doc["kind"])
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # the Prometheus Operator's kinds: validated in tests/test_observability.py
        try:
            if (doc["apiVersion"], doc["kind"]) in schemas:
                validate_knative(doc, schemas)
            else:
                kubernetes_validate.validate(doc, BUILTIN_VERSION, strict=True)
        except Exception as exc:
            raise AssertionError(f"{path.relative_to(REPO)} {doc['kind']}/{doc['metadata']['name']}: {exc}") from exc
    validate_knative(overlay_service(), schemas)
    assert {"Service", "Broker", "Trigger", "SinkBinding", "PersistentVolumeClaim", "ConfigMap", "Secret", "Job"} <= seen


def test_a_broken_manifest_is_caught():
    """The validation above can fail: a typo in a Knative field is rejected by the CRD schema."""
    broken = copy.deepcopy(service_doc())
    broken["spec"]["template"]["spec"]["containerConcurency"] = 2
    with pytest.raises(jsonschema.ValidationError):
        validate_knative(broken, crd_schemas())
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    pvc = copy.deepcopy(next(d for _, d in manifests() if d["kind"] == "PersistentVolumeClaim"))
    pvc["spec"]["accesModes"] = pvc["spec"].pop("accessModes")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pvc, BUILTIN_VERSION, strict=True)


def test_kustomizations_name_existing_files():
    for kfile in KNATIVE.rglob("kustomization.yaml"):
        for res in yaml.safe_load(kfile.read_text()).get("resources", []):
            assert (kfile.parent / res).exists(), f"{kfile}: {res} does not exist"


def test_service_settings_that_matter():
    svc = service_doc()
    tmpl = svc["spec"]["template"]
    ann = tmpl["metadata"]["annotations"]
    assert ann["autoscaling.knative.dev/min-scale"] == "0"
    assert ann["autoscaling.knative.dev/target-burst-capacity"] == "-1"
    spec = tmpl["spec"]
    container = spec["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert mounts["models"]["mountPath"] == "/models" and mounts["models"]["readOnly"] is True
    assert volumes["models"]["persistentVolumeClaim"]["readOnly"] is True
    assert "emptyDir" in volumes["cache"]
    assert "initContainers" not in spec  # the base needs only the PVC flag; the overlay adds the init container
    features = yaml.safe_load((KNATIVE / "cluster" / "config-features.yaml").read_text())["data"]
    assert features["kubernetes.podspec-persistent-volume-claim"] == "enabled"
    assert "kubernetes.podspec-persistent-volume-write" not in features
    config = next(d for _, d in manifests() if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "facefusion-config")
    assert spec["containerConcurrency"] == int(config["data"]["MAX_INFLIGHT"])


def test_reply_events_match_no_trigger():
    from function.events import FUSION_COMPLETED

    for _, doc in manifests():
        if doc["kind"] != "Trigger":
            continue
        text = json.dumps(doc["spec"].get("filters", doc["spec"].get("filter")))
        for reply in (FUSION_COMPLETED, "dev.facefusion.fusion.failed"):  # the second: reserved for failures
            assert reply not in text
            prefixes = re.findall(r'"prefix": \{"type": "([^"]+)"', text)
            assert not any(reply.startswith(p) for p in prefixes)
        assert doc["spec"]["subscriber"]["ref"]["name"] == "facefusion"


def test_segment_events_come_back_to_the_function_and_dead_letters_to_its_route():
    """The fan-out's wiring: the SinkBinding gives the Service K_SINK = the Broker; one Trigger brings
    exactly the segment events back to it, retried past LEASE_TTL_S, dead-lettered to /dead-letter."""
    from function.config import FunctionConfig
    from function.events import SEGMENT_REQUESTED

    docs = [d for _, d in manifests()]
    binding = next(d for d in docs if d["kind"] == "SinkBinding")
    assert binding["spec"]["subject"] == {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "facefusion"}
    broker = next(d for d in docs if d["kind"] == "Broker")
    assert binding["spec"]["sink"]["ref"] == {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker",
                                              "name": broker["metadata"]["name"]}
    triggers = [d for d in docs if d["kind"] == "Trigger" and SEGMENT_REQUESTED in json.dumps(d["spec"].get("filters"))]
    assert len(triggers) == 1 and triggers[0]["spec"]["filters"] == [{"exact": {"type": SEGMENT_REQUESTED}}]
    delivery = triggers[0]["spec"]["delivery"]
    assert delivery["deadLetterSink"]["ref"]["name"] == "facefusion" and delivery["deadLetterSink"]["uri"] == "/dead-letter"
    from function.main import ROUTES

    assert "POST" in ROUTES[delivery["deadLetterSink"]["uri"]]
    delay = int(re.fullmatch(r"PT(\d+)S", delivery["backoffDelay"]).group(1))
    window = sum(delay * 2 ** i for i in range(delivery["retry"])) if delivery["backoffPolicy"] == "exponential" else 0
    assert window > FunctionConfig().lease_ttl_s  # a killed pod's lease expires before the retries run out


def code_strings() -> str:
    return "\n".join(p.read_text() for pkg in ("function", "pipeline", "warmup") for p in (REPO / pkg).rglob("*.py"))


def manifest_env_names() -> set[str]:
    names = set()
    svc = service_doc()
    for c in svc["spec"]["template"]["spec"]["containers"]:
        names |= {e["name"] for e in c.get("env", [])}
    for _, doc in manifests():
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "facefusion-config":
            names |= set(doc["data"])
    func = yaml.safe_load((REPO / "func.yaml").read_text())
    names |= {e["name"] for e in func["run"]["envs"]}
    return names


def test_every_env_variable_set_is_read_by_the_code():
    code = code_strings()
    unread = [n for n in sorted(manifest_env_names()) if f'"{n}"' not in code]
    assert not unread, f"manifests set variables the code never reads: {unread}"
    assert {"MODEL_PATH", "AUTH_TOKEN"} <= CONFIG_VARS


def test_func_yaml_is_valid_and_agrees_with_the_service():
    schema = json.loads(shared_file("testdata", "knative", "func_yaml-schema.json").read_text())
    func = yaml.safe_load((REPO / "func.yaml").read_text())
    jsonschema.Draft4Validator(schema).validate(func)
    assert func["specVersion"] == "0.36.0"
    svc = service_doc()
    tmpl = svc["spec"]["template"]
    container = tmpl["spec"]["containers"][0]
    assert func["name"] == svc["metadata"]["name"]
    assert func["deploy"]["image"] == func["image"] == container["image"]
    assert func["deploy"]["healthEndpoints"] == {"liveness": container["livenessProbe"]["httpGet"]["path"],
                                                 "readiness": container["readinessProbe"]["httpGet"]["path"]}
    ann = tmpl["metadata"]["annotations"]
    scale = func["deploy"]["options"]["scale"]
    assert str(scale["min"]) == ann["autoscaling.knative.dev/min-scale"]
    assert str(scale["max"]) == ann["autoscaling.knative.dev/max-scale"]
    assert str(scale["target"]) == ann["autoscaling.knative.dev/target"]
    assert func["deploy"]["options"]["resources"]["limits"]["concurrency"] == tmpl["spec"]["containerConcurrency"]
    pvc = next(v for v in func["run"]["volumes"] if "persistentVolumeClaim" in v)
    svc_pvc = next(v for v in tmpl["spec"]["volumes"] if v["name"] == "models")
    assert pvc["persistentVolumeClaim"] == svc_pvc["persistentVolumeClaim"] and pvc["path"] == "/models"
    config_keys = {k for _, d in manifests() if d["kind"] == "ConfigMap" for k in d.get("data", {})}
    service_envs = {e["name"] for e in container.get("env", [])} | config_keys
    assert {e["name"] for e in func["run"]["envs"]} <= service_envs


def containerfile_entrypoint() -> list[str]:
    text = (REPO / "Containerfile").read_text()
    return json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M).group(1))


def test_entrypoint_starts_an_existing_target():
    entry = containerfile_entrypoint()
    assert entry[:2] == ["python", "-m"], entry
    module = REPO / (entry[2].replace(".", "/") + ".py")
    text = module.read_text()  # the launcher names the functions-framework source and target it serves
    source = re.search(r'^SOURCE = REPO / "function" / "(\w+\.py)"$', text, re.M).group(1)
    target = re.search(r'^TARGET = "(\w+)"$', text, re.M).group(1)
    assert re.search(rf"^def {target}\(", (REPO / "function" / source).read_text(), re.M)
    port = service_doc()["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
    assert f"PORT={port}" in (REPO / "Containerfile").read_text()


def test_entrypoint_serves_probes_and_drains_on_sigterm(model_root, tmp_path):
    """The container's entrypoint as a plain process: PORT and K_REVISION honoured, probes answered,
    and SIGTERM lets an in-flight fusion finish while new work gets a retryable 503, then exits."""
    entry = containerfile_entrypoint()
    exe = str(Path(sys.executable).parent / entry[0])
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in CONFIG_VARS}
    env.update(PORT=str(port), K_REVISION="facefusion-00042", MODEL_PATH=str(model_root), CACHE_PATH=str(tmp_path / "c"))
    proc = subprocess.Popen([exe, *entry[1:]], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        container = service_doc()["spec"]["template"]["spec"]["containers"][0]
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if requests.get(url + container["readinessProbe"]["httpGet"]["path"], timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.1)
        ready = requests.get(url + "/readyz", timeout=5).json()
        assert ready["status"] == "ready" and ready["revision"] == "facefusion-00042"
        assert requests.get(url + container["livenessProbe"]["httpGet"]["path"], timeout=5).status_code == 200
        # seconds of work, and SIGTERM is sent once it shows in flight
        worker, result, files = start_slow_fusion(url, shared_file("images", "solvay_conference_1927.png").parent)
        killed = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        refused = requests.post(url + "/", files=files, timeout=30)
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
        assert requests.get(url + "/readyz", timeout=5).status_code == 503  # the load balancer stops routing
        worker.join(timeout=120)
        assert result["r"].status_code == 200 and result["r"].headers["X-Faces-Swapped"] == "29"
        assert result["done"] > killed  # the fusion was drained, not done before the signal
        proc.wait(timeout=service_doc()["spec"]["template"]["spec"]["timeoutSeconds"])
        with pytest.raises(requests.ConnectionError):
            requests.get(url + "/healthz", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
