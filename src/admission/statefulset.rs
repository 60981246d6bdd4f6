//! `apps/v1` StatefulSets: on CREATE, every disk-backed `emptyDir` volume a container
//! keeps data in becomes a `volumeClaimTemplate` of the same name, so the existing `volumeMounts`
//! now point at a per-pod claim; `kube-persist.io/mount-path` asks for a new claim `data` where
//! there is no such emptyDir. Decides from the borrowed views alone; the operations add typed
//! values (the claim templates and mounts below).
//!
//! Touches nothing but the converted entries of `spec.template.spec.volumes` (removed),
//! `spec.volumeClaimTemplates` (added, only when there are none) and, for `mount-path`, the chosen
//! containers' `volumeMounts` (one mount appended). Never mutates an UPDATE (claim templates are
//! immutable) nor a StatefulSet that a controller owns. Does not add
//! `persistentVolumeClaimRetentionPolicy`: for StatefulSets its default already is
//! `{whenDeleted: Retain, whenScaled: Retain}` (the API server fills it in before admission where
//! the field exists, and drops it where it does not).

use std::borrow::Cow;

use json_patch::jsonptr::{Pointer, PointerBuf};
use serde::{Deserialize, Serialize};

use super::{
    Decision, Ident, Patch, Request, added_line, gate,
    patch::{self, ClaimSpec},
    propose,
    view::{Annotations, MetaView, ObjectView, Operation, OwnerRefView},
};
use crate::{
    policy::{ANNOTATION_PREFIX, AnnotationError, Policy, StatefulSetPolicy, StorageSpec},
    quantity::Quantity,
};

/// Annotation on every claim template kube-persist adds, saying who added it (the claims need
/// none of the pods' selector labels).
pub const ADDED_BY: &str = "kube-persist.io/added-by";

pub const ADDED_BY_VALUE: &str = "kube-persist";

/// Name of the claim that `kube-persist.io/mount-path` adds.
pub const MOUNT_PATH_CLAIM: &str = "data";

/// `spec.template`.
#[derive(Debug, Default, Deserialize)]
pub struct PodTemplateView<'a> {
    #[serde(borrow, default, deserialize_with = "super::view::object")]
    pub spec: Option<PodSpecView<'a>>,
}

/// `spec.template.spec`: volumes and who mounts them.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpecView<'a> {
    #[serde(borrow, default, deserialize_with = "super::view::objects")]
    pub volumes: Option<Vec<VolumeView<'a>>>,
    #[serde(borrow, default, deserialize_with = "super::view::objects")]
    pub containers: Option<Vec<ContainerView<'a>>>,
    #[serde(borrow, default, deserialize_with = "super::view::objects")]
    pub init_containers: Option<Vec<ContainerView<'a>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeView<'a> {
    #[serde(borrow, default)]
    pub name: Cow<'a, str>,
    /// Set when the volume is an emptyDir.
    #[serde(borrow, default, deserialize_with = "super::view::object")]
    pub empty_dir: Option<EmptyDirView<'a>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EmptyDirView<'a> {
    /// `Memory` for tmpfs.
    #[serde(borrow, default, deserialize_with = "super::view::borrow_opt")]
    pub medium: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "super::view::borrow_opt")]
    pub size_limit: Option<Cow<'a, str>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerView<'a> {
    #[serde(borrow, default)]
    pub name: Cow<'a, str>,
    #[serde(borrow, default, deserialize_with = "super::view::objects")]
    pub volume_mounts: Option<Vec<MountView<'a>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MountView<'a> {
    #[serde(borrow, default)]
    pub name: Cow<'a, str>,
    #[serde(borrow, default)]
    pub mount_path: Cow<'a, str>,
}

/// Which list of the pod spec a container is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum List {
    Containers,
    InitContainers,
}

impl List {
    fn field(self) -> &'static str {
        match self {
            List::Containers => "containers",
            List::InitContainers => "initContainers",
        }
    }
}

/// A pod template without volumes or containers.
static NO_POD: PodSpecView<'static> = PodSpecView {
    volumes: None,
    containers: None,
    init_containers: None,
};

impl<'a> PodSpecView<'a> {
    fn volume_list(&self) -> &[VolumeView<'a>] {
        self.volumes.as_deref().unwrap_or_default()
    }

    /// Containers, then init containers (native sidecars included), with their list and index.
    fn every_container(&self) -> impl Iterator<Item = (List, usize, &ContainerView<'a>)> {
        let containers = self.containers.iter().flatten().enumerate();
        let inits = self.init_containers.iter().flatten().enumerate();
        containers
            .map(|(i, c)| (List::Containers, i, c))
            .chain(inits.map(|(i, c)| (List::InitContainers, i, c)))
    }

    /// Whether any container or init container mounts the volume `name`.
    ///
    /// Init containers count: native sidecars (init containers with `restartPolicy: Always`,
    /// e.g. a log shipper's buffer) run for the pod's whole life, and an init container that
    /// prepares a data directory (`volume-permissions`, a restore step) writes the data the
    /// main container then keeps. Either way the mount resolves to the claim after the change.
    fn mounts(&self, name: &str) -> bool {
        self.every_container()
            .any(|(_, _, c)| c.mounts().iter().any(|m| m.name == name))
    }

    /// The first volume name used twice (the API server rejects such an object).
    fn duplicate_volume(&self) -> Option<&str> {
        let volumes = self.volume_list();
        volumes.iter().enumerate().find_map(|(i, v)| {
            volumes[..i]
                .iter()
                .any(|w| w.name == v.name)
                .then_some(v.name.as_ref())
        })
    }
}

impl ContainerView<'_> {
    fn mounts(&self) -> &[MountView<'_>] {
        self.volume_mounts.as_deref().unwrap_or_default()
    }
}

impl EmptyDirView<'_> {
    /// `medium` unset or `""`: backed by the node's disk. `Memory` (tmpfs) and the `HugePages`
    /// media are not data directories.
    fn disk_backed(&self) -> bool {
        self.medium.as_deref().is_none_or(str::is_empty)
    }
}

/// An emptyDir to turn into a claim template.
#[derive(Debug)]
struct Convert<'p> {
    /// Index in `spec.template.spec.volumes`.
    index: usize,
    name: &'p str,
    size_limit: Option<&'p str>,
}

/// A container that gets the new mount.
#[derive(Debug)]
struct MountTarget<'p> {
    list: List,
    index: usize,
    container: &'p ContainerView<'p>,
}

/// The new claim `data` that `kube-persist.io/mount-path` asks for.
#[derive(Debug)]
struct NewMount<'p> {
    path: &'p str,
    targets: Vec<MountTarget<'p>>,
}

/// What the StatefulSet annotations and volumes ask for.
#[derive(Debug, Default)]
struct Plan<'p> {
    /// In `volumes` order.
    convert: Vec<Convert<'p>>,
    mount: Option<NewMount<'p>>,
    /// emptyDir volumes left as they are, and why.
    left: Vec<(&'p str, Cow<'p, str>)>,
    errors: Vec<AnnotationError>,
}

fn annotation_error(name: &str, value: &str, problem: impl Into<String>) -> AnnotationError {
    AnnotationError {
        key: format!("{ANNOTATION_PREFIX}{name}"),
        value: value.to_string(),
        problem: problem.into(),
    }
}

