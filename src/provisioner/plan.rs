//! What the provisioner decides, as pure functions over plain data.
//!
//! [`plan_provision`] turns a claim, its StorageClass and the configuration into
//! [`ProvisionDecision`]: skip it, provision it (the directory to create and the exact PV to
//! post) or fail with a reason for the `ProvisioningFailed` event. [`plan_delete`] does the same
//! for a released volume: which directory to archive, remove or retain. Nothing here touches the
//! filesystem, the clock or the API server; every path leaving this module is a [`RelDir`], which
//! by construction cannot name anything outside the NFS root.
//!
//! Behaviour follows nfs-subdir-external-provisioner: directory `<namespace>-<pvc>-<pv>` or the
//! class's `pathPattern`, PV name `pvc-<claim uid>`, `spec.nfs.path` = `NFS_PATH` joined with the
//! directory (the PV records where its data lives; deletion reads it back from there), class
//! parameters `onDelete`, `archiveOnDelete`, `pathPattern`, plus `mode`, `uid`, `gid`.

use std::{collections::BTreeMap, fmt};

use k8s_openapi::{
    api::{
        core::v1::{
            NFSVolumeSource, ObjectReference, PersistentVolume, PersistentVolumeClaim,
            PersistentVolumeSpec,
        },
        storage::v1::StorageClass,
    },
    apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::ObjectMeta},
};

use super::Config;

/// GA annotation the PV controller sets on a claim for an external provisioner.
pub const ANN_STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
/// Beta twin of [`ANN_STORAGE_PROVISIONER`], still set by current PV controllers.
pub const ANN_STORAGE_PROVISIONER_BETA: &str = "volume.beta.kubernetes.io/storage-provisioner";
/// Deprecated claim annotation naming the StorageClass (before `spec.storageClassName`).
pub const ANN_STORAGE_CLASS_BETA: &str = "volume.beta.kubernetes.io/storage-class";
/// Node chosen by the scheduler for a `WaitForFirstConsumer` claim.
pub const ANN_SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// Annotation on the PV naming the provisioner that created it.
pub const ANN_PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
/// Claim annotations honoured by nfs-subdir-external-provisioner for the directory's mode and
/// owner (a class parameter of the same meaning wins).
pub const ANN_CREATE_MODE: &str = "nfs.io/createMode";
/// See [`ANN_CREATE_MODE`].
pub const ANN_CREATE_UID: &str = "nfs.io/createUID";
/// See [`ANN_CREATE_MODE`].
pub const ANN_CREATE_GID: &str = "nfs.io/createGID";
/// Mode of a created directory when neither class nor claim says (compatibility: 0777).
pub const DEFAULT_MODE: u32 = 0o777;
/// Prefix of an archived directory.
pub const ARCHIVE_PREFIX: &str = "archived-";
/// Longest file name most filesystems (and NFS servers) accept, in bytes.
pub const NAME_MAX: usize = 255;
/// Longest relative directory we produce, in bytes.
pub const PATH_MAX: usize = 4096;
/// How many timestamped archive names are tried before giving up.
pub const ARCHIVE_ATTEMPTS: usize = 20;

// ---------------------------------------------------------------------------------------------
// Relative directories

/// A directory relative to the NFS root, proven safe: at least one component, none empty, `.`,
/// `..`, containing `/` or NUL, or longer than [`NAME_MAX`]. Joining it onto the root can only
/// name something under the root (the filesystem layer additionally refuses symlinks).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RelDir {
    components: Vec<String>,
}

impl RelDir {
    /// Validates a `/`-separated relative path. Repeated and trailing slashes are tolerated
    /// (they name the same directory); everything else that could escape or is empty is refused.
    pub fn parse(path: &str) -> Result<Self, PathError> {
        if path.starts_with('/') {
            return Err(PathError::Absolute(path.to_owned()));
        }
        if path.len() > PATH_MAX {
            return Err(PathError::TooLong(path.len()));
        }
        let mut components = Vec::new();
        for c in path.split('/').filter(|c| !c.is_empty()) {
            validate_component(c)?;
            components.push(c.to_owned());
        }
        if components.is_empty() {
            return Err(PathError::Empty);
        }
        Ok(RelDir { components })
    }

    /// The components, root first.
    pub fn components(&self) -> &[String] {
        &self.components
    }

    /// The last component: the directory's own name.
    pub fn leaf(&self) -> &str {
        // `parse` guarantees at least one component.
        self.components.last().map_or("", String::as_str)
    }

    /// The same directory renamed to `name` within its parent.
    pub fn sibling(&self, name: &str) -> Result<RelDir, PathError> {
        validate_component(name)?;
        let mut components = self.components.clone();
        components.pop();
        components.push(name.to_owned());
        Ok(RelDir { components })
    }
}

impl fmt::Display for RelDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.components.join("/"))
    }
}

fn validate_component(c: &str) -> Result<(), PathError> {
    if c.is_empty() {
        return Err(PathError::Empty);
    }
    if c == "." || c == ".." {
        return Err(PathError::DotComponent(c.to_owned()));
    }
    if c.contains('/') {
        return Err(PathError::Absolute(c.to_owned()));
    }
    if c.contains('\0') {
        return Err(PathError::Nul);
    }
    if c.len() > NAME_MAX {
        return Err(PathError::ComponentTooLong(c.len()));
    }
    Ok(())
}

