//! The manifests in `deploy/`, rendered by `kubectl kustomize` exactly as `kubectl apply -k`
//! would send them, checked against the code they deploy:
//! - every kustomization (base, overlays, examples) renders, and every rendered object
//!   deserializes into its k8s-openapi type without losing a field (a typo in a field name is
//!   an unknown field, which the API server would drop), or, for custom resources, against the
//!   CRD schema (Prometheus) or strict serde types written here (ServiceMonitor, PrometheusRule,
//!   cert-manager's Issuer and Certificate, whose CRDs are not in the repository);
//! - RBAC grants exactly `kube_persist::rbac::API_ACCESS`;
//! - the webhook configuration, Service and Deployment agree with the server's flags and
//!   defaults (`kube_persist::cli`), and the StorageClass with the provisioner and the policy.
//!
//! Needs `kubectl` (client only, v1.27+ for kustomize v5) on the PATH, or its path in
//! `$KUBECTL`. No cluster.

mod common;

use std::{
    any::TypeId,
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
    sync::LazyLock,
};

use clap::{CommandFactory as _, Parser as _};
use k8s_openapi::{
    NamespaceResourceScope, Resource,
    api::{
        admissionregistration::v1::MutatingWebhookConfiguration,
        apps::v1::{Deployment, StatefulSet},
        core::v1::{
            ConfigMap, Container, Namespace, PersistentVolumeClaim, Pod, PodSpec, Service,
            ServiceAccount,
        },
        networking::v1::NetworkPolicy,
        policy::v1::PodDisruptionBudget,
        rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding},
        storage::v1::StorageClass,
    },
    apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta},
};
use kube_persist::cli::{Cli, Command as CliCommand};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Rendering

/// Every kustomization that can be applied on its own (components are rendered through the
/// overlays that use them; `every_kustomization_is_rendered_here` keeps this list complete).
const KUSTOMIZATIONS: &[&str] = &[
    "deploy",
    "deploy/base",
    "deploy/overlays/fail-closed",
    "deploy/overlays/cert-manager",
    "deploy/overlays/monitoring",
    "deploy/overlays/network-policy",
    "deploy/examples",
];

/// The kustomizations that install kube-persist (all but the examples).
const INSTALLS: &[&str] = &[
    "deploy",
    "deploy/base",
    "deploy/overlays/fail-closed",
    "deploy/overlays/cert-manager",
    "deploy/overlays/monitoring",
    "deploy/overlays/network-policy",
];

const NAMESPACE: &str = "kube-persist";
const SERVICE_ACCOUNT: &str = "kube-persist";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn kubectl() -> String {
    std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".to_string())
}

fn render(dir: &str) -> Vec<Value> {
    let out = Command::new(kubectl())
        .arg("kustomize")
        .arg(root().join(dir))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `{} kustomize` ({e}): install kubectl (.ci/run does) or set $KUBECTL",
                kubectl()
            )
        });
    assert!(
        out.status.success(),
        "kubectl kustomize {dir} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8 output");
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
        .unwrap_or_else(|e| panic!("kubectl kustomize {dir}: output is not YAML: {e}"));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

static RENDERED: LazyLock<BTreeMap<&'static str, Vec<Value>>> =
    LazyLock::new(|| KUSTOMIZATIONS.iter().map(|d| (*d, render(d))).collect());

fn rendered(dir: &str) -> &'static [Value] {
    RENDERED
        .get(dir)
        .unwrap_or_else(|| panic!("{dir} is not in KUSTOMIZATIONS"))
}

fn kind_of(v: &Value) -> (&str, &str) {
    (
        v["apiVersion"].as_str().unwrap_or_default(),
        v["kind"].as_str().unwrap_or_default(),
    )
}

fn id(v: &Value) -> String {
    format!(
        "{} {}/{}",
        v["kind"].as_str().unwrap_or("?"),
        v["metadata"]["namespace"].as_str().unwrap_or("-"),
        v["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// The single object of `kind` named `name` in a render.
fn find<K: DeserializeOwned>(docs: &[Value], kind: &str, name: &str) -> K {
    let matching: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .collect();
    assert_eq!(matching.len(), 1, "expected one {kind} {name}");
    serde_json::from_value(matching[0].clone()).expect("deserializes")
}

fn all<K: DeserializeOwned>(docs: &[Value], kind: &str) -> Vec<K> {
    docs.iter()
        .filter(|d| d["kind"] == kind)
        .map(|d| serde_json::from_value(d.clone()).expect("deserializes"))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Every object is what its kind says

/// Deserializes into `K`, serializes back, and reports every field that did not survive: an
/// unknown field (a typo, or a field of a newer API) or a value of the wrong shape.
fn check_typed<K>(v: &Value) -> Result<bool, String>
where
    K: DeserializeOwned + Serialize + Resource + 'static,
{
    let typed: K = serde_json::from_value(v.clone()).map_err(|e| format!("{}: {e}", id(v)))?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    let mut lost = Vec::new();
    diff(v, &back, String::new(), &mut lost);
    if !lost.is_empty() {
        return Err(format!(
            "{}: fields unknown to k8s-openapi {}: {lost:?}",
            id(v),
            K::KIND
        ));
    }
    Ok(TypeId::of::<K::Scope>() == TypeId::of::<NamespaceResourceScope>())
}

fn diff(original: &Value, back: &Value, path: String, lost: &mut Vec<String>) {
    match (original, back) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, va) in a {
                let p = format!("{path}/{k}");
                match b.get(k) {
                    Some(vb) => diff(va, vb, p, lost),
                    None => lost.push(p),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (va, vb)) in a.iter().zip(b).enumerate() {
                diff(va, vb, format!("{path}/{i}"), lost);
            }
        }
        (a, b) if a == b => {}
        (a, b) => lost.push(format!("{path} ({a} became {b})")),
    }
}

/// Checks one rendered object; returns whether its kind is namespaced.
fn check_object(v: &Value) -> Result<bool, String> {
    match kind_of(v) {
        ("v1", "Namespace") => check_typed::<Namespace>(v),
        ("v1", "ServiceAccount") => check_typed::<ServiceAccount>(v),
        ("v1", "ConfigMap") => check_typed::<ConfigMap>(v),
        ("v1", "Service") => check_typed::<Service>(v),
        ("v1", "PersistentVolumeClaim") => check_typed::<PersistentVolumeClaim>(v),
        ("v1", "Pod") => check_typed::<Pod>(v),
        ("apps/v1", "Deployment") => check_typed::<Deployment>(v),
        ("apps/v1", "StatefulSet") => check_typed::<StatefulSet>(v),
        ("policy/v1", "PodDisruptionBudget") => check_typed::<PodDisruptionBudget>(v),
        ("networking.k8s.io/v1", "NetworkPolicy") => check_typed::<NetworkPolicy>(v),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => check_typed::<ClusterRole>(v),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            check_typed::<ClusterRoleBinding>(v)
        }
        ("rbac.authorization.k8s.io/v1", "Role") => check_typed::<Role>(v),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => check_typed::<RoleBinding>(v),
        ("storage.k8s.io/v1", "StorageClass") => check_typed::<StorageClass>(v),
        ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration") => {
            check_typed::<MutatingWebhookConfiguration>(v)
        }
        ("monitoring.coreos.com/v1", "Prometheus") => common::crd::check(v)
            .map_err(|e| format!("{}: {e}", id(v)))
            .map(|()| true),
        ("monitoring.coreos.com/v1", "ServiceMonitor") => {
            serde_json::from_value::<ServiceMonitor>(v.clone())
                .map_err(|e| format!("{}: {e}", id(v)))?
                .check()
                .map(|()| true)
        }
        ("monitoring.coreos.com/v1", "PrometheusRule") => {
            serde_json::from_value::<PrometheusRule>(v.clone())
                .map_err(|e| format!("{}: {e}", id(v)))?
                .check()
                .map(|()| true)
        }
        ("cert-manager.io/v1", "Issuer") => serde_json::from_value::<Issuer>(v.clone())
            .map_err(|e| format!("{}: {e}", id(v)))?
            .check()
            .map(|()| true),
        ("cert-manager.io/v1", "Certificate") => serde_json::from_value::<Certificate>(v.clone())
            .map_err(|e| format!("{}: {e}", id(v)))?
            .check()
            .map(|()| true),
        (api_version, kind) => Err(format!(
            "{}: no check for {api_version} {kind}: add it to check_object",
            id(v)
        )),
    }
}

