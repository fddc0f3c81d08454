# shellcheck shell=bash
# Nodes, subnet and security groups: the rules Lustre clients and servers need.

# discover_nodes: sets NODE_INSTANCES, NODE_AZ, NODE_SUBNET, NODE_SGS from the
# cluster's actual nodes (NODE_SELECTOR narrows them to the training nodes), so
# the rules land on the security groups the nodes really carry (Karpenter and
# self-managed groups often do not carry the cluster security group).
discover_nodes() {
  local sel=() nodes info azs
  [[ -n ${CFG[NODE_SELECTOR]} ]] && sel=(-l "${CFG[NODE_SELECTOR]}")
  nodes=$(kubectl get nodes "${sel[@]}" -o json |
    jq -r '.items[].spec.providerID // empty | select(startswith("aws://")) | split("/") | last')
  [[ -n $nodes ]] ||
    die "no EC2 nodes found in cluster ${CFG[CLUSTER_NAME]}${CFG[NODE_SELECTOR]:+ with labels ${CFG[NODE_SELECTOR]}} (kubectl get nodes): start the training nodes first, or fix NODE_SELECTOR"
  # shellcheck disable=SC2086  # one instance id per word
  info=$(awsj ec2 describe-instances --instance-ids $nodes |
    jq -c '[.Reservations[].Instances[] | {id: .InstanceId, subnet: .SubnetId,
             az: .Placement.AvailabilityZone, sgs: [.SecurityGroups[].GroupId]}]')
  azs=$(jq -r '[.[].az] | unique | join(" ")' <<<"$info")
  [[ $azs != *" "* ]] ||
    die "the selected nodes span several availability zones ($azs); a Lustre file system lives in one, EFA does not cross zones and cross-zone traffic is billed: set NODE_SELECTOR to the training nodes of one zone"
  NODE_AZ=$azs
  NODE_SUBNET=$(jq -r '.[0].subnet' <<<"$info")
  NODE_SGS=$(jq -r '[.[].sgs[]] | unique | join(" ")' <<<"$info")
  NODE_INSTANCES=$(jq -r '[.[].id] | join(" ")' <<<"$info")
  if [[ -n ${CFG[SUBNET_ID]} ]]; then
    local az
    az=$(awsj ec2 describe-subnets --subnet-ids "${CFG[SUBNET_ID]}" | jq -r '.Subnets[0].AvailabilityZone')
    [[ $az == "$NODE_AZ" ]] ||
      die "SUBNET_ID ${CFG[SUBNET_ID]} is in $az but the nodes are in $NODE_AZ: use a subnet of the nodes' zone"
    NODE_SUBNET=${CFG[SUBNET_ID]}
  fi
  log "nodes: $(wc -w <<<"$NODE_INSTANCES") in $NODE_AZ, subnet $NODE_SUBNET, security groups $NODE_SGS"
}

# ensure_fsx_security_group VPC: the file system's own security group.
ensure_fsx_security_group() {
  local vpc=$1 sg
  sg=$(state_get security_group)
  if [[ -z $sg ]]; then # lost state: adopt only a group that carries our tag, in this VPC
    sg=$(awsj ec2 describe-security-groups --filters "Name=vpc-id,Values=$vpc" \
      "Name=tag:shardwise:stack,Values=${CFG[STACK_NAME]}" | jq -r '.SecurityGroups[0].GroupId // empty')
    [[ -n $sg ]] && state_set security_group "$sg" && log "security group $sg (found by tag)"
  fi
  if [[ -z $sg ]]; then
    sg=$(awsj ec2 create-security-group --group-name "${CFG[STACK_NAME]}-lustre" \
      --description "FSx for Lustre of ${CFG[STACK_NAME]} (shardwise deploy/aws/fsx)" \
      --vpc-id "$vpc" --tag-specifications "$(tag_spec security-group)" | jq -r .GroupId)
    state_set security_group "$sg"
    log "created security group $sg"
  fi
  FSX_SG=$sg
}