/// Why a directory path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Nothing left after expansion.
    #[error("the directory path is empty")]
    Empty,
    /// Starts with `/` (the directory must be relative to the export).
    #[error("`{0}` is an absolute path; the directory must be relative to NFS_PATH")]
    Absolute(String),
    /// A `.` or `..` component.
    #[error("`{0}` may not appear as a path component")]
    DotComponent(String),
    /// A NUL byte.
    #[error("the directory path contains a NUL byte")]
    Nul,
    /// One component longer than [`NAME_MAX`].
    #[error("a path component is {0} bytes long (at most 255)")]
    ComponentTooLong(usize),
    /// The whole path longer than [`PATH_MAX`].
    #[error("the directory path is {0} bytes long (at most 4096)")]
    TooLong(usize),
    /// A pattern whose expansion names the export root itself (`/`, `./`).
    #[error("pathPattern `{0}` names the export root itself, not a directory below it")]
    Root(String),
}

/// The claim fields a `pathPattern` may read.
#[derive(Debug, Clone, Copy)]
pub struct PatternVars<'a> {
    /// `${.PVC.namespace}`.
    pub namespace: &'a str,
    /// `${.PVC.name}`.
    pub name: &'a str,
    /// `${.PVC.labels.K}`.
    pub labels: Option<&'a BTreeMap<String, String>>,
    /// `${.PVC.annotations.K}`.
    pub annotations: Option<&'a BTreeMap<String, String>>,
}

/// Expands a class `pathPattern` against a claim as nfs-subdir-external-provisioner does: each
/// `${.PVC.namespace}`, `${.PVC.name}`, `${.PVC.labels.KEY}` and `${.PVC.annotations.KEY}` becomes
/// its value, a missing label or annotation (or any other `${.PVC.…}`) the empty string, and `/`
/// in the result, literal or from a value, nests directories (a leading `/` is relative to the
/// export, `.` and empty components drop out). `Ok(None)` when the whole expansion is empty: the
/// default name applies. Refused, where the Go provisioner would resolve them and could leave its
/// root or share it: a `..` component, a result naming the export root itself, a NUL byte.
pub fn expand_path_pattern(
    pattern: &str,
    vars: PatternVars<'_>,
) -> Result<Option<RelDir>, PathError> {
    let mut out = String::with_capacity(pattern.len() + 32);
    for token in pattern_tokens(pattern) {
        match token {
            PatternToken::Text(text) => out.push_str(text),
            PatternToken::Var(field) => out.push_str(lookup_var(field, vars)),
        }
    }
    if out.is_empty() {
        return Ok(None);
    }
    if out.len() > PATH_MAX {
        return Err(PathError::TooLong(out.len()));
    }
    let mut components = Vec::new();
    for c in out.split('/').filter(|c| !c.is_empty() && *c != ".") {
        validate_component(c)?;
        components.push(c.to_owned());
    }
    if components.is_empty() {
        return Err(PathError::Root(pattern.to_owned()));
    }
    Ok(Some(RelDir { components }))
}

/// A piece of a `pathPattern`: literal text or the field of a `${.PVC.FIELD}` variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PatternToken<'a> {
    Text(&'a str),
    Var(&'a str),
}

/// Splits a pattern into text and variables. A variable runs from `${.PVC.` to the first `}` on
/// the same line (Go's `\${\.PVC\.(.*?)}`); a `${` that does not start one is text.
fn pattern_tokens(pattern: &str) -> Vec<PatternToken<'_>> {
    const OPEN: &str = "${.PVC.";
    let mut tokens = Vec::new();
    let mut rest = pattern;
    while let Some(start) = rest.find(OPEN) {
        let after = &rest[start + OPEN.len()..];
        let Some(end) = after
            .find(['}', '\n'])
            .filter(|&i| after[i..].starts_with('}'))
        else {
            // Not a variable: keep `${` as text and look further on.
            tokens.push(PatternToken::Text(&rest[..start + 2]));
            rest = &rest[start + 2..];
            continue;
        };
        if start > 0 {
            tokens.push(PatternToken::Text(&rest[..start]));
        }
        tokens.push(PatternToken::Var(&after[..end]));
        rest = &after[end + 1..];
    }
    if !rest.is_empty() {
        tokens.push(PatternToken::Text(rest));
    }
    tokens
}

fn lookup_var<'a>(field: &str, vars: PatternVars<'a>) -> &'a str {
    let from_map = |map: Option<&'a BTreeMap<String, String>>, key: &str| {
        map.and_then(|m| m.get(key)).map_or("", String::as_str)
    };
    match field {
        "namespace" => vars.namespace,
        "name" => vars.name,
        _ => {
            if let Some(key) = field.strip_prefix("labels.") {
                from_map(vars.labels, key)
            } else if let Some(key) = field.strip_prefix("annotations.") {
                from_map(vars.annotations, key)
            } else {
                ""
            }
        }
    }
}

/// Whether every directory a pattern yields is private to the claim's namespace: the first
/// path component holding a variable is exactly `${.PVC.namespace}` and every component before
/// it is literal text. Namespace names cannot contain `/`, so two namespaces can never meet in
/// one directory. (`${.PVC.namespace}-${.PVC.name}` is not: `a-b`/`c` and `a`/`b-c` collide.)
pub fn pattern_keeps_namespaces_apart(pattern: &str) -> bool {
    // Components as lists of tokens, split at the `/` of literal text only (a variable such
    // as `${.PVC.annotations.nfs.io/storage-path}` may contain `/` in its key).
    let mut component: Vec<PatternToken<'_>> = Vec::new();
    let mut components = Vec::new();
    for token in pattern_tokens(pattern) {
        match token {
            PatternToken::Text(text) => {
                let mut parts = text.split('/');
                if let Some(first) = parts.next().filter(|p| !p.is_empty()) {
                    component.push(PatternToken::Text(first));
                }
                for part in parts {
                    components.push(std::mem::take(&mut component));
                    if !part.is_empty() {
                        component.push(PatternToken::Text(part));
                    }
                }
            }
            var => component.push(var),
        }
    }
    components.push(component);
    let first_with_var = components
        .iter()
        .find(|c| c.iter().any(|t| matches!(t, PatternToken::Var(_))));
    first_with_var.is_some_and(|c| c.as_slice() == [PatternToken::Var("namespace")])
}

