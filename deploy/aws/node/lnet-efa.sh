#!/usr/bin/env bash
# lnet-efa.sh: sets up this node's Lustre networking (LNet) so that it
# reaches an EFA-enabled FSx for Lustre file system over EFA, not only TCP.
#
# Run it as root at boot, before kubelet starts: from the node group's
# user data (eksctl's preBootstrapCommands, or a shell part of the launch
# template's user data). LNet cannot be reconfigured under a mounted Lustre
# file system, so it must run before the FSx CSI driver mounts anything; it
# refuses to touch a node that has one mounted.
#
# What it does (the steps of AWS's EKS guide "Optimize Amazon FSx for Lustre
# performance on nodes (EFA)", written here as one checked script):
#   1. checks what the node must already have, and changes nothing unless all
#      of it is there: the efa kernel driver at 2.12.1 or later (EKS
#      accelerated AMIs ship it), the Lustre client's EFA network driver
#      (kefalnd: AWS's Lustre 2.15 client for this kernel), EFA devices under
#      /sys/class/infiniband, and the interface of the default route;
#   2. loads lnet, kefalnd (bound to that interface) and ksocklnd, starts
#      LNet, and adds the tcp network on that interface (the file system's
#      MGS is mounted as DNS@tcp) and one efa network per chosen device,
#      with 32 peer credits each;
#   3. turns on discovery and prefers efa (a UDSP rule), then loads lustre;
#   4. checks that `lnetctl net show` lists exactly the efa interfaces added.
# Which devices: one per PCI bus where a node has many (16 or more devices,
# as p5's 32: every 4th in name order), else the first and the last, else
# the only one. LNET_EFA_MAX caps the count.
#
# It downloads nothing: a node without the driver or the client fails here,
# saying what to install, rather than installing unpinned software at boot.
# Run again on a node it set up, it changes nothing; on one where an earlier
# run stopped midway, it says how to start over.
# Prints one JSON line per step and exits non-zero on the first failure.
#
# Environment (all optional): LNET_TCP_IF (default: the default route's
# interface), LNET_EFA_MAX, NODE_NAME; SYS_CLASS_INFINIBAND, SYS_MODULE and
# PROC_MOUNTS move the paths it reads (tests).
set -euo pipefail

MIN_EFA_DRIVER=2.12.1
PEER_CREDITS=32
SYS_IB=${SYS_CLASS_INFINIBAND:-/sys/class/infiniband}
MOUNTS=${PROC_MOUNTS:-/proc/mounts}
SYS_MODULE=${SYS_MODULE:-/sys/module}
NODE=${NODE_NAME:-$(hostname)}

