#!/usr/bin/env bash
# Fills fuzz/corpus/<target>/ with seeds from the repository's fixtures (nothing is copied into
# git): AdmissionReview bodies, manifests and the policy as they are, every fixture object also
# wrapped as a CREATE and an UPDATE review (needs python3 with PyYAML; skipped without it),
# sizes found in the fixtures, and every committed regression input under fuzz/regressions/.
# Existing corpus files are kept, so a long run's corpus grows across runs.
set -euo pipefail
cd "$(dirname "$0")"
fixtures=../tests/fixtures
for t in admission manifest policy quantity path_plan; do mkdir -p "corpus/$t"; done

# admission: review bodies, and objects wrapped as reviews.
cp "$fixtures"/reviews/*.json "$fixtures"/bench/b-sts-small.json corpus/admission/
objects=("$fixtures"/statefulsets/*.yaml "$fixtures"/statefulsets/*.json
  "$fixtures"/manifests/kube-prometheus/*.yaml "$fixtures"/manifests/json/*.json
  "$fixtures"/manifests/helm/*.yaml ../deploy/examples/*.yaml)
if python3 -c 'import yaml' 2>/dev/null; then
  python3 - corpus/admission "${objects[@]}" <<'PY'
import json, os, sys, yaml
out, paths = sys.argv[1], sys.argv[2:]
def objects(doc):
    if isinstance(doc, dict) and isinstance(doc.get("items"), list):
        for item in doc["items"]:
            yield from objects(item)
    elif isinstance(doc, dict) and "kind" in doc:
        yield doc
for path in paths:
    with open(path) as f:
        docs = list(yaml.safe_load_all(f))
    for n, obj in enumerate(o for d in docs for o in objects(d)):
        if obj.get("kind") == "AdmissionReview":
            with open(os.path.join(out, f"{os.path.basename(path)}.{n}.json"), "w") as f:
                json.dump(obj, f, separators=(",", ":"), default=str)
            continue
        group, _, version = obj.get("apiVersion", "").rpartition("/")
        meta = obj.get("metadata") or {}
        for op in ("CREATE", "UPDATE"):
            request = {"uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                       "kind": {"group": group, "version": version, "kind": obj.get("kind", "")},
                       "namespace": meta.get("namespace", "default"), "operation": op,
                       "userInfo": {"username": "fuzz", "groups": []},
                       "object": obj, "dryRun": False}
            if meta.get("name"):
                request["name"] = meta["name"]
            if op == "UPDATE":
                request["oldObject"] = obj
            review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                      "request": request}
            name = f"{os.path.basename(path)}.{n}.{op.lower()}.json"
            with open(os.path.join(out, name), "w") as f:
                json.dump(review, f, separators=(",", ":"), default=str)
PY
else
  echo "seed-corpora: python3 with PyYAML not found: fixture objects not wrapped as reviews" >&2
fi

# manifest: the mutate fixtures and examples as they are.
find "$fixtures"/manifests "$fixtures"/statefulsets ../deploy/examples -type f \
  \( -name '*.yaml' -o -name '*.json' \) -not -path '*/expected/*' -print0 |
  while IFS= read -r -d '' f; do
    cp "$f" "corpus/manifest/$(echo "${f#../}" | tr / _)"
  done

# policy: the shipped policy and a few more.
cp ../deploy/base/policy.yaml corpus/policy/
printf 'mode: audit\n' >corpus/policy/audit.yaml
printf 'strict: true\nonUpdate: mutate\n' >corpus/policy/strict.yaml
printf 'namespaces: { monitoring: { size: 200Gi, storageClassName: fast, accessModes: [ReadWriteMany], mode: audit } }\n' \
  >corpus/policy/namespaces.yaml

# quantity: every size the fixtures and the deploy files write, and some edge cases.
{
  grep -rhoE '(storage|size|retentionSize): *"?[0-9.+-][0-9A-Za-z.+-]*' "$fixtures" ../deploy |
    sed -E 's/^[a-zA-Z]+: *"?//'
  printf '%s\n' 100Gi 1.5Ti 500M 1e9 1E3 0.5 .5 5. +1 -1 0 1e-39 1n 1Ei 1024Ei 999999999999999999999999999999
} | sort -u | while IFS= read -r q; do
  printf '%s' "$q" >"corpus/quantity/$(printf '%s' "$q" | od -An -tx1 | tr -d ' \n')"
done

# Inputs that once failed stay in the corpus.
for t in admission manifest policy quantity path_plan; do
  if [ -d "regressions/$t" ]; then cp regressions/"$t"/* "corpus/$t/" 2>/dev/null || true; fi
done
for t in admission manifest policy quantity path_plan; do
  echo "seed-corpora: $t: $(find "corpus/$t" -type f | wc -l) files"
done