/// A comma-separated list of names, trimmed, without empties or repeats.
fn name_list(value: &str) -> Vec<&str> {
    let mut names: Vec<&str> = Vec::new();
    for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// Why `kube-persist.io/mount-path` cannot be used, if it cannot.
fn mount_path_problem(path: &str) -> Option<&'static str> {
    if !path.starts_with('/') {
        Some("not an absolute path")
    } else if path.split('/').any(|s| s == "..") {
        Some("must not contain \"..\"")
    } else if path_segments(path).next().is_none() {
        Some("must not be the root directory")
    } else if path.chars().any(char::is_control) {
        Some("must not contain control characters")
    } else {
        None
    }
}

fn path_segments(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|s| !s.is_empty() && *s != ".")
}

/// Whether two mount paths name the same directory (`/data` and `/data/`).
fn same_path(a: &str, b: &str) -> bool {
    path_segments(a).eq(path_segments(b))
}

impl<'p> Plan<'p> {
    fn new(
        pod: Option<&'p PodSpecView<'p>>,
        annotations: Option<&'p Annotations<'p>>,
        policy: &StatefulSetPolicy,
    ) -> Plan<'p> {
        let get = |name: &str| annotations.and_then(|a| a.get(name));
        let mut plan = Plan::default();
        match get("volumes") {
            Some(value) => plan.pick(pod, value),
            None => plan.select(pod.unwrap_or(&NO_POD), policy),
        }
        match (get("mount-path"), get("containers")) {
            (Some(path), containers) => plan.mount_path(pod, path, containers),
            (None, Some(containers)) => plan.errors.push(annotation_error(
                "containers",
                containers,
                format!("only used together with {ANNOTATION_PREFIX}mount-path"),
            )),
            (None, None) => {}
        }
        plan
    }

    /// The default rule: every disk-backed emptyDir that a container mounts, unless its name is
    /// excluded by policy.
    fn select(&mut self, pod: &'p PodSpecView<'p>, policy: &StatefulSetPolicy) {
        for (index, volume) in pod.volume_list().iter().enumerate() {
            let Some(empty_dir) = &volume.empty_dir else {
                continue;
            };
            let name = volume.name.as_ref();
            let why = if !empty_dir.disk_backed() {
                Cow::Owned(format!(
                    "medium: {}",
                    empty_dir.medium.as_deref().unwrap_or_default()
                ))
            } else if policy.is_excluded_volume(name) {
                Cow::Borrowed("name excluded by policy")
            } else if !pod.mounts(name) {
                Cow::Borrowed("mounted by no container")
            } else {
                self.convert.push(Convert {
                    index,
                    name,
                    size_limit: empty_dir.size_limit.as_deref(),
                });
                continue;
            };
            self.left.push((name, why));
        }
    }

    /// `kube-persist.io/volumes`: exactly these (the policy's name exclusions do not apply).
    fn pick(&mut self, pod: Option<&'p PodSpecView<'p>>, value: &str) {
        let names = name_list(value);
        if names.is_empty() {
            self.errors
                .push(annotation_error("volumes", value, "names no volume"));
            return;
        }
        let volumes = pod.map(PodSpecView::volume_list).unwrap_or_default();
        for name in names {
            let Some((index, volume)) = volumes.iter().enumerate().find(|(_, v)| v.name == name)
            else {
                self.errors.push(annotation_error(
                    "volumes",
                    value,
                    format!("no volume named {name}"),
                ));
                continue;
            };
            let problem = match &volume.empty_dir {
                None => format!("{name} is not an emptyDir"),
                Some(e) if !e.disk_backed() => format!(
                    "{name} is a medium: {} emptyDir",
                    e.medium.as_deref().unwrap_or_default()
                ),
                Some(_) if !pod.is_some_and(|p| p.mounts(name)) => {
                    format!("no container mounts {name}")
                }
                Some(e) => {
                    self.convert.push(Convert {
                        index,
                        name: volume.name.as_ref(),
                        size_limit: e.size_limit.as_deref(),
                    });
                    continue;
                }
            };
            self.errors
                .push(annotation_error("volumes", value, problem));
        }
        self.convert.sort_by_key(|c| c.index);
        for volume in volumes {
            if volume.empty_dir.is_some() && !self.convert.iter().any(|c| c.name == volume.name) {
                self.left.push((
                    volume.name.as_ref(),
                    Cow::Borrowed("not in kube-persist.io/volumes"),
                ));
            }
        }
    }

    /// `kube-persist.io/mount-path` (and `kube-persist.io/containers`): a new claim `data`
    /// mounted at that path in every container, or in the ones listed.
    fn mount_path(
        &mut self,
        pod: Option<&'p PodSpecView<'p>>,
        path: &'p str,
        containers: Option<&'p str>,
    ) {
        let errors_before = self.errors.len();
        let fail = |problem: String| annotation_error("mount-path", path, problem);
        if let Some(problem) = mount_path_problem(path) {
            self.errors.push(fail(problem.to_string()));
        }
        let pod = pod.unwrap_or(&NO_POD);
        if pod.volume_list().iter().any(|v| v.name == MOUNT_PATH_CLAIM) {
            self.errors.push(fail(format!(
                "the pod template already has a volume named {MOUNT_PATH_CLAIM}"
            )));
        }
        let mut targets = Vec::new();
        let chosen = |list, index, container| MountTarget {
            list,
            index,
            container,
        };
        match containers {
            None => targets.extend(
                pod.every_container()
                    .filter(|(list, _, _)| *list == List::Containers)
                    .map(|(list, i, c)| chosen(list, i, c)),
            ),
            Some(value) => {
                let names = name_list(value);
                if names.is_empty() {
                    self.errors
                        .push(annotation_error("containers", value, "names no container"));
                }
                for name in names {
                    match pod.every_container().find(|(_, _, c)| c.name == name) {
                        Some((list, i, c)) => targets.push(chosen(list, i, c)),
                        None => self.errors.push(annotation_error(
                            "containers",
                            value,
                            format!("no container or initContainer named {name}"),
                        )),
                    }
                }
            }
        }
        if targets.is_empty() && containers.is_none() {
            self.errors
                .push(fail("the pod template has no containers".to_string()));
        }
        for target in &targets {
            let c = target.container;
            if let Some(m) = c.mounts().iter().find(|m| same_path(&m.mount_path, path)) {
                self.errors.push(fail(format!(
                    "container {} already mounts volume {} there",
                    c.name, m.name
                )));
            }
        }
        if self.errors.len() == errors_before {
            self.mount = Some(NewMount { path, targets });
        }
    }

    fn is_empty(&self) -> bool {
        self.convert.is_empty() && self.mount.is_none()
    }

    /// `a (why), b (why)`.
    fn left(&self) -> String {
        self.left
            .iter()
            .map(|(name, why)| format!("{name} ({why})"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The decision when there is nothing to add.
    fn nothing(&self) -> Decision {
        if self.left.is_empty() {
            Decision::unchanged(format!(
                "no emptyDir volume and no {ANNOTATION_PREFIX}mount-path annotation"
            ))
        } else {
            Decision::skipped(format!("no emptyDir volume to convert: {}", self.left()))
        }
    }
}

/// One claim template to add.
#[derive(Debug)]
struct Claim<'p, 's> {
    name: &'p str,
    size: Cow<'s, Quantity>,
    /// Raised to the emptyDir's `sizeLimit`.
    raised: bool,
}

/// The claims for `plan` with `storage`: an emptyDir `sizeLimit` above the size raises its claim
/// (never shrink what the user asked for); one that is not a quantity leaves the claim at the
/// size and adds a warning.
fn claims<'p, 's>(
    plan: &Plan<'p>,
    storage: &'s StorageSpec<'_>,
    ident: &Ident<'_>,
    warnings: &mut Vec<String>,
) -> Vec<Claim<'p, 's>> {
    let size: &'s Quantity = &storage.size;
    let mut claims: Vec<Claim<'p, 's>> = plan
        .convert
        .iter()
        .map(|c| {
            let limit = c.size_limit.map(|text| (text, Quantity::parse(text)));
            match limit {
                Some((_, Ok(limit))) if limit.bytes() > size.bytes() => Claim {
                    name: c.name,
                    size: Cow::Owned(limit),
                    raised: true,
                },
                Some((text, Err(_))) => {
                    warnings.push(super::shorten(format!(
                        "kube-persist: emptyDir {} sizeLimit {text:?} is not a quantity; its claim gets {} ({ident})",
                        c.name,
                        size.as_str()
                    )));
                    Claim {
                        name: c.name,
                        size: Cow::Borrowed(size),
                        raised: false,
                    }
                }
                _ => Claim {
                    name: c.name,
                    size: Cow::Borrowed(size),
                    raised: false,
                },
            }
        })
        .collect();
    if plan.mount.is_some() {
        claims.push(Claim {
            name: MOUNT_PATH_CLAIM,
            size: Cow::Borrowed(size),
            raised: false,
        });
    }
    claims
}

/// `100Gi volume data`, `100Gi volumes data, wal`, or `volumes data (100Gi), wal (200Gi)`.
fn describe(claims: &[Claim<'_, '_>]) -> String {
    let names = || claims.iter().map(|c| c.name).collect::<Vec<_>>().join(", ");
    let plural = if claims.len() == 1 { "" } else { "s" };
    match claims.first() {
        Some(first) if claims.iter().all(|c| c.size.bytes() == first.size.bytes()) => {
            format!("{} volume{plural} {}", first.size.as_str(), names())
        }
        _ => format!(
            "volumes {}",
            claims
                .iter()
                .map(|c| format!("{} ({})", c.name, c.size.as_str()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Shorter forms of [`describe`], for warnings: `volumes data, wal`, then `2 volumes of 100Gi`
/// or `3 volumes up to 500Gi`.
fn shorter_descriptions(claims: &[Claim<'_, '_>]) -> Vec<String> {
    let Some(largest) = claims.iter().map(|c| &c.size).max_by_key(|s| s.bytes()) else {
        return Vec::new();
    };
    let uniform = claims.iter().all(|c| c.size.bytes() == largest.bytes());
    let names: Vec<&str> = claims.iter().map(|c| c.name).collect();
    let count = if uniform {
        format!("{} volumes of {}", claims.len(), largest.as_str())
    } else {
        format!("{} volumes up to {}", claims.len(), largest.as_str())
    };
    if claims.len() > 1 {
        vec![format!("volumes {}", names.join(", ")), count]
    } else {
        Vec::new()
    }
}

/// A claim template: name, provenance annotation, and the claim spec.
#[derive(Serialize)]
struct ClaimTemplate<'a> {
    metadata: ClaimMeta<'a>,
    spec: ClaimSpec<'a>,
}

#[derive(Serialize)]
struct ClaimMeta<'a> {
    name: &'a str,
    annotations: AddedBy,
}

/// The annotations of a claim template: [`ADDED_BY`] only.
#[derive(Serialize)]
struct AddedBy {
    #[serde(rename = "kube-persist.io/added-by")]
    added_by: &'static str,
}

/// The mount of the claim `data` at `path`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DataMount<'a> {
    name: &'static str,
    mount_path: &'a str,
}

/// `spec.template.spec.` followed by `tokens`.
fn pod_path<'t>(tokens: impl IntoIterator<Item = json_patch::jsonptr::Token<'t>>) -> PointerBuf {
    let mut path = Pointer::from_static("/spec/template/spec").to_buf();
    for token in tokens {
        path.push_back(token);
    }
    path
}

/// A value the patch adds.
#[derive(Serialize)]
#[serde(untagged)]
enum Added<'a> {
    Templates(&'a [ClaimTemplate<'a>]),
    Mount(&'a DataMount<'a>),
    Mounts([&'a DataMount<'a>; 1]),
}

/// The operations: `remove` the converted volumes from the highest index down (so the indices
/// stay valid), `add` the claim templates, then `add` the new mounts.
fn operations(
    plan: &Plan<'_>,
    claims: &[Claim<'_, '_>],
    storage: &StorageSpec<'_>,
) -> Result<Patch, serde_json::Error> {
    let mut ops: Vec<patch::Operation<Added<'_>>> = plan
        .convert
        .iter()
        .rev()
        .map(|c| patch::remove(pod_path(["volumes".into(), c.index.into()])))
        .collect();
    let templates: Vec<ClaimTemplate<'_>> = claims
        .iter()
        .map(|c| ClaimTemplate {
            metadata: ClaimMeta {
                name: c.name,
                annotations: AddedBy {
                    added_by: ADDED_BY_VALUE,
                },
            },
            spec: ClaimSpec::new(storage, &c.size),
        })
        .collect();
    let data = plan.mount.as_ref().map(|mount| DataMount {
        name: MOUNT_PATH_CLAIM,
        mount_path: mount.path,
    });
    ops.push(patch::add(
        Pointer::from_static("/spec/volumeClaimTemplates").to_buf(),
        Added::Templates(&templates),
    ));
    if let (Some(mount), Some(data)) = (&plan.mount, &data) {
        for t in &mount.targets {
            let mounts = pod_path([t.list.field().into(), t.index.into(), "volumeMounts".into()]);
            ops.push(if t.container.volume_mounts.is_some() {
                let mut end = mounts;
                end.push_back("-");
                patch::add(end, Added::Mount(data))
            } else {
                patch::add(mounts, Added::Mounts([data]))
            });
        }
    }
    Patch::new(&ops)
}

fn controller_owner<'m>(meta: &'m MetaView<'_>) -> Option<&'m OwnerRefView<'m>> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
}

