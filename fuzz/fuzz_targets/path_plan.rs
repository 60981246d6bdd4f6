//! The provisioner's directory planning: claims of one StorageClass (the fixtures'
//! `tests/fixtures/provisioner/` claim and class, with the fields a directory is made of
//! fuzzed: namespace, name, uid, labels, annotations, the class's `pathPattern` and `NFS_PATH`)
//! through `plan_provision`, then each planned volume, released, through `plan_delete`.
//!
//! Checked for every volume planned:
//! - its directory is made of plain components (none empty, `.`, `..`, with `/` or NUL, or
//!   longer than 255 bytes), so joined onto the mount it names a directory strictly below it;
//! - without a `pathPattern`, or with one that expands to nothing, it is
//!   `<namespace>-<pvc>-pvc-<uid>`; otherwise it is the expansion `expand_path_pattern` gives;
//! - the PV's `spec.nfs.path` is `NFS_PATH` joined with the directory, and deletion reads the
//!   same directory back from it;
//! - claims planned one after the other, each planned volume joining the known ones as the
//!   reconciler does, never get directories that are equal or nested;
//! - deletion archives a volume's directory under names that are valid and at most 255 bytes,
//!   and keeps it when another volume uses the same directory.
#![no_main]

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Component, Path, PathBuf},
    sync::LazyLock,
};

use arbitrary::Arbitrary;
use k8s_openapi::api::{
    core::v1::{PersistentVolume, PersistentVolumeClaim, PersistentVolumeStatus},
    storage::v1::StorageClass,
};
use kube_persist::provisioner::{
    Config, RawConfig,
    plan::{
        DeleteDecision, DirAction, NAME_MAX, PatternVars, ProvisionDecision, RelDir, RetainReason,
        dir_from_nfs_path, expand_path_pattern, nfs_path_for, plan_delete, plan_provision,
        relation,
    },
};
use libfuzzer_sys::fuzz_target;

const ROOT: &str = "/persistentvolumes";
const STAMP: &str = "20250102T030405Z";

static CLAIM: LazyLock<PersistentVolumeClaim> = LazyLock::new(|| {
    serde_json::from_str(include_str!(
        "../../tests/fixtures/provisioner/pvc-prometheus.json"
    ))
    .expect("the claim fixture")
});

static CLASS: LazyLock<StorageClass> = LazyLock::new(|| {
    serde_json::from_str(include_str!(
        "../../tests/fixtures/provisioner/storageclass.json"
    ))
    .expect("the class fixture")
});

#[derive(Debug, Arbitrary)]
struct Case {
    nfs_path: NfsPath,
    pattern: Pattern,
    claims: Vec<Claim>,
}

/// `NFS_PATH`: an absolute path, as an export is.
#[derive(Debug, Arbitrary)]
enum NfsPath {
    Root,
    Export,
    Trailing,
    Dotted,
    Other(String),
}