/// Cleans a slash-separated path the way Go's `path.Clean` does (so PVs written by the Go
/// provisioner compare equal): repeated slashes collapse, `.` disappears, `..` eats its parent,
/// no trailing slash.
pub fn clean_path(path: &str) -> String {
    let absolute = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !absolute {
                    parts.push("..");
                }
            }
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    match (absolute, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_owned(),
        (false, false) => joined,
    }
}

/// `spec.nfs.path` of a volume in `dir`: `NFS_PATH` joined with the directory, cleaned.
pub fn nfs_path_for(nfs_path: &str, dir: &RelDir) -> String {
    clean_path(&format!("{nfs_path}/{dir}"))
}

/// The directory a PV's `spec.nfs.path` points at, relative to `NFS_PATH`; `None` when the path
/// is not strictly below `NFS_PATH` (another export, or the export root itself).
pub fn dir_from_nfs_path(nfs_path: &str, pv_path: &str) -> Option<RelDir> {
    let base = clean_path(nfs_path);
    let path = clean_path(pv_path);
    let rel = if base == "/" {
        path.strip_prefix('/')?
    } else {
        path.strip_prefix(&base)?.strip_prefix('/')?
    };
    RelDir::parse(rel).ok()
}

// ---------------------------------------------------------------------------------------------
// Class parameters

/// StorageClass parameters read when provisioning, parsed. `onDelete` and `archiveOnDelete`
/// are not here: like the Go provisioner, we read them only when a volume is deleted
/// ([`delete_action`]), so a value we do not know never fails a new claim.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClassParams {
    pub path_pattern: Option<String>,
    /// `mode` (octal): the directory's mode, and the most a claim's `nfs.io/createMode` may ask.
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// `usageWalk` (default true): whether the periodic walk measures this class's volumes.
    pub usage_walk: bool,
}

/// A parameter or annotation value that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_kind} `{name}` has value `{value}`, expected {expected}")]
pub struct ParamError {
    /// `StorageClass parameter` or `claim annotation`.
    pub source_kind: &'static str,
    /// Parameter or annotation name.
    pub name: &'static str,
    pub value: String,
    /// What would have been accepted.
    pub expected: &'static str,
}

const CLASS_PARAM: &str = "StorageClass parameter";
const CLAIM_ANN: &str = "claim annotation";

/// Parses the parameters provisioning uses; unknown ones are ignored, as the Go provisioner does.
pub fn parse_class_params(
    params: Option<&BTreeMap<String, String>>,
) -> Result<ClassParams, ParamError> {
    let mut out = ClassParams {
        usage_walk: true,
        ..ClassParams::default()
    };
    let Some(params) = params else {
        return Ok(out);
    };
    let err = |name: &'static str, value: &str, expected: &'static str| ParamError {
        source_kind: CLASS_PARAM,
        name,
        value: value.to_owned(),
        expected,
    };
    out.path_pattern = params.get("pathPattern").cloned();
    if let Some(v) = params.get("mode") {
        out.mode =
            Some(parse_mode(v).ok_or_else(|| err("mode", v, "an octal mode such as `0770`"))?);
    }
    if let Some(v) = params.get("uid") {
        out.uid = Some(parse_id(v).ok_or_else(|| err("uid", v, "a numeric user id"))?);
    }
    if let Some(v) = params.get("gid") {
        out.gid = Some(parse_id(v).ok_or_else(|| err("gid", v, "a numeric group id"))?);
    }
    if let Some(v) = params.get("usageWalk") {
        out.usage_walk =
            parse_go_bool(v).ok_or_else(|| err("usageWalk", v, "`true` or `false`"))?;
    }
    Ok(out)
}

/// Whether the usage walk measures volumes of `class` (parameter `usageWalk`, default true; a
/// class that is gone or does not parse is measured).
pub fn usage_walk_enabled(class: Option<&StorageClass>) -> bool {
    parse_class_params(class.and_then(|c| c.parameters.as_ref())).map_or(true, |p| p.usage_walk)
}

