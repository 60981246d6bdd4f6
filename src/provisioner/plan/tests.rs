//! Table tests of the pure plans, and property tests that no path escapes the root.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{
        PersistentVolumeClaimSpec, PersistentVolumeStatus, TypedLocalObjectReference,
        VolumeResourceRequirements,
    },
    apimachinery::pkg::apis::meta::v1::{LabelSelector, Time},
};
use proptest::prelude::*;

use super::*;

const NAME: &str = "fuseim.pri/ifs";

fn config() -> Config {
    Config {
        provisioner_name: NAME.into(),
        nfs_server: "10.0.0.5".into(),
        nfs_path: "/export/k8s".into(),
        nfs_root: "/persistentvolumes".into(),
        enable_leader_election: true,
        lease_namespace: None,
        admin_listen: "127.0.0.1:0".parse().unwrap(),
    }
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn pvc() -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some("prometheus-k8s-db-prometheus-k8s-0".into()),
            namespace: Some("monitoring".into()),
            uid: Some("0b5f5a8e-1111-2222-3333-444455556666".into()),
            annotations: Some(map(&[(ANN_STORAGE_PROVISIONER, NAME)])),
            labels: Some(map(&[("app", "prometheus")])),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: Some("prometheus-data-db".into()),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".into(),
                    Quantity("100Gi".into()),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        status: None,
    }
}

fn class(params: &[(&str, &str)]) -> StorageClass {
    StorageClass {
        metadata: ObjectMeta {
            name: Some("prometheus-data-db".into()),
            ..ObjectMeta::default()
        },
        provisioner: NAME.into(),
        parameters: (!params.is_empty()).then(|| map(params)),
        ..StorageClass::default()
    }
}

fn provision(pvc: &PersistentVolumeClaim, class: &StorageClass) -> PvPlan {
    match plan_provision(pvc, Some(class), &config(), None, &[]) {
        ProvisionDecision::Provision(p) => *p,
        other => panic!("expected Provision, got {other:?}"),
    }
}

fn fail_reason(pvc: &PersistentVolumeClaim, class: Option<&StorageClass>) -> FailReason {
    match plan_provision(pvc, class, &config(), None, &[]) {
        ProvisionDecision::Fail { reason } => reason,
        other => panic!("expected Fail, got {other:?}"),
    }
}

fn with_ann(mut p: PersistentVolumeClaim, k: &str, v: &str) -> PersistentVolumeClaim {
    p.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(k.into(), v.into());
    p
}

fn with_spec(
    mut p: PersistentVolumeClaim,
    f: impl FnOnce(&mut PersistentVolumeClaimSpec),
) -> PersistentVolumeClaim {
    f(p.spec.get_or_insert_with(Default::default));
    p
}

#[test]
fn default_naming_and_pv_fields_match_the_go_provisioner() {
    let plan = provision(&pvc(), &class(&[]));
    let pv_name = "pvc-0b5f5a8e-1111-2222-3333-444455556666";
    assert_eq!(
        plan.dir.to_string(),
        format!("monitoring-prometheus-k8s-db-prometheus-k8s-0-{pv_name}")
    );
    assert_eq!((plan.mode, plan.uid, plan.gid), (0o777, None, None));
    assert_eq!(plan.requested_bytes, Some(100 * 1024 * 1024 * 1024));
    let expected = serde_json::json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": pv_name,
            "annotations": { "pv.kubernetes.io/provisioned-by": NAME }
        },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "capacity": { "storage": "100Gi" },
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": "monitoring",
                "name": "prometheus-k8s-db-prometheus-k8s-0",
                "uid": "0b5f5a8e-1111-2222-3333-444455556666"
            },
            "nfs": {
                "server": "10.0.0.5",
                "path": format!("/export/k8s/monitoring-prometheus-k8s-db-prometheus-k8s-0-{pv_name}")
            },
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": "prometheus-data-db"
        }
    });
    assert_eq!(serde_json::to_value(&plan.pv).unwrap(), expected);
}

#[test]
fn class_reclaim_policy_and_mount_options_are_copied() {
    let mut c = class(&[]);
    c.reclaim_policy = Some("Retain".into());
    c.mount_options = Some(vec!["nfsvers=4.1".into(), "hard".into()]);
    let spec = provision(&pvc(), &c).pv.spec.unwrap();
    assert_eq!(
        spec.persistent_volume_reclaim_policy.as_deref(),
        Some("Retain")
    );
    assert_eq!(spec.mount_options.unwrap(), vec!["nfsvers=4.1", "hard"]);
}

