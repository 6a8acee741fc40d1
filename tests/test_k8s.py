"""Images and Kubernetes manifests: every manifest under k8s/ (after kustomize, both overlays) and every RayJob
that ``tightrope k8s render`` prints must pass KubeRay's CRD schemas with unknown fields rejected, the
operator's own rules, the Kubernetes schemas for core objects, and this project's rules (non-root, limits,
nothing exposed). Broken manifests prove the validators can fail.

Needs: ../shared/kuberay-crds (KubeRay v1.7.0 CRDs) and a kustomize (``kubectl kustomize`` or ``kustomize``);
the tests that need one skip with the reason when it is absent.
"""

from __future__ import annotations

import copy
import functools
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import jsonschema
import kubernetes_validate
import kubernetes_validate.utils as kv_utils
import pytest
import yaml

from orchestrator import k8s
from orchestrator.cli import main
from orchestrator.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
CRDS = ROOT.parent / "shared" / "kuberay-crds"
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
OVERLAYS = ("cpu", "gpu")
SPECS = {"cpu": K8S / "base" / "sweep.yaml", "gpu": K8S / "overlays" / "gpu" / "sweep.yaml"}
needs_crds = pytest.mark.skipif(not CRDS.is_dir(), reason=f"KubeRay CRDs not found at {CRDS}")


def pinned_ray() -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [d for d in deps if re.match(r"ray(\[[^\]]*\])?==", d)]
    return pin.split("==")[1].strip()


# ------------------------------------------------------------------------------------- schema helpers