emit() { printf '{"node":"%s",%s}\n' "$NODE" "$1"; }
# A JSON string of $1 (backslashes and quotes escaped, control characters as spaces).
json() {
  local s=${1//[$'\t\r\n']/ }
  s=${s//\\/\\\\}
  printf '"%s"' "${s//\"/\\\"}"
}
fail() {
  emit "\"error\":$(json "$1")"
  exit 1
}
# Runs a command; a failure stops the script, naming the command and its output.
run() {
  local out
  if ! out=$("$@" 2>&1); then
    fail "$* failed: ${out//$'\n'/ }"
  fi
  emit "\"ran\":$(json "$*")"
}
# True when version $1 is at least $2.
at_least() { [[ "$(printf '%s\n' "$1" "$2" | sort -V | head -n1)" == "$2" ]]; }

efa_nids() { { lnetctl net show 2>/dev/null || true; } | grep -c '@efa' || true; }

# 1a. The EFA devices, and which of them LNet gets (read only).
devices=()
if [[ -d "$SYS_IB" ]]; then
  mapfile -t devices < <(find "$SYS_IB" -mindepth 1 -maxdepth 1 -printf '%f\n' | LC_ALL=C sort)
fi
((${#devices[@]})) ||
  fail "no EFA device under $SYS_IB: launch the node with EFA interfaces (efaEnabled in eksctl)"
chosen=()
if ((${#devices[@]} >= 16)); then
  for ((i = 0; i < ${#devices[@]}; i += 4)); do chosen+=("${devices[i]}"); done
elif ((${#devices[@]} >= 2)); then
  chosen=("${devices[0]}" "${devices[-1]}")
else
  chosen=("${devices[0]}")
fi
if [[ -n "${LNET_EFA_MAX:-}" ]]; then
  [[ "$LNET_EFA_MAX" =~ ^[1-9][0-9]*$ ]] || fail "LNET_EFA_MAX must be a positive number, not '$LNET_EFA_MAX'"
  chosen=("${chosen[@]:0:LNET_EFA_MAX}")
fi
# 1b. Done already (a second run): nothing to change. Half done (an earlier
# run that failed midway): LNet's networks cannot be added twice, so say how
# to start over rather than report success.
command -v lnetctl >/dev/null ||
  fail "no lnetctl on this node: install AWS's Lustre 2.15 client (lustre-client, beside lustre-client-modules)"
have=$(efa_nids)
if ((have > 0)); then
  if ((have == ${#chosen[@]})) && [[ -d "$SYS_MODULE/lustre" ]]; then
    emit "\"unchanged\":\"LNet already has $have efa interface(s) and lustre is loaded\""
    exit 0
  fi
  fail "LNet is half set up ($have efa interface(s) of ${#chosen[@]}, lustre $([[ -d "$SYS_MODULE/lustre" ]] && echo loaded || echo 'not loaded')), from an earlier run that failed: unload it with lustre_rmmod (nothing may be mounted), then run this again"
fi

# 1c. What LNet over EFA needs (read only).
driver=$(modinfo -F version efa 2>/dev/null) ||
  fail "no efa kernel module on this node: use an EKS accelerated AMI or install AWS's EFA driver ($MIN_EFA_DRIVER or later)"
driver=${driver//[^0-9.]/}
[[ -n "$driver" ]] || fail "the efa kernel module reports no version; Lustre over EFA needs $MIN_EFA_DRIVER or later"
at_least "$driver" "$MIN_EFA_DRIVER" ||
  fail "the efa driver is $driver; Lustre over EFA needs $MIN_EFA_DRIVER or later"
modinfo kefalnd >/dev/null 2>&1 ||
  fail "no kefalnd module: this node's Lustre client has no EFA support; install AWS's Lustre 2.15 client (lustre-client-modules) for kernel $(uname -r)"
if awk '$3 == "lustre" { found = 1 } END { exit !found }' "$MOUNTS"; then
  fail "a Lustre file system is mounted ($(awk '$3 == "lustre" { print $2 }' "$MOUNTS" | paste -sd ' ' -)): LNet cannot be reconfigured under it; run this from the node's user data, before kubelet starts"
fi
if [[ -z "${LNET_TCP_IF:-}" ]]; then
  route=$(ip -4 route show default 2>&1) || fail "ip -4 route show default failed: $route"
  eth=$(awk '{ for (i = 1; i < NF; i++) if ($i == "dev") { print $(i + 1); exit } }' <<<"$route")
else
  eth=$LNET_TCP_IF
fi
[[ "$eth" =~ ^[A-Za-z0-9_.:-]+$ ]] || fail "no usable TCP interface for LNet (default route: '${route:-}'): set LNET_TCP_IF"

emit "\"efa_driver\":\"$driver\",\"tcp_interface\":\"$eth\",\"efa_devices\":${#devices[@]},\"chosen\":[$(printf '"%s",' "${chosen[@]}" | sed 's/,$//')]"

# 2. LNet with a tcp network and the efa networks.
run modprobe lnet
run modprobe kefalnd "ipif_name=$eth"
run modprobe ksocklnd
run lnetctl lnet configure
lnetctl net del --net tcp >/dev/null 2>&1 || true  # the default one, if lnet made it
run lnetctl net add --net tcp --if "$eth"
for dev in "${chosen[@]}"; do
  run lnetctl net add --net efa --if "$dev" --peer-credits "$PEER_CREDITS"
done

# 3. Prefer efa, then the Lustre client itself.
run lnetctl set discovery 1
run lnetctl udsp add --src efa --priority 0
run modprobe lustre

# 4. What LNet reports.
got=$(efa_nids)
((got == ${#chosen[@]})) ||
  fail "lnetctl net show lists $got efa interface(s), not the ${#chosen[@]} added"
emit "\"configured\":{\"efa_interfaces\":$got,\"tcp_interface\":\"$eth\"}"
