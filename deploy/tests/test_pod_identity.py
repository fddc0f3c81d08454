"""CSI_IDENTITY=pod-identity: the CSI controller's permissions through EKS Pod
Identity instead of IRSA (deploy/aws/lib/identity.sh), against fakecloud.py.

No OIDC provider and no eksctl: an IAM role that trusts
pods.eks.amazonaws.com, FSx's managed policy on it, and an association of it
with kube-system/fsx-csi-controller-sa, each tagged with the stack; `down`
removes exactly those. test_moto.py runs the same against moto's IAM.
"""
from __future__ import annotations

import json

from test_fsx import Cloud, cloud, mutations  # noqa: F401  (cloud: the fixture)

POD_IDENTITY = {"CSI_IDENTITY": "pod-identity"}
SA = ("kube-system", "fsx-csi-controller-sa")


def with_agent(c: Cloud, status: str = "ACTIVE") -> Cloud:
    c.world["clusters"]["train"]["addons"] = {"eks-pod-identity-agent": status}
    c.env.update(POD_IDENTITY)
    c.save()
    return c


def associations(c: Cloud) -> list[dict]:
    return list(c.world.get("pod_identity", {}).values())


def test_up_makes_a_tagged_role_and_association_and_down_removes_them(cloud: Cloud) -> None:
    with_agent(cloud)
    cloud.run("up")
    made = mutations(cloud.calls())
    assert not [m for m in made if m.startswith("eksctl")]  # no OIDC provider, no IRSA stack
    assert made.index("aws iam create-role") < made.index("aws iam attach-role-policy") < made.index(
        "aws eks create-pod-identity-association")
    w, st = cloud.world, cloud.state()
    assert w["oidc"] == [] and w["cfn_stacks"] == {}
    role = w["role_meta"]["ckpt-fsx-csi"]
    assert role["tags"] == {"shardwise:stack": "ckpt"}
    assert role["policies"] == ["arn:aws:iam::aws:policy/AmazonFSxFullAccess"]
    assert role["trust"]["Statement"] == [{
        "Effect": "Allow", "Principal": {"Service": "pods.eks.amazonaws.com"},
        "Action": ["sts:AssumeRole", "sts:TagSession"]}]
    [assoc] = associations(cloud)
    assert (assoc["namespace"], assoc["serviceAccount"]) == SA
    assert assoc["roleArn"] == w["roles"]["ckpt-fsx-csi"] and assoc["tags"] == {"shardwise:stack": "ckpt"}
    assert st["csi_pod_role"] == "ckpt-fsx-csi" and st["csi_pod_identity"] == assoc["associationId"]
    # the chart's service account carries no IRSA annotation
    assert w["helm"]["kube-system/aws-fsx-csi-driver"]["set-string"] == ["shardwiseStack=ckpt"]

    cloud.run("up")  # a second up makes nothing new
    assert mutations(cloud.calls()) == ["kubectl apply -k"] * 2

    cloud.run("down", "--yes")
    assert associations(cloud) == [] and "ckpt-fsx-csi" not in cloud.world["roles"]
    assert not cloud.state_file.exists()


def test_without_the_agent_up_changes_nothing_and_says_what_to_install(cloud: Cloud) -> None:
    for status in (None, "CREATING"):
        with_agent(cloud, status) if status else cloud.env.update(POD_IDENTITY)
        p = cloud.run("up", check=False)
        assert p.returncode != 0
        assert ("needs the Pod Identity agent on cluster train (the eks-pod-identity-agent add-on "
                f"is {'not installed' if status is None else status}") in p.stderr
        assert "aws eks create-addon --cluster-name train --addon-name eks-pod-identity-agent" in p.stderr
        assert mutations(cloud.calls()) == []
    p = cloud.run("up", check=False, CSI_IDENTITY="oidc")
    assert p.returncode != 0 and "CSI_IDENTITY must be irsa or pod-identity, not 'oidc'" in p.stderr


def test_auto_mode_or_an_agent_daemonset_is_an_agent(cloud: Cloud) -> None:
    cloud.env.update(POD_IDENTITY)
    cloud.world["clusters"]["train"]["auto_mode"] = True
    cloud.save()
    assert "EKS Auto Mode: the Pod Identity agent is built in" in cloud.run("up").stderr
    assert len(associations(cloud)) == 1
    cloud.run("down", "--yes")
    cloud.world["clusters"]["train"]["auto_mode"] = False
    cloud.world["k8s"]["daemonsets"] = ["kube-system/eks-pod-identity-agent"]
    cloud.save()
    assert "DaemonSet kube-system/eks-pod-identity-agent" in cloud.run("up").stderr
    assert len(associations(cloud)) == 1