/// What deletion does with a volume's directory, from the class parameters, exactly as the Go
/// provisioner reads them: `onDelete` is compared as written (`delete` removes, `retain` keeps,
/// anything else is not a choice and `archiveOnDelete` decides); `archiveOnDelete` is Go's
/// boolean (default true: archive). Where the Go provisioner would act on a value it does not
/// understand, we keep the data and say why; the second value is a warning for an event.
pub fn delete_action(
    params: Option<&BTreeMap<String, String>>,
    leaf: &str,
    stamp: &str,
) -> (DirAction, Option<String>) {
    let get = |k: &str| params.and_then(|p| p.get(k)).map(String::as_str);
    let on_delete = get("onDelete");
    match on_delete {
        Some("delete") => return (DirAction::Remove, None),
        Some("retain") => {
            return (
                DirAction::Retain {
                    reason: RetainReason::Requested,
                },
                None,
            );
        }
        _ => {}
    }
    let unknown = on_delete.map(|v| {
        format!(
            "StorageClass parameter `onDelete` has value `{v}`, which is neither `delete` nor `retain` (matched exactly, as nfs-subdir-external-provisioner matches it), so `archiveOnDelete` decided"
        )
    });
    let archive = match get("archiveOnDelete") {
        None => true,
        Some(v) => match parse_go_bool(v) {
            Some(b) => b,
            None => {
                let error = ParamError {
                    source_kind: CLASS_PARAM,
                    name: "archiveOnDelete",
                    value: v.to_owned(),
                    expected: "`true` or `false`",
                };
                return (
                    DirAction::Retain {
                        reason: RetainReason::InvalidParameter(error),
                    },
                    None,
                );
            }
        },
    };
    match (archive, unknown) {
        (true, note) => (
            DirAction::Archive {
                names: archive_names(leaf, stamp),
            },
            note,
        ),
        (false, None) => (DirAction::Remove, None),
        // `archiveOnDelete: false` beside an `onDelete` we do not know: the class may have
        // meant `retain`; keep the data rather than guess.
        (false, Some(note)) => (
            DirAction::Retain {
                reason: RetainReason::UnknownOnDelete(note),
            },
            None,
        ),
    }
}

/// Go's `strconv.ParseBool`, which the old provisioner used for `archiveOnDelete`.
pub fn parse_go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// An octal permission mode (`0770`, `770`, `0o770`), at most `07777`.
pub fn parse_mode(v: &str) -> Option<u32> {
    let digits = v.trim();
    let digits = digits.strip_prefix("0o").unwrap_or(digits);
    if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
    {
        return None;
    }
    u32::from_str_radix(digits, 8).ok().filter(|m| *m <= 0o7777)
}

fn parse_id(v: &str) -> Option<u32> {
    let v = v.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// Bytes of a Kubernetes quantity such as `100Gi`, `1.5G` or `500M` (for metrics only);
/// `None` for anything it cannot read exactly enough.
pub fn quantity_bytes(q: &str) -> Option<u64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let mult: f64 = match suffix {
        "" => 1.0,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "m" => 1e-3,
        _ => return None,
    };
    let n: f64 = num.parse().ok()?;
    let bytes = (n * mult).ceil();
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

// ---------------------------------------------------------------------------------------------
// Provisioning

/// Outcome of [`plan_provision`].
#[derive(Debug, Clone, PartialEq)]
pub enum ProvisionDecision {
    /// Not ours to do, or nothing to do.
    Skip { reason: SkipReason },
    /// Create the directory, then the PV.
    Provision(Box<PvPlan>),
    /// Ours, but it cannot be provisioned as asked: a `ProvisioningFailed` event.
    Fail {
        /// Why (the event's message).
        reason: FailReason,
    },
}

/// Why a claim is skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// The claim is being deleted.
    Deleting,
    /// `spec.volumeName` is set: the claim is bound or binding.
    AlreadyBound,
    /// No provisioner annotation: the PV controller has not asked anyone yet.
    NotAnnotated,
    /// The annotation names another provisioner.
    OtherProvisioner(String),
    /// The class names another provisioner.
    ClassOfOtherProvisioner(String),
    /// `WaitForFirstConsumer` and no node selected yet.
    WaitingForFirstConsumer,
    /// Our PV for this claim already exists.
    AlreadyProvisioned(String),
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::Deleting => f.write_str("claim is being deleted"),
            SkipReason::AlreadyBound => f.write_str("claim already names a volume"),
            SkipReason::NotAnnotated => f.write_str("claim has no storage-provisioner annotation"),
            SkipReason::OtherProvisioner(p) => write!(f, "claim is for provisioner {p}"),
            SkipReason::ClassOfOtherProvisioner(p) => {
                write!(f, "StorageClass is for provisioner {p}")
            }
            SkipReason::WaitingForFirstConsumer => f.write_str("waiting for a pod to be scheduled"),
            SkipReason::AlreadyProvisioned(pv) => write!(f, "volume {pv} already exists"),
        }
    }
}

/// Why a claim of ours cannot be provisioned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FailReason {
    /// `spec.selector` is set.
    #[error(
        "claim Selector is not supported: the NFS provisioner creates a new volume for every claim"
    )]
    Selector,
    /// `volumeMode: Block`.
    #[error("volumeMode Block is not supported: NFS volumes are filesystems")]
    BlockMode,
    /// `dataSource`/`dataSourceRef` is set.
    #[error(
        "claim dataSource is not supported: the NFS provisioner cannot clone or restore volumes"
    )]
    DataSource,
    /// No `metadata.uid`, so no PV name.
    #[error("claim has no metadata.uid")]
    NoUid,
    /// No class name on the claim.
    #[error("claim names no StorageClass")]
    NoClassName,
    /// The named class does not exist.
    #[error("StorageClass {0} not found")]
    ClassNotFound(String),
    /// No `resources.requests.storage`.
    #[error("claim has no resources.requests.storage")]
    NoStorageRequest,
    #[error("claim has no accessModes")]
    NoAccessModes,
    /// A parameter or annotation did not parse.
    #[error(transparent)]
    Param(#[from] ParamError),
    /// The directory path was refused.
    #[error("StorageClass {class}: {error}")]
    Path {
        /// The class whose pattern failed (or `default naming`).
        class: String,
        #[source]
        error: PathError,
    },
    /// A PV of our name exists but belongs to another claim.
    #[error("volume {0} exists and is bound to another claim")]
    NameTaken(String),
    /// The directory would be, contain or lie inside the directory of another volume.
    #[error(
        "directory {dir} {relation} directory {other_dir} of volume {pv}: volumes never share data, so this claim is not provisioned (change the class's pathPattern, or the claim's labels or annotations it reads)"
    )]
    Overlap {
        dir: RelDir,
        relation: Relation,
        other_dir: RelDir,
        pv: String,
    },
    /// The directory exists, holds data, no volume uses it, and the class's pattern does not
    /// keep namespaces apart: it may be another namespace's data.
    #[error(
        "directory {dir} already exists and is not empty, no volume uses it, and the class's pathPattern does not keep namespaces apart (it does when its first variable component is exactly ${{.PVC.namespace}}), so it may hold another namespace's data; move it away on the NFS server to provision afresh"
    )]
    Unclaimed { dir: RelDir },
}

