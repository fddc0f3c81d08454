"""deploy/aws/fsx against stub aws/eksctl/helm/kubectl (fakecloud.py) on PATH."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import awscli_check
import motocloud

HERE = Path(__file__).resolve().parent
# The stubs import fakecloud, so that Python reads its cached bytecode
# rather than compiling the script again on each of the hundreds of calls a
# test makes (25 ms each on a 2-core VM).
LAUNCH = f"import sys; sys.path.insert(0, {str(HERE)!r}); import fakecloud; fakecloud.main()"
FSX = HERE.parent / "aws" / "fsx"
TOOLS = ("aws", "eksctl", "helm", "kubectl")

NODE_SG, EKS_SG = "sg-0d1000000000000a1", "sg-0e1000000000000b2"
ENDPOINT = "https://0123456789ABCDEF0123456789ABCDEF.gr7.us-east-1.eks.amazonaws.com"


def base_world() -> dict:
    node = lambda name, iid, az, subnet, role: {  # noqa: E731
        "name": name, "labels": {"role": role},
        "instance": {"id": iid, "az": az, "subnet": subnet, "sgs": [NODE_SG, EKS_SG]}}
    return {
        "account": "111122223333",
        "clusters": {"train": {"vpc": "vpc-0a1b2c3d4e5f60718", "issuer": "https://oidc.eks.us-east-1.amazonaws.com/id/ABC",
                               "endpoint": ENDPOINT}},
        "nodes": [node("gpu-a", "i-0aa00000000000001", "us-east-1a", "subnet-0aa00000000000001", "gpu"),
                  node("gpu-b", "i-0bb00000000000002", "us-east-1a", "subnet-0aa00000000000001", "gpu"),
                  node("cpu-c", "i-0cc00000000000003", "us-east-1b", "subnet-0bb00000000000002", "cpu")],
        "subnets": {"subnet-0aa00000000000001": "us-east-1a", "subnet-0bb00000000000002": "us-east-1b"},
        "security_groups": {
            NODE_SG: {"name": "nodes", "vpc": "vpc-0a1b2c3d4e5f60718", "tags": {}},
            EKS_SG: {"name": "eks-cluster-sg", "vpc": "vpc-0a1b2c3d4e5f60718", "tags": {}},
            "sg-0f1000000000000c3": {"name": "fsx-lustre-sg", "vpc": "vpc-0a1b2c3d4e5f60718", "tags": {}}},
        "rules": {},
        "file_systems": {"fs-0e15e0e15e0000001": {
            "capacity": 2400, "lustre": {"DeploymentType": "PERSISTENT_2", "PerUnitStorageThroughput": 500},
            "tags": {"team": "other"}, "mount": "other", "region": "us-east-1",
            "sgs": ["sg-0f1000000000000c3"], "script": ["AVAILABLE"]}},
        "dras": {}, "buckets": {"ckpt-bucket": {"tags": {}}}, "roles": {}, "oidc": [],
        "helm": {}, "cfn_stacks": {},
        # CloudWatch AgeOfOldestQueuedMessage per file system (a script of
        # values, one per call); a linked file system with nothing left to
        # export reads 0
        "export_queue": {}, "export_queue_default": [0],
        "k8s": {"server": ENDPOINT, "context": "train",
                "namespaces": ["default", "kube-system"], "applied": [], "jobs": {}, "pods": [],
                "deleted": [], "objects": []},
    }


class Cloud:
    def __init__(self, tmp: Path) -> None:
        self.dir = tmp / "cloud"
        self.dir.mkdir()
        bin_dir = tmp / "bin"
        bin_dir.mkdir()
        for t in TOOLS:
            # The interpreter by absolute path, without site: a version
            # manager's shim on PATH costs ~0.1 s per call, and `up` makes
            # dozens of calls.
            (bin_dir / t).write_text(
                f'#!/bin/sh\nexec "{sys.executable}" -S -c "{LAUNCH}" {t} "$@"\n')
            (bin_dir / t).chmod(0o755)
        self.state_file = tmp / "state" / "stack.json"
        self.env = {
            "PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(tmp), "FAKE_CLOUD": str(self.dir),
            "CLUSTER_NAME": "train", "AWS_REGION": "us-east-1", "STACK_NAME": "ckpt",
            "S3_BUCKET": "ckpt-bucket", "NODE_SELECTOR": "role=gpu", "NAMESPACE": "training",
            "STATE_FILE": str(self.state_file), "POLL_INTERVAL_S": "0", "WAIT_TIMEOUT_S": "30",
        }
        self.world = base_world()
        self.save()

    def save(self) -> None:
        (self.dir / "world.json").write_text(json.dumps(self.world))

    def load(self) -> dict:
        self.world = json.loads((self.dir / "world.json").read_text())
        return self.world

    def run(self, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess:
        calls = self.dir / "calls.jsonl"
        if calls.exists():
            calls.unlink()
        p = subprocess.run([str(FSX), *args], env={**self.env, **env}, capture_output=True,
                           text=True, stdin=subprocess.DEVNULL, timeout=120)
        self.load()
        self.check_aws_calls()
        if check and p.returncode != 0:
            raise AssertionError(f"fsx {' '.join(args)} failed ({p.returncode}):\n{p.stderr}")
        return p

    checked: dict[tuple[str, ...], str | None] = {}  # every argv seen, across tests

    def check_aws_calls(self) -> None:
        """Each `aws` call of the last run, as the real CLI would take it
        (awscli_check.py): the stub may answer only what AWS would accept."""
        bad = []
        for c in self.calls():
            if c[0] != "aws" or self.answered_by_moto(c[1:]):
                continue
            key = tuple(c[1:])
            if key not in Cloud.checked:
                Cloud.checked[key] = awscli_check.check(c[1:])
            if Cloud.checked[key]:
                bad.append(f"aws {' '.join(c[1:])}\n    -> {Cloud.checked[key]}")
        assert not bad, "calls the real AWS CLI would refuse:\n" + "\n".join(bad)

    # test_moto.py: calls to these services already ran through the real CLI, against moto
    moto_services: frozenset[str] = frozenset()

    def answered_by_moto(self, argv: list[str]) -> bool:
        return motocloud.service_of(argv) in self.moto_services

    def calls(self) -> list[list[str]]:
        path = self.dir / "calls.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def state(self) -> dict:
        return json.loads(self.state_file.read_text())["created"]


MUTATING = ("create-", "authorize-", "revoke-", "delete-", "put-", "rb", "attach-", "detach-",
            "update-", "tag-", "untag-")


def mutations(calls: list[list[str]]) -> list[str]:
    """Each call that changes something, as 'tool verb' (aws: 'aws service op')."""
    out = []
    for c in calls:
        tool, args = c[0], c[1:]
        if tool == "aws":
            while args and args[0] in ("--region", "--output"):
                args = args[2:]
            if args[1].startswith(MUTATING):
                out.append(f"aws {args[0]} {args[1]}")
        elif tool == "eksctl" and args[0] in ("create", "delete", "utils"):
            out.append(f"eksctl {args[0]} {args[1]}")
        elif tool == "helm" and args[0] in ("upgrade", "install", "uninstall"):
            out.append(f"helm {args[0]}")
        elif tool == "kubectl" and (args[0] in ("create", "apply", "delete", "label")
                                    or args[:2] == ["rollout", "restart"]):
            out.append(f"kubectl {args[0]} {args[1]}")
    return out


@pytest.fixture
def cloud(tmp_path: Path) -> Cloud:
    for tool in ("jq", "column", "realpath"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} is needed by deploy/aws/fsx (scripts/setup.sh installs it)")
    return Cloud(tmp_path)


FRESH_UP_SCRATCH = [
    "aws ec2 create-security-group",
    *["aws ec2 authorize-security-group-ingress"] * 10,  # 2 self + 4 per node SG (2 SGs)
    "aws fsx create-file-system",
    "eksctl utils associate-iam-oidc-provider",
    "eksctl create iamserviceaccount",
    "helm upgrade",
    "aws fsx create-data-repository-association",
    "kubectl create namespace",
    "kubectl label namespace",
    "kubectl apply -k",  # the storage
    "kubectl apply -k",  # the Lustre client tuning DaemonSet
]


def test_fresh_up_makes_exactly_these_calls_in_order(cloud: Cloud) -> None:
    cloud.run("up")
    assert mutations(cloud.calls()) == FRESH_UP_SCRATCH
    w, st = cloud.world, cloud.state()
    fs_id = st["file_system"]
    fs = w["file_systems"][fs_id]
    assert fs["version"] == "2.15"                         # AUDIT 4
    # no legacy ImportPath/ExportPath (no automatic export there): a data
    # repository association links SCRATCH_2 to S3 too (issue 16, defect 1)
    assert fs["lustre"] == {"DeploymentType": "SCRATCH_2", "PerUnitStorageThroughput": None}
    dra = w["dras"][st["data_repository_association"]]
    assert dra["fs"] == fs_id and dra["path"] == "/checkpoints"
    assert dra["repo"] == "s3://ckpt-bucket/checkpoints/"
    assert dra["s3"]["AutoExportPolicy"]["Events"] == ["NEW", "CHANGED", "DELETED"]
    assert fs["subnet"] == "subnet-0aa00000000000001"                      # the GPU nodes' subnet (AUDIT 10)
    assert fs["sgs"] == [st["security_group"]]
    assert fs["tags"]["shardwise:stack"] == "ckpt"
    # client-side rules on both node security groups (AUDIT 8, 9), recorded by id
    rule_keys = [k for k in st if k.startswith("rule:")]
    assert len(rule_keys) == 10
    assert {k.split(":")[1] for k in rule_keys} == {st["security_group"], NODE_SG, EKS_SG}
    helm_call = next(c for c in cloud.calls() if c[:2] == ["helm", "upgrade"])
    assert helm_call[helm_call.index("--version") + 1] == "1.17.0"  # pinned (issue 16, 12d)
    helm_release = w["helm"]["kube-system/aws-fsx-csi-driver"]
    assert not any("image" in s for s in helm_release["set"])  # chart default image (AUDIT 13)
    assert "controller.serviceAccount.create=false" not in helm_release["set"]  # AUDIT 12
    role_arn = w["roles"]["ckpt-fsx-csi"]
    assert helm_release["set-string"] == [
        "shardwiseStack=ckpt",  # ours: a lost state file finds it by this value
        f"controller.serviceAccount.annotations.eks\\.amazonaws\\.com/role-arn={role_arn}"]
    create_sa = next(c for c in cloud.calls() if c[:3] == ["eksctl", "create", "iamserviceaccount"])
    assert create_sa[create_sa.index("--namespace") + 1] == "kube-system"   # AUDIT 11
    assert create_sa[create_sa.index("--name") + 1] == "fsx-csi-controller-sa"
    assert "arn:aws:iam::aws:policy/AmazonFSxFullAccess" in create_sa
    assert not any("s3" in a.lower() for a in create_sa if a.startswith("arn:"))  # AUDIT 14
    assert len(w["oidc"]) == 1


def test_storage_is_applied_only_after_available_and_renders_real_values(cloud: Cloud) -> None:
    cloud.world["lifecycle_script"] = ["CREATING", "CREATING", "AVAILABLE"]
    cloud.save()
    cloud.run("up")
    calls = cloud.calls()
    fs_id = cloud.state()["file_system"]
    described = [i for i, c in enumerate(calls) if "describe-file-systems" in c and fs_id in c]
    apply = next(i for i, c in enumerate(calls) if c[:2] == ["kubectl", "apply"])
    assert described and apply > described[0]  # AUDIT 19: PV after AVAILABLE
    rendered = render(Path(cloud.world["k8s"]["applied"][0]["dir"]))
    pv = next(o for o in rendered if o["kind"] == "PersistentVolume")
    pvc = next(o for o in rendered if o["kind"] == "PersistentVolumeClaim")
    assert pv["spec"]["csi"]["volumeHandle"] == fs_id
    assert pv["spec"]["csi"]["volumeAttributes"] == {
        "dnsname": f"{fs_id}.fsx.us-east-1.amazonaws.com", "mountname": "mnt" + fs_id[-5:]}  # AUDIT 17
    assert pv["spec"]["capacity"]["storage"] == "1200Gi" == pvc["spec"]["resources"]["requests"]["storage"]
    assert pv["spec"]["storageClassName"] == "" == pvc["spec"]["storageClassName"]  # AUDIT 16
    assert pv["spec"]["mountOptions"] == ["flock"]
    assert pvc["metadata"]["namespace"] == "training"      # AUDIT 18


def render(directory: Path) -> list[dict]:
    kubectl = "/usr/bin/kubectl" if os.path.exists("/usr/bin/kubectl") else shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is needed to render kustomizations")
    out = subprocess.run([kubectl, "kustomize", str(directory)], check=True, capture_output=True,
                         text=True).stdout
    import yaml  # PyYAML, installed by scripts/setup.sh
    return [d for d in yaml.safe_load_all(out) if d]


def test_second_up_creates_nothing(cloud: Cloud) -> None:
    cloud.run("up")
    before = json.dumps(cloud.world["file_systems"], sort_keys=True)
    cloud.run("up")
    # re-applying the same objects (storage, tuning) is a no-op
    assert mutations(cloud.calls()) == ["kubectl apply -k"] * 2
    assert json.dumps(cloud.world["file_systems"], sort_keys=True).count("fs-") == before.count("fs-")
    assert len(cloud.world["security_groups"]) == 4
    assert len(cloud.world["oidc"]) == 1


def test_up_after_lost_state_adopts_tagged_resources(cloud: Cloud) -> None:
    cloud.run("up")
    before = cloud.state()
    cloud.state_file.unlink()
    cloud.run("up")
    st = cloud.state()
    for key in ("file_system", "security_group", "data_repository_association", "csi_role"):
        assert st[key] == before[key], key  # the eksctl stack carries our tag: adopted
    assert not [m for m in mutations(cloud.calls())
                if m.startswith(("aws fsx create", "eksctl create", "aws ec2 create"))]


def test_down_after_a_lost_state_file_removes_everything(cloud: Cloud) -> None:  # defect 7
    cloud.run("up")
    before = cloud.state()
    cloud.state_file.unlink()
    cloud.run("up")  # adopts by tag: the file system, its link, the group, its rules,
    after = cloud.state()  # the eksctl stack and the Helm release
    skip = ("create_token", "oidc_provider")  # (down leaves the cluster's OIDC provider anyway)
    assert sorted(k for k in before if k not in skip) == sorted(k for k in after if k not in skip)
    cloud.run("down", "--yes")
    w = cloud.world
    assert w["rules"] == {}  # without the rules: DependencyViolation on the group
    assert set(w["security_groups"]) == {NODE_SG, EKS_SG, "sg-0f1000000000000c3"}
    assert w["helm"] == {} and w["cfn_stacks"] == {}
    assert list(w["file_systems"]) == ["fs-0e15e0e15e0000001"]


def test_a_tagged_file_system_in_another_subnet_is_not_adopted(cloud: Cloud) -> None:  # defect 7
    cloud.run("up")
    fs_id = cloud.state()["file_system"]
    cloud.world["file_systems"][fs_id]["subnet"] = "subnet-0bb00000000000002"
    cloud.save()
    cloud.state_file.unlink()
    cloud.run("up")
    assert cloud.state()["file_system"] != fs_id
    assert "aws fsx create-file-system" in mutations(cloud.calls())


def test_up_refuses_an_untagged_role_of_its_name(cloud: Cloud) -> None:
    cloud.world["roles"]["ckpt-fsx-csi"] = "arn:aws:iam::111122223333:role/ckpt-fsx-csi"
    cloud.save()
    p = cloud.run("up", check=False)
    # the role is not adopted blindly: it could be someone else's
    assert p.returncode != 0 and "IAM role ckpt-fsx-csi exists" in p.stderr


def test_persistent_2_with_efa_uses_a_data_repository_association(cloud: Cloud) -> None:
    cloud.run("up", DEPLOYMENT_TYPE="PERSISTENT_2", EFA_ENABLED="true", STORAGE_CAPACITY_GIB="4800",
              PER_UNIT_THROUGHPUT="500")
    st = cloud.state()
    fs = cloud.world["file_systems"][st["file_system"]]
    assert fs["lustre"] == {"DeploymentType": "PERSISTENT_2", "PerUnitStorageThroughput": 500,
                            "EfaEnabled": True, "MetadataConfiguration": {"Mode": "AUTOMATIC"}}  # AUDIT 6, 7
    dra = cloud.world["dras"][st["data_repository_association"]]
    assert dra["s3"]["AutoImportPolicy"]["Events"] == ["NEW", "CHANGED", "DELETED"]
    assert dra["s3"]["AutoExportPolicy"]["Events"] == ["NEW", "CHANGED", "DELETED"]
    # EFA: all traffic both ways between the file system and each node group, and within
    keys = [k for k in st if k.startswith("rule:")]
    assert any(f"rule:{st['security_group']}:egress:-1" in k for k in keys)
    assert any(f"rule:{NODE_SG}:egress:-1:0-0:{st['security_group']}" == k for k in keys)
    assert len(keys) == 10 + 2 * 4 + 2


@pytest.mark.parametrize("script,ok,message", [
    (["CREATING", "AVAILABLE"], True, "is AVAILABLE"),
    (["CREATING", "UPDATING", "AVAILABLE"], True, "is AVAILABLE"),
    (["CREATING", "FAILED"], False, "FAILED: fake failure: subnet has no free addresses"),
    (["CREATING", "MISCONFIGURED"], False, "is MISCONFIGURED: check the security group rules"),
    (["MISCONFIGURED_UNAVAILABLE"], False, "is MISCONFIGURED_UNAVAILABLE"),
    (["CREATING", "DELETING"], False, "is DELETING"),
    (["CREATING", "SOMETHING_NEW"], False, "in state SOMETHING_NEW, which this toolkit does not know"),
])
def test_wait_loop_handles_every_lifecycle_state(cloud: Cloud, script, ok, message) -> None:
    cloud.world["lifecycle_script"] = script
    cloud.save()
    p = cloud.run("up", check=False)
    assert (p.returncode == 0) == ok, p.stderr
    assert message in p.stderr
    if not ok:
        assert "kubectl apply -k" not in mutations(cloud.calls())


def test_wait_loop_has_a_deadline(cloud: Cloud) -> None:
    cloud.world["lifecycle_script"] = ["CREATING"]
    cloud.save()
    p = cloud.run("up", check=False, WAIT_TIMEOUT_S="1", POLL_INTERVAL_S="0.3")
    assert p.returncode != 0
    assert "still CREATING after 1 s" in p.stderr


def test_credential_errors_are_not_reported_as_not_found(cloud: Cloud) -> None:  # AUDIT 20
    cloud.world["fail"] = {"sts": ["ExpiredToken", "The security token included in the request is expired"]}
    cloud.save()
    p = cloud.run("up", check=False)
    assert p.returncode != 0
    assert "ExpiredToken" in p.stderr and "not found" not in p.stderr.lower()


def test_down_deletes_only_what_it_recorded_in_order(cloud: Cloud) -> None:
    cloud.run("up", CREATE_BUCKET="true", S3_BUCKET="new-bucket")
    st = cloud.state()
    p = cloud.run("down", "--yes", "--delete-bucket", S3_BUCKET="new-bucket")
    assert mutations(cloud.calls()) == [
        "kubectl delete job", "kubectl delete pvc", "kubectl delete pv", "kubectl delete namespace",
        "kubectl delete daemonset,configmap", "helm uninstall", "aws fsx delete-file-system",
        *["aws ec2 revoke-security-group-ingress"] * 10,
        "aws ec2 delete-security-group", "eksctl delete iamserviceaccount", "aws s3 rb"], p.stderr
    w = cloud.world
    assert st["file_system"] not in w["file_systems"]
    assert "fs-0e15e0e15e0000001" in w["file_systems"]              # AUDIT 25
    assert set(w["security_groups"]) == {NODE_SG, EKS_SG, "sg-0f1000000000000c3"}
    assert w["rules"] == {}
    assert "new-bucket" not in w["buckets"] and "ckpt-bucket" in w["buckets"]
    assert not cloud.state_file.exists()
    deleted = [c for c in cloud.calls() if c[0] == "aws" and "delete-file-system" in c]
    assert len(deleted) == 1 and st["file_system"] in deleted[0]


def test_down_keeps_a_bucket_it_did_not_create(cloud: Cloud) -> None:
    cloud.run("up")
    cloud.run("down", "--yes", "--delete-bucket")
    assert "ckpt-bucket" in cloud.world["buckets"]
    assert "aws s3 rb" not in mutations(cloud.calls())


def test_down_keeps_its_bucket_without_delete_bucket(cloud: Cloud) -> None:
    cloud.run("up", CREATE_BUCKET="true", S3_BUCKET="new-bucket")
    p = cloud.run("down", "--yes", S3_BUCKET="new-bucket")
    assert "new-bucket" in cloud.world["buckets"]
    assert "kept (pass --delete-bucket" in p.stderr
    assert cloud.state() == {"oidc_provider": cloud.state()["oidc_provider"], "bucket": "new-bucket"}


def test_down_refuses_a_file_system_it_did_not_create(cloud: Cloud) -> None:
    cloud.run("up")
    data = json.loads(cloud.state_file.read_text())
    data["created"]["file_system"] = "fs-0e15e0e15e0000001"  # a tampered or mixed-up state file
    cloud.state_file.write_text(json.dumps(data))
    p = cloud.run("down", "--yes", check=False)
    assert p.returncode != 0
    assert "refusing to delete a file system this toolkit did not create" in p.stderr
    assert mutations(cloud.calls()) == []
    assert "fs-0e15e0e15e0000001" in cloud.world["file_systems"]


def test_down_without_state_deletes_nothing(cloud: Cloud) -> None:
    p = cloud.run("down", "--yes", check=False)
    assert p.returncode != 0 and "deletes nothing" in p.stderr
    assert cloud.calls() == []


def test_down_asks_for_confirmation(cloud: Cloud) -> None:
    cloud.run("up")
    p = cloud.run("down", check=False)  # no --yes, no terminal
    assert p.returncode != 0 and "pass --yes" in p.stderr
    assert mutations(cloud.calls()) == []


def test_down_stops_when_foreign_pods_use_the_claim(cloud: Cloud) -> None:
    cloud.run("up")
    cloud.world["k8s"]["pods"] = [{"namespace": "training", "name": "someones-job-0", "claim": "fsx-pvc"}]
    cloud.save()
    p = cloud.run("down", "--yes", check=False)
    assert p.returncode != 0 and "someones-job-0" in p.stderr
    assert "aws fsx delete-file-system" not in mutations(cloud.calls())


def test_down_waits_until_its_jobs_pods_are_gone(cloud: Cloud) -> None:  # defect 12
    # The mount test's pod still runs when down starts: down deletes the Job
    # and must not then take that pod for a foreign user of the claim.
    cloud.run("up")
    cloud.world["k8s"]["jobs"]["training/shardwise-mount-test"] = {}
    cloud.world["k8s"]["pods"] = [{"namespace": "training", "name": "shardwise-mount-test-x7k2p",
                                   "claim": "fsx-pvc", "job": "shardwise-mount-test"}]
    cloud.save()
    cloud.run("down", "--yes")
    assert "aws fsx delete-file-system" in mutations(cloud.calls())
    assert cloud.world["k8s"]["pods"] == []


def test_down_keeps_a_namespace_holding_someone_elses_objects(cloud: Cloud) -> None:  # defect 12
    cloud.run("up")
    cloud.world["k8s"]["ns_objects"] = [
        {"namespace": "training", "kind": "ConfigMap", "name": "team-settings"},
        {"namespace": "training", "kind": "Secret", "name": "ckpt-token",
         "labels": {"shardwise.io/stack": "ckpt"}},
        {"namespace": "training", "kind": "EndpointSlice", "name": "svc-abcde",
         "owners": [{"kind": "Service", "name": "svc"}]}]
    cloud.save()
    p = cloud.run("down", "--yes")
    assert "namespace training kept" in p.stderr and "ConfigMap/team-settings" in p.stderr
    assert "Secret/ckpt-token" not in p.stderr and "EndpointSlice" not in p.stderr
    assert "training" in cloud.world["k8s"]["namespaces"]
    assert cloud.state()["namespace"] == "training"  # a later down tries again
    assert "aws fsx delete-file-system" in mutations(cloud.calls())
    # Once only this stack's, owned, and Kubernetes' own objects are left, it goes.
    cloud.world["k8s"]["ns_objects"] = cloud.world["k8s"]["ns_objects"][1:]
    cloud.save()
    cloud.run("down", "--yes")
    assert "training" not in cloud.world["k8s"]["namespaces"]


# -- issue 16: what a real account would show --------------------------------------------

def _k8s_job_ckpt_root() -> str:
    text = (HERE.parent / "k8s" / "training" / "job.yaml").read_text()
    lines = text.splitlines()
    i = next(n for n, ln in enumerate(lines) if "name: CKPT_ROOT" in ln)
    return lines[i + 1].split("value:", 1)[1].strip()


def test_checkpoints_lie_under_the_s3_link() -> None:  # issue 16, defect 1
    # pods mount the file system at /fsx; the association links /checkpoints
    # (the default DRA_FILE_SYSTEM_PATH), so the training Job's checkpoints
    # are exported
    text = (HERE.parent / "aws" / "lib" / "common.sh").read_text()
    dra = text.split("[DRA_FILE_SYSTEM_PATH]=", 1)[1].split()[0]
    root = _k8s_job_ckpt_root()
    assert root.startswith("/fsx" + dra.rstrip("/") + "/"), (root, dra)
    example = (HERE.parent / "aws" / "fsx.env.example").read_text()
    assert f"DRA_FILE_SYSTEM_PATH={dra} " in example


def test_down_waits_for_the_export_before_deleting(cloud: Cloud) -> None:  # defect 1
    cloud.run("up")
    fs_id = cloud.state()["file_system"]
    cloud.world["export_queue"] = {fs_id: [95, 12, 0]}
    cloud.save()
    p = cloud.run("down", "--yes")
    calls = [" ".join(c) for c in cloud.calls()]
    polls = [i for i, c in enumerate(calls) if "get-metric-statistics" in c]
    delete = next(i for i, c in enumerate(calls) if "delete-file-system" in c)
    assert len(polls) == 3 and polls[-1] < delete, calls
    assert "every change is in S3" in p.stderr


@pytest.mark.parametrize("queue", [[], [40]])  # no datapoint at all; never drains
def test_down_refuses_when_the_export_cannot_be_confirmed(cloud: Cloud, queue) -> None:
    cloud.run("up")
    fs_id = cloud.state()["file_system"]
    cloud.world["export_queue"] = {fs_id: queue}
    cloud.save()
    p = cloud.run("down", "--yes", check=False, WAIT_TIMEOUT_S="1", POLL_INTERVAL_S="0.2")
    assert p.returncode != 0 and "cannot confirm that file system" in p.stderr
    assert "--discard-unexported" in p.stderr
    assert fs_id in cloud.world["file_systems"]
    assert "aws fsx delete-file-system" not in mutations(cloud.calls())
    # the operator's explicit choice
    cloud.run("down", "--yes", "--discard-unexported")
    assert fs_id not in cloud.world["file_systems"]


def test_persistent_2_down_takes_no_backup_of_a_linked_file_system(cloud: Cloud) -> None:
    # defect 2: FSx refuses SkipFinalBackup=false for S3-linked file systems
    # (the stub does too); the type comes from AWS, not from the config
    cloud.run("up", DEPLOYMENT_TYPE="PERSISTENT_2", STORAGE_CAPACITY_GIB="2400")
    fs_id = cloud.state()["file_system"]
    p = cloud.run("down", "--yes", DEPLOYMENT_TYPE="SCRATCH_2", FINAL_BACKUP="true")
    delete = next(c for c in cloud.calls() if "delete-file-system" in c)
    assert delete[delete.index("--lustre-configuration") + 1] == "SkipFinalBackup=true"
    assert fs_id not in cloud.world["file_systems"]
    assert "no final backup" in p.stderr
    assert cloud.world.get("final_backups", []) == []


def test_final_backup_of_an_unlinked_persistent_2(cloud: Cloud) -> None:
    # FINAL_BACKUP on a PERSISTENT_2 that has no S3 link (its association
    # was removed by hand): the backup is what keeps its files
    cloud.run("up", DEPLOYMENT_TYPE="PERSISTENT_2", STORAGE_CAPACITY_GIB="2400")
    fs_id = cloud.state()["file_system"]
    cloud.world["dras"] = {}
    cloud.save()
    cloud.run("down", "--yes", DEPLOYMENT_TYPE="PERSISTENT_2")
    assert cloud.world["final_backups"] == [fs_id]
    assert "get-metric-statistics" not in json.dumps(cloud.calls())


def test_down_refuses_an_unlinked_scratch_without_the_flag(cloud: Cloud) -> None:
    cloud.run("up")
    fs_id = cloud.state()["file_system"]
    cloud.world["dras"] = {}
    cloud.save()
    p = cloud.run("down", "--yes", check=False)
    assert p.returncode != 0 and "deleting it deletes every file on it" in p.stderr
    assert fs_id in cloud.world["file_systems"]
    delete = [c for c in cloud.calls() if "delete-file-system" in c]
    assert delete == []
    cloud.run("down", "--yes", "--discard-unexported")
    delete = next(c for c in cloud.calls() if "delete-file-system" in c)
    assert "--lustre-configuration" not in delete  # scratch: no backup options at all


def test_up_down_up_uses_a_new_token(cloud: Cloud) -> None:  # defect 4
    cloud.run("up")
    first = next(c for c in cloud.calls() if "create-file-system" in c)
    cloud.run("down", "--yes")
    cloud.run("up")
    second = next(c for c in cloud.calls() if "create-file-system" in c)
    t1 = first[first.index("--client-request-token") + 1]
    t2 = second[second.index("--client-request-token") + 1]
    assert t1 != t2 and t1.startswith("ckpt-") and t2.startswith("ckpt-")
    assert len(t2) <= 63


def test_a_retried_creation_reuses_its_token(cloud: Cloud) -> None:  # defect 4
    # the answer to create-file-system was lost (the process died): the
    # retry sends the recorded token, and FSx answers with the same file system
    state = cloud.state_file
    cloud.run("up")
    fs_id, token = cloud.state()["file_system"], cloud.state()["create_token"]
    data = json.loads(state.read_text())
    del data["created"]["file_system"]  # as if the answer never arrived
    cloud.world["file_systems"][fs_id]["tags"] = {}  # nor could it be found by tag
    cloud.save()
    state.write_text(json.dumps(data))
    cloud.run("up")
    again = next(c for c in cloud.calls() if "create-file-system" in c)
    assert again[again.index("--client-request-token") + 1] == token
    assert cloud.state()["file_system"] == fs_id


def _foreign_stack(cloud: Cloud) -> str:
    name = "eksctl-train-addon-iamserviceaccount-kube-system-fsx-csi-controller-sa"
    cloud.world["cfn_stacks"][name] = {
        "tags": {"alpha.eksctl.io/cluster-name": "train"}, "role": "AmazonEKS_FSx_CSI_Role",
        "role_arn": "arn:aws:iam::111122223333:role/AmazonEKS_FSx_CSI_Role"}
    cloud.world["roles"]["AmazonEKS_FSx_CSI_Role"] = cloud.world["cfn_stacks"][name]["role_arn"]
    cloud.save()
    return name


def test_an_existing_eksctl_stack_is_reused_and_kept(cloud: Cloud) -> None:  # defect 3
    name = _foreign_stack(cloud)
    cloud.run("up")
    assert "eksctl create iamserviceaccount" not in mutations(cloud.calls())
    assert "csi_role" not in cloud.state()
    helm = cloud.world["helm"]["kube-system/aws-fsx-csi-driver"]
    assert ("controller.serviceAccount.annotations.eks\\.amazonaws\\.com/"
            "role-arn=arn:aws:iam::111122223333:role/AmazonEKS_FSx_CSI_Role") in helm["set-string"]
    cloud.run("down", "--yes")
    assert "eksctl delete iamserviceaccount" not in mutations(cloud.calls())
    assert name in cloud.world["cfn_stacks"] and "AmazonEKS_FSx_CSI_Role" in cloud.world["roles"]


def test_down_keeps_an_untagged_stack_even_if_recorded(cloud: Cloud) -> None:  # defect 3
    cloud.run("up")
    name = "eksctl-train-addon-iamserviceaccount-kube-system-fsx-csi-controller-sa"
    cloud.world["cfn_stacks"][name]["tags"] = {}  # recorded, but not (any more) ours
    cloud.save()
    p = cloud.run("down", "--yes")
    assert "eksctl delete iamserviceaccount" not in mutations(cloud.calls())
    assert name in cloud.world["cfn_stacks"] and "kept (not this toolkit's)" in p.stderr


def test_an_existing_service_account_is_reused(cloud: Cloud) -> None:  # defect 3
    arn = "arn:aws:iam::111122223333:role/their-fsx-role"
    cloud.world["k8s"]["serviceaccounts"] = {
        "kube-system/fsx-csi-controller-sa": {"eks.amazonaws.com/role-arn": arn}}
    cloud.world["k8s"]["csidrivers"] = ["fsx.csi.aws.com"]  # their driver, too
    cloud.save()
    cloud.run("up")
    muts = mutations(cloud.calls())
    assert "eksctl create iamserviceaccount" not in muts and "helm upgrade" not in muts
    assert "csi_role" not in cloud.state() and "helm_release" not in cloud.state()
    cloud.run("down", "--yes")
    assert "helm uninstall" not in mutations(cloud.calls())
    assert cloud.world["k8s"]["csidrivers"] == ["fsx.csi.aws.com"]


def test_down_keeps_the_driver_while_other_fsx_volumes_use_it(cloud: Cloud) -> None:  # defect 5
    cloud.run("up")
    cloud.world["k8s"]["pvs"] = [{"name": "team-b-fsx", "driver": "fsx.csi.aws.com"}]
    cloud.save()
    p = cloud.run("down", "--yes")
    assert "helm uninstall" not in mutations(cloud.calls())
    assert "other FSx volumes use it (team-b-fsx" in p.stderr
    assert "helm_release" not in cloud.state_file.read_text() if cloud.state_file.exists() else True


@pytest.mark.parametrize("cmd", [("up",), ("down", "--yes"), ("mount-test",)])
def test_a_wrong_kube_context_changes_nothing(cloud: Cloud, cmd) -> None:  # defect 6
    cloud.run("up")
    cloud.world["k8s"]["server"] = "https://FEDCBA9876543210.yl4.us-west-2.eks.amazonaws.com"
    cloud.world["k8s"]["context"] = "someone-elses-cluster"
    cloud.save()
    p = cloud.run(*cmd, check=False, IMAGE="registry.example/shardwise-trainer:0.1.0")
    assert p.returncode != 0
    assert "current kube context (someone-elses-cluster)" in p.stderr and "update-kubeconfig" in p.stderr
    assert mutations(cloud.calls()) == []


def test_pv_capacity_comes_from_aws(cloud: Cloud) -> None:  # defect 12
    cloud.run("up")
    fs_id = cloud.state()["file_system"]
    cloud.world["file_systems"][fs_id]["capacity"] = 2400  # resized since
    cloud.save()
    cloud.run("up")
    storage = next(a["kustomization"] for a in reversed(cloud.world["k8s"]["applied"])
                   if a["dir"].endswith("-storage"))
    assert '"2400Gi"' in storage and '"1200Gi"' not in storage


def test_the_policy_arn_follows_the_partition(cloud: Cloud) -> None:  # defect 12
    cloud.world["partition"] = "aws-cn"
    cloud.save()
    cloud.run("up", AWS_REGION="cn-north-1")
    create_sa = next(c for c in cloud.calls() if c[:3] == ["eksctl", "create", "iamserviceaccount"])
    assert "arn:aws-cn:iam::aws:policy/AmazonFSxFullAccess" in create_sa


def test_throughput_scratch_and_persistent(cloud: Cloud, tmp_path: Path) -> None:  # AUDIT 21, 22
    saved = tmp_path / "describe.json"
    saved.write_text(json.dumps({"FileSystems": [
        {"FileSystemId": "fs-s", "Lifecycle": "AVAILABLE", "StorageCapacity": 2400,
         "DNSName": "fs-s.fsx", "LustreConfiguration": {"DeploymentType": "SCRATCH_2",
                                                         "MountName": "aaa", "PerUnitStorageThroughput": None}},
        {"FileSystemId": "fs-p", "Lifecycle": "AVAILABLE", "StorageCapacity": 38400,
         "DNSName": "fs-p.fsx", "LustreConfiguration": {"DeploymentType": "PERSISTENT_2",
                                                         "MountName": "bbb", "PerUnitStorageThroughput": 125}},
        {"FileSystemId": "fs-c", "Lifecycle": "CREATING", "StorageCapacity": 1200,
         "LustreConfiguration": {"DeploymentType": "PERSISTENT_2"}}]}))
    p = subprocess.run([str(FSX), "throughput", "--from-json", str(saved)], capture_output=True,
                       text=True, env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)})
    assert p.returncode == 0, p.stderr
    rows = {line.split()[0]: line.split() for line in p.stdout.splitlines() if line.startswith("fs-")}
    assert rows["fs-s"][3:6] == ["2400", "200", "468.8"]
    assert rows["fs-p"][3:6] == ["38400", "125", "4687.5"]
    assert rows["fs-c"][4:6] == ["unknown", "unknown"]   # no arithmetic on null
    assert "fs-s: SCRATCH_2 baseline" in p.stdout
    # --mbps: the one number `shardwise bench --provisioned-mbps` takes; only
    # for exactly one file system with a known throughput.
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    many = subprocess.run([str(FSX), "throughput", "--from-json", str(saved), "--mbps"],
                          capture_output=True, text=True, env=env)
    assert many.returncode != 0 and "holds 3 Lustre file systems" in many.stderr
    for fs_id, want in (("fs-p", "4687.5"), ("fs-s", "468.75")):
        one = tmp_path / f"{fs_id}.json"
        one.write_text(json.dumps({"FileSystems": [
            f for f in json.loads(saved.read_text())["FileSystems"] if f["FileSystemId"] == fs_id]}))
        p = subprocess.run([str(FSX), "throughput", "--mbps", "--from-json", str(one)],
                           capture_output=True, text=True, env=env)
        assert p.returncode == 0 and p.stdout.strip() == want, p.stderr
    unknown = tmp_path / "fs-c.json"
    unknown.write_text(json.dumps({"FileSystems": [json.loads(saved.read_text())["FileSystems"][2]]}))
    p = subprocess.run([str(FSX), "throughput", "--from-json", str(unknown), "--mbps"],
                       capture_output=True, text=True, env=env)
    assert p.returncode != 0 and "fs-c reports no throughput" in p.stderr


def test_status_shows_lifecycle_dns_and_mount_name(cloud: Cloud) -> None:
    cloud.run("up")
    p = cloud.run("status")
    fs_id = cloud.state()["file_system"]
    row = next(line.split() for line in p.stdout.splitlines() if line.startswith(fs_id))
    assert row[1:3] == ["AVAILABLE", "SCRATCH_2"]
    assert row[6:8] == [f"{fs_id}.fsx.us-east-1.amazonaws.com", "mnt" + fs_id[-5:]]


def _node_result(node: str, start: float, gb_per_s: float, seconds: float) -> str:
    """One pod's line, as the mount-test Job prints it."""
    return json.dumps({"node": node, "start": start, "start_at": 1000, "bench": {
        "ranks": 2, "save": {"gb_per_s": gb_per_s, "bytes": int(gb_per_s * seconds * 1e9),
                             "seconds": seconds}, "load": {"gb_per_s": 0.2}}})


