# shellcheck shell=bash
# How the FSx CSI controller gets its AWS permissions (CSI_IDENTITY):
#   irsa          an IAM role for its service account through the cluster's
#                 OIDC provider (eksctl create iamserviceaccount): cluster.sh
#   pod-identity  EKS Pod Identity: an IAM role that trusts
#                 pods.eks.amazonaws.com, and an association of that role
#                 with the controller's service account; the cluster's
#                 eks-pod-identity-agent add-on hands out the credentials.
#                 No OIDC provider, no annotation on the service account.
# Both reuse what someone else made for the controller and never delete it.

POD_IDENTITY_AGENT=eks-pod-identity-agent

ensure_csi_identity() { # (after check_csi_identity)
  if [[ ${CFG[CSI_IDENTITY]} == pod-identity ]]; then
    ensure_pod_identity
  else
    ensure_oidc_provider
    ensure_csi_role
  fi
}

# check_csi_identity: before `up` changes anything, what CSI_IDENTITY needs:
# the stack was not set up with the other one, and for Pod Identity the
# cluster runs the agent: the eks-pod-identity-agent add-on ACTIVE, EKS Auto
# Mode (the agent built in), or a DaemonSet kube-system/eks-pod-identity-agent
# (installed some other way).
check_csi_identity() {
  local other status auto
  if [[ ${CFG[CSI_IDENTITY]} == pod-identity ]]; then other=$(state_get csi_role); else other=$(state_get csi_pod_role); fi
  [[ -z $other ]] ||
    die "stack ${CFG[STACK_NAME]} was set up with the other CSI_IDENTITY (IAM role $other is recorded for it): keep that one, or run 'fsx down' first; nothing was changed"
  [[ ${CFG[CSI_IDENTITY]} == pod-identity ]] || return 0
  # after a lost state file: this stack's IRSA role has the same name
  if aws_exists cloudformation describe-stacks --stack-name "$(csi_stack_name)" &&
    [[ $(stack_owner "$(csi_stack_name)") == "${CFG[STACK_NAME]}" ]]; then
    die "stack ${CFG[STACK_NAME]} has an IRSA role for the CSI controller (eksctl stack $(csi_stack_name)): keep CSI_IDENTITY=irsa, or run 'fsx down' with it first; nothing was changed"
  fi
  if aws_exists eks describe-addon --cluster-name "${CFG[CLUSTER_NAME]}" --addon-name "$POD_IDENTITY_AGENT"; then
    status=$(awsj eks describe-addon --cluster-name "${CFG[CLUSTER_NAME]}" \
      --addon-name "$POD_IDENTITY_AGENT" | jq -r '.addon.status // empty')
  fi
  [[ ${status:-} == ACTIVE ]] && return 0
  auto=$(awsj eks describe-cluster --name "${CFG[CLUSTER_NAME]}" | jq -r '.cluster.computeConfig.enabled // false')
  if [[ $auto == true ]]; then
    log "EKS Auto Mode: the Pod Identity agent is built in"
    return 0
  fi
  if [[ -z ${status:-} ]] && kubectl get daemonset "$POD_IDENTITY_AGENT" -n kube-system >/dev/null 2>&1; then
    log "Pod Identity agent: DaemonSet kube-system/$POD_IDENTITY_AGENT (not the EKS add-on)"
    return 0
  fi
  die "CSI_IDENTITY=pod-identity needs the Pod Identity agent on cluster ${CFG[CLUSTER_NAME]} (the $POD_IDENTITY_AGENT add-on is ${status:-not installed}, and the cluster is not in EKS Auto Mode): install it with 'aws eks create-addon --cluster-name ${CFG[CLUSTER_NAME]} --addon-name $POD_IDENTITY_AGENT', or use CSI_IDENTITY=irsa; nothing was changed"
}

# The role's trust policy: the Pod Identity agent assumes it for the pod.
pod_identity_trust() {
  jq -cn '{Version: "2012-10-17", Statement: [{Effect: "Allow",
    Principal: {Service: "pods.eks.amazonaws.com"},
    Action: ["sts:AssumeRole", "sts:TagSession"]}]}'
}

# The ids of the associations of the controller's service account.
csi_associations() {
  awsj eks list-pod-identity-associations --cluster-name "${CFG[CLUSTER_NAME]}" \
    --namespace "$CSI_NAMESPACE" --service-account "$CSI_SERVICE_ACCOUNT" |
    jq -r '.associations[]?.associationId'
}

# association_json ID: the association, as describe-pod-identity-association gives it.
association_json() {
  awsj eks describe-pod-identity-association --cluster-name "${CFG[CLUSTER_NAME]}" \
    --association-id "$1" | jq -c '.association'
}

# association_ours JSON: whether an association (as association_json gives it) carries this stack's tag.
association_ours() { [[ $(jq -r '.tags["shardwise:stack"] // empty' <<<"$1") == "${CFG[STACK_NAME]}" ]]; }

