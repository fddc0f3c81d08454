"""deploy/k8s: every overlay renders with `kubectl kustomize`, and the objects hold up."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

K8S = Path(__file__).resolve().parent.parent / "k8s"
OVERLAYS = sorted(p for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").exists())
CLUSTER_SCOPED = {"PersistentVolume", "StorageClass", "Namespace"}
UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(q: str) -> int:
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti)?", q)
    assert m, f"unparsable quantity {q}"
    return int(m.group(1)) * UNITS.get(m.group(2) or "", 1)


def render(path: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is needed to render the kustomizations (scripts/setup.sh checks for it)")
    p = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True)
    assert p.returncode == 0, f"kubectl kustomize {path}: {p.stderr}"
    return [d for d in yaml.safe_load_all(p.stdout) if d]


def pod_specs(objs: list[dict]) -> list[tuple[dict, dict]]:
    return [(o, o["spec"]["template"]["spec"]) for o in objs if o["kind"] in ("Job", "Deployment")]


def test_there_are_overlays() -> None:
    assert {p.name for p in OVERLAYS} >= {"scratch", "production", "dynamic", "mount-test"}


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_overlay_renders_consistent_objects(overlay: Path) -> None:
    objs = render(overlay)
    kinds = [o["kind"] for o in objs]
    assert kinds, "renders nothing"
    for o in objs:
        assert o.get("apiVersion") and o["metadata"].get("name"), o
        assert o["metadata"].get("labels", {}).get("app.kubernetes.io/part-of") == "shardwise"
    # one namespace for every namespaced object
    namespaces = {o["metadata"].get("namespace") for o in objs if o["kind"] not in CLUSTER_SCOPED}
    assert len(namespaces) == 1 and None not in namespaces, namespaces
    for o in objs:
        if o["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in o["metadata"]
    pvs = {o["metadata"]["name"]: o for o in objs if o["kind"] == "PersistentVolume"}
    pvcs = {o["metadata"]["name"]: o for o in objs if o["kind"] == "PersistentVolumeClaim"}
    classes = {o["metadata"]["name"]: o for o in objs if o["kind"] == "StorageClass"}
    for pv in pvs.values():
        spec = pv["spec"]
        assert spec["csi"]["driver"] == "fsx.csi.aws.com"
        assert re.fullmatch(r"fs-[0-9a-f]{8,17}", spec["csi"]["volumeHandle"])
        assert spec["csi"]["volumeAttributes"]["dnsname"].startswith(spec["csi"]["volumeHandle"])
        assert spec["csi"]["volumeAttributes"]["mountname"]
        assert spec["storageClassName"] == ""
        assert "flock" in spec["mountOptions"]
        assert spec["accessModes"] == ["ReadWriteMany"]
        assert spec["persistentVolumeReclaimPolicy"] == "Retain"
    for pvc in pvcs.values():
        spec = pvc["spec"]
        request = quantity(spec["resources"]["requests"]["storage"])
        if spec.get("volumeName"):  # static: bound to our PV, no class
            assert spec["storageClassName"] == ""
            pv = pvs[spec["volumeName"]]
            assert request <= quantity(pv["spec"]["capacity"]["storage"]), "PVC asks more than the PV has"
        else:  # dynamic: names a class that exists, with the parameters the driver needs
            sc = classes[spec["storageClassName"]]
            assert sc["provisioner"] == "fsx.csi.aws.com"
            for key in ("subnetId", "securityGroupIds", "deploymentType", "fileSystemTypeVersion"):
                assert sc["parameters"].get(key), key
            assert request == 1200 * 2**30 or request % (2400 * 2**30) == 0
    for owner, spec in pod_specs(objs):
        for c in spec["containers"] + spec.get("initContainers", []):
            image = c["image"]
            assert re.search(r"(:[\w][\w.-]*|@sha256:[0-9a-f]{64})$", image.split("/")[-1]), image
            assert not image.endswith(":latest"), image
            assert c.get("resources", {}).get("requests"), f"{owner['metadata']['name']}: no requests"
        claims = [v["persistentVolumeClaim"]["claimName"] for v in spec.get("volumes", [])
                  if "persistentVolumeClaim" in v]
        for claim in claims:
            assert claim in pvcs, f"{owner['metadata']['name']} mounts claim {claim}, not in the overlay"
        if claims:  # issue 16, defect 9: fsGroup does nothing on FSx volumes
            _writes_only_where_it_owns(owner["metadata"]["name"], spec)


def _writes_only_where_it_owns(name: str, spec: dict) -> None:
    """The FSx CSI driver applies no fsGroup (fsGroupPolicy
    ReadWriteOnceWithFSType): a pod that writes to the file system as a
    non-root user needs an init container, running as root, that hands it
    the directory it writes to."""
    main = spec["containers"][0]
    uid = main["securityContext"]["runAsUser"]
    assert uid != 0, f"{name}: the main container runs as root"
    inits = spec.get("initContainers", [])
    assert inits, f"{name}: no init container prepares the directory"
    init = inits[0]
    assert init["securityContext"]["runAsUser"] == 0
    script = " ".join(init.get("command", []) + init.get("args", []))
    m = re.search(r"chown (\d+):(\d+) (\S+)", script)
    assert m and int(m.group(1)) == uid, f"{name}: {script!r} does not give uid {uid} its directory"
    target = m.group(3)
    assert f"mkdir -p {target}" in script
    env = {e["name"]: e.get("value") for e in main.get("env", [])}
    written = env.get("CKPT_ROOT") or " ".join(main.get("args", []))
    assert target in written, f"{name}: writes to {written!r}, not under {target}"


@pytest.mark.parametrize("overlay", [p for p in OVERLAYS if p.name != "mount-test"], ids=lambda p: p.name)
def test_training_job_is_multi_node_with_shm_and_resume(overlay: Path) -> None:
    objs = render(overlay)
    job = next(o for o in objs if o["kind"] == "Job" and o["metadata"]["name"] == "shardwise-train")
    svc = next(o for o in objs if o["kind"] == "Service")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] >= 2
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == svc["metadata"]["name"] and svc["spec"]["clusterIP"] == "None"
    # pod 0's rendezvous must resolve before it is Ready (issue 16, defect 12)
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["NNODES"] == str(spec["completions"]), "NNODES must equal the number of pods"
    script = container["args"][0]
    assert "torchrun" in script and "$JOB_COMPLETION_INDEX" in script
    assert f"{job['metadata']['name']}-0.{svc['metadata']['name']}" in script
    assert "train_demo.py" in script and "--root" in script  # resumes through Checkpointer
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    shm = next(v for v in pod["volumes"] if v["name"] == mounts["/dev/shm"])
    assert shm["emptyDir"]["medium"] == "Memory"


def test_base_is_static_with_placeholder_values_only() -> None:
    objs = render(K8S / "base")
    assert sorted(o["kind"] for o in objs) == ["PersistentVolume", "PersistentVolumeClaim"]


def test_efa_check_names_what_is_missing() -> None:
    """The EFA image's default command, on a machine without EFA or GPUs."""
    import os
    import sys
    script = K8S.parent / "image" / "efa-check.sh"
    env = {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    p = subprocess.run(["/bin/sh", str(script)], capture_output=True, text=True, env=env,
                       timeout=120)
    assert p.returncode == 1
    for missing in ("request vpc.amazonaws.com/efa", "fi_info -p efa finds no EFA provider",
                    "aws-ofi-nccl", "request nvidia.com/gpu"):
        assert missing in p.stdout, p.stdout


def test_efa_image_is_the_production_image() -> None:
    text = (K8S.parent / "image" / "Dockerfile.efa").read_text()
    assert "efa_installer.sh -y --skip-kmod" in text  # the node owns the kernel driver
    assert "torch==2.13.0" in text and "efa-check" in text
    prod = (K8S / "overlays" / "production" / "kustomization.yaml").read_text()
    assert 'newTag: "0.1.0-efa"' in prod and "FI_PROVIDER" in prod
