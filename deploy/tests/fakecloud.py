#!/usr/bin/env python3
"""A stand-in for aws, eksctl, helm and kubectl, for testing deploy/aws/fsx offline.

Installed under each of those names on PATH (tests symlink it), it appends
every call to $FAKE_CLOUD/calls.jsonl and answers from a small simulated
account kept in $FAKE_CLOUD/world.json, so that what one call creates the
next one sees: a second `up` finds what the first made, `down` can be
checked against what is left. Only the calls the toolkit makes are modelled;
anything else fails loudly, so a new call shows up in the tests.

With $FAKE_CLOUD_MOTO set (test_moto.py), the `aws` calls of the services in
motocloud.MOTO_SERVICES go to moto's server through the real AWS CLI
instead, and eksctl makes its roles, stacks and OIDC provider there.
"""
from __future__ import annotations

import json
import os
import re
import sys

ROOT = os.environ["FAKE_CLOUD"]
MOTO = os.environ.get("FAKE_CLOUD_MOTO")  # the moto helper's socket, or None
if MOTO:  # only then: its imports cost every call ~9 ms, and `up` makes dozens
    import motocloud
WORLD = os.path.join(ROOT, "world.json")


def load() -> dict:
    with open(WORLD) as f:
        return json.load(f)


def save(w: dict) -> None:
    tmp = WORLD + ".tmp"
    with open(tmp, "w") as f:
        json.dump(w, f, indent=1)
    os.replace(tmp, WORLD)


def record(tool: str, argv: list[str]) -> None:
    with open(os.path.join(ROOT, "calls.jsonl"), "a") as f:
        f.write(json.dumps([tool] + argv) + "\n")


def out(obj) -> None:
    print(json.dumps(obj))


def fail(code: str, msg: str, rc: int = 254) -> None:
    print(f"An error occurred ({code}) when calling the operation: {msg}", file=sys.stderr)
    sys.exit(rc)


def next_id(w: dict, prefix: str) -> str:
    w["counter"] = w.get("counter", 0) + 1
    return f"{prefix}-{w['counter']:017x}"


def parse_opts(args: list[str]) -> dict:
    """--key v1 v2 --flag ... -> {"key": [v1, v2], "flag": []}."""
    opts: dict[str, list[str]] = {}
    key = None
    for a in args:
        if a.startswith("--"):
            key = a[2:]
            if "=" in key:
                key, v = key.split("=", 1)
                opts.setdefault(key, []).append(v)
                key = None
            else:
                opts.setdefault(key, [])
        elif key is not None:
            opts[key].append(a)
    return opts


def one(opts: dict, key: str) -> str:
    v = opts.get(key) or [""]
    return v[0]


def tags_of(text_list: list[str]) -> dict:
    """Key=k,Value=v words -> {k: v}."""
    tags = {}
    for t in text_list:
        parts = dict(p.split("=", 1) for p in t.split(","))
        tags[parts["Key"]] = parts["Value"]
    return tags


def spec_tags(spec: str) -> dict:
    """ResourceType=x,Tags=[{Key=a,Value=b},...] -> {a: b}."""
    inner = spec.split("Tags=[", 1)[1].rstrip("]")
    tags = {}
    for item in inner.split("},{"):
        item = item.strip("{}")
        parts = dict(p.split("=", 1) for p in item.split(","))
        tags[parts["Key"]] = parts["Value"]
    return tags


def tag_list(tags: dict) -> list:
    return [{"Key": k, "Value": v} for k, v in tags.items()]


# ------------------------------------------------------------------ aws

def aws(args: list[str]) -> None:
    w = load()
    glob = []
    while args and args[0] in ("--region", "--output"):
        glob += args[:2]
        args = args[2:]
    service, op, opts = args[0], args[1], parse_opts(args[2:])
    if w.get("fail", {}).get(service):
        code, msg = w["fail"][service]
        fail(code, msg)
    handler = {
        ("sts", "get-caller-identity"): sts_identity,
        ("eks", "describe-cluster"): eks_describe,
        ("ec2", "describe-instances"): ec2_instances,
        ("ec2", "describe-subnets"): ec2_subnets,
        ("ec2", "describe-security-groups"): ec2_describe_sgs,
        ("ec2", "create-security-group"): ec2_create_sg,
        ("ec2", "authorize-security-group-ingress"): ec2_authorize,
        ("ec2", "authorize-security-group-egress"): ec2_authorize,
        ("ec2", "revoke-security-group-ingress"): ec2_revoke,
        ("ec2", "revoke-security-group-egress"): ec2_revoke,
        ("ec2", "delete-security-group"): ec2_delete_sg,
        ("ec2", "describe-security-group-rules"): ec2_describe_rules,
        ("s3api", "head-bucket"): s3_head,
        ("s3api", "create-bucket"): s3_create,
        ("s3api", "put-bucket-tagging"): s3_tag,
        ("s3", "rb"): s3_rb,
        ("fsx", "create-file-system"): fsx_create,
        ("fsx", "describe-file-systems"): fsx_describe,
        ("fsx", "delete-file-system"): fsx_delete,
        ("fsx", "create-data-repository-association"): fsx_create_dra,
        ("fsx", "describe-data-repository-associations"): fsx_describe_dra,
        ("iam", "list-open-id-connect-providers"): iam_oidc,
        ("iam", "get-role"): iam_get_role,
        ("iam", "create-role"): iam_create_role,
        ("iam", "attach-role-policy"): iam_attach,
        ("iam", "list-attached-role-policies"): iam_list_attached,
        ("iam", "detach-role-policy"): iam_detach,
        ("iam", "delete-role"): iam_delete_role,
        ("eks", "describe-addon"): eks_addon,
        ("eks", "list-pod-identity-associations"): eks_list_assoc,
        ("eks", "describe-pod-identity-association"): eks_describe_assoc,
        ("eks", "create-pod-identity-association"): eks_create_assoc,
        ("eks", "delete-pod-identity-association"): eks_delete_assoc,
        ("cloudformation", "describe-stacks"): cfn_describe,
        ("cloudwatch", "get-metric-statistics"): cw_metric,
    }.get((service, op))
    if handler is None:
        fail("FakeCloudUnmodelled", f"aws {service} {op} is not modelled by fakecloud.py", 99)
    handler(w, opts, args)
    save(w)