pub fn decide(req: &Request<'_>, object: &ObjectView<'_>, policy: &Policy) -> Decision {
    if !policy.targets.stateful_sets {
        return Decision::skipped("policy targets.statefulSets is false");
    }
    let ident = Ident::of(req);
    let meta = object.metadata.as_ref();
    // Checked before any annotation is read: operators copy their resource's annotations onto
    // the StatefulSets they create, and a strict policy must never block an operator.
    if let Some(owner) = meta.and_then(controller_owner) {
        return Decision::skipped(format!(
            "owned by controller {} {}: its owner decides its storage",
            owner.kind, owner.name
        ));
    }
    let spec = object.spec.as_ref();
    // `volumeClaimTemplates: []` has no claims: adding replaces the empty list.
    let existing = spec
        .and_then(|s| s.volume_claim_templates)
        .map_or(0, |n| n.0);
    let pod = spec
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.spec.as_ref());
    let annotations = meta.and_then(|m| m.annotations.as_ref());
    // The StatefulSet annotations are only read while there are no claims: once ours are
    // added, `volumes` names volumes that are gone and `mount-path` a path now mounted, and a
    // reinvocation must not call them invalid.
    let mut plan = if existing == 0 {
        Plan::new(pod, annotations, &policy.stateful_sets)
    } else {
        Plan::default()
    };
    let gate = match gate(&ident, meta, policy, std::mem::take(&mut plan.errors)) {
        Ok(gate) => gate,
        Err(decision) => return decision,
    };
    if existing > 0 {
        return Decision::unchanged(format!(
            "spec.volumeClaimTemplates is set ({existing}): storage already chosen"
        ));
    }
    if let Some(name) = pod.and_then(PodSpecView::duplicate_volume) {
        return Decision::unchanged(format!(
            "volume name {name} is used twice: the API server rejects the object"
        ));
    }
    if plan.is_empty() {
        return plan.nothing();
    }
    let mut warnings = gate.warnings;
    let claims = claims(&plan, &gate.storage, &ident, &mut warnings);
    let what = describe(&claims);
    if req.operation == Operation::Update {
        return on_update(&ident, &plan, &what);
    }
    let patch = match operations(&plan, &claims, &gate.storage) {
        Ok(patch) => patch,
        Err(e) => return Decision::error(format!("cannot build the patch: {e}")),
    };
    // The audit record's size: the largest claim.
    let largest = claims
        .iter()
        .max_by_key(|c| c.size.bytes())
        .map(|c| c.size.clone().into_owned());
    let storage = match largest {
        Some(size) if size.bytes() != gate.storage.size.bytes() => StorageSpec {
            size: Cow::Owned(size),
            ..gate.storage.clone()
        },
        _ => gate.storage.clone(),
    };
    let mut details = String::new();
    for c in claims.iter().filter(|c| c.raised) {
        details += &format!("; {} raised to its emptyDir sizeLimit", c.name);
    }
    if let Some(mount) = &plan.mount {
        let containers: Vec<&str> = mount.targets.iter().map(|t| &*t.container.name).collect();
        details += &format!(
            "; {MOUNT_PATH_CLAIM} mounted at {} in {}",
            mount.path,
            containers.join(", ")
        );
    }
    if !plan.left.is_empty() {
        details += &format!("; left as emptyDir: {}", plan.left());
    }
    let mut d = propose(&ident, policy, &storage, patch, &what, &details, warnings);
    // A warning that lists many volumes is cut at the end, where the class and the object are
    // named: name fewer details on that line instead (the reason keeps the full list).
    let cut = |line: &str| line.ends_with("...");
    if let Some(first) = d.warnings.first_mut().filter(|w| cut(w)) {
        let mode = policy.mode_for(ident.namespace);
        for shorter in shorter_descriptions(&claims) {
            *first = super::shorten(added_line(
                &ident,
                mode,
                &shorter,
                &storage.storage_class_name,
            ));
            if !cut(first) {
                break;
            }
        }
    }
    d
}