#[test]
fn every_kustomization_renders_and_every_object_is_valid() {
    let mut failures = Vec::new();
    for dir in KUSTOMIZATIONS {
        let docs = rendered(dir);
        assert!(!docs.is_empty(), "{dir} renders nothing");
        let mut seen = BTreeSet::new();
        for doc in docs {
            assert!(seen.insert(id(doc)), "{dir}: {} twice", id(doc));
            let name = doc["metadata"]["name"].as_str().unwrap_or_default();
            if name.is_empty() {
                failures.push(format!("{dir}: {} has no name", id(doc)));
            }
            match check_object(doc) {
                Ok(namespaced) => {
                    let ns = doc["metadata"]["namespace"].as_str();
                    match (namespaced, ns) {
                        (true, None) => {
                            failures.push(format!("{dir}: {} has no namespace", id(doc)))
                        }
                        (false, Some(_)) => failures.push(format!(
                            "{dir}: {} is cluster-scoped but has a namespace",
                            id(doc)
                        )),
                        (true, Some(ns)) if *dir != "deploy/examples" && ns != NAMESPACE => {
                            failures.push(format!("{dir}: {} is not in {NAMESPACE}", id(doc)))
                        }
                        _ => {}
                    }
                }
                Err(e) => failures.push(format!("{dir}: {e}")),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Directories under `deploy/` with a kustomization.yaml, and whether each is a Component.
fn kustomization_dirs() -> Vec<(String, bool)> {
    fn walk(dir: &Path, out: &mut Vec<(String, bool)>) {
        let file = dir.join("kustomization.yaml");
        if file.exists() {
            let text = std::fs::read_to_string(&file).expect("readable");
            let doc: Value = serde_saphyr::from_str(&text).expect("kustomization is YAML");
            let rel = dir
                .strip_prefix(root())
                .expect("under the root")
                .to_string_lossy()
                .into_owned();
            out.push((rel, doc["kind"] == "Component"));
        }
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .expect("readable")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.is_dir())
            .collect();
        entries.sort();
        for e in entries {
            walk(&e, out);
        }
    }
    let mut out = Vec::new();
    walk(&root().join("deploy"), &mut out);
    out
}

fn kustomization(dir: &str) -> Value {
    let text = std::fs::read_to_string(root().join(dir).join("kustomization.yaml"))
        .expect("kustomization.yaml");
    serde_saphyr::from_str(&text).expect("YAML")
}

fn string_list(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn every_kustomization_is_rendered_here_and_every_component_is_used() {
    let dirs = kustomization_dirs();
    let listed: BTreeSet<&str> = KUSTOMIZATIONS.iter().copied().collect();
    let mut used_components = BTreeSet::new();
    for (dir, is_component) in &dirs {
        if *is_component {
            continue;
        }
        assert!(
            listed.contains(dir.as_str()),
            "{dir} is not rendered by this test: add it to KUSTOMIZATIONS"
        );
        for c in string_list(&kustomization(dir)["components"]) {
            let path = root().join(dir).join(c).canonicalize().expect("component");
            used_components.insert(path);
        }
    }
    for (dir, is_component) in &dirs {
        if *is_component {
            let path = root().join(dir).canonicalize().expect("dir");
            assert!(
                used_components.contains(&path),
                "component {dir} is used by no overlay, so nothing renders it"
            );
        }
    }
}

#[test]
fn every_manifest_file_is_used_by_a_kustomization() {
    let mut referenced = BTreeSet::new();
    for (dir, _) in kustomization_dirs() {
        let k = kustomization(&dir);
        let mut files = string_list(&k["resources"]);
        for generator in k["configMapGenerator"].as_array().into_iter().flatten() {
            files.extend(string_list(&generator["files"]));
            files.extend(string_list(&generator["envs"]));
        }
        for f in files {
            let path = root().join(&dir).join(f);
            if path.is_file() {
                referenced.insert(path.canonicalize().expect("file"));
            }
        }
    }
    let mut orphans = Vec::new();
    let mut stack = vec![root().join("deploy")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("readable") {
            let path = entry.expect("entry").path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if path.is_dir() {
                stack.push(path);
            } else if (name.ends_with(".yaml") || name.ends_with(".env"))
                && name != "kustomization.yaml"
                && !referenced.contains(&path.canonicalize().expect("file"))
            {
                orphans.push(path.display().to_string());
            }
        }
    }
    assert!(
        orphans.is_empty(),
        "not part of any kustomization: {orphans:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// RBAC

#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Grant {
    group: String,
    resource: String,
    verb: String,
    /// `None`: cluster-wide; `Some(ns)`: only in that namespace.
    namespace: Option<String>,
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        let scope = self.namespace.as_deref().unwrap_or("cluster-wide");
        write!(f, "{} {group}/{} ({scope})", self.verb, self.resource)
    }
}

fn expected_grants() -> BTreeSet<Grant> {
    kube_persist::rbac::API_ACCESS
        .iter()
        .filter(|a| a.in_deploy)
        .flat_map(|a| {
            a.verbs.iter().map(move |verb| Grant {
                group: a.group.to_string(),
                resource: a.resource.to_string(),
                verb: verb.to_string(),
                namespace: a.namespaced.then(|| NAMESPACE.to_string()),
            })
        })
        .collect()
}

fn grants_of(rules: &[PolicyRule], namespace: Option<&str>, out: &mut BTreeSet<Grant>) {
    for rule in rules {
        assert!(
            rule.non_resource_urls
                .as_deref()
                .unwrap_or_default()
                .is_empty(),
            "nonResourceURLs are not used by the code: {rule:?}"
        );
        assert!(
            rule.resource_names
                .as_deref()
                .unwrap_or_default()
                .is_empty(),
            "resourceNames: the RBAC test compares (group, resource, verb, scope) only; extend it first"
        );
        for group in rule.api_groups.as_deref().unwrap_or_default() {
            for resource in rule.resources.as_deref().unwrap_or_default() {
                for verb in &rule.verbs {
                    for s in [group, resource, verb] {
                        assert!(!s.contains('*'), "wildcard in {rule:?}");
                    }
                    out.insert(Grant {
                        group: group.clone(),
                        resource: resource.clone(),
                        verb: verb.clone(),
                        namespace: namespace.map(str::to_string),
                    });
                }
            }
        }
    }
}

fn binds_our_service_account(subjects: Option<&Vec<k8s_openapi::api::rbac::v1::Subject>>) -> bool {
    subjects.into_iter().flatten().any(|s| {
        s.kind == "ServiceAccount"
            && s.name == SERVICE_ACCOUNT
            && s.namespace.as_deref() == Some(NAMESPACE)
    })
}

/// Every (group, resource, verb, scope) the ServiceAccount is granted in a render.
fn granted(docs: &[Value]) -> BTreeSet<Grant> {
    let cluster_roles: Vec<ClusterRole> = all(docs, "ClusterRole");
    let roles: Vec<Role> = all(docs, "Role");
    let cluster_role = |name: &str| {
        cluster_roles
            .iter()
            .find(|r| r.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("ClusterRole {name} is bound but not deployed"))
    };
    let mut out = BTreeSet::new();
    for b in all::<ClusterRoleBinding>(docs, "ClusterRoleBinding") {
        if binds_our_service_account(b.subjects.as_ref()) {
            assert_eq!(b.role_ref.kind, "ClusterRole");
            let rules = cluster_role(&b.role_ref.name)
                .rules
                .clone()
                .unwrap_or_default();
            grants_of(&rules, None, &mut out);
        }
    }
    for b in all::<RoleBinding>(docs, "RoleBinding") {
        if binds_our_service_account(b.subjects.as_ref()) {
            let ns = b.metadata.namespace.clone().expect("namespaced");
            let rules = match b.role_ref.kind.as_str() {
                "ClusterRole" => cluster_role(&b.role_ref.name).rules.clone(),
                "Role" => roles
                    .iter()
                    .find(|r| {
                        r.metadata.name.as_deref() == Some(b.role_ref.name.as_str())
                            && r.metadata.namespace.as_deref() == Some(ns.as_str())
                    })
                    .unwrap_or_else(|| panic!("Role {ns}/{} is not deployed", b.role_ref.name))
                    .rules
                    .clone(),
                other => panic!("roleRef kind {other}"),
            };
            grants_of(&rules.unwrap_or_default(), Some(&ns), &mut out);
        }
    }
    out
}

/// The rules that would match the table, to paste into deploy/base/rbac.yaml.
fn suggested_rules() -> String {
    let mut s = String::new();
    for namespaced in [false, true] {
        s.push_str(if namespaced {
            "Role rules:\n"
        } else {
            "ClusterRole rules:\n"
        });
        for a in kube_persist::rbac::API_ACCESS
            .iter()
            .filter(|a| a.in_deploy && a.namespaced == namespaced)
        {
            s.push_str(&format!(
                "  # {}\n  - apiGroups: [\"{}\"]\n    resources: [{}]\n    verbs: [{}]\n",
                a.used_by,
                a.group,
                a.resource,
                a.verbs.join(", ")
            ));
        }
    }
    s
}

#[test]
fn rbac_grants_exactly_the_api_access_table() {
    let expected = expected_grants();
    for dir in INSTALLS {
        let got = granted(rendered(dir));
        let missing: Vec<_> = expected.difference(&got).collect();
        let extra: Vec<_> = got.difference(&expected).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{dir}: RBAC differs from kube_persist::rbac::API_ACCESS\n\
             used by the code but not granted: {missing:?}\n\
             granted but used by no code: {extra:?}\n\
             deploy/base/rbac.yaml should say:\n{}",
            suggested_rules()
        );
    }
}

/// The provisioner's Deployment.
const PROVISIONER: &str = "kube-persist-provisioner";

#[test]
fn the_deployment_runs_as_the_bound_service_account() {
    for dir in INSTALLS {
        let docs = rendered(dir);
        let deployment: Deployment = find(docs, "Deployment", PROVISIONER);
        let spec = pod_spec(&deployment);
        assert_eq!(spec.service_account_name.as_deref(), Some(SERVICE_ACCOUNT));
        assert_ne!(spec.automount_service_account_token, Some(false));
        let sa: ServiceAccount = find(docs, "ServiceAccount", SERVICE_ACCOUNT);
        assert_eq!(sa.metadata.namespace.as_deref(), Some(NAMESPACE));
        // The webhook calls no API: no token in its pods.
        let webhook: Deployment = find(docs, "Deployment", "kube-persist");
        assert_eq!(
            pod_spec(&webhook).automount_service_account_token,
            Some(false),
            "{dir}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Deployment, Service, webhook: consistent with each other and with the server's flags

fn pod_spec(d: &Deployment) -> &PodSpec {
    d.spec.template.spec.as_ref().expect("pod spec")
}

fn container(d: &Deployment) -> &Container {
    let spec = pod_spec(d);
    assert_eq!(spec.containers.len(), 1, "one container");
    &spec.containers[0]
}

fn container_port(c: &Container, name: &str) -> i32 {
    c.ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no container port named {name}"))
        .container_port
}

/// The container's command line, parsed by the real CLI.
fn serve_args(c: &Container) -> kube_persist::cli::ServeArgs {
    let command = c.command.clone().unwrap_or_default();
    assert_eq!(command.len(), 1, "command is the binary alone: {command:?}");
    assert!(command[0].ends_with("/kube-persist"), "command {command:?}");
    let argv = command.iter().chain(c.args.iter().flatten());
    let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("args do not parse: {e}"));
    assert_eq!(
        cli.log_format,
        kube_persist::cli::LogFormat::Json,
        "logs are JSON in the cluster"
    );
    match cli.command {
        Some(CliCommand::Serve(args)) => args,
        other => panic!("the container runs {other:?}, not serve"),
    }
}

/// The path a volume named `volume` is mounted at.
fn mount_path<'a>(c: &'a Container, volume: &str) -> &'a str {
    let mounts: Vec<_> = c
        .volume_mounts
        .iter()
        .flatten()
        .filter(|m| m.name == volume)
        .collect();
    assert_eq!(mounts.len(), 1, "volume {volume} mounted once");
    assert!(
        mounts[0].sub_path.is_none() && mounts[0].sub_path_expr.is_none(),
        "{volume}: subPath mounts never see updates (certificate rotation, policy reload)"
    );
    &mounts[0].mount_path
}

fn volume<'a>(spec: &'a PodSpec, name: &str) -> &'a k8s_openapi::api::core::v1::Volume {
    spec.volumes
        .iter()
        .flatten()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no volume {name}"))
}

fn env_value<'a>(c: &'a Container, name: &str) -> &'a k8s_openapi::api::core::v1::EnvVar {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("no env {name}"))
}

