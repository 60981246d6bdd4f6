//! Property tests: generated StatefulSets (volume kinds and media, names the policy excludes,
//! mounts from containers, init containers and native sidecars, existing claims, owner
//! references, annotations valid and not, CREATE and UPDATE, excluded namespaces, audit mode)
//! go through `admission::review`; every result must hold the same invariants as the fixtures,
//! and the converted volumes must be exactly the ones the rules pick.

mod statefulset_support;

use std::collections::BTreeSet;

use json_patch::PatchOperation;
use kube_persist::{
    admission::{Decision, Outcome},
    policy::Policy,
};
use proptest::{
    collection::vec,
    prelude::*,
    sample::{select, subsequence},
    strategy::ValueTree,
};
use serde_json::{Map, Value, json};
use statefulset_support::{check, review_of};

/// Volume names: data-like ones and ones the default policy excludes.
const POOL: &[&str] = &[
    "data",
    "wal",
    "redis-data",
    "storage",
    "tmp",
    "tmp-dir",
    "cache",
    "gocache",
    "scratch",
    "run",
    "runner",
    "docker-sock",
    "dshm",
    "config",
    "buffer",
    "empty-dir",
];

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Disk,
    DiskEmptyMedium,
    Memory,
    HugePages,
    SizeLimit(&'static str),
    ConfigMap,
    Secret,
    Projected,
    Claim,
    HostPath,
}

impl Kind {
    fn disk_backed_empty_dir(self) -> bool {
        matches!(
            self,
            Kind::Disk | Kind::DiskEmptyMedium | Kind::SizeLimit(_)
        )
    }

    fn volume(self, name: &str) -> Value {
        let source = match self {
            Kind::Disk => json!({"emptyDir": {}}),
            Kind::DiskEmptyMedium => json!({"emptyDir": {"medium": ""}}),
            Kind::Memory => json!({"emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}}),
            Kind::HugePages => json!({"emptyDir": {"medium": "HugePages"}}),
            Kind::SizeLimit(limit) => json!({"emptyDir": {"sizeLimit": limit}}),
            Kind::ConfigMap => json!({"configMap": {"name": name, "defaultMode": 420}}),
            Kind::Secret => json!({"secret": {"secretName": name}}),
            Kind::Projected => json!({"projected": {"sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}},
                {"configMap": {"name": "ca"}}
            ]}}),
            Kind::Claim => {
                json!({"persistentVolumeClaim": {"claimName": format!("shared-{name}")}})
            }
            Kind::HostPath => {
                json!({"hostPath": {"path": format!("/var/lib/{name}"), "type": "DirectoryOrCreate"}})
            }
        };
        let mut volume = Map::new();
        volume.insert("name".into(), json!(name));
        if let Value::Object(source) = source {
            volume.extend(source);
        }
        Value::Object(volume)
    }
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        4 => Just(Kind::Disk),
        1 => Just(Kind::DiskEmptyMedium),
        2 => Just(Kind::Memory),
        1 => Just(Kind::HugePages),
        2 => select(vec!["1Gi", "100Gi", "500Gi", "2Ti", "64Mi", "bogus", "1e12"]).prop_map(Kind::SizeLimit),
        1 => Just(Kind::ConfigMap),
        1 => Just(Kind::Secret),
        1 => Just(Kind::Projected),
        1 => Just(Kind::Claim),
        1 => Just(Kind::HostPath),
    ]
}

#[derive(Debug, Clone)]
struct ContainerCase {
    /// Which volumes (by index) it mounts.
    mounts: Vec<bool>,
    sub_path: bool,
    read_only: bool,
    /// No `volumeMounts` field when it mounts nothing.
    no_field: bool,
    /// For init containers: `restartPolicy: Always`.
    native_sidecar: bool,
}