# role_owner ROLE: the shardwise:stack tag of an IAM role ("" if untagged).
role_owner() {
  awsj iam get-role --role-name "$1" |
    jq -r '.Role.Tags // [] | map(select(.Key == "shardwise:stack"))[0].Value // empty'
}

# trusts_pods ROLE: whether the role's trust policy lets the Pod Identity agent assume it.
trusts_pods() {
  awsj iam get-role --role-name "$1" | jq -e '.Role.AssumeRolePolicyDocument
    | (if type == "string" then fromjson else . end) | .Statement
    | any(.Principal.Service? // [] | if type == "array" then any(. == "pods.eks.amazonaws.com")
          else . == "pods.eks.amazonaws.com" end)' >/dev/null
}

# ensure_pod_identity (after check_csi_identity): an association someone
# else made for the controller is used as it is; else this toolkit makes the
# role (tagged) and the association (tagged), records both, adopts them by
# tag after a lost state file, and makes again what it recorded but is gone.
ensure_pod_identity() {
  local role arn id ids assoc part policy
  role=$(csi_role_name)
  ids=$(csi_associations) # (a failed call stops here, not as "none")
  for id in $ids; do
    assoc=$(association_json "$id")
    if ! association_ours "$assoc"; then
      log "reusing Pod Identity association $id (role $(jq -r .roleArn <<<"$assoc")) of $CSI_NAMESPACE/$CSI_SERVICE_ACCOUNT (not this toolkit's: 'down' keeps it)"
      # shellcheck disable=SC2034 # read by ensure_csi_driver (cluster.sh)
      CSI_ROLE_ARN=""
      return 0
    fi
    [[ -n $(state_get csi_pod_identity) ]] || log "Pod Identity association $id is ours (found by tag)"
    state_set csi_pod_identity "$id"
  done
  id=$(state_get csi_pod_identity)
  if [[ -n $id ]] && ! grep -qx -- "$id" <<<"$ids"; then
    log "Pod Identity association $id is recorded but gone: making it again"
    state_del csi_pod_identity
  fi
  if [[ -n $(state_get csi_pod_role) ]] && ! aws_exists iam get-role --role-name "$role"; then
    log "IAM role $role is recorded but gone: making it again"
    state_del csi_pod_role
  fi
  if [[ -z $(state_get csi_pod_role) ]]; then
    if aws_exists iam get-role --role-name "$role"; then
      [[ $(role_owner "$role") == "${CFG[STACK_NAME]}" ]] ||
        die "IAM role $role exists but is not tagged shardwise:stack=${CFG[STACK_NAME]}: it was made by something else; set STACK_NAME to another name, or delete the role"
      trusts_pods "$role" ||
        die "IAM role $role is tagged for stack ${CFG[STACK_NAME]} but does not trust pods.eks.amazonaws.com (an IRSA role?): run 'fsx down' with CSI_IDENTITY=irsa first"
      log "IAM role $role is ours (found by tag)"
    else
      awsj iam create-role --role-name "$role" --assume-role-policy-document "$(pod_identity_trust)" \
        --description "FSx CSI controller of shardwise stack ${CFG[STACK_NAME]} (EKS Pod Identity)" \
        --tags "Key=shardwise:stack,Value=${CFG[STACK_NAME]}" >/dev/null
      log "created IAM role $role (trusts pods.eks.amazonaws.com)"
    fi
    state_set csi_pod_role "$role"
  fi
  part=$(partition) || exit 1
  policy="arn:$part:iam::aws:policy/AmazonFSxFullAccess"
  # attached unless it is (a second up, or one after a failure here)
  if ! awsj iam list-attached-role-policies --role-name "$role" |
    jq -e --arg p "$policy" 'any(.AttachedPolicies[]; .PolicyArn == $p)' >/dev/null; then
    awsj iam attach-role-policy --role-name "$role" --policy-arn "$policy" >/dev/null
  fi
  arn=$(awsj iam get-role --role-name "$role" | jq -r .Role.Arn)
  if [[ -z $(state_get csi_pod_identity) ]]; then
    id=$(awsj eks create-pod-identity-association --cluster-name "${CFG[CLUSTER_NAME]}" \
      --namespace "$CSI_NAMESPACE" --service-account "$CSI_SERVICE_ACCOUNT" --role-arn "$arn" \
      --tags "shardwise:stack=${CFG[STACK_NAME]}" | jq -r '.association.associationId // empty')
    [[ -n $id ]] || die "aws eks create-pod-identity-association returned no association id"
    state_set csi_pod_identity "$id"
    log "associated $CSI_NAMESPACE/$CSI_SERVICE_ACCOUNT with IAM role $role (Pod Identity $id)"
  fi
  # shellcheck disable=SC2034 # read by ensure_csi_driver: no annotation, the agent
  CSI_ROLE_ARN="" # gives the pod its credentials
}