def tighten(schema):
    """A CRD's openAPIV3Schema made strict for jsonschema: ``additionalProperties: false`` wherever
    ``properties`` is given (unless the node preserves unknown fields), and ``x-kubernetes-int-or-string`` read
    as ``type: [integer, string]``."""
    if isinstance(schema, list):
        return [tighten(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: tighten(v) for k, v in schema.items()}
    if out.get("x-kubernetes-int-or-string"):
        out.pop("anyOf", None)
        out["type"] = ["integer", "string"]
    if "properties" in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out.setdefault("additionalProperties", False)
    return out


@functools.cache
def crd_validator(kind: str) -> jsonschema.protocols.Validator:
    crd = yaml.load((CRDS / CRD_FILES[kind]).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return jsonschema.Draft7Validator(tighten(version["schema"]["openAPIV3Schema"]))


def crd_errors(obj: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in crd_validator(obj["kind"]).iter_errors(obj)]


KV_VERSION = kv_utils.latest_version()


def core_errors(obj: dict) -> list[str]:
    try:
        kubernetes_validate.validate(obj, KV_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"]
    return []


def as_pod(name: str, template: dict) -> dict:
    """A pod template of a KubeRay object as a core v1 Pod, so the Kubernetes schema checks its spec."""
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, **(template.get("metadata") or {})},
            "spec": template["spec"]}


def all_errors(objs: list[dict]) -> list[str]:
    errors = k8s.policy_errors(objs)
    for obj in objs:
        if obj["kind"] in CRD_FILES:
            errors += crd_errors(obj) + k8s.operator_errors(obj)
            errors += [e for where, t in k8s.pod_templates(obj) for e in core_errors(as_pod("p", t))]
        else:
            errors += core_errors(obj)
    return errors


# ------------------------------------------------------------------------------------------ fixtures


def kustomize_cmd() -> list[str] | None:
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return None


@functools.cache
def built(overlay: str) -> tuple[dict, ...]:
    cmd = kustomize_cmd()
    if cmd is None:
        pytest.skip("no kustomize: install kubectl (Debian package or google-cloud-cli's) or kustomize")
    out = subprocess.run([*cmd, str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def by_kind(objs, kind: str) -> dict:
    (obj,) = [o for o in objs if o["kind"] == kind]
    return obj


@functools.cache
def rendered(which: str, gpus: int) -> tuple[dict, ...]:
    path = SPECS[which]
    return tuple(k8s.render(load_spec(path), path.read_text(), "reg.example/tightrope:0.1.0", gpus))


def render_cli(capsys, *argv) -> tuple[int, list[dict], str]:
    code = main(["k8s", "render", *map(str, argv)])
    cap = capsys.readouterr()
    return code, [d for d in yaml.safe_load_all(cap.out) if d] if code == 0 else [], cap.err


def write_spec(tmp_path: Path, storage: str, gpu: float = 0) -> Path:
    text = SPECS["cpu"].read_text()
    text = re.sub(r"^storage:.*$", f"storage: {storage}", text, flags=re.M)
    text = re.sub(r"^resources:.*$", f"resources: {{cpu: 2, gpu: {gpu}}}", text, flags=re.M)
    p = tmp_path / "sweep.yaml"
    p.write_text(text)
    return p


# -------------------------------------------------------------------------------------------- images


@pytest.mark.parametrize("dockerfile,suffix", [("Dockerfile", ""), ("Dockerfile.cuda", "-gpu")])
def test_image_is_the_pinned_ray_and_installs_the_project(dockerfile, suffix):
    lines = [ln.strip() for ln in (K8S / dockerfile).read_text().splitlines() if ln.strip()
             and not ln.lstrip().startswith("#")]
    froms = [ln.split()[1] for ln in lines if ln.upper().startswith("FROM ")]
    assert froms == [f"rayproject/ray:{pinned_ray()}-py311{suffix}"]
    text = "\n".join(lines)
    # the project's sources are copied to one folder, and that folder is pip-installed
    dest = {ln.split()[-1].rstrip("/") for ln in lines if ln.startswith("COPY") and "pyproject.toml" in ln}
    assert len(dest) == 1
    assert re.search(rf"pip install [^\n&]*{re.escape(dest.pop())}(\s|$)", text)
    for pkg in ("orchestrator", "trainables"):
        assert re.search(rf"^COPY .*\b{pkg}\b", text, re.M)
    users = [ln.split()[1] for ln in lines if ln.upper().startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    cmd = [ln for ln in lines if ln.startswith(("CMD", "ENTRYPOINT"))][-1]
    program = yaml.safe_load(cmd.split(None, 1)[1])[0]
    assert program in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    if not suffix:  # the CPU image takes the CPU torch wheel
        assert "download.pytorch.org/whl/cpu" in text


# ------------------------------------------------------------------------------------ the manifests


@needs_crds
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_manifests_validate(overlay):
    objs = list(built(overlay))
    assert sorted(o["kind"] for o in objs) == ["ConfigMap", "RayCluster", "RayJob"]
    assert all_errors(objs) == []


@needs_crds
@pytest.mark.parametrize("which,gpus", [("cpu", 0), ("gpu", 1), ("gpu", 2)])
def test_rendered_manifests_validate(which, gpus):
    assert all_errors(list(rendered(which, gpus))) == []


def test_results_pvc_validates():
    (pvc,) = [d for d in yaml.safe_load_all((K8S / "storage" / "results-pvc.yaml").read_text()) if d]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["metadata"]["name"] == k8s.RESULTS_PVC
    assert core_errors(pvc) == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_cluster_shape(overlay):
    objs = built(overlay)
    cluster, job, cm = by_kind(objs, "RayCluster"), by_kind(objs, "RayJob"), by_kind(objs, "ConfigMap")
    spec = cluster["spec"]
    assert spec["rayVersion"] == pinned_ray() and spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0" and head["serviceType"] == "ClusterIP"
    (head_c,) = head["template"]["spec"]["containers"]
    assert head_c["name"] == "ray-head"
    assert sorted(p["containerPort"] for p in head_c["ports"]) == [6379, 8265, 10001]
    (group,) = spec["workerGroupSpecs"]
    res = group["template"]["spec"]["containers"][0]["resources"]
    if overlay == "gpu":
        assert res["requests"][k8s.GPU] == res["limits"][k8s.GPU] == "1"
        assert {"key": k8s.GPU, "operator": "Exists", "effect": "NoSchedule"} in group["template"]["spec"]["tolerations"]
        assert group["template"]["spec"]["containers"][0]["image"].endswith("-cuda")
    else:
        assert k8s.GPU not in res["limits"] and "tolerations" not in group["template"]["spec"]
    # the RayJob runs on exactly the RayCluster's (patched) shape, and the long-lived cluster starts suspended
    assert spec.pop("suspend") is True
    assert job["spec"]["rayClusterSpec"] == spec
    assert "clusterSelector" not in job["spec"]
    assert job["spec"]["entrypoint"] == "tightrope sweep /specs/sweep.yaml"
    env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]
    assert env["RAY_USAGE_STATS_ENABLED"] == "0" and env["WANDB_MODE"] in ("online", "offline", "disabled")
    assert job["spec"]["shutdownAfterJobFinishes"] is True and job["spec"]["ttlSecondsAfterFinished"] > 0
    assert job["spec"]["activeDeadlineSeconds"] > 0 and job["spec"]["backoffLimit"] >= 0
    # the spec volume names the generated (hashed) ConfigMap, which holds this overlay's spec file
    volumes = [v for v in head["template"]["spec"]["volumes"] if "configMap" in v]
    assert [v["configMap"]["name"] for v in volumes] == [cm["metadata"]["name"]]
    assert cm["data"]["sweep.yaml"] == SPECS[overlay].read_text()
    wandb = [e for e in head_c["env"] if e["name"] == "WANDB_API_KEY"]
    assert wandb[0]["valueFrom"]["secretKeyRef"]["name"] == k8s.WANDB_SECRET[0]


@pytest.mark.parametrize("which", ["cpu", "gpu"])
def test_k8s_spec_files_pass_validate(which, capsys):
    assert main(["validate", str(SPECS[which])]) == 0
    assert "ok:" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ render


def test_render_cli_prints_configmap_and_self_contained_rayjob(capsys):
    code, objs, _ = render_cli(capsys, SPECS["gpu"], "--image", "reg.example/t:1-cuda", "--gpus", "2")
    assert code == 0
    cm, job = objs
    assert (cm["kind"], job["kind"]) == ("ConfigMap", "RayJob")
    assert cm["data"]["sweep.yaml"] == SPECS["gpu"].read_text()
    assert job["metadata"]["name"] == "tightrope-k8s-gpu"
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == pinned_ray()
    (group,) = cluster["workerGroupSpecs"]
    c = group["template"]["spec"]["containers"][0]
    assert c["image"] == "reg.example/t:1-cuda"
    # 1 GPU per trial, 2 per worker: 2 trials per worker, 6 trials but max_concurrent 4 -> 2 workers of 8 CPUs
    assert c["resources"]["limits"] == {"cpu": "8", "memory": "32Gi", k8s.GPU: "2"}
    assert (group["minReplicas"], group["maxReplicas"]) == (0, 2)
    vols = {v["name"]: v for v in group["template"]["spec"]["volumes"]}
    assert vols["spec"]["configMap"]["name"] == cm["metadata"]["name"]


def test_render_cpu_workers_size_from_the_spec():
    (cm, job) = rendered("cpu", 0)
    (group,) = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    # cpu 2 per trial: 2 trials on a 4-CPU worker; 4 trials -> at most 2 workers
    assert group["template"]["spec"]["containers"][0]["resources"]["limits"] == {"cpu": "4", "memory": "16Gi"}
    assert group["maxReplicas"] == 2 and group["groupName"] == "cpu"
    s3 = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in group["template"]["spec"]["containers"][0]["env"]
          if "valueFrom" in e}
    assert s3 == {"WANDB_API_KEY": "tightrope-wandb", "AWS_ACCESS_KEY_ID": "tightrope-s3",
                  "AWS_SECRET_ACCESS_KEY": "tightrope-s3"}


def test_render_refuses_local_storage(tmp_path, capsys):
    code, _, err = render_cli(capsys, write_spec(tmp_path, "{path: ./results}"), "--image", "x:1")
    assert code == 2 and "local folder" in err and "s3://" in err and "shared: true" in err
    code, _, err = render_cli(capsys, write_spec(tmp_path, "{path: results, shared: true}"), "--image", "x:1")
    assert code == 2 and "absolute" in err


@needs_crds
def test_render_shared_folder_mounts_the_rwx_claim(tmp_path, capsys):
    code, objs, _ = render_cli(capsys, write_spec(tmp_path, "{path: /mnt/results, shared: true}"), "--image", "x:1")
    assert code == 0 and all_errors(objs) == []
    pod = objs[1]["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
    assert {"name": "results", "persistentVolumeClaim": {"claimName": k8s.RESULTS_PVC}} in pod["volumes"]
    assert {"name": "results", "mountPath": "/mnt/results"} in pod["containers"][0]["volumeMounts"]
    assert not any(e["name"].startswith("AWS_") for e in pod["containers"][0]["env"])


@pytest.mark.parametrize("storage,gpu,argv,message", [
    ("{path: 's3://b/p', endpoint: 'http://127.0.0.1:9000'}", 0, [], "loopback"),
    ("{path: 's3://b/p'}", 1, [], "--gpus is 0"),
    ("{path: 's3://b/p'}", 0, ["--gpus", "1"], "use no GPU"),
    ("{path: 's3://b/p'}", 2, ["--gpus", "1"], "needs 2 GPUs"),
    ("{path: 's3://b/p'}", 0, ["--name", "a" * 48], "at most 47"),
    ("{path: 's3://b/p'}", 0, ["--name", "9lives"], "DNS-1035"),
])
def test_render_refuses_bad_input(tmp_path, capsys, storage, gpu, argv, message):
    code, _, err = render_cli(capsys, write_spec(tmp_path, storage, gpu), "--image", "x:1", *argv)
    assert code == 2 and message in err


def test_job_names_are_short_dns1035_and_distinct():
    long_a, long_b = "a" * 39 + "x", "a" * 39 + "y"
    names = [k8s.job_name(n) for n in ("quickstart", "9-lives", long_a, long_b)]
    assert names[0] == "tightrope-quickstart"
    assert all(len(n) <= 47 and k8s.DNS1035.match(n) for n in names)
    assert names[2] != names[3]


# ----------------------------------------------------------------------- the validators can fail


def _break(obj: dict, path: str, value=None, delete: bool = False) -> dict:
    obj = copy.deepcopy(obj)
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node = obj
    for p in parents:
        node = node[p]
    if delete:
        del node[last]
    else:
        node[last] = value
    return obj


JOB_C0 = "spec.rayClusterSpec.workerGroupSpecs.0.template.spec.containers.0"


@needs_crds
@pytest.mark.parametrize("path,value", [
    ("spec.shutdownAfterJobFinish", True),                               # typo'd field
    (f"{JOB_C0}.resource", {"limits": {"cpu": "1"}}),                     # typo'd container field
    ("spec.rayClusterSpec.headGroupSpec.rayStartParams.num-cpus", 0),    # not a string
    ("spec.backoffLimit", "one"),                                        # wrong type
])
def test_crd_schema_rejects_broken_rayjob(path, value):
    job = rendered("gpu", 1)[1]
    assert crd_errors(job) == []
    assert crd_errors(_break(job, path, value))


@pytest.mark.parametrize("path,value,delete,message", [
    ("metadata.name", "tightrope-" + "x" * 38, False, "at most 47"),
    ("metadata.name", "Tightrope", False, "DNS-1035"),
    ("spec.clusterSelector", {"ray.io/cluster": "tightrope"}, False, "exactly one"),
    ("spec.rayClusterSpec", None, True, "exactly one"),
    ("spec.shutdownAfterJobFinishes", False, False, "without shutdownAfterJobFinishes"),
    ("spec.rayClusterSpec.workerGroupSpecs.0.minReplicas", 5, False, "minReplicas 5 > maxReplicas"),
    ("spec.rayClusterSpec.headGroupSpec.rayStartParams.num-cpus", 0, False, "must be strings"),
    ("spec.rayClusterSpec.workerGroupSpecs.0.rayStartParams", {"num-gpus": "1"}, False, "both in rayStartParams"),
    ("spec.rayClusterSpec.workerGroupSpecs.0.template.spec.tolerations", [], False, "tolerate"),
    (f"{JOB_C0}.resources.requests", {"cpu": "4", "memory": "16Gi"}, False, "request and limit"),
    ("spec.activeDeadlineSeconds", 0, False, "positive"),
])
def test_operator_rules_reject_broken_rayjob(path, value, delete, message):
    job = rendered("gpu", 1)[1]
    assert k8s.operator_errors(job) == []
    errors = k8s.operator_errors(_break(job, path, value, delete))
    assert any(message in e for e in errors), errors


def test_operator_rules_reject_long_raycluster_name():
    cluster = {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "c" * 54},
               "spec": copy.deepcopy(rendered("cpu", 0)[1]["spec"]["rayClusterSpec"])}
    assert any("at most 53" in e for e in k8s.operator_errors(cluster))
    cluster["metadata"]["name"] = "c" * 53
    assert k8s.operator_errors(cluster) == []


@pytest.mark.parametrize("path,value,message", [
    ("spec.rayClusterSpec.headGroupSpec.serviceType", "LoadBalancer", "ClusterIP"),
    ("spec.rayClusterSpec.headGroupSpec.template.spec.securityContext.runAsNonRoot", False, "runAsNonRoot"),
    (f"{JOB_C0}.resources", {"requests": {"cpu": "1", "memory": "1Gi"}}, "requests and limits"),
    (f"{JOB_C0}.securityContext", {}, "allowPrivilegeEscalation"),
    (f"{JOB_C0}.env", [{"name": "WANDB_API_KEY", "value": "secret"}], "inline"),
    ("spec.rayClusterSpec.autoscalerOptions.resources", {}, "autoscalerOptions"),
])
def test_policy_rejects_broken_rayjob(path, value, message):
    job = rendered("cpu", 0)[1]
    assert k8s.policy_errors([job]) == []
    errors = k8s.policy_errors([_break(job, path, value)])
    assert any(message in e for e in errors), errors


def test_core_schema_rejects_typo_in_pod_and_configmap():
    job = rendered("cpu", 0)[1]
    template = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]
    assert core_errors(as_pod("p", template)) == []
    bad = _break(template, "spec.containers.0.volumeMount", [])
    assert core_errors(as_pod("p", bad))
    cm = rendered("cpu", 0)[0]
    assert core_errors(cm) == [] and core_errors(_break(cm, "dataa", {}))