fn container_case(volumes: usize) -> impl Strategy<Value = ContainerCase> {
    (
        vec(prop::bool::weighted(0.4), volumes),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(mounts, sub_path, read_only, no_field, native_sidecar)| ContainerCase {
                mounts,
                sub_path,
                read_only,
                no_field,
                native_sidecar,
            },
        )
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Owner {
    None,
    NotController,
    Controller,
}

#[derive(Debug, Clone, Default)]
struct Annotations {
    volumes: Option<String>,
    mount_path: Option<String>,
    containers: Option<String>,
    size: Option<String>,
    storage_class: Option<String>,
    skip: bool,
}

impl Annotations {
    fn is_empty(&self) -> bool {
        self.volumes.is_none()
            && self.mount_path.is_none()
            && self.containers.is_none()
            && self.size.is_none()
            && self.storage_class.is_none()
            && !self.skip
    }
}

#[derive(Debug, Clone)]
struct Case {
    volumes: Vec<(&'static str, Kind)>,
    containers: Vec<ContainerCase>,
    inits: Vec<ContainerCase>,
    claims: usize,
    owner: Owner,
    annotations: Annotations,
    update: bool,
    namespace: &'static str,
    audit: bool,
}

impl Case {
    /// Whatever keeps a StatefulSet from being converted, apart from audit mode.
    fn in_the_way(&self) -> bool {
        self.owner == Owner::Controller
            || self.claims > 0
            || self.namespace == "kube-system"
            || self.annotations.skip
            || self.update
    }

    fn mounted(&self, volume: usize) -> bool {
        self.containers
            .iter()
            .chain(&self.inits)
            .any(|c| c.mounts[volume])
    }

    /// What the default rule converts, in volume order.
    fn default_conversions(&self, policy: &Policy) -> Vec<&'static str> {
        self.volumes
            .iter()
            .enumerate()
            .filter(|(i, (name, kind))| {
                kind.disk_backed_empty_dir()
                    && !policy.stateful_sets.is_excluded_volume(name)
                    && self.mounted(*i)
            })
            .map(|(_, (name, _))| *name)
            .collect()
    }

    fn object(&self) -> Value {
        let volumes: Vec<Value> = self.volumes.iter().map(|(n, k)| k.volume(n)).collect();
        let container = |name: String, c: &ContainerCase, first: bool, init: bool| {
            let mut mounts: Vec<Value> = self
                .volumes
                .iter()
                .zip(&c.mounts)
                .filter(|(_, m)| **m)
                .map(|((name, _), _)| {
                    let mut m = json!({"name": name, "mountPath": format!("/mnt/{name}")});
                    if c.sub_path {
                        m["subPath"] = json!("sub");
                    }
                    if c.read_only {
                        m["readOnly"] = json!(true);
                    }
                    m
                })
                .collect();
            if first {
                for k in 0..self.claims {
                    mounts.push(
                        json!({"name": format!("pvc-{k}"), "mountPath": format!("/claims/{k}")}),
                    );
                }
            }
            let mut value = json!({
                "name": name,
                "image": "registry.example.com/app:1.0",
                "env": [{"name": "MODE", "value": "test"}],
            });
            if !(mounts.is_empty() && c.no_field) {
                value["volumeMounts"] = Value::Array(mounts);
            }
            if init && c.native_sidecar {
                value["restartPolicy"] = json!("Always");
            }
            value
        };
        let containers: Vec<Value> = self
            .containers
            .iter()
            .enumerate()
            .map(|(i, c)| container(format!("c{i}"), c, i == 0, false))
            .collect();
        let inits: Vec<Value> = self
            .inits
            .iter()
            .enumerate()
            .map(|(i, c)| container(format!("i{i}"), c, false, true))
            .collect();
        let mut pod = json!({"containers": containers, "restartPolicy": "Always"});
        if !inits.is_empty() {
            pod["initContainers"] = Value::Array(inits);
        }
        if !volumes.is_empty() {
            pod["volumes"] = Value::Array(volumes);
        }
        let mut meta = json!({
            "name": "app",
            "namespace": self.namespace,
            "labels": {"app": "app"},
            "annotations": {"team": "a/b", "kubectl.kubernetes.io/last-applied-configuration": "{\"x\":1}"},
        });
        let a = &self.annotations;
        for (key, value) in [
            ("volumes", &a.volumes),
            ("mount-path", &a.mount_path),
            ("containers", &a.containers),
            ("size", &a.size),
            ("storage-class", &a.storage_class),
        ] {
            if let Some(v) = value {
                meta["annotations"][format!("kube-persist.io/{key}")] = json!(v);
            }
        }
        if a.skip {
            meta["annotations"]["kube-persist.io/skip"] = json!("true");
        }
        match self.owner {
            Owner::None => {}
            Owner::NotController => {
                meta["ownerReferences"] = json!([{"apiVersion": "v1", "kind": "ConfigMap",
                    "name": "anchor", "uid": "1"}]);
            }
            Owner::Controller => {
                meta["ownerReferences"] = json!([{"apiVersion": "monitoring.coreos.com/v1",
                    "kind": "Alertmanager", "name": "main", "uid": "2", "controller": true}]);
            }
        }
        let mut spec = json!({
            "replicas": 2,
            "serviceName": "app",
            "selector": {"matchLabels": {"app": "app"}},
            "template": {"metadata": {"labels": {"app": "app"}}, "spec": pod},
            "futureField": {"kept": [1, 2.5, "x"]},
        });
        if self.claims > 0 {
            spec["volumeClaimTemplates"] = Value::Array(
                (0..self.claims)
                    .map(|k| json!({"metadata": {"name": format!("pvc-{k}")},
                        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}))
                    .collect(),
            );
        }
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": meta, "spec": spec})
    }
}

fn case() -> impl Strategy<Value = Case> {
    (
        subsequence(POOL.to_vec(), 0..=8).prop_shuffle(),
        1..=3usize,
        0..=2usize,
    )
        .prop_flat_map(|(names, containers, inits)| {
            let n = names.len();
            let volume_list = (
                subsequence(names.clone(), 0..=n),
                prop::bool::weighted(0.3),
                any::<bool>(),
            )
                .prop_map(|(picked, ghost, spaces)| {
                    let mut picked: Vec<&str> = picked;
                    if ghost {
                        picked.push("ghost");
                    }
                    picked.join(if spaces { " , " } else { "," })
                });
            let container_names: Vec<String> = (0..containers)
                .map(|i| format!("c{i}"))
                .chain((0..inits).map(|i| format!("i{i}")))
                .chain(["ghost".to_string()])
                .collect();
            let k = container_names.len();
            let container_list =
                subsequence(container_names, 0..=k).prop_map(|names| names.join(","));
            let annotations = (
                prop::option::weighted(0.15, volume_list),
                prop::option::weighted(
                    0.12,
                    select(vec![
                        "/data",
                        "/srv/app/",
                        "/mnt/data",
                        "relative",
                        "/a/../b",
                        "/",
                    ]),
                ),
                prop::option::weighted(0.08, container_list),
                prop::option::weighted(0.1, select(vec!["5Gi", "2Ti", "lots"])),
                prop::option::weighted(0.06, select(vec!["fast-nfs", "Bad_Class"])),
                prop::bool::weighted(0.03),
            )
                .prop_map(
                    |(volumes, mount_path, containers, size, storage_class, skip)| Annotations {
                        volumes,
                        mount_path: mount_path.map(str::to_string),
                        containers,
                        size: size.map(str::to_string),
                        storage_class: storage_class.map(str::to_string),
                        skip,
                    },
                );
            let owner = prop_oneof![
                12 => Just(Owner::None),
                2 => Just(Owner::NotController),
                1 => Just(Owner::Controller),
            ];
            (
                Just(names),
                vec(kind(), n),
                vec(container_case(n), containers),
                vec(container_case(n), inits),
                prop_oneof![10 => Just(0usize), 1 => 1..=2usize],
                owner,
                annotations,
                prop::bool::weighted(0.1),
                prop_oneof![8 => Just("default"), 4 => Just("apps"), 1 => Just("kube-system")],
                prop::bool::weighted(0.15),
            )
        })
        .prop_map(
            |(
                names,
                kinds,
                containers,
                inits,
                claims,
                owner,
                annotations,
                update,
                namespace,
                audit,
            )| Case {
                volumes: names.into_iter().zip(kinds).collect(),
                containers,
                inits,
                claims,
                owner,
                annotations,
                update,
                namespace,
                audit,
            },
        )
}

fn policy(audit: bool) -> Policy {
    if audit {
        Policy::from_yaml("mode: audit", "p").expect("valid")
    } else {
        Policy::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(384))]

    /// The invariants hold, and what is converted is exactly what the rules pick.
    #[test]
    fn generated_statefulsets_hold_the_invariants(case in case()) {
        let object = case.object();
        let operation = if case.update { "UPDATE" } else { "CREATE" };
        let body = serde_json::to_vec(&review_of(operation, &object)).expect("json");
        let policy = policy(case.audit);
        let checked = check(&body, &policy);
        let d = &checked.decision;

        if case.owner == Owner::Controller {
            prop_assert_eq!(d.outcome(), Outcome::Skipped, "{}", d.reason());
        }
        if case.in_the_way() || case.audit {
            prop_assert!(d.outcome() != Outcome::Mutated, "{}", d.reason());
        }
        if case.claims > 0 && case.owner != Owner::Controller && case.namespace != "kube-system"
            && !case.annotations.skip
        {
            // Only the generic annotations can make it invalid; the StatefulSet ones are not read.
            prop_assert!(matches!(d.outcome(), Outcome::Unchanged | Outcome::Invalid), "{}", d.reason());
        }

        // What was converted or proposed (the mount-path claim `data` comes last).
        let mut converted = proposed_claims(d);
        if case.annotations.mount_path.is_some() && converted.last().map(String::as_str) == Some("data") {
            converted.pop();
        }
        if !converted.is_empty() {
            match &case.annotations.volumes {
                None => prop_assert_eq!(&converted, &case.default_conversions(&policy)),
                Some(list) => {
                    let listed: BTreeSet<&str> =
                        list.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
                    let got: BTreeSet<&str> = converted.iter().map(String::as_str).collect();
                    prop_assert_eq!(got, listed);
                }
            }
        }

        // Completeness: nothing in the way and something to convert -> converted (or proposed,
        // in audit mode).
        let expected = case.default_conversions(&policy);
        if !case.in_the_way() && case.annotations.is_empty() && !expected.is_empty() {
            let outcome = if case.audit { Outcome::WouldMutate } else { Outcome::Mutated };
            prop_assert_eq!(d.outcome(), outcome, "{}", d.reason());
            prop_assert_eq!(&converted, &expected);
        }
        // Never more than the policy allows on UPDATE.
        if case.update {
            prop_assert!(d.patch().is_none());
        }
    }

    /// Arbitrary annotation values are never a panic or a bad patch.
    #[test]
    fn arbitrary_annotation_values_are_handled(
        case in case(),
        volumes in "[a-z, \\-]{0,24}",
        mount_path in "[/a-z.\\- ]{0,16}",
        containers in "[a-z0-9, ]{0,12}",
    ) {
        let mut case = case;
        case.annotations.volumes = Some(volumes);
        case.annotations.mount_path = Some(mount_path);
        case.annotations.containers = Some(containers);
        let body = serde_json::to_vec(&review_of("CREATE", &case.object())).expect("json");
        let checked = check(&body, &policy(case.audit));
        prop_assert!(checked.decision.denied().is_none());
    }
}