#[test]
fn skip_table() {
    let cfg = config();
    let deleting = {
        let mut p = pvc();
        p.metadata.deletion_timestamp = Some(Time("2025-01-01T00:00:00Z".parse().unwrap()));
        p
    };
    let bound = with_spec(pvc(), |s| s.volume_name = Some("pv-1".into()));
    let mut unannotated = pvc();
    unannotated.metadata.annotations = None;
    let other = with_ann(
        unannotated.clone(),
        ANN_STORAGE_PROVISIONER,
        "nfs.csi.k8s.io",
    );
    let beta_other = with_ann(
        unannotated.clone(),
        ANN_STORAGE_PROVISIONER_BETA,
        "example.com/other",
    );
    let mut other_class = class(&[]);
    other_class.provisioner = "example.com/other".into();
    let mut wffc = class(&[]);
    wffc.volume_binding_mode = Some("WaitForFirstConsumer".into());
    let existing = PersistentVolume {
        spec: Some(PersistentVolumeSpec {
            claim_ref: Some(ObjectReference {
                uid: pvc().metadata.uid,
                ..ObjectReference::default()
            }),
            ..PersistentVolumeSpec::default()
        }),
        ..PersistentVolume::default()
    };
    let plain = class(&[]);
    type Case<'a> = (
        &'a str,
        PersistentVolumeClaim,
        Option<&'a StorageClass>,
        Option<&'a PersistentVolume>,
        SkipReason,
    );
    let cases: Vec<Case<'_>> = vec![
        (
            "deleting",
            deleting,
            Some(&plain),
            None,
            SkipReason::Deleting,
        ),
        ("bound", bound, Some(&plain), None, SkipReason::AlreadyBound),
        (
            "unannotated",
            unannotated,
            Some(&plain),
            None,
            SkipReason::NotAnnotated,
        ),
        (
            "other GA",
            other,
            Some(&plain),
            None,
            SkipReason::OtherProvisioner("nfs.csi.k8s.io".into()),
        ),
        (
            "other beta",
            beta_other,
            Some(&plain),
            None,
            SkipReason::OtherProvisioner("example.com/other".into()),
        ),
        (
            "class of other",
            pvc(),
            Some(&other_class),
            None,
            SkipReason::ClassOfOtherProvisioner("example.com/other".into()),
        ),
        (
            "wffc without node",
            pvc(),
            Some(&wffc),
            None,
            SkipReason::WaitingForFirstConsumer,
        ),
        (
            "already provisioned",
            pvc(),
            Some(&plain),
            Some(&existing),
            SkipReason::AlreadyProvisioned("pvc-0b5f5a8e-1111-2222-3333-444455556666".into()),
        ),
    ];
    for (name, claim, class, existing, want) in cases {
        assert_eq!(
            plan_provision(&claim, class, &cfg, existing, &[]),
            ProvisionDecision::Skip { reason: want },
            "{name}"
        );
    }
    // The beta annotation alone is enough; a selected node releases WaitForFirstConsumer.
    let mut beta_only = pvc();
    beta_only.metadata.annotations = Some(map(&[(ANN_STORAGE_PROVISIONER_BETA, NAME)]));
    provision(&beta_only, &plain);
    provision(&with_ann(pvc(), ANN_SELECTED_NODE, "node-1"), &wffc);
}

#[test]
fn class_name_from_the_beta_annotation() {
    let claim = with_ann(
        with_spec(pvc(), |s| s.storage_class_name = None),
        ANN_STORAGE_CLASS_BETA,
        "prometheus-data-db",
    );
    assert_eq!(claim_class_name(&claim), Some("prometheus-data-db"));
    provision(&claim, &class(&[]));
}

#[test]
fn fail_table() {
    let plain = class(&[]);
    let cases: Vec<(
        &str,
        PersistentVolumeClaim,
        Option<&StorageClass>,
        FailReason,
    )> = vec![
        (
            "selector",
            with_spec(pvc(), |s| s.selector = Some(LabelSelector::default())),
            Some(&plain),
            FailReason::Selector,
        ),
        (
            "block",
            with_spec(pvc(), |s| s.volume_mode = Some("Block".into())),
            Some(&plain),
            FailReason::BlockMode,
        ),
        (
            "data source",
            with_spec(pvc(), |s| {
                s.data_source = Some(TypedLocalObjectReference {
                    kind: "PersistentVolumeClaim".into(),
                    name: "src".into(),
                    api_group: None,
                })
            }),
            Some(&plain),
            FailReason::DataSource,
        ),
        (
            "no class found",
            pvc(),
            None,
            FailReason::ClassNotFound("prometheus-data-db".into()),
        ),
        (
            "no class name",
            with_spec(pvc(), |s| s.storage_class_name = None),
            None,
            FailReason::NoClassName,
        ),
        (
            "no request",
            with_spec(pvc(), |s| s.resources = None),
            Some(&plain),
            FailReason::NoStorageRequest,
        ),
        (
            "no access modes",
            with_spec(pvc(), |s| s.access_modes = Some(vec![])),
            Some(&plain),
            FailReason::NoAccessModes,
        ),
        (
            "no uid",
            {
                let mut p = pvc();
                p.metadata.uid = None;
                p
            },
            Some(&plain),
            FailReason::NoUid,
        ),
    ];
    for (name, claim, class, want) in cases {
        assert_eq!(fail_reason(&claim, class), want, "{name}");
    }
    assert!(
        FailReason::Selector
            .to_string()
            .contains("Selector is not supported")
    );
    assert!(FailReason::BlockMode.to_string().contains("Block"));
}

#[test]
fn volume_mode_filesystem_is_fine() {
    provision(
        &with_spec(pvc(), |s| s.volume_mode = Some("Filesystem".into())),
        &class(&[]),
    );
}

