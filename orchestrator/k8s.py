"""Kubernetes through KubeRay: ``tightrope k8s render SPEC --image IMAGE [--gpus N] [--name NAME]``.

It prints, as one multi-document YAML for ``kubectl apply -f -``, a ConfigMap holding the spec file and a
RayJob that runs ``tightrope sweep /specs/sweep.yaml`` on its own Ray cluster (``rayClusterSpec``), which
KubeRay deletes ``ttlSecondsAfterFinished`` after the job ends (``shutdownAfterJobFinishes``):

- head: CPU-only for Ray (``num-cpus: "0"``): it runs the driver, the W&B logging and the results;
- one autoscaled worker group (0..maxReplicas) on ``IMAGE``: ``--gpus N`` GPUs per worker (requested and
  limited, ``nvidia.com/gpu`` taint tolerated), or CPU workers for ``--gpus 0``. A worker holds
  ``slots`` trials at once (``N // resources.gpu``, or ``max(1, 4 // resources.cpu)`` on CPU workers) and
  ``maxReplicas = ceil(trials / slots)``, capped by ``max_concurrent``;
- storage must reach every pod: ``s3://`` (credentials from the Secret ``tightrope-s3``), ``gs://`` (the
  pods' workload identity), or an absolute folder declared ``storage.shared: true``, mounted from the
  ReadWriteMany PVC ``tightrope-results`` (k8s/storage/results-pvc.yaml). A plain local folder is refused.
- the W&B key comes from the Secret ``tightrope-wandb`` (``secretKeyRef``, optional: without it the sweep
  logs offline), never from the manifest.

``operator_errors`` and ``policy_errors`` check a manifest against the KubeRay operator's own rules and this
project's rules (non-root, requests and limits everywhere, nothing exposed); ``render`` refuses to print a
manifest that fails them, and tests/test_k8s.py runs them on every manifest under k8s/ too.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import math
import posixpath
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from orchestrator.cli import UsageError

MAX_RAYJOB_NAME = 47  # KubeRay: the RayCluster it creates is named <job>-<5 chars>, itself <= 53
MAX_RAYCLUSTER_NAME = 53
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
GPU = "nvidia.com/gpu"
SPEC_DIR = "/specs"
SPEC_KEY = "sweep.yaml"
WANDB_SECRET = ("tightrope-wandb", "api-key")
S3_SECRET = ("tightrope-s3", {"AWS_ACCESS_KEY_ID": "access-key-id", "AWS_SECRET_ACCESS_KEY": "secret-access-key"})
RESULTS_PVC = "tightrope-results"
TTL_S = 3600  # keep a finished cluster an hour for `kubectl logs`
DEADLINE_S = 3 * 24 * 3600
RAY_START_RESOURCES = ("num-cpus", "num-gpus", "memory", "resources")
LOOPBACK = re.compile(r"^\w+://(localhost|127\.|\[::1\]|0\.0\.0\.0)")


def ray_version() -> str:
    """The installed Ray (pyproject pins it), written into ``rayVersion``."""
    return importlib.metadata.version("ray")


def job_name(spec_name: str) -> str:
    """``tightrope-<spec name>`` as a DNS-1035 label of at most 47 characters (a hash keeps long names apart)."""
    base = re.sub(r"[^a-z0-9-]+", "-", f"tightrope-{spec_name.lower()}").strip("-")
    if len(base) <= MAX_RAYJOB_NAME:
        return base
    digest = hashlib.sha1(spec_name.encode()).hexdigest()[:5]
    return f"{base[:MAX_RAYJOB_NAME - 6].rstrip('-')}-{digest}"


# ---------------------------------------------------------------------------------------------- rendering


def _container_security() -> dict:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def _pod_security() -> dict:
    return {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 100, "fsGroup": 100,
            "seccompProfile": {"type": "RuntimeDefault"}}


def _quantities(cpu: int, memory_gi: int, gpus: int = 0) -> dict:
    q = {"cpu": str(cpu), "memory": f"{memory_gi}Gi"}
    if gpus:
        q[GPU] = str(gpus)
    return {"requests": dict(q), "limits": dict(q)}


def _env(storage_path: str) -> list[dict]:
    env: list[dict] = [
        {"name": "RAY_USAGE_STATS_ENABLED", "value": "0"},
        {"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {
            "name": WANDB_SECRET[0], "key": WANDB_SECRET[1], "optional": True}}},
    ]
    if storage_path.startswith("s3://"):
        secret, keys = S3_SECRET
        env += [{"name": var, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
                for var, key in keys.items()]
    return env


def _volumes(config_map: str, storage, shm_gi: int) -> tuple[list[dict], list[dict]]:
    volumes = [{"name": "spec", "configMap": {"name": config_map}},
               {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{shm_gi}Gi"}}]
    mounts = [{"name": "spec", "mountPath": SPEC_DIR, "readOnly": True}, {"name": "dshm", "mountPath": "/dev/shm"}]
    if storage.shared:
        volumes.append({"name": "results", "persistentVolumeClaim": {"claimName": RESULTS_PVC}})
        mounts.append({"name": "results", "mountPath": storage.path})
    return volumes, mounts


def _template(component: str, container: dict, volumes: list[dict], tolerations: list[dict] | None = None) -> dict:
    spec: dict[str, Any] = {"securityContext": _pod_security(), "containers": [container]}
    if volumes:
        spec["volumes"] = volumes
    if tolerations:
        spec["tolerations"] = tolerations
    return {"metadata": {"labels": {"app.kubernetes.io/name": "tightrope",
                                    "app.kubernetes.io/component": component}}, "spec": spec}


def check_storage(storage) -> None:
    """On Kubernetes every pod must reach the storage: a bucket, or a folder on a shared (RWX) volume."""
    path = str(storage.path)
    if path.startswith(("s3://", "gs://", "gcs://")):
        if storage.endpoint and LOOPBACK.match(str(storage.endpoint)):
            raise UsageError(f"storage.endpoint {storage.endpoint} is a loopback address: inside a pod it points "
                             "at the pod itself. Use the bucket service's cluster address, e.g. "
                             "http://minio.minio.svc:9000")
        return
    if not storage.shared:
        raise UsageError(
            f"storage.path '{path}' is a local folder, which the pods on other nodes cannot see. On Kubernetes "
            "use a bucket (s3://bucket/prefix or gs://bucket/prefix), or put the folder on a ReadWriteMany "
            f"volume and declare it with `storage: {{path: /mnt/results, shared: true}}` (the PVC "
            f"'{RESULTS_PVC}' of k8s/storage/results-pvc.yaml is mounted at that path)")
    if not posixpath.isabs(path):
        raise UsageError(f"storage.path '{path}' is declared shared but is relative: give the absolute path "
                         f"where the PVC '{RESULTS_PVC}' is mounted in the pods, e.g. /mnt/results")


def _worker_shape(spec, gpus: int) -> tuple[str, int, int, int]:
    """(group name, CPUs per worker, trial slots per worker, maxReplicas)."""
    cpu, gpu = float(spec.resources.cpu), float(spec.resources.gpu)
    if gpus < 0:
        raise UsageError(f"--gpus {gpus}: must be >= 0")
    if gpus > 0:
        if gpu <= 0:
            raise UsageError(f"--gpus {gpus} but the spec's trials use no GPU (resources.gpu: 0): the GPUs would "
                             "sit idle. Set resources.gpu (e.g. 1 or 0.5) or render with --gpus 0")
        if gpu > gpus:
            raise UsageError(f"a trial needs {gpu:g} GPUs (resources.gpu) but a worker has --gpus {gpus}")
        slots = int(gpus // gpu + 1e-9)
    else:
        if gpu > 0:
            raise UsageError(f"the spec's trials need {gpu:g} GPU each (resources.gpu) but --gpus is 0: no worker "
                             "could run them. Render with --gpus N")
        slots = max(1, int(4 // cpu)) if cpu > 0 else 1
    cpus = max(1, math.ceil(slots * cpu))
    replicas = max(1, math.ceil(spec.n_trials() / slots))
    if spec.max_concurrent:
        replicas = min(replicas, max(1, math.ceil(spec.max_concurrent / slots)))
    return ("gpu" if gpus else "cpu"), cpus, slots, replicas


def render(spec, spec_text: str, image: str, gpus: int = 0, name: str | None = None) -> list[dict]:
    """The ConfigMap and the RayJob for ``spec`` (already loaded and validated), as plain dicts."""
    if not image or any(c.isspace() for c in image):
        raise UsageError(f"--image '{image}': give the pushed image of k8s/Dockerfile (or Dockerfile.cuda)")
    name = name or job_name(spec.name)
    if len(name) > MAX_RAYJOB_NAME or not DNS1035.match(name):
        raise UsageError(f"--name '{name}': a RayJob name must be a DNS-1035 label (lowercase letters, digits "
                         f"and '-', starting with a letter) of at most {MAX_RAYJOB_NAME} characters")
    check_storage(spec.storage)
    group, cpus, _slots, replicas = _worker_shape(spec, gpus)
    config_map = f"{name}-spec"
    labels = {"app.kubernetes.io/name": "tightrope", "app.kubernetes.io/instance": name,
              "tightrope/sweep": spec.name}
    env = _env(str(spec.storage.path))

    head_volumes, head_mounts = _volumes(config_map, spec.storage, shm_gi=2)
    head = {"name": "ray-head", "image": image, "imagePullPolicy": "IfNotPresent",
            "ports": [{"containerPort": 6379, "name": "gcs-server"}, {"containerPort": 8265, "name": "dashboard"},
                      {"containerPort": 10001, "name": "client"}],
            "resources": _quantities(2, 8), "securityContext": _container_security(), "env": env,
            "volumeMounts": head_mounts}
    memory_gi = max(8, 4 * cpus)
    worker_volumes, worker_mounts = _volumes(config_map, spec.storage, shm_gi=max(2, memory_gi // 4))
    worker = {"name": "ray-worker", "image": image, "imagePullPolicy": "IfNotPresent",
              "resources": _quantities(cpus, memory_gi, gpus), "securityContext": _container_security(),
              "env": env, "volumeMounts": worker_mounts}
    tolerations = [{"key": GPU, "operator": "Exists", "effect": "NoSchedule"}] if gpus else None

    cluster = {
        "rayVersion": ray_version(),
        "enableInTreeAutoscaling": True,
        "autoscalerOptions": {
            "upscalingMode": "Default", "idleTimeoutSeconds": 120, "imagePullPolicy": "IfNotPresent",
            "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"cpu": "500m", "memory": "1Gi"}},
            "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, **_container_security()}},
        "headGroupSpec": {"serviceType": "ClusterIP",
                          "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
                          "template": _template("ray-head", head, head_volumes)},
        "workerGroupSpecs": [{"groupName": group, "replicas": 0, "minReplicas": 0, "maxReplicas": replicas,
                              "rayStartParams": {},
                              "template": _template("ray-worker", worker, worker_volumes, tolerations)}],
    }
    runtime_env = {"env_vars": {"WANDB_MODE": str(spec.wandb.mode), "RAY_USAGE_STATS_ENABLED": "0"}}
    submitter = {"name": "ray-job-submitter", "image": image, "imagePullPolicy": "IfNotPresent",
                 "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
                 "securityContext": _container_security()}
    submitter_pod = _template("submitter", submitter, [])
    submitter_pod["spec"]["restartPolicy"] = "Never"

    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": config_map, "labels": labels},
          "data": {SPEC_KEY: spec_text}}
    job = {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": name, "labels": labels},
           "spec": {"entrypoint": f"tightrope sweep {SPEC_DIR}/{SPEC_KEY}",
                    "submissionMode": "K8sJobMode",
                    "runtimeEnvYAML": yaml.safe_dump(runtime_env, sort_keys=False),
                    "shutdownAfterJobFinishes": True, "ttlSecondsAfterFinished": TTL_S,
                    "activeDeadlineSeconds": DEADLINE_S,
                    "backoffLimit": 0,  # Tune retries trials; a new cluster would refuse the existing sweep
                    "submitterPodTemplate": submitter_pod,
                    "rayClusterSpec": cluster}}
    problems = operator_errors(job) + policy_errors([cm, job])
    if problems:  # a bug here, not the user's input: never print a manifest the operator would reject
        raise RuntimeError("rendered RayJob breaks a rule:\n  " + "\n  ".join(problems))
    return [cm, job]


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, s: str):
    return dumper.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None)


_Dumper.add_representer(str, _str)


def dump_all(objs: list[dict]) -> str:
    return yaml.dump_all(objs, Dumper=_Dumper, sort_keys=False, width=120)


def render_cmd(args) -> int:
    """``tightrope k8s render SPEC --image IMAGE [--gpus N] [--name NAME]``: the manifests on stdout."""
    from orchestrator.spec import load_spec

    spec = load_spec(args.spec)  # SpecError (a ConfigError) -> every problem listed, exit 2
    text = Path(args.spec).read_text()
    sys.stdout.write(dump_all(render(spec, text, args.image, args.gpus, args.name)))
    return 0


# ----------------------------------------------------------------------------------------------- rules


def _name_errors(obj: dict, limit: int) -> list[str]:
    name = str((obj.get("metadata") or {}).get("name", ""))
    out = []
    if len(name) > limit:
        out.append(f"{obj.get('kind')} name '{name}' is {len(name)} characters (at most {limit})")
    if not DNS1035.match(name):
        out.append(f"{obj.get('kind')} name '{name}' is not a DNS-1035 label")
    return out


def _containers(template: dict) -> list[dict]:
    return list(((template or {}).get("spec") or {}).get("containers") or [])


def _group_errors(where: str, group: dict) -> list[str]:
    out = []
    params = group.get("rayStartParams") or {}
    for k, v in params.items():
        if not isinstance(v, str):
            out.append(f"{where}.rayStartParams.{k} is {type(v).__name__} {v!r}: values must be strings")
    if "labels" in params:
        out.append(f"{where}.rayStartParams.labels is not supported: use the group's `labels` field")
    if group.get("resources") and any(params.get(k) for k in RAY_START_RESOURCES):
        out.append(f"{where}: resources set both in rayStartParams and in the group's `resources`")
    containers = _containers(group.get("template"))
    if not containers:
        out.append(f"{where}: the pod template has no container")
        return out
    res = containers[0].get("resources") or {}
    declared = {**(res.get("requests") or {}), **(res.get("limits") or {})}
    for param, resource in (("num-gpus", GPU), ("memory", "memory")):
        if param in params and resource in declared:
            out.append(f"{where}: {resource} set both in rayStartParams ({param}) and in the container resources")
    if "num-cpus" in params and "cpu" in declared and params["num-cpus"] != "0":
        out.append(f"{where}: cpu set both in rayStartParams (num-cpus) and in the container resources "
                   "(only num-cpus: \"0\", keeping trials off the node, may override the container's CPUs)")
    return out


def _gpu_errors(where: str, template: dict) -> list[str]:
    out = []
    uses_gpu = False
    for c in _containers(template):
        res = c.get("resources") or {}
        req, lim = (res.get("requests") or {}).get(GPU), (res.get("limits") or {}).get(GPU)
        if req is None and lim is None:
            continue
        uses_gpu = True
        if req is None or lim is None:
            out.append(f"{where}: container {c.get('name')} must both request and limit {GPU}")
        elif str(req) != str(lim):
            out.append(f"{where}: container {c.get('name')} requests {req} but limits {lim} {GPU}")
    if uses_gpu:
        tolerations = ((template or {}).get("spec") or {}).get("tolerations") or []
        if not any(t.get("key") == GPU and t.get("operator", "Equal") in ("Exists", "Equal")
                   and t.get("effect") in (None, "", "NoSchedule") for t in tolerations):
            out.append(f"{where}: a GPU group must tolerate the {GPU} taint (NoSchedule)")
    return out


def cluster_spec_errors(spec: dict, where: str = "spec") -> list[str]:
    """The operator's checks of a RayCluster spec (ValidateRayClusterSpec), plus GPU groups' request/limit/taint."""
    out = []
    head = spec.get("headGroupSpec") or {}
    out += _group_errors(f"{where}.headGroupSpec", head)
    autoscaling = bool(spec.get("enableInTreeAutoscaling"))
    names = set()
    for i, g in enumerate(spec.get("workerGroupSpecs") or []):
        w = f"{where}.workerGroupSpecs[{i}]"
        if g.get("groupName") in names:
            out.append(f"{w}: duplicate groupName {g.get('groupName')!r}")
        names.add(g.get("groupName"))
        out += _group_errors(w, g)
        lo, hi = g.get("minReplicas"), g.get("maxReplicas")
        if not autoscaling and (lo is None or hi is None):
            out.append(f"{w}: minReplicas and maxReplicas are required without autoscaling")
        for key, v in (("minReplicas", lo), ("maxReplicas", hi)):
            if v is not None and v < 0:
                out.append(f"{w}.{key} is negative ({v})")
        if lo is not None and hi is not None and lo > hi:
            out.append(f"{w}: minReplicas {lo} > maxReplicas {hi}")
        out += _gpu_errors(w, g.get("template") or {})
    return out


def operator_errors(obj: dict) -> list[str]:
    """What the KubeRay operator would reject in a RayCluster or RayJob (empty list: nothing)."""
    kind, spec = obj.get("kind"), obj.get("spec") or {}
    if kind == "RayCluster":
        return _name_errors(obj, MAX_RAYCLUSTER_NAME) + cluster_spec_errors(spec)
    if kind != "RayJob":
        return []
    out = _name_errors(obj, MAX_RAYJOB_NAME)
    cluster, selector = spec.get("rayClusterSpec"), spec.get("clusterSelector")
    if bool(cluster) == bool(selector):
        out.append("RayJob: set exactly one of rayClusterSpec and clusterSelector")
    ttl, shutdown = spec.get("ttlSecondsAfterFinished", 0), bool(spec.get("shutdownAfterJobFinishes"))
    if ttl and ttl < 0:
        out.append("RayJob: ttlSecondsAfterFinished is negative")
    if ttl and not shutdown:
        out.append("RayJob: ttlSecondsAfterFinished is set without shutdownAfterJobFinishes: true")
    if spec.get("suspend") and not shutdown:
        out.append("RayJob: a suspended RayJob needs shutdownAfterJobFinishes: true")
    if selector:
        if not selector.get("ray.io/cluster"):
            out.append("RayJob: clusterSelector must name the cluster with the key ray.io/cluster")
        if (spec.get("backoffLimit") or 0) > 0:
            out.append("RayJob: backoffLimit > 0 is incompatible with clusterSelector")
    if spec.get("activeDeadlineSeconds") is not None and spec["activeDeadlineSeconds"] <= 0:
        out.append("RayJob: activeDeadlineSeconds must be positive")
    if spec.get("backoffLimit") is not None and spec["backoffLimit"] < 0:
        out.append("RayJob: backoffLimit must be >= 0")
    if spec.get("runtimeEnvYAML"):
        try:
            env = yaml.safe_load(spec["runtimeEnvYAML"])
        except yaml.YAMLError as e:
            out.append(f"RayJob: runtimeEnvYAML is not YAML: {e}")
        else:
            if not isinstance(env, dict):
                out.append("RayJob: runtimeEnvYAML must be a mapping")
    if cluster:
        out += cluster_spec_errors(cluster, "spec.rayClusterSpec")
    return out


def pod_templates(obj: dict) -> list[tuple[str, dict]]:
    """``(path, PodTemplateSpec)`` of every pod a RayCluster or RayJob makes."""
    spec = obj.get("spec") or {}
    kind = obj.get("kind")
    if kind == "RayJob":
        out = [("spec.submitterPodTemplate", spec["submitterPodTemplate"])] if spec.get("submitterPodTemplate") else []
        cluster = spec.get("rayClusterSpec") or {}
        prefix = "spec.rayClusterSpec"
    elif kind == "RayCluster":
        out, cluster, prefix = [], spec, "spec"
    else:
        return []
    if cluster.get("headGroupSpec"):
        out.append((f"{prefix}.headGroupSpec.template", cluster["headGroupSpec"].get("template") or {}))
    for i, g in enumerate(cluster.get("workerGroupSpecs") or []):
        out.append((f"{prefix}.workerGroupSpecs[{i}].template", g.get("template") or {}))
    return out


def _has_limits(res: dict | None) -> bool:
    res = res or {}
    return all(k in (res.get(part) or {}) for part in ("requests", "limits") for k in ("cpu", "memory"))


def policy_errors(objs: list[dict]) -> list[str]:
    """This project's rules: non-root pods, no privilege escalation, CPU and memory requests and limits on every
    container (the autoscaler sidecar included), nothing exposed outside the cluster, no inline W&B key."""
    out = []
    for obj in objs:
        kind = obj.get("kind")
        if kind == "Ingress":
            out.append("an Ingress exposes the cluster")
        if kind == "Service" and (obj.get("spec") or {}).get("type", "ClusterIP") != "ClusterIP":
            out.append(f"Service {obj['metadata'].get('name')} is {obj['spec']['type']}, not ClusterIP")
        clusters = []
        if kind == "RayCluster":
            clusters.append(("spec", obj.get("spec") or {}))
        if kind == "RayJob" and (obj.get("spec") or {}).get("rayClusterSpec"):
            clusters.append(("spec.rayClusterSpec", obj["spec"]["rayClusterSpec"]))
        for where, cluster in clusters:
            head = cluster.get("headGroupSpec") or {}
            if head.get("serviceType", "ClusterIP") != "ClusterIP":
                out.append(f"{where}.headGroupSpec.serviceType is {head['serviceType']}: keep the dashboard ClusterIP")
            if head.get("enableIngress"):
                out.append(f"{where}.headGroupSpec.enableIngress exposes the dashboard")
            if cluster.get("enableInTreeAutoscaling") and not _has_limits((cluster.get("autoscalerOptions") or {})
                                                                          .get("resources")):
                out.append(f"{where}.autoscalerOptions.resources needs cpu/memory requests and limits")
        for where, template in pod_templates(obj):
            pod = template.get("spec") or {}
            sec = pod.get("securityContext") or {}
            if sec.get("runAsNonRoot") is not True or sec.get("runAsUser") in (None, 0):
                out.append(f"{where}: pod securityContext needs runAsNonRoot: true and a non-zero runAsUser")
            for c in pod.get("containers") or []:
                cw = f"{where} container {c.get('name')}"
                if not _has_limits(c.get("resources")):
                    out.append(f"{cw}: needs cpu and memory requests and limits")
                if (c.get("securityContext") or {}).get("allowPrivilegeEscalation") is not False:
                    out.append(f"{cw}: needs securityContext.allowPrivilegeEscalation: false")
                if (c.get("securityContext") or {}).get("runAsUser") == 0:
                    out.append(f"{cw}: runs as root")
                for e in c.get("env") or []:
                    if e.get("name") in ("WANDB_API_KEY", "AWS_SECRET_ACCESS_KEY") and "value" in e:
                        out.append(f"{cw}: {e['name']} written inline: take it from a Secret (secretKeyRef)")
    return out