def sts_identity(w, opts, args):
    out({"Account": w["account"], "Arn": f"arn:{w.get('partition', 'aws')}:iam::{w['account']}:user/test",
         "UserId": "AIDTEST"})


def eks_cluster(w, name: str) -> dict:
    if name not in w["clusters"]:
        fail("ResourceNotFoundException", f"No cluster found for name: {name}.")
    return w["clusters"][name]


def eks_describe(w, opts, args):
    c = eks_cluster(w, one(opts, "name"))
    cluster = {"name": one(opts, "name"), "resourcesVpcConfig": {"vpcId": c["vpc"]},
               "endpoint": c["endpoint"], "identity": {"oidc": {"issuer": c["issuer"]}}}
    if c.get("auto_mode"):  # EKS Auto Mode (the Pod Identity agent built in)
        cluster["computeConfig"] = {"enabled": True, "nodePools": ["general-purpose"]}
    out({"cluster": cluster})


def ec2_instances(w, opts, args):
    ids = opts.get("instance-ids", [])
    insts = [n["instance"] for n in w["nodes"] if n["instance"]["id"] in ids]
    out({"Reservations": [{"Instances": [{
        "InstanceId": i["id"], "SubnetId": i["subnet"], "Placement": {"AvailabilityZone": i["az"]},
        "SecurityGroups": [{"GroupId": g} for g in i["sgs"]]} for i in insts]}]})


def ec2_subnets(w, opts, args):
    sid = one(opts, "subnet-ids")
    if sid not in w["subnets"]:
        fail("InvalidSubnetID.NotFound", f"The subnet ID '{sid}' does not exist")
    out({"Subnets": [{"SubnetId": sid, "AvailabilityZone": w["subnets"][sid]}]})


def sg_view(gid, g):
    return {"GroupId": gid, "GroupName": g["name"], "VpcId": g["vpc"], "Tags": tag_list(g["tags"])}


def ec2_describe_sgs(w, opts, args):
    groups = w["security_groups"]
    if "group-ids" in opts:
        gid = one(opts, "group-ids")
        if gid not in groups:
            fail("InvalidGroup.NotFound", f"The security group '{gid}' does not exist")
        out({"SecurityGroups": [sg_view(gid, groups[gid])]})
        return
    found = []
    for gid, g in groups.items():
        ok = True
        for f in opts.get("filters", []):
            name, values = f.split(",", 1)
            name, value = name.split("=", 1)[1], values.split("=", 1)[1]
            if name == "vpc-id":
                ok &= g["vpc"] == value
            elif name.startswith("tag:"):
                ok &= g["tags"].get(name[4:]) == value
            elif name == "group-name":
                ok &= g["name"] == value
        if ok:
            found.append(sg_view(gid, g))
    out({"SecurityGroups": found})


def ec2_create_sg(w, opts, args):
    name, vpc = one(opts, "group-name"), one(opts, "vpc-id")
    if any(g["name"] == name and g["vpc"] == vpc for g in w["security_groups"].values()):
        fail("InvalidGroup.Duplicate", f"The security group '{name}' already exists for VPC '{vpc}'")
    gid = next_id(w, "sg")
    w["security_groups"][gid] = {"name": name, "vpc": vpc, "tags": spec_tags(one(opts, "tag-specifications"))}
    out({"GroupId": gid})


def ec2_authorize(w, opts, args):
    gid = one(opts, "group-id")
    if gid not in w["security_groups"]:
        fail("InvalidGroup.NotFound", f"The security group '{gid}' does not exist")
    perm = json.loads(one(opts, "ip-permissions"))[0]
    direction = args[1].rsplit("-", 1)[1]
    key = json.dumps([gid, direction, perm["IpProtocol"], perm.get("FromPort"), perm.get("ToPort"),
                      perm["UserIdGroupPairs"][0]["GroupId"]])
    if any(r["key"] == key for r in w["rules"].values()):
        fail("InvalidPermission.Duplicate", "the specified rule already exists")
    rid = next_id(w, "sgr")
    w["rules"][rid] = {"key": key, "group": gid, "tags": spec_tags(one(opts, "tag-specifications"))}
    out({"Return": True, "SecurityGroupRules": [{"SecurityGroupRuleId": rid, "GroupId": gid}]})


def ec2_describe_rules(w, opts, args):
    flt = {}
    for f in opts.get("filters", []):
        name, values = f.split(",", 1)
        flt[name.split("=", 1)[1]] = values.split("=", 1)[1]
    found = []
    for rid, r in w["rules"].items():
        gid, direction, proto, lo, hi, peer = json.loads(r["key"])
        if "group-id" in flt and gid != flt["group-id"]:
            continue
        if any(k.startswith("tag:") and r["tags"].get(k[4:]) != v for k, v in flt.items()):
            continue
        rule = {"SecurityGroupRuleId": rid, "GroupId": gid, "IsEgress": direction == "egress",
                "IpProtocol": proto, "ReferencedGroupInfo": {"GroupId": peer},
                "Tags": tag_list(r["tags"])}
        if proto != "-1":
            rule.update(FromPort=lo, ToPort=hi)
        else:
            rule.update(FromPort=-1, ToPort=-1)
        found.append(rule)
    out({"SecurityGroupRules": found})