#[test]
fn parameter_table() {
    struct Case {
        params: &'static [(&'static str, &'static str)],
        anns: &'static [(&'static str, &'static str)],
        want: Result<(u32, Option<u32>, Option<u32>), &'static str>,
    }
    let cases = [
        Case {
            params: &[],
            anns: &[],
            want: Ok((0o777, None, None)),
        },
        Case {
            params: &[("mode", "0750")],
            anns: &[],
            want: Ok((0o750, None, None)),
        },
        Case {
            params: &[("mode", "750")],
            anns: &[],
            want: Ok((0o750, None, None)),
        },
        Case {
            params: &[("mode", "0o2775")],
            anns: &[],
            want: Ok((0o2775, None, None)),
        },
        Case {
            params: &[("uid", "1000"), ("gid", "2000")],
            anns: &[],
            want: Ok((0o777, Some(1000), Some(2000))),
        },
        Case {
            params: &[],
            anns: &[(ANN_CREATE_MODE, "0700"), (ANN_CREATE_UID, "65534")],
            want: Ok((0o700, Some(65534), None)),
        },
        // A claim may narrow the class's mode, never widen it; the class's owner wins.
        Case {
            params: &[("mode", "0750"), ("gid", "5")],
            anns: &[(ANN_CREATE_MODE, "0700"), (ANN_CREATE_GID, "6")],
            want: Ok((0o700, None, Some(5))),
        },
        Case {
            params: &[("mode", "0750")],
            anns: &[(ANN_CREATE_MODE, "0777")],
            want: Err(ANN_CREATE_MODE),
        },
        Case {
            params: &[("mode", "0770")],
            anns: &[(ANN_CREATE_MODE, "02770")],
            want: Err(ANN_CREATE_MODE),
        },
        Case {
            params: &[],
            anns: &[(ANN_CREATE_MODE, "04777")],
            want: Err(ANN_CREATE_MODE),
        },
        Case {
            params: &[("mode", "0999")],
            anns: &[],
            want: Err("mode"),
        },
        Case {
            params: &[("mode", "77777")],
            anns: &[],
            want: Err("mode"),
        },
        Case {
            params: &[("mode", "")],
            anns: &[],
            want: Err("mode"),
        },
        Case {
            params: &[("uid", "-1")],
            anns: &[],
            want: Err("uid"),
        },
        Case {
            params: &[("gid", "root")],
            anns: &[],
            want: Err("gid"),
        },
        Case {
            params: &[("uid", "4294967296")],
            anns: &[],
            want: Err("uid"),
        },
        Case {
            params: &[],
            anns: &[(ANN_CREATE_UID, "x")],
            want: Err(ANN_CREATE_UID),
        },
        // Read only at deletion, as the Go provisioner reads them: never fail a new claim.
        Case {
            params: &[("onDelete", "shred")],
            anns: &[],
            want: Ok((0o777, None, None)),
        },
        Case {
            params: &[("archiveOnDelete", "yes")],
            anns: &[],
            want: Ok((0o777, None, None)),
        },
        Case {
            params: &[("usageWalk", "off")],
            anns: &[],
            want: Err("usageWalk"),
        },
        // Unknown parameters are ignored, as before.
        Case {
            params: &[("server", "other"), ("share", "/x")],
            anns: &[],
            want: Ok((0o777, None, None)),
        },
    ];
    for (i, c) in cases.iter().enumerate() {
        let mut claim = pvc();
        for (k, v) in c.anns {
            claim = with_ann(claim, k, v);
        }
        let got = plan_provision(&claim, Some(&class(c.params)), &config(), None, &[]);
        match (&c.want, got) {
            (Ok(want), ProvisionDecision::Provision(p)) => {
                assert_eq!((p.mode, p.uid, p.gid), *want, "case {i}")
            }
            (
                Err(name),
                ProvisionDecision::Fail {
                    reason: FailReason::Param(e),
                },
            ) => {
                assert_eq!(e.name, *name, "case {i}");
                assert!(e.to_string().contains(name), "case {i}: {e}");
            }
            (want, got) => panic!("case {i}: want {want:?}, got {got:?}"),
        }
    }
}

