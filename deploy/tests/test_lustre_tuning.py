"""deploy/k8s/lustre-tuning/tune.sh against a stand-in lctl (fakelctl.py).

What it sets depends on the node (AWS's FSx performance tips): every node gets
the osc/mdc RPC settings once a file system is mounted; nodes of more than
64 GiB the ldlm lock settings; nodes of more than 64 CPUs the ptlrpc and
ksocklnd module options, which take effect at the next module load.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
TUNE = HERE.parent / "k8s" / "lustre-tuning" / "tune.sh"
MOUNTED = {
    "osc.fsx-OST0000-osc-ffff9e1.max_rpcs_in_flight": "8",
    "osc.fsx-OST0001-osc-ffff9e1.max_rpcs_in_flight": "8",
    "osc.fsx-OST0000-osc-ffff9e1.max_dirty_mb": "2000",
    "osc.fsx-OST0001-osc-ffff9e1.max_dirty_mb": "2000",
    "mdc.fsx-MDT0000-mdc-ffff9e1.max_rpcs_in_flight": "8",
    "mdc.fsx-MDT0000-mdc-ffff9e1.max_mod_rpcs_in_flight": "7",
    "ldlm.namespaces.fsx-OST0000-osc-ffff9e1.lru_max_age": "3900000",
    "ldlm.namespaces.fsx-OST0000-osc-ffff9e1.lru_size": "0",
    "ldlm.namespaces.fsx-MDT0000-mdc-ffff9e1.lru_max_age": "3900000",
    "ldlm.namespaces.fsx-MDT0000-mdc-ffff9e1.lru_size": "0",
    "llite.fsx-ffff9e1.max_cached_mb": "65536",
}


class Node:
    def __init__(self, tmp: Path, cpus: int, mem_gib: int, params: dict) -> None:
        self.tmp = tmp
        (tmp / "cpuinfo").write_text("".join(f"processor\t: {i}\n\n" for i in range(cpus)))
        (tmp / "meminfo").write_text(f"MemTotal:       {mem_gib * 1048576 + 1234} kB\n")
        self.modprobe = tmp / "modprobe.d"
        self.modprobe.mkdir()
        for module, param, value in (("ptlrpc", "ptlrpcd_per_cpt_max", "0"),
                                     ("ksocklnd", "credits", "256")):
            d = tmp / "module" / module / "parameters"
            d.mkdir(parents=True)
            (d / param).write_text(value + "\n")
        self.lctl = tmp / "lctl.json"
        self.lctl.write_text(json.dumps(params))
        (tmp / "lctl").write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "{HERE / "fakelctl.py"}" "$@"\n')
        (tmp / "lctl").chmod(0o755)

    def run(self, **env: str) -> tuple[int, list[dict], str]:
        p = subprocess.run(["/bin/sh", str(TUNE)], capture_output=True, text=True, timeout=60, env={
            "PATH": os.environ["PATH"], "LCTL": str(self.tmp / "lctl"), "FAKE_LCTL": str(self.lctl),
            "CPUINFO": str(self.tmp / "cpuinfo"), "MEMINFO": str(self.tmp / "meminfo"),
            "MODPROBE_DIR": str(self.modprobe), "SYS_MODULE": str(self.tmp / "module"),
            "NODE_NAME": "gpu-a", "TUNE_ONCE": "1", **env})
        return p.returncode, [json.loads(line) for line in p.stdout.splitlines()], p.stderr

    def params(self) -> dict:
        return json.loads(self.lctl.read_text())


def changes(lines: list[dict]) -> dict:
    return {line["param"]: (line["from"], line["to"]) for line in lines if "to" in line}


def test_a_small_node_gets_the_rpc_settings_only(tmp_path: Path) -> None:
    node = Node(tmp_path, cpus=8, mem_gib=32, params=MOUNTED)
    rc, lines, _ = node.run()
    assert rc == 0
    assert changes(lines) == {
        "osc.fsx-OST0000-osc-ffff9e1.max_rpcs_in_flight": ("8", "32"),
        "osc.fsx-OST0001-osc-ffff9e1.max_rpcs_in_flight": ("8", "32"),
        "mdc.fsx-MDT0000-mdc-ffff9e1.max_rpcs_in_flight": ("8", "64"),
        # accepted only once max_rpcs_in_flight is above it: set after it
        "mdc.fsx-MDT0000-mdc-ffff9e1.max_mod_rpcs_in_flight": ("7", "50"),
    }
    assert all(line["node"] == "gpu-a" for line in lines)
    assert lines[-1]["pass"] == {"parameters": 4, "changed": 4, "cpus": 8, "memory_gib": 32}
    assert node.params()["ldlm.namespaces.fsx-OST0000-osc-ffff9e1.lru_size"] == "0"
    assert list(node.modprobe.iterdir()) == []
    # a second pass finds everything set and changes nothing
    rc, lines, _ = node.run()
    assert rc == 0 and changes(lines) == {} and lines[-1]["pass"]["changed"] == 0


def test_a_large_node_gets_lock_and_module_settings(tmp_path: Path) -> None:
    node = Node(tmp_path, cpus=192, mem_gib=2048, params=MOUNTED)
    rc, lines, _ = node.run()
    assert rc == 0
    got = changes(lines)
    assert got["ldlm.namespaces.fsx-OST0000-osc-ffff9e1.lru_max_age"] == ("3900000", "600000")
    assert got["ldlm.namespaces.fsx-MDT0000-mdc-ffff9e1.lru_size"] == ("0", "19200")  # 100 x CPUs
    conf = node.modprobe / "shardwise-lustre.conf"
    assert conf.read_text() == ("options ptlrpc ptlrpcd_per_cpt_max=32\n"
                                "options ksocklnd credits=2560\n")
    pending = {line["module_param"]: (line["now"], line["at_next_load"])
               for line in lines if "module_param" in line}
    assert pending == {"ptlrpc.ptlrpcd_per_cpt_max": ("0", 32), "ksocklnd.credits": ("256", 2560)}
    # written once
    rc, lines, _ = node.run()
    assert not any("wrote" in line for line in lines)


def test_unset_optional_settings_are_left_alone_and_set_ones_applied(tmp_path: Path) -> None:
    node = Node(tmp_path, cpus=8, mem_gib=32, params=MOUNTED)
    node.run()
    assert node.params()["osc.fsx-OST0000-osc-ffff9e1.max_dirty_mb"] == "2000"
    rc, lines, _ = node.run(TUNE_OSC_MAX_DIRTY_MB="64", TUNE_LLITE_MAX_CACHED_MB="32768")
    assert rc == 0
    assert changes(lines) == {"osc.fsx-OST0000-osc-ffff9e1.max_dirty_mb": ("2000", "64"),
                              "osc.fsx-OST0001-osc-ffff9e1.max_dirty_mb": ("2000", "64"),
                              "llite.fsx-ffff9e1.max_cached_mb": ("65536", "32768")}


def test_a_rejected_value_is_reported_not_fatal(tmp_path: Path) -> None:
    node = Node(tmp_path, cpus=8, mem_gib=32, params=MOUNTED)
    rc, lines, _ = node.run(TUNE_OSC_MAX_DIRTY_MB="lots")
    assert rc == 0
    errors = [line for line in lines if "error" in line]
    assert {e["param"] for e in errors} == {"osc.fsx-OST0000-osc-ffff9e1.max_dirty_mb",
                                            "osc.fsx-OST0001-osc-ffff9e1.max_dirty_mb"}
    assert lines[-1]["pass"]["changed"] == 4


def test_nothing_mounted_yet_is_a_quiet_pass(tmp_path: Path) -> None:
    node = Node(tmp_path, cpus=8, mem_gib=32, params={})
    rc, lines, _ = node.run()
    assert rc == 0 and lines == [{"node": "gpu-a", "pass": {
        "parameters": 0, "changed": 0, "cpus": 8, "memory_gib": 32}}]


def test_a_node_without_lctl_is_a_clear_error(tmp_path: Path) -> None:
    node = Node(tmp_path, cpus=8, mem_gib=32, params=MOUNTED)
    rc, lines, _ = node.run(LCTL=str(tmp_path / "no-such-lctl"))
    assert rc == 1 and "no lctl on this node" in lines[0]["error"]


def test_the_daemonset_carries_the_script() -> None:
    kubectl = "/usr/bin/kubectl" if os.path.exists("/usr/bin/kubectl") else "kubectl"
    out = subprocess.run([kubectl, "kustomize", str(TUNE.parent)], check=True,
                         capture_output=True, text=True).stdout
    import yaml
    objs = {o["kind"]: o for o in yaml.safe_load_all(out) if o}
    ds, cm = objs["DaemonSet"], objs["ConfigMap"]
    assert cm["data"]["tune.sh"] == TUNE.read_text()
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostPID"] is True
    assert spec["volumes"][0]["configMap"]["name"] == cm["metadata"]["name"]
    c = spec["containers"][0]
    assert c["securityContext"] == {"privileged": True}
    assert ":" in c["image"] and not c["image"].endswith(":latest")
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert {"/opt/tuning", "/host/etc/modprobe.d", "/host/sys/module"} <= mounts


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