def ec2_revoke(w, opts, args):
    rid = one(opts, "security-group-rule-ids")
    if rid not in w["rules"]:
        fail("InvalidSecurityGroupRuleId.NotFound", f"rule {rid} does not exist")
    del w["rules"][rid]
    out({"Return": True})


def ec2_delete_sg(w, opts, args):
    gid = one(opts, "group-id")
    if gid not in w["security_groups"]:
        fail("InvalidGroup.NotFound", f"The security group '{gid}' does not exist")
    users = [f for f, fs in w["file_systems"].items() if gid in fs["sgs"]]
    refs = [r for r in w["rules"].values() if gid in r["key"] and r["group"] != gid]
    if users or refs:
        fail("DependencyViolation", f"resource {gid} has a dependent object")
    del w["security_groups"][gid]
    w["rules"] = {k: r for k, r in w["rules"].items() if r["group"] != gid}


def s3_head(w, opts, args):
    if one(opts, "bucket") not in w["buckets"]:
        fail("404", "Not Found")


def s3_create(w, opts, args):
    w["buckets"][one(opts, "bucket")] = {"tags": {}}
    out({"Location": "/" + one(opts, "bucket")})


def s3_tag(w, opts, args):
    w["buckets"][one(opts, "bucket")]["tags"] = {"shardwise:stack": "tagged"}


def s3_rb(w, opts, args):
    name = args[2].removeprefix("s3://")
    if name not in w["buckets"]:
        fail("NoSuchBucket", "The specified bucket does not exist")
    del w["buckets"][name]


def fs_view(fid, fs):
    cfg = dict(fs["lustre"])
    cfg["MountName"] = fs["mount"]
    view = {"FileSystemId": fid, "FileSystemType": "LUSTRE", "Lifecycle": fs["script"][0],
            "SubnetIds": [fs.get("subnet", "subnet-0000000000000000f")], "VpcId": "vpc-0a1b2c3d4e5f60718",
            "StorageCapacity": fs["capacity"], "DNSName": f"{fid}.fsx.{fs['region']}.amazonaws.com",
            "LustreConfiguration": cfg, "Tags": tag_list(fs["tags"])}
    if fs["script"][0] == "FAILED":
        view["FailureDetails"] = {"Message": "fake failure: subnet has no free addresses"}
    return view


def fsx_create(w, opts, args):
    token = one(opts, "client-request-token")
    params = {k: opts.get(k) for k in ("storage-capacity", "lustre-configuration", "subnet-ids")}
    seen = w.setdefault("tokens", {}).get(token)
    if seen is not None:
        # FSx: a token names one creation. A retry with the same request
        # gets that file system back; anything else is refused, also once
        # that file system is gone.
        if seen["params"] == params and seen["fs"] in w["file_systems"]:
            out({"FileSystem": fs_view(seen["fs"], w["file_systems"][seen["fs"]])})
            return
        fail("IncompatibleParameterError", "The client request token was already used with "
             "different parameters or for a file system that no longer exists")
    fid = next_id(w, "fs")
    w["tokens"][token] = {"fs": fid, "params": params}
    lustre = json.loads(one(opts, "lustre-configuration"))
    lustre.setdefault("PerUnitStorageThroughput", None)
    w["file_systems"][fid] = {
        "capacity": int(one(opts, "storage-capacity")), "lustre": lustre, "token": token,
        "version": one(opts, "file-system-type-version"), "sgs": opts["security-group-ids"],
        "subnet": one(opts, "subnet-ids"), "tags": tags_of(opts.get("tags", [])),
        "mount": "mnt" + fid[-5:], "region": "us-east-1",
        "script": list(w.get("lifecycle_script", ["CREATING", "AVAILABLE"]))}
    out({"FileSystem": fs_view(fid, w["file_systems"][fid])})


def advance(w, fid):
    fs = w["file_systems"][fid]
    if len(fs["script"]) > 1:
        fs["script"].pop(0)
    if fs["script"][0] == "GONE":
        del w["file_systems"][fid]


def fsx_describe(w, opts, args):
    if "file-system-ids" in opts:
        fid = one(opts, "file-system-ids")
        if fid not in w["file_systems"]:
            fail("FileSystemNotFound", f"File system '{fid}' does not exist.")
        view = fs_view(fid, w["file_systems"][fid])
        advance(w, fid)
        out({"FileSystems": [view]})
        return
    out({"FileSystems": [fs_view(f, fs) for f, fs in w["file_systems"].items()]})


def fsx_delete(w, opts, args):
    fid = one(opts, "file-system-id")
    if fid not in w["file_systems"]:
        fail("FileSystemNotFound", f"File system '{fid}' does not exist.")
    fs = w["file_systems"][fid]
    conf = one(opts, "lustre-configuration")
    backup = conf == "SkipFinalBackup=false"
    if conf and not conf.startswith("SkipFinalBackup="):
        fail("ParamValidation", f"unknown --lustre-configuration {conf!r}", 252)
    if conf and fs["lustre"]["DeploymentType"].startswith("SCRATCH"):
        fail("BadRequest", "Backups are not supported for scratch file systems")
    if backup and any(d["fs"] == fid for d in w["dras"].values()):
        fail("BadRequest", "Backups are not supported on file systems linked to an S3 data "
             "repository")
    if backup:
        w.setdefault("final_backups", []).append(fid)
    w["dras"] = {a: d for a, d in w["dras"].items() if d["fs"] != fid}
    fs["script"] = ["DELETING", "DELETING", "GONE"]
    out({"FileSystemId": fid, "Lifecycle": "DELETING"})