#[test]
fn path_pattern_table() {
    let claim = with_ann(pvc(), "nfs.io/storage-path", "tsdb");
    let claim = with_ann(claim, "evil", "../../etc");
    let claim = with_ann(claim, "slash", "app/data");
    let claim = with_ann(claim, "empty", "");
    let claim = with_ann(claim, "root", "/");
    let default =
        "monitoring-prometheus-k8s-db-prometheus-k8s-0-pvc-0b5f5a8e-1111-2222-3333-444455556666";
    // What nfs-subdir-external-provisioner makes of each, except where it would leave the
    // export or use its root (refused here).
    let cases: &[(&str, Result<&str, &str>)] = &[
        (
            "${.PVC.namespace}/${.PVC.name}",
            Ok("monitoring/prometheus-k8s-db-prometheus-k8s-0"),
        ),
        (
            "${.PVC.namespace}/${.PVC.annotations.nfs.io/storage-path}",
            Ok("monitoring/tsdb"),
        ),
        ("data-${.PVC.labels.app}", Ok("data-prometheus")),
        ("static", Ok("static")),
        ("a//b/", Ok("a/b")),
        ("a/./b", Ok("a/b")),
        ("/abs/${.PVC.labels.app}", Ok("abs/prometheus")),
        // A value with `/` nests directories (the Go provisioner's README invites it).
        (
            "${.PVC.namespace}/${.PVC.annotations.slash}",
            Ok("monitoring/app/data"),
        ),
        // Missing or empty values are empty strings...
        (
            "x-${.PVC.annotations.missing}-${.PVC.labels.missing}",
            Ok("x--"),
        ),
        (
            "${.PVC.namespace}/${.PVC.annotations.empty}",
            Ok("monitoring"),
        ),
        ("${.PVC.uid}-x", Ok("-x")),
        // ...and an empty expansion falls back to the default name.
        ("${.PVC.annotations.missing}", Ok(default)),
        (
            "${.PVC.labels.missing}${.PVC.annotations.empty}",
            Ok(default),
        ),
        ("", Ok(default)),
        // Not variables: kept as text.
        ("${.PVC.name", Ok("${.PVC.name")),
        ("${.Other.name}", Ok("${.Other.name}")),
        // Refused.
        (
            "${.PVC.namespace}/${.PVC.annotations.evil}",
            Err("`..` may not appear"),
        ),
        ("../${.PVC.name}", Err("`..` may not appear")),
        ("/", Err("names the export root")),
        ("${.PVC.annotations.root}", Err("names the export root")),
        ("./", Err("names the export root")),
    ];
    for (pattern, want) in cases {
        let got = plan_provision(
            &claim,
            Some(&class(&[("pathPattern", pattern)])),
            &config(),
            None,
            &[],
        );
        match (want, got) {
            (Ok(dir), ProvisionDecision::Provision(p)) => {
                assert_eq!(p.dir.to_string(), *dir, "{pattern}");
                assert_eq!(
                    p.pv.spec.unwrap().nfs.unwrap().path,
                    format!("/export/k8s/{dir}"),
                    "{pattern}"
                );
            }
            (
                Err(msg),
                ProvisionDecision::Fail {
                    reason: reason @ FailReason::Path { .. },
                },
            ) => {
                assert!(reason.to_string().contains(msg), "{pattern}: {reason}");
                assert!(
                    reason.to_string().contains("prometheus-data-db"),
                    "{pattern}: {reason}"
                );
            }
            (want, got) => panic!("{pattern}: want {want:?}, got {got:?}"),
        }
    }
}

#[test]
fn patterns_that_keep_namespaces_apart() {
    for (pattern, apart) in [
        ("${.PVC.namespace}/${.PVC.name}", true),
        ("${.PVC.namespace}", true),
        (
            "prometheus/${.PVC.namespace}/${.PVC.annotations.nfs.io/storage-path}",
            true,
        ),
        ("/a//${.PVC.namespace}/x-${.PVC.labels.app}", true),
        ("${.PVC.namespace}-${.PVC.name}", false),
        ("${.PVC.name}/${.PVC.namespace}", false),
        ("${.PVC.annotations.x}/${.PVC.namespace}", false),
        ("ns-${.PVC.namespace}/${.PVC.name}", false),
        ("static", false),
        ("", false),
    ] {
        assert_eq!(pattern_keeps_namespaces_apart(pattern), apart, "{pattern}");
    }
    // The plan says so, and the default name (it holds the claim's uid) is private too.
    let private = |params: &[(&str, &str)]| provision(&pvc(), &class(params)).private;
    assert!(private(&[]));
    assert!(private(&[(
        "pathPattern",
        "${.PVC.namespace}/${.PVC.name}"
    )]));
    assert!(!private(&[(
        "pathPattern",
        "${.PVC.namespace}-${.PVC.name}"
    )]));
    assert!(private(&[("pathPattern", "${.PVC.labels.missing}")]));
}

/// A bound volume of another claim in `dir` (below the export), provisioned by us or not.
fn volume_in(name: &str, dir: &str, ours: bool) -> PersistentVolume {
    let mut pv = released(&format!("/export/k8s/{dir}"));
    pv.metadata.name = Some(name.into());
    pv.metadata.uid = Some(format!("uid-{name}"));
    if !ours {
        pv.metadata.annotations = None;
    }
    pv.status.as_mut().unwrap().phase = Some("Bound".into());
    pv
}

