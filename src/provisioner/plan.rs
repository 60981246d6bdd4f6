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
    /// A `${...}` that is not one of the supported variables.
    #[error(
        "pathPattern variable `${{{0}}}` is not supported (use .PVC.namespace, .PVC.name, .PVC.labels.KEY or .PVC.annotations.KEY)"
    )]
    UnknownVariable(String),
    /// A `${` without its `}`.
    #[error("pathPattern has an unterminated `${{`")]
    Unterminated,
    /// A variable whose value is missing or empty.
    #[error("pathPattern variable `${{{0}}}` is empty or not set on the claim")]
    EmptyValue(String),
    /// A variable whose value could leave its path segment.
    #[error("pathPattern variable `${{{var}}}` has value `{value}`, which contains `/` or `..`")]
    UnsafeValue {
        /// The variable, e.g. `.PVC.annotations.nfs.io/storage-path`.
        var: String,
        /// Its value on the claim.
        value: String,
    },
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

/// Expands a class `pathPattern` against a claim. A substituted value must be non-empty and may
/// contain neither `/` nor `..`; the result must be a valid [`RelDir`] (relative, no `.`/`..`
/// components, not empty). Literal `/` in the pattern itself nests directories.
pub fn expand_path_pattern(pattern: &str, vars: PatternVars<'_>) -> Result<RelDir, PathError> {
    let mut out = String::with_capacity(pattern.len() + 32);
    let mut rest = pattern;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or(PathError::Unterminated)?;
        let var = &after[..end];
        let value = lookup_var(var, vars)?;
        if value.is_empty() {
            return Err(PathError::EmptyValue(var.to_owned()));
        }
        if value.contains('/') || value.contains("..") || value.contains('\0') {
            return Err(PathError::UnsafeValue {
                var: var.to_owned(),
                value: value.to_owned(),
            });
        }
        out.push_str(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    RelDir::parse(&out)
}

fn lookup_var<'a>(var: &str, vars: PatternVars<'a>) -> Result<&'a str, PathError> {
    let Some(field) = var.strip_prefix(".PVC.") else {
        return Err(PathError::UnknownVariable(var.to_owned()));
    };
    let from_map = |map: Option<&'a BTreeMap<String, String>>, key: &str| {
        map.and_then(|m| m.get(key)).map_or("", String::as_str)
    };
    match field {
        "namespace" => Ok(vars.namespace),
        "name" => Ok(vars.name),
        _ => {
            if let Some(key) = field.strip_prefix("labels.") {
                Ok(from_map(vars.labels, key))
            } else if let Some(key) = field.strip_prefix("annotations.") {
                Ok(from_map(vars.annotations, key))
            } else {
                Err(PathError::UnknownVariable(var.to_owned()))
            }
        }
    }
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

/// What `onDelete` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDelete {
    /// Not set: `archiveOnDelete` decides.
    Unset,
    /// Remove the directory.
    Delete,
    /// Keep the directory where it is.
    Retain,
}

/// StorageClass parameters, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassParams {
    pub on_delete: OnDelete,
    /// `archiveOnDelete` (default true).
    pub archive_on_delete: bool,
    pub path_pattern: Option<String>,
    /// `mode` (octal).
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

impl Default for ClassParams {
    fn default() -> Self {
        ClassParams {
            on_delete: OnDelete::Unset,
            archive_on_delete: true,
            path_pattern: None,
            mode: None,
            uid: None,
            gid: None,
        }
    }
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

/// Parses the parameters we know; unknown ones are ignored, as the Go provisioner does.
pub fn parse_class_params(
    params: Option<&BTreeMap<String, String>>,
) -> Result<ClassParams, ParamError> {
    let mut out = ClassParams::default();
    let Some(params) = params else {
        return Ok(out);
    };
    let err = |name: &'static str, value: &str, expected: &'static str| ParamError {
        source_kind: CLASS_PARAM,
        name,
        value: value.to_owned(),
        expected,
    };
    if let Some(v) = params.get("onDelete") {
        out.on_delete = match v.to_ascii_lowercase().as_str() {
            "delete" => OnDelete::Delete,
            "retain" => OnDelete::Retain,
            _ => return Err(err("onDelete", v, "`delete` or `retain`")),
        };
    }
    if let Some(v) = params.get("archiveOnDelete") {
        out.archive_on_delete =
            parse_go_bool(v).ok_or_else(|| err("archiveOnDelete", v, "`true` or `false`"))?;
    }
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
    Ok(out)
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
/// has seen one.
pub fn plan_provision(
    pvc: &PersistentVolumeClaim,
    class: Option<&StorageClass>,
    config: &Config,
    existing: Option<&PersistentVolume>,
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
    let namespace = meta.namespace.as_deref().unwrap_or("default");
    let name = meta.name.as_deref().unwrap_or_default();
    let dir = match &params.path_pattern {
        Some(pattern) => expand_path_pattern(
            pattern,
            PatternVars {
                namespace,
                name,
                labels: meta.labels.as_ref(),
                annotations: meta.annotations.as_ref(),
            },
        ),
        None => RelDir::parse(&format!("{namespace}-{name}-{pv_name}")),
    };
    let dir = match dir {
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
    }))
}