# add_rule DIRECTION SG PROTO FROM TO PEER_SG: one rule, recorded by id so that
# `down` revokes exactly the rules we added. A rule that already existed
# before us (Duplicate) is left alone and not recorded.
add_rule() {
  local dir=$1 sg=$2 proto=$3 from=$4 to=$5 peer=$6 key perm out rc=0 id
  key="rule:$sg:$dir:$proto:$from-$to:$peer"
  [[ -n $(state_get "$key") ]] && return 0
  perm=$(jq -cn --arg p "$proto" --argjson f "$from" --argjson t "$to" --arg g "$peer" \
    '[{IpProtocol: $p, UserIdGroupPairs: [{GroupId: $g, Description: "shardwise-fsx"}]}
      + (if $p == "-1" then {} else {FromPort: $f, ToPort: $t} end)]')
  out=$(awsj ec2 "authorize-security-group-$dir" --group-id "$sg" --ip-permissions "$perm" \
    --tag-specifications "$(tag_spec security-group-rule)" 2>&1) || rc=$?
  if ((rc != 0)); then
    [[ $out == *InvalidPermission.Duplicate* ]] || die "aws ec2 authorize-security-group-$dir on $sg: $out"
    # It exists. Ours (tagged: a run whose state file was lost) is recorded
    # again, so that `down` revokes it; anyone else's is left alone.
    id=$(our_rule "$dir" "$sg" "$proto" "$from" "$to" "$peer")
    if [[ -n $id ]]; then
      state_set "$key" "$id"
      log "rule $key is ours ($id, found by tag)"
    else
      log "rule $key existed already: left as is"
    fi
    return 0
  fi
  id=$(jq -r '.SecurityGroupRules[0].SecurityGroupRuleId' <<<"$out")
  state_set "$key" "$id"
}

# our_rule DIRECTION SG PROTO FROM TO PEER_SG: the id of that rule when it
# carries this stack's tag, else nothing.
our_rule() {
  local dir=$1 sg=$2 proto=$3 from=$4 to=$5 peer=$6
  awsj ec2 describe-security-group-rules --filters "Name=group-id,Values=$sg" \
    "Name=tag:shardwise:stack,Values=${CFG[STACK_NAME]}" |
    jq -r --argjson egress "$([[ $dir == egress ]] && echo true || echo false)" \
      --arg p "$proto" --argjson f "$from" --argjson t "$to" --arg g "$peer" \
      '[.SecurityGroupRules[] | select(.IsEgress == $egress and .IpProtocol == $p
         and .ReferencedGroupInfo.GroupId == $g
         and ($p == "-1" or (.FromPort == $f and .ToPort == $t)))][0].SecurityGroupRuleId // empty'
}

# ensure_rules: Lustre uses TCP 988 (LNet) and 1018-1023; with EFA, all traffic
# must flow both ways between the file system and its clients.
ensure_rules() {
  local node
  add_rule ingress "$FSX_SG" tcp 988 988 "$FSX_SG"
  add_rule ingress "$FSX_SG" tcp 1018 1023 "$FSX_SG"
  for node in $NODE_SGS; do
    add_rule ingress "$FSX_SG" tcp 988 988 "$node"      # clients -> servers
    add_rule ingress "$FSX_SG" tcp 1018 1023 "$node"
    add_rule ingress "$node" tcp 988 988 "$FSX_SG"      # servers -> clients
    add_rule ingress "$node" tcp 1018 1023 "$FSX_SG"
    if [[ ${CFG[EFA_ENABLED]} == true ]]; then
      add_rule ingress "$FSX_SG" -1 0 0 "$node"
      add_rule egress "$FSX_SG" -1 0 0 "$node"
      add_rule ingress "$node" -1 0 0 "$FSX_SG"
      add_rule egress "$node" -1 0 0 "$FSX_SG"
    fi
  done
  if [[ ${CFG[EFA_ENABLED]} == true ]]; then
    add_rule ingress "$FSX_SG" -1 0 0 "$FSX_SG"
    add_rule egress "$FSX_SG" -1 0 0 "$FSX_SG"
  fi
}

# revoke_recorded_rules: only the rules whose ids we recorded.
revoke_recorded_rules() {
  local key sg dir id
  while IFS= read -r key; do
    [[ -z $key ]] && continue
    IFS=: read -r _ sg dir _ <<<"$key"
    id=$(state_get "$key")
    log "revoking $dir rule $id on $sg"
    local out rc=0
    out=$(awsj ec2 "revoke-security-group-$dir" --group-id "$sg" --security-group-rule-ids "$id" 2>&1) || rc=$?
    if ((rc != 0)) && [[ ! $out =~ NotFound ]]; then die "revoking $id on $sg: $out"; fi
    state_del "$key"
  done < <(state_keys rule:)
}
