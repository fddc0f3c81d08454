# shellcheck shell=bash
# Shared helpers for deploy/aws/fsx: logging, configuration, the state file,
# and thin wrappers around the CLIs. Sourced, never run.

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'fsx: error: %s\n' "$*" >&2; exit 1; }

# Every setting the toolkit reads, with its default ("" = required or optional
# as checked in validate_config). The config file may set only these.
CONFIG_KEYS=(
  CLUSTER_NAME AWS_REGION STACK_NAME DEPLOYMENT_TYPE STORAGE_CAPACITY_GIB
  PER_UNIT_THROUGHPUT EFA_ENABLED S3_BUCKET CREATE_BUCKET
  S3_EXPORT_PREFIX DRA_FILE_SYSTEM_PATH NAMESPACE NODE_SELECTOR SUBNET_ID
  PV_NAME PVC_NAME CSI_CHART_VERSION IMAGE WAIT_TIMEOUT_S POLL_INTERVAL_S
  FINAL_BACKUP STATE_FILE MOUNT_TEST_SIZE MOUNT_TEST_NODES MOUNT_TEST_SECONDS
  MOUNT_TEST_START_DELAY_S TUNE_CLIENTS CSI_IDENTITY
)
declare -A CONFIG_DEFAULTS=(
  [DEPLOYMENT_TYPE]=SCRATCH_2 [STORAGE_CAPACITY_GIB]=1200 [PER_UNIT_THROUGHPUT]=250
  [EFA_ENABLED]=false [CREATE_BUCKET]=false
  [S3_EXPORT_PREFIX]=checkpoints/ [DRA_FILE_SYSTEM_PATH]=/checkpoints [NAMESPACE]=training
  [PV_NAME]=fsx-pv [PVC_NAME]=fsx-pvc [WAIT_TIMEOUT_S]=1800 [POLL_INTERVAL_S]=15
  [FINAL_BACKUP]=true [TUNE_CLIENTS]=true [CSI_IDENTITY]=irsa [MOUNT_TEST_SECONDS]=300 [MOUNT_TEST_START_DELAY_S]=120
  [CSI_CHART_VERSION]=1.17.0 # aws-fsx-csi-driver chart (driver 1.9.0), pinned
)

