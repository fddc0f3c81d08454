# shellcheck shell=bash
# OIDC, IRSA, the CSI driver, and the Kubernetes objects (rendered from deploy/k8s).

CSI_NAMESPACE=kube-system            # the chart's upstream defaults
CSI_SERVICE_ACCOUNT=fsx-csi-controller-sa
CSI_RELEASE=aws-fsx-csi-driver
CSI_REPO=https://kubernetes-sigs.github.io/aws-fsx-csi-driver

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

# ensure_csi_role: the IAM role the CSI controller assumes (IRSA). The
# controller only calls FSx APIs; S3 access goes through FSx's own
# service-linked role, so no S3 policy is attached here.
ensure_csi_role() {
  local role arn
  role=$(csi_role_name)
  if [[ -z $(state_get csi_role) ]]; then
    if aws_exists iam get-role --role-name "$role"; then
      die "IAM role $role exists but this toolkit's state does not record it: it was made by something else; set STACK_NAME to another name, or delete the role"
    fi
    eksctl create iamserviceaccount --cluster "${CFG[CLUSTER_NAME]}" --region "${CFG[AWS_REGION]}" \
      --namespace "$CSI_NAMESPACE" --name "$CSI_SERVICE_ACCOUNT" --role-name "$role" --role-only \
      --attach-policy-arn "arn:$(partition):iam::aws:policy/AmazonFSxFullAccess" \
      --tags "shardwise:stack=${CFG[STACK_NAME]}" --approve
    state_set csi_role "$role"
    log "created IAM role $role for $CSI_NAMESPACE/$CSI_SERVICE_ACCOUNT"
  fi
  arn=$(awsj iam get-role --role-name "$role" | jq -r .Role.Arn)
  CSI_ROLE_ARN=$arn
}

# ensure_csi_driver: the chart with its defaults (image, namespace, service
# account, created by the chart and annotated with the role).
ensure_csi_driver() {
  if helm status "$CSI_RELEASE" --namespace "$CSI_NAMESPACE" >/dev/null 2>&1; then
    log "Helm release $CSI_NAMESPACE/$CSI_RELEASE is installed"
    return 0
  fi
  local version=()
  [[ -n ${CFG[CSI_CHART_VERSION]} ]] && version=(--version "${CFG[CSI_CHART_VERSION]}")
  helm repo add aws-fsx-csi-driver "$CSI_REPO" --force-update >/dev/null
  helm upgrade --install "$CSI_RELEASE" aws-fsx-csi-driver/aws-fsx-csi-driver \
    --namespace "$CSI_NAMESPACE" "${version[@]}" \
    --set "controller.serviceAccount.name=$CSI_SERVICE_ACCOUNT" \
    --set-string "controller.serviceAccount.annotations.eks\.amazonaws\.com/role-arn=$CSI_ROLE_ARN" \
    --wait --timeout 10m
  state_set helm_release "$CSI_NAMESPACE/$CSI_RELEASE"
  log "installed the FSx CSI driver ($CSI_NAMESPACE/$CSI_RELEASE)"
}

ensure_namespace() {
  local ns=${CFG[NAMESPACE]}
  kubectl get namespace "$ns" >/dev/null 2>&1 && return 0
  kubectl create namespace "$ns" >/dev/null
  kubectl label namespace "$ns" "shardwise.io/stack=${CFG[STACK_NAME]}" >/dev/null
  state_set namespace "$ns"
}

# render_overlay DIR BASE PATCHES...: a kustomization in DIR (next to the state
# file) over deploy/k8s/BASE, in NAMESPACE, with the given JSON6902 patches.
render_overlay() {
  local dir=$1 base=$2 rel
  shift 2
  mkdir -p "$dir"
  rel=$(realpath --relative-to="$dir" "$K8S_DIR/$base")
  {
    echo "apiVersion: kustomize.config.k8s.io/v1beta1"
    echo "kind: Kustomization"
    echo "namespace: ${CFG[NAMESPACE]}"
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

apply_storage() {
  local dns mount dir cap=${CFG[STORAGE_CAPACITY_GIB]}Gi
  read -r dns mount < <(awsj fsx describe-file-systems --file-system-ids "$FS_ID" |
    jq -r '.FileSystems[0] | "\(.DNSName) \(.LustreConfiguration.MountName)"')
  [[ -n $dns && $mount != null ]] || die "file system $FS_ID reports no DNS name or mount name"
  dir="$(dirname "${CFG[STATE_FILE]}")/${CFG[STACK_NAME]}-storage"
  render_overlay "$dir" base \
    "$(patch PersistentVolume fsx-pv replace /spec/csi/volumeHandle "\"$FS_ID\"")" \
    "$(patch PersistentVolume fsx-pv replace /spec/csi/volumeAttributes/dnsname "\"$dns\"")" \
    "$(patch PersistentVolume fsx-pv replace /spec/csi/volumeAttributes/mountname "\"$mount\"")" \
    "$(patch PersistentVolume fsx-pv replace /spec/capacity/storage "\"$cap\"")" \
    "$(patch PersistentVolume fsx-pv replace /metadata/name "\"${CFG[PV_NAME]}\"")" \
    "$(patch PersistentVolumeClaim fsx-pvc replace /spec/resources/requests/storage "\"$cap\"")" \
    "$(patch PersistentVolumeClaim fsx-pvc replace /spec/volumeName "\"${CFG[PV_NAME]}\"")" \
    "$(patch PersistentVolumeClaim fsx-pvc replace /metadata/name "\"${CFG[PVC_NAME]}\"")"
  kubectl apply -k "$dir"
  state_set pv "${CFG[PV_NAME]}"
  state_set pvc "${CFG[NAMESPACE]}/${CFG[PVC_NAME]}"
  log "PersistentVolume ${CFG[PV_NAME]} and claim ${CFG[NAMESPACE]}/${CFG[PVC_NAME]} -> $FS_ID ($dns@tcp:/$mount)"
}