# ensure_csi_credentials (after ensure_csi_driver): with Pod Identity, EKS
# sets a pod's credential variables when the pod is created, and only once
# its service account's association has propagated (seconds). Controller
# pods made before that (a driver that was running already, or the chart
# installed right after the association) have no credentials, and every
# volume the driver provisions fails on permissions. Restarts the
# controller until its pods have them (up to 4 times, POLL_INTERVAL_S apart).
CSI_CONTROLLER=fsx-csi-controller # the Deployment of the chart and of the EKS add-on
ensure_csi_credentials() {
  [[ ${CFG[CSI_IDENTITY]} == pod-identity ]] || return 0
  local pods sas missing try
  for try in 1 2 3 4 5; do
    pods=$(kubectl get pods -n "$CSI_NAMESPACE" -l "app=$CSI_CONTROLLER" -o json)
    sas=$(jq -r '[.items[].spec.serviceAccountName] | unique | join(",")' <<<"$pods")
    [[ -n $sas ]] ||
      die "no FSx CSI controller pod (label app=$CSI_CONTROLLER) in namespace $CSI_NAMESPACE: the driver's controller is not running there; check 'kubectl get deployment $CSI_CONTROLLER -n $CSI_NAMESPACE'"
    [[ $sas == "$CSI_SERVICE_ACCOUNT" ]] ||
      die "the FSx CSI controller runs as service account $sas, not $CSI_NAMESPACE/$CSI_SERVICE_ACCOUNT, the one the Pod Identity association is for: an FSx CSI driver installed some other way; give its service account the permissions yourself, or use CSI_IDENTITY=irsa"
    missing=$(jq -r '[.items[] | select(all(.spec.containers[].env[]?;
      .name != "AWS_CONTAINER_CREDENTIALS_FULL_URI")) | .metadata.name] | join(" ")' <<<"$pods")
    if [[ -z $missing ]]; then
      ((try == 1)) || log "the FSx CSI controller's pods have their Pod Identity credentials"
      return 0
    fi
    ((try < 5)) || break
    log "FSx CSI controller pod(s) $missing started without Pod Identity credentials (the association propagates in seconds): restarting $CSI_NAMESPACE/$CSI_CONTROLLER in ${CFG[POLL_INTERVAL_S]} s"
    sleep "${CFG[POLL_INTERVAL_S]}"
    kubectl rollout restart "deployment/$CSI_CONTROLLER" -n "$CSI_NAMESPACE" >/dev/null
    kubectl rollout status "deployment/$CSI_CONTROLLER" -n "$CSI_NAMESPACE" --timeout 5m >/dev/null
  done
  die "FSx CSI controller pod(s) $missing still have no Pod Identity credentials after 4 restarts: check the association ('aws eks list-pod-identity-associations --cluster-name ${CFG[CLUSTER_NAME]} --namespace $CSI_NAMESPACE') and the $POD_IDENTITY_AGENT add-on; volumes cannot be provisioned until then"
}

# delete_pod_identity [KEEP]: `down`'s part: the association and the role,
# each only if it still carries this stack's tag. KEEP (non-empty): the CSI
# driver stays (other volumes use it), so its credentials stay too.
delete_pod_identity() {
  local keep=${1:-} id role assoc policies policy
  id=$(state_get csi_pod_identity) role=$(state_get csi_pod_role)
  if [[ -n $keep && -n $id$role ]]; then
    log "Pod Identity association ${id:-(none)} and IAM role ${role:-(none)} kept: the kept FSx CSI driver uses them (delete them with it)"
    state_del csi_pod_identity
    state_del csi_pod_role
    return 0
  fi
  if [[ -n $id ]]; then
    if aws_exists eks describe-pod-identity-association --cluster-name "${CFG[CLUSTER_NAME]}" \
      --association-id "$id"; then
      assoc=$(association_json "$id")
      if association_ours "$assoc"; then
        awsj eks delete-pod-identity-association --cluster-name "${CFG[CLUSTER_NAME]}" \
          --association-id "$id" >/dev/null
        log "deleted Pod Identity association $id"
      else
        log "Pod Identity association $id is not tagged shardwise:stack=${CFG[STACK_NAME]}: kept"
      fi
    fi
    state_del csi_pod_identity
  fi
  if [[ -n $role ]]; then
    if ! aws_exists iam get-role --role-name "$role"; then
      log "IAM role $role is gone already"
    elif [[ $(role_owner "$role") != "${CFG[STACK_NAME]}" ]]; then
      log "IAM role $role is not tagged shardwise:stack=${CFG[STACK_NAME]}: kept"
    else
      # IAM deletes no role that still has policies attached
      policies=$(awsj iam list-attached-role-policies --role-name "$role" |
        jq -r '.AttachedPolicies[].PolicyArn')
      for policy in $policies; do
        awsj iam detach-role-policy --role-name "$role" --policy-arn "$policy" >/dev/null
      done
      awsj iam delete-role --role-name "$role" >/dev/null
      log "deleted IAM role $role"
    fi
    state_del csi_pod_role
  fi
}
