"""A stand-in for the node's lctl, for testing deploy/k8s/lustre-tuning/tune.sh.

Parameters live in the JSON file $FAKE_LCTL (name -> value). It answers
--version, list_param PATTERN, get_param -n NAME and set_param NAME=VALUE as
lctl does, patterns matching with shell globs, and it rejects what Lustre
rejects: an unknown parameter, a value that is not a number, and an mdc
max_mod_rpcs_in_flight that is not below that device's max_rpcs_in_flight.
"""
import fnmatch
import json
import os
import sys


def main() -> int:
    path = os.environ["FAKE_LCTL"]
    with open(path) as f:
        params = json.load(f)
    with open(path + ".calls", "a") as f:
        f.write(json.dumps(sys.argv[1:]) + "\n")
    args = sys.argv[1:]
    if args == ["--version"]:
        print("lctl 2.15.6")
        return 0
    if args[0] == "list_param":
        names = sorted(n for n in params if fnmatch.fnmatchcase(n, args[1]))
        if not names:
            print(f"error: list_param: param_path '{args[1]}': No such file or directory",
                  file=sys.stderr)
            return 2
        print("\n".join(names))
        return 0
    if args[:2] == ["get_param", "-n"]:
        if args[2] not in params:
            print(f"error: get_param: {args[2]}: No such file or directory", file=sys.stderr)
            return 2
        print(params[args[2]])
        return 0
    if args[0] == "set_param":
        name, value = args[1].split("=", 1)
        if name not in params or not value.isdigit():
            print(f"error: set_param: setting {name}={value}: Invalid argument", file=sys.stderr)
            return 22
        if name.endswith(".max_mod_rpcs_in_flight"):
            limit = int(params[name.replace("max_mod_rpcs_in_flight", "max_rpcs_in_flight")])
            if int(value) >= limit:
                print(f"error: set_param: setting {name}={value}: Numerical result out of range",
                      file=sys.stderr)
                return 34
        params[name] = value
        with open(path, "w") as f:
            json.dump(params, f)
        return 0
    print(f"lctl: unknown command {args}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