/// How two volume directories meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    Same,
    Inside,
    Contains,
}

impl fmt::Display for Relation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Relation::Same => "is the same as",
            Relation::Inside => "lies inside",
            Relation::Contains => "contains",
        })
    }
}

/// How `a` meets `b`, if it does: the same directory, `a` inside `b`, or `a` containing `b`.
pub fn relation(a: &RelDir, b: &RelDir) -> Option<Relation> {
    let (a, b) = (a.components(), b.components());
    if a == b {
        Some(Relation::Same)
    } else if a.starts_with(b) {
        Some(Relation::Inside)
    } else if b.starts_with(a) {
        Some(Relation::Contains)
    } else {
        None
    }
}

impl FailReason {
    /// Short label for the `failures_total{reason}` metric.
    pub fn metric_reason(&self) -> &'static str {
        match self {
            FailReason::Selector => "selector",
            FailReason::BlockMode => "block_mode",
            FailReason::DataSource => "data_source",
            FailReason::NoUid | FailReason::NoStorageRequest | FailReason::NoAccessModes => {
                "invalid_claim"
            }
            FailReason::NoClassName | FailReason::ClassNotFound(_) => "class_not_found",
            FailReason::Param(_) => "invalid_parameter",
            FailReason::Path { .. } => "invalid_path",
            FailReason::NameTaken(_) => "name_taken",
            FailReason::Overlap { .. } | FailReason::Unclaimed { .. } => "shared_directory",
        }
    }
}

/// Everything needed to provision one claim.
#[derive(Debug, Clone, PartialEq)]
pub struct PvPlan {
    /// The directory to create under the NFS root.
    pub dir: RelDir,
    pub mode: u32,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// The PV to create (name `pvc-<claim uid>`).
    pub pv: PersistentVolume,
    /// The claim's request, in bytes, when it could be read (for metrics).
    pub requested_bytes: Option<u64>,
    /// Whether the directory's name is private to the claim's namespace (the default name, or
    /// a pattern that [keeps namespaces apart](pattern_keeps_namespaces_apart)), so that an
    /// existing directory of that name may be used as it is. Otherwise the caller must check it
    /// is empty first.
    pub private: bool,
}

/// Name of the PV provisioned for a claim: `pvc-<uid>`, as the external-provisioner library.
pub fn pv_name_for(pvc: &PersistentVolumeClaim) -> Option<String> {
    pvc.metadata
        .uid
        .as_deref()
        .filter(|u| !u.is_empty())
        .map(|u| format!("pvc-{u}"))
}

/// The StorageClass a claim names: `spec.storageClassName`, else the beta annotation.
pub fn claim_class_name(pvc: &PersistentVolumeClaim) -> Option<&str> {
    pvc.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .or_else(|| annotation(&pvc.metadata, ANN_STORAGE_CLASS_BETA))
        .filter(|c| !c.is_empty())
}

/// The provisioner a claim was handed to: the GA annotation, else the beta one.
pub fn claim_provisioner(pvc: &PersistentVolumeClaim) -> Option<&str> {
    annotation(&pvc.metadata, ANN_STORAGE_PROVISIONER)
        .or_else(|| annotation(&pvc.metadata, ANN_STORAGE_PROVISIONER_BETA))
}

fn annotation<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

