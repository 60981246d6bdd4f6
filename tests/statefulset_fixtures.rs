//! Golden tests over `tests/fixtures/statefulsets/` (StatefulSets modeled on public Helm charts'
//! rendered manifests, plus hand-written edge cases) and the two bench fixtures: every one is run
//! through `admission::review` and checked against every invariant (see
//! `statefulset_support::check`), then against what it is expected to get.

mod statefulset_support;

use std::{collections::BTreeSet, path::Path};

use kube_persist::{
    admission::{Outcome, review},
    audit::AuditRecord,
    policy::Policy,
};
use serde_json::{Value, json};
use statefulset_support::{Checked, check, review_of};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/statefulsets");
const BENCH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/bench");

/// A fixture, its expected outcome and the claims `(name, size)` it gets.
type Expected = (
    &'static str,
    Outcome,
    &'static [(&'static str, &'static str)],
);

/// Every fixture of `DIR`.
const EXPECTED: &[Expected] = &[
    (
        "redis-bitnami-master.yaml",
        Outcome::Mutated,
        &[("empty-dir", "100Gi"), ("redis-data", "100Gi")],
    ),
    (
        "redis-bitnami-replicas.yaml",
        Outcome::Mutated,
        &[("redis-data", "150Gi")],
    ),
    (
        "postgresql-bitnami.yaml",
        Outcome::Mutated,
        &[("data", "100Gi")],
    ),
    (
        "elasticsearch-elastic.yaml",
        Outcome::Mutated,
        &[("data", "30Gi")],
    ),
    (
        "loki-single-binary.yaml",
        Outcome::Mutated,
        &[("sc-rules-volume", "100Gi"), ("storage", "100Gi")],
    ),
    ("tempo.yaml", Outcome::Mutated, &[("storage", "100Gi")]),
    ("prometheus-operator-owned.yaml", Outcome::Skipped, &[]),
    ("zookeeper-with-claims.yaml", Outcome::Unchanged, &[]),
    (
        "edge-native-sidecar.yaml",
        Outcome::Mutated,
        &[("varlog", "100Gi"), ("data", "100Gi"), ("buffer", "500Gi")],
    ),
    (
        "edge-only-volume.yaml",
        Outcome::Mutated,
        &[("etcd-data", "100Gi")],
    ),
    ("edge-memory-and-excluded.yaml", Outcome::Skipped, &[]),
    (
        "edge-mount-path-no-mounts.yaml",
        Outcome::Mutated,
        &[("data", "100Gi")],
    ),
    ("edge-invalid-annotations.yaml", Outcome::Invalid, &[]),
    ("edge-excluded-namespace.yaml", Outcome::Skipped, &[]),
    ("edge-update-escaped.json", Outcome::Skipped, &[]),
    (
        "edge-generate-name-dry-run.json",
        Outcome::Mutated,
        &[("data", "1Ti")],
    ),
];

/// The AdmissionReview body of a fixture: JSON files are reviews already; YAML files are
/// StatefulSet manifests, wrapped in a CREATE review.
fn body_of(path: &Path) -> Vec<u8> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if path.extension().is_some_and(|e| e == "json") {
        return text.into_bytes();
    }
    let object: Value = serde_saphyr::from_str(&text)
        .unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()));
    assert_eq!(object["kind"], "StatefulSet", "{}", path.display());
    serde_json::to_vec(&review_of("CREATE", &object)).expect("serializable")
}

fn fixture(name: &str) -> (Vec<u8>, Checked) {
    let body = body_of(&Path::new(DIR).join(name));
    let checked = check(&body, &Policy::default());
    let expected = EXPECTED
        .iter()
        .find(|(f, _, _)| *f == name)
        .unwrap_or_else(|| panic!("{name} is not in EXPECTED"));
    assert_outcome(name, &checked, expected.1, expected.2);
    (body, checked)
}