def _mount_test_job(cloud: Cloud) -> dict:
    applied = cloud.world["k8s"]["applied"][-1]
    return next(o for o in render(Path(applied["dir"])) if o["kind"] == "Job")


def test_mount_test_runs_on_every_node_together_and_adds_them_up(cloud: Cloud) -> None:  # defect 8
    cloud.run("up")
    cloud.world["job_logs"] = "\n".join([
        "checkpoint verified", _node_result("gpu-a", 1000.2, 0.12, 10.0),
        _node_result("gpu-b", 1000.4, 0.10, 12.0)])
    cloud.save()
    p = cloud.run("mount-test", IMAGE="registry.example/shardwise-trainer:0.1.0")
    assert "gpu-a: save 120 MB/s, load 200 MB/s (2 ranks, 1.2 GB)" in p.stdout
    # 2.4 GB over the slowest node's 12 s, against 1200 GiB x 200 MB/s/TiB
    assert ("aggregate: 2 nodes saved 2.4 GB in 12 s (the slowest node): 200 MB/s, "
            "85% of the provisioned 234 MB/s") in p.stdout
    assert "started" not in p.stdout  # no skew warning: they started together
    job = _mount_test_job(cloud)
    spec = job["spec"]["template"]["spec"]
    # every selected node (role=gpu: gpu-a, gpu-b), one pod each, at once
    assert job["spec"]["parallelism"] == job["spec"]["completions"] == 2
    assert spec["nodeSelector"] == {"role": "gpu"}
    anti = spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["topologyKey"] == "kubernetes.io/hostname"
    assert anti[0]["labelSelector"]["matchLabels"] == job["spec"]["template"]["metadata"]["labels"]
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    # sized to outlast SCRATCH_2's burst: 300 s at 1300 MB/s per TiB of 1200 GiB
    # (below 40% of the capacity), over 2 nodes x 2 ranks
    per_rank_mib = int(env["SIZE_PER_RANK"].removesuffix("MiB"))
    assert abs(per_rank_mib * 4 * 1048576 - 1200 / 1024 * 1300e6 * 300) < 4 * 1048576
    assert 0 < int(env["START_AT"]) - time.time() <= 120
    assert spec["containers"][0]["image"] == "registry.example/shardwise-trainer:0.1.0"
    assert job["metadata"]["namespace"] == "training"