def test_what_was_recorded_but_is_gone_is_made_again(cloud: Cloud) -> None:
    with_agent(cloud)
    cloud.run("up")
    cloud.world["pod_identity"] = {}  # someone deleted the association
    cloud.save()
    p = cloud.run("up")
    assert "is recorded but gone: making it again" in p.stderr
    assert len(associations(cloud)) == 1
    assert cloud.state()["csi_pod_identity"] == associations(cloud)[0]["associationId"]
    w = cloud.world  # and the role, with its policy
    w["role_meta"]["ckpt-fsx-csi"]["policies"] = []
    del w["roles"]["ckpt-fsx-csi"]
    cloud.save()
    p = cloud.run("up")
    assert "IAM role ckpt-fsx-csi is recorded but gone: making it again" in p.stderr
    assert mutations(cloud.calls())[:2] == ["aws iam create-role", "aws iam attach-role-policy"]


def test_down_keeps_what_lost_its_tag_and_what_a_kept_driver_uses(cloud: Cloud) -> None:
    with_agent(cloud)
    cloud.run("up")
    [assoc] = associations(cloud)
    assoc["tags"] = {}
    cloud.world["pod_identity"][assoc["associationId"]] = assoc
    cloud.world["role_meta"]["ckpt-fsx-csi"]["tags"] = {}
    cloud.save()
    p = cloud.run("down", "--yes")
    assert f"Pod Identity association {assoc['associationId']} is not tagged" in p.stderr
    assert "IAM role ckpt-fsx-csi is not tagged shardwise:stack=ckpt: kept" in p.stderr
    assert associations(cloud) == [assoc] and "ckpt-fsx-csi" in cloud.world["roles"]
    made = mutations(cloud.calls())
    assert "aws eks delete-pod-identity-association" not in made and "aws iam delete-role" not in made


def test_a_kept_driver_keeps_its_credentials(cloud: Cloud) -> None:
    with_agent(cloud)
    cloud.run("up")
    cloud.world["k8s"]["pvs"] = [{"name": "team-b-fsx", "driver": "fsx.csi.aws.com"}]
    cloud.save()
    p = cloud.run("down", "--yes")
    assert "kept: the kept FSx CSI driver uses them" in p.stderr
    assert len(associations(cloud)) == 1 and "ckpt-fsx-csi" in cloud.world["roles"]


def test_someone_elses_association_is_used_and_kept(cloud: Cloud) -> None:
    with_agent(cloud)
    other = {"clusterName": "train", "namespace": SA[0], "serviceAccount": SA[1],
             "roleArn": "arn:aws:iam::111122223333:role/AmazonEKS_FSx_CSI_Role",
             "associationId": "a-0000000000000000x", "tags": {},
             "associationArn": "arn:aws:eks:us-east-1:111122223333:podidentityassociation/train/"
                               "a-0000000000000000x"}
    cloud.world["pod_identity"] = {other["associationId"]: other}
    cloud.save()
    p = cloud.run("up")
    assert "reusing Pod Identity association a-0000000000000000x (role arn:aws:iam::111122223333:" \
           "role/AmazonEKS_FSx_CSI_Role)" in p.stderr
    made = mutations(cloud.calls())
    assert "aws iam create-role" not in made and "aws eks create-pod-identity-association" not in made
    assert "csi_pod_role" not in cloud.state() and "csi_pod_identity" not in cloud.state()
    cloud.run("down", "--yes")
    assert associations(cloud) == [other]


def test_after_a_lost_state_file_up_adopts_by_tag_and_down_removes_everything(cloud: Cloud) -> None:
    with_agent(cloud)
    cloud.run("up")
    before = cloud.state()
    cloud.state_file.unlink()
    p = cloud.run("up")
    assert "is ours (found by tag)" in p.stderr
    st = cloud.state()
    assert (st["csi_pod_role"], st["csi_pod_identity"]) == (before["csi_pod_role"],
                                                           before["csi_pod_identity"])
    # (the rules are tried again and found by tag: test_fsx.py) nothing made, nothing attached
    assert not [m for m in mutations(cloud.calls()) if m.startswith(("aws iam", "aws eks"))]
    cloud.run("down", "--yes")
    assert associations(cloud) == [] and "ckpt-fsx-csi" not in cloud.world["roles"]


def test_an_untagged_role_of_its_name_is_refused_and_kept(cloud: Cloud) -> None:
    with_agent(cloud)
    cloud.world["roles"]["ckpt-fsx-csi"] = "arn:aws:iam::111122223333:role/ckpt-fsx-csi"
    cloud.save()
    p = cloud.run("up", check=False)
    assert p.returncode != 0
    assert "IAM role ckpt-fsx-csi exists but is not tagged shardwise:stack=ckpt" in p.stderr
    assert "ckpt-fsx-csi" in cloud.world["roles"] and associations(cloud) == []
    assert json.loads(cloud.state_file.read_text())["created"].get("csi_pod_role") is None