/// The names of the claim templates a decision adds (or would add, in audit mode).
fn proposed_claims(d: &Decision) -> Vec<String> {
    let patch = d.patch().map(|p| p.to_json_patch().expect("a JSON Patch"));
    patch
        .iter()
        .flat_map(|p| &p.0)
        .filter_map(|op| match op {
            PatchOperation::Add(a) if a.path.as_str() == "/spec/volumeClaimTemplates" => {
                Some(a.value.as_array().cloned().unwrap_or_default())
            }
            _ => None,
        })
        .flatten()
        .map(|c| {
            c["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

/// The generator reaches every outcome often enough for the properties to mean something.
#[test]
fn the_generator_covers_every_outcome() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = case();
    let mut seen = std::collections::BTreeMap::new();
    let (mut with_init_only, mut with_mount_path) = (0, 0);
    for _ in 0..600 {
        let case = strategy.new_tree(&mut runner).expect("a case").current();
        let operation = if case.update { "UPDATE" } else { "CREATE" };
        let body = serde_json::to_vec(&review_of(operation, &case.object())).expect("json");
        let reviewed = kube_persist::admission::review(&body, &policy(case.audit)).expect("review");
        let d = reviewed.decision;
        *seen.entry(d.outcome().as_str()).or_insert(0) += 1;
        let claims = proposed_claims(&d);
        if claims.iter().any(|c| {
            let i = case.volumes.iter().position(|(n, _)| n == c);
            i.is_some_and(|i| {
                case.inits.iter().any(|x| x.mounts[i])
                    && !case.containers.iter().any(|x| x.mounts[i])
            })
        }) {
            with_init_only += 1;
        }
        if case.annotations.mount_path.is_some()
            && claims.last().map(String::as_str) == Some("data")
        {
            with_mount_path += 1;
        }
    }
    for outcome in ["mutated", "unchanged", "skipped", "would-mutate", "invalid"] {
        let n = seen.get(outcome).copied().unwrap_or(0);
        assert!(n >= 10, "only {n} {outcome} among {seen:?}");
    }
    assert!(seen["mutated"] >= 100, "{seen:?}");
    assert!(
        with_init_only >= 5,
        "claims mounted only by init containers: {with_init_only}"
    );
    assert!(with_mount_path >= 5, "mount-path claims: {with_mount_path}");
}