# load_config FILE: KEY=VALUE lines (no shell is evaluated); the environment
# overrides the file; defaults fill the rest.
load_config() {
  local file=$1 line key value lineno=0
  declare -gA CFG=()
  if [[ -n $file ]]; then
    [[ -r $file ]] || die "config file $file: cannot be read"
    while IFS= read -r line || [[ -n $line ]]; do
      lineno=$((lineno + 1))
      line=${line%%#*}
      line=${line#"${line%%[![:space:]]*}"}
      line=${line%"${line##*[![:space:]]}"}
      [[ -z $line ]] && continue
      [[ $line =~ ^([A-Z_][A-Z0-9_]*)=(.*)$ ]] ||
        die "config file $file line $lineno: expected KEY=VALUE, got: $line"
      key=${BASH_REMATCH[1]} value=${BASH_REMATCH[2]}
      [[ $key == S3_IMPORT_PREFIX ]] &&
        die "config file $file line $lineno: S3_IMPORT_PREFIX is gone: every deployment type now links the file system to S3 through a data repository association, which imports from and exports to S3_EXPORT_PREFIX; remove the line"
      [[ " ${CONFIG_KEYS[*]} " == *" $key "* ]] ||
        die "config file $file line $lineno: unknown setting $key (known: ${CONFIG_KEYS[*]})"
      value=${value#\"} value=${value%\"}
      CFG[$key]=$value
    done <"$file"
  fi
  for key in "${CONFIG_KEYS[@]}"; do
    if [[ -n ${!key:-} ]]; then CFG[$key]=${!key}; fi
    if [[ -z ${CFG[$key]:-} ]]; then CFG[$key]=${CONFIG_DEFAULTS[$key]:-}; fi
  done
  CONFIG_FILE=$file
}

cfg() { printf '%s' "${CFG[$1]:-}"; }

need() {
  local key=$1 why=$2
  [[ -n ${CFG[$key]:-} ]] ||
    die "$key is not set ($why). Set it in ${CONFIG_FILE:-the config file (--config FILE)} or the environment; see deploy/aws/fsx.env.example"
}

# validate_config: everything `up` needs, checked before any call is made.
validate_config() {
  need CLUSTER_NAME "the EKS cluster to attach the file system to"
  need AWS_REGION "the region of the cluster"
  : "${CFG[STACK_NAME]:=shardwise-fsx-${CFG[CLUSTER_NAME]}}"
  [[ ${CFG[STACK_NAME]} =~ ^[A-Za-z0-9-]{1,48}$ ]] ||
    die "STACK_NAME '${CFG[STACK_NAME]}': use 1-48 letters, digits or '-'"
  local type=${CFG[DEPLOYMENT_TYPE]} cap=${CFG[STORAGE_CAPACITY_GIB]}
  case $type in SCRATCH_2 | PERSISTENT_2) ;;
    *) die "DEPLOYMENT_TYPE '$type': use SCRATCH_2 (tests) or PERSISTENT_2 (production)" ;;
  esac
  [[ $cap =~ ^[0-9]+$ ]] || die "STORAGE_CAPACITY_GIB '$cap' is not a number of GiB"
  if ((cap != 1200 && (cap < 2400 || cap % 2400 != 0))); then
    die "STORAGE_CAPACITY_GIB $cap: FSx for Lustre $type takes 1200, 2400 or a multiple of 2400 GiB"
  fi
  if [[ $type == PERSISTENT_2 ]]; then
    case ${CFG[PER_UNIT_THROUGHPUT]} in 125 | 250 | 500 | 1000) ;;
      *) die "PER_UNIT_THROUGHPUT '${CFG[PER_UNIT_THROUGHPUT]}': PERSISTENT_2 takes 125, 250, 500 or 1000 (MB/s per TiB)" ;;
    esac
  fi
  case ${CFG[EFA_ENABLED]} in true | false) ;; *) die "EFA_ENABLED must be true or false" ;; esac
  if [[ ${CFG[EFA_ENABLED]} == true && $type != PERSISTENT_2 ]]; then
    die "EFA_ENABLED=true needs DEPLOYMENT_TYPE=PERSISTENT_2 (EFA is not offered on SCRATCH_2)"
  fi
  case ${CFG[CREATE_BUCKET]} in true | false) ;; *) die "CREATE_BUCKET must be true or false" ;; esac
  case ${CFG[TUNE_CLIENTS]} in true | false) ;; *) die "TUNE_CLIENTS must be true or false" ;; esac
  case ${CFG[CSI_IDENTITY]} in
    irsa | pod-identity) ;;
    *) die "CSI_IDENTITY must be irsa or pod-identity, not '${CFG[CSI_IDENTITY]}'" ;;
  esac
  need S3_BUCKET "the bucket the file system imports from and exports checkpoints to"
  [[ ${CFG[DRA_FILE_SYSTEM_PATH]} == /* ]] ||
    die "DRA_FILE_SYSTEM_PATH '${CFG[DRA_FILE_SYSTEM_PATH]}' must be an absolute path in the file system (the checkpoint root lies under it)"

  [[ ${CFG[WAIT_TIMEOUT_S]} =~ ^[0-9]+$ ]] || die "WAIT_TIMEOUT_S must be a number of seconds"
  local key
  for key in MOUNT_TEST_SECONDS MOUNT_TEST_START_DELAY_S; do
    [[ ${CFG[$key]} =~ ^[0-9]+$ ]] || die "$key '${CFG[$key]}' must be a number of seconds"
  done
  [[ -z ${CFG[MOUNT_TEST_NODES]} || ${CFG[MOUNT_TEST_NODES]} =~ ^[1-9][0-9]*$ ]] ||
    die "MOUNT_TEST_NODES '${CFG[MOUNT_TEST_NODES]}' must be a positive number of nodes (empty: every selected node)"
  [[ -z ${CFG[MOUNT_TEST_SIZE]} || ${CFG[MOUNT_TEST_SIZE]} =~ ^[1-9][0-9]*(B|KiB|MiB|GiB|TiB)?$ ]] ||
    die "MOUNT_TEST_SIZE '${CFG[MOUNT_TEST_SIZE]}' must be a size such as 64GiB (empty: sized from the file system)"
  [[ ${CFG[NAMESPACE]} =~ ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$ ]] ||
    die "NAMESPACE '${CFG[NAMESPACE]}' is not a valid Kubernetes namespace name"
  : "${CFG[STATE_FILE]:=${XDG_STATE_HOME:-$HOME/.local/state}/shardwise-fsx/${CFG[STACK_NAME]}.json}"
}

require_tools() {
  local t missing=()
  for t in "$@"; do command -v "$t" >/dev/null || missing+=("$t"); done
  ((${#missing[@]} == 0)) || die "missing tools: ${missing[*]} (install them; deploy/README.md lists versions)"
}

# ---- state file: what this toolkit created, as JSON, written atomically

state_init() {
  mkdir -p "$(dirname "${CFG[STATE_FILE]}")"
  if [[ ! -s ${CFG[STATE_FILE]} ]]; then
    jq -n --arg stack "${CFG[STACK_NAME]}" --arg cluster "${CFG[CLUSTER_NAME]}" \
      --arg region "${CFG[AWS_REGION]}" \
      '{stack: $stack, cluster: $cluster, region: $region, created: {}}' >"${CFG[STATE_FILE]}"
  fi
  local stack
  stack=$(jq -r .stack "${CFG[STATE_FILE]}") || die "state file ${CFG[STATE_FILE]} is not JSON"
  [[ $stack == "${CFG[STACK_NAME]}" ]] ||
    die "state file ${CFG[STATE_FILE]} belongs to stack '$stack', not '${CFG[STACK_NAME]}'"
}

# state_get KEY: a value under .created, or "" when absent.
state_get() { jq -r --arg k "$1" '.created[$k] // empty' "${CFG[STATE_FILE]}" 2>/dev/null || true; }

# state_set KEY VALUE: records VALUE (a string) under .created.
state_set() {
  local tmp
  tmp=$(mktemp "${CFG[STATE_FILE]}.XXXXXX")
  jq --arg k "$1" --arg v "$2" '.created[$k] = $v' "${CFG[STATE_FILE]}" >"$tmp"
  mv "$tmp" "${CFG[STATE_FILE]}"
}

state_del() {
  local tmp
  tmp=$(mktemp "${CFG[STATE_FILE]}.XXXXXX")
  jq --arg k "$1" 'del(.created[$k])' "${CFG[STATE_FILE]}" >"$tmp"
  mv "$tmp" "${CFG[STATE_FILE]}"
}

state_keys() { jq -r --arg p "$1" '.created | keys[] | select(startswith($p))' "${CFG[STATE_FILE]}"; }

# ---- CLI wrappers: errors are never hidden (credentials, throttling, typos
# must surface as themselves, not as "not found").

awsj() { aws --region "${CFG[AWS_REGION]}" --output json "$@"; }

# aws_exists CMD...: 0 if the call succeeds, 1 if AWS says the thing does not
# exist (the error codes in NOT_FOUND_RE), and the script dies on any other error.
NOT_FOUND_RE='NotFound|NoSuchEntity|NoSuchBucket|404|Not Found|does not exist'
aws_exists() {
  local err rc=0
  err=$(aws --region "${CFG[AWS_REGION]}" --output json "$@" 2>&1 >/dev/null) || rc=$?
  ((rc == 0)) && return 0
  [[ $err =~ $NOT_FOUND_RE ]] && return 1
  die "aws $*: $err"
}

tag_spec() { # tag_spec RESOURCE_TYPE
  printf 'ResourceType=%s,Tags=[{Key=shardwise:stack,Value=%s},{Key=Name,Value=%s}]' \
    "$1" "${CFG[STACK_NAME]}" "${CFG[STACK_NAME]}"
}

# partition: from the caller's ARN, so aws-cn / aws-us-gov work. Call it as
# `p=$(partition) || exit 1`: a failure inside "arn:$(partition):..." would
# not stop the script, and the ARN would silently read "arn::".
partition() {
  local arn part
  arn=$(awsj sts get-caller-identity | jq -r .Arn) || die "cannot read the caller's ARN (aws sts get-caller-identity)"
  part=$(printf '%s' "${arn#arn:}" | cut -d: -f1)
  [[ $part =~ ^aws(-[a-z]+)*$ ]] || die "cannot tell the AWS partition from the caller's ARN '$arn'"
  printf '%s' "$part"
}

# within_deadline START: 0 while fewer than WAIT_TIMEOUT_S seconds have passed since START.
within_deadline() {
  local start=$1 limit=${CFG[WAIT_TIMEOUT_S]} now
  now=$(date +%s)
  ((now - start < limit))
}