def test_mount_test_flags_nodes_that_did_not_start_together(cloud: Cloud) -> None:  # defect 8
    cloud.run("up")
    cloud.world["job_logs"] = "\n".join([_node_result("gpu-a", 1000.1, 0.12, 10.0),
                                         _node_result("gpu-b", 1075.0, 0.10, 12.0)])
    cloud.save()
    p = cloud.run("mount-test", IMAGE="registry.example/shardwise-trainer:0.1.0")
    assert "the nodes started 75 s apart" in p.stdout


def test_mount_test_refuses_a_missing_node_result(cloud: Cloud) -> None:  # defect 8
    cloud.run("up")
    cloud.world["job_logs"] = _node_result("gpu-a", 1000.1, 0.12, 10.0)
    cloud.save()
    p = cloud.run("mount-test", check=False, IMAGE="registry.example/shardwise-trainer:0.1.0")
    assert p.returncode != 0 and "only 1 of 2 nodes reported a result" in p.stderr


def test_mount_test_nodes_and_size_can_be_set(cloud: Cloud) -> None:  # defect 8
    cloud.run("up")
    cloud.world["job_logs"] = _node_result("gpu-b", 1000.1, 0.12, 10.0)
    cloud.save()
    cloud.run("mount-test", IMAGE="registry.example/shardwise-trainer:0.1.0",
              MOUNT_TEST_NODES="1", MOUNT_TEST_SIZE="8GiB")
    job = _mount_test_job(cloud)
    assert job["spec"]["parallelism"] == job["spec"]["completions"] == 1
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["SIZE_PER_RANK"] == "8GiB"