def fsx_create_dra(w, opts, args):
    fid = one(opts, "file-system-id")
    fs = w["file_systems"].get(fid)
    if fs is None:
        fail("FileSystemNotFound", f"File system '{fid}' does not exist.")
    if fs["lustre"]["DeploymentType"] == "SCRATCH_1" or fs.get("version") == "2.10":
        fail("BadRequest", "Data repository associations are not supported on SCRATCH_1 or "
             "Lustre 2.10 file systems")
    if "ImportPath" in fs["lustre"] or "ExportPath" in fs["lustre"]:
        fail("BadRequest", "This file system has a legacy data repository (ImportPath); it "
             "cannot have data repository associations")
    aid = next_id(w, "dra")
    w["dras"][aid] = {"fs": one(opts, "file-system-id"), "path": one(opts, "file-system-path"),
                      "s3": json.loads(one(opts, "s3")), "repo": one(opts, "data-repository-path"),
                      "script": ["CREATING", "AVAILABLE"]}
    out({"Association": {"AssociationId": aid, "Lifecycle": "CREATING"}})


def fsx_describe_dra(w, opts, args):
    def view(aid, d):
        return {"AssociationId": aid, "FileSystemId": d["fs"], "FileSystemPath": d["path"],
                "Lifecycle": d["script"][0]}
    if "association-ids" in opts:
        aid = one(opts, "association-ids")
        d = w["dras"][aid]
        v = view(aid, d)
        if len(d["script"]) > 1:
            d["script"].pop(0)
        out({"Associations": [v]})
        return
    fid = one(opts, "filters").split("Values=", 1)[1]
    out({"Associations": [view(a, d) for a, d in w["dras"].items() if d["fs"] == fid]})


def cfn_describe(w, opts, args):
    name = one(opts, "stack-name")
    st = w.setdefault("cfn_stacks", {}).get(name)
    if st is None:
        fail("ValidationError", f"Stack with id {name} does not exist")
    out({"Stacks": [{"StackName": name, "StackStatus": "CREATE_COMPLETE",
                     "Tags": tag_list(st["tags"]),
                     "Outputs": [{"OutputKey": "Role1", "OutputValue": st["role_arn"]}]}]})


def cw_metric(w, opts, args):
    dims = one(opts, "dimensions")
    if (one(opts, "namespace") != "AWS/FSx" or one(opts, "metric-name") != "AgeOfOldestQueuedMessage"
            or not dims.startswith("Name=FileSystemId,Value=fs-")
            or opts.get("statistics") != ["Maximum"] or not one(opts, "period").isdigit()
            or not one(opts, "start-time").endswith("Z") or not one(opts, "end-time").endswith("Z")):
        fail("InvalidParameterCombination", f"unexpected get-metric-statistics call {args}", 252)
    fid = dims.split("Value=", 1)[1]
    script = w.get("export_queue", {}).get(fid, w.get("export_queue_default"))
    if not script:
        out({"Label": "AgeOfOldestQueuedMessage", "Datapoints": []})
        return
    value = script.pop(0) if len(script) > 1 else script[0]
    out({"Label": "AgeOfOldestQueuedMessage", "Datapoints": [
        {"Timestamp": one(opts, "end-time"), "Maximum": float(value), "Unit": "Seconds"}]})


def iam_oidc(w, opts, args):
    out({"OpenIDConnectProviderList": [{"Arn": a} for a in w["oidc"]]})


def iam_role(w, name: str) -> dict:
    """A role's tags and attached policies (roles eksctl made have neither here)."""
    if name not in w["roles"]:
        fail("NoSuchEntity", f"The role with name {name} cannot be found.")
    return w.setdefault("role_meta", {}).setdefault(name, {"tags": {}, "policies": []})


def iam_get_role(w, opts, args):
    name = one(opts, "role-name")
    meta = iam_role(w, name)
    role = {"RoleName": name, "Arn": w["roles"][name],
            # roles eksctl made trust the cluster's OIDC provider (IRSA)
            "AssumeRolePolicyDocument": meta.get("trust") or {
                "Version": "2012-10-17", "Statement": [{
                    "Effect": "Allow", "Action": "sts:AssumeRoleWithWebIdentity",
                    "Principal": {"Federated": f"arn:{w.get('partition', 'aws')}:iam::"
                                               f"{w['account']}:oidc-provider/oidc.eks."
                                               "us-east-1.amazonaws.com/id/ABC"}}]}}
    if meta["tags"]:
        role["Tags"] = tag_list(meta["tags"])
    out({"Role": role})


def iam_create_role(w, opts, args):
    name = one(opts, "role-name")
    if name in w["roles"]:
        fail("EntityAlreadyExists", f"Role with name {name} already exists.")
    try:
        trust = json.loads(one(opts, "assume-role-policy-document"))
        trust["Statement"][0]["Principal"]
    except (ValueError, KeyError, IndexError, TypeError):
        fail("MalformedPolicyDocument", "Syntax errors in policy.")
    arn = f"arn:{w.get('partition', 'aws')}:iam::{w['account']}:role/{name}"
    w["roles"][name] = arn
    w.setdefault("role_meta", {})[name] = {"tags": tags_of(opts.get("tags", [])),
                                           "policies": [], "trust": trust}
    out({"Role": {"RoleName": name, "Arn": arn}})


def iam_attach(w, opts, args):
    meta = iam_role(w, one(opts, "role-name"))
    policy = one(opts, "policy-arn")
    if policy != f"arn:{w.get('partition', 'aws')}:iam::aws:policy/AmazonFSxFullAccess":
        fail("NoSuchEntity", f"Policy {policy} does not exist or is not attachable.")
    if policy not in meta["policies"]:
        meta["policies"].append(policy)