/// Decides what to do with a claim.
///
/// `class` is the StorageClass the claim names (looked up by the caller with
/// [`claim_class_name`]); `existing` is the PV named [`pv_name_for`] the claim, if the caller
/// has seen one; `volumes` are all the PVs the caller knows, so that no two volumes ever share
/// a directory.
pub fn plan_provision(
    pvc: &PersistentVolumeClaim,
    class: Option<&StorageClass>,
    config: &Config,
    existing: Option<&PersistentVolume>,
    volumes: &[&PersistentVolume],
) -> ProvisionDecision {
    use ProvisionDecision::{Fail, Skip};
    let meta = &pvc.metadata;
    if meta.deletion_timestamp.is_some() {
        return Skip {
            reason: SkipReason::Deleting,
        };
    }
    let spec = pvc.spec.clone().unwrap_or_default();
    if spec.volume_name.as_deref().is_some_and(|v| !v.is_empty()) {
        return Skip {
            reason: SkipReason::AlreadyBound,
        };
    }
    match claim_provisioner(pvc) {
        None => {
            return Skip {
                reason: SkipReason::NotAnnotated,
            };
        }
        Some(p) if p != config.provisioner_name => {
            return Skip {
                reason: SkipReason::OtherProvisioner(p.to_owned()),
            };
        }
        Some(_) => {}
    }
    let Some(pv_name) = pv_name_for(pvc) else {
        return Fail {
            reason: FailReason::NoUid,
        };
    };
    if let Some(pv) = existing {
        let claim_uid = pv
            .spec
            .as_ref()
            .and_then(|s| s.claim_ref.as_ref())
            .and_then(|r| r.uid.as_deref());
        return if claim_uid.is_none() || claim_uid == meta.uid.as_deref() {
            Skip {
                reason: SkipReason::AlreadyProvisioned(pv_name),
            }
        } else {
            Fail {
                reason: FailReason::NameTaken(pv_name),
            }
        };
    }
    let Some(class_name) = claim_class_name(pvc) else {
        return Fail {
            reason: FailReason::NoClassName,
        };
    };
    let Some(class) = class else {
        return Fail {
            reason: FailReason::ClassNotFound(class_name.to_owned()),
        };
    };
    if class.provisioner != config.provisioner_name {
        return Skip {
            reason: SkipReason::ClassOfOtherProvisioner(class.provisioner.clone()),
        };
    }
    if class.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer")
        && annotation(meta, ANN_SELECTED_NODE).is_none_or(str::is_empty)
    {
        return Skip {
            reason: SkipReason::WaitingForFirstConsumer,
        };
    }
    if spec.selector.is_some() {
        return Fail {
            reason: FailReason::Selector,
        };
    }
    if spec.volume_mode.as_deref() == Some("Block") {
        return Fail {
            reason: FailReason::BlockMode,
        };
    }
    if spec.data_source.is_some() || spec.data_source_ref.is_some() {
        return Fail {
            reason: FailReason::DataSource,
        };
    }
    let Some(storage) = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .cloned()
    else {
        return Fail {
            reason: FailReason::NoStorageRequest,
        };
    };
    let access_modes = spec.access_modes.clone().unwrap_or_default();
    if access_modes.is_empty() {
        return Fail {
            reason: FailReason::NoAccessModes,
        };
    }
    let params = match parse_class_params(class.parameters.as_ref()) {
        Ok(p) => p,
        Err(e) => return Fail { reason: e.into() },
    };
    let (mode, uid, gid) = match dir_owner(&params, meta) {
        Ok(x) => x,
        Err(e) => return Fail { reason: e.into() },
    };
    let (dir, private) = match claim_dir(pvc, &pv_name, &params) {
        Ok(d) => d,
        Err(error) => {
            return Fail {
                reason: FailReason::Path {
                    class: class_name.to_owned(),
                    error,
                },
            };
        }
    };
    if let Some((pv, other_dir, relation)) = overlapping_volume(&dir, &pv_name, config, volumes) {
        return Fail {
            reason: FailReason::Overlap {
                dir,
                relation,
                other_dir,
                pv,
            },
        };
    }
    let requested_bytes = quantity_bytes(&storage.0);
    let pv = build_pv(
        pvc,
        &pv_name,
        class_name,
        class,
        config,
        &dir,
        storage,
        access_modes,
    );
    ProvisionDecision::Provision(Box::new(PvPlan {
        dir,
        mode,
        uid,
        gid,
        pv,
        requested_bytes,
        private,
    }))
}

/// The directory of a claim: the class's `pathPattern` expanded, or `<namespace>-<pvc>-<pv>`
/// when there is none or it expands to nothing; and whether that name is private to the
/// claim's namespace.
pub fn claim_dir(
    pvc: &PersistentVolumeClaim,
    pv_name: &str,
    params: &ClassParams,
) -> Result<(RelDir, bool), PathError> {
    let meta = &pvc.metadata;
    let namespace = meta.namespace.as_deref().unwrap_or("default");
    let name = meta.name.as_deref().unwrap_or_default();
    if let Some(pattern) = &params.path_pattern {
        let vars = PatternVars {
            namespace,
            name,
            labels: meta.labels.as_ref(),
            annotations: meta.annotations.as_ref(),
        };
        if let Some(dir) = expand_path_pattern(pattern, vars)? {
            return Ok((dir, pattern_keeps_namespaces_apart(pattern)));
        }
    }
    // Holds the PV name, which is the claim's uid: no other claim can have it.
    Ok((
        RelDir::parse(&format!("{namespace}-{name}-{pv_name}"))?,
        true,
    ))
}

/// The first PV other than `pv_name` whose directory meets `dir`, with its directory and how
/// `dir` meets it. Every PV counts whatever its phase, class or namespace, as long as it points
/// below our export: on our `NFS_SERVER`, or provisioned by us (the server may be spelled
/// differently, an IP address for a DNS name).
pub fn overlapping_volume(
    dir: &RelDir,
    pv_name: &str,
    config: &Config,
    volumes: &[&PersistentVolume],
) -> Option<(String, RelDir, Relation)> {
    volumes
        .iter()
        .filter(|v| v.metadata.name.as_deref() != Some(pv_name))
        .find_map(|v| {
            let other = export_dir(v, config)?;
            let relation = relation(dir, &other)?;
            Some((v.metadata.name.clone().unwrap_or_default(), other, relation))
        })
}

/// The directory below our export that a PV points at: on our `NFS_SERVER` or provisioned by
/// us, and strictly below `NFS_PATH`.
fn export_dir(pv: &PersistentVolume, config: &Config) -> Option<RelDir> {
    let nfs = pv.spec.as_ref()?.nfs.as_ref()?;
    let ours = nfs.server == config.nfs_server
        || annotation(&pv.metadata, ANN_PROVISIONED_BY) == Some(config.provisioner_name.as_str());
    if !ours {
        return None;
    }
    dir_from_nfs_path(&config.nfs_path, &nfs.path)
}

