# shellcheck shell=bash
# The S3 bucket, the file system, its S3 link, the wait loop, throughput.

ensure_bucket() {
  local b=${CFG[S3_BUCKET]}
  if aws_exists s3api head-bucket --bucket "$b"; then
    log "bucket s3://$b exists"
    return 0
  fi
  [[ ${CFG[CREATE_BUCKET]} == true ]] ||
    die "bucket s3://$b does not exist: create it, or set CREATE_BUCKET=true to let this toolkit create (and later offer to delete) it"
  local loc=()
  [[ ${CFG[AWS_REGION]} != us-east-1 ]] &&
    loc=(--create-bucket-configuration "LocationConstraint=${CFG[AWS_REGION]}")
  awsj s3api create-bucket --bucket "$b" "${loc[@]}" >/dev/null
  awsj s3api put-bucket-tagging --bucket "$b" \
    --tagging "TagSet=[{Key=shardwise:stack,Value=${CFG[STACK_NAME]}}]" >/dev/null
  state_set bucket "$b"
  log "created bucket s3://$b"
}

lustre_configuration() { # the JSON for --lustre-configuration (JSON, not shorthand)
  # No legacy ImportPath/ExportPath: they offer no automatic export. The S3
  # link is a data repository association on every type, made once AVAILABLE.
  if [[ ${CFG[DEPLOYMENT_TYPE]} == SCRATCH_2 ]]; then
    jq -cn '{DeploymentType: "SCRATCH_2"}'
  else
    jq -cn --argjson t "${CFG[PER_UNIT_THROUGHPUT]}" --argjson efa "${CFG[EFA_ENABLED]}" \
      '{DeploymentType: "PERSISTENT_2", PerUnitStorageThroughput: $t, EfaEnabled: $efa,
        MetadataConfiguration: {Mode: "AUTOMATIC"}}'
  fi
}

# our_file_system ID: 0 if ID carries this stack's tag.
our_file_system() {
  awsj fsx describe-file-systems --file-system-ids "$1" |
    jq -e --arg s "${CFG[STACK_NAME]}" \
      '.FileSystems[0].Tags // [] | any(.Key == "shardwise:stack" and .Value == $s)' >/dev/null
}

ensure_file_system() {
  local fs
  fs=$(state_get file_system)
  if [[ -z $fs ]]; then # lost state: adopt only a file system that carries our tag, in the nodes' subnet
    fs=$(awsj fsx describe-file-systems | jq -r --arg s "${CFG[STACK_NAME]}" --arg sub "$NODE_SUBNET" \
      '[.FileSystems[] | select(.Lifecycle != "DELETING") | select(.SubnetIds == [$sub])
        | select(.Tags // [] | any(.Key == "shardwise:stack" and .Value == $s))][0].FileSystemId // empty')
    [[ -n $fs ]] && state_set file_system "$fs" && log "file system $fs (found by tag)"
  fi
  if [[ -z $fs ]]; then
    # The idempotency token: the same on a retry of this creation (a lost
    # answer), new for every creation (FSx refuses a token it has seen with a
    # file system that is gone). Recorded before the call; `down` drops it.
    local token
    token=$(state_get create_token)
    if [[ -z $token ]]; then
      token="${CFG[STACK_NAME]}-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
      state_set create_token "$token"
    fi
    fs=$(awsj fsx create-file-system --file-system-type LUSTRE --file-system-type-version 2.15 \
      --storage-capacity "${CFG[STORAGE_CAPACITY_GIB]}" --subnet-ids "$NODE_SUBNET" \
      --security-group-ids "$FSX_SG" --client-request-token "$token" \
      --lustre-configuration "$(lustre_configuration)" \
      --tags "Key=shardwise:stack,Value=${CFG[STACK_NAME]}" "Key=Name,Value=${CFG[STACK_NAME]}" |
      jq -r '.FileSystem.FileSystemId')
    [[ $fs == fs-* ]] || die "create-file-system returned no file system id"
    state_set file_system "$fs"
    log "creating file system $fs (${CFG[DEPLOYMENT_TYPE]}, ${CFG[STORAGE_CAPACITY_GIB]} GiB, Lustre 2.15)"
  fi
  FS_ID=$fs
}

# wait_lifecycle WHAT DESCRIBE_CMD JQ_PATH: polls until AVAILABLE, failing fast
# on every state that will not get there by waiting, and at the deadline.
wait_lifecycle() {
  local what=$1 jqpath=$2 state start now
  shift 2
  start=$(date +%s)
  while true; do
    state=$("$@" | jq -r "$jqpath // \"MISSING\"")
    case $state in
      AVAILABLE) log "$what is AVAILABLE"; return 0 ;;
      CREATING | UPDATING) ;;
      FAILED) die "$what FAILED: $("$@" | jq -r '.. | .FailureDetails?.Message? // empty' | head -1)" ;;
      MISCONFIGURED | MISCONFIGURED_UNAVAILABLE)
        die "$what is $state: check the security group rules (TCP 988, 1018-1023; all traffic with EFA) and the S3 link's permissions, then run 'fsx up' again" ;;
      DELETING | DELETED) die "$what is $state: it is going away; run 'fsx down' then 'fsx up'" ;;
      MISSING) die "$what is not found" ;;
      *) die "$what is in state $state, which this toolkit does not know" ;;
    esac
    now=$(date +%s)
    within_deadline "$start" ||
      die "$what still $state after ${CFG[WAIT_TIMEOUT_S]} s (WAIT_TIMEOUT_S); it may still finish: run 'fsx status'"
    log "$what: $state ($((now - start)) s)"
    sleep "${CFG[POLL_INTERVAL_S]}"
  done
}