#[test]
fn new_directories_never_meet_another_volume() {
    let pattern = [("pathPattern", "${.PVC.namespace}/${.PVC.annotations.dir}")];
    let claim = |dir: &str| with_ann(pvc(), "dir", dir);
    let cases: &[(&str, &str, Option<Relation>)] = &[
        ("monitoring/db", "db", Some(Relation::Same)),
        ("monitoring/db", "db/", Some(Relation::Same)),
        ("monitoring", "db", Some(Relation::Inside)),
        ("monitoring/db/wal", "db", Some(Relation::Contains)),
        ("monitoring/db2", "db", None),
        ("monitoring-db", "db", None),
        ("other/db", "db", None),
    ];
    for (other_dir, value, want) in cases {
        for ours in [true, false] {
            let other = volume_in("pvc-other", other_dir, ours);
            let got = plan_provision(
                &claim(value),
                Some(&class(&pattern)),
                &config(),
                None,
                &[&other],
            );
            match (want, got) {
                (None, ProvisionDecision::Provision(_)) => {}
                (
                    Some(want),
                    ProvisionDecision::Fail {
                        reason: reason @ FailReason::Overlap { relation, .. },
                    },
                ) => {
                    assert_eq!(relation, *want, "{other_dir} / {value}");
                    assert!(reason.to_string().contains("pvc-other"), "{reason}");
                }
                (want, got) => panic!("{other_dir} / {value}: want {want:?}, got {got:?}"),
            }
        }
    }
    // A static volume on another NFS server, not ours, does not count.
    let mut elsewhere = volume_in("pvc-other", "monitoring/db", false);
    elsewhere
        .spec
        .as_mut()
        .unwrap()
        .nfs
        .as_mut()
        .unwrap()
        .server = "10.9.9.9".into();
    assert!(matches!(
        plan_provision(
            &claim("db"),
            Some(&class(&pattern)),
            &config(),
            None,
            &[&elsewhere]
        ),
        ProvisionDecision::Provision(_)
    ));
    // Ours on a server spelled differently still counts.
    let mut spelled = volume_in("pvc-other", "monitoring/db", true);
    spelled.spec.as_mut().unwrap().nfs.as_mut().unwrap().server = "nfs.example.org".into();
    assert!(matches!(
        plan_provision(
            &claim("db"),
            Some(&class(&pattern)),
            &config(),
            None,
            &[&spelled]
        ),
        ProvisionDecision::Fail {
            reason: FailReason::Overlap { .. }
        }
    ));
}

