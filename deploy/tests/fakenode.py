"""A stand-in for a node's modprobe, modinfo, lnetctl and ip, for testing
deploy/aws/node/lnet-efa.sh. Called as `fakenode.py TOOL ARGS...`.

The node lives in the JSON file $FAKE_NODE:
  modules      the kernel modules installed (name -> version, "" when none)
  loaded       the modules loaded, with their parameters
  interfaces   the node's IP interfaces (name -> address)
  lnet         null until `lnetctl lnet configure`; then its networks,
               discovery and UDSP rules
  udsp_fails   (optional) `lnetctl udsp add` fails: a run that stops midway
Every call is appended to $FAKE_NODE.calls; a loaded module appears as a
directory under $SYS_MODULE, as in /sys/module. Each tool rejects what the real
one rejects: a module that is not installed; an LNet command before LNet is
configured or a network whose driver is not loaded; an interface that does
not exist (efa devices are the entries of $SYS_CLASS_INFINIBAND); the same
interface added twice; an option or subcommand it does not know.
"""
import json
import os
import sys

LND = {"tcp": "ksocklnd", "efa": "kefalnd"}


def fail(msg: str, rc: int = 1) -> int:
    print(msg, file=sys.stderr)
    return rc


def options(args: list, known: set) -> dict:
    """--name value pairs; an unknown or valueless option is a ValueError."""
    out = {}
    if len(args) % 2:
        raise ValueError(f"missing value in {' '.join(args)}")
    for k, v in zip(args[::2], args[1::2]):
        if k not in known:
            raise ValueError(f"unrecognized option '{k}'")
        out[k] = v
    return out


def modprobe(node: dict, args: list) -> int:
    name, params = args[0], args[1:]
    if name not in node["modules"]:
        return fail(f"modprobe: FATAL: Module {name} not found in directory /lib/modules/6.1.0")
    for p in params:
        if "=" not in p:
            return fail(f"modprobe: ERROR: could not insert '{name}': Invalid argument")
    node["loaded"].setdefault(name, params)
    if os.environ.get("SYS_MODULE"):  # what /sys/module shows for a loaded module
        os.makedirs(os.path.join(os.environ["SYS_MODULE"], name), exist_ok=True)
    return 0


def modinfo(node: dict, args: list) -> int:
    field = None
    if args[:1] == ["-F"]:
        field, args = args[1], args[2:]
    name = args[0]
    if name not in node["modules"]:
        return fail(f"modinfo: ERROR: Module {name} not found.")
    if field == "version":
        if node["modules"][name]:
            print(node["modules"][name])
        return 0
    print(f"filename:       /lib/modules/6.1.0/extra/{name}.ko\nversion:        "
          f"{node['modules'][name]}")
    return 0


def net_show(node: dict) -> None:
    lines = ["net:", "    - net type: lo", "      local NI(s):", "        - nid: 0@lo",
             "          status: up"]
    for net in ("tcp", "efa"):
        nis = [n for n in node["lnet"]["nets"] if n["net"] == net]
        if nis:
            lines += [f"    - net type: {net}", "      local NI(s):"]
            for n in nis:
                lines += [f"        - nid: {n['nid']}", "          status: up",
                          "          interfaces:", f"              0: {n['if']}"]
    print("\n".join(lines))


def net(node: dict, args: list) -> int:
    lnet = node["lnet"]
    verb, rest = args[0], args[1:]
    if verb == "show" and not rest:
        net_show(node)
        return 0
    if verb == "del":
        o = options(rest, {"--net"})
        before = len(lnet["nets"])
        lnet["nets"] = [n for n in lnet["nets"] if n["net"] != o["--net"]]
        return 0 if len(lnet["nets"]) < before else fail("del:\n    - net:\n          errno: -2\n"
                                                         "          descr: cannot delete network: "
                                                         "No such file or directory")
    if verb == "add":
        o = options(rest, {"--net", "--if", "--peer-credits"})
        kind, iface = o.get("--net"), o.get("--if")
        if kind not in LND or not iface:
            return fail(f"add:\n    - net:\n          errno: -22\n          descr: bad network "
                        f"'{kind}' or interface")
        if LND[kind] not in node["loaded"]:
            return fail(f"add:\n    - net:\n          errno: -100\n          descr: cannot add "
                        f"network: {LND[kind]} is not loaded")
        if kind == "tcp":
            if iface not in node["interfaces"]:
                return fail(f"add:\n    - net:\n          errno: -19\n          descr: no such "
                            f"interface {iface}")
            nid = node["interfaces"][iface] + "@tcp"
        else:
            if not os.path.isdir(os.path.join(os.environ["SYS_CLASS_INFINIBAND"], iface)):
                return fail(f"add:\n    - net:\n          errno: -19\n          descr: no such "
                            f"EFA device {iface}")
            nid = f"{next(iter(node['interfaces'].values()))}@efa"
        if any(n["if"] == iface for n in lnet["nets"]):
            return fail("add:\n    - net:\n          errno: -17\n          descr: cannot add "
                        "network: File exists")
        lnet["nets"].append({"net": kind, "if": iface, "nid": nid,
                             "peer_credits": int(o.get("--peer-credits", 8))})
        return 0
    raise ValueError(f"unknown net command '{verb}'")


def lnetctl(node: dict, args: list) -> int:
    if "lnet" not in node["loaded"]:
        return fail("LNet configure error: lnet module is not loaded")
    if args == ["lnet", "configure"]:
        node["lnet"] = node["lnet"] or {"nets": [], "discovery": 0, "udsp": []}
        return 0
    if node["lnet"] is None:
        return fail("LNet configure error: LNet is not configured (lnetctl lnet configure)")
    if args[0] == "net" and len(args) > 1:
        return net(node, args[1:])
    if args[:2] == ["set", "discovery"] and args[2:] in (["0"], ["1"]):
        node["lnet"]["discovery"] = int(args[2])
        return 0
    if args[:2] == ["udsp", "add"]:
        o = options(args[2:], {"--src", "--priority"})
        if node.get("udsp_fails"):  # a failure midway, for the tests of a second run
            return fail("udsp add: errno: -12 descr: out of memory")
        if not any(n["net"] == o.get("--src") for n in node["lnet"]["nets"]):
            return fail(f"udsp add: no network {o.get('--src')}")
        node["lnet"]["udsp"].append(o)
        return 0
    raise ValueError(f"unknown command '{' '.join(args)}'")


def ip(node: dict, args: list) -> int:
    if args != ["-4", "route", "show", "default"]:
        raise ValueError(f"unexpected ip call {args}")
    if node.get("default_route"):
        iface = node["default_route"]
        print(f"default via 10.0.0.1 dev {iface} proto dhcp src {node['interfaces'][iface]} "
              "metric 512")
    return 0


def main() -> int:
    path = os.environ["FAKE_NODE"]
    with open(path) as f:
        node = json.load(f)
    tool, args = sys.argv[1], sys.argv[2:]
    with open(path + ".calls", "a") as f:
        f.write(json.dumps([tool] + args) + "\n")
    try:
        rc = {"modprobe": modprobe, "modinfo": modinfo, "lnetctl": lnetctl, "ip": ip}[tool](node,
                                                                                            args)
    except (ValueError, IndexError) as e:
        return fail(f"{tool}: {e}")
    with open(path, "w") as f:
        json.dump(node, f)
    return rc


if __name__ == "__main__":
    sys.exit(main())
