//! The storage policy: defaults, per-namespace overrides, per-object
//! annotation overrides, and loading/validating the YAML file. Pure: reading the file is the
//! caller's business ([`Policy::load`] is a convenience wrapper around [`Policy::from_yaml`]).

use std::{borrow::Cow, collections::BTreeMap, fmt, path::Path};

use regex::RegexSet;
use serde::Deserialize;

use crate::quantity::{self, Quantity};

/// Prefix of every annotation kube-persist reads.
pub const ANNOTATION_PREFIX: &str = "kube-persist.io/";

/// Whether decisions are applied or only reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Patch objects.
    Enforce,
    /// Never patch; log and warn `would-mutate`.
    Audit,
}

/// What to do with an UPDATE of a custom resource that has no storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnUpdate {
    /// Leave it, warn and audit (adding storage restarts every pod of the object).
    Warn,
    /// Add storage on UPDATE too.
    Mutate,
}

/// The `persistentVolumeClaimRetentionPolicy` extra.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum RetentionPolicy {
    /// Add `{whenDeleted: Retain, whenScaled: Retain}` where the CRD has the field.
    Retain,
    /// Do not add it.
    #[serde(rename = "none")]
    None,
}

/// Which object families the webhook acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Targets {
    /// `Prometheus`, `PrometheusAgent`, `Alertmanager`, `ThanosRuler`.
    pub prometheus_operator: bool,
    /// `apps/v1` `StatefulSet`.
    pub stateful_sets: bool,
}

/// Class, size and access modes of the volumes kube-persist adds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageDefaults {
    pub storage_class_name: String,
    pub size: Quantity,
    pub access_modes: Vec<String>,
}

/// Overrides for one namespace; unset fields fall back to the policy's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceOverride {
    pub storage_class_name: Option<String>,
    pub size: Option<Quantity>,
    pub access_modes: Option<Vec<String>>,
    pub mode: Option<Mode>,
}

#[derive(Debug, Clone)]
pub struct StatefulSetPolicy {
    /// The exclusion patterns as written.
    pub exclude_volume_names: Vec<String>,
    /// The same patterns, compiled.
    exclude: RegexSet,
}

impl StatefulSetPolicy {
    fn new(exclude_volume_names: Vec<String>) -> Result<StatefulSetPolicy, regex::Error> {
        Ok(StatefulSetPolicy {
            exclude: RegexSet::new(&exclude_volume_names)?,
            exclude_volume_names,
        })
    }

    /// Whether an emptyDir volume of this name stays an emptyDir.
    pub fn is_excluded_volume(&self, name: &str) -> bool {
        self.exclude.is_match(name)
    }
}

/// A validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub mode: Mode,
    /// Default class, size and access modes.
    pub storage: StorageDefaults,
    pub targets: Targets,
    /// UPDATE handling of custom resources.
    pub on_update: OnUpdate,
    pub retention_policy: RetentionPolicy,
    /// `retentionSize` as a fraction of the volume (0 disables).
    pub retention_size_ratio: f64,
    /// Deny objects with invalid annotations instead of allowing them unchanged.
    pub strict: bool,
    /// Namespaces never touched.
    pub exclude_namespaces: Vec<String>,
    /// Per-namespace overrides.
    pub namespaces: BTreeMap<String, NamespaceOverride>,
    pub stateful_sets: StatefulSetPolicy,
}

/// Where the storage settings of a decision came from (the most specific contributor).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Policy defaults.
    Default,
    /// A `namespaces:` override.
    Namespace,
    /// An object annotation.
    Annotation,
}

impl Source {
    /// The audit log spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Default => "default",
            Source::Namespace => "namespace",
            Source::Annotation => "annotation",
        }
    }
}

/// The storage one object gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageSpec<'a> {
    pub storage_class_name: Cow<'a, str>,
    pub size: Cow<'a, Quantity>,
    pub access_modes: Cow<'a, [String]>,
    /// Where these came from.
    pub source: Source,
}

