# shellcheck shell=bash
# OIDC, IRSA, the CSI driver, and the Kubernetes objects (rendered from deploy/k8s).

CSI_NAMESPACE=kube-system            # the chart's upstream defaults
CSI_SERVICE_ACCOUNT=fsx-csi-controller-sa
CSI_RELEASE=aws-fsx-csi-driver
CSI_REPO=https://kubernetes-sigs.github.io/aws-fsx-csi-driver

# check_kube_context: every kubectl and helm call (the deletions of `down`
# too) goes to the current kube context; it must be CLUSTER_NAME's API server.
check_kube_context() {
  local want have
  want=$(awsj eks describe-cluster --name "${CFG[CLUSTER_NAME]}" | jq -r '.cluster.endpoint // empty')
  [[ -n $want ]] || die "cluster ${CFG[CLUSTER_NAME]} reports no API endpoint"
  have=$(kubectl config view --minify -o json | jq -r '.clusters[0].cluster.server // empty')
  [[ -n $have && ${have%/} == "${want%/}" ]] ||
    die "the current kube context ($(kubectl config current-context 2>/dev/null || echo none)) talks to ${have:-no API server}, not to cluster ${CFG[CLUSTER_NAME]} ($want): nothing was changed; switch with 'aws eks update-kubeconfig --name ${CFG[CLUSTER_NAME]} --region ${CFG[AWS_REGION]}'"
}

