#!/bin/sh
# efa-check: what a training pod on an EFA node should see before NCCL runs
# (the image's default command). Exits non-zero, naming the missing piece.
set -u
fail=0
say() { printf '%s\n' "$*"; }
if ls /dev/infiniband/uverbs* >/dev/null 2>&1; then
  say "ok: EFA devices in the pod: $(echo /dev/infiniband/uverbs*)"
else
  say "missing: no /dev/infiniband/uverbs*: request vpc.amazonaws.com/efa in the pod's resources (the EFA device plugin must run on the node)"
  fail=1
fi
if fi_info -p efa >/dev/null 2>&1; then
  say "ok: libfabric sees the efa provider"
else
  say "missing: fi_info -p efa finds no EFA provider (no EFA device, or the node lacks the EFA driver)"
  fail=1
fi
plugin=""
for d in /opt/amazon/ofi-nccl/lib /opt/amazon/aws-ofi-nccl/lib; do
  for f in "$d"/libnccl-net*.so; do [ -e "$f" ] && plugin=$f && break 2; done
done
if [ -n "$plugin" ]; then say "ok: NCCL's EFA plugin $plugin"; else say "missing: aws-ofi-nccl (libnccl-net*.so)"; fail=1; fi
if python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  say "ok: $(python3 -c 'import torch; print(torch.cuda.device_count(), "GPUs, NCCL", ".".join(map(str, torch.cuda.nccl.version())))')"
else
  say "missing: no GPU visible to torch: request nvidia.com/gpu (the NVIDIA device plugin must run on the node)"
  fail=1
fi
exit "$fail"