/// The value of an env var that is a literal or a ConfigMap key in the render.
fn resolve_env(docs: &[Value], c: &Container, name: &str) -> String {
    let var = env_value(c, name);
    if let Some(v) = &var.value {
        return v.clone();
    }
    let key_ref = var
        .value_from
        .as_ref()
        .and_then(|f| f.config_map_key_ref.as_ref())
        .unwrap_or_else(|| panic!("{name}: neither a value nor a ConfigMap key"));
    let cm: ConfigMap = find(docs, "ConfigMap", &key_ref.name);
    cm.data
        .unwrap_or_default()
        .get(&key_ref.key)
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "{name}: ConfigMap {} has no key {}",
                key_ref.name, key_ref.key
            )
        })
}

fn pod_labels(d: &Deployment) -> BTreeMap<String, String> {
    d.spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

/// Whether `selector` selects an object with `labels` (matchLabels and matchExpressions).
fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_labels = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expressions = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.clone().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            other => panic!("unknown operator {other}"),
        }
    });
    by_labels && by_expressions
}

#[test]
fn the_container_command_line_matches_the_mounts_and_ports() {
    for dir in INSTALLS {
        let docs = rendered(dir);
        let d: Deployment = find(docs, "Deployment", "kube-persist");
        let c = container(&d);
        let spec = pod_spec(&d);
        let args = serve_args(c);

        assert!(
            !args.provisioner,
            "{dir}: the provisioner runs in its own Deployment, not beside the webhook"
        );
        let tls_dir = mount_path(c, "tls");
        let tls_secret = volume(spec, "tls")
            .secret
            .as_ref()
            .expect("tls is a Secret");
        assert_eq!(tls_secret.secret_name.as_deref(), Some("kube-persist-tls"));
        assert_eq!(
            args.tls_cert.as_deref(),
            Some(Path::new(tls_dir).join("tls.crt").as_path()),
            "{dir}: --tls-cert is the Secret's tls.crt"
        );
        assert_eq!(
            args.tls_key.as_deref(),
            Some(Path::new(tls_dir).join("tls.key").as_path()),
            "{dir}: --tls-key is the Secret's tls.key"
        );

        let policy_cm = volume(spec, "policy")
            .config_map
            .as_ref()
            .expect("policy is a ConfigMap");
        let cm: ConfigMap = find(docs, "ConfigMap", &policy_cm.name);
        let file = args.policy.as_deref().expect("--policy");
        assert_eq!(file.parent(), Some(Path::new(mount_path(c, "policy"))));
        let key = file.file_name().expect("file").to_string_lossy();
        assert!(
            cm.data.unwrap_or_default().contains_key(key.as_ref()),
            "{dir}: ConfigMap {} has no {key}",
            policy_cm.name
        );

        assert_eq!(
            args.listen.port(),
            u16::try_from(container_port(c, "https")).expect("port"),
            "{dir}: --listen and containerPort https"
        );
        assert_eq!(
            args.admin_listen.port(),
            u16::try_from(container_port(c, "admin")).expect("port"),
            "{dir}: --admin-listen and containerPort admin"
        );
        assert!(args.listen.ip().is_unspecified() && args.admin_listen.ip().is_unspecified());

        // Nothing of the webhook pod depends on NFS: its readiness cannot.
        assert!(
            spec.volumes.iter().flatten().all(|v| v.nfs.is_none()),
            "{dir}: an NFS volume in the webhook pod"
        );
    }
}