def iam_list_attached(w, opts, args):
    meta = iam_role(w, one(opts, "role-name"))
    out({"AttachedPolicies": [{"PolicyName": p.rsplit("/", 1)[1], "PolicyArn": p}
                              for p in meta["policies"]]})


def iam_detach(w, opts, args):
    meta = iam_role(w, one(opts, "role-name"))
    policy = one(opts, "policy-arn")
    if policy not in meta["policies"]:
        fail("NoSuchEntity", f"Policy {policy} was not found.")
    meta["policies"].remove(policy)


def iam_delete_role(w, opts, args):
    name = one(opts, "role-name")
    if iam_role(w, name)["policies"]:
        fail("DeleteConflict", "Cannot delete entity, must detach all policies first.")
    del w["roles"][name]
    w["role_meta"].pop(name, None)


def eks_addon(w, opts, args):
    cluster, name = one(opts, "cluster-name"), one(opts, "addon-name")
    status = eks_cluster(w, cluster).get("addons", {}).get(name)
    if status is None:
        fail("ResourceNotFoundException", f"No addon: {name} found in cluster: {cluster}")
    out({"addon": {"addonName": name, "clusterName": cluster, "status": status}})


def eks_assoc(w, cluster: str, aid: str) -> dict:
    a = w.setdefault("pod_identity", {}).get(aid)
    if a is None or a["clusterName"] != cluster:
        fail("ResourceNotFoundException", f"Association {aid} not found in cluster {cluster}")
    return a


def eks_list_assoc(w, opts, args):
    cluster = one(opts, "cluster-name")
    found = [a for a in w.setdefault("pod_identity", {}).values()
             if a["clusterName"] == cluster
             and a["namespace"] == one(opts, "namespace")
             and a["serviceAccount"] == one(opts, "service-account")]
    out({"associations": [{k: a[k] for k in ("clusterName", "namespace", "serviceAccount",
                                             "associationArn", "associationId")}
                          for a in found]})


def eks_describe_assoc(w, opts, args):
    out({"association": eks_assoc(w, one(opts, "cluster-name"), one(opts, "association-id"))})


def eks_create_assoc(w, opts, args):
    cluster, ns, sa = one(opts, "cluster-name"), one(opts, "namespace"), one(opts, "service-account")
    eks_cluster(w, cluster)
    if any(a["clusterName"] == cluster and a["namespace"] == ns and a["serviceAccount"] == sa
           for a in w.setdefault("pod_identity", {}).values()):
        fail("ResourceInUseException", "Association already exists")
    role = one(opts, "role-arn")
    if not re.fullmatch(r"arn:aws(-[a-z]+)*:iam::\d{12}:role/[\w+=,.@/-]+", role):
        fail("InvalidParameterException", f"Role ARN {role} is not a role ARN")
    w["counter"] = w.get("counter", 0) + 1
    aid = f"a-{w['counter']:017d}"
    tags = dict(t.split("=", 1) for word in opts.get("tags", []) for t in word.split(","))
    a = {"clusterName": cluster, "namespace": ns, "serviceAccount": sa, "roleArn": role,
         "associationId": aid, "tags": tags,
         "associationArn": f"arn:{w.get('partition', 'aws')}:eks:us-east-1:{w['account']}:"
                           f"podidentityassociation/{cluster}/{aid}"}
    w["pod_identity"][aid] = a
    # EKS applies an association to pods created after it has propagated
    # (seconds): the next pod_identity_lag pods of its service account are
    # created without credentials.
    w.setdefault("pod_identity_unseen", {})[aid] = w.get("pod_identity_lag", 0)
    out({"association": a})


def eks_delete_assoc(w, opts, args):
    a = eks_assoc(w, one(opts, "cluster-name"), one(opts, "association-id"))
    del w["pod_identity"][a["associationId"]]
    out({"association": a})


# ------------------------------------------------------------------ eksctl, helm, kubectl

def eksctl(args: list[str]) -> None:
    w = load()
    opts = parse_opts(args)
    if args[:2] == ["utils", "associate-iam-oidc-provider"]:
        issuer = w["clusters"][one(opts, "cluster")]["issuer"].removeprefix("https://")
        w["oidc"].append(f"arn:aws:iam::{w['account']}:oidc-provider/{issuer}")
    elif args[:2] == ["create", "iamserviceaccount"]:
        stack = sa_stack(w, opts)
        if stack in w.setdefault("cfn_stacks", {}):
            # eksctl's behaviour (issues 1333, 5856): an existing one is
            # skipped, and the command still succeeds.
            print(f"1 existing iamserviceaccount(s) ({one(opts, 'namespace')}/"
                  f"{one(opts, 'name')}) will be excluded", file=sys.stderr)
            save(w)
            return
        role = one(opts, "role-name")
        policy = one(opts, "attach-policy-arn")
        part = w.get("partition", "aws")
        if policy != f"arn:{part}:iam::aws:policy/AmazonFSxFullAccess":
            fail("ValidationError", f"policy {policy} does not exist in partition {part}", 1)
        arn = f"arn:{part}:iam::{w['account']}:role/{role}"
        w["roles"][role] = arn
        tags = dict(t.split("=", 1) for t in ",".join(opts.get("tags", [])).split(",") if t)
        w["cfn_stacks"][stack] = {"tags": tags, "role_arn": arn, "role": role}
    elif args[:2] == ["delete", "iamserviceaccount"]:
        stack = sa_stack(w, opts)
        st = w.setdefault("cfn_stacks", {}).pop(stack, None)
        if st is None:
            fail("NotFound", f"no iamserviceaccount stack {stack}", 1)
        w["roles"].pop(st["role"], None)
    else:
        fail("FakeCloudUnmodelled", f"eksctl {' '.join(args[:2])}", 99)
    save(w)