impl NfsPath {
    fn text(&self) -> String {
        match self {
            NfsPath::Root => "/".to_string(),
            NfsPath::Export => "/export".to_string(),
            NfsPath::Trailing => "/srv/nfs//".to_string(),
            NfsPath::Dotted => "/srv/./nfs/../data".to_string(),
            NfsPath::Other(s) => format!("/{s}"),
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Pattern {
    /// No `pathPattern`: `<namespace>-<pvc>-<pv>`.
    Default,
    /// A pattern made of variables, literals and slashes.
    Pieces(Vec<Piece>),
    /// Any text.
    Raw(String),
}

#[derive(Debug, Arbitrary)]
enum Piece {
    Literal(String),
    Slash,
    Namespace,
    Name,
    Label(String),
    Annotation(String),
    /// An unknown variable.
    Variable(String),
}

impl Pattern {
    fn text(&self) -> Option<String> {
        match self {
            Pattern::Default => None,
            Pattern::Raw(s) => Some(s.clone()),
            Pattern::Pieces(pieces) => Some(
                pieces
                    .iter()
                    .map(|p| match p {
                        Piece::Literal(s) => s.clone(),
                        Piece::Slash => "/".to_string(),
                        Piece::Namespace => "${.PVC.namespace}".to_string(),
                        Piece::Name => "${.PVC.name}".to_string(),
                        Piece::Label(k) => format!("${{.PVC.labels.{k}}}"),
                        Piece::Annotation(k) => format!("${{.PVC.annotations.{k}}}"),
                        Piece::Variable(v) => format!("${{{v}}}"),
                    })
                    .collect(),
            ),
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Claim {
    namespace: String,
    name: String,
    uid: [u8; 16],
    labels: Vec<(String, String)>,
    annotations: Vec<(String, String)>,
}

impl Claim {
    /// The fixture's claim with this claim's fields (its own annotations, which hand the claim
    /// to the provisioner, win).
    fn to_pvc(&self) -> PersistentVolumeClaim {
        let mut pvc = CLAIM.clone();
        let meta = &mut pvc.metadata;
        meta.namespace = Some(self.namespace.clone());
        meta.name = Some(self.name.clone());
        meta.uid = Some(uuid(&self.uid));
        meta.labels = Some(self.labels.iter().cloned().collect());
        let mut annotations: BTreeMap<String, String> = self.annotations.iter().cloned().collect();
        annotations.extend(CLAIM.metadata.annotations.clone().unwrap_or_default());
        meta.annotations = Some(annotations);
        pvc
    }
}

/// A uid as the API server writes them (8-4-4-4-12 hexadecimal digits).
fn uuid(bytes: &[u8; 16]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

fuzz_target!(|case: Case| {
    check(&case);
});

struct Planned {
    dir: RelDir,
    pv: PersistentVolume,
}

fn check(case: &Case) {
    let nfs_path = case.nfs_path.text();
    let Ok(config) = Config::new(RawConfig {
        provisioner_name: "fuseim.pri/ifs".to_string(),
        nfs_server: Some("nfs.example".to_string()),
        nfs_path: Some(nfs_path),
        nfs_root: PathBuf::from(ROOT),
        enable_leader_election: false,
        lease_namespace: None,
        admin_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
    }) else {
        return;
    };
    let pattern = case.pattern.text();
    let mut class = CLASS.clone();
    if let Some(pattern) = &pattern {
        class
            .parameters
            .get_or_insert_default()
            .insert("pathPattern".to_string(), pattern.clone());
    }

    let mut planned = Vec::new();
    for claim in case.claims.iter().take(6) {
        let pvc = claim.to_pvc();
        // As the reconciler calls it: every known volume, and the one of this claim's name.
        let known: Vec<&PersistentVolume> = planned.iter().map(|p: &Planned| &p.pv).collect();
        let name = pvc.metadata.uid.as_deref().map(|u| format!("pvc-{u}"));
        let existing = known
            .iter()
            .copied()
            .find(|v| v.metadata.name == name);
        let ProvisionDecision::Provision(plan) =
            plan_provision(&pvc, Some(&class), &config, existing, &known)
        else {
            continue;
        };
        let dir = plan.dir.clone();
        check_dir(&dir);
        let meta = &pvc.metadata;
        let namespace = meta.namespace.as_deref().unwrap_or("default");
        let name = meta.name.as_deref().unwrap_or_default();
        let default = || {
            RelDir::parse(&format!(
                "{namespace}-{name}-pvc-{}",
                meta.uid.as_deref().unwrap_or_default()
            ))
        };
        let expected = match &pattern {
            None => default(),
            Some(pattern) => match expand_path_pattern(
                pattern,
                PatternVars {
                    namespace,
                    name,
                    labels: meta.labels.as_ref(),
                    annotations: meta.annotations.as_ref(),
                },
            ) {
                Ok(Some(dir)) => Ok(dir),
                Ok(None) => default(),
                Err(e) => Err(e),
            },
        };
        assert_eq!(expected.as_ref(), Ok(&dir), "the planned directory");

        let nfs = plan
            .pv
            .spec
            .as_ref()
            .and_then(|s| s.nfs.as_ref())
            .expect("spec.nfs");
        assert_eq!(nfs.path, nfs_path_for(&config.nfs_path, &dir));
        assert_eq!(
            dir_from_nfs_path(&config.nfs_path, &nfs.path).as_ref(),
            Some(&dir),
            "spec.nfs.path {} under NFS_PATH {} reads back as another directory",
            nfs.path,
            config.nfs_path
        );
        planned.push(Planned {
            dir,
            pv: plan.pv,
        });
    }

    for (i, a) in planned.iter().enumerate() {
        for b in &planned[i + 1..] {
            assert_eq!(
                relation(&a.dir, &b.dir),
                None,
                "two volumes meet: {} and {}",
                a.dir,
                b.dir
            );
        }
    }

    for (i, p) in planned.iter().enumerate() {
        let mut released = p.pv.clone();
        released.metadata.uid = Some(format!("pv-{i}"));
        released.status = Some(PersistentVolumeStatus {
            phase: Some("Released".to_string()),
            ..PersistentVolumeStatus::default()
        });
        // The others are live, bound volumes; none meets this one (checked above).
        let others: Vec<&PersistentVolume> = planned.iter().map(|o| &o.pv).collect();
        let DeleteDecision::Delete(plan) =
            plan_delete(&released, Some(&class), &config, &others, STAMP)
        else {
            panic!("a released volume we planned is not cleaned up");
        };
        assert_eq!(plan.dir, p.dir, "deletion reads back the planned directory");
        match &plan.action {
            DirAction::Archive { names } => check_archive_names(&p.dir, names),
            other => panic!("unexpected action {other:?} for {}", p.dir),
        }
        // A volume of another name in the same directory: kept.
        let mut sharer = p.pv.clone();
        sharer.metadata.name = Some(format!("sharer-{i}"));
        let DeleteDecision::Delete(plan) =
            plan_delete(&released, Some(&class), &config, &[&sharer], STAMP)
        else {
            panic!("a released volume we planned is not cleaned up");
        };
        assert!(
            matches!(
                plan.action,
                DirAction::Retain {
                    reason: RetainReason::Shared { .. }
                }
            ),
            "{:?} while another volume uses {}",
            plan.action,
            p.dir
        );
    }
}

/// Every component plain, and joined onto the mount strictly below it.
fn check_dir(dir: &RelDir) {
    let components = dir.components();
    assert!(!components.is_empty());
    for c in components {
        assert!(
            !c.is_empty()
                && c != "."
                && c != ".."
                && !c.contains(['/', '\0'])
                && c.len() <= NAME_MAX,
            "component {c:?} of {dir}"
        );
    }
    assert_eq!(RelDir::parse(&dir.to_string()).as_ref(), Ok(dir));
    let path = Path::new(ROOT).join(dir.to_string());
    let below: Vec<Component> = path
        .strip_prefix(ROOT)
        .expect("below the root")
        .components()
        .collect();
    assert_eq!(below.len(), components.len(), "{}", path.display());
    assert!(below.iter().all(|c| matches!(c, Component::Normal(_))));
}

fn check_archive_names(dir: &RelDir, names: &[String]) {
    assert!(!names.is_empty());
    for name in names {
        assert!(name.len() <= NAME_MAX, "{name} is {} bytes", name.len());
        let archived = dir
            .sibling(name)
            .unwrap_or_else(|e| panic!("archive name {name:?}: {e}"));
        assert_eq!(archived.components().len(), dir.components().len());
    }
}