ensure_oidc_provider() {
  local issuer host
  issuer=$(awsj eks describe-cluster --name "${CFG[CLUSTER_NAME]}" | jq -r '.cluster.identity.oidc.issuer // empty')
  [[ -n $issuer ]] || die "cluster ${CFG[CLUSTER_NAME]} reports no OIDC issuer"
  host=${issuer#https://}
  if awsj iam list-open-id-connect-providers |
    jq -e --arg h "${host#*/}" '.OpenIDConnectProviderList | any(.Arn | endswith($h))' >/dev/null; then
    log "OIDC provider for $host is associated"
    return 0
  fi
  eksctl utils associate-iam-oidc-provider --cluster "${CFG[CLUSTER_NAME]}" \
    --region "${CFG[AWS_REGION]}" --approve
  state_set oidc_provider "$host" # recorded for the record; `down` leaves it: other add-ons share it
}

csi_role_name() { printf '%s-fsx-csi' "${CFG[STACK_NAME]}"; }

# The CloudFormation stack eksctl makes for the service account's role.
csi_stack_name() {
  printf 'eksctl-%s-addon-iamserviceaccount-%s-%s' "${CFG[CLUSTER_NAME]}" "$CSI_NAMESPACE" \
    "$CSI_SERVICE_ACCOUNT"
}

# stack_owner STACK: the shardwise:stack tag of a CloudFormation stack ("" if untagged).
stack_owner() {
  awsj cloudformation describe-stacks --stack-name "$1" |
    jq -r '.Stacks[0].Tags // [] | map(select(.Key == "shardwise:stack"))[0].Value // empty'
}

# ensure_csi_role: the IAM role the CSI controller assumes (IRSA). The
# controller only calls FSx APIs; S3 access goes through FSx's own
# service-linked role, so no S3 policy is attached here. An existing eksctl
# stack or service account for the controller (the upstream install guide
# uses the same names) is reused, never recorded: `eksctl create
# iamserviceaccount` would silently skip it, and `down` must not delete it.
ensure_csi_role() {
  local role stack owner arn part
  role=$(csi_role_name) stack=$(csi_stack_name)
  if [[ -z $(state_get csi_role) ]]; then
    if aws_exists cloudformation describe-stacks --stack-name "$stack"; then
      owner=$(stack_owner "$stack")
      if [[ $owner != "${CFG[STACK_NAME]}" ]]; then
        arn=$(awsj cloudformation describe-stacks --stack-name "$stack" |
          jq -r '[.Stacks[0].Outputs[]? | select(.OutputKey == "Role1")][0].OutputValue // empty')
        [[ -n $arn ]] || die "eksctl stack $stack exists (not this toolkit's) but names no role (output Role1)"
        CSI_ROLE_ARN=$arn
        log "reusing IAM role $arn of eksctl stack $stack (not this toolkit's: 'down' keeps it)"
        return 0
      fi
      state_set csi_role "$role" # ours (tagged): adopted after a lost state file
      log "IAM role $role (eksctl stack $stack, found by tag)"
    elif kubectl get serviceaccount "$CSI_SERVICE_ACCOUNT" -n "$CSI_NAMESPACE" >/dev/null 2>&1; then
      arn=$(kubectl get serviceaccount "$CSI_SERVICE_ACCOUNT" -n "$CSI_NAMESPACE" -o json |
        jq -r '.metadata.annotations["eks.amazonaws.com/role-arn"] // empty')
      [[ -n $arn ]] ||
        die "service account $CSI_NAMESPACE/$CSI_SERVICE_ACCOUNT exists without an IAM role (annotation eks.amazonaws.com/role-arn): annotate it, or delete it and run 'fsx up' again"
      CSI_ROLE_ARN=$arn
      log "reusing IAM role $arn of service account $CSI_NAMESPACE/$CSI_SERVICE_ACCOUNT (not this toolkit's)"
      return 0
    else
      if aws_exists iam get-role --role-name "$role"; then
        die "IAM role $role exists but this toolkit's state does not record it: it was made by something else; set STACK_NAME to another name, or delete the role"
      fi
      part=$(partition) || exit 1
      eksctl create iamserviceaccount --cluster "${CFG[CLUSTER_NAME]}" --region "${CFG[AWS_REGION]}" \
        --namespace "$CSI_NAMESPACE" --name "$CSI_SERVICE_ACCOUNT" --role-name "$role" --role-only \
        --attach-policy-arn "arn:$part:iam::aws:policy/AmazonFSxFullAccess" \
        --tags "shardwise:stack=${CFG[STACK_NAME]}" --approve
      [[ $(stack_owner "$stack") == "${CFG[STACK_NAME]}" ]] ||
        die "eksctl reported success but stack $stack is not tagged shardwise:stack=${CFG[STACK_NAME]}: not recording it"
      state_set csi_role "$role"
      log "created IAM role $role for $CSI_NAMESPACE/$CSI_SERVICE_ACCOUNT"
    fi
  fi
  arn=$(awsj iam get-role --role-name "$role" | jq -r .Role.Arn)
  CSI_ROLE_ARN=$arn
}

# ensure_csi_driver: the chart with its defaults (image, namespace, service
# account, created by the chart and annotated with the role).
ensure_csi_driver() {
  if helm status "$CSI_RELEASE" --namespace "$CSI_NAMESPACE" >/dev/null 2>&1; then
    # Ours carries the value shardwiseStack (the chart ignores it): adopted
    # after a lost state file, so that `down` removes it; anyone else's is
    # only used.
    if [[ -z $(state_get helm_release) ]] &&
      [[ $(helm get values "$CSI_RELEASE" --namespace "$CSI_NAMESPACE" -o json |
        jq -r '.shardwiseStack // empty') == "${CFG[STACK_NAME]}" ]]; then
      state_set helm_release "$CSI_NAMESPACE/$CSI_RELEASE"
      log "Helm release $CSI_NAMESPACE/$CSI_RELEASE is ours (found by its value shardwiseStack)"
    else
      log "Helm release $CSI_NAMESPACE/$CSI_RELEASE is installed"
    fi
    return 0
  fi
  if kubectl get csidriver fsx.csi.aws.com >/dev/null 2>&1; then
    # The EKS add-on, a kustomize install, another release name: it serves
    # our volumes as well; installing a second one would fail or fight it.
    log "an FSx CSI driver is installed already (CSIDriver fsx.csi.aws.com): reused; 'down' leaves it"
    return 0
  fi
  local version=() role=()
  [[ -n ${CFG[CSI_CHART_VERSION]} ]] && version=(--version "${CFG[CSI_CHART_VERSION]}")
  # IRSA: the role on the service account; Pod Identity: no annotation
  if [[ -n $CSI_ROLE_ARN ]]; then
    role=(--set-string "controller.serviceAccount.annotations.eks\.amazonaws\.com/role-arn=$CSI_ROLE_ARN")
  elif [[ ${CFG[CSI_IDENTITY]} == irsa ]]; then
    die "no IAM role for the CSI controller (IRSA): nothing to annotate its service account with"
  fi
  helm repo add aws-fsx-csi-driver "$CSI_REPO" --force-update >/dev/null
  helm upgrade --install "$CSI_RELEASE" aws-fsx-csi-driver/aws-fsx-csi-driver \
    --namespace "$CSI_NAMESPACE" "${version[@]}" \
    --set "controller.serviceAccount.name=$CSI_SERVICE_ACCOUNT" \
    --set-string "shardwiseStack=${CFG[STACK_NAME]}" "${role[@]}" \
    --wait --timeout 10m
  state_set helm_release "$CSI_NAMESPACE/$CSI_RELEASE"
  log "installed the FSx CSI driver ($CSI_NAMESPACE/$CSI_RELEASE)"
}

ensure_namespace() {
  local ns=${CFG[NAMESPACE]} owner
  if kubectl get namespace "$ns" >/dev/null 2>&1; then
    # ours (labelled): adopted after a lost state file; anyone else's: used
    owner=$(kubectl get namespace "$ns" -o json | jq -r '.metadata.labels["shardwise.io/stack"] // empty')
    [[ $owner == "${CFG[STACK_NAME]}" && -z $(state_get namespace) ]] && state_set namespace "$ns"
    return 0
  fi
  kubectl create namespace "$ns" >/dev/null
  kubectl label namespace "$ns" "shardwise.io/stack=${CFG[STACK_NAME]}" >/dev/null
  state_set namespace "$ns"
}

# render_overlay DIR BASE PATCHES...: a kustomization in DIR (next to the state
# file) over deploy/k8s/BASE, in NAMESPACE (or RENDER_NAMESPACE), with the
# given JSON6902 patches.
render_overlay() {
  local dir=$1 base=$2 rel
  shift 2
  mkdir -p "$dir"
  rel=$(realpath --relative-to="$dir" "$K8S_DIR/$base")
  {
    echo "apiVersion: kustomize.config.k8s.io/v1beta1"
    echo "kind: Kustomization"
    echo "namespace: ${RENDER_NAMESPACE:-${CFG[NAMESPACE]}}"
    echo "resources:"
    echo "- $rel"
    [[ -n ${CFG[IMAGE]} ]] && printf 'images:\n- name: shardwise-trainer\n  newName: %s\n  newTag: "%s"\n' \
      "${CFG[IMAGE]%:*}" "${CFG[IMAGE]##*:}"
    echo "patches:"
    printf '%s\n' "$@"
  } >"$dir/kustomization.yaml"
}

patch() { # patch KIND NAME OP PATH VALUE: one JSON6902 operation as a kustomize patch
  printf -- '- target: {kind: %s, name: %s}\n  patch: |-\n    [{"op": "%s", "path": "%s", "value": %s}]\n' "$@"
}

# ensure_client_tuning: the DaemonSet that applies AWS's recommended Lustre
# client settings on the training nodes (deploy/k8s/lustre-tuning), in
# kube-system, labelled with the stack so that down removes exactly it.
ensure_client_tuning() {
  [[ ${CFG[TUNE_CLIENTS]} == true ]] || return 0
  local dir
  dir="$(dirname "${CFG[STATE_FILE]}")/${CFG[STACK_NAME]}-lustre-tuning"
  RENDER_NAMESPACE=$CSI_NAMESPACE render_overlay "$dir" lustre-tuning \
    "$(patch DaemonSet shardwise-lustre-tuning replace /spec/template/spec/nodeSelector "$(selector_json)")"
  printf 'labels:\n- pairs:\n    shardwise.io/stack: %s\n' "${CFG[STACK_NAME]}" >>"$dir/kustomization.yaml"
  kubectl apply -k "$dir" >/dev/null
  state_set lustre_tuning "$CSI_NAMESPACE/shardwise-lustre-tuning"
  log "Lustre client tuning on the training nodes: kubectl logs -n $CSI_NAMESPACE daemonset/shardwise-lustre-tuning"
}

# selector_json: NODE_SELECTOR (k=v,k2=v2) as a nodeSelector map.
selector_json() {
  jq -cn --arg s "${CFG[NODE_SELECTOR]}" '$s | split(",") | map(select(. != "") | split("=")
    | {(.[0]): (.[1:] | join("="))}) | add // {}'
}