def eksctl_moto(args: list[str]) -> None:
    """eksctl against moto's IAM and CloudFormation: what the real one makes,
    made there, so that the toolkit's `aws` calls find it."""
    w = load()
    opts = parse_opts(args)

    def moto(service, method, **kw):
        try:
            return motocloud.call(MOTO, service, method, **kw)
        except motocloud.MotoError as e:
            print(f"Error: {e}", file=sys.stderr)
            sys.exit(1)

    def stack_exists(name: str) -> bool:
        try:
            motocloud.call(MOTO, "cloudformation", "describe_stacks", StackName=name)
            return True
        except motocloud.MotoError:
            return False

    if args[:2] == ["utils", "associate-iam-oidc-provider"]:
        issuer = w["clusters"][one(opts, "cluster")]["issuer"]
        have = moto("iam", "list_open_id_connect_providers")["OpenIDConnectProviderList"]
        if not any(p["Arn"].endswith(issuer.removeprefix("https://")) for p in have):
            moto("iam", "create_open_id_connect_provider", Url=issuer,
                 ClientIDList=["sts.amazonaws.com"],
                 ThumbprintList=["9e99a48a9960b14926bb7f3b02e22da2b0ab7280"])
    elif args[:2] == ["create", "iamserviceaccount"]:
        stack = sa_stack(w, opts)
        if stack_exists(stack):  # skipped, and still a success (eksctl issues 1333, 5856)
            print(f"1 existing iamserviceaccount(s) ({one(opts, 'namespace')}/"
                  f"{one(opts, 'name')}) will be excluded", file=sys.stderr)
            return
        policy = one(opts, "attach-policy-arn")
        moto("iam", "get_policy", PolicyArn=policy)  # eksctl fails on a policy that does not exist
        tags = dict(t.split("=", 1) for t in ",".join(opts.get("tags", [])).split(",") if t)
        tags["alpha.eksctl.io/cluster-name"] = one(opts, "cluster")
        moto("cloudformation", "create_stack", StackName=stack, TemplateBody=json.dumps(
            sa_template(one(opts, "role-name"), policy)), Capabilities=["CAPABILITY_NAMED_IAM"],
            Tags=tag_list(tags))
        # moto's CloudFormation creates the role without its ManagedPolicyArns
        moto("iam", "attach_role_policy", RoleName=one(opts, "role-name"), PolicyArn=policy)
    elif args[:2] == ["delete", "iamserviceaccount"]:
        stack = sa_stack(w, opts)
        if not stack_exists(stack):
            fail("NotFound", f"no iamserviceaccount stack {stack}", 1)
        # what CloudFormation does for the role's ManagedPolicyArns, which moto leaves out
        outputs = moto("cloudformation", "describe_stacks", StackName=stack)["Stacks"][0].get("Outputs", [])
        for o in outputs:
            role = o["OutputValue"].rsplit("/", 1)[1]
            for pol in moto("iam", "list_attached_role_policies", RoleName=role)["AttachedPolicies"]:
                moto("iam", "detach_role_policy", RoleName=role, PolicyArn=pol["PolicyArn"])
        moto("cloudformation", "delete_stack", StackName=stack)
    else:
        fail("FakeCloudUnmodelled", f"eksctl {' '.join(args[:2])}", 99)


def sa_template(role: str, policy: str) -> dict:
    """The role part of the stack eksctl makes for a service account."""
    return {"AWSTemplateFormatVersion": "2010-09-09", "Resources": {"Role1": {
        "Type": "AWS::IAM::Role", "Properties": {
            "RoleName": role, "ManagedPolicyArns": [policy],
            "AssumeRolePolicyDocument": {"Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Action": ["sts:AssumeRoleWithWebIdentity"],
                "Principal": {"Federated": "oidc"}}]}}}},
        "Outputs": {"Role1": {"Value": {"Fn::GetAtt": ["Role1", "Arn"]}}}}


def sa_stack(w, opts) -> str:
    return (f"eksctl-{one(opts, 'cluster')}-addon-iamserviceaccount-{one(opts, 'namespace')}-"
            f"{one(opts, 'name')}")


HELM_VALUE_FLAGS = {"--namespace", "--version", "--set", "--set-string", "--timeout", "-o"}
CSI_CONTROLLER = "fsx-csi-controller"  # the chart's Deployment, and its pods' label app=
POD_IDENTITY_ENV = [  # what EKS sets in the containers of a pod whose service account has one
    {"name": "AWS_CONTAINER_CREDENTIALS_FULL_URI", "value": "http://169.254.170.23/v1/credentials"},
    {"name": "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
     "value": "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount/eks-pod-identity-token"}]


def start_pods(w, ns: str, deployment: str) -> None:
    """(Re)creates the 2 replicas of a Deployment: each pod gets the Pod
    Identity variables if its service account's association has reached it."""
    k = w["k8s"]
    sa = k["deployments"][f"{ns}/{deployment}"]["serviceAccount"]
    k["pods"] = [p for p in k["pods"] if not (p["namespace"] == ns and p.get("deployment") == deployment)]
    for _ in range(2):
        env = []
        for aid, a in w.get("pod_identity", {}).items():
            if (a["namespace"], a["serviceAccount"]) == (ns, sa):
                unseen = w.setdefault("pod_identity_unseen", {})
                if unseen.get(aid, 0) > 0:
                    unseen[aid] -= 1
                else:
                    env = POD_IDENTITY_ENV
        w["counter"] = w.get("counter", 0) + 1
        k["pods"].append({"namespace": ns, "name": f"{deployment}-{w['counter']:05x}",
                          "deployment": deployment, "labels": {"app": deployment},
                          "serviceAccount": sa, "env": env})


