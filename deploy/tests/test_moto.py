"""deploy/aws/fsx against moto's server: a real AWS API emulator, through the real AWS CLI.

EC2 (VPC, subnets, instances, security groups and their rules), S3, IAM,
STS, CloudFormation and CloudWatch answer from moto's server mode on a
loopback port (motocloud.py). The toolkit's `aws` calls to them run through
the real AWS CLI with AWS_ENDPOINT_URL set to it, so an unknown parameter, a
wrong shape, an ID that does not exist, a rule that already exists or a
bucket that is not empty fail as AWS would fail them. FSx and EKS, and
eksctl, helm and kubectl stay in fakecloud.py (deploy/tests/README.md says
why); fakecloud's eksctl makes its stacks, roles and OIDC provider in moto.
"""
from __future__ import annotations

import datetime
from pathlib import Path

import pytest

import motocloud
from test_fsx import ENDPOINT, Cloud, base_world, mutations

STACK_TAG = {"Key": "shardwise:stack", "Value": "ckpt"}
ISSUER = "https://oidc.eks.us-east-1.amazonaws.com/id/0123456789ABCDEF0123456789ABCDEF"
SA_STACK = "eksctl-train-addon-iamserviceaccount-kube-system-fsx-csi-controller-sa"


@pytest.fixture(scope="session")
def helper(tmp_path_factory):
    try:
        import moto  # noqa: F401  (scripts/setup.sh installs moto[server])
    except ImportError:
        pytest.fail("moto is needed for these tests: scripts/setup.sh installs it")
    h = motocloud.Helper(str(tmp_path_factory.mktemp("moto")))
    yield h
    h.stop()