fn assert_outcome(name: &str, checked: &Checked, outcome: Outcome, claims: &[(&str, &str)]) {
    let d = &checked.decision;
    assert_eq!(d.outcome(), outcome, "{name}: {}", d.reason());
    let got: Vec<(&str, &str)> = checked.result["spec"]["volumeClaimTemplates"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| {
            checked
                .added_claims
                .iter()
                .any(|a| c["metadata"]["name"] == a.as_str())
        })
        .map(|c| {
            (
                c["metadata"]["name"].as_str().expect("a name"),
                c["spec"]["resources"]["requests"]["storage"]
                    .as_str()
                    .expect("a size"),
            )
        })
        .collect();
    assert_eq!(got, claims, "{name}: added claims");
}

fn pod(object: &Value) -> &Value {
    &object["spec"]["template"]["spec"]
}

fn volume_names(object: &Value) -> Vec<&str> {
    pod(object)["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| v["name"].as_str().expect("a name"))
        .collect()
}

#[test]
fn every_fixture_is_listed_and_holds_the_invariants() {
    let on_disk: BTreeSet<String> = std::fs::read_dir(DIR)
        .expect("the fixture directory")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".json"))
        .collect();
    let listed: BTreeSet<String> = EXPECTED.iter().map(|(f, _, _)| f.to_string()).collect();
    assert_eq!(
        on_disk, listed,
        "every fixture has an expectation and exists"
    );
    for (name, _, _) in EXPECTED {
        fixture(name);
    }
}

#[test]
fn redis_master_converts_data_and_the_scratch_volume_under_the_default_policy() {
    let (_, c) = fixture("redis-bitnami-master.yaml");
    assert_eq!(
        c.decision.warnings,
        [
            "kube-persist: added volumes empty-dir, redis-data on StorageClass prometheus-data-db (StatefulSet cache/redis-master)"
        ]
    );
    assert_eq!(
        c.decision.reason(),
        "added 100Gi volumes empty-dir, redis-data"
    );
    assert_eq!(
        volume_names(&c.result),
        ["start-scripts", "health", "config"]
    );
    let claim = &c.result["spec"]["volumeClaimTemplates"][1];
    assert_eq!(
        claim,
        &json!({
            "metadata": {"name": "redis-data", "annotations": {"kube-persist.io/added-by": "kube-persist"}},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "prometheus-data-db",
                "resources": {"requests": {"storage": "100Gi"}}
            }
        })
    );
    // The existing retention policy is the user's; nothing else is added to the spec.
    assert_eq!(
        c.result["spec"]["persistentVolumeClaimRetentionPolicy"],
        c.original["spec"]["persistentVolumeClaimRetentionPolicy"]
    );
    let response = &c.response["response"];
    assert_eq!(
        response["auditAnnotations"],
        json!({"decision": "mutated", "storage": "prometheus-data-db/100Gi"})
    );
}

#[test]
fn redis_replicas_convert_only_the_listed_volume_raised_to_its_size_limit() {
    let (_, c) = fixture("redis-bitnami-replicas.yaml");
    let d = &c.decision;
    assert_eq!(
        d.reason(),
        "added 150Gi volume redis-data; redis-data raised to its emptyDir sizeLimit; \
         left as emptyDir: empty-dir (not in kube-persist.io/volumes)"
    );
    let storage = d.storage().unwrap();
    assert_eq!(
        (storage.storage_class_name.as_str(), storage.size.as_str()),
        ("fast-nfs", "150Gi")
    );
    assert_eq!(
        c.result["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"],
        "fast-nfs"
    );
    assert!(volume_names(&c.result).contains(&"empty-dir"));
}

#[test]
fn postgresql_keeps_its_shared_memory_and_the_init_container_mounts_the_claim() {
    let (_, c) = fixture("postgresql-bitnami.yaml");
    assert_eq!(
        volume_names(&c.result),
        ["custom-init-scripts", "custom-init-scripts-secret", "dshm"]
    );
    assert!(
        c.decision
            .reason()
            .ends_with("left as emptyDir: dshm (medium: Memory)")
    );
    assert_eq!(
        pod(&c.result)["initContainers"][0]["volumeMounts"][0],
        json!({"name": "data", "mountPath": "/bitnami/postgresql"})
    );
}