/// The provisioner's container command line, parsed by the real CLI.
fn provisioner_args(c: &Container) -> kube_persist::cli::ProvisionerArgs {
    let command = c.command.clone().unwrap_or_default();
    assert_eq!(command.len(), 1, "command is the binary alone: {command:?}");
    assert!(command[0].ends_with("/kube-persist"), "command {command:?}");
    let argv = command.iter().chain(c.args.iter().flatten());
    let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("args do not parse: {e}"));
    assert_eq!(cli.log_format, kube_persist::cli::LogFormat::Json);
    match cli.command {
        Some(CliCommand::Provisioner(args)) => args,
        other => panic!("the container runs {other:?}, not provisioner"),
    }
}

/// The provisioner runs alone in its pods, on the export its environment names, with its
/// readiness (the mount) and liveness (its loops) probed on its own admin port.
#[test]
fn the_provisioner_runs_alone_on_the_mounted_export_with_its_own_probes() {
    for dir in INSTALLS {
        let docs = rendered(dir);
        let d: Deployment = find(docs, "Deployment", PROVISIONER);
        let c = container(&d);
        let spec = pod_spec(&d);
        let args = provisioner_args(c);
        assert_eq!(
            args.nfs_root,
            Path::new(mount_path(c, "nfs-root")),
            "{dir}: --nfs-root is where the export is mounted"
        );
        let nfs = volume(spec, "nfs-root")
            .nfs
            .as_ref()
            .expect("an nfs volume");
        assert_eq!(resolve_env(docs, c, "NFS_SERVER"), nfs.server);
        assert_eq!(resolve_env(docs, c, "NFS_PATH"), nfs.path);
        assert!(nfs.path.starts_with('/'), "NFS_PATH is absolute");
        let lease_ns = env_value(c, "KUBE_PERSIST_LEASE_NAMESPACE")
            .value_from
            .as_ref()
            .and_then(|f| f.field_ref.as_ref())
            .map(|f| f.field_path.as_str());
        assert_eq!(
            lease_ns,
            Some("metadata.namespace"),
            "the Role is in our namespace"
        );
        assert_eq!(
            args.provisioner_admin_listen.port(),
            u16::try_from(container_port(c, "admin")).expect("port"),
            "{dir}: --provisioner-admin-listen and containerPort admin"
        );
        assert!(args.provisioner_admin_listen.ip().is_unspecified());
        assert_eq!(c.ports.iter().flatten().count(), 1, "only the admin port");
        // A rollout never removes an old replica before a new one sees a healthy mount.
        let rolling = d
            .spec
            .strategy
            .as_ref()
            .and_then(|s| s.rolling_update.as_ref())
            .expect("a rolling update");
        assert_eq!(
            rolling.max_unavailable,
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(0))
        );
        // Not in the webhook's Service, not under its disruption budget.
        let labels = pod_labels(&d);
        let service: Service = find(docs, "Service", "kube-persist");
        let selector = service
            .spec
            .and_then(|s| s.selector)
            .expect("the webhook Service selects pods");
        assert!(
            !selector.iter().all(|(k, v)| labels.get(k) == Some(v)),
            "{dir}: the webhook Service would route reviews to the provisioner"
        );
        let pdb: PodDisruptionBudget = find(docs, "PodDisruptionBudget", "kube-persist");
        assert!(!selects(
            pdb.spec
                .and_then(|s| s.selector)
                .as_ref()
                .expect("selector"),
            &labels
        ));
    }
}

#[test]
fn every_env_var_is_read_by_the_cli_or_is_downward_api_metadata() {
    let cli = Cli::command();
    let serve = cli
        .get_subcommands()
        .find(|s| s.get_name() == "serve")
        .expect("serve");
    let provisioner = cli
        .get_subcommands()
        .find(|s| s.get_name() == "provisioner")
        .expect("provisioner");
    let mut known: BTreeSet<String> = serve
        .get_arguments()
        .chain(provisioner.get_arguments())
        .chain(cli.get_arguments())
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    // Informational: the pod's identity (logs, events, Lease holder).
    known.extend(["POD_NAME".to_string(), "POD_NAMESPACE".to_string()]);
    for dir in INSTALLS {
        for name in ["kube-persist", PROVISIONER] {
            let d: Deployment = find(rendered(dir), "Deployment", name);
            for var in container(&d).env.iter().flatten() {
                assert!(
                    known.contains(&var.name),
                    "{dir}: env {} of {name} is read by nothing (known: {known:?})",
                    var.name
                );
            }
        }
    }
}

#[test]
fn the_pod_is_hardened_and_highly_available() {
    for dir in INSTALLS {
        for name in ["kube-persist", PROVISIONER] {
            hardened_and_spread(dir, name);
        }
        let docs = rendered(dir);
        let d: Deployment = find(docs, "Deployment", "kube-persist");
        // The pod template's labels are what every selector relies on.
        let labels = pod_labels(&d);
        let pdb: PodDisruptionBudget = find(docs, "PodDisruptionBudget", "kube-persist");
        let pdb_spec = pdb.spec.expect("spec");
        assert!(selects(
            pdb_spec.selector.as_ref().expect("selector"),
            &labels
        ));
        assert!(
            pdb_spec.min_available.is_some() || pdb_spec.max_unavailable.is_some(),
            "{dir}: a disruption budget"
        );
    }
}

/// Deployment `name` of the render of `dir`: two replicas spread over nodes, a restricted pod,
/// resources, and HTTP probes on its admin port.
fn hardened_and_spread(dir: &str, name: &str) {
    {
        let docs = rendered(dir);
        let d: Deployment = find(docs, "Deployment", name);
        let spec = pod_spec(&d);
        let c = container(&d);
        let dspec = &d.spec;
        assert_eq!(dspec.replicas, Some(2), "{dir}: two replicas");

        let pod_sc = spec.security_context.as_ref().expect("pod securityContext");
        assert_eq!(pod_sc.run_as_non_root, Some(true));
        assert!(pod_sc.run_as_user.is_some_and(|u| u != 0));
        assert_eq!(
            pod_sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
            Some("RuntimeDefault")
        );
        let sc = c
            .security_context
            .as_ref()
            .expect("container securityContext");
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_ne!(sc.privileged, Some(true));
        let caps = sc.capabilities.as_ref().expect("capabilities");
        assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
        assert!(caps.add.as_deref().unwrap_or_default().is_empty());
        assert_eq!(
            sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
            Some("RuntimeDefault")
        );

        let resources = c.resources.as_ref().expect("resources");
        let requests = resources.requests.clone().unwrap_or_default();
        let limits = resources.limits.clone().unwrap_or_default();
        assert!(requests.contains_key("cpu") && requests.contains_key("memory"));
        assert!(limits.contains_key("memory"), "{dir}: a memory limit");

        for (probe, path) in [
            (c.liveness_probe.as_ref(), "/livez"),
            (c.readiness_probe.as_ref(), "/readyz"),
        ] {
            let get = probe
                .and_then(|p| p.http_get.as_ref())
                .expect("httpGet probe");
            assert_eq!(get.path.as_deref(), Some(path));
            assert_eq!(
                get.port,
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("admin".into()),
                "{dir}: probes on the admin port"
            );
            assert_ne!(
                get.scheme.as_deref(),
                Some("HTTPS"),
                "the admin port is HTTP"
            );
        }

        let labels = pod_labels(&d);
        assert!(selects(&dspec.selector, &labels));
        let anti = spec
            .affinity
            .as_ref()
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .expect("podAntiAffinity");
        let terms: Vec<_> = anti
            .preferred_during_scheduling_ignored_during_execution
            .iter()
            .flatten()
            .map(|w| &w.pod_affinity_term)
            .chain(
                anti.required_during_scheduling_ignored_during_execution
                    .iter()
                    .flatten(),
            )
            .collect();
        assert!(!terms.is_empty());
        for t in terms {
            assert_eq!(t.topology_key, "kubernetes.io/hostname");
            assert!(selects(
                t.label_selector.as_ref().expect("selector"),
                &labels
            ));
        }
    }
}

#[test]
fn the_image_is_tagged_with_the_crate_version() {
    for dir in INSTALLS {
        for name in ["kube-persist", PROVISIONER] {
            let d: Deployment = find(rendered(dir), "Deployment", name);
            let image = container(&d).image.clone().unwrap_or_default();
            let tag = image.rsplit_once(':').map(|(_, t)| t);
            assert_eq!(
                tag,
                Some(env!("CARGO_PKG_VERSION")),
                "{dir}: {name}: image {image}: bump newTag in deploy/base/kustomization.yaml with the version"
            );
        }
    }
}