/// Per-object override annotations, as found on the object (unvalidated).
#[derive(Debug, Clone, Copy, Default)]
pub struct Overrides<'a> {
    /// `kube-persist.io/size`.
    pub size: Option<&'a str>,
    /// `kube-persist.io/storage-class`.
    pub storage_class: Option<&'a str>,
    /// `kube-persist.io/access-modes`.
    pub access_modes: Option<&'a str>,
}

/// An annotation whose value cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnotationError {
    /// Full annotation key.
    pub key: String,
    pub value: String,
    pub problem: String,
}

impl fmt::Display for AnnotationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}: {}", self.key, self.value, self.problem)
    }
}

/// A policy file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read policy file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Not YAML, or not the policy's shape (unknown field, wrong type).
    #[error("policy file {path}: {message}")]
    Parse {
        path: String,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A reloaded file with no settings (empty, or only comments).
    #[error(
        "policy file {path} has no settings (empty, or only comments): the previous policy stays; write `{{}}` to mean the defaults"
    )]
    Blank { path: String },
    /// A field has an invalid value.
    #[error("policy field `{field}`: {problem}")]
    Invalid {
        /// Dotted path of the field.
        field: String,
        problem: String,
    },
}

impl Default for Policy {
    fn default() -> Self {
        // The defaults are valid by construction: building them from the empty file runs the
        // same validation every policy file goes through (and a unit test pins that).
        match Policy::from_file(PolicyFile::default()) {
            Ok(policy) => policy,
            Err(e) => unreachable!("built-in policy defaults are invalid: {e}"),
        }
    }
}