def test_switching_identity_on_a_live_stack_is_refused(cloud: Cloud) -> None:
    cloud.run("up")  # IRSA
    p = cloud.run("up", check=False, **POD_IDENTITY)
    assert p.returncode != 0 and "was set up with the other CSI_IDENTITY" in p.stderr
    assert mutations(cloud.calls()) == []


def test_a_lost_state_file_does_not_switch_an_irsa_stack(cloud: Cloud) -> None:
    cloud.run("up")  # IRSA: eksctl's stack, tagged, holds a role of the same name
    cloud.state_file.unlink()
    with_agent(cloud)
    p = cloud.run("up", check=False)
    assert p.returncode != 0 and "has an IRSA role for the CSI controller" in p.stderr
    assert mutations(cloud.calls()) == []


def controller_pods(c: Cloud) -> list[dict]:
    return [p for p in c.world["k8s"]["pods"] if p.get("deployment") == "fsx-csi-controller"]


def has_credentials(pod: dict) -> bool:
    return any(e["name"] == "AWS_CONTAINER_CREDENTIALS_FULL_URI" for e in pod["env"])


def test_controller_pods_made_before_the_association_reached_them_are_restarted(
        cloud: Cloud) -> None:
    # EKS applies an association to pods created after it has propagated: the
    # chart's 2 pods, installed right after it, start without credentials.
    with_agent(cloud)
    cloud.world["pod_identity_lag"] = 2
    cloud.save()
    p = cloud.run("up")
    assert "started without Pod Identity credentials" in p.stderr
    assert "the FSx CSI controller's pods have their Pod Identity credentials" in p.stderr
    made = mutations(cloud.calls())
    assert made.count("kubectl rollout restart") == 1
    assert made.index("helm upgrade") < made.index("kubectl rollout restart")
    pods = controller_pods(cloud)
    assert len(pods) == 2 and all(has_credentials(q) for q in pods)
    cloud.run("up")  # a second up finds the credentials and restarts nothing
    assert "kubectl rollout restart" not in mutations(cloud.calls())


def test_controller_pods_that_never_get_credentials_stop_up_with_what_to_check(
        cloud: Cloud) -> None:
    with_agent(cloud)
    cloud.world["pod_identity_lag"] = 100
    cloud.save()
    p = cloud.run("up", check=False)
    assert p.returncode != 0
    assert "still have no Pod Identity credentials after 4 restarts" in p.stderr
    assert ("aws eks list-pod-identity-associations --cluster-name train --namespace kube-system"
            in p.stderr)
    assert mutations(cloud.calls()).count("kubectl rollout restart") == 4


def test_a_driver_running_before_the_association_is_restarted_once(cloud: Cloud) -> None:
    # An FSx CSI driver installed some other way (the EKS add-on), running
    # with the chart's service account before `up` makes the association.
    with_agent(cloud)
    k = cloud.world["k8s"]
    k["csidrivers"] = ["fsx.csi.aws.com"]
    k["deployments"] = {"kube-system/fsx-csi-controller": {"serviceAccount": SA[1]}}
    k["pods"] = [{"namespace": "kube-system", "name": f"fsx-csi-controller-old{i}",
                  "deployment": "fsx-csi-controller", "labels": {"app": "fsx-csi-controller"},
                  "serviceAccount": SA[1], "env": []} for i in range(2)]
    cloud.save()
    p = cloud.run("up")
    assert "an FSx CSI driver is installed already" in p.stderr
    assert "fsx-csi-controller-old0 fsx-csi-controller-old1 started without" in p.stderr
    assert mutations(cloud.calls()).count("kubectl rollout restart") == 1
    pods = controller_pods(cloud)
    assert all(has_credentials(q) and "old" not in q["name"] for q in pods)


def test_a_driver_running_as_another_service_account_is_named(cloud: Cloud) -> None:
    with_agent(cloud)
    k = cloud.world["k8s"]
    k["csidrivers"] = ["fsx.csi.aws.com"]
    k["deployments"] = {"kube-system/fsx-csi-controller": {"serviceAccount": "team-fsx-sa"}}
    k["pods"] = [{"namespace": "kube-system", "name": "fsx-csi-controller-a",
                  "deployment": "fsx-csi-controller", "labels": {"app": "fsx-csi-controller"},
                  "serviceAccount": "team-fsx-sa", "env": []}]
    cloud.save()
    p = cloud.run("up", check=False)
    assert p.returncode != 0
    assert ("the FSx CSI controller runs as service account team-fsx-sa, not "
            "kube-system/fsx-csi-controller-sa") in p.stderr
    assert "kubectl rollout restart" not in mutations(cloud.calls())