/// UPDATE: claim templates are immutable, so the StatefulSet is allowed unchanged and the user
/// told how to recreate it.
fn on_update(ident: &Ident<'_>, plan: &Plan<'_>, what: &str) -> Decision {
    let first = match &plan.mount {
        Some(mount) if plan.convert.is_empty() => format!(
            "kube-persist: {ident} has no claim for {}; claims can't be added on UPDATE",
            mount.path
        ),
        _ => {
            format!("kube-persist: {ident} keeps data in emptyDir; claims can't be added on UPDATE")
        }
    };
    let namespace = if ident.namespace.is_empty() {
        String::new()
    } else {
        format!(" -n {}", ident.namespace)
    };
    Decision::skipped(format!(
        "UPDATE: volumeClaimTemplates are immutable, {what} not added; recreate the StatefulSet \
         (kubectl delete sts --cascade=orphan, then apply it again)"
    ))
    .warn(first)
    .warn(format!(
        "kube-persist: to add claims: kubectl delete sts {}{namespace} --cascade=orphan, then apply it again",
        ident.name
    ))
}

#[cfg(test)]
mod tests {
    use super::super::testing::{apply, paths};
    use serde_json::{Value, json};

    use super::*;
    use crate::{
        admission::{MAX_WARNING_LEN, Outcome, ReviewBody, review},
        policy::Source,
    };

    const UID: &str = "0b6f4a53-2f4e-4c8e-a1a7-9f3d2c1b0e7a";

    // ---- builders ----