def test_up_applies_the_client_tuning_on_the_training_nodes(cloud: Cloud) -> None:  # defect 11
    cloud.run("up")
    applied = next(a for a in cloud.world["k8s"]["applied"] if a["dir"].endswith("-lustre-tuning"))
    objs = {o["kind"]: o for o in render(Path(applied["dir"]))}
    ds = objs["DaemonSet"]
    assert ds["metadata"]["namespace"] == "kube-system"
    assert ds["spec"]["template"]["spec"]["nodeSelector"] == {"role": "gpu"}
    assert ds["metadata"]["labels"]["shardwise.io/stack"] == "ckpt"
    assert objs["ConfigMap"]["metadata"]["labels"]["shardwise.io/stack"] == "ckpt"
    assert cloud.state()["lustre_tuning"] == "kube-system/shardwise-lustre-tuning"
    cloud.run("down", "--yes")
    assert "daemonset,configmap -n kube-system -l shardwise.io/stack=ckpt" in \
        cloud.world["k8s"]["deleted"]


def test_client_tuning_can_be_left_out(cloud: Cloud) -> None:  # defect 11
    cloud.run("up", TUNE_CLIENTS="false")
    assert not any(a["dir"].endswith("-lustre-tuning") for a in cloud.world["k8s"]["applied"])
    assert "lustre_tuning" not in cloud.state()