#[test]
fn joined_names_that_collide_fail_instead_of_sharing() {
    // `a-b`/`c` and `a`/`b-c` under a `-`-joined pattern name the same directory.
    let joined = class(&[("pathPattern", "${.PVC.namespace}-${.PVC.name}")]);
    let claim = |ns: &str, name: &str, uid: &str| {
        let mut c = pvc();
        c.metadata.namespace = Some(ns.into());
        c.metadata.name = Some(name.into());
        c.metadata.uid = Some(uid.into());
        c
    };
    let first = provision(&claim("a-b", "c", "u1"), &joined);
    assert_eq!(first.dir.to_string(), "a-b-c");
    assert!(
        !first.private,
        "the reconciler must check an existing directory is empty"
    );
    let volumes = [&first.pv];
    match plan_provision(
        &claim("a", "b-c", "u2"),
        Some(&joined),
        &config(),
        None,
        &volumes,
    ) {
        ProvisionDecision::Fail {
            reason: FailReason::Overlap { relation, pv, .. },
        } => {
            assert_eq!(relation, Relation::Same);
            assert_eq!(pv, "pvc-u1");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn long_default_names_are_refused_not_truncated() {
    let mut claim = pvc();
    claim.metadata.name = Some("x".repeat(253));
    let reason = fail_reason(&claim, Some(&class(&[])));
    assert!(
        matches!(
            reason,
            FailReason::Path {
                error: PathError::ComponentTooLong(_),
                ..
            }
        ),
        "{reason:?}"
    );
}

#[test]
fn nfs_path_joining_and_parsing() {
    let d = RelDir::parse("ns/dir").unwrap();
    assert_eq!(nfs_path_for("/export/", &d), "/export/ns/dir");
    assert_eq!(nfs_path_for("/", &d), "/ns/dir");
    assert_eq!(nfs_path_for("/export//k8s/.", &d), "/export/k8s/ns/dir");
    assert_eq!(dir_from_nfs_path("/export/", "/export/ns/dir").unwrap(), d);
    assert_eq!(dir_from_nfs_path("/export", "/export//ns/dir/").unwrap(), d);
    assert_eq!(dir_from_nfs_path("/", "/ns/dir").unwrap(), d);
    assert_eq!(dir_from_nfs_path("/export", "/export"), None);
    assert_eq!(dir_from_nfs_path("/export", "/exported/x"), None);
    assert_eq!(dir_from_nfs_path("/export", "/export/../etc"), None);
    assert_eq!(dir_from_nfs_path("/export", "/export/a/../../etc/x"), None);
    assert_eq!(dir_from_nfs_path("/export", "/other/x"), None);
    assert_eq!(clean_path("a/../../b"), "../b");
    assert_eq!(clean_path(""), ".");
}

#[test]
fn quantities() {
    assert_eq!(quantity_bytes("100Gi"), Some(107_374_182_400));
    assert_eq!(quantity_bytes("1.5G"), Some(1_500_000_000));
    assert_eq!(quantity_bytes("500M"), Some(500_000_000));
    assert_eq!(quantity_bytes("1024"), Some(1024));
    assert_eq!(quantity_bytes("1e3"), None);
    assert_eq!(quantity_bytes("lots"), None);
}

// ----- deletion ---------------------------------------------------------------------------

fn released(path: &str) -> PersistentVolume {
    PersistentVolume {
        metadata: ObjectMeta {
            name: Some("pvc-1".into()),
            uid: Some("uid-1".into()),
            annotations: Some(map(&[(ANN_PROVISIONED_BY, NAME)])),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeSpec {
            nfs: Some(NFSVolumeSource {
                server: "10.0.0.5".into(),
                path: path.into(),
                read_only: None,
            }),
            persistent_volume_reclaim_policy: Some("Delete".into()),
            storage_class_name: Some("prometheus-data-db".into()),
            ..PersistentVolumeSpec::default()
        }),
        status: Some(PersistentVolumeStatus {
            phase: Some("Released".into()),
            ..PersistentVolumeStatus::default()
        }),
    }
}

fn delete_action(
    pv: &PersistentVolume,
    class: Option<&StorageClass>,
    others: &[&PersistentVolume],
) -> DirAction {
    match plan_delete(pv, class, &config(), others, "20250102T030405Z") {
        DeleteDecision::Delete(p) => {
            assert_eq!(p.pv_name, "pvc-1");
            assert_eq!(p.pv_uid.as_deref(), Some("uid-1"));
            p.action
        }
        other => panic!("expected Delete, got {other:?}"),
    }
}

#[test]
fn delete_parameter_table() {
    let archive = DirAction::Archive {
        names: archive_names("ns-claim-pvc-1", "20250102T030405Z"),
    };
    let retain = DirAction::Retain {
        reason: RetainReason::Requested,
    };
    // `onDelete` is matched exactly, as nfs-subdir-external-provisioner matches it; anything
    // else leaves the choice to `archiveOnDelete`, with a warning.
    type Params = &'static [(&'static str, &'static str)];
    let cases: &[(Params, &DirAction, bool)] = &[
        (&[], &archive, false),
        (&[("archiveOnDelete", "true")], &archive, false),
        (&[("archiveOnDelete", "false")], &DirAction::Remove, false),
        (&[("archiveOnDelete", "0")], &DirAction::Remove, false),
        (&[("onDelete", "delete")], &DirAction::Remove, false),
        (
            &[("onDelete", "delete"), ("archiveOnDelete", "true")],
            &DirAction::Remove,
            false,
        ),
        (&[("onDelete", "retain")], &retain, false),
        (
            &[("onDelete", "retain"), ("archiveOnDelete", "false")],
            &retain,
            false,
        ),
        (&[("onDelete", "Delete")], &archive, true),
        (
            &[("onDelete", "DELETE"), ("archiveOnDelete", "true")],
            &archive,
            true,
        ),
        (&[("onDelete", "Retain")], &archive, true),
        (&[("onDelete", "")], &archive, true),
    ];
    let pv = released("/export/k8s/ns-claim-pvc-1");
    for (params, want, warned) in cases {
        let DeleteDecision::Delete(plan) = plan_delete(
            &pv,
            Some(&class(params)),
            &config(),
            &[],
            "20250102T030405Z",
        ) else {
            panic!("{params:?}: not a delete plan");
        };
        assert_eq!(&plan.action, *want, "{params:?}");
        assert_eq!(
            plan.warning.is_some(),
            *warned,
            "{params:?}: {:?}",
            plan.warning
        );
        if let Some(w) = plan.warning {
            assert!(w.contains("onDelete"), "{w}");
        }
    }
    // Class gone: the defaults (archive) apply.
    assert_eq!(delete_action(&pv, None, &[]), archive);
    // Values we cannot read keep the data, saying why.
    for params in [
        &[("archiveOnDelete", "maybe")][..],
        &[("onDelete", "Delete"), ("archiveOnDelete", "false")][..],
    ] {
        match delete_action(&pv, Some(&class(params)), &[]) {
            DirAction::Retain { reason } => {
                let why = reason.to_string();
                assert!(why.contains("kept the directory"), "{why}");
            }
            other => panic!("{params:?}: {other:?}"),
        }
    }
}

#[test]
fn nested_directories_archive_in_place() {
    let pv = released("/export/k8s/monitoring/tsdb");
    match plan_delete(&pv, Some(&class(&[])), &config(), &[], "T") {
        DeleteDecision::Delete(p) => {
            assert_eq!(p.dir.to_string(), "monitoring/tsdb");
            let DirAction::Archive { names } = p.action else {
                panic!("not archive")
            };
            assert_eq!(names[0], "archived-tsdb");
            assert_eq!(names[1], "archived-tsdb-T");
            assert_eq!(names[2], "archived-tsdb-T-1");
            assert_eq!(names.len(), ARCHIVE_ATTEMPTS + 2);
            assert_eq!(
                p.dir.sibling(&names[0]).unwrap().to_string(),
                "monitoring/archived-tsdb"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn archive_names_fit_name_max() {
    let leaf = "é".repeat(127); // 254 bytes
    for n in archive_names(&leaf, "20250102T030405Z") {
        assert!(n.len() <= NAME_MAX, "{}", n.len());
        assert!(n.starts_with(ARCHIVE_PREFIX));
    }
}

#[test]
fn delete_skip_and_fail_table() {
    let cfg = config();
    let base = released("/export/k8s/d");
    let mut not_ours = base.clone();
    not_ours.metadata.annotations = Some(map(&[(ANN_PROVISIONED_BY, "other")]));
    let mut bound = base.clone();
    bound.status.as_mut().unwrap().phase = Some("Bound".into());
    let mut retain = base.clone();
    retain
        .spec
        .as_mut()
        .unwrap()
        .persistent_volume_reclaim_policy = Some("Retain".into());
    let mut deleting = base.clone();
    deleting.metadata.deletion_timestamp = Some(Time("2025-01-01T00:00:00Z".parse().unwrap()));
    for (name, pv, want) in [
        ("not ours", not_ours, DeleteSkip::NotOurs),
        ("bound", bound, DeleteSkip::NotReleased),
        ("retain", retain, DeleteSkip::NotReclaimDelete),
        ("deleting", deleting, DeleteSkip::Deleting),
    ] {
        assert_eq!(
            plan_delete(&pv, None, &cfg, &[], "T"),
            DeleteDecision::Skip { reason: want },
            "{name}"
        );
    }
    for (path, what) in [
        ("/export/k8s", "export root"),
        ("/export/k8s/", "export root"),
        ("/export/k8s/../secrets", "traversal"),
        ("/etc", "another path"),
        ("/export/k8sother/x", "prefix but not a parent"),
    ] {
        assert!(
            matches!(
                plan_delete(&released(path), None, &cfg, &[], "T"),
                DeleteDecision::Fail {
                    reason: DeleteFail::OutsideExport { .. }
                }
            ),
            "{what}: {path}"
        );
    }
    // Ours, on a server spelled differently (an IP address for a DNS name): still ours, as
    // the path is below NFS_PATH.
    let mut other_server = base.clone();
    other_server
        .spec
        .as_mut()
        .unwrap()
        .nfs
        .as_mut()
        .unwrap()
        .server = "nfs.example.org".into();
    match plan_delete(&other_server, None, &cfg, &[], "T") {
        DeleteDecision::Delete(p) => assert_eq!(p.dir.to_string(), "d"),
        other => panic!("{other:?}"),
    }
    let mut not_nfs = base;
    not_nfs.spec.as_mut().unwrap().nfs = None;
    assert!(matches!(
        plan_delete(&not_nfs, None, &cfg, &[], "T"),
        DeleteDecision::Fail {
            reason: DeleteFail::NotNfs(_)
        }
    ));
}

#[test]
fn shared_directories_are_retained() {
    let pv = released("/export/k8s/monitoring");
    let remove = class(&[("onDelete", "delete")]);
    for (other_dir, relation) in [
        ("/export/k8s//monitoring/", Relation::Same),
        ("/export/k8s/monitoring/tsdb", Relation::Contains),
    ] {
        let mut other = released(other_dir);
        other.metadata.name = Some("pvc-2".into());
        // Bound or released: as long as the other volume exists, its data stays.
        for phase in ["Bound", "Released"] {
            other.status.as_mut().unwrap().phase = Some(phase.into());
            match delete_action(&pv, Some(&remove), &[&pv, &other]) {
                DirAction::Retain {
                    reason:
                        RetainReason::Shared {
                            pv, relation: got, ..
                        },
                } => {
                    assert_eq!(pv, "pvc-2");
                    assert_eq!(got, relation);
                }
                other => panic!("{other_dir} {phase}: {other:?}"),
            }
        }
    }
    // Ours inside another volume's directory: neither removed nor moved.
    let inner = released("/export/k8s/monitoring/tsdb");
    let mut outer = released("/export/k8s/monitoring");
    outer.metadata.name = Some("pvc-2".into());
    assert!(matches!(
        delete_action(&inner, Some(&remove), &[&outer]),
        DirAction::Retain {
            reason: RetainReason::Shared {
                relation: Relation::Inside,
                ..
            }
        }
    ));
    // A neighbour with a longer name is not inside.
    let mut neighbour = released("/export/k8s/monitoring-2");
    neighbour.metadata.name = Some("pvc-2".into());
    assert_eq!(
        delete_action(&pv, Some(&remove), &[&neighbour]),
        DirAction::Remove
    );
}

#[test]
fn old_go_provisioner_volumes_are_recognised() {
    // Written by nfs-client-provisioner with NFS_PATH=/export/k8s/ (trailing slash, cleaned by Go).
    let pv = released("/export/k8s/monitoring-db-pvc-1");
    assert_eq!(
        volume_dir(&pv, &config()).unwrap().to_string(),
        "monitoring-db-pvc-1"
    );
    let mut cfg = config();
    cfg.nfs_path = "/export/k8s/".into();
    assert!(matches!(
        plan_delete(&pv, None, &cfg, &[], "T"),
        DeleteDecision::Delete(_)
    ));
}

// ----- properties -------------------------------------------------------------------------

/// Joins lexically, as the kernel would resolve it without symlinks, and reports whether the
/// result stays strictly below the root.
fn stays_under_root(dir: &RelDir) -> bool {
    let mut depth: i64 = 0;
    for c in dir.components() {
        match c.as_str() {
            "." | "" => return false,
            ".." => depth -= 1,
            _ => depth += 1,
        }
        if depth <= 0 {
            return false;
        }
        if c.contains('/') || c.contains('\0') {
            return false;
        }
    }
    depth > 0
}

fn value_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("..".to_owned()),
        Just(".".to_owned()),
        Just("/".to_owned()),
        Just("../..".to_owned()),
        Just("/etc/passwd".to_owned()),
        "[a-z0-9./-]{0,12}",
        any::<String>(),
    ]
}

fn pattern_strategy() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("${.PVC.namespace}".to_owned()),
        Just("${.PVC.name}".to_owned()),
        Just("${.PVC.labels.a}".to_owned()),
        Just("${.PVC.annotations.b}".to_owned()),
        Just("${.PVC.annotations.missing}".to_owned()),
        Just("/".to_owned()),
        Just("..".to_owned()),
        Just(".".to_owned()),
        Just("${".to_owned()),
        "[a-z.-]{0,6}",
        any::<String>(),
    ];
    proptest::collection::vec(piece, 0..8).prop_map(|v| v.concat())
}

fn tenant_pattern_strategy() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("${.PVC.namespace}".to_owned()),
        Just("${.PVC.name}".to_owned()),
        Just("${.PVC.labels.l}".to_owned()),
        Just("${.PVC.annotations.a}".to_owned()),
        Just("/".to_owned()),
        Just("-".to_owned()),
        "[a-z]{0,3}",
    ];
    proptest::collection::vec(piece, 0..6).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn no_pattern_escapes_the_root(
        pattern in pattern_strategy(),
        ns in value_strategy(),
        name in value_strategy(),
        label in value_strategy(),
        ann in value_strategy(),
    ) {
        let labels = BTreeMap::from([("a".to_owned(), label)]);
        let annotations = BTreeMap::from([("b".to_owned(), ann)]);
        let vars = PatternVars { namespace: &ns, name: &name, labels: Some(&labels), annotations: Some(&annotations) };
        if let Ok(Some(dir)) = expand_path_pattern(&pattern, vars) {
            prop_assert!(stays_under_root(&dir), "{pattern:?} -> {dir:?}");
            let nfs = nfs_path_for("/export/k8s", &dir);
            prop_assert!(nfs.starts_with("/export/k8s/"), "{nfs}");
            // The PV path reads back to the same directory (what deletion will touch).
            prop_assert_eq!(dir_from_nfs_path("/export/k8s", &nfs), Some(dir));
        }
    }

    #[test]
    fn full_plan_never_escapes(
        pattern in pattern_strategy(),
        ns in "[a-z0-9-]{1,20}",
        name in value_strategy(),
        ann in value_strategy(),
    ) {
        let mut claim = with_ann(pvc(), "b", &ann);
        claim.metadata.namespace = Some(ns);
        claim.metadata.name = Some(name);
        if let ProvisionDecision::Provision(p) = plan_provision(&claim, Some(&class(&[("pathPattern", &pattern)])), &config(), None, &[]) {
            prop_assert!(stays_under_root(&p.dir));
            let path = p.pv.spec.unwrap().nfs.unwrap().path;
            prop_assert_eq!(dir_from_nfs_path("/export/k8s", &path), Some(p.dir));
        }
    }

    #[test]
    fn delete_never_targets_outside_the_export(path in "(/export/k8s)?[a-z./]{0,30}") {
        if let DeleteDecision::Delete(p) = plan_delete(&released(&path), None, &config(), &[], "T") {
            prop_assert!(stays_under_root(&p.dir), "{path} -> {}", p.dir);
            if let DirAction::Archive { names } = &p.action {
                for n in names {
                    prop_assert!(p.dir.sibling(n).is_ok());
                }
            }
        }
    }

    /// Claims from random namespaces (names that collide when joined with `-` among them),
    /// names, labels and annotations, under random classes and patterns, provisioned one after
    /// the other as the reconciler does (each new PV joins the known volumes): no two volumes
    /// ever get directories that are equal or nested.
    #[test]
    fn no_two_volumes_share_or_nest_directories(
        patterns in proptest::collection::vec(proptest::option::of(tenant_pattern_strategy()), 1..4),
        claims in proptest::collection::vec(
            (0usize..4, "(a|a-b|b|b-c|c|monitoring)", "(c|b-c|db|x/y|[a-z]{1,3})", "[a-z/.-]{0,6}", "[a-z/.-]{0,6}"),
            1..12,
        ),
    ) {
        let classes: Vec<StorageClass> = patterns
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut c = match p {
                    Some(p) => class(&[("pathPattern", p)]),
                    None => class(&[]),
                };
                c.metadata.name = Some(format!("class-{i}"));
                c
            })
            .collect();
        let mut volumes: Vec<PersistentVolume> = Vec::new();
        for (i, (class_index, ns, name, label, ann)) in claims.iter().enumerate() {
            let class = &classes[class_index % classes.len()];
            let mut claim = with_ann(pvc(), "a", ann);
            claim.metadata.namespace = Some(ns.clone());
            claim.metadata.name = Some(name.clone());
            claim.metadata.uid = Some(format!("uid-{i}"));
            claim.metadata.labels = Some(map(&[("l", label)]));
            claim.spec.as_mut().unwrap().storage_class_name = class.metadata.name.clone();
            let known: Vec<&PersistentVolume> = volumes.iter().collect();
            if let ProvisionDecision::Provision(p) = plan_provision(&claim, Some(class), &config(), None, &known) {
                volumes.push(p.pv);
            }
        }
        let dirs: Vec<RelDir> = volumes
            .iter()
            .map(|v| dir_from_nfs_path("/export/k8s", &v.spec.as_ref().unwrap().nfs.as_ref().unwrap().path).unwrap())
            .collect();
        for (i, a) in dirs.iter().enumerate() {
            for b in &dirs[i + 1..] {
                prop_assert_eq!(relation(a, b), None, "{} and {}", a, b);
            }
        }
    }

    #[test]
    fn rel_dir_parse_is_safe(s in any::<String>()) {
        if let Ok(d) = RelDir::parse(&s) {
            prop_assert!(stays_under_root(&d));
        }
    }
}