/// Mode and owner of the directory. The class decides; a claim may narrow the mode with
/// `nfs.io/createMode` (never add a bit the class's mode, or the default 0777, lacks) and
/// choose an owner with `nfs.io/createUID`/`nfs.io/createGID` only where the class sets none.
fn dir_owner(
    params: &ClassParams,
    meta: &ObjectMeta,
) -> Result<(u32, Option<u32>, Option<u32>), ParamError> {
    let ann_err = |name: &'static str, value: &str, expected: &'static str| ParamError {
        source_kind: CLAIM_ANN,
        name,
        value: value.to_owned(),
        expected,
    };
    let ceiling = params.mode.unwrap_or(DEFAULT_MODE);
    let mode = match annotation(meta, ANN_CREATE_MODE) {
        None => ceiling,
        Some(v) => match parse_mode(v) {
            Some(m) if m & !ceiling == 0 => m,
            Some(_) => {
                return Err(ann_err(
                    ANN_CREATE_MODE,
                    v,
                    "a mode within the StorageClass's mode (a claim may remove permissions, not add them)",
                ));
            }
            None => return Err(ann_err(ANN_CREATE_MODE, v, "an octal mode such as `0770`")),
        },
    };
    let uid = match (params.uid, annotation(meta, ANN_CREATE_UID)) {
        (Some(u), _) => Some(u),
        (None, Some(v)) => {
            Some(parse_id(v).ok_or_else(|| ann_err(ANN_CREATE_UID, v, "a numeric user id"))?)
        }
        (None, None) => None,
    };
    let gid = match (params.gid, annotation(meta, ANN_CREATE_GID)) {
        (Some(g), _) => Some(g),
        (None, Some(v)) => {
            Some(parse_id(v).ok_or_else(|| ann_err(ANN_CREATE_GID, v, "a numeric group id"))?)
        }
        (None, None) => None,
    };
    Ok((mode, uid, gid))
}

#[allow(clippy::too_many_arguments)]
fn build_pv(
    pvc: &PersistentVolumeClaim,
    pv_name: &str,
    class_name: &str,
    class: &StorageClass,
    config: &Config,
    dir: &RelDir,
    storage: Quantity,
    access_modes: Vec<String>,
) -> PersistentVolume {
    let meta = &pvc.metadata;
    PersistentVolume {
        metadata: ObjectMeta {
            name: Some(pv_name.to_owned()),
            annotations: Some(BTreeMap::from([(
                ANN_PROVISIONED_BY.to_owned(),
                config.provisioner_name.clone(),
            )])),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeSpec {
            access_modes: Some(access_modes),
            capacity: Some(BTreeMap::from([("storage".to_owned(), storage)])),
            claim_ref: Some(ObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("PersistentVolumeClaim".to_owned()),
                namespace: meta.namespace.clone(),
                name: meta.name.clone(),
                uid: meta.uid.clone(),
                ..ObjectReference::default()
            }),
            mount_options: class.mount_options.clone().filter(|m| !m.is_empty()),
            nfs: Some(NFSVolumeSource {
                server: config.nfs_server.clone(),
                path: nfs_path_for(&config.nfs_path, dir),
                read_only: None,
            }),
            persistent_volume_reclaim_policy: Some(
                class
                    .reclaim_policy
                    .clone()
                    .unwrap_or_else(|| "Delete".to_owned()),
            ),
            storage_class_name: Some(class_name.to_owned()),
            ..PersistentVolumeSpec::default()
        }),
        status: None,
    }
}

// ---------------------------------------------------------------------------------------------
// Deletion

/// Outcome of [`plan_delete`].
#[derive(Debug, Clone, PartialEq)]
pub enum DeleteDecision {
    /// Not ours, or not released with reclaim policy `Delete`.
    Skip { reason: DeleteSkip },
    /// Archive, remove or retain the directory, then delete the PV.
    Delete(DeletePlan),
    /// Ours and released, but unsafe to touch: a warning event, the PV stays.
    Fail { reason: DeleteFail },
}

/// Why a volume is left alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteSkip {
    /// Not annotated as provisioned by us.
    NotOurs,
    /// Phase is not `Released`.
    NotReleased,
    /// Reclaim policy is not `Delete`.
    NotReclaimDelete,
    /// Already being deleted.
    Deleting,
}

/// Why a released volume of ours cannot be cleaned up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeleteFail {
    /// No `spec.nfs`.
    #[error("volume {0} has no spec.nfs")]
    NotNfs(String),
    /// `spec.nfs.path` is not strictly below `NFS_PATH`.
    #[error(
        "volume {pv} has path {path}, which is not a directory below {ours} (NFS_PATH): refusing to touch it"
    )]
    OutsideExport {
        pv: String,
        path: String,
        /// Our `NFS_PATH`.
        ours: String,
    },
}

/// What to do with a released volume's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirAction {
    /// Rename it within its parent to the first of `names` that does not exist yet.
    Archive {
        /// Candidate names, in order: `archived-<dir>`, then timestamped ones.
        names: Vec<String>,
    },
    /// Remove it and everything in it.
    Remove,
    /// Leave it where it is.
    Retain {
        /// Why (logged, and a warning event when unexpected).
        reason: RetainReason,
    },
}