/// The five target kinds: (group, version, resource).
const TARGETS: &[(&str, &str, &str)] = &[
    ("monitoring.coreos.com", "v1", "prometheuses"),
    ("monitoring.coreos.com", "v1alpha1", "prometheusagents"),
    ("monitoring.coreos.com", "v1", "alertmanagers"),
    ("monitoring.coreos.com", "v1", "thanosrulers"),
    ("apps", "v1", "statefulsets"),
];

fn webhook(docs: &[Value]) -> k8s_openapi::api::admissionregistration::v1::MutatingWebhook {
    let config: MutatingWebhookConfiguration =
        find(docs, "MutatingWebhookConfiguration", "kube-persist");
    let mut hooks = config.webhooks.unwrap_or_default();
    assert_eq!(
        hooks.len(),
        1,
        "one webhook (certs/install.sh patches index 0)"
    );
    hooks.remove(0)
}

#[test]
fn the_webhook_calls_the_service_the_server_listens_behind() {
    let default_listen = match Cli::try_parse_from(["kube-persist", "serve"])
        .expect("parses")
        .command
    {
        Some(CliCommand::Serve(args)) => args.listen,
        _ => unreachable!(),
    };
    for dir in INSTALLS {
        let docs = rendered(dir);
        let hook = webhook(docs);
        let svc_ref = hook.client_config.service.as_ref().expect("a Service");
        assert!(hook.client_config.url.is_none());
        assert_eq!(
            svc_ref.path.as_deref(),
            Some("/mutate"),
            "the server's path"
        );
        let service: Service = find(docs, "Service", &svc_ref.name);
        assert_eq!(
            service.metadata.namespace.as_deref(),
            Some(svc_ref.namespace.as_str())
        );
        assert_eq!(svc_ref.namespace, NAMESPACE);
        let port = svc_ref.port.unwrap_or(443);
        assert_eq!(port, 443);
        let sspec = service.spec.as_ref().expect("spec");
        let service_port = sspec
            .ports
            .iter()
            .flatten()
            .find(|p| p.port == port)
            .expect("the webhook's port is a Service port");
        assert_eq!(service_port.name.as_deref(), Some("https"));

        // Service -> pod: the selector picks the Deployment's pods and the target port is
        // the container port the server listens on.
        let d: Deployment = find(docs, "Deployment", "kube-persist");
        let labels = pod_labels(&d);
        let selector = sspec.selector.clone().unwrap_or_default();
        assert!(!selector.is_empty());
        assert!(selector.iter().all(|(k, v)| labels.get(k) == Some(v)));
        let target = match service_port.target_port.as_ref().expect("targetPort") {
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(name) => {
                container_port(container(&d), name)
            }
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n) => *n,
        };
        assert_eq!(i32::from(default_listen.port()), target);
        assert_eq!(i32::from(serve_args(container(&d)).listen.port()), target);
        assert!(
            sspec
                .ports
                .iter()
                .flatten()
                .any(|p| p.name.as_deref() == Some("admin")),
            "{dir}: the admin port is exposed for scraping"
        );
    }
}

#[test]
fn the_webhook_rules_and_settings_are_those_of_the_spec() {
    for dir in INSTALLS {
        let hook = webhook(rendered(dir));
        assert_eq!(hook.admission_review_versions, ["v1"]);
        assert_eq!(hook.side_effects, "None");
        assert_eq!(hook.timeout_seconds, Some(5));
        assert_eq!(hook.reinvocation_policy.as_deref(), Some("IfNeeded"));
        assert_eq!(hook.match_policy.as_deref(), Some("Equivalent"));
        assert!(hook.object_selector.is_none(), "{dir}: no objectSelector");
        let expected_policy = if *dir == "deploy/overlays/fail-closed" {
            "Fail"
        } else {
            "Ignore"
        };
        assert_eq!(
            hook.failure_policy.as_deref(),
            Some(expected_policy),
            "{dir}"
        );
        assert!(
            hook.name.split('.').count() >= 3,
            "webhook names are fully qualified"
        );

        let mut got = BTreeSet::new();
        for rule in hook.rules.iter().flatten() {
            let ops: BTreeSet<&str> = rule
                .operations
                .iter()
                .flatten()
                .map(String::as_str)
                .collect();
            assert_eq!(ops, BTreeSet::from(["CREATE", "UPDATE"]), "{dir}: {rule:?}");
            assert_eq!(rule.scope.as_deref(), Some("Namespaced"));
            for g in rule.api_groups.iter().flatten() {
                for v in rule.api_versions.iter().flatten() {
                    for r in rule.resources.iter().flatten() {
                        assert!(!r.contains('/'), "no subresources: {r}");
                        assert!(!r.contains('*') && !g.contains('*') && !v.contains('*'));
                        assert!(
                            got.insert((g.clone(), v.clone(), r.clone())),
                            "{g}/{v} {r} twice"
                        );
                    }
                }
            }
        }
        let want: BTreeSet<(String, String, String)> = TARGETS
            .iter()
            .map(|(g, v, r)| (g.to_string(), v.to_string(), r.to_string()))
            .collect();
        assert_eq!(got, want, "{dir}: the five target kinds exactly");
    }
}

#[test]
fn the_namespace_selector_excludes_the_control_plane_ourselves_and_opted_out_namespaces() {
    let ns = |name: &str, extra: &[(&str, &str)]| {
        let mut labels =
            BTreeMap::from([("kubernetes.io/metadata.name".to_string(), name.to_string())]);
        for (k, v) in extra {
            labels.insert(k.to_string(), v.to_string());
        }
        labels
    };
    for dir in INSTALLS {
        let docs = rendered(dir);
        let selector = webhook(docs).namespace_selector.expect("namespaceSelector");
        assert!(!selects(&selector, &ns("kube-system", &[])), "{dir}");
        assert!(!selects(&selector, &ns(NAMESPACE, &[])), "{dir}");
        assert!(!selects(
            &selector,
            &ns("monitoring", &[("kube-persist.io/skip", "true")])
        ));
        assert!(selects(&selector, &ns("monitoring", &[])), "{dir}");
        assert!(selects(&selector, &ns("default", &[])), "{dir}");
        assert!(selects(
            &selector,
            &ns("monitoring", &[("kube-persist.io/skip", "false")])
        ));
        // Our own Namespace object, as deployed, is excluded by either rule.
        let our: Namespace = find(docs, "Namespace", NAMESPACE);
        let mut labels = our.metadata.labels.unwrap_or_default();
        labels.insert("kubernetes.io/metadata.name".into(), NAMESPACE.into());
        assert!(!selects(&selector, &labels));
    }
}

/// The Prometheus-Operator CRDs: `tests/fixtures/crds/` if the repository carries them, else
/// the shared fixtures beside the repository.
#[test]
fn the_webhook_rule_versions_are_served_by_the_crds() {
    for (group, version, plural) in TARGETS.iter().filter(|t| t.0 == "monitoring.coreos.com") {
        let crd = common::crd::load(plural);
        assert_eq!(crd["spec"]["group"], *group);
        assert_eq!(crd["spec"]["names"]["plural"], *plural);
        let served = crd["spec"]["versions"]
            .as_array()
            .expect("versions")
            .iter()
            .any(|v| v["name"] == *version && v["served"] == true);
        assert!(served, "{plural} {version} is not served by the CRD");
    }
}

// ---------------------------------------------------------------------------------------------
// StorageClass, policy, provisioner

#[test]
fn the_storage_class_is_served_by_the_provisioner_and_named_by_the_policy() {
    let default_provisioner = match Cli::try_parse_from(["kube-persist", "provisioner"])
        .expect("parses")
        .command
    {
        Some(CliCommand::Provisioner(args)) => args.provisioner_name,
        _ => unreachable!(),
    };
    for dir in INSTALLS {
        let docs = rendered(dir);
        let d: Deployment = find(docs, "Deployment", PROVISIONER);
        let provisioner = resolve_env(docs, container(&d), "PROVISIONER_NAME");
        assert_eq!(
            provisioner, "fuseim.pri/ifs",
            "the seed value, for compatibility"
        );
        assert_eq!(provisioner, default_provisioner);

        let policy: ConfigMap = find(docs, "ConfigMap", "kube-persist-policy");
        let policy_yaml = policy.data.unwrap_or_default()["policy.yaml"].clone();
        let policy: Value = serde_saphyr::from_str(&policy_yaml).expect("policy is YAML");
        let class_name = policy["storageClassName"]
            .as_str()
            .expect("storageClassName");
        let class: StorageClass = find(docs, "StorageClass", class_name);
        assert_eq!(class.provisioner, provisioner);
        assert_eq!(class_name, "prometheus-data-db");
        assert_ne!(
            class.allow_volume_expansion,
            Some(true),
            "the provisioner cannot resize"
        );
        let params = class.parameters.unwrap_or_default();
        for key in params.keys() {
            assert!(
                [
                    "onDelete",
                    "archiveOnDelete",
                    "pathPattern",
                    "mode",
                    "uid",
                    "gid"
                ]
                .contains(&key.as_str()),
                "unknown StorageClass parameter {key}"
            );
        }
    }
}