#[test]
fn elasticsearch_gets_a_new_data_claim_in_the_listed_container_only() {
    let (_, c) = fixture("elasticsearch-elastic.yaml");
    assert_eq!(
        c.decision.reason(),
        "added 30Gi volume data; data mounted at /usr/share/elasticsearch/data in elasticsearch"
    );
    let mounts = &pod(&c.result)["containers"][0]["volumeMounts"];
    assert_eq!(
        mounts[2],
        json!({"name": "data", "mountPath": "/usr/share/elasticsearch/data"})
    );
    assert_eq!(
        pod(&c.result)["initContainers"],
        pod(&c.original)["initContainers"]
    );
}

#[test]
fn loki_converts_storage_and_rules_but_not_tmp_or_the_projected_token() {
    let (_, c) = fixture("loki-single-binary.yaml");
    assert_eq!(
        volume_names(&c.result),
        ["tmp", "config", "runtime-config", "aws-iam-token"]
    );
    assert!(
        c.decision
            .reason()
            .ends_with("left as emptyDir: tmp (name excluded by policy)")
    );
}

#[test]
fn tempo_keeps_the_policy_size_above_a_smaller_size_limit() {
    let (_, c) = fixture("tempo.yaml");
    assert_eq!(c.decision.reason(), "added 100Gi volume storage");
    assert_eq!(volume_names(&c.result), ["tempo-conf", "overrides"]);
}

#[test]
fn operator_owned_statefulsets_are_skipped_even_with_bad_annotations() {
    let (body, c) = fixture("prometheus-operator-owned.yaml");
    assert_eq!(
        c.decision.reason(),
        "owned by controller Prometheus k8s: its owner decides its storage"
    );
    assert!(c.decision.warnings.is_empty());
    // Strict policy does not block the operator either.
    let strict = Policy::from_yaml("strict: true", "p").unwrap();
    let c = check(&body, &strict);
    assert_eq!(c.decision.outcome(), Outcome::Skipped);
    assert_eq!(c.response["response"]["allowed"], true);
}

#[test]
fn statefulsets_with_claims_are_unchanged() {
    let (_, c) = fixture("zookeeper-with-claims.yaml");
    assert_eq!(
        c.decision.reason(),
        "spec.volumeClaimTemplates is set (1): storage already chosen"
    );
}

#[test]
fn native_sidecar_buffers_and_init_container_data_are_converted() {
    let (_, c) = fixture("edge-native-sidecar.yaml");
    assert_eq!(
        c.decision.warnings[0],
        "kube-persist: added volumes varlog, data, buffer on StorageClass prometheus-data-db (StatefulSet payments/ledger)"
    );
    assert!(
        c.decision
            .reason()
            .starts_with("added volumes varlog (100Gi), data (100Gi), buffer (500Gi);"),
        "{}",
        c.decision.reason()
    );
    assert!(
        c.decision.reason().ends_with(
            "left as emptyDir: tmp (name excluded by policy), shm (medium: Memory), spare (mounted by no container)"
        ),
        "{}",
        c.decision.reason()
    );
    assert_eq!(
        volume_names(&c.result),
        ["fluent-bit-config", "tmp", "shm", "spare"]
    );
    assert_eq!(c.decision.storage().unwrap().size, "500Gi");
}

#[test]
fn converting_the_only_volume_leaves_an_empty_list() {
    let (_, c) = fixture("edge-only-volume.yaml");
    assert_eq!(pod(&c.result)["volumes"], json!([]));
}

#[test]
fn memory_excluded_and_unmounted_emptydirs_are_skipped_with_reasons() {
    let (_, c) = fixture("edge-memory-and-excluded.yaml");
    assert_eq!(
        c.decision.reason(),
        "no emptyDir volume to convert: storage (medium: Memory), cache (name excluded by policy), \
         run (name excluded by policy), docker-sock (name excluded by policy), leftover (mounted by no container)"
    );
}