wait_file_system() {
  wait_lifecycle "file system $FS_ID" '.FileSystems[0].Lifecycle' \
    awsj fsx describe-file-systems --file-system-ids "$FS_ID"
}

# ensure_data_repository_association: the S3 link (SCRATCH_2 and
# PERSISTENT_2 alike), auto-import and auto-export of new, changed and
# deleted files, between DRA_FILE_SYSTEM_PATH (the checkpoints' directory)
# and s3://S3_BUCKET/S3_EXPORT_PREFIX.
ensure_data_repository_association() {
  local dra
  dra=$(state_get data_repository_association)
  if [[ -z $dra ]]; then
    dra=$(awsj fsx describe-data-repository-associations \
      --filters "Name=file-system-id,Values=$FS_ID" |
      jq -r --arg p "${CFG[DRA_FILE_SYSTEM_PATH]}" \
        '[.Associations[] | select(.FileSystemPath == $p)][0].AssociationId // empty')
    [[ -n $dra ]] && state_set data_repository_association "$dra"
  fi
  if [[ -z $dra ]]; then
    local s3
    s3=$(jq -cn '{AutoImportPolicy: {Events: ["NEW", "CHANGED", "DELETED"]},
                  AutoExportPolicy: {Events: ["NEW", "CHANGED", "DELETED"]}}')
    dra=$(awsj fsx create-data-repository-association --file-system-id "$FS_ID" \
      --file-system-path "${CFG[DRA_FILE_SYSTEM_PATH]}" \
      --data-repository-path "s3://${CFG[S3_BUCKET]}/${CFG[S3_EXPORT_PREFIX]}" \
      --batch-import-meta-data-on-create --s3 "$s3" \
      --tags "Key=shardwise:stack,Value=${CFG[STACK_NAME]}" | jq -r '.Association.AssociationId')
    state_set data_repository_association "$dra"
    log "created data repository association $dra (${CFG[DRA_FILE_SYSTEM_PATH]} <-> s3://${CFG[S3_BUCKET]}/${CFG[S3_EXPORT_PREFIX]})"
  fi
  wait_lifecycle "data repository association $dra" '.Associations[0].Lifecycle' \
    awsj fsx describe-data-repository-associations --association-ids "$dra"
}

# throughput_json: from describe-file-systems JSON on stdin, one object per
# file system with the provisioned throughput. MB/s per TiB of storage:
# PERSISTENT_* report PerUnitStorageThroughput; SCRATCH_* report null and
# are designed for 200 MB/s per TiB baseline (SCRATCH_2 bursts higher on
# the network, and its disk write baseline is lower).
throughput_json() {
  jq -c '.FileSystems[] | . as $f | ($f.LustreConfiguration // {}) as $l
    | ($l.DeploymentType // "?") as $t
    | (if $l.PerUnitStorageThroughput != null then $l.PerUnitStorageThroughput
       elif ($t | startswith("SCRATCH")) then 200 else null end) as $per
    | {id: $f.FileSystemId, lifecycle: $f.Lifecycle, type: $t,
       capacity_gib: $f.StorageCapacity, per_tib_mbps: $per,
       total_mbps: (if $per == null or $f.StorageCapacity == null then null
                    else ($f.StorageCapacity / 1024 * $per) end),
       dns: $f.DNSName, mount_name: $l.MountName,
       note: (if $t == "SCRATCH_2" then "baseline; bursts to 1300 MB/s/TiB on the network, disk writes about 100 MB/s/TiB"
              elif $t == "SCRATCH_1" then "baseline" else "provisioned" end)}'
}

# linked_associations FS: how many data repository associations link FS to S3.
linked_associations() {
  awsj fsx describe-data-repository-associations --filters "Name=file-system-id,Values=$1" |
    jq '[.Associations[] | select(.Lifecycle != "DELETING" and .Lifecycle != "FAILED")] | length'
}

# wait_exported FS: until CloudWatch's AgeOfOldestQueuedMessage for FS (the
# age of the oldest change automatic export has not written to S3 yet) reads
# 0 in a datapoint of the last few minutes; dies at the deadline, or when
# the metric has no recent datapoint, since then nothing confirms it.
wait_exported() {
  local fs=$1 start age
  start=$(date +%s)
  while true; do
    age=$(awsj cloudwatch get-metric-statistics --namespace AWS/FSx \
      --metric-name AgeOfOldestQueuedMessage --dimensions "Name=FileSystemId,Value=$fs" \
      --start-time "$(date -u -d '-5 minutes' +%Y-%m-%dT%H:%M:%SZ)" \
      --end-time "$(date -u +%Y-%m-%dT%H:%M:%SZ)" --period 60 --statistics Maximum |
      jq -r '.Datapoints | sort_by(.Timestamp) | last | .Maximum // "none"')
    if [[ $age =~ ^0(\.0*)?$ ]]; then
      log "file system $fs: the export queue is empty; every change is in S3"
      return 0
    fi
    within_deadline "$start" ||
      die "cannot confirm that file system $fs exported every change to S3 (AgeOfOldestQueuedMessage: $age after ${CFG[WAIT_TIMEOUT_S]} s). It was not deleted. Check the bucket, then run 'fsx down' again, or 'fsx down --discard-unexported' to delete it anyway"
    if [[ $age == none ]]; then
      log "file system $fs: no recent AgeOfOldestQueuedMessage datapoint yet; waiting"
    else
      log "file system $fs: oldest unexported change $age s old; waiting for the export"
    fi
    sleep "${CFG[POLL_INTERVAL_S]}"
  done
}