#[test]
fn the_policy_config_map_holds_the_default_policy() {
    let text = std::fs::read_to_string(root().join("deploy/base/policy.yaml")).expect("policy");
    let got: Value = serde_saphyr::from_str(&text).expect("YAML");
    let want = serde_json::json!({
        "mode": "enforce",
        "storageClassName": "prometheus-data-db",
        "size": "100Gi",
        "accessModes": ["ReadWriteOnce"],
        "targets": { "prometheusOperator": true, "statefulSets": true },
        "onUpdate": "warn",
        "retentionPolicy": "Retain",
        "retentionSizeRatio": 0.85,
        "strict": false,
        "excludeNamespaces": ["kube-system", "kube-public", "kube-node-lease"],
        "namespaces": {},
        "statefulSets": { "excludeVolumeNames": ["^tmp", "cache", "scratch", "^run$", "sock", "shm"] },
    });
    assert_eq!(got, want);
    for pattern in got["statefulSets"]["excludeVolumeNames"]
        .as_array()
        .into_iter()
        .flatten()
    {
        regex::Regex::new(pattern.as_str().expect("string")).expect("a valid regex");
    }
}

// ---------------------------------------------------------------------------------------------
// Monitoring (ServiceMonitor, PrometheusRule): strict serde types, as their CRDs are not here

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceMonitor {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    spec: ServiceMonitorSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceMonitorSpec {
    job_label: Option<String>,
    selector: LabelSelector,
    namespace_selector: Option<NamespaceSelector>,
    endpoints: Vec<Endpoint>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NamespaceSelector {
    #[serde(default)]
    any: bool,
    #[serde(default)]
    match_names: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Endpoint {
    port: Option<String>,
    path: Option<String>,
    scheme: Option<String>,
    interval: Option<String>,
    scrape_timeout: Option<String>,
}

/// Prometheus' duration syntax, as the Prometheus-Operator CRDs declare it.
fn is_prometheus_duration(s: &str) -> bool {
    let re = regex::Regex::new(
        r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
    )
    .expect("regex");
    !s.is_empty() && re.is_match(s)
}

impl ServiceMonitor {
    fn check(&self) -> Result<(), String> {
        let name = self.metadata.name.clone().unwrap_or_default();
        if self.api_version != "monitoring.coreos.com/v1" || self.kind != "ServiceMonitor" {
            return Err(format!("ServiceMonitor {name}: apiVersion/kind"));
        }
        if self.spec.endpoints.is_empty() {
            return Err(format!("ServiceMonitor {name}: no endpoints"));
        }
        for e in &self.spec.endpoints {
            if e.port.is_none() {
                return Err(format!(
                    "ServiceMonitor {name}: endpoint without a port name"
                ));
            }
            if !matches!(e.scheme.as_deref(), None | Some("http" | "https")) {
                return Err(format!("ServiceMonitor {name}: scheme {:?}", e.scheme));
            }
            for d in [&e.interval, &e.scrape_timeout].into_iter().flatten() {
                if !is_prometheus_duration(d) {
                    return Err(format!("ServiceMonitor {name}: duration {d}"));
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PrometheusRule {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    spec: PrometheusRuleSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PrometheusRuleSpec {
    groups: Vec<RuleGroup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RuleGroup {
    name: String,
    interval: Option<String>,
    rules: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Rule {
    alert: Option<String>,
    record: Option<String>,
    expr: String,
    #[serde(rename = "for")]
    for_: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

impl PrometheusRule {
    fn check(&self) -> Result<(), String> {
        let name = self.metadata.name.clone().unwrap_or_default();
        let err = |m: String| Err(format!("PrometheusRule {name}: {m}"));
        if self.api_version != "monitoring.coreos.com/v1" || self.kind != "PrometheusRule" {
            return err("apiVersion/kind".into());
        }
        let mut groups = BTreeSet::new();
        let mut alerts = BTreeSet::new();
        for g in &self.spec.groups {
            if !groups.insert(&g.name) {
                return err(format!("group {} twice", g.name));
            }
            if let Some(i) = &g.interval
                && !is_prometheus_duration(i)
            {
                return err(format!("interval {i}"));
            }
            for r in &g.rules {
                match (&r.alert, &r.record) {
                    (Some(a), None) => {
                        if !alerts.insert(a.clone()) {
                            return err(format!("alert {a} twice"));
                        }
                        if !matches!(
                            r.labels.get("severity").map(String::as_str),
                            Some("warning" | "critical" | "info")
                        ) {
                            return err(format!("{a}: severity label"));
                        }
                        if !r.annotations.contains_key("summary")
                            || !r.annotations.contains_key("description")
                        {
                            return err(format!("{a}: summary and description"));
                        }
                    }
                    (None, Some(_)) => {}
                    _ => return err("a rule is an alert or a record".into()),
                }
                if let Some(f) = &r.for_
                    && !is_prometheus_duration(f)
                {
                    return err(format!("for: {f}"));
                }
                if let Err(e) = balanced(&r.expr) {
                    return err(format!("expr {:?}: {e}", r.expr));
                }
            }
        }
        Ok(())
    }

    fn alerts(&self) -> impl Iterator<Item = &Rule> {
        self.spec
            .groups
            .iter()
            .flat_map(|g| &g.rules)
            .filter(|r| r.alert.is_some())
    }
}

/// Brackets and quotes balance in a PromQL expression (promtool is not available here).
fn balanced(expr: &str) -> Result<(), String> {
    let mut stack = Vec::new();
    let mut quote = None;
    for c in expr.chars() {
        if let Some(q) = quote {
            if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' | '`' => quote = Some(c),
            '(' | '[' | '{' => stack.push(c),
            ')' | ']' | '}' => {
                let open = stack.pop().ok_or(format!("unopened {c}"))?;
                if !matches!((open, c), ('(', ')') | ('[', ']') | ('{', '}')) {
                    return Err(format!("{open} closed by {c}"));
                }
            }
            _ => {}
        }
    }
    match (stack.last(), quote) {
        (None, None) => Ok(()),
        _ => Err("unclosed bracket or quote".into()),
    }
}

#[test]
fn the_service_monitor_scrapes_the_admin_port_of_our_service() {
    let docs = rendered("deploy/overlays/monitoring");
    let sm: ServiceMonitor = find(docs, "ServiceMonitor", "kube-persist");
    let service: Service = find(docs, "Service", "kube-persist");
    let service_labels = service.metadata.labels.clone().unwrap_or_default();
    assert!(
        selects(&sm.spec.selector, &service_labels),
        "selects the Service"
    );
    let namespaces = sm
        .spec
        .namespace_selector
        .as_ref()
        .expect("namespaceSelector");
    assert!(
        namespaces.any
            || namespaces
                .match_names
                .iter()
                .any(|n| Some(n.as_str()) == service.metadata.namespace.as_deref())
    );
    let port_names: BTreeSet<_> = service
        .spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .filter_map(|p| p.name.clone())
        .collect();
    for e in &sm.spec.endpoints {
        assert_eq!(
            e.port.as_deref(),
            Some("admin"),
            "metrics are on the admin port"
        );
        assert!(port_names.contains(e.port.as_deref().unwrap_or_default()));
        assert_eq!(e.path.as_deref().unwrap_or("/metrics"), "/metrics");
        assert_ne!(e.scheme.as_deref(), Some("https"));
    }
    // The job label is what the alerts select on.
    let job = sm
        .spec
        .job_label
        .as_ref()
        .and_then(|l| service_labels.get(l))
        .cloned()
        .unwrap_or_else(|| service.metadata.name.clone().unwrap_or_default());
    let rule: PrometheusRule = find(docs, "PrometheusRule", "kube-persist");
    for r in rule.alerts() {
        if r.expr.contains("job=") {
            assert!(
                r.expr.contains(&format!("job=\"{job}\"")),
                "{:?} selects another job than {job}",
                r.alert
            );
        }
    }
}

/// The NetworkPolicy lets the webhook port in only from an address block (the API server's,
/// which the user sets: the placeholder is no CIDR, so an unedited policy is refused rather
/// than cutting the webhook off) and the admin port only from Prometheus pods, and it selects
/// the pods by the labels and port names the Deployment has.
#[test]
fn the_network_policy_admits_the_api_server_and_monitoring_only() {
    let docs = rendered("deploy/overlays/network-policy");
    let policy = docs
        .iter()
        .find(|d| kind_of(d) == ("networking.k8s.io/v1", "NetworkPolicy"))
        .expect("the overlay renders a NetworkPolicy");
    let deployment = docs
        .iter()
        .find(|d| kind_of(d).1 == "Deployment")
        .expect("a Deployment");
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for (key, value) in policy["spec"]["podSelector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(&pod_labels[key], value, "podSelector {key}");
    }
    assert_eq!(
        policy["spec"]["policyTypes"],
        serde_json::json!(["Ingress"])
    );
    let ports: Vec<&str> = deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    let rules = policy["spec"]["ingress"].as_array().unwrap();
    assert_eq!(rules.len(), 2, "{rules:?}");
    let port_of = |rule: &Value| rule["ports"][0]["port"].as_str().unwrap().to_string();
    for rule in rules {
        assert!(ports.contains(&port_of(rule).as_str()), "{rule}");
        assert_eq!(rule["ports"].as_array().unwrap().len(), 1, "{rule}");
    }
    let webhook = rules.iter().find(|r| port_of(r) == "https").unwrap();
    let from = webhook["from"].as_array().unwrap();
    assert!(
        from.iter()
            .all(|f| f.get("ipBlock").is_some() && f.as_object().unwrap().len() == 1)
    );
    let placeholder = from[0]["ipBlock"]["cidr"].as_str().unwrap();
    let (address, bits) = placeholder.split_once('/').unwrap_or((placeholder, ""));
    assert!(
        address.parse::<std::net::IpAddr>().is_err() || bits.parse::<u8>().is_err(),
        "the placeholder {placeholder:?} must not be a usable CIDR"
    );
    let admin = rules.iter().find(|r| port_of(r) == "admin").unwrap();
    let from = &admin["from"][0];
    assert_eq!(
        from["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "monitoring"
    );
    assert_eq!(
        from["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
        "prometheus"
    );
}

#[test]
fn the_alerts_cover_webhook_errors_latency_provisioning_and_volume_usage() {
    let docs = rendered("deploy/overlays/monitoring");
    let rule: PrometheusRule = find(docs, "PrometheusRule", "kube-persist");
    let exprs: Vec<&str> = rule.alerts().map(|r| r.expr.as_str()).collect();
    let covered = |metric: &str| exprs.iter().any(|e| e.contains(metric));
    for metric in [
        // webhook errors and latency (the server's metrics)
        "kube_persist_admission_requests_total",
        "kube_persist_admission_duration_seconds_bucket",
        // calls that never reached the server, as counted by the API server
        "apiserver_admission_webhook_fail_open_count",
        // provisioning failures
        "kube_persist_provisioner_failures_total",
        // volume usage near its request
        "kube_persist_volume_used_bytes",
        "kube_persist_volume_requested_bytes",
        // audit records lost
        "kube_persist_audit_records_dropped_total",
    ] {
        assert!(covered(metric), "no alert uses {metric}");
    }
    // Every kube-persist metric an alert names is one the code registers.
    let mut registry = prometheus_client::registry::Registry::default();
    // Families only show once they have a series: give each one.
    let server = kube_persist::metrics::WebhookMetrics::register(&mut registry);
    server.reload("policy", true);
    server.error("malformed_json");
    server
        .audit_dropped
        .get_or_create(&kube_persist::metrics::AuditDropLabels {
            reason: "queue_full",
        })
        .inc();
    server
        .requests
        .get_or_create(&kube_persist::metrics::RequestLabels {
            kind: "Prometheus",
            operation: "CREATE",
            decision: "mutated",
        })
        .inc();
    let provisioner = kube_persist::provisioner::metrics::Metrics::new(&mut registry);
    let op = kube_persist::provisioner::metrics::Operation::Provision;
    provisioner.success(op, std::time::Duration::from_millis(1));
    provisioner.failure(op, "test", None);
    provisioner.set_requested("pv", 1);
    provisioner.set_used("pv", 1, true);
    let exposed = kube_persist::metrics::render(&registry);
    let named = regex::Regex::new(r"kube_persist_\w+").expect("regex");
    for e in &exprs {
        for m in named.find_iter(e) {
            let base = ["_total", "_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| m.as_str().strip_suffix(s))
                .unwrap_or(m.as_str());
            assert!(
                exposed.contains(&format!("# TYPE {base} ")),
                "the alert expression {e:?} names {}, which the code does not export:\n{exposed}",
                m.as_str()
            );
        }
    }
    // Alerts that name the webhook use the name it is deployed with.
    let hook_name = webhook(docs).name;
    let re = regex::Regex::new(r#"apiserver_admission_webhook_\w+\{[^}]*name="([^"]+)""#)
        .expect("regex");
    for e in &exprs {
        for cap in re.captures_iter(e) {
            assert_eq!(&cap[1], hook_name, "{e}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// cert-manager overlay: strict serde types for Issuer and Certificate

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Issuer {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    spec: IssuerSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct IssuerSpec {
    self_signed: Option<Empty>,
    ca: Option<CaIssuer>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CaIssuer {
    secret_name: String,
}

impl Issuer {
    fn check(&self) -> Result<(), String> {
        let kinds =
            usize::from(self.spec.self_signed.is_some()) + usize::from(self.spec.ca.is_some());
        if self.api_version != "cert-manager.io/v1" || self.kind != "Issuer" || kinds != 1 {
            return Err(format!("Issuer {:?}: one issuer type", self.metadata.name));
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Certificate {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    spec: CertificateSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CertificateSpec {
    secret_name: String,
    common_name: Option<String>,
    #[serde(default)]
    dns_names: Vec<String>,
    duration: Option<String>,
    renew_before: Option<String>,
    #[serde(rename = "isCA", default)]
    is_ca: bool,
    private_key: Option<PrivateKey>,
    #[serde(default)]
    usages: Vec<String>,
    issuer_ref: IssuerRef,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PrivateKey {
    algorithm: Option<String>,
    size: Option<u32>,
    rotation_policy: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct IssuerRef {
    name: String,
    kind: Option<String>,
    group: Option<String>,
}

/// Go's `time.ParseDuration` syntax, which cert-manager uses.
fn is_go_duration(s: &str) -> bool {
    regex::Regex::new(r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$")
        .expect("regex")
        .is_match(s)
}

impl Certificate {
    fn check(&self) -> Result<(), String> {
        let name = self.metadata.name.clone().unwrap_or_default();
        let err = |m: &str| Err(format!("Certificate {name}: {m}"));
        if self.api_version != "cert-manager.io/v1" || self.kind != "Certificate" {
            return err("apiVersion/kind");
        }
        if self
            .spec
            .common_name
            .as_ref()
            .is_some_and(|cn| cn.len() > 64)
        {
            return err("commonName longer than 64 characters");
        }
        for d in [&self.spec.duration, &self.spec.renew_before]
            .into_iter()
            .flatten()
        {
            if !is_go_duration(d) {
                return err("duration syntax");
            }
        }
        if let Some(k) = &self.spec.private_key {
            if !matches!(
                k.algorithm.as_deref(),
                None | Some("RSA" | "ECDSA" | "Ed25519")
            ) {
                return err("privateKey.algorithm");
            }
            if !matches!(
                k.rotation_policy.as_deref(),
                None | Some("Always" | "Never")
            ) {
                return err("privateKey.rotationPolicy");
            }
        }
        let usages = [
            "signing",
            "digital signature",
            "key encipherment",
            "server auth",
            "client auth",
            "cert sign",
        ];
        if self
            .spec
            .usages
            .iter()
            .any(|u| !usages.contains(&u.as_str()))
        {
            return err("usages");
        }
        if !matches!(
            self.spec.issuer_ref.kind.as_deref(),
            None | Some("Issuer" | "ClusterIssuer")
        ) || !matches!(
            self.spec.issuer_ref.group.as_deref(),
            None | Some("cert-manager.io")
        ) {
            return err("issuerRef");
        }
        Ok(())
    }
}

#[test]
fn cert_manager_issues_the_mounted_secret_for_the_service_names_and_injects_its_ca() {
    let docs = rendered("deploy/overlays/cert-manager");
    let d: Deployment = find(docs, "Deployment", "kube-persist");
    let secret_name = volume(pod_spec(&d), "tls")
        .secret
        .as_ref()
        .and_then(|s| s.secret_name.clone())
        .expect("tls Secret");
    let certs: Vec<Certificate> = all(docs, "Certificate");
    let issuers: Vec<Issuer> = all(docs, "Issuer");
    let serving = certs
        .iter()
        .find(|c| c.spec.secret_name == secret_name)
        .expect("a Certificate writes the mounted Secret");
    assert!(!serving.spec.is_ca);
    assert!(serving.spec.usages.iter().any(|u| u == "server auth"));
    let svc = webhook(docs).client_config.service.expect("service");
    assert_eq!(
        serving.spec.dns_names,
        kube_persist::certs::service_dns_names(&svc.name, &svc.namespace, "cluster.local"),
        "the same names as `kube-persist certs`"
    );
    let key = serving.spec.private_key.as_ref().expect("privateKey");
    assert_eq!(
        (key.algorithm.as_deref(), key.size),
        (Some("ECDSA"), Some(256))
    );

    // The issuer chain: serving <- CA issuer (CA certificate's Secret) <- self-signed.
    let issuer = |name: &str| {
        issuers
            .iter()
            .find(|i| i.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("Issuer {name} is not deployed"))
    };
    let ca_issuer = issuer(&serving.spec.issuer_ref.name);
    let ca_secret = &ca_issuer.spec.ca.as_ref().expect("a CA issuer").secret_name;
    let ca_cert = certs
        .iter()
        .find(|c| &c.spec.secret_name == ca_secret)
        .expect("a Certificate writes the CA Secret");
    assert!(ca_cert.spec.is_ca);
    assert!(
        issuer(&ca_cert.spec.issuer_ref.name)
            .spec
            .self_signed
            .is_some()
    );

    let config: MutatingWebhookConfiguration =
        find(docs, "MutatingWebhookConfiguration", "kube-persist");
    let annotations = config.metadata.annotations.unwrap_or_default();
    assert_eq!(
        annotations
            .get("cert-manager.io/inject-ca-from")
            .map(String::as_str),
        Some(
            format!(
                "{}/{}",
                serving.metadata.namespace.as_deref().unwrap_or_default(),
                serving.metadata.name.as_deref().unwrap_or_default()
            )
            .as_str()
        )
    );
    assert_eq!(serving.metadata.namespace.as_deref(), Some(NAMESPACE));
}

// ---------------------------------------------------------------------------------------------
// Examples

/// Fields of `value` that `schema` does not declare: the API server would prune them.
#[test]
fn the_examples_show_the_incident_and_the_provisioner() {
    let docs = rendered("deploy/examples");
    let install = rendered("deploy");

    let prometheus = docs
        .iter()
        .find(|d| d["kind"] == "Prometheus")
        .expect("a Prometheus example");
    assert!(
        prometheus["spec"].get("storage").is_none(),
        "the example is the incident: a Prometheus without spec.storage"
    );
    common::crd::check(prometheus).expect("valid against the CRD");
    assert!(
        prometheus["metadata"]["namespace"] != "kube-system"
            && prometheus["metadata"]["namespace"] != NAMESPACE,
        "the example lives where the webhook sees it"
    );

    let policy = std::fs::read_to_string(root().join("deploy/base/policy.yaml")).expect("policy");
    let policy: Value = serde_saphyr::from_str(&policy).expect("YAML");
    let claim: PersistentVolumeClaim =
        find(docs, "PersistentVolumeClaim", "kube-persist-test-claim");
    let class = claim
        .spec
        .as_ref()
        .and_then(|s| s.storage_class_name.clone())
        .expect("a class");
    assert_eq!(Some(class.as_str()), policy["storageClassName"].as_str());
    let _: StorageClass = find(install, "StorageClass", &class);
    let pod: Pod = find(docs, "Pod", "kube-persist-test-pod");
    let claims: Vec<_> = pod
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| v.persistent_volume_claim.as_ref())
        .map(|c| c.claim_name.clone())
        .collect();
    assert_eq!(claims, ["kube-persist-test-claim"]);

    let sts: StatefulSet = find(docs, "StatefulSet", "kube-persist-demo");
    let spec = sts.spec;
    assert!(spec.volume_claim_templates.is_none());
    let volumes = spec.template.spec.expect("pod").volumes.unwrap_or_default();
    assert!(
        volumes
            .iter()
            .any(|v| v.name == "data" && v.empty_dir.is_some()),
        "the StatefulSet example has an emptyDir `data` to convert"
    );
}

// ---------------------------------------------------------------------------------------------
// The image (the Dockerfile cannot be built here: no Docker engine; these are static checks)

#[test]
fn the_image_runs_what_the_deployment_expects() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    let stages: Vec<&str> = dockerfile.split("\nFROM ").collect();
    assert!(
        stages.len() >= 3,
        "multi-stage: a build stage and a runtime stage"
    );
    let runtime = stages.last().expect("a runtime stage");
    let instruction = |name: &str| {
        runtime
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in the runtime stage"))
            .trim()
            .to_string()
    };
    // The image runs the build the load benchmark measures: glibc and its allocator.
    assert!(
        runtime.starts_with("gcr.io/distroless/cc"),
        "a glibc base without a shell: {}",
        runtime.lines().next().unwrap_or_default()
    );
    let build = stages[stages.len() - 2];
    assert!(
        !build.contains("alpine") && !build.contains("musl"),
        "the build stage links against glibc: {}",
        build.lines().next().unwrap_or_default()
    );

    let d: Deployment = find(rendered("deploy"), "Deployment", "kube-persist");
    let c = container(&d);
    let user = instruction("USER");
    let uid: i64 = user
        .split(':')
        .next()
        .and_then(|u| u.parse().ok())
        .unwrap_or_else(|| panic!("USER {user} is not numeric (runAsNonRoot needs a uid)"));
    assert_ne!(uid, 0);
    assert_eq!(
        pod_spec(&d)
            .security_context
            .as_ref()
            .and_then(|s| s.run_as_user),
        Some(uid)
    );

    let entrypoint: Vec<String> =
        serde_json::from_str(&instruction("ENTRYPOINT")).expect("exec-form ENTRYPOINT");
    assert_eq!(
        Some(&entrypoint),
        c.command.as_ref(),
        "the same binary path"
    );

    let exposed: BTreeSet<i32> = instruction("EXPOSE")
        .split_whitespace()
        .map(|p| p.parse().expect("port"))
        .collect();
    for p in c.ports.iter().flatten() {
        assert!(
            exposed.contains(&p.container_port),
            "EXPOSE {}",
            p.container_port
        );
    }

    let ignore = std::fs::read_to_string(root().join(".dockerignore")).expect(".dockerignore");
    let ignored: BTreeSet<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for must in ["target", ".git", "certs/out", "certs/dev", "**/*.key"] {
        assert!(ignored.contains(must), ".dockerignore must exclude {must}");
    }
}

#[test]
fn the_docs_name_only_files_that_exist() {
    let re =
        regex::Regex::new(r"\b((?:deploy|certs)/[A-Za-z0-9_./-]*[A-Za-z0-9_])").expect("regex");
    for doc in ["README.md", "certs/README.md"] {
        let text = std::fs::read_to_string(root().join(doc)).expect(doc);
        for cap in re.captures_iter(&text) {
            let path = &cap[1];
            // Generated at install time, git-ignored.
            if path.starts_with("certs/out") || path.starts_with("certs/dev") {
                continue;
            }
            assert!(
                root().join(path).exists(),
                "{doc} names {path}, which does not exist"
            );
        }
    }
}