#[test]
fn mount_path_adds_mount_arrays_to_containers_without_any() {
    let (_, c) = fixture("edge-mount-path-no-mounts.yaml");
    let mount = json!([{"name": "data", "mountPath": "/data/jetstream/"}]);
    assert_eq!(pod(&c.result)["containers"][0]["volumeMounts"], mount);
    assert_eq!(pod(&c.result)["containers"][1]["volumeMounts"], mount);
    assert!(
        pod(&c.result)["initContainers"][0]
            .get("volumeMounts")
            .is_none()
    );
    assert_eq!(
        c.result["spec"]["volumeClaimTemplates"][0]["spec"]["accessModes"],
        json!(["ReadWriteOncePod"])
    );
}

#[test]
fn invalid_annotations_warn_per_problem_and_deny_when_strict() {
    let (body, c) = fixture("edge-invalid-annotations.yaml");
    let d = &c.decision;
    assert_eq!(d.warnings.len(), 3, "{:?}", d.warnings);
    for problem in [
        "no volume named missing",
        "config is not an emptyDir",
        "kube-persist.io/size \"lots\"",
    ] {
        assert!(d.reason().contains(problem), "{problem}: {}", d.reason());
    }
    let strict = Policy::from_yaml("strict: true", "p").unwrap();
    let c = check(&body, &strict);
    assert_eq!(c.response["response"]["allowed"], false);
    assert_eq!(c.response["response"]["status"]["code"], 403);
}

#[test]
fn excluded_namespaces_are_skipped() {
    let (_, c) = fixture("edge-excluded-namespace.yaml");
    assert_eq!(
        c.decision.reason(),
        "namespace kube-system is excluded by policy"
    );
}

#[test]
fn update_with_escaped_strings_warns_how_to_recreate() {
    let (_, c) = fixture("edge-update-escaped.json");
    assert_eq!(
        c.decision.warnings,
        [
            "kube-persist: StatefulSet metrics/influxdb keeps data in emptyDir; claims can't be added on UPDATE",
            "kube-persist: to add claims: kubectl delete sts influxdb -n metrics --cascade=orphan, then apply it again"
        ]
    );
    assert!(
        c.decision.reason().contains("100Gi volume data not added"),
        "{}",
        c.decision.reason()
    );
}

#[test]
fn generate_name_and_dry_run_reach_the_audit_record() {
    let (body, c) = fixture("edge-generate-name-dry-run.json");
    assert!(
        c.decision.warnings[0].ends_with("(StatefulSet metrics/influxdb-*)"),
        "{:?}",
        c.decision.warnings
    );
    // The audit record carries the same fields as for the custom resources.
    let reviewed = review(&body, &Policy::default()).unwrap();
    let record = AuditRecord::new(
        &reviewed.request,
        &reviewed.decision,
        jiff::Timestamp::UNIX_EPOCH,
        std::time::Duration::from_micros(42),
    );
    let line = serde_json::to_value(&record).unwrap();
    for (field, value) in [
        ("decision", json!("mutated")),
        ("kind", json!("StatefulSet")),
        ("group", json!("apps")),
        ("generateName", json!("influxdb-")),
        ("dryRun", json!(true)),
        ("storageClass", json!("prometheus-data-db")),
        ("size", json!("1Ti")),
        ("source", json!("default")),
    ] {
        assert_eq!(line[field], value, "{field}");
    }
    assert_eq!(line["patch"].as_array().unwrap().len(), 2);
}

#[test]
fn bench_fixtures_hold_the_invariants() {
    for (name, mounts) in [("b-sts-small.json", 1), ("c-sts-1mb.json", 24)] {
        let body = std::fs::read(Path::new(BENCH).join(name)).expect("the bench fixture");
        let c = check(&body, &Policy::default());
        assert_outcome(name, &c, Outcome::Mutated, &[("data", "100Gi")]);
        assert_eq!(volume_names(&c.result), ["config", "tmp"], "{name}");
        let data_mounts = statefulset_support::mounts(&c.result)
            .iter()
            .filter(|(_, m)| m["name"] == "data")
            .count();
        assert_eq!(data_mounts, mounts, "{name}");
    }
}