impl Policy {
    /// Reads and validates a policy file.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Policy::from_yaml(&text, &path.display().to_string())
    }

    /// Parses and validates a policy file that replaces a running policy. A file with no settings
    /// is refused here, where [`Policy::from_yaml`] reads it as the defaults: a file being
    /// rewritten can be seen empty for a moment, and no one empties a policy to reset it.
    pub fn from_reloaded_yaml(text: &str, origin: &str) -> Result<Policy, PolicyError> {
        let blank = text
            .lines()
            .map(str::trim)
            .all(|line| line.is_empty() || line.starts_with('#') || line == "---" || line == "...");
        if blank {
            return Err(PolicyError::Blank {
                path: origin.to_string(),
            });
        }
        Policy::from_yaml(text, origin)
    }

    /// Parses and validates policy YAML; `origin` names the source in error messages.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Policy, PolicyError> {
        let file: PolicyFile = if text.trim().is_empty() {
            PolicyFile::default()
        } else {
            serde_saphyr::from_str::<Option<PolicyFile>>(text)
                .map_err(|e| PolicyError::Parse {
                    path: origin.to_string(),
                    message: one_line(&e.to_string()),
                })?
                .unwrap_or_default()
        };
        Policy::from_file(file)
    }

    fn from_file(file: PolicyFile) -> Result<Policy, PolicyError> {
        let PolicyFile {
            mode,
            storage_class_name,
            size,
            access_modes,
            targets,
            on_update,
            retention_policy,
            retention_size_ratio,
            strict,
            exclude_namespaces,
            namespaces,
            stateful_sets,
        } = file;
        let storage = StorageDefaults {
            storage_class_name: validate_class("storageClassName", storage_class_name)?,
            size: validate_size("size", &size)?,
            access_modes: validate_access_modes("accessModes", access_modes)?,
        };
        if !(retention_size_ratio == 0.0 || (0.01..1.0).contains(&retention_size_ratio)) {
            return Err(invalid(
                "retentionSizeRatio",
                format!(
                    "{retention_size_ratio} must be 0 (off) or at least 0.01 and below 1 \
                     (a smaller share of the volume would let Prometheus keep almost nothing)"
                ),
            ));
        }
        for (i, ns) in exclude_namespaces.iter().enumerate() {
            if !is_dns_label(ns) {
                return Err(invalid(
                    &format!("excludeNamespaces[{i}]"),
                    format!("{ns:?} is not a namespace name"),
                ));
            }
        }
        let mut overrides = BTreeMap::new();
        for (ns, o) in namespaces {
            if !is_dns_label(&ns) {
                return Err(invalid(
                    &format!("namespaces.{ns}"),
                    "the key is not a namespace name".to_string(),
                ));
            }
            let NamespaceFile {
                storage_class_name,
                size,
                access_modes,
                mode,
            } = o;
            let field = |name: &str| format!("namespaces.{ns}.{name}");
            let parsed = NamespaceOverride {
                storage_class_name: storage_class_name
                    .map(|c| validate_class(&field("storageClassName"), c))
                    .transpose()?,
                size: size
                    .map(|s| validate_size(&field("size"), &s))
                    .transpose()?,
                access_modes: access_modes
                    .map(|m| validate_access_modes(&field("accessModes"), m))
                    .transpose()?,
                mode,
            };
            overrides.insert(ns, parsed);
        }
        let StatefulSetsFile {
            exclude_volume_names,
        } = stateful_sets;
        for (i, pattern) in exclude_volume_names.iter().enumerate() {
            regex::Regex::new(pattern).map_err(|e| {
                invalid(
                    &format!("statefulSets.excludeVolumeNames[{i}]"),
                    format!(
                        "{pattern:?} is not a regular expression: {}",
                        one_line(&e.to_string())
                    ),
                )
            })?;
        }
        let stateful_sets = StatefulSetPolicy::new(exclude_volume_names)
            .map_err(|e| invalid("statefulSets.excludeVolumeNames", one_line(&e.to_string())))?;
        let TargetsFile {
            prometheus_operator,
            stateful_sets: sts_target,
        } = targets;
        Ok(Policy {
            mode,
            storage,
            targets: Targets {
                prometheus_operator,
                stateful_sets: sts_target,
            },
            on_update,
            retention_policy,
            retention_size_ratio,
            strict,
            exclude_namespaces,
            namespaces: overrides,
            stateful_sets,
        })
    }

    pub fn is_excluded_namespace(&self, namespace: &str) -> bool {
        self.exclude_namespaces.iter().any(|n| n == namespace)
    }

    /// The mode in force for `namespace`.
    pub fn mode_for(&self, namespace: &str) -> Mode {
        self.namespaces
            .get(namespace)
            .and_then(|o| o.mode)
            .unwrap_or(self.mode)
    }

    /// The storage an object in `namespace` with `overrides` gets, or every annotation problem.
    pub fn storage_for<'a>(
        &'a self,
        namespace: &str,
        overrides: &Overrides<'a>,
    ) -> Result<StorageSpec<'a>, Vec<AnnotationError>> {
        let defaults = &self.storage;
        let ns = self.namespaces.get(namespace);
        let mut source = Source::Default;
        let mut spec = StorageSpec {
            storage_class_name: Cow::Borrowed(defaults.storage_class_name.as_str()),
            size: Cow::Borrowed(&defaults.size),
            access_modes: Cow::Borrowed(defaults.access_modes.as_slice()),
            source,
        };
        if let Some(o) = ns {
            if let Some(c) = &o.storage_class_name {
                spec.storage_class_name = Cow::Borrowed(c);
                source = Source::Namespace;
            }
            if let Some(s) = &o.size {
                spec.size = Cow::Borrowed(s);
                source = Source::Namespace;
            }
            if let Some(m) = &o.access_modes {
                spec.access_modes = Cow::Borrowed(m);
                source = Source::Namespace;
            }
        }
        let mut errors = Vec::new();
        let key = |name: &str| format!("{ANNOTATION_PREFIX}{name}");
        if let Some(value) = overrides.storage_class {
            if quantity::is_dns_subdomain(value) {
                spec.storage_class_name = Cow::Borrowed(value);
                source = Source::Annotation;
            } else {
                errors.push(AnnotationError {
                    key: key("storage-class"),
                    value: value.to_string(),
                    problem: "not a valid StorageClass name (lowercase DNS subdomain)".to_string(),
                });
            }
        }
        if let Some(value) = overrides.size {
            match Quantity::parse(value).map_err(|e| problem_of(&e)) {
                Ok(q) => match check_size(&q) {
                    Ok(()) => {
                        spec.size = Cow::Owned(q);
                        source = Source::Annotation;
                    }
                    Err(problem) => errors.push(AnnotationError {
                        key: key("size"),
                        value: value.to_string(),
                        problem,
                    }),
                },
                Err(problem) => errors.push(AnnotationError {
                    key: key("size"),
                    value: value.to_string(),
                    problem,
                }),
            }
        }
        if let Some(value) = overrides.access_modes {
            match parse_access_modes(value) {
                Ok(modes) => {
                    spec.access_modes = Cow::Owned(modes);
                    source = Source::Annotation;
                }
                Err(problem) => errors.push(AnnotationError {
                    key: key("access-modes"),
                    value: value.to_string(),
                    problem,
                }),
            }
        }
        if errors.is_empty() {
            spec.source = source;
            Ok(spec)
        } else {
            Err(errors)
        }
    }
}