class Account:
    """What a test arranges in moto before `up`: a VPC with a subnet in each
    of two zones, the node and cluster security groups, three nodes (two GPU
    nodes in zone a), someone else's security group and bucket."""

    def __init__(self, h: motocloud.Helper) -> None:
        h.reset()
        self.h = h
        ec2 = lambda m, **kw: h.call("ec2", m, **kw)  # noqa: E731
        self.vpc = ec2("create_vpc", CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        self.subnet_a = ec2("create_subnet", VpcId=self.vpc, CidrBlock="10.0.1.0/24",
                            AvailabilityZone="us-east-1a")["Subnet"]["SubnetId"]
        self.subnet_b = ec2("create_subnet", VpcId=self.vpc, CidrBlock="10.0.2.0/24",
                            AvailabilityZone="us-east-1b")["Subnet"]["SubnetId"]
        sg = lambda name: ec2("create_security_group", GroupName=name, Description=name,  # noqa: E731
                              VpcId=self.vpc)["GroupId"]
        self.node_sg, self.eks_sg, self.foreign_sg = sg("nodes"), sg("eks-cluster-sg"), sg("fsx-lustre-sg")
        if not hasattr(h, "image"):  # moto's images never change: looked up once
            h.image = ec2("describe_images", Owners=["amazon"])["Images"][0]["ImageId"]
        image = h.image
        self.instances = []
        for subnet in (self.subnet_a, self.subnet_a, self.subnet_b):
            self.instances.append(ec2(
                "run_instances", ImageId=image, MinCount=1, MaxCount=1, InstanceType="p5.48xlarge",
                SubnetId=subnet, SecurityGroupIds=[self.node_sg, self.eks_sg])["Instances"][0]["InstanceId"])
        h.call("s3", "create_bucket", Bucket="ckpt-bucket")

    def world(self) -> dict:
        """fakecloud's part of the world (EKS, FSx, the Kubernetes cluster), over these IDs."""
        w = base_world()
        w["clusters"]["train"].update(vpc=self.vpc, issuer=ISSUER)
        for node, iid, subnet, az in zip(w["nodes"], self.instances,
                                          (self.subnet_a, self.subnet_a, self.subnet_b),
                                          ("us-east-1a", "us-east-1a", "us-east-1b")):
            node["instance"].update(id=iid, subnet=subnet, az=az)
        w["file_systems"]["fs-0e15e0e15e0000001"]["sgs"] = [self.foreign_sg]
        return w

    def groups(self) -> dict[str, dict]:
        return {g["GroupId"]: g for g in self.h.call("ec2", "describe_security_groups", Filters=[
            {"Name": "vpc-id", "Values": [self.vpc]}])["SecurityGroups"]}

    def rules_of(self, group: str) -> list[dict]:
        return self.h.call("ec2", "describe_security_group_rules", Filters=[
            {"Name": "group-id", "Values": [group]}])["SecurityGroupRules"]

    def referencing(self, group: str) -> list[dict]:
        """Rules of the node groups that name `group` as their peer."""
        return [r for g in (self.node_sg, self.eks_sg) for r in self.rules_of(g)
                if r.get("ReferencedGroupInfo", {}).get("GroupId") == group]

    def stacks(self) -> list[str]:
        return [s["StackName"] for s in self.h.call("cloudformation", "describe_stacks")["Stacks"]
                if s["StackStatus"] != "DELETE_COMPLETE"]

    def roles(self) -> set[str]:
        return {r["RoleName"] for r in self.h.call("iam", "list_roles")["Roles"]}

    def buckets(self) -> set[str]:
        return {b["Name"] for b in self.h.call("s3", "list_buckets")["Buckets"]}

    def export_queue_empty(self, fs_id: str) -> None:
        """What FSx publishes for a linked file system with nothing left to export."""
        self.h.call("cloudwatch", "put_metric_data", Namespace="AWS/FSx", MetricData=[{
            "MetricName": "AgeOfOldestQueuedMessage", "Value": 0.0, "Unit": "Seconds",
            "Dimensions": [{"Name": "FileSystemId", "Value": fs_id}],
            "Timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat()}])


@pytest.fixture
def account(helper) -> Account:
    return Account(helper)


@pytest.fixture
def cloud(tmp_path: Path, helper, account: Account) -> Cloud:
    c = Cloud(tmp_path)
    c.env["FAKE_CLOUD_MOTO"] = helper.sock
    c.moto_services = motocloud.MOTO_SERVICES
    c.world = account.world()
    c.save()
    return c


def test_up_then_down_against_moto(cloud: Cloud, account: Account) -> None:
    cloud.run("up")
    st = cloud.state()
    sg = st["security_group"]
    groups = account.groups()
    assert STACK_TAG in groups[sg]["Tags"] and groups[sg]["VpcId"] == account.vpc
    # Lustre's ports (988, 1018-1023) on the file system's group, from itself and from
    # both node groups, and on both node groups from it: 10 rules, each tagged
    own = [r for r in account.rules_of(sg) if not r["IsEgress"]]
    assert sorted((r["ReferencedGroupInfo"]["GroupId"], r["FromPort"], r["ToPort"]) for r in own) == sorted(
        (g, lo, hi) for g in (sg, account.node_sg, account.eks_sg) for lo, hi in ((988, 988), (1018, 1023)))
    peers = account.referencing(sg)
    assert sorted((r["GroupId"], r["FromPort"], r["ToPort"]) for r in peers) == sorted(
        (g, lo, hi) for g in (account.node_sg, account.eks_sg) for lo, hi in ((988, 988), (1018, 1023)))
    assert all(STACK_TAG in r["Tags"] for r in own + peers)
    # the role eksctl made, in the caller's partition (moto's ARN: arn:aws), with FSx's policy
    role = account.h.call("iam", "get_role", RoleName="ckpt-fsx-csi")["Role"]
    attached = account.h.call("iam", "list_attached_role_policies", RoleName="ckpt-fsx-csi")
    assert [p["PolicyArn"] for p in attached["AttachedPolicies"]] == [
        "arn:aws:iam::aws:policy/AmazonFSxFullAccess"]
    assert cloud.world["helm"]["kube-system/aws-fsx-csi-driver"]["set-string"][1].endswith(role["Arn"])
    providers = account.h.call("iam", "list_open_id_connect_providers")["OpenIDConnectProviderList"]
    assert len(providers) == 1 and providers[0]["Arn"].endswith(ISSUER.removeprefix("https://"))
    assert SA_STACK in account.stacks()

    cloud.run("up")  # a second up changes nothing in the account
    assert mutations(cloud.calls()) == ["kubectl apply -k"] * 2
    assert len(account.referencing(sg)) == 4 and len(account.groups()) == 5  # 4 + the VPC's default

    account.export_queue_empty(st["file_system"])
    p = cloud.run("down", "--yes")
    assert "the export queue is empty" in p.stderr
    left = account.groups()
    assert sg not in left and {account.node_sg, account.eks_sg, account.foreign_sg} <= set(left)
    assert account.referencing(sg) == []
    assert "ckpt-fsx-csi" not in account.roles() and SA_STACK not in account.stacks()
    assert account.buckets() == {"ckpt-bucket"}  # not the toolkit's: kept
    # the cluster's OIDC provider is shared with other add-ons: kept
    assert len(account.h.call("iam", "list_open_id_connect_providers")["OpenIDConnectProviderList"]) == 1


def test_down_without_a_datapoint_refuses_to_delete(cloud: Cloud, account: Account) -> None:
    cloud.run("up")
    fs_id = cloud.state()["file_system"]
    p = cloud.run("down", "--yes", check=False, WAIT_TIMEOUT_S="1")  # moto has no datapoint
    assert p.returncode != 0 and "cannot confirm" in p.stderr
    assert fs_id in cloud.world["file_systems"] and cloud.state()["security_group"] in account.groups()


def test_its_own_bucket_goes_only_when_asked(cloud: Cloud, account: Account) -> None:
    cloud.run("up", CREATE_BUCKET="true", S3_BUCKET="new-bucket")
    assert "new-bucket" in account.buckets()
    account.h.call("s3", "put_object", Bucket="new-bucket", Key="checkpoints/step-1/x", Body="x")
    account.export_queue_empty(cloud.state()["file_system"])
    p = cloud.run("down", "--yes", S3_BUCKET="new-bucket")
    assert "new-bucket" in account.buckets() and "kept (pass --delete-bucket" in p.stderr
    # asked: S3 removes no bucket that holds objects, so the toolkit empties it first
    cloud.run("down", "--yes", "--delete-bucket", S3_BUCKET="new-bucket")
    assert account.buckets() == {"ckpt-bucket"}


def test_an_eksctl_stack_of_someone_else_is_reused_and_kept(cloud: Cloud, account: Account) -> None:
    # the upstream install guide's stack, made earlier by eksctl: no shardwise tag
    body = ('{"Resources": {"Role1": {"Type": "AWS::IAM::Role", "Properties": {'
            '"RoleName": "AmazonEKS_FSx_CSI_Role", "AssumeRolePolicyDocument": {}}}},'
            '"Outputs": {"Role1": {"Value": {"Fn::GetAtt": ["Role1", "Arn"]}}}}')
    account.h.call("cloudformation", "create_stack", StackName=SA_STACK, TemplateBody=body,
                   Capabilities=["CAPABILITY_NAMED_IAM"])
    p = cloud.run("up")
    assert "eksctl create iamserviceaccount" not in mutations(cloud.calls())
    assert "reusing IAM role arn:aws:iam::123456789012:role/AmazonEKS_FSx_CSI_Role" in p.stderr
    account.export_queue_empty(cloud.state()["file_system"])
    cloud.run("down", "--yes")
    assert "eksctl delete iamserviceaccount" not in mutations(cloud.calls())
    assert SA_STACK in account.stacks() and "AmazonEKS_FSx_CSI_Role" in account.roles()


def test_down_after_a_lost_state_file_finds_its_rules_by_tag(cloud: Cloud, account: Account) -> None:
    cloud.run("up")
    sg = cloud.state()["security_group"]
    rules = {k: v for k, v in cloud.state().items() if k.startswith("rule:")}
    cloud.state_file.unlink()
    cloud.run("up")  # adopts the group by tag; EC2 refuses each rule as a duplicate,
    assert "aws ec2 create-security-group" not in mutations(cloud.calls())
    # and the toolkit finds each one by its tag
    assert {k: v for k, v in cloud.state().items() if k.startswith("rule:")} == rules
    assert len(account.referencing(sg)) == 4
    account.export_queue_empty(cloud.state()["file_system"])
    cloud.run("down", "--yes")
    assert sg not in account.groups() and account.referencing(sg) == []


def test_pod_identity_role_in_moto_iam(cloud: Cloud, account: Account) -> None:
    # CSI_IDENTITY=pod-identity: the role and its policy in moto's IAM (which
    # refuses to delete a role with a policy attached); the association in the stub
    cloud.world["clusters"]["train"]["addons"] = {"eks-pod-identity-agent": "ACTIVE"}
    cloud.save()
    cloud.run("up", CSI_IDENTITY="pod-identity")
    role = account.h.call("iam", "get_role", RoleName="ckpt-fsx-csi")["Role"]
    assert STACK_TAG in role["Tags"]
    assert role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {
        "Service": "pods.eks.amazonaws.com"}
    attached = account.h.call("iam", "list_attached_role_policies", RoleName="ckpt-fsx-csi")
    assert [p["PolicyArn"] for p in attached["AttachedPolicies"]] == [
        "arn:aws:iam::aws:policy/AmazonFSxFullAccess"]
    [assoc] = cloud.world["pod_identity"].values()
    assert assoc["roleArn"] == role["Arn"]
    assert SA_STACK not in account.stacks()  # no IRSA stack
    account.export_queue_empty(cloud.state()["file_system"])
    cloud.run("down", "--yes", CSI_IDENTITY="pod-identity")
    assert "ckpt-fsx-csi" not in account.roles() and cloud.world["pod_identity"] == {}
