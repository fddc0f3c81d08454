"""deploy/aws/node/lnet-efa.sh against a stand-in node (fakenode.py: modprobe,
modinfo, lnetctl and ip that reject what the real ones reject).

The script configures LNet for an EFA-enabled FSx for Lustre file system at
boot: tcp on the default route's interface, one efa network per chosen
device, discovery and a UDSP rule preferring efa. It changes nothing on a
node that lacks the driver, the client's EFA support or EFA devices, or that
already has Lustre mounted.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SCRIPT = HERE.parent / "aws" / "node" / "lnet-efa.sh"
P5_DEVICES = [f"rdmap{79 + 16 * (i // 4)}s{i % 4}" for i in range(32)]  # 32 devices, 8 buses


class Node:
    def __init__(self, tmp: Path, devices: list[str], efa_version: str = "2.13.0",
                 kefalnd: bool = True, mounts: str = "") -> None:
        self.tmp = tmp
        self.ib = tmp / "infiniband"
        self.ib.mkdir()
        for d in devices:
            (self.ib / d).mkdir()
        modules = {"lnet": "", "ksocklnd": "", "lustre": "2.15.6"}
        if efa_version is not None:
            modules["efa"] = efa_version
        if kefalnd:
            modules["kefalnd"] = ""
        self.state = tmp / "node.json"
        self.state.write_text(json.dumps({
            "modules": modules, "loaded": {}, "interfaces": {"ens5": "10.0.3.17"},
            "default_route": "ens5", "lnet": None}))
        (tmp / "mounts").write_text("proc /proc proc rw 0 0\n" + mounts)
        (tmp / "module").mkdir()
        bin_dir = tmp / "bin"
        bin_dir.mkdir()
        for tool in ("modprobe", "modinfo", "lnetctl", "ip"):
            (bin_dir / tool).write_text(
                f'#!/bin/sh\nexec "{sys.executable}" -S "{HERE / "fakenode.py"}" {tool} "$@"\n')
            (bin_dir / tool).chmod(0o755)
        self.path = f"{bin_dir}:{os.environ['PATH']}"

    def run(self, **env: str) -> tuple[int, list[dict]]:
        p = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60,
                           env={"PATH": self.path, "FAKE_NODE": str(self.state),
                                "SYS_CLASS_INFINIBAND": str(self.ib),
                                "PROC_MOUNTS": str(self.tmp / "mounts"), "NODE_NAME": "gpu-a",
                                "SYS_MODULE": str(self.tmp / "module"),
                                **env})
        assert p.stderr == "", p.stderr
        lines = [json.loads(line) for line in p.stdout.splitlines()]
        assert all(line["node"] == "gpu-a" for line in lines)
        return p.returncode, lines

    def node(self) -> dict:
        return json.loads(self.state.read_text())

    def changing_calls(self) -> list[list[str]]:
        """Every call but the read-only ones (modinfo, ip, net show)."""
        calls = [json.loads(line) for line in (self.tmp / "node.json.calls").read_text()
                 .splitlines()]
        return [c for c in calls if c[0] not in ("modinfo", "ip") and c[1:] != ["net", "show"]]


def efa_ifs(node: dict) -> list[str]:
    return [n["if"] for n in node["lnet"]["nets"] if n["net"] == "efa"]


def test_a_p5_node_gets_one_efa_network_per_pci_bus(tmp_path: Path) -> None:
    node = Node(tmp_path, P5_DEVICES)
    rc, lines = node.run()
    assert rc == 0, lines
    state = node.node()
    # every 4th device in name order: one per bus
    assert efa_ifs(state) == sorted(P5_DEVICES)[::4]
    assert len(efa_ifs(state)) == 8
    assert [n["if"] for n in state["lnet"]["nets"] if n["net"] == "tcp"] == ["ens5"]
    assert all(n["peer_credits"] == 32 for n in state["lnet"]["nets"] if n["net"] == "efa")
    assert state["lnet"]["discovery"] == 1
    assert state["lnet"]["udsp"] == [{"--src": "efa", "--priority": "0"}]
    assert state["loaded"]["kefalnd"] == ["ipif_name=ens5"]
    assert "lustre" in state["loaded"]
    # the order that works: drivers, LNet, networks, rules, then the client
    order = [c[:3] for c in node.changing_calls()]
    assert order.index(["modprobe", "kefalnd", "ipif_name=ens5"]) < order.index(
        ["lnetctl", "lnet", "configure"]) < order.index(["lnetctl", "net", "add"])
    assert order[-1] == ["modprobe", "lustre"]
    assert lines[0]["efa_driver"] == "2.13.0" and lines[0]["efa_devices"] == 32
    assert lines[-1] == {"node": "gpu-a",
                         "configured": {"efa_interfaces": 8, "tcp_interface": "ens5"}}


@pytest.mark.parametrize("devices,chosen", [
    (["rdmap0s6", "rdmap1s6", "rdmap2s6", "rdmap3s6"], ["rdmap0s6", "rdmap3s6"]),
    (["rdmap0s6"], ["rdmap0s6"]),
])
def test_smaller_nodes_get_the_first_and_last_device_or_the_only_one(
        tmp_path: Path, devices: list[str], chosen: list[str]) -> None:
    node = Node(tmp_path, devices)
    rc, lines = node.run()
    assert rc == 0, lines
    assert efa_ifs(node.node()) == chosen


def test_a_cap_limits_the_efa_networks_and_a_bad_cap_is_refused(tmp_path: Path) -> None:
    node = Node(tmp_path, P5_DEVICES)
    rc, lines = node.run(LNET_EFA_MAX="x2")
    assert rc == 1 and "LNET_EFA_MAX must be a positive number" in lines[-1]["error"]
    assert node.node()["lnet"] is None
    rc, _ = node.run(LNET_EFA_MAX="2")
    assert rc == 0
    assert efa_ifs(node.node()) == sorted(P5_DEVICES)[:5:4]


@pytest.mark.parametrize("what,kwargs,says", [
    ("old driver", {"efa_version": "2.10.1"}, "the efa driver is 2.10.1; Lustre over EFA needs "
     "2.12.1 or later"),
    ("no driver", {"efa_version": None}, "no efa kernel module on this node"),
    ("no EFA in the Lustre client", {"kefalnd": False}, "no kefalnd module: this node's Lustre "
     "client has no EFA support"),
    ("Lustre mounted", {"mounts": "10.0.3.9@tcp:/abcdefgh /fsx lustre rw,flock 0 0\n"},
     "a Lustre file system is mounted (/fsx): LNet cannot be reconfigured under it"),
])
def test_a_node_that_is_not_ready_is_left_untouched_with_the_reason(
        tmp_path: Path, what: str, kwargs: dict, says: str) -> None:
    node = Node(tmp_path, ["rdmap0s6", "rdmap1s6"], **kwargs)
    rc, lines = node.run()
    assert rc == 1, what
    assert says in lines[-1]["error"], lines
    assert node.changing_calls() == []
    assert node.node()["loaded"] == {} and node.node()["lnet"] is None


def test_no_efa_device_or_no_route_is_a_clear_error(tmp_path: Path) -> None:
    node = Node(tmp_path, [])
    rc, lines = node.run()
    assert rc == 1 and "no EFA device under" in lines[-1]["error"]
    assert "efaEnabled" in lines[-1]["error"]
    (node.ib / "rdmap0s6").mkdir()
    state = node.node()
    state["default_route"] = None
    node.state.write_text(json.dumps(state))
    rc, lines = node.run()
    assert rc == 1 and "set LNET_TCP_IF" in lines[-1]["error"]
    rc, lines = node.run(LNET_TCP_IF="ens5")
    assert rc == 0, lines


def test_a_second_run_changes_nothing(tmp_path: Path) -> None:
    node = Node(tmp_path, ["rdmap0s6", "rdmap1s6"])
    assert node.run()[0] == 0
    before = node.node()
    calls = len(node.changing_calls())
    rc, lines = node.run()
    assert rc == 0
    assert lines == [{"node": "gpu-a",
                      "unchanged": "LNet already has 2 efa interface(s) and lustre is loaded"}]
    assert node.node() == before and len(node.changing_calls()) == calls


def test_a_run_that_stopped_midway_is_not_taken_for_done(tmp_path: Path) -> None:
    node = Node(tmp_path, ["rdmap0s6", "rdmap1s6"])
    state = node.node()
    state["udsp_fails"] = True
    node.state.write_text(json.dumps(state))
    rc, lines = node.run()
    assert rc == 1 and lines[-1]["error"].startswith("lnetctl udsp add --src efa --priority 0 failed")
    assert len(efa_ifs(node.node())) == 2 and "lustre" not in node.node()["loaded"]
    calls = len(node.changing_calls())
    rc, lines = node.run()  # the networks are there, the rule and the client are not
    assert rc == 1
    assert lines[-1]["error"].startswith("LNet is half set up (2 efa interface(s) of 2, lustre not "
                                         "loaded)")
    assert "lustre_rmmod" in lines[-1]["error"] and len(node.changing_calls()) == calls


def test_a_node_without_lnetctl_is_left_untouched(tmp_path: Path) -> None:
    node = Node(tmp_path, ["rdmap0s6"])
    (tmp_path / "bin" / "lnetctl").unlink()
    rc, lines = node.run()
    assert rc == 1 and lines[-1]["error"].startswith("no lnetctl on this node")
    assert node.node()["loaded"] == {}


def test_a_failing_lnetctl_stops_the_setup_and_is_named(tmp_path: Path) -> None:
    node = Node(tmp_path, ["rdmap0s6", "rdmap1s6"])
    state = node.node()
    state["interfaces"] = {"ens6": "10.0.3.17"}  # LNET_TCP_IF names an interface it lacks
    state["default_route"] = "ens6"
    node.state.write_text(json.dumps(state))
    rc, lines = node.run(LNET_TCP_IF="ens5")
    assert rc == 1
    assert lines[-1]["error"].startswith("lnetctl net add --net tcp --if ens5 failed:")
    assert "no such interface ens5" in lines[-1]["error"]
    assert efa_ifs(node.node()) == []  # it stopped there
