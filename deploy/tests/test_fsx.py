"""deploy/aws/fsx against stub aws/eksctl/helm/kubectl (fakecloud.py) on PATH."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
FSX = HERE.parent / "aws" / "fsx"
TOOLS = ("aws", "eksctl", "helm", "kubectl")

NODE_SG, EKS_SG = "sg-0node0000000000001", "sg-0eks00000000000001"


def base_world() -> dict:
    node = lambda name, iid, az, subnet, role: {  # noqa: E731
        "name": name, "labels": {"role": role},
        "instance": {"id": iid, "az": az, "subnet": subnet, "sgs": [NODE_SG, EKS_SG]}}
    return {
        "account": "111122223333",
        "clusters": {"train": {"vpc": "vpc-1", "issuer": "https://oidc.eks.us-east-1.amazonaws.com/id/ABC"}},
        "nodes": [node("gpu-a", "i-a", "us-east-1a", "subnet-a", "gpu"),
                  node("gpu-b", "i-b", "us-east-1a", "subnet-a", "gpu"),
                  node("cpu-c", "i-c", "us-east-1b", "subnet-b", "cpu")],
        "subnets": {"subnet-a": "us-east-1a", "subnet-b": "us-east-1b"},
        "security_groups": {
            NODE_SG: {"name": "nodes", "vpc": "vpc-1", "tags": {}},
            EKS_SG: {"name": "eks-cluster-sg", "vpc": "vpc-1", "tags": {}},
            "sg-0other000000000001": {"name": "fsx-lustre-sg", "vpc": "vpc-1", "tags": {}}},
        "rules": {},
        "file_systems": {"fs-0someoneelse00001": {
            "capacity": 2400, "lustre": {"DeploymentType": "PERSISTENT_2", "PerUnitStorageThroughput": 500},
            "tags": {"team": "other"}, "mount": "other", "region": "us-east-1",
            "sgs": ["sg-0other000000000001"], "script": ["AVAILABLE"]}},
        "dras": {}, "buckets": {"ckpt-bucket": {"tags": {}}}, "roles": {}, "oidc": [],
        "helm": {}, "eksctl_stacks": [],
        "k8s": {"namespaces": ["default", "kube-system"], "applied": [], "jobs": {}, "pods": [],
                "deleted": [], "objects": []},
    }


class Cloud:
    def __init__(self, tmp: Path) -> None:
        self.dir = tmp / "cloud"
        self.dir.mkdir()
        bin_dir = tmp / "bin"
        bin_dir.mkdir()
        for t in TOOLS:
            (bin_dir / t).symlink_to(HERE / "fakecloud.py")
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
        if check and p.returncode != 0:
            raise AssertionError(f"fsx {' '.join(args)} failed ({p.returncode}):\n{p.stderr}")
        return p

    def calls(self) -> list[list[str]]:
        path = self.dir / "calls.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def state(self) -> dict:
        return json.loads(self.state_file.read_text())["created"]


MUTATING = ("create-", "authorize-", "revoke-", "delete-", "put-", "rb")


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
        elif tool == "kubectl" and args[0] in ("create", "apply", "delete", "label"):
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
    "kubectl create namespace",
    "kubectl label namespace",
    "kubectl apply -k",
]


def test_fresh_up_makes_exactly_these_calls_in_order(cloud: Cloud) -> None:
    cloud.run("up")
    assert mutations(cloud.calls()) == FRESH_UP_SCRATCH
    w, st = cloud.world, cloud.state()
    fs_id = st["file_system"]
    fs = w["file_systems"][fs_id]
    assert fs["version"] == "2.15"                         # AUDIT 4
    assert fs["lustre"] == {"DeploymentType": "SCRATCH_2", "ImportPath": "s3://ckpt-bucket/import/",
                            "ExportPath": "s3://ckpt-bucket/export/",
                            "AutoImportPolicy": "NEW_CHANGED_DELETED", "PerUnitStorageThroughput": None}
    assert fs["subnet"] == "subnet-a"                      # the GPU nodes' subnet (AUDIT 10)
    assert fs["sgs"] == [st["security_group"]]
    assert fs["tags"]["shardwise:stack"] == "ckpt"
    # client-side rules on both node security groups (AUDIT 8, 9), recorded by id
    rule_keys = [k for k in st if k.startswith("rule:")]
    assert len(rule_keys) == 10
    assert {k.split(":")[1] for k in rule_keys} == {st["security_group"], NODE_SG, EKS_SG}
    helm_release = w["helm"]["kube-system/aws-fsx-csi-driver"]
    assert not any("image" in s for s in helm_release["set"])  # chart default image (AUDIT 13)
    assert "controller.serviceAccount.create=false" not in helm_release["set"]  # AUDIT 12
    role_arn = w["roles"]["ckpt-fsx-csi"]
    assert helm_release["set-string"] == [
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
    assert mutations(cloud.calls()) == ["kubectl apply -k"]  # re-applying the same objects is a no-op
    assert json.dumps(cloud.world["file_systems"], sort_keys=True).count("fs-") == before.count("fs-")
    assert len(cloud.world["security_groups"]) == 4
    assert len(cloud.world["oidc"]) == 1


def test_up_after_lost_state_adopts_tagged_resources(cloud: Cloud) -> None:
    cloud.run("up")
    fs_id, sg = cloud.state()["file_system"], cloud.state()["security_group"]
    cloud.state_file.unlink()
    p = cloud.run("up", check=False)
    # the role is not adopted blindly: it could be someone else's
    assert p.returncode != 0 and "IAM role ckpt-fsx-csi exists" in p.stderr
    st = json.loads(cloud.state_file.read_text())["created"]
    assert st["file_system"] == fs_id and st["security_group"] == sg
    assert "aws fsx create-file-system" not in mutations(cloud.calls())


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
        "helm uninstall", "aws fsx delete-file-system",
        *["aws ec2 revoke-security-group-ingress"] * 10,
        "aws ec2 delete-security-group", "eksctl delete iamserviceaccount", "aws s3 rb"], p.stderr
    w = cloud.world
    assert st["file_system"] not in w["file_systems"]
    assert "fs-0someoneelse00001" in w["file_systems"]              # AUDIT 25
    assert set(w["security_groups"]) == {NODE_SG, EKS_SG, "sg-0other000000000001"}
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
    data["created"]["file_system"] = "fs-0someoneelse00001"  # a tampered or mixed-up state file
    cloud.state_file.write_text(json.dumps(data))
    p = cloud.run("down", "--yes", check=False)
    assert p.returncode != 0
    assert "refusing to delete a file system this toolkit did not create" in p.stderr
    assert mutations(cloud.calls()) == []
    assert "fs-0someoneelse00001" in cloud.world["file_systems"]


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


def test_mount_test_reports_against_provisioned(cloud: Cloud) -> None:
    cloud.run("up")
    cloud.world["job_logs"] = ('checkpoint verified\n'
                               '{"ranks": 2, "save": {"gb_per_s": 0.117}, "load": {"gb_per_s": 0.2}}')
    cloud.save()
    p = cloud.run("mount-test", IMAGE="registry.example/shardwise-trainer:0.1.0")
    assert "save 117 MB/s, load 200 MB/s" in p.stdout
    assert "provisioned 234 MB/s: save at 50%" in p.stdout
    applied = cloud.world["k8s"]["applied"][-1]
    job = next(o for o in render(Path(applied["dir"])) if o["kind"] == "Job")
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == \
        "registry.example/shardwise-trainer:0.1.0"
    assert job["metadata"]["namespace"] == "training"


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
    ({"S3_EXPORT_PREFIX": "import/export/"}, "nest"),                          # AUDIT 5
    ({"NODE_SELECTOR": ""}, "span several availability zones"),
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
    for n, cell in rows.items():
        cell = cell.strip()
        if cell.startswith("reason:"):
            assert len(cell) > 20, f"defect {n}: the reason says too little"
        else:
            assert f"def {cell}(" in tests, f"defect {n}: no test named {cell}"