    fn sts(pod: Value) -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": "redis", "namespace": "default", "labels": {"app": "redis"}},
            "spec": {
                "replicas": 1,
                "serviceName": "redis-headless",
                "selector": {"matchLabels": {"app": "redis"}},
                "template": {"metadata": {"labels": {"app": "redis"}}, "spec": pod},
            },
        })
    }

    fn container(name: &str, mounts: &[(&str, &str)]) -> Value {
        let mounts: Vec<Value> = mounts
            .iter()
            .map(|(v, p)| json!({"name": v, "mountPath": p}))
            .collect();
        json!({"name": name, "image": "redis:7", "volumeMounts": mounts})
    }

    fn empty_dir(name: &str) -> Value {
        json!({"name": name, "emptyDir": {}})
    }

    fn memory(name: &str) -> Value {
        json!({"name": name, "emptyDir": {"medium": "Memory"}})
    }

    fn config_map(name: &str) -> Value {
        json!({"name": name, "configMap": {"name": name, "defaultMode": 420}})
    }

    /// A Redis-like pod: `config` (configMap) and `data` (emptyDir) mounted by `redis`.
    fn redis() -> Value {
        sts(json!({
            "containers": [container("redis", &[("config", "/etc/redis"), ("data", "/data")])],
            "volumes": [config_map("config"), empty_dir("data")],
        }))
    }

    fn annotate(mut object: Value, annotations: Value) -> Value {
        object["metadata"]["annotations"] = annotations;
        object
    }

    fn review_of(op: &str, object: &Value) -> Vec<u8> {
        let body = ReviewBody::new(object).uid(UID).user("alice", &[]);
        match op {
            "UPDATE" => body
                .operation(Operation::Update)
                .old_object(object)
                .to_vec(),
            _ => body.to_vec(),
        }
    }

    fn run(op: &str, object: &Value, policy: &Policy) -> (Decision, Value) {
        let body = review_of(op, object);
        let reviewed = review(&body, policy).expect("a valid review");
        let response: Value = serde_json::from_slice(&reviewed.response).unwrap();
        assert_eq!(response["response"]["uid"], UID);
        for w in &reviewed.decision.warnings {
            assert!(w.chars().count() <= MAX_WARNING_LEN, "too long: {w}");
        }
        (reviewed.decision, response)
    }

    fn create(object: &Value) -> (Decision, Value) {
        run("CREATE", object, &Policy::default())
    }

    /// Applies, checks that a second pass changes nothing, and returns the result.
    fn mutated(object: &Value) -> Value {
        let (d, response) = create(object);
        assert_eq!(d.outcome(), Outcome::Mutated, "{}", d.reason());
        let result = apply(object, &response);
        let (again, response) = create(&result);
        assert_eq!(again.outcome(), Outcome::Unchanged, "{}", again.reason());
        assert!(again.warnings.is_empty(), "{:?}", again.warnings);
        assert!(response["response"].get("patch").is_none());
        result
    }

    fn claim_names(object: &Value) -> Vec<&str> {
        object["spec"]["volumeClaimTemplates"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| c["metadata"]["name"].as_str().unwrap())
            .collect()
    }

    fn volume_names(object: &Value) -> Vec<&str> {
        object["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| v["name"].as_str().unwrap())
            .collect()
    }

    // ---- conversion ----

    #[test]
    fn a_mounted_disk_emptydir_becomes_a_claim_template_of_the_same_name() {
        let object = redis();
        let (d, response) = create(&object);
        assert_eq!(d.outcome(), Outcome::Mutated);
        assert_eq!(
            paths(&d),
            [
                "remove /spec/template/spec/volumes/1",
                "add /spec/volumeClaimTemplates"
            ]
        );
        assert_eq!(
            d.warnings,
            [
                "kube-persist: added 100Gi volume data on StorageClass prometheus-data-db (StatefulSet default/redis)"
            ]
        );
        assert_eq!(d.reason(), "added 100Gi volume data");
        let r = &response["response"];
        assert_eq!(r["allowed"], true);
        assert_eq!(r["patchType"], "JSONPatch");
        assert_eq!(
            r["auditAnnotations"],
            json!({"decision": "mutated", "storage": "prometheus-data-db/100Gi"})
        );
        let result = mutated(&object);
        assert_eq!(
            result["spec"]["volumeClaimTemplates"],
            json!([{
                "metadata": {"name": "data", "annotations": {"kube-persist.io/added-by": "kube-persist"}},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": "prometheus-data-db",
                    "resources": {"requests": {"storage": "100Gi"}}
                }
            }])
        );
        assert_eq!(volume_names(&result), ["config"]);
        // The mounts are untouched: `data` now resolves to the claim.
        assert_eq!(
            result["spec"]["template"]["spec"]["containers"],
            object["spec"]["template"]["spec"]["containers"]
        );
        assert_eq!(result["metadata"], object["metadata"]);
    }

    #[test]
    fn several_emptydirs_are_removed_from_the_highest_index_down() {
        let object = sts(json!({
            "containers": [
                container("db", &[("data", "/data"), ("wal", "/wal"), ("tmp", "/tmp"), ("dshm", "/dev/shm")]),
                container("exporter", &[("config", "/etc/exporter")]),
            ],
            "volumes": [empty_dir("data"), config_map("config"), empty_dir("wal"), empty_dir("tmp"), memory("dshm")],
        }));
        let (d, _) = create(&object);
        assert_eq!(
            paths(&d),
            [
                "remove /spec/template/spec/volumes/2",
                "remove /spec/template/spec/volumes/0",
                "add /spec/volumeClaimTemplates"
            ]
        );
        assert!(
            d.warnings[0].contains("added 100Gi volumes data, wal on"),
            "{:?}",
            d.warnings
        );
        assert_eq!(
            d.reason(),
            "added 100Gi volumes data, wal; left as emptyDir: tmp (name excluded by policy), dshm (medium: Memory)"
        );
        let result = mutated(&object);
        assert_eq!(claim_names(&result), ["data", "wal"]);
        assert_eq!(volume_names(&result), ["config", "tmp", "dshm"]);
    }

    #[test]
    fn removing_every_volume_leaves_an_empty_list() {
        let object = sts(json!({
            "containers": [container("app", &[("data", "/data")])],
            "volumes": [empty_dir("data")],
        }));
        let result = mutated(&object);
        assert_eq!(result["spec"]["template"]["spec"]["volumes"], json!([]));
    }

    #[test]
    fn emptydirs_that_hold_no_data_are_left_with_the_reason() {
        let cases = [
            (memory("data"), "data (medium: Memory)"),
            (
                json!({"name": "data", "emptyDir": {"medium": "HugePages-2Mi"}}),
                "data (medium: HugePages-2Mi)",
            ),
            (empty_dir("tmp"), "tmp (name excluded by policy)"),
            (empty_dir("gocache"), "gocache (name excluded by policy)"),
            (
                empty_dir("docker-sock"),
                "docker-sock (name excluded by policy)",
            ),
            (empty_dir("unused"), "unused (mounted by no container)"),
        ];
        for (volume, why) in cases {
            let name = volume["name"].as_str().unwrap();
            let mounts = if name == "unused" {
                vec![]
            } else {
                vec![(name, "/x")]
            };
            let object = sts(json!({
                "containers": [container("app", &mounts)],
                "volumes": [volume],
            }));
            let (d, response) = create(&object);
            assert_eq!(d.outcome(), Outcome::Skipped, "{why}");
            assert_eq!(d.reason(), format!("no emptyDir volume to convert: {why}"));
            assert!(d.patch().is_none() && d.warnings.is_empty());
            assert!(response["response"].get("patch").is_none());
        }
    }

    #[test]
    fn a_statefulset_without_emptydir_is_unchanged() {
        for pod in [
            json!({"containers": [container("app", &[("config", "/etc")])], "volumes": [config_map("config")]}),
            json!({"containers": [container("app", &[])]}),
            json!({}),
        ] {
            let (d, _) = create(&sts(pod));
            assert_eq!(d.outcome(), Outcome::Unchanged);
            assert_eq!(
                d.reason(),
                "no emptyDir volume and no kube-persist.io/mount-path annotation"
            );
        }
        let mut no_spec = redis();
        no_spec.as_object_mut().unwrap().remove("spec");
        assert_eq!(create(&no_spec).0.outcome(), Outcome::Unchanged);
    }

    #[test]
    fn init_containers_and_native_sidecars_count_as_mounting() {
        // `data` is mounted only by an init container (a restore step), `buffer` only by a
        // native sidecar (an init container with restartPolicy: Always).
        let mut sidecar = container("shipper", &[("buffer", "/buffer")]);
        sidecar["restartPolicy"] = json!("Always");
        let object = sts(json!({
            "initContainers": [container("restore", &[("data", "/restore")]), sidecar],
            "containers": [container("app", &[])],
            "volumes": [empty_dir("data"), empty_dir("buffer")],
        }));
        let result = mutated(&object);
        assert_eq!(claim_names(&result), ["data", "buffer"]);
    }

    // ---- what is left alone ----

    #[test]
    fn existing_claims_are_respected_without_reading_our_annotations() {
        let mut object = annotate(
            redis(),
            json!({"kube-persist.io/volumes": "gone", "kube-persist.io/mount-path": "/data"}),
        );
        object["spec"]["volumeClaimTemplates"] = json!([{"metadata": {"name": "other"}}]);
        let (d, _) = run(
            "CREATE",
            &object,
            &Policy::from_yaml("strict: true", "p").unwrap(),
        );
        assert_eq!(d.outcome(), Outcome::Unchanged);
        assert_eq!(
            d.reason(),
            "spec.volumeClaimTemplates is set (1): storage already chosen"
        );
        assert!(d.warnings.is_empty() && d.denied().is_none());

        // An empty list is no claim: the add replaces it.
        let mut empty = redis();
        empty["spec"]["volumeClaimTemplates"] = json!([]);
        assert_eq!(claim_names(&mutated(&empty)), ["data"]);
        empty["spec"]["volumeClaimTemplates"] = Value::Null;
        assert_eq!(claim_names(&mutated(&empty)), ["data"]);
    }

    #[test]
    fn controller_owned_statefulsets_are_skipped_before_annotations_are_read() {
        let mut object = annotate(redis(), json!({"kube-persist.io/size": "lots"}));
        object["metadata"]["ownerReferences"] = json!([
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "1"},
            {"apiVersion": "monitoring.coreos.com/v1", "kind": "Prometheus", "name": "k8s", "uid": "2",
             "controller": true, "blockOwnerDeletion": true}
        ]);
        let strict = Policy::from_yaml("strict: true", "p").unwrap();
        let (d, response) = run("CREATE", &object, &strict);
        assert_eq!(d.outcome(), Outcome::Skipped);
        assert_eq!(
            d.reason(),
            "owned by controller Prometheus k8s: its owner decides its storage"
        );
        assert_eq!(response["response"]["allowed"], true);

        // An owner that is not the controller does not decide.
        object["metadata"]["ownerReferences"][1]["controller"] = json!(false);
        object["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("annotations");
        assert_eq!(create(&object).0.outcome(), Outcome::Mutated);
    }

    #[test]
    fn opt_outs_are_skipped_with_the_reason() {
        let (d, _) = create(&annotate(redis(), json!({"kube-persist.io/skip": "true"})));
        assert_eq!(
            (d.outcome(), d.reason()),
            (
                Outcome::Skipped,
                "annotation kube-persist.io/skip is \"true\""
            )
        );

        let mut system = redis();
        system["metadata"]["namespace"] = json!("kube-system");
        let (d, _) = create(&system);
        assert_eq!(
            (d.outcome(), d.reason()),
            (
                Outcome::Skipped,
                "namespace kube-system is excluded by policy"
            )
        );

        let off = Policy::from_yaml("targets: { statefulSets: false }", "p").unwrap();
        let (d, _) = run("CREATE", &redis(), &off);
        assert_eq!(
            (d.outcome(), d.reason()),
            (Outcome::Skipped, "policy targets.statefulSets is false")
        );
    }

    #[test]
    fn duplicate_volume_names_are_left_to_the_api_server() {
        let object = sts(json!({
            "containers": [container("app", &[("data", "/data")])],
            "volumes": [empty_dir("data"), config_map("data")],
        }));
        let (d, _) = create(&object);
        assert_eq!(d.outcome(), Outcome::Unchanged);
        assert!(d.reason().contains("data is used twice"), "{}", d.reason());
    }

    // ---- UPDATE ----

    #[test]
    fn update_is_never_mutated_and_says_how_to_recreate() {
        let (d, response) = run("UPDATE", &redis(), &Policy::default());
        assert_eq!(d.outcome(), Outcome::Skipped);
        assert!(d.patch().is_none() && d.storage().is_none());
        assert!(response["response"].get("patch").is_none());
        assert_eq!(
            d.warnings,
            [
                "kube-persist: StatefulSet default/redis keeps data in emptyDir; claims can't be added on UPDATE",
                "kube-persist: to add claims: kubectl delete sts redis -n default --cascade=orphan, then apply it again"
            ]
        );
        assert!(d.reason().contains("immutable"), "{}", d.reason());
        assert!(d.reason().contains("--cascade=orphan"), "{}", d.reason());
        assert_eq!(
            response["response"]["auditAnnotations"]["decision"],
            "skipped"
        );

        // In audit mode too.
        let audit = Policy::from_yaml("mode: audit", "p").unwrap();
        assert_eq!(
            run("UPDATE", &redis(), &audit).0.outcome(),
            Outcome::Skipped
        );

        // mount-path on UPDATE names the path.
        let object = annotate(
            sts(json!({"containers": [container("app", &[])]})),
            json!({"kube-persist.io/mount-path": "/var/lib/app"}),
        );
        let (d, _) = run("UPDATE", &object, &Policy::default());
        assert_eq!(d.outcome(), Outcome::Skipped);
        assert!(
            d.warnings[0].contains("has no claim for /var/lib/app"),
            "{:?}",
            d.warnings
        );
    }

    #[test]
    fn update_without_anything_to_convert_is_quiet() {
        let object = sts(json!({
            "containers": [container("app", &[("tmp", "/tmp")])],
            "volumes": [empty_dir("tmp")],
        }));
        let (d, _) = run("UPDATE", &object, &Policy::default());
        assert_eq!(d.outcome(), Outcome::Skipped);
        assert!(d.warnings.is_empty(), "{:?}", d.warnings);
        let (d, _) = run("UPDATE", &mutated(&redis()), &Policy::default());
        assert_eq!(d.outcome(), Outcome::Unchanged);
        assert!(d.warnings.is_empty());
    }

    // ---- kube-persist.io/volumes ----

    #[test]
    fn the_volumes_annotation_picks_exactly_those_even_excluded_names() {
        let object = annotate(
            sts(json!({
                "containers": [container("app", &[("data", "/data"), ("cache", "/cache"), ("tmp", "/tmp")])],
                "volumes": [empty_dir("data"), empty_dir("cache"), empty_dir("tmp")],
            })),
            json!({"kube-persist.io/volumes": " cache , cache,"}),
        );
        let (d, _) = create(&object);
        assert_eq!(
            paths(&d),
            [
                "remove /spec/template/spec/volumes/1",
                "add /spec/volumeClaimTemplates"
            ]
        );
        assert!(
            d.reason().ends_with(
                "left as emptyDir: data (not in kube-persist.io/volumes), tmp (not in kube-persist.io/volumes)"
            ),
            "{}",
            d.reason()
        );
        // Listed in another order than the volumes: removals still go highest index first.
        let object = annotate(object, json!({"kube-persist.io/volumes": "tmp,data"}));
        let (d, _) = create(&object);
        assert_eq!(
            paths(&d),
            [
                "remove /spec/template/spec/volumes/2",
                "remove /spec/template/spec/volumes/0",
                "add /spec/volumeClaimTemplates"
            ]
        );
        assert_eq!(claim_names(&mutated(&object)), ["data", "tmp"]);
    }

    #[test]
    fn a_bad_volumes_annotation_is_invalid_and_says_why() {
        let pod = json!({
            "containers": [container("app", &[("data", "/data"), ("config", "/etc"), ("shm", "/dev/shm")])],
            "volumes": [empty_dir("data"), config_map("config"), memory("shm"), empty_dir("spare")],
        });
        let cases = [
            ("missing", "no volume named missing"),
            ("config", "config is not an emptyDir"),
            ("shm", "shm is a medium: Memory emptyDir"),
            ("spare", "no container mounts spare"),
            (" , ", "names no volume"),
        ];
        for (value, problem) in cases {
            let object = annotate(sts(pod.clone()), json!({"kube-persist.io/volumes": value}));
            let (d, response) = create(&object);
            assert_eq!(d.outcome(), Outcome::Invalid, "{value}");
            assert_eq!(
                d.reason(),
                format!("invalid annotation: kube-persist.io/volumes {value:?}: {problem}")
            );
            assert_eq!(
                d.warnings,
                [crate::admission::shorten(format!(
                    "kube-persist: StatefulSet default/redis left unchanged: kube-persist.io/volumes {value:?}: {problem}"
                ))]
            );
            assert!(response["response"].get("patch").is_none());
            assert_eq!(response["response"]["allowed"], true);
        }
        // Every problem is reported, and strict policy denies.
        let object = annotate(
            sts(pod),
            json!({"kube-persist.io/volumes": "data,missing,config"}),
        );
        let strict = Policy::from_yaml("strict: true", "p").unwrap();
        let (d, response) = run("CREATE", &object, &strict);
        assert_eq!(d.warnings.len(), 2, "{:?}", d.warnings);
        assert_eq!(response["response"]["allowed"], false);
        assert_eq!(response["response"]["status"]["code"], 403);
    }

    // ---- kube-persist.io/mount-path ----

    #[test]
    fn mount_path_adds_a_data_claim_mounted_in_every_container() {
        let no_mounts = json!({"name": "exporter", "image": "exporter:1"});
        let object = annotate(
            sts(json!({
                "initContainers": [container("init", &[])],
                "containers": [container("es", &[("config", "/etc/es")]), no_mounts],
                "volumes": [config_map("config")],
            })),
            json!({"kube-persist.io/mount-path": "/usr/share/elasticsearch/data"}),
        );
        let (d, _) = create(&object);
        assert_eq!(
            paths(&d),
            [
                "add /spec/volumeClaimTemplates",
                "add /spec/template/spec/containers/0/volumeMounts/-",
                "add /spec/template/spec/containers/1/volumeMounts"
            ]
        );
        assert!(
            d.reason()
                .ends_with("data mounted at /usr/share/elasticsearch/data in es, exporter"),
            "{}",
            d.reason()
        );
        let result = mutated(&object);
        assert_eq!(claim_names(&result), ["data"]);
        let pod = &result["spec"]["template"]["spec"];
        let mount = json!({"name": "data", "mountPath": "/usr/share/elasticsearch/data"});
        assert_eq!(pod["containers"][0]["volumeMounts"][1], mount);
        assert_eq!(pod["containers"][1]["volumeMounts"], json!([mount]));
        // Init containers are not "every container".
        assert_eq!(
            pod["initContainers"],
            object["spec"]["template"]["spec"]["initContainers"]
        );
    }

    #[test]
    fn mount_path_with_listed_containers_includes_init_containers_by_name() {
        let object = annotate(
            sts(json!({
                "initContainers": [container("restore", &[])],
                "containers": [container("app", &[]), container("sidecar", &[])],
            })),
            json!({"kube-persist.io/mount-path": "/data", "kube-persist.io/containers": "app, restore"}),
        );
        let (d, _) = create(&object);
        assert_eq!(
            paths(&d),
            [
                "add /spec/volumeClaimTemplates",
                "add /spec/template/spec/containers/0/volumeMounts/-",
                "add /spec/template/spec/initContainers/0/volumeMounts/-"
            ]
        );
        mutated(&object);
    }

    #[test]
    fn mount_path_works_together_with_conversion() {
        let object = sts(json!({
            "containers": [container("redis", &[("config", "/etc/redis"), ("redis-data", "/data")])],
            "volumes": [config_map("config"), empty_dir("redis-data")],
        }));
        let object = annotate(
            object,
            json!({"kube-persist.io/mount-path": "/var/log/redis"}),
        );
        let (d, _) = create(&object);
        assert_eq!(
            paths(&d),
            [
                "remove /spec/template/spec/volumes/1",
                "add /spec/volumeClaimTemplates",
                "add /spec/template/spec/containers/0/volumeMounts/-"
            ]
        );
        assert!(
            d.warnings[0].contains("100Gi volumes redis-data, data on"),
            "{:?}",
            d.warnings
        );
        assert_eq!(claim_names(&mutated(&object)), ["redis-data", "data"]);
        // An emptyDir named `data` would clash with the new claim.
        let object = annotate(
            redis(),
            json!({"kube-persist.io/mount-path": "/var/log/redis"}),
        );
        let (d, _) = create(&object);
        assert_eq!(d.outcome(), Outcome::Invalid);
        assert!(
            d.reason()
                .ends_with("the pod template already has a volume named data"),
            "{}",
            d.reason()
        );
    }

    #[test]
    fn bad_mount_path_annotations_are_invalid_and_say_why() {
        let pod = json!({
            "initContainers": [container("init", &[])],
            "containers": [container("app", &[("config", "/etc/app/")])],
            "volumes": [config_map("config")],
        });
        let cases = [
            (
                json!({"kube-persist.io/mount-path": "data"}),
                "kube-persist.io/mount-path \"data\": not an absolute path",
            ),
            (
                json!({"kube-persist.io/mount-path": "/data/../etc"}),
                "kube-persist.io/mount-path \"/data/../etc\": must not contain \"..\"",
            ),
            (
                json!({"kube-persist.io/mount-path": "//"}),
                "kube-persist.io/mount-path \"//\": must not be the root directory",
            ),
            (
                json!({"kube-persist.io/mount-path": "/da\nta"}),
                "kube-persist.io/mount-path \"/da\\nta\": must not contain control characters",
            ),
            (
                json!({"kube-persist.io/mount-path": "/etc/app"}),
                "kube-persist.io/mount-path \"/etc/app\": container app already mounts volume config there",
            ),
            (
                json!({"kube-persist.io/mount-path": "/data", "kube-persist.io/containers": "app,nope"}),
                "kube-persist.io/containers \"app,nope\": no container or initContainer named nope",
            ),
            (
                json!({"kube-persist.io/mount-path": "/data", "kube-persist.io/containers": ","}),
                "kube-persist.io/containers \",\": names no container",
            ),
            (
                json!({"kube-persist.io/containers": "app"}),
                "kube-persist.io/containers \"app\": only used together with kube-persist.io/mount-path",
            ),
        ];
        for (annotations, expected) in cases {
            let object = annotate(sts(pod.clone()), annotations.clone());
            let (d, response) = create(&object);
            assert_eq!(d.outcome(), Outcome::Invalid, "{annotations}");
            assert_eq!(d.reason(), format!("invalid annotation: {expected}"));
            assert!(response["response"].get("patch").is_none());
        }

        // A volume named `data` already exists (here: a memory emptyDir that stays).
        let object = annotate(
            sts(
                json!({"containers": [container("app", &[("data", "/dev/shm")])], "volumes": [memory("data")]}),
            ),
            json!({"kube-persist.io/mount-path": "/var/lib/app"}),
        );
        let (d, _) = create(&object);
        assert_eq!(d.outcome(), Outcome::Invalid);
        assert!(
            d.reason()
                .ends_with("the pod template already has a volume named data"),
            "{}",
            d.reason()
        );

        // No container to mount it in.
        let object = annotate(
            sts(json!({})),
            json!({"kube-persist.io/mount-path": "/data"}),
        );
        let (d, _) = create(&object);
        assert!(
            d.reason().ends_with("the pod template has no containers"),
            "{}",
            d.reason()
        );
    }

    // ---- size, class, access modes ----

    #[test]
    fn annotations_override_class_size_and_access_modes_of_every_claim() {
        let object = annotate(
            sts(json!({
                "containers": [container("app", &[("data", "/data"), ("wal", "/wal")])],
                "volumes": [empty_dir("data"), empty_dir("wal")],
            })),
            json!({
                "kube-persist.io/size": "20Gi",
                "kube-persist.io/storage-class": "fast-nfs",
                "kube-persist.io/access-modes": "ReadWriteOncePod",
            }),
        );
        let (d, _) = create(&object);
        let storage = d.storage().unwrap();
        assert_eq!(
            (
                storage.storage_class_name.as_str(),
                storage.size.as_str(),
                storage.source
            ),
            ("fast-nfs", "20Gi", Source::Annotation)
        );
        let result = mutated(&object);
        for claim in result["spec"]["volumeClaimTemplates"].as_array().unwrap() {
            assert_eq!(
                claim["spec"],
                json!({
                    "accessModes": ["ReadWriteOncePod"],
                    "storageClassName": "fast-nfs",
                    "resources": {"requests": {"storage": "20Gi"}}
                })
            );
        }

        let policy = Policy::from_yaml("namespaces: { default: { size: 5Gi } }", "p").unwrap();
        let (d, _) = run("CREATE", &redis(), &policy);
        let storage = d.storage().unwrap();
        assert_eq!(
            (storage.size.as_str(), storage.source),
            ("5Gi", Source::Namespace)
        );
    }

    #[test]
    fn bad_size_class_or_access_modes_are_invalid() {
        for (key, value) in [
            ("kube-persist.io/size", "fifty"),
            ("kube-persist.io/storage-class", "Fast_NFS"),
            ("kube-persist.io/access-modes", "ReadWriteAlways"),
            ("kube-persist.io/skip", "yes"),
        ] {
            let (d, _) = create(&annotate(redis(), json!({ key: value })));
            assert_eq!(d.outcome(), Outcome::Invalid, "{key}");
            assert!(
                d.reason().contains(&format!("{key} {value:?}")),
                "{}",
                d.reason()
            );
            assert_eq!(d.warnings.len(), 1);
        }
    }

    #[test]
    fn a_larger_size_limit_raises_its_claim_and_never_shrinks_it() {
        let object = sts(json!({
            "containers": [container("app", &[("data", "/data"), ("wal", "/wal"), ("small", "/small")])],
            "volumes": [
                {"name": "data", "emptyDir": {"sizeLimit": "200Gi"}},
                empty_dir("wal"),
                {"name": "small", "emptyDir": {"sizeLimit": "1Gi"}},
            ],
        }));
        let (d, response) = create(&object);
        assert!(
            d.reason()
                .starts_with("added volumes data (200Gi), wal (100Gi), small (100Gi);"),
            "{}",
            d.reason()
        );
        // Too long for a warning line with the sizes: the names only.
        assert_eq!(
            d.warnings[0],
            "kube-persist: added volumes data, wal, small on StorageClass prometheus-data-db (StatefulSet default/redis)"
        );
        assert!(
            d.reason().contains("data raised to its emptyDir sizeLimit"),
            "{}",
            d.reason()
        );
        // The audit record names the largest claim.
        assert_eq!(d.storage().unwrap().size, "200Gi");
        assert_eq!(
            response["response"]["auditAnnotations"]["storage"],
            "prometheus-data-db/200Gi"
        );
        let result = mutated(&object);
        let sizes: Vec<&Value> = result["spec"]["volumeClaimTemplates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| &c["spec"]["resources"]["requests"]["storage"])
            .collect();
        assert_eq!(sizes, [&json!("200Gi"), &json!("100Gi"), &json!("100Gi")]);
    }

    #[test]
    fn an_invalid_size_limit_keeps_the_default_with_a_warning() {
        let object = sts(json!({
            "containers": [container("app", &[("data", "/data")])],
            "volumes": [{"name": "data", "emptyDir": {"sizeLimit": "big"}}],
        }));
        let (d, _) = create(&object);
        assert_eq!(d.outcome(), Outcome::Mutated);
        assert_eq!(
            d.warnings[1],
            "kube-persist: emptyDir data sizeLimit \"big\" is not a quantity; its claim gets 100Gi (StatefulSet default/redis)"
        );
        let result = mutated(&object);
        assert_eq!(
            result["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
            "100Gi"
        );
    }

    // ---- modes, identity, warnings ----

    #[test]
    fn audit_mode_reports_without_patching() {
        let audit = Policy::from_yaml("mode: audit", "p").unwrap();
        let (d, response) = run("CREATE", &redis(), &audit);
        assert_eq!(d.outcome(), Outcome::WouldMutate);
        assert_eq!(
            paths(&d).len(),
            2,
            "the proposed patch is kept for the audit log"
        );
        assert!(response["response"].get("patch").is_none());
        assert_eq!(
            d.warnings,
            [
                "kube-persist: audit mode, would add 100Gi volume data on StorageClass prometheus-data-db (StatefulSet default/redis)"
            ]
        );
    }

    #[test]
    fn unknown_annotations_warn_and_generate_name_identifies() {
        let mut object = annotate(redis(), json!({"kube-persist.io/mountpath": "/data"}));
        object["metadata"] = json!({
            "generateName": "redis-",
            "namespace": "default",
            "annotations": {"kube-persist.io/mountpath": "/data"},
        });
        let (d, _) = create(&object);
        assert_eq!(d.outcome(), Outcome::Mutated);
        assert!(
            d.warnings[0].ends_with("(StatefulSet default/redis-*)"),
            "{:?}",
            d.warnings
        );
        assert!(
            d.warnings[1].contains("unknown annotation kube-persist.io/mountpath"),
            "{:?}",
            d.warnings
        );
    }

    #[test]
    fn long_names_keep_warnings_within_the_limit() {
        let long = "v".repeat(63);
        let mut object = sts(json!({
            "containers": [container("app", &[(&long, "/a"), ("data", "/data")])],
            "volumes": [empty_dir(&long), {"name": "data", "emptyDir": {"sizeLimit": "x".repeat(90)}}],
        }));
        object["metadata"]["name"] = json!("n".repeat(63));
        object["metadata"]["namespace"] = json!("s".repeat(63));
        for op in ["CREATE", "UPDATE"] {
            let (d, _) = run(op, &object, &Policy::default());
            assert!(d.warnings.len() >= 2, "{op}: {:?}", d.warnings);
        }
    }

    #[test]
    fn many_volumes_are_counted_so_the_warning_keeps_class_and_object() {
        let names: Vec<String> = (0..6).map(|i| format!("volume-number-{i}")).collect();
        let mounts: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "/x")).collect();
        let volumes: Vec<Value> = names.iter().map(|n| empty_dir(n)).collect();
        let object = sts(json!({"containers": [container("app", &mounts)], "volumes": volumes}));
        let (d, _) = create(&object);
        assert_eq!(
            d.warnings,
            [
                "kube-persist: added 6 volumes of 100Gi on StorageClass prometheus-data-db (StatefulSet default/redis)"
            ]
        );
        assert!(
            d.reason()
                .starts_with("added 100Gi volumes volume-number-0, volume-number-1,"),
            "{}",
            d.reason()
        );
        let audit = Policy::from_yaml("mode: audit", "p").unwrap();
        let (d, _) = run("CREATE", &object, &audit);
        assert!(
            d.warnings[0].ends_with("(StatefulSet default/redis)"),
            "{:?}",
            d.warnings
        );
        assert!(
            d.reason()
                .starts_with("audit mode: would add 100Gi volumes volume-number-0,"),
            "{}",
            d.reason()
        );
    }

    // ---- helpers ----

    #[test]
    fn helpers() {
        assert_eq!(name_list(" a, b,,a ,c "), ["a", "b", "c"]);
        assert!(name_list(" , ").is_empty());
        assert_eq!(mount_path_problem("/data"), None);
        assert_eq!(mount_path_problem("/var/lib/..data"), None);
        assert!(mount_path_problem("/./").is_some());
        assert!(same_path("/data/", "/data"));
        assert!(same_path("//data/./x", "/data/x"));
        assert!(!same_path("/data", "/data/x"));
        let added_by = AddedBy {
            added_by: ADDED_BY_VALUE,
        };
        assert_eq!(
            serde_json::to_value(added_by).unwrap(),
            json!({ ADDED_BY: ADDED_BY_VALUE })
        );
    }
}
