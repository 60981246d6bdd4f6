#!/usr/bin/env bash
# Give the kube-persist webhook a serving certificate without cert-manager:
#   1. `kube-persist certs` writes a CA and a serving certificate into certs/out/ (reused when
#      they are already there, so the script can run again; --renew makes new ones);
#   2. the Secret kube-persist-tls (type kubernetes.io/tls) is created or updated;
#   3. the caBundle of every webhook in the MutatingWebhookConfiguration is set to the CA.
# Run it after `kubectl apply -k deploy/` (the namespace and the webhook configuration must
# exist). The pods start as soon as the Secret exists; on renewal they reload the new files
# without a restart. See certs/README.md.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: certs/install.sh [options]
  --namespace NS     namespace of the webhook Service and Secret   (default kube-persist)
  --service NAME     webhook Service name                           (default kube-persist)
  --webhook NAME     MutatingWebhookConfiguration name              (default kube-persist)
  --secret NAME      TLS Secret name                                (default kube-persist-tls)
  --out DIR          where the certificates and keys are kept       (default certs/out)
  --days N           validity of a new serving certificate, days    (default 365)
  --ca-days N        validity of a new CA, days                     (default 3650)
  --cluster-domain D cluster DNS domain                             (default cluster.local)
  --renew            make a new CA and certificate even if DIR has them
  --dry-run          print the kubectl commands instead of running them
environment: KUBECTL (default kubectl), KUBE_PERSIST (the kube-persist binary; default: on
the PATH, else target/release or target/debug of this repository)
EOF
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
namespace=kube-persist
service=kube-persist
webhook=kube-persist
secret=kube-persist-tls
out=$here/out
days=365
ca_days=3650
cluster_domain=cluster.local
renew=false
dry_run=false

die() { echo "certs/install.sh: $*" >&2; exit 1; }
need_value() { [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value"; }

while [[ $# -gt 0 ]]; do
  case $1 in
    --namespace) need_value "$@"; namespace=$2; shift 2 ;;
    --service) need_value "$@"; service=$2; shift 2 ;;
    --webhook) need_value "$@"; webhook=$2; shift 2 ;;
    --secret) need_value "$@"; secret=$2; shift 2 ;;
    --out) need_value "$@"; out=$2; shift 2 ;;
    --days) need_value "$@"; days=$2; shift 2 ;;
    --ca-days) need_value "$@"; ca_days=$2; shift 2 ;;
    --cluster-domain) need_value "$@"; cluster_domain=$2; shift 2 ;;
    --renew) renew=true; shift ;;
    --dry-run) dry_run=true; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

kubectl=${KUBECTL:-kubectl}
if [[ -n ${KUBE_PERSIST:-} ]]; then
  kube_persist=$KUBE_PERSIST
elif command -v kube-persist >/dev/null 2>&1; then
  kube_persist=kube-persist
elif [[ -x $repo/target/release/kube-persist ]]; then
  kube_persist=$repo/target/release/kube-persist
elif [[ -x $repo/target/debug/kube-persist ]]; then
  kube_persist=$repo/target/debug/kube-persist
else
  die "kube-persist not found: build it (cargo build --release) or set KUBE_PERSIST"
fi
$dry_run || command -v "$kubectl" >/dev/null 2>&1 || die "kubectl not found (set KUBECTL)"

# Print a command; run it unless --dry-run.
run() {
  printf '+ %s\n' "$*" >&2
  if ! $dry_run; then "$@"; fi
}

# The webhook configuration must exist before its caBundle can be set.
if ! $dry_run && ! "$kubectl" get mutatingwebhookconfiguration "$webhook" >/dev/null; then
  die "MutatingWebhookConfiguration $webhook not found: run 'kubectl apply -k deploy/' first"
fi

# 1. Certificates.
if ! $renew && [[ -f $out/ca.crt && -f $out/tls.crt && -f $out/tls.key ]]; then
  echo "using the certificates in $out (--renew makes new ones)" >&2
else
  force=()
  if $renew; then force=(--force); fi
  "$kube_persist" certs --service "$service" --namespace "$namespace" \
    --cluster-domain "$cluster_domain" --out "$out" --days "$days" --ca-days "$ca_days" \
    ${force[@]+"${force[@]}"} >/dev/null
fi
ca_bundle=$(base64 <"$out/ca.crt" | tr -d '\n')

# 2. The Secret, created or updated in place (the pods pick up a new one without a restart).
if $dry_run; then
  run "$kubectl" -n "$namespace" create secret tls "$secret" --cert="$out/tls.crt" \
    --key="$out/tls.key" --dry-run=client -o yaml '|' "$kubectl" apply -f -
else
  printf '+ %s\n' "$kubectl -n $namespace create secret tls $secret ... | $kubectl apply -f -" >&2
  "$kubectl" -n "$namespace" create secret tls "$secret" --cert="$out/tls.crt" \
    --key="$out/tls.key" --dry-run=client -o yaml | "$kubectl" apply -f -
fi

# 3. caBundle of every webhook in the configuration.
if $dry_run; then
  count=1
else
  count=$("$kubectl" get mutatingwebhookconfiguration "$webhook" \
    -o jsonpath='{range .webhooks[*]}x{end}')
  count=${#count}
  [[ $count -gt 0 ]] || die "MutatingWebhookConfiguration $webhook has no webhooks"
fi
patch=
for ((i = 0; i < count; i++)); do
  patch+="${patch:+,}{\"op\":\"add\",\"path\":\"/webhooks/$i/clientConfig/caBundle\",\"value\":\"$ca_bundle\"}"
done
run "$kubectl" patch mutatingwebhookconfiguration "$webhook" --type=json -p "[$patch]"

echo "done: Secret $namespace/$secret and the caBundle of $webhook are set." >&2
echo "watch the pods start: $kubectl -n $namespace rollout status deployment/kube-persist" >&2