/// Why a directory is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetainReason {
    /// `onDelete: retain`.
    Requested,
    /// Another PV points at the same directory, one inside it or one around it.
    Shared {
        pv: String,
        relation: Relation,
        other_dir: RelDir,
    },
    /// `archiveOnDelete` does not parse: keeping data is the safe choice.
    InvalidParameter(ParamError),
    /// `onDelete` is a value we do not know and `archiveOnDelete` says remove.
    UnknownOnDelete(String),
}

impl fmt::Display for RetainReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetainReason::Requested => f.write_str("onDelete: retain"),
            RetainReason::Shared {
                pv,
                relation,
                other_dir,
            } => write!(
                f,
                "the directory {relation} directory {other_dir} of volume {pv}; kept the directory so that no other volume loses data"
            ),
            RetainReason::InvalidParameter(e) => write!(f, "{e}; kept the directory"),
            RetainReason::UnknownOnDelete(note) => {
                write!(f, "{note}, and it says remove; kept the directory")
            }
        }
    }
}

/// Cleanup of one released volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletePlan {
    /// The PV to delete afterwards.
    pub pv_name: String,
    /// Its uid, as a delete precondition.
    pub pv_uid: Option<String>,
    /// Its directory under the NFS root.
    pub dir: RelDir,
    pub action: DirAction,
    /// A warning to publish although the cleanup goes ahead (a class parameter ignored).
    pub warning: Option<String>,
}

/// Decides the cleanup of a volume.
///
/// `class` is the volume's StorageClass if it still exists (without it the defaults apply:
/// archive, which keeps the data); `volumes` are all the PVs known, so that a directory another
/// volume uses (the same one, one inside it or around it) is never removed or moved; `stamp` is
/// the suffix for a second archive of the same name (e.g. `20250102T030405Z`, from the caller's
/// clock). Like the Go provisioner, any `spec.nfs.server` is accepted: a PV provisioned by us
/// whose path is below `NFS_PATH` is ours however the server is spelled.
pub fn plan_delete(
    pv: &PersistentVolume,
    class: Option<&StorageClass>,
    config: &Config,
    volumes: &[&PersistentVolume],
    stamp: &str,
) -> DeleteDecision {
    use DeleteDecision::{Fail, Skip};
    let name = pv.metadata.name.clone().unwrap_or_default();
    if annotation(&pv.metadata, ANN_PROVISIONED_BY) != Some(config.provisioner_name.as_str()) {
        return Skip {
            reason: DeleteSkip::NotOurs,
        };
    }
    if pv.metadata.deletion_timestamp.is_some() {
        return Skip {
            reason: DeleteSkip::Deleting,
        };
    }
    if pv.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Released") {
        return Skip {
            reason: DeleteSkip::NotReleased,
        };
    }
    let Some(spec) = pv.spec.as_ref() else {
        return Fail {
            reason: DeleteFail::NotNfs(name),
        };
    };
    if spec.persistent_volume_reclaim_policy.as_deref() != Some("Delete") {
        return Skip {
            reason: DeleteSkip::NotReclaimDelete,
        };
    }
    let Some(nfs) = spec.nfs.as_ref() else {
        return Fail {
            reason: DeleteFail::NotNfs(name),
        };
    };
    let Some(dir) = dir_from_nfs_path(&config.nfs_path, &nfs.path) else {
        return Fail {
            reason: DeleteFail::OutsideExport {
                pv: name,
                path: nfs.path.clone(),
                ours: config.nfs_path.clone(),
            },
        };
    };
    let (action, warning) = match overlapping_volume(&dir, &name, config, volumes) {
        Some((pv, other_dir, relation)) => (
            DirAction::Retain {
                reason: RetainReason::Shared {
                    pv,
                    relation,
                    other_dir,
                },
            },
            None,
        ),
        None => delete_action(class.and_then(|c| c.parameters.as_ref()), dir.leaf(), stamp),
    };
    DeleteDecision::Delete(DeletePlan {
        pv_name: name,
        pv_uid: pv.metadata.uid.clone(),
        dir,
        action,
        warning,
    })
}

/// Archive names for a directory, in the order to try: `archived-<leaf>`, then
/// `archived-<leaf>-<stamp>`, then `archived-<leaf>-<stamp>-<n>`. Each fits in [`NAME_MAX`]
/// (a long leaf is shortened on a character boundary).
pub fn archive_names(leaf: &str, stamp: &str) -> Vec<String> {
    let mut names = Vec::with_capacity(ARCHIVE_ATTEMPTS + 2);
    let fit = |suffix: &str| {
        let budget = NAME_MAX.saturating_sub(ARCHIVE_PREFIX.len() + suffix.len());
        let mut end = leaf.len().min(budget);
        while !leaf.is_char_boundary(end) {
            end -= 1;
        }
        format!("{ARCHIVE_PREFIX}{}{suffix}", &leaf[..end])
    };
    names.push(fit(""));
    names.push(fit(&format!("-{stamp}")));
    for n in 1..=ARCHIVE_ATTEMPTS {
        names.push(fit(&format!("-{stamp}-{n}")));
    }
    names
}

/// The directory of a volume we provisioned (for the usage walk); `None` when the PV is not
/// ours or does not point below our export.
pub fn volume_dir(pv: &PersistentVolume, config: &Config) -> Option<RelDir> {
    if annotation(&pv.metadata, ANN_PROVISIONED_BY) != Some(config.provisioner_name.as_str()) {
        return None;
    }
    let nfs = pv.spec.as_ref()?.nfs.as_ref()?;
    dir_from_nfs_path(&config.nfs_path, &nfs.path)
}

#[cfg(test)]
mod tests;