def helm(args: list[str]) -> None:
    w = load()
    opts = parse_opts([a for a in args if a not in ("--install", "--wait", "--force-update")])
    ns = one(opts, "namespace")
    pos = [a for i, a in enumerate(args)
           if not a.startswith("-") and (i == 0 or args[i - 1] not in HELM_VALUE_FLAGS)]
    if pos[0] == "status":
        if f"{ns}/{pos[1]}" not in w["helm"]:
            print("Error: release: not found", file=sys.stderr)
            sys.exit(1)
    elif pos[:2] == ["get", "values"]:
        rel = w["helm"].get(f"{ns}/{pos[2]}")
        if rel is None:
            print("Error: release: not found", file=sys.stderr)
            sys.exit(1)
        values = {}
        for kv in rel["set"] + rel["set-string"]:
            k, v = kv.split("=", 1)
            if "." not in k.replace("\\.", ""):
                values[k] = v
        out(values)
    elif pos[0] == "repo":
        pass
    elif pos[0] == "upgrade" and "--install" in args:
        drivers = w["k8s"].setdefault("csidrivers", [])
        if "fsx.csi.aws.com" in drivers:
            print('Error: INSTALLATION FAILED: CSIDriver "fsx.csi.aws.com" exists and cannot be '
                  'imported into the current release', file=sys.stderr)
            sys.exit(1)
        w["helm"][f"{ns}/{pos[1]}"] = {"chart": pos[2], "set": opts.get("set", []),
                                       "set-string": opts.get("set-string", [])}
        drivers.append("fsx.csi.aws.com")
        sa = next((kv.split("=", 1)[1] for kv in opts.get("set", [])
                   if kv.startswith("controller.serviceAccount.name=")), "fsx-csi-controller-sa")
        w["k8s"].setdefault("deployments", {})[f"{ns}/{CSI_CONTROLLER}"] = {"serviceAccount": sa}
        start_pods(w, ns, CSI_CONTROLLER)
    elif pos[0] == "uninstall":
        w["helm"].pop(f"{ns}/{pos[1]}")
        w["k8s"]["csidrivers"].remove("fsx.csi.aws.com")
        w["k8s"].get("deployments", {}).pop(f"{ns}/{CSI_CONTROLLER}", None)
        w["k8s"]["pods"] = [p for p in w["k8s"]["pods"] if p.get("deployment") != CSI_CONTROLLER]
    else:
        fail("FakeCloudUnmodelled", f"helm {args[0]}", 99)
    save(w)