def test_the_volume_pins_its_pods_to_the_file_systems_zone(cloud: Cloud) -> None:  # defect 8
    cloud.run("up")
    pv = next(o for o in render(Path(cloud.world["k8s"]["applied"][0]["dir"]))
              if o["kind"] == "PersistentVolume")
    term = pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]
    fs = cloud.world["file_systems"][cloud.state()["file_system"]]
    assert term == {"key": "topology.kubernetes.io/zone", "operator": "In",
                    "values": [cloud.world["subnets"][fs["subnet"]]]}


def test_mount_test_refuses_an_unpinned_image(cloud: Cloud) -> None:
    cloud.run("up")
    p = cloud.run("mount-test", check=False, IMAGE="registry.example/shardwise-trainer:latest")
    assert p.returncode != 0 and "pinned tag" in p.stderr


@pytest.mark.parametrize("env,message", [
    ({"CLUSTER_NAME": ""}, "CLUSTER_NAME is not set"),
    ({"S3_BUCKET": ""}, "S3_BUCKET is not set"),
    ({"DEPLOYMENT_TYPE": "SCRATCH_1"}, "DEPLOYMENT_TYPE 'SCRATCH_1'"),
    ({"STORAGE_CAPACITY_GIB": "3000"}, "takes 1200, 2400 or a multiple of 2400"),
    ({"DEPLOYMENT_TYPE": "PERSISTENT_2", "PER_UNIT_THROUGHPUT": "200"}, "takes 125, 250, 500 or 1000"),
    ({"EFA_ENABLED": "true"}, "EFA_ENABLED=true needs DEPLOYMENT_TYPE=PERSISTENT_2"),
    ({"DRA_FILE_SYSTEM_PATH": "checkpoints"}, "must be an absolute path"),
    ({"NODE_SELECTOR": ""}, "span several availability zones"),
    ({"MOUNT_TEST_NODES": "0"}, "MOUNT_TEST_NODES '0' must be a positive number"),
    ({"TUNE_CLIENTS": "yes"}, "TUNE_CLIENTS must be true or false"),
    ({"MOUNT_TEST_SIZE": "lots"}, "MOUNT_TEST_SIZE 'lots' must be a size"),
    ({"MOUNT_TEST_SECONDS": "5m"}, "MOUNT_TEST_SECONDS '5m' must be a number of seconds"),
])
def test_bad_configuration_is_a_clear_error_before_any_change(cloud: Cloud, env, message) -> None:
    p = cloud.run("up", check=False, **env)
    assert p.returncode != 0
    assert message in p.stderr
    assert mutations(cloud.calls()) == []


