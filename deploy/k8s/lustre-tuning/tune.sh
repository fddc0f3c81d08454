#!/bin/sh
# tune.sh: applies the Lustre client settings AWS recommends for FSx for
# Lustre (FSx Lustre guide, "Performance tips") on this node, and keeps them
# applied: `lctl set_param` does not survive a reboot or a module reload,
# and the osc/mdc settings exist only while a file system is mounted. Runs in
# the shardwise-lustre-tuning DaemonSet (privileged, the host's PID
# namespace), with the node's own lctl. Prints one JSON line per change and
# one per pass; exits non-zero only when it cannot work at all.
#
#   every node:       osc.*OST*.max_rpcs_in_flight=32, mdc.*.max_rpcs_in_flight=64,
#                     mdc.*.max_mod_rpcs_in_flight=50 (after max_rpcs_in_flight)
#   memory > 64 GiB:  ldlm.namespaces.*.lru_max_age=600000,
#                     ldlm.namespaces.*.lru_size=100 x CPUs
#   CPUs > 64:        ptlrpc ptlrpcd_per_cpt_max=32 and ksocklnd credits=2560,
#                     module options: written to the node's modprobe.d, in
#                     force from the next module load (reboot)
#   when set:         osc.*.max_dirty_mb=TUNE_OSC_MAX_DIRTY_MB,
#                     llite.*.max_cached_mb=TUNE_LLITE_MAX_CACHED_MB (AWS gives
#                     no value for these; shardwise writes with O_DIRECT, so
#                     they matter only for buffered fallbacks)
set -u

LCTL=${LCTL:-nsenter -t 1 -m -- lctl}  # busybox's nsenter takes the short options
NODE=${NODE_NAME:-$(hostname)}
CPUINFO=${CPUINFO:-/proc/cpuinfo}
MEMINFO=${MEMINFO:-/proc/meminfo}
MODPROBE_DIR=${MODPROBE_DIR:-/host/etc/modprobe.d}
SYS_MODULE=${SYS_MODULE:-/host/sys/module}
INTERVAL=${TUNE_INTERVAL_S:-60}

cpus=$(grep -c '^processor' "$CPUINFO")
mem_gib=$(awk '/^MemTotal:/ {print int($2 / 1048576)}' "$MEMINFO")

emit() { printf '{"node":"%s",%s}\n' "$NODE" "$1"; }

# PATTERN VALUE, one per line, in the order they must be set.
wanted() {
  echo "osc.*OST*.max_rpcs_in_flight 32"
  echo "mdc.*.max_rpcs_in_flight 64"
  echo "mdc.*.max_mod_rpcs_in_flight 50"
  if [ "$mem_gib" -gt 64 ]; then
    echo "ldlm.namespaces.*.lru_max_age 600000"
    echo "ldlm.namespaces.*.lru_size $((100 * cpus))"
  fi
  if [ -n "${TUNE_OSC_MAX_DIRTY_MB:-}" ]; then echo "osc.*.max_dirty_mb $TUNE_OSC_MAX_DIRTY_MB"; fi
  if [ -n "${TUNE_LLITE_MAX_CACHED_MB:-}" ]; then echo "llite.*.max_cached_mb $TUNE_LLITE_MAX_CACHED_MB"; fi
}

# The module options, for nodes of more than 64 CPUs: written once; what the
# loaded modules use now is reported beside what they will use.
module_options() {
  [ "$cpus" -gt 64 ] || return 0
  conf=$MODPROBE_DIR/shardwise-lustre.conf
  want="options ptlrpc ptlrpcd_per_cpt_max=32
options ksocklnd credits=2560"
  if [ "$(cat "$conf" 2>/dev/null)" != "$want" ]; then
    if ! { printf '%s\n' "$want" >"$conf.tmp" && mv "$conf.tmp" "$conf"; }; then
      emit '"error":"cannot write '"$conf"'"'
      return 1
    fi
    emit '"wrote":"'"$conf"'"'
  fi
  printf 'ptlrpc ptlrpcd_per_cpt_max 32\nksocklnd credits 2560\n' |
    while read -r module param value; do
      now=$(cat "$SYS_MODULE/$module/parameters/$param" 2>/dev/null || echo unloaded)
      [ "$now" = "$value" ] ||
        emit '"module_param":"'"$module.$param"'","now":"'"$now"'","at_next_load":'"$value"
    done
}

# One pass: every matching parameter that differs is set. Prints the count
# of parameters that exist (0: no Lustre file system mounted yet).
apply() {
  found=0 changed=0
  wanted >/tmp/tune.wanted
  while read -r pattern value; do
    for param in $($LCTL list_param "$pattern" 2>/dev/null); do
      found=$((found + 1))
      now=$($LCTL get_param -n "$param" 2>/dev/null) || continue
      [ "$now" = "$value" ] && continue
      if $LCTL set_param "$param=$value" >/dev/null 2>&1; then
        emit '"param":"'"$param"'","from":"'"$now"'","to":"'"$value"'"'
        changed=$((changed + 1))
      else
        emit '"param":"'"$param"'","error":"set_param failed","value":"'"$value"'"'
      fi
    done
  done </tmp/tune.wanted
  emit '"pass":{"parameters":'"$found"',"changed":'"$changed"',"cpus":'"$cpus"',"memory_gib":'"$mem_gib"'}'
}

$LCTL --version >/dev/null 2>&1
case $? in
  126 | 127)
    emit '"error":"no lctl on this node: install the Lustre client on the node (deploy/README.md, Node setup)"'
    exit 1 ;;
esac
module_options || exit 1
while true; do
  apply
  [ "${TUNE_ONCE:-0}" = 1 ] && exit 0
  sleep "$INTERVAL"
done