/// Mode and owner of the directory: class parameter, else the claim annotation the Go
/// provisioner honoured, else 0777 and the process's own user.
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
    let mode = match (params.mode, annotation(meta, ANN_CREATE_MODE)) {
        (Some(m), _) => m,
        (None, Some(v)) => parse_mode(v)
            .ok_or_else(|| ann_err(ANN_CREATE_MODE, v, "an octal mode such as `0770`"))?,
        (None, None) => DEFAULT_MODE,
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
    /// `spec.nfs.server` is not our `NFS_SERVER`: its directory is not on our mount.
    #[error(
        "volume {pv} is on NFS server {server}, not {ours} (NFS_SERVER): its directory is not on this mount, delete it by hand"
    )]
    OtherServer {
        pv: String,
        server: String,
        /// Our `NFS_SERVER`.
        ours: String,
    },
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
    /// Another live PV points at the same directory (a `pathPattern` shared by claims).
    Shared(String),
    /// The class's parameters no longer parse: keeping data is the safe choice.
    InvalidParameter(ParamError),
}

impl fmt::Display for RetainReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetainReason::Requested => f.write_str("onDelete: retain"),
            RetainReason::Shared(pv) => write!(f, "volume {pv} uses the same directory"),
            RetainReason::InvalidParameter(e) => write!(f, "{e}; kept the directory"),
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
}

/// Decides the cleanup of a volume.
///
/// `class` is the volume's StorageClass if it still exists (without it the defaults apply:
/// archive, which keeps the data); `others` are the other PVs known, to notice a directory
/// shared through `pathPattern`; `stamp` is the suffix for a second archive of the same name
/// (e.g. `20250102T030405Z`, from the caller's clock).
pub fn plan_delete(
    pv: &PersistentVolume,
    class: Option<&StorageClass>,
    config: &Config,
    others: &[&PersistentVolume],
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
    if nfs.server != config.nfs_server {
        return Fail {
            reason: DeleteFail::OtherServer {
                pv: name,
                server: nfs.server.clone(),
                ours: config.nfs_server.clone(),
            },
        };
    }
    let Some(dir) = dir_from_nfs_path(&config.nfs_path, &nfs.path) else {
        return Fail {
            reason: DeleteFail::OutsideExport {
                pv: name,
                path: nfs.path.clone(),
                ours: config.nfs_path.clone(),
            },
        };
    };
    let action = match sharing_volume(pv, nfs, others) {
        Some(other) => DirAction::Retain {
            reason: RetainReason::Shared(other),
        },
        None => match parse_class_params(class.and_then(|c| c.parameters.as_ref())) {
            Err(e) => DirAction::Retain {
                reason: RetainReason::InvalidParameter(e),
            },
            Ok(params) => match (params.on_delete, params.archive_on_delete) {
                (OnDelete::Delete, _) | (OnDelete::Unset, false) => DirAction::Remove,
                (OnDelete::Retain, _) => DirAction::Retain {
                    reason: RetainReason::Requested,
                },
                (OnDelete::Unset, true) => DirAction::Archive {
                    names: archive_names(dir.leaf(), stamp),
                },
            },
        },
    };
    DeleteDecision::Delete(DeletePlan {
        pv_name: name,
        pv_uid: pv.metadata.uid.clone(),
        dir,
        action,
    })
}

/// Another PV, not being deleted and not released, whose NFS source is the same directory.
fn sharing_volume(
    pv: &PersistentVolume,
    nfs: &NFSVolumeSource,
    others: &[&PersistentVolume],
) -> Option<String> {
    let path = clean_path(&nfs.path);
    others
        .iter()
        .filter(|o| o.metadata.name != pv.metadata.name)
        .filter(|o| o.metadata.deletion_timestamp.is_none())
        .filter(|o| o.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Released"))
        .find(|o| {
            o.spec
                .as_ref()
                .and_then(|s| s.nfs.as_ref())
                .is_some_and(|n| n.server == nfs.server && clean_path(&n.path) == path)
        })
        .and_then(|o| o.metadata.name.clone())
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
    if nfs.server != config.nfs_server {
        return None;
    }
    dir_from_nfs_path(&config.nfs_path, &nfs.path)
}

#[cfg(test)]
mod tests;