def kubectl(args: list[str]) -> None:
    w = load()
    k = w["k8s"]
    opts = parse_opts(args)
    ns = (opts.get("n") or [""])[0]
    if "-n" in args:
        ns = args[args.index("-n") + 1]
    verb = args[0]
    if verb == "get" and args[1] == "nodes":
        sel = args[args.index("-l") + 1] if "-l" in args else None
        nodes = [n for n in w["nodes"] if sel is None or
                 all(n["labels"].get(p.split("=")[0]) == p.split("=")[1] for p in sel.split(","))]
        out({"items": [{"metadata": {"name": n["name"]}, "spec": {
            "providerID": f"aws:///{n['instance']['az']}/{n['instance']['id']}"}} for n in nodes]})
    elif verb == "get" and args[1] == "namespace":
        if args[2] not in k["namespaces"]:
            print(f'Error from server (NotFound): namespaces "{args[2]}" not found', file=sys.stderr)
            sys.exit(1)
        out({"metadata": {"name": args[2],
                          "labels": k.setdefault("ns_labels", {}).get(args[2], {})}})
    elif verb == "create" and args[1] == "namespace":
        k["namespaces"].append(args[2])
    elif verb == "label" and args[1] == "namespace":
        key, value = args[3].split("=", 1)
        k.setdefault("ns_labels", {}).setdefault(args[2], {})[key] = value
    elif verb == "apply" and args[1] == "-k":
        with open(os.path.join(args[2], "kustomization.yaml")) as f:
            k["applied"].append({"dir": args[2], "kustomization": f.read()})
        if "mount-test" in args[2]:
            text = k["applied"][-1]["kustomization"]
            m = re.search(r'"path": "/spec/completions", "value": (\d+)', text)
            k["jobs"][f"{ns or 'training'}/shardwise-mount-test"] = w.get(
                "job_status", {"succeeded": int(m.group(1)) if m else 1})
        elif "lustre-tuning" in args[2]:
            k["objects"] += ["daemonset/shardwise-lustre-tuning"]
        else:
            k["objects"] += ["pv/fsx-pv", "pvc/fsx-pvc"]
    elif verb == "get" and args[1] == "pods":
        pods = [p for p in k["pods"] if p["namespace"] == ns]
        if "-l" in args:
            sel = dict(kv.split("=", 1) for kv in args[args.index("-l") + 1].split(","))
            pods = [p for p in pods if all(p.get("labels", {}).get(a) == b for a, b in sel.items())]
        if "-o" in args and args[args.index("-o") + 1] == "name":
            print("\n".join("pod/" + p["name"] for p in pods))
        else:
            out({"items": [{"metadata": {"name": p["name"], "labels": p.get("labels", {})}, "spec": {
                "serviceAccountName": p.get("serviceAccount", "default"),
                "containers": [{"name": "main", "env": p.get("env", [])}],
                "volumes": [{"name": "fsx", "persistentVolumeClaim": {"claimName": p["claim"]}}]
                if p.get("claim") else []}} for p in pods]})
    elif verb == "rollout" and args[1] in ("restart", "status"):
        kind, _, name = args[2].partition("/")
        if kind not in ("deployment", "deployments", "deploy"):
            fail("FakeCloudUnmodelled", f"kubectl rollout {args[1]} {args[2]}", 99)
        if f"{ns}/{name}" not in k.setdefault("deployments", {}):
            print(f'Error from server (NotFound): deployments.apps "{name}" not found',
                  file=sys.stderr)
            sys.exit(1)
        if args[1] == "restart":
            start_pods(w, ns, name)
            print(f"deployment.apps/{name} restarted")
        else:
            print(f'deployment "{name}" successfully rolled out')
    elif verb == "config" and args[1] == "view":
        out({"clusters": [{"name": k["context"], "cluster": {"server": k["server"]}}]})
    elif verb == "config" and args[1] == "current-context":
        print(k["context"])
    elif verb == "get" and args[1] == "serviceaccount":
        sa = k.setdefault("serviceaccounts", {}).get(f"{ns}/{args[2]}")
        if sa is None:
            print(f'Error from server (NotFound): serviceaccounts "{args[2]}" not found',
                  file=sys.stderr)
            sys.exit(1)
        out({"metadata": {"name": args[2], "namespace": ns, "annotations": sa}})
    elif verb == "get" and args[1] == "daemonset":
        if f"{ns}/{args[2]}" not in k.setdefault("daemonsets", []):
            print(f'Error from server (NotFound): daemonsets.apps "{args[2]}" not found',
                  file=sys.stderr)
            sys.exit(1)
        out({"metadata": {"name": args[2], "namespace": ns}})
    elif verb == "get" and args[1] == "csidriver":
        if args[2] not in k.setdefault("csidrivers", []):
            print(f'Error from server (NotFound): csidrivers.storage.k8s.io "{args[2]}" not found',
                  file=sys.stderr)
            sys.exit(1)
        out({"metadata": {"name": args[2]}})
    elif verb == "get" and args[1] == "pv":
        pvs = list(k.setdefault("pvs", []))
        if "pv/fsx-pv" in k["objects"]:
            pvs.append({"name": "fsx-pv", "driver": "fsx.csi.aws.com"})
        out({"items": [{"metadata": {"name": p["name"]}, "spec": {"csi": {"driver": p["driver"]}}}
                       for p in pvs]})
    elif verb == "get" and args[1] == "job":
        out({"status": k["jobs"].get(f"{ns}/{args[2]}", {})})
    elif verb == "logs":
        print(w.get("job_logs", ""))
    elif verb == "api-resources":
        # what a cluster lists with --verbs=list --namespaced -o name
        print("\n".join(["configmaps", "endpoints", "events", "persistentvolumeclaims", "pods",
                         "secrets", "serviceaccounts", "services", "jobs.batch",
                         "deployments.apps", "events.events.k8s.io",
                         "leases.coordination.k8s.io"]))
    elif verb == "get" and "," in args[1]:  # several kinds at once: kubectl get a,b,c -n NS
        if "events" in args[1].split(","):
            fail("FakeCloudUnmodelled", "events are not listed by the toolkit", 99)
        items = [{"kind": "ServiceAccount", "metadata": {"name": "default"}},
                 {"kind": "ConfigMap", "metadata": {"name": "kube-root-ca.crt"}}]
        items += [{"kind": o["kind"], "metadata": {
            "name": o["name"], "labels": o.get("labels", {}),
            **({"ownerReferences": o["owners"]} if o.get("owners") else {})}}
            for o in k.setdefault("ns_objects", []) if o["namespace"] == ns]
        items += [{"kind": "Pod", "metadata": {"name": p["name"], "labels": p.get("labels", {}),
                   **({"ownerReferences": [{"kind": "Job", "name": p["job"]}]}
                      if p.get("job") else {})}}
                  for p in k["pods"] if p["namespace"] == ns]
        out({"items": items})
    elif verb == "delete":
        k["deleted"].append(" ".join(a for a in args[1:] if not a.startswith("--")))
        if args[1] == "namespace":
            k["namespaces"].remove(args[2])
        if args[1] == "job" and "-l" in args:
            # The Jobs here are the toolkit's (it labels what it applies).
            # Their pods go with them only in a foreground cascade; in the
            # default (background) one they are still there when kubectl returns.
            gone = [key.split("/", 1)[1] for key in k["jobs"] if key.startswith(ns + "/")]
            for name in gone:
                del k["jobs"][f"{ns}/{name}"]
            if "--cascade=foreground" in args:
                k["pods"] = [p for p in k["pods"]
                             if not (p["namespace"] == ns and p.get("job") in gone)]
    else:
        fail("FakeCloudUnmodelled", f"kubectl {' '.join(args[:2])}", 99)
    save(w)


def main() -> None:
    # Called as aws/eksctl/helm/kubectl (a symlink), or with the tool first
    # (`fakecloud.py TOOL ARGS`, or the launcher of test_fsx.py).
    tool, args = os.path.basename(sys.argv[0]), sys.argv[1:]
    if tool not in TOOLS:
        tool, args = args[0], args[1:]
    record(tool, args)
    if MOTO and tool == "aws" and motocloud.service_of(args) in motocloud.MOTO_SERVICES:
        sys.exit(motocloud.forward(MOTO, args))
    if MOTO and tool == "eksctl":
        eksctl_moto(args)
        return
    TOOLS[tool](args)


TOOLS = {"aws": aws, "eksctl": eksctl, "helm": helm, "kubectl": kubectl}


if __name__ == "__main__":
    main()