/// Parses a boolean annotation: `"true"` or `"false"`, nothing else.
pub fn parse_bool_annotation(name: &str, value: &str) -> Result<bool, AnnotationError> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(AnnotationError {
            key: format!("{ANNOTATION_PREFIX}{name}"),
            value: value.to_string(),
            problem: "must be \"true\" or \"false\"".to_string(),
        }),
    }
}

/// Parses a comma-separated access-mode list (`"ReadWriteMany"`, `"ReadWriteOnce,ReadOnlyMany"`).
pub fn parse_access_modes(value: &str) -> Result<Vec<String>, String> {
    let modes: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(str::to_string)
        .collect();
    check_access_modes(&modes)?;
    Ok(modes)
}

/// A list the API server accepts on a claim: known modes, each once, and `ReadWriteOncePod`
/// only alone (a claim template it refuses would leave the pods Pending).
fn check_access_modes(modes: &[String]) -> Result<(), String> {
    if modes.is_empty() {
        return Err("at least one access mode is needed".to_string());
    }
    for (i, mode) in modes.iter().enumerate() {
        if !quantity::is_access_mode(mode) {
            return Err(format!(
                "unknown access mode {mode:?} (one of {})",
                quantity::ACCESS_MODES.join(", ")
            ));
        }
        if modes[..i].contains(mode) {
            return Err(format!("{mode} is listed twice"));
        }
    }
    if modes.len() > 1 && modes.iter().any(|m| m == "ReadWriteOncePod") {
        return Err("ReadWriteOncePod cannot be combined with other access modes".to_string());
    }
    Ok(())
}

/// The smallest claim a policy or an annotation may ask for. Anything smaller is a slip: a bare
/// number is bytes (`size: 100` is 100 bytes), and no database fits in less than a mebibyte.
pub const MIN_SIZE: u128 = 1 << 20;

/// A size that could be meant: at least [`MIN_SIZE`].
fn check_size(size: &Quantity) -> Result<(), String> {
    let text = size.as_str();
    if size.bytes() < MIN_SIZE {
        return Err(if text.bytes().all(|b| b.is_ascii_digit()) {
            format!(
                "{text} is a number of bytes, less than the 1Mi minimum: give a unit (e.g. 100Gi)"
            )
        } else {
            format!("{text} is less than the 1Mi minimum")
        });
    }
    Ok(())
}

fn problem_of(e: &quantity::QuantityError) -> String {
    match e {
        quantity::QuantityError::Syntax(_) => {
            "not a Kubernetes quantity (e.g. 100Gi, 500M, 1.5Ti)".to_string()
        }
        quantity::QuantityError::NotPositive(_) => "must be greater than zero".to_string(),
        quantity::QuantityError::TooLarge(_) => "too large".to_string(),
    }
}

fn invalid(field: &str, problem: String) -> PolicyError {
    PolicyError::Invalid {
        field: field.to_string(),
        problem,
    }
}