apply_storage() {
  local dns mount dir gib cap subnet zone
  # The capacity as AWS reports it (an adopted or resized file system may
  # differ from STORAGE_CAPACITY_GIB).
  read -r dns mount gib subnet < <(awsj fsx describe-file-systems --file-system-ids "$FS_ID" |
    jq -r '.FileSystems[0] | "\(.DNSName) \(.LustreConfiguration.MountName) \(.StorageCapacity) \(.SubnetIds[0])"')
  [[ -n $dns && $mount != null ]] || die "file system $FS_ID reports no DNS name or mount name"
  [[ $gib =~ ^[0-9]+$ ]] || die "file system $FS_ID reports no storage capacity"
  # Pods that mount it are pinned to its zone through the volume's nodeAffinity.
  zone=$(awsj ec2 describe-subnets --subnet-ids "$subnet" | jq -r '.Subnets[0].AvailabilityZone // empty')
  [[ -n $zone ]] || die "cannot tell the zone of file system $FS_ID (subnet $subnet)"
  cap=${gib}Gi
  dir="$(dirname "${CFG[STATE_FILE]}")/${CFG[STACK_NAME]}-storage"
  render_overlay "$dir" base \
    "$(patch PersistentVolume fsx-pv replace /spec/csi/volumeHandle "\"$FS_ID\"")" \
    "$(patch PersistentVolume fsx-pv replace /spec/csi/volumeAttributes/dnsname "\"$dns\"")" \
    "$(patch PersistentVolume fsx-pv replace /spec/csi/volumeAttributes/mountname "\"$mount\"")" \
    "$(patch PersistentVolume fsx-pv replace /spec/capacity/storage "\"$cap\"")" \
    "$(patch PersistentVolume fsx-pv replace /spec/nodeAffinity/required/nodeSelectorTerms/0/matchExpressions/0/values "[\"$zone\"]")" \
    "$(patch PersistentVolume fsx-pv replace /metadata/name "\"${CFG[PV_NAME]}\"")" \
    "$(patch PersistentVolumeClaim fsx-pvc replace /spec/resources/requests/storage "\"$cap\"")" \
    "$(patch PersistentVolumeClaim fsx-pvc replace /spec/volumeName "\"${CFG[PV_NAME]}\"")" \
    "$(patch PersistentVolumeClaim fsx-pvc replace /metadata/name "\"${CFG[PVC_NAME]}\"")"
  kubectl apply -k "$dir"
  state_set pv "${CFG[PV_NAME]}"
  state_set pvc "${CFG[NAMESPACE]}/${CFG[PVC_NAME]}"
  log "PersistentVolume ${CFG[PV_NAME]} and claim ${CFG[NAMESPACE]}/${CFG[PVC_NAME]} -> $FS_ID ($dns@tcp:/$mount, zone $zone)"
}