def test_config_file_is_parsed_not_executed(cloud: Cloud, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    conf = tmp_path / "fsx.env"
    conf.write_text(f"CLUSTER_NAME=train\nS3_BUCKET=$(touch {marker})\n")
    env = {k: v for k, v in cloud.env.items() if k not in ("CLUSTER_NAME", "S3_BUCKET")}
    p = subprocess.run([str(FSX), "--config", str(conf), "status"], env=env, capture_output=True,
                       text=True, stdin=subprocess.DEVNULL)
    assert not marker.exists()
    conf.write_text("CLUSTER_NAME=train\nBOGUS=1\n")
    p = subprocess.run([str(FSX), "--config", str(conf), "status"], env=env, capture_output=True,
                       text=True, stdin=subprocess.DEVNULL)
    assert p.returncode != 0 and "line 2: unknown setting BOGUS" in p.stderr


def test_help_lists_the_subcommands() -> None:
    p = subprocess.run([str(FSX), "--help"], capture_output=True, text=True)
    assert p.returncode == 0
    for sub in ("up", "status", "throughput", "mount-test", "down"):
        assert f" {sub}" in p.stdout


def test_example_config_is_valid(cloud: Cloud) -> None:
    example = FSX.parent / "fsx.env.example"
    env = {k: v for k, v in cloud.env.items() if k in ("PATH", "HOME", "FAKE_CLOUD", "STATE_FILE")}
    p = subprocess.run([str(FSX), "--config", str(example), "status"], env=env, capture_output=True,
                       text=True, stdin=subprocess.DEVNULL)
    assert "no state file" in p.stderr, p.stderr  # got past parsing and validation


def test_the_real_cli_refuses_what_aws_would() -> None:  # issue 16, tests that can fail
    """awscli_check, which every Cloud.run applies to each `aws` call."""
    ok = ["--region", "us-east-1", "fsx", "describe-file-systems", "--file-system-ids",
          "fs-0123456789abcdef0"]
    assert awscli_check.check(ok) is None
    assert "Unknown options: --file-system-idz" in awscli_check.check(
        [*ok[:4], "--file-system-idz", "fs-0123456789abcdef0"])
    assert "does not match the pattern" in awscli_check.check([*ok[:5], "fs-a"])  # malformed ID
    assert "invalid literal for int()" in awscli_check.check(
        ["--region", "us-east-1", "fsx", "create-file-system", "--file-system-type", "LUSTRE",
         "--storage-capacity", "1.2TiB", "--subnet-ids", "subnet-0aa00000000000001"])
    bad = awscli_check.check(["--region", "us-east-1", "fsx", "create-file-system",
                              "--file-system-type", "ZFS3", "--storage-capacity", "1200",
                              "--subnet-ids", "subnet-0aa00000000000001"])
    assert bad is not None and "FileSystemType: 'ZFS3' is not one of" in bad  # the model's enum
    assert "the following arguments are required: --description" in awscli_check.check(
        ["--region", "us-east-1", "ec2", "create-security-group", "--group-name", "x"])


def test_audit_coverage() -> None:
    import re
    audit = (HERE.parent.parent.parent / "shared" / "seeds" / "AUDIT.md")
    coverage = (HERE.parent / "AUDIT-COVERAGE.md").read_text()
    rows = {int(m.group(1)): m.group(2) for m in
            re.finditer(r"^\| (\d+) \|.*\| ([^|]+) \|$", coverage, re.M)}
    expected = 32
    if audit.exists():  # the seed audit lives beside the repository in the team's checkout
        expected = len(re.findall(r"^\d+\. ", audit.read_text(), re.M))
    assert sorted(rows) == list(range(1, expected + 1))
    tests = "".join(p.read_text() for p in HERE.glob("test_*.py"))
    # issue 16's rows (16.N) name tests the same way
    for m in re.finditer(r"^\| (16\.[0-9a-z, .-]+) \|.*\| ([^|]+) \|$", coverage, re.M):
        rows[m.group(1)] = m.group(2)
    assert len([k for k in rows if isinstance(k, str)]) >= 16
    for n, cell in rows.items():
        cell = cell.strip()
        if cell.startswith("reason:"):
            assert len(cell) > 20, f"defect {n}: the reason says too little"
        else:  # one test, or several separated by commas
            for name in cell.split(","):
                assert f"def {name.strip()}(" in tests, f"defect {n}: no test named {name}"