fn validate_class(field: &str, class: String) -> Result<String, PolicyError> {
    if quantity::is_dns_subdomain(&class) {
        Ok(class)
    } else {
        Err(invalid(
            field,
            format!("{class:?} is not a valid StorageClass name (lowercase DNS subdomain)"),
        ))
    }
}

fn validate_size(field: &str, size: &str) -> Result<Quantity, PolicyError> {
    let size = Quantity::parse(size).map_err(|e| invalid(field, e.to_string()))?;
    check_size(&size).map_err(|problem| invalid(field, problem))?;
    Ok(size)
}

fn validate_access_modes(field: &str, modes: Vec<String>) -> Result<Vec<String>, PolicyError> {
    check_access_modes(&modes).map_err(|problem| invalid(field, problem))?;
    Ok(modes)
}

fn is_dns_label(name: &str) -> bool {
    !name.is_empty() && name.len() <= 63 && !name.contains('.') && quantity::is_dns_subdomain(name)
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

// ---- the file's shape: every field optional, unknown fields refused ----

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
struct PolicyFile {
    mode: Mode,
    storage_class_name: String,
    size: String,
    access_modes: Vec<String>,
    targets: TargetsFile,
    on_update: OnUpdate,
    retention_policy: RetentionPolicy,
    retention_size_ratio: f64,
    strict: bool,
    exclude_namespaces: Vec<String>,
    namespaces: BTreeMap<String, NamespaceFile>,
    stateful_sets: StatefulSetsFile,
}

impl Default for PolicyFile {
    fn default() -> Self {
        PolicyFile {
            mode: Mode::Enforce,
            storage_class_name: "prometheus-data-db".to_string(),
            size: "100Gi".to_string(),
            access_modes: vec!["ReadWriteOnce".to_string()],
            targets: TargetsFile::default(),
            on_update: OnUpdate::Warn,
            retention_policy: RetentionPolicy::Retain,
            retention_size_ratio: 0.85,
            strict: false,
            exclude_namespaces: ["kube-system", "kube-public", "kube-node-lease"]
                .map(String::from)
                .to_vec(),
            namespaces: BTreeMap::new(),
            stateful_sets: StatefulSetsFile::default(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
struct TargetsFile {
    prometheus_operator: bool,
    stateful_sets: bool,
}

impl Default for TargetsFile {
    fn default() -> Self {
        TargetsFile {
            prometheus_operator: true,
            stateful_sets: true,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NamespaceFile {
    storage_class_name: Option<String>,
    size: Option<String>,
    access_modes: Option<Vec<String>>,
    mode: Option<Mode>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
struct StatefulSetsFile {
    exclude_volume_names: Vec<String>,
}

impl Default for StatefulSetsFile {
    fn default() -> Self {
        StatefulSetsFile {
            exclude_volume_names: ["^tmp", "cache", "scratch", "^run$", "sock", "shm"]
                .map(String::from)
                .to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_exclusions_match_names_as_documented() {
        let policy = Policy::default().stateful_sets;
        for (name, excluded) in [
            ("tmp", true),
            ("tmp-files", true),
            ("data-tmp", false),
            ("cache", true),
            ("build-cache-1", true),
            ("run", true),
            ("runner", false),
            ("dshm", true),
            ("data", false),
        ] {
            assert_eq!(policy.is_excluded_volume(name), excluded, "{name}");
        }
        let mixed = StatefulSetPolicy::new(vec!["^wal$".into(), "^t.p$".into()]).unwrap();
        assert!(mixed.is_excluded_volume("tmp") && mixed.is_excluded_volume("wal"));
        assert!(!mixed.is_excluded_volume("wall"));
    }

    /// A policy file that spells out every default.
    const EVERY_DEFAULT: &str = r#"
mode: enforce                       # enforce | audit
storageClassName: prometheus-data-db
size: 100Gi
accessModes: [ReadWriteOnce]
targets: { prometheusOperator: true, statefulSets: true }
onUpdate: warn                      # warn | mutate   (CRs only)
retentionPolicy: Retain             # Retain | none
retentionSizeRatio: 0.85            # 0 disables
strict: false
excludeNamespaces: [kube-system, kube-public, kube-node-lease]
namespaces: {}
statefulSets:
  excludeVolumeNames: ["^tmp", "cache", "scratch", "^run$", "sock", "shm"]
"#;

    fn assert_same(a: &Policy, b: &Policy) {
        assert_eq!(a.mode, b.mode);
        assert_eq!(a.storage, b.storage);
        assert_eq!(a.targets, b.targets);
        assert_eq!(a.on_update, b.on_update);
        assert_eq!(a.retention_policy, b.retention_policy);
        assert_eq!(a.retention_size_ratio, b.retention_size_ratio);
        assert_eq!(a.strict, b.strict);
        assert_eq!(a.exclude_namespaces, b.exclude_namespaces);
        assert_eq!(a.namespaces, b.namespaces);
        assert_eq!(
            a.stateful_sets.exclude_volume_names,
            b.stateful_sets.exclude_volume_names
        );
    }

    #[test]
    fn defaults_equal_the_explicit_example_and_the_empty_file() {
        let example = Policy::from_yaml(EVERY_DEFAULT, "example").unwrap();
        assert_same(&Policy::default(), &example);
        assert_same(&Policy::from_yaml("", "empty").unwrap(), &example);
        assert_same(
            &Policy::from_yaml("# only a comment\n", "c").unwrap(),
            &example,
        );
        assert_eq!(example.storage.size.bytes(), 100 << 30);
    }

    #[test]
    fn invalid_files_name_the_field() {
        let cases = [
            ("size: 10Xi", "`size`"),
            ("storageClassName: Bad_Name", "`storageClassName`"),
            ("accessModes: [ReadWriteSometimes]", "`accessModes`"),
            ("accessModes: []", "`accessModes`"),
            (
                "accessModes: [ReadWriteOnce, ReadWriteOnce]",
                "listed twice",
            ),
            (
                "accessModes: [ReadWriteOncePod, ReadOnlyMany]",
                "ReadWriteOncePod cannot be combined",
            ),
            ("size: 100", "a number of bytes"),
            ("size: 1023Ki", "less than the 1Mi minimum"),
            ("retentionSizeRatio: 1.5", "`retentionSizeRatio`"),
            ("retentionSizeRatio: 0.000001", "`retentionSizeRatio`"),
            (
                "namespaces: { monitoring: { size: lots } }",
                "`namespaces.monitoring.size`",
            ),
            (
                "statefulSets: { excludeVolumeNames: ['(unclosed'] }",
                "excludeVolumeNames[0]",
            ),
            (
                "excludeNamespaces: [Not_A_Namespace]",
                "excludeNamespaces[0]",
            ),
        ];
        for (yaml, field) in cases {
            let err = Policy::from_yaml(yaml, "p.yaml").unwrap_err().to_string();
            assert!(err.contains(field), "{yaml}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn unknown_fields_and_wrong_types_are_refused() {
        for yaml in [
            "storageclass: x",
            "mode: sometimes",
            "targets: { prometheus: true }",
            "size: [1]",
            "- a list",
            "namespaces: { monitoring: { sise: 1Gi } }",
            "mode: enforce\n  bad: indentation",
        ] {
            let err = Policy::from_yaml(yaml, "p.yaml").unwrap_err().to_string();
            assert!(err.starts_with("policy file p.yaml: "), "{yaml}: {err}");
        }
    }

    #[test]
    fn namespace_then_annotation_overrides() {
        let policy = Policy::from_yaml(
            "namespaces: { monitoring: { size: 200Gi, mode: audit } }",
            "p",
        )
        .unwrap();
        let none = Overrides::default();
        let d = policy.storage_for("default", &none).unwrap();
        assert_eq!((d.size.as_str(), d.source), ("100Gi", Source::Default));
        let m = policy.storage_for("monitoring", &none).unwrap();
        assert_eq!((m.size.as_str(), m.source), ("200Gi", Source::Namespace));
        assert_eq!(policy.mode_for("monitoring"), Mode::Audit);
        assert_eq!(policy.mode_for("default"), Mode::Enforce);
        let a = policy
            .storage_for(
                "monitoring",
                &Overrides {
                    size: Some("50Gi"),
                    storage_class: Some("fast"),
                    access_modes: Some("ReadWriteMany, ReadOnlyMany"),
                },
            )
            .unwrap();
        assert_eq!(a.size.as_str(), "50Gi");
        assert_eq!(a.storage_class_name, "fast");
        assert_eq!(a.access_modes.as_ref(), ["ReadWriteMany", "ReadOnlyMany"]);
        assert_eq!(a.source, Source::Annotation);
    }

    #[test]
    fn every_bad_annotation_is_reported() {
        let policy = Policy::default();
        let errors = policy
            .storage_for(
                "default",
                &Overrides {
                    size: Some("fifty"),
                    storage_class: Some("Fast!"),
                    access_modes: Some("ReadWriteAlways"),
                },
            )
            .unwrap_err();
        let keys: Vec<_> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "kube-persist.io/storage-class",
                "kube-persist.io/size",
                "kube-persist.io/access-modes"
            ]
        );
        assert_eq!(
            errors[1].to_string(),
            "kube-persist.io/size \"fifty\": not a Kubernetes quantity (e.g. 100Gi, 500M, 1.5Ti)"
        );
    }

    #[test]
    fn annotations_kubernetes_would_refuse_or_no_one_means_are_invalid() {
        let policy = Policy::default();
        let problem = |size: Option<&'static str>, modes: Option<&'static str>| {
            let errors = policy
                .storage_for(
                    "default",
                    &Overrides {
                        size,
                        storage_class: None,
                        access_modes: modes,
                    },
                )
                .unwrap_err();
            errors[0].to_string()
        };
        assert!(
            problem(Some("100"), None).contains("a number of bytes, less than the 1Mi minimum")
        );
        assert!(problem(Some("0.5Mi"), None).contains("less than the 1Mi minimum"));
        assert!(
            problem(None, Some("ReadWriteOncePod,ReadWriteOnce")).contains("cannot be combined")
        );
        assert!(problem(None, Some("ReadWriteMany, ReadWriteMany")).contains("listed twice"));
        let fine = policy
            .storage_for(
                "default",
                &Overrides {
                    size: Some("1Mi"),
                    storage_class: None,
                    access_modes: Some("ReadWriteOncePod"),
                },
            )
            .unwrap();
        assert_eq!(fine.size.bytes(), 1 << 20);
    }

    #[test]
    fn a_reloaded_file_without_settings_is_refused() {
        for text in ["", "\n  \n", "# policy\n# (being rewritten)\n", "---\n"] {
            let err = Policy::from_reloaded_yaml(text, "p.yaml").unwrap_err();
            assert!(matches!(err, PolicyError::Blank { .. }), "{text:?}: {err}");
            assert!(
                Policy::from_yaml(text, "p.yaml").is_ok(),
                "{text:?} at startup"
            );
        }
        assert!(Policy::from_reloaded_yaml("{}", "p.yaml").is_ok());
        assert!(Policy::from_reloaded_yaml("size: 5Gi # set\n", "p.yaml").is_ok());
    }

    #[test]
    fn boolean_annotations_are_strict() {
        assert_eq!(parse_bool_annotation("skip", "true"), Ok(true));
        assert_eq!(parse_bool_annotation("skip", "false"), Ok(false));
        assert!(parse_bool_annotation("skip", "yes").is_err());
        assert!(parse_bool_annotation("skip", "True").is_err());
    }

    #[test]
    fn volume_exclusions_follow_the_patterns() {
        let p = Policy::default();
        for excluded in [
            "tmp",
            "tmp-dir",
            "cache",
            "gocache",
            "scratch",
            "run",
            "docker-sock",
            "dshm",
        ] {
            assert!(p.stateful_sets.is_excluded_volume(excluded), "{excluded}");
        }
        for kept in ["data", "storage", "runner", "wal", "mytmp"] {
            assert!(!p.stateful_sets.is_excluded_volume(kept), "{kept}");
        }
    }
}
