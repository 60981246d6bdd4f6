//! The scenarios, in the order they run on one cluster. Each asserts on the API objects (read
//! back with the pinned kubectl) and on the provisioner's NFS root; each uses namespaces of its
//! own, so one failing leaves the others meaningful.

use std::{
    fs,
    path::PathBuf,
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::harness::{
    Cluster, NFS_PATH, NFS_SERVER, PROVISIONER_NAME, Proc, WEBHOOK_CONFIG, b64, free_port,
    http_get, repo, wait_for, write_atomic,
};

/// A named scenario.
pub struct Scenario {
    /// Name, used to select scenarios on the command line.
    pub name: &'static str,
    /// The body; panics on failure.
    pub run: fn(&mut Cluster),
}

/// Every scenario, in running order.
pub const ALL: &[Scenario] = &[
    Scenario {
        name: "story",
        run: story,
    },
    Scenario {
        name: "apiserver-audit",
        run: apiserver_audit,
    },
    Scenario {
        name: "statefulset",
        run: statefulset,
    },
    Scenario {
        name: "reapply",
        run: reapply,
    },
    Scenario {
        name: "dry-run",
        run: dry_run,
    },
    Scenario {
        name: "outage",
        run: outage,
    },
    Scenario {
        name: "claim-deletion",
        run: claim_deletion,
    },
    Scenario {
        name: "leader-failover",
        run: leader_failover,
    },
    Scenario {
        name: "upstream-swap",
        run: upstream_swap,
    },
    Scenario {
        name: "mount-failover",
        run: mount_failover,
    },
    Scenario {
        name: "cert-rotation",
        run: cert_rotation,
    },
];

/// How long a claim may take to bind once a provisioner leads.
const BIND: Duration = Duration::from_secs(60);
/// The provisioner's Lease duration and retry period (its defaults).
const LEASE_DURATION: Duration = Duration::from_secs(15);
const LEASE_RETRY: Duration = Duration::from_secs(2);
/// The StorageClass of `deploy/` and the policy's default.
const CLASS: &str = "prometheus-data-db";

// ---------------------------------------------------------------------------------------------
// Helpers

fn apply(c: &Cluster, object: &Value) -> crate::harness::Kubectl {
    let out = c.kubectl_stdin(&["apply", "-f", "-"], &object.to_string());
    assert!(out.ok, "kubectl apply failed: {}", out.stderr);
    out
}

fn namespace(c: &Cluster, name: &str) {
    apply(
        c,
        &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
    );
}

/// `deploy/examples/prometheus-without-storage.yaml`, as parsed.
fn example_prometheus() -> Value {
    let path = repo().join("deploy/examples/prometheus-without-storage.yaml");
    let text = fs::read_to_string(&path).expect("read the example Prometheus");
    serde_saphyr::from_str(&text).expect("the example Prometheus is YAML")
}

/// The example Prometheus renamed into `namespace/name`, written to a manifest file.
fn prometheus_manifest(c: &Cluster, namespace: &str, name: &str) -> PathBuf {
    let mut p = example_prometheus();
    p["metadata"]["name"] = json!(name);
    p["metadata"]["namespace"] = json!(namespace);
    let path = c.dir.join(format!("{namespace}-{name}.json"));
    fs::write(&path, p.to_string()).expect("write manifest");
    path
}

fn path_str(p: &std::path::Path) -> String {
    p.display().to_string()
}

/// Waits until claim `namespace/name` is Bound; returns it.
fn wait_bound(c: &Cluster, namespace: &str, name: &str, limit: Duration) -> Value {
    wait_for(
        &format!("claim {namespace}/{name} Bound"),
        limit,
        || {
            format!(
                "claim now: {:?}\n{}",
                c.try_get("pvc", Some(namespace), name)
                    .ok()
                    .flatten()
                    .map(|p| p["status"].clone()),
                c.tails()
            )
        },
        || {
            c.try_get("pvc", Some(namespace), name)
                .ok()
                .flatten()
                .filter(|p| p["status"]["phase"] == "Bound")
        },
    )
}

/// Checks that a Bound claim's PV was made by our provisioner, with upstream's directory name
/// `<namespace>-<claim>-<pv>` under the NFS root; returns that directory name.
fn check_volume(c: &Cluster, claim: &Value) -> String {
    let namespace = claim["metadata"]["namespace"].as_str().expect("namespace");
    let name = claim["metadata"]["name"].as_str().expect("name");
    let pv_name = claim["spec"]["volumeName"].as_str().expect("volumeName");
    let pv = c.get("pv", None, pv_name).expect("the bound PV exists");
    assert_eq!(
        pv["metadata"]["annotations"]["pv.kubernetes.io/provisioned-by"], PROVISIONER_NAME,
        "PV {pv_name} was not made by our provisioner: {pv}"
    );
    let dir = format!("{namespace}-{name}-{pv_name}");
    assert_eq!(pv["spec"]["nfs"]["server"], NFS_SERVER, "{pv}");
    assert_eq!(
        pv["spec"]["nfs"]["path"],
        format!("{NFS_PATH}/{dir}"),
        "{pv}"
    );
    assert_eq!(pv["spec"]["claimRef"]["name"], name);
    assert!(
        c.nfs_root.join(&dir).is_dir(),
        "directory {dir} missing under the NFS root"
    );
    dir
}

/// Waits (10 s at most) until `find` finds what it looks for in the API server's audit log,
/// which is written after the response.
fn wait_audit<T>(c: &Cluster, what: &str, find: impl Fn(&[Value]) -> Option<T>) -> T {
    wait_for(
        what,
        Duration::from_secs(10),
        || c.tails(),
        || find(&c.audit_events()),
    )
}

/// kubectl printed our warning for a Prometheus given the policy's default storage.
fn assert_added(stderr: &str, namespace: &str, name: &str) {
    let expected = format!(
        "Warning: kube-persist: added 100Gi volume on StorageClass {CLASS} \
         (Prometheus {namespace}/{name})"
    );
    assert_eq!(
        warning_of(stderr),
        Some(expected.as_str()),
        "kubectl's output: {stderr}"
    );
}

fn warning_of(stderr: &str) -> Option<&str> {
    stderr
        .lines()
        .find(|l| l.starts_with("Warning: kube-persist:"))
}

// ---------------------------------------------------------------------------------------------
// 1. The original story

/// `kubectl apply` of the example Prometheus without storage: our warning in kubectl's output,
/// storage and extras stored, the operator's StatefulSet with the claim template, both
/// replicas' claims Bound to PVs our provisioner made.
fn story(c: &mut Cluster) {
    namespace(c, "monitoring");
    // The example names this ServiceAccount (kube-prometheus creates it); without it the
    // StatefulSet controller cannot create the pods, and stops at the first claim.
    apply(
        c,
        &json!({"apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": "prometheus-k8s", "namespace": "monitoring"}}),
    );
    let example = repo().join("deploy/examples/prometheus-without-storage.yaml");
    let out = c.kubectl(&["apply", "-f", &path_str(&example)]);
    assert!(out.ok, "kubectl apply: {}", out.stderr);
    assert_added(&out.stderr, "monitoring", "k8s");

    let p = c
        .get("prometheus", Some("monitoring"), "k8s")
        .expect("stored");
    let claim = &p["spec"]["storage"]["volumeClaimTemplate"]["spec"];
    assert_eq!(claim["storageClassName"], CLASS, "{p}");
    assert_eq!(claim["resources"]["requests"]["storage"], "100Gi", "{p}");
    assert_eq!(claim["accessModes"], json!(["ReadWriteOnce"]), "{p}");
    assert_eq!(p["spec"]["retentionSize"], "85GiB", "{p}");
    assert_eq!(
        p["spec"]["persistentVolumeClaimRetentionPolicy"],
        json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
        "{p}"
    );
    // What the manifest set is still there, unchanged.
    assert_eq!(p["spec"]["retention"], "15d");
    assert_eq!(p["spec"]["replicas"], 2);

    let sts = wait_for(
        "the operator's StatefulSet monitoring/prometheus-k8s",
        Duration::from_secs(90),
        || c.tails(),
        || {
            c.try_get("statefulset", Some("monitoring"), "prometheus-k8s")
                .ok()
                .flatten()
        },
    );
    let templates = sts["spec"]["volumeClaimTemplates"]
        .as_array()
        .expect("the operator's StatefulSet has volumeClaimTemplates");
    assert_eq!(templates.len(), 1, "{sts}");
    assert_eq!(templates[0]["metadata"]["name"], "prometheus-k8s-db");
    assert_eq!(templates[0]["spec"]["storageClassName"], CLASS);
    assert_eq!(
        sts["spec"]["persistentVolumeClaimRetentionPolicy"],
        json!({"whenDeleted": "Retain", "whenScaled": "Retain"})
    );

    for ordinal in 0..2 {
        let name = format!("prometheus-k8s-db-prometheus-k8s-{ordinal}");
        let claim = wait_bound(c, "monitoring", &name, BIND);
        assert_eq!(claim["spec"]["storageClassName"], CLASS);
        check_volume(c, &claim);
    }
}

// ---------------------------------------------------------------------------------------------
// 9. The API server's own audit log (right after the story, which it reads)

/// The API server records our audit annotations, prefixed with the webhook's name, and that
/// the webhook mutated the object, in its audit log.
fn apiserver_audit(c: &mut Cluster) {
    let create = wait_audit(c, "the audit event of the Prometheus create", |events| {
        events
            .iter()
            .find(|e| {
                e["verb"] == "create"
                    && e["stage"] == "ResponseComplete"
                    && e["objectRef"]["resource"] == "prometheuses"
                    && e["objectRef"]["namespace"] == "monitoring"
                    && e["objectRef"]["name"] == "k8s"
            })
            .cloned()
    });
    let annotations = &create["annotations"];
    assert_eq!(
        annotations["mutate.kube-persist.io/decision"], "mutated",
        "{create}"
    );
    assert_eq!(
        annotations["mutate.kube-persist.io/storage"],
        format!("{CLASS}/100Gi"),
        "{create}"
    );
    let round: Value = serde_json::from_str(
        annotations["mutation.webhook.admission.k8s.io/round_0_index_0"]
            .as_str()
            .expect("the dispatcher's mutation annotation"),
    )
    .expect("JSON annotation");
    assert_eq!(
        round,
        json!({"configuration": WEBHOOK_CONFIG, "webhook": "mutate.kube-persist.io", "mutated": true})
    );
    assert_eq!(create["responseStatus"]["code"], 201);
}

// ---------------------------------------------------------------------------------------------
// 2. A plain StatefulSet

/// Only the disk-backed data `emptyDir` becomes a claim; the `medium: Memory` one and `tmp`
/// stay, and the claim binds.
fn statefulset(c: &mut Cluster) {
    namespace(c, "apps");
    let sts = json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "web", "namespace": "apps"},
        "spec": {
            "serviceName": "web", "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [{
                        "name": "app", "image": "registry.invalid/app:1",
                        "volumeMounts": [
                            {"name": "data", "mountPath": "/data"},
                            {"name": "ram", "mountPath": "/ram"},
                            {"name": "tmp", "mountPath": "/tmp"}
                        ]
                    }],
                    "volumes": [
                        {"name": "data", "emptyDir": {}},
                        {"name": "ram", "emptyDir": {"medium": "Memory"}},
                        {"name": "tmp", "emptyDir": {}}
                    ]
                }
            }
        }
    });
    let out = apply(c, &sts);
    assert!(
        warning_of(&out.stderr).is_some(),
        "no warning: {}",
        out.stderr
    );

    let stored = c.get("statefulset", Some("apps"), "web").expect("stored");
    let templates = stored["spec"]["volumeClaimTemplates"]
        .as_array()
        .expect("volumeClaimTemplates added");
    let names: Vec<&str> = templates
        .iter()
        .map(|t| t["metadata"]["name"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(names, ["data"], "{stored}");
    assert_eq!(templates[0]["spec"]["storageClassName"], CLASS);
    let volumes: Vec<&str> = stored["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .map(|v| v["name"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(volumes, ["ram", "tmp"], "{stored}");

    let claim = wait_bound(c, "apps", "data-web-0", BIND);
    check_volume(c, &claim);
}

// ---------------------------------------------------------------------------------------------
// 3. Applying the original manifest again

/// Client-side apply, server-side apply and replace of the manifest without storage keep the
/// storage; a second apply changes nothing; the webhook is never reinvoked.
fn reapply(c: &mut Cluster) {
    let ns = "gitops";
    namespace(c, ns);
    let manifest = path_str(&prometheus_manifest(c, ns, "gitops"));
    let get = || c.get("prometheus", Some(ns), "gitops").expect("stored");

    let out = c.kubectl(&["apply", "-f", &manifest]);
    assert!(out.ok, "{}", out.stderr);
    let created = get();
    let spec = created["spec"].clone();
    assert!(
        spec["storage"]["volumeClaimTemplate"].is_object(),
        "storage added"
    );
    assert!(spec["retentionSize"].is_string(), "retentionSize added");

    // Each way of sending the manifest (which has none of what kube-persist added) leaves the
    // spec as it was: storage and extras. Run twice, the second changes nothing (the status,
    // which the operator writes, may change; the generation may not).
    let modes: [(&str, &[&str]); 3] = [
        ("client-side apply", &["apply", "-f"]),
        ("server-side apply", &["apply", "--server-side", "-f"]),
        ("replace", &["replace", "-f"]),
    ];
    for (mode, args) in modes {
        let mut cmd = args.to_vec();
        cmd.push(&manifest);
        let out = c.kubectl(&cmd);
        assert!(out.ok, "{mode}: {}", out.stderr);
        let after = get();
        assert_eq!(after["spec"], spec, "{mode} changed the spec");
        let again = c.kubectl(&cmd);
        assert!(again.ok, "{mode} again: {}", again.stderr);
        let after_again = get();
        assert_eq!(after_again["spec"], spec, "{mode} again changed the spec");
        assert_eq!(
            after_again["metadata"]["generation"], created["metadata"]["generation"],
            "{mode}: the generation moved"
        );
        if mode == "client-side apply" {
            assert!(again.stdout.contains("unchanged"), "{}", again.stdout);
        }
    }

    // Every write went through the webhook in one round. `kubectl replace` (an update) drops
    // what kube-persist added and gets it back as a patch. Server-side apply (a patch) keeps
    // it: the fields added at creation belong to the client-side apply's manager, which
    // kubectl's migration to server-side apply does not take over.
    let writes = wait_audit(c, "audit events of the re-applies", |events| {
        let writes: Vec<Value> = events
            .iter()
            .filter(|e| {
                e["objectRef"]["namespace"] == ns
                    && e["objectRef"]["resource"] == "prometheuses"
                    && e["objectRef"]["subresource"].is_null()
                    && (e["verb"] == "patch" || e["verb"] == "update")
            })
            .cloned()
            .collect();
        let restored = writes.iter().any(|e| {
            e["verb"] == "update"
                && e["annotations"]["mutate.kube-persist.io/decision"] == "mutated"
        });
        restored.then_some(writes)
    });
    for e in &writes {
        let annotations = e["annotations"].as_object().cloned().unwrap_or_default();
        assert!(
            annotations.contains_key("mutation.webhook.admission.k8s.io/round_0_index_0"),
            "a write did not reach the webhook: {e}"
        );
        assert!(
            annotations.keys().all(|k| !k.contains("round_1")),
            "webhook reinvoked: {e}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Server-side dry run

/// `kubectl apply --dry-run=server`: the warning reaches kubectl, nothing is stored, and the
/// decision is audited as a dry run.
fn dry_run(c: &mut Cluster) {
    let ns = "gitops";
    namespace(c, ns);
    let manifest = path_str(&prometheus_manifest(c, ns, "dry"));
    let out = c.kubectl(&["apply", "--dry-run=server", "-f", &manifest]);
    assert!(out.ok, "{}", out.stderr);
    assert!(out.stdout.contains("(server dry run)"), "{}", out.stdout);
    assert_added(&out.stderr, "gitops", "dry");
    assert!(
        c.get("prometheus", Some(ns), "dry").is_none(),
        "a dry run stored the object"
    );
    let decision = wait_for(
        "the webhook's audit record of the dry run",
        Duration::from_secs(10),
        || c.tails(),
        || {
            c.webhook_decisions()
                .into_iter()
                .find(|d| d["name"] == "dry" && d["namespace"] == ns)
        },
    );
    assert_eq!(decision["dryRun"], true, "{decision}");
    assert_eq!(decision["decision"], "mutated", "{decision}");
}

// ---------------------------------------------------------------------------------------------
// 5. The webhook down, failurePolicy: Ignore

/// With the webhook stopped the object is admitted unchanged (the API server records the
/// failed-open call), and `kube-persist scan` against this API server reports it (exit 1).
fn outage(c: &mut Cluster) {
    assert_eq!(c.webhook_config["webhooks"][0]["failurePolicy"], "Ignore");
    let ns = "outage";
    namespace(c, ns);
    c.stop_webhook();
    let manifest = path_str(&prometheus_manifest(c, ns, "unprotected"));
    let out = c.kubectl(&["apply", "-f", &manifest]);
    // Started again before asserting, so a failure here does not cascade.
    c.start_webhook();
    assert!(
        out.ok,
        "the API server refused while the webhook was down: {}",
        out.stderr
    );
    assert!(warning_of(&out.stderr).is_none(), "{}", out.stderr);
    let stored = c
        .get("prometheus", Some(ns), "unprotected")
        .expect("stored");
    assert!(stored["spec"]["storage"].is_null(), "{stored}");

    wait_audit(
        c,
        "the API server's record of the failed-open call",
        |events| {
            events
                .iter()
                .any(|e| {
                    e["objectRef"]["name"] == "unprotected"
                        && e["verb"] == "create"
                        && e["annotations"].as_object().is_some_and(|a| {
                            a.keys()
                                .any(|k| k.starts_with("failed-open.mutation.webhook"))
                        })
                })
                .then_some(())
        },
    );

    let scan = c.kube_persist(&["scan", "-n", ns]);
    assert_eq!(
        scan.code,
        Some(1),
        "scan's exit code for an at-risk object: {}{}",
        scan.stdout,
        scan.stderr
    );
    assert!(scan.stdout.contains("unprotected"), "{}", scan.stdout);
}

// ---------------------------------------------------------------------------------------------
// 6. Deleting claims

/// Under a class with upstream's defaults (`reclaimPolicy: Delete`, no `archiveOnDelete` or
/// `onDelete`), deleting the claim deletes the PV and archives the directory; under
/// `reclaimPolicy: Retain`, the PV and the directory are kept.
fn claim_deletion(c: &mut Cluster) {
    let ns = "claims";
    namespace(c, ns);
    for (class, reclaim) in [("kp-defaults", "Delete"), ("kp-retain", "Retain")] {
        apply(
            c,
            &json!({
                "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                "metadata": {"name": class},
                "provisioner": PROVISIONER_NAME,
                "reclaimPolicy": reclaim,
                "volumeBindingMode": "Immediate"
            }),
        );
    }
    let claim = |name: &str, class: &str| {
        json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"storageClassName": class, "accessModes": ["ReadWriteOnce"],
                     "resources": {"requests": {"storage": "1Gi"}}}
        })
    };
    apply(c, &claim("archived", "kp-defaults"));
    apply(c, &claim("retained", "kp-retain"));
    let archived = wait_bound(c, ns, "archived", BIND);
    let retained = wait_bound(c, ns, "retained", BIND);
    let archived_dir = check_volume(c, &archived);
    let retained_dir = check_volume(c, &retained);
    fs::write(c.nfs_root.join(&archived_dir).join("data"), "metrics").expect("write data");
    let archived_pv = archived["spec"]["volumeName"]
        .as_str()
        .expect("pv")
        .to_string();
    let retained_pv = retained["spec"]["volumeName"]
        .as_str()
        .expect("pv")
        .to_string();

    let out = c.kubectl(&[
        "-n",
        ns,
        "delete",
        "pvc",
        "archived",
        "retained",
        "--wait=true",
    ]);
    assert!(out.ok, "{}", out.stderr);

    wait_for(
        &format!("PV {archived_pv} deleted"),
        BIND,
        || c.tails(),
        || (c.try_get("pv", None, &archived_pv) == Ok(None)).then_some(()),
    );
    let archive = c.nfs_root.join(format!("archived-{archived_dir}"));
    assert!(archive.is_dir(), "no {} after deletion", archive.display());
    assert_eq!(
        fs::read_to_string(archive.join("data")).ok().as_deref(),
        Some("metrics"),
        "the archived directory lost its data"
    );
    assert!(!c.nfs_root.join(&archived_dir).exists());

    let released = wait_for(
        &format!("PV {retained_pv} Released"),
        BIND,
        || c.tails(),
        || {
            c.try_get("pv", None, &retained_pv)
                .ok()
                .flatten()
                .filter(|pv| pv["status"]["phase"] == "Released")
        },
    );
    assert_eq!(released["spec"]["persistentVolumeReclaimPolicy"], "Retain");
    // Give the provisioner time to (wrongly) act on the released PV before checking.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        c.nfs_root.join(&retained_dir).is_dir(),
        "retained directory removed"
    );
    assert!(!c.nfs_root.join(format!("archived-{retained_dir}")).exists());
    assert!(
        c.get("pv", None, &retained_pv).is_some(),
        "retained PV deleted"
    );
}

// ---------------------------------------------------------------------------------------------
// 7. Two provisioners, the leader killed

/// Two provisioners share the Lease. The leader is frozen (SIGSTOP) while claims are created,
/// so they stay Pending, then killed (SIGKILL, no release): the other takes the Lease within
/// its duration and binds the claims.
fn leader_failover(c: &mut Cluster) {
    let ns = "failover";
    namespace(c, ns);
    let second = c.start_provisioner("provisioner-b");
    c.provisioners.push(second);

    let lease_name = PROVISIONER_NAME.replace('/', "-");
    let holder = wait_for(
        "a provisioner holds the Lease",
        Duration::from_secs(30),
        || c.tails(),
        || {
            c.try_get("lease", Some("kube-persist"), &lease_name)
                .ok()
                .flatten()
                .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
                .filter(|h| !h.is_empty())
        },
    );
    let identities: Vec<Option<String>> = c
        .provisioners
        .iter()
        .map(Cluster::provisioner_identity)
        .collect();
    let leader = identities
        .iter()
        .position(|i| i.as_deref() == Some(holder.as_str()))
        .unwrap_or_else(|| panic!("Lease holder {holder} is none of {identities:?}"));

    c.provisioners[leader].signal("STOP");
    let names = ["failover-0", "failover-1"];
    for name in names {
        apply(
            c,
            &json!({
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"storageClassName": CLASS, "accessModes": ["ReadWriteOnce"],
                         "resources": {"requests": {"storage": "1Gi"}}}
            }),
        );
    }
    std::thread::sleep(Duration::from_secs(2));
    for name in names {
        let claim = c.get("pvc", Some(ns), name).expect("claim");
        assert_eq!(
            claim["status"]["phase"], "Pending",
            "bound with the leader frozen: {claim}"
        );
    }

    let killed_at = Instant::now();
    let mut dead = c.provisioners.remove(leader);
    dead.kill();
    for name in names {
        let claim = wait_bound(c, ns, name, LEASE_DURATION + LEASE_RETRY + BIND);
        check_volume(c, &claim);
    }
    let took = killed_at.elapsed();
    eprintln!(
        "leader-failover: claims bound {:.1} s after the leader was killed",
        took.as_secs_f64()
    );
    let margin = Duration::from_secs(5);
    assert!(
        took <= LEASE_DURATION + LEASE_RETRY + margin,
        "takeover took {:.1} s, more than the Lease duration ({} s) + retry ({} s) + {} s",
        took.as_secs_f64(),
        LEASE_DURATION.as_secs(),
        LEASE_RETRY.as_secs(),
        margin.as_secs()
    );
    let survivor = c
        .provisioners
        .iter()
        .find_map(Cluster::provisioner_identity);
    let new_holder = c
        .get("lease", Some("kube-persist"), &lease_name)
        .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string));
    assert_eq!(
        new_holder, survivor,
        "the Lease did not move to the survivor"
    );
}

// ---------------------------------------------------------------------------------------------
// 7b. Swapping nfs-subdir-external-provisioner for kube-persist, under upstream's RBAC

/// nfs-subdir-external-provisioner's `deploy/rbac.yaml`, in namespace `ns` (its ClusterRole
/// and binding named after `ns`, so scenarios do not share them).
fn upstream_rbac(ns: &str) -> Value {
    let sa = json!([{"kind": "ServiceAccount", "name": "nfs-client-provisioner", "namespace": ns}]);
    json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": "nfs-client-provisioner", "namespace": ns}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": format!("nfs-client-provisioner-runner-{ns}")},
         "rules": [
            {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["persistentvolumes"],
             "verbs": ["get", "list", "watch", "create", "delete"]},
            {"apiGroups": [""], "resources": ["persistentvolumeclaims"],
             "verbs": ["get", "list", "watch", "update"]},
            {"apiGroups": ["storage.k8s.io"], "resources": ["storageclasses"],
             "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "update", "patch"]}
         ]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": format!("run-nfs-client-provisioner-{ns}")},
         "subjects": sa,
         "roleRef": {"kind": "ClusterRole", "name": format!("nfs-client-provisioner-runner-{ns}"),
                     "apiGroup": "rbac.authorization.k8s.io"}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": "leader-locking-nfs-client-provisioner", "namespace": ns},
         "rules": [{"apiGroups": [""], "resources": ["endpoints"],
                    "verbs": ["get", "list", "watch", "create", "update", "patch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "leader-locking-nfs-client-provisioner", "namespace": ns},
         "subjects": sa,
         "roleRef": {"kind": "Role", "name": "leader-locking-nfs-client-provisioner",
                     "apiGroup": "rbac.authorization.k8s.io"}}
    ]})
}

/// The holder in upstream's Endpoints lock `ns/name`, if any.
fn endpoints_holder(c: &Cluster, ns: &str, name: &str) -> Option<String> {
    let ep = c.try_get("endpoints", Some(ns), name).ok().flatten()?;
    let text =
        ep["metadata"]["annotations"]["control-plane.alpha.kubernetes.io/leader"].as_str()?;
    let record: Value = serde_json::from_str(text).ok()?;
    record["holderIdentity"]
        .as_str()
        .map(str::to_string)
        .filter(|h| !h.is_empty())
}

/// A rolling swap of an nfs-subdir-external-provisioner Deployment to kube-persist's image,
/// with upstream's RBAC and nothing else: the old pod (client-go's leader election on the
/// `endpoints` lock, as upstream's library runs it) leads; kube-persist starts with no
/// arguments and upstream's environment, as that Deployment starts the image, as the
/// ServiceAccount. It provisions nothing while the old pod renews; once the old pod is killed
/// it takes the lock only after the record expires, then binds the claim, with core Events.
fn upstream_swap(c: &mut Cluster) {
    let ns = "nfs-upstream";
    let claims = "upstream-claims";
    let provisioner = "example.com/upstream-nfs";
    let lock = "example.com-upstream-nfs";
    namespace(c, ns);
    namespace(c, claims);
    apply(c, &upstream_rbac(ns));
    apply(
        c,
        &json!({
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": "kp-upstream"},
            "provisioner": provisioner,
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "Immediate"
        }),
    );
    let kubeconfig = c.service_account_kubeconfig(ns, "nfs-client-provisioner");

    // The old pod.
    let old_identity = "nfs-client-provisioner-6c8d9f-x2k4p_8e1f0c2a-3b4d-4e5f-9a6b-7c8d9e0f1a2b";
    let mut cmd = std::process::Command::new(c.oldleader());
    cmd.args([
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--namespace={ns}"),
        format!("--provisioner={provisioner}"),
        format!("--identity={old_identity}"),
    ]);
    let mut old = Proc::start("oldleader", cmd, &c.logs);
    wait_for(
        "the old pod leading on the Endpoints lock",
        Duration::from_secs(30),
        || old.tail(30),
        || {
            (old_log_leads(&old) && endpoints_holder(c, ns, lock).as_deref() == Some(old_identity))
                .then_some(())
        },
    );

    // kube-persist as the new pod: no arguments, upstream's environment, the ServiceAccount.
    let root = c.dir.join("nfs-upstream");
    fs::create_dir_all(&root).expect("create the NFS root");
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut cmd = std::process::Command::new(c.kube_persist_bin());
    cmd.env("KUBECONFIG", &kubeconfig)
        .env("PROVISIONER_NAME", provisioner)
        .env("NFS_SERVER", NFS_SERVER)
        .env("NFS_PATH", NFS_PATH)
        .env("POD_NAMESPACE", ns)
        .env("KUBE_PERSIST_NFS_ROOT", &root)
        .env("KUBE_PERSIST_PROVISIONER_ADMIN_LISTEN", admin.to_string())
        .env("KUBE_PERSIST_LOG_FORMAT", "json")
        .env_remove("KUBE_PERSIST_LEASE_NAMESPACE")
        .env_remove("ENABLE_LEADER_ELECTION");
    let mut new = Proc::start("kube-persist-upstream", cmd, &c.logs);
    new.wait_ready(
        "kube-persist (no arguments) ready (/readyz)",
        Duration::from_secs(30),
        || http_get(admin, "/readyz").filter(|(s, _)| *s == 200),
    );

    apply(
        c,
        &json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "swapped", "namespace": claims},
            "spec": {"storageClassName": "kp-upstream", "accessModes": ["ReadWriteMany"],
                     "resources": {"requests": {"storage": "1Gi"}}}
        }),
    );
    // Both pods run: the old one renews, kube-persist waits.
    std::thread::sleep(LEASE_DURATION / 2);
    let claim = c.get("pvc", Some(claims), "swapped").expect("claim");
    assert_eq!(
        claim["status"]["phase"], "Pending",
        "bound while the old pod leads: {claim}"
    );
    assert_eq!(
        endpoints_holder(c, ns, lock).as_deref(),
        Some(old_identity),
        "the lock moved while its holder renewed it"
    );
    old.assert_running();

    // The old pod goes (terminated without release, as upstream's library does).
    old.kill();
    let killed_at = Instant::now();
    let bound = wait_bound(c, claims, "swapped", LEASE_DURATION + LEASE_RETRY + BIND);
    let took = killed_at.elapsed();
    eprintln!(
        "upstream-swap: claim bound {:.1} s after the old pod was killed",
        took.as_secs_f64()
    );
    // The old pod renewed at most one retry period before it was killed: kube-persist waited
    // out the rest of the lease duration (less a second of rounding) before provisioning.
    assert!(
        took + LEASE_RETRY + Duration::from_secs(1) >= LEASE_DURATION,
        "provisioned {:.1} s after the old pod was killed, before its record expired",
        took.as_secs_f64()
    );
    assert!(
        took <= LEASE_DURATION + LEASE_RETRY + Duration::from_secs(10),
        "takeover took {:.1} s",
        took.as_secs_f64()
    );

    let pv_name = bound["spec"]["volumeName"].as_str().expect("volumeName");
    let pv = c.get("pv", None, pv_name).expect("the bound PV exists");
    assert_eq!(
        pv["metadata"]["annotations"]["pv.kubernetes.io/provisioned-by"], provisioner,
        "{pv}"
    );
    let dir = format!("{claims}-swapped-{pv_name}");
    assert_eq!(pv["spec"]["nfs"]["path"], format!("{NFS_PATH}/{dir}"));
    assert!(root.join(&dir).is_dir(), "directory {dir} missing");

    let identity = Cluster::provisioner_identity(&new).expect("kube-persist's identity");
    assert_eq!(endpoints_holder(c, ns, lock), Some(identity));
    assert!(
        c.get("lease", Some(ns), lock).is_none(),
        "a Lease written without permission"
    );
    // Core Events, since events.k8s.io is not granted.
    let events = c.kubectl(&[
        "-n",
        claims,
        "get",
        "events",
        "--field-selector=involvedObject.name=swapped",
        "-o",
        "json",
    ]);
    assert!(events.ok, "{}", events.stderr);
    let events: Value = serde_json::from_str(&events.stdout).expect("JSON");
    let reasons: Vec<&str> = events["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|e| e["reason"].as_str())
        .collect();
    assert!(
        reasons.contains(&"ProvisioningSucceeded"),
        "events: {reasons:?}"
    );
    // One warning for the forbidden Lease, none repeated, no failed rounds.
    let log = new.log();
    assert_eq!(
        log.matches("No permission for this lock").count(),
        1,
        "{}",
        new.tail(40)
    );
    assert_eq!(
        log.matches("Leader election round failed").count(),
        0,
        "{}",
        new.tail(40)
    );
    new.assert_running();

    // And back: an upstream pod started now respects kube-persist's record (client-go reads it)
    // and, once kube-persist stops and releases the lock, takes it at its next retry instead of
    // waiting out the lease duration.
    let back_identity = "nfs-client-provisioner-6c8d9f-r7t2m_1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d";
    let mut cmd = std::process::Command::new(c.oldleader());
    cmd.args([
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--namespace={ns}"),
        format!("--provisioner={provisioner}"),
        format!("--identity={back_identity}"),
    ]);
    let mut back = Proc::start("oldleader-back", cmd, &c.logs);
    std::thread::sleep(LEASE_DURATION / 3);
    back.assert_running();
    assert!(
        !old_log_leads(&back),
        "the upstream pod led beside kube-persist: {}",
        back.tail(20)
    );
    new.stop();
    let stopped_at = Instant::now();
    wait_for(
        "the upstream pod leading after kube-persist released the lock",
        LEASE_DURATION,
        || back.tail(20),
        || {
            (old_log_leads(&back)
                && endpoints_holder(c, ns, lock).as_deref() == Some(back_identity))
            .then_some(())
        },
    );
    let took = stopped_at.elapsed();
    eprintln!(
        "upstream-swap: the upstream pod led {:.1} s after kube-persist stopped",
        took.as_secs_f64()
    );
    assert!(
        took < LEASE_DURATION / 2,
        "the released lock was waited out like a held one ({:.1} s)",
        took.as_secs_f64()
    );
    back.stop();
}

// ---------------------------------------------------------------------------------------------
// 7c. A hung NFS mount hands leadership over

/// A provisioner for `provisioner_name` with its own NFS root, the Lease in `kube-persist`;
/// returns it with its admin address once ready.
fn start_own_provisioner(
    c: &Cluster,
    name: &str,
    provisioner_name: &str,
    root: &std::path::Path,
) -> (Proc, std::net::SocketAddr) {
    fs::create_dir_all(root).expect("create the NFS root");
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut cmd = std::process::Command::new(c.kube_persist_bin());
    cmd.env("KUBECONFIG", &c.kubeconfig)
        .env("PROVISIONER_NAME", provisioner_name)
        .env("NFS_SERVER", NFS_SERVER)
        .env("NFS_PATH", NFS_PATH)
        .env_remove("POD_NAMESPACE")
        .args([
            "--log-format".to_string(),
            "json".to_string(),
            "provisioner".to_string(),
            format!("--nfs-root={}", root.display()),
            "--lease-namespace=kube-persist".to_string(),
            format!("--provisioner-admin-listen={admin}"),
        ]);
    let mut proc = Proc::start(name, cmd, &c.logs);
    proc.wait_ready(
        &format!("{name} ready (/readyz)"),
        Duration::from_secs(30),
        || http_get(admin, "/readyz").filter(|(s, _)| *s == 200),
    );
    (proc, admin)
}

/// Two provisioners, each with its own mount. The leader's mount hangs (its probe's write
/// blocks, on a FIFO nobody reads): it turns unready but stays live, gives both leader locks
/// up, and the other replica takes them and binds a new claim on its mount.
fn mount_failover(c: &mut Cluster) {
    let ns = "mount-claims";
    let provisioner = "example.com/mount-failover";
    let lock = "example.com-mount-failover";
    namespace(c, ns);
    apply(
        c,
        &json!({
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": "kp-mount"},
            "provisioner": provisioner,
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "Immediate"
        }),
    );
    let roots = [c.dir.join("nfs-mount-a"), c.dir.join("nfs-mount-b")];
    let mut replicas = vec![
        start_own_provisioner(c, "mount-a", provisioner, &roots[0]),
        start_own_provisioner(c, "mount-b", provisioner, &roots[1]),
    ];
    let lease_holder = |c: &Cluster| {
        c.try_get("lease", Some("kube-persist"), lock)
            .ok()
            .flatten()
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
            .filter(|h| !h.is_empty())
    };
    let holder = wait_for(
        "a replica holding the Lease and the Endpoints lock",
        Duration::from_secs(30),
        || c.tails(),
        || {
            lease_holder(c)
                .filter(|h| endpoints_holder(c, "kube-persist", lock).as_ref() == Some(h))
        },
    );
    let ids: Vec<Option<String>> = replicas
        .iter()
        .map(|(p, _)| Cluster::provisioner_identity(p))
        .collect();
    let leader = ids
        .iter()
        .position(|i| i.as_deref() == Some(holder.as_str()))
        .unwrap_or_else(|| panic!("Lease holder {holder} is none of {ids:?}"));
    let other = 1 - leader;
    assert_eq!(
        endpoints_holder(c, "kube-persist", lock).as_deref(),
        Some(holder.as_str())
    );

    let fifo = roots[leader].join(format!(".kube-persist-probe-{holder}"));
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("run mkfifo");
    assert!(made.success());
    let hung_at = Instant::now();
    let (leader_admin, other_id) = (replicas[leader].1, ids[other].clone());
    // Probe every 10 s, each call 15 s at most: both locks move within ~30 s.
    wait_for(
        "both locks moved to the healthy replica",
        Duration::from_secs(60),
        || c.tails(),
        || {
            (lease_holder(c) == other_id && endpoints_holder(c, "kube-persist", lock) == other_id)
                .then_some(())
        },
    );
    let took = hung_at.elapsed();
    eprintln!(
        "mount-failover: leadership moved {:.1} s after the mount hung",
        took.as_secs_f64()
    );
    let ready = http_get(leader_admin, "/readyz").map(|(s, _)| s);
    let live = http_get(leader_admin, "/livez").map(|(s, _)| s);

    apply(
        c,
        &json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "after-hang", "namespace": ns},
            "spec": {"storageClassName": "kp-mount", "accessModes": ["ReadWriteOnce"],
                     "resources": {"requests": {"storage": "1Gi"}}}
        }),
    );
    let bound = wait_bound(c, ns, "after-hang", BIND);
    let pv = bound["spec"]["volumeName"].as_str().expect("volumeName");

    // Let the hung writes finish (a reader on the FIFO), so the replica can stop.
    let reader = std::thread::spawn(move || {
        use std::io::Read as _;
        if let Ok(mut f) = fs::File::open(&fifo) {
            let mut sink = Vec::new();
            let _ = f.read_to_end(&mut sink);
        }
    });
    assert_eq!(ready, Some(503), "the hung replica still reports ready");
    assert_eq!(
        live,
        Some(200),
        "the hung replica is not live (a restart cures no hung mount)"
    );
    assert!(
        roots[other].join(format!("{ns}-after-hang-{pv}")).is_dir(),
        "the claim was not provisioned on the healthy replica's mount"
    );
    let _ = reader.join();
    for (proc, _) in &mut replicas {
        proc.assert_running();
        proc.stop();
    }
}

fn old_log_leads(old: &Proc) -> bool {
    old.log().lines().any(|l| l.trim() == "leading")
}

// ---------------------------------------------------------------------------------------------
// 8. Certificate rotation under load

/// While a bounded loop creates StatefulSets, the serving certificate is replaced by one from
/// a new CA, the way a careful rotation does it: both CAs in the `caBundle`, then the new
/// certificate, then only the new CA. Every create succeeds and is mutated (under
/// `failurePolicy: Ignore` a TLS failure would admit the object unchanged, so "mutated" is
/// the proof the API server reached the webhook every time).
fn cert_rotation(c: &mut Cluster) {
    let ns = "rotation";
    namespace(c, ns);
    let old_ca = {
        let bundle = c.webhook_config["webhooks"][0]["clientConfig"]["caBundle"]
            .as_str()
            .expect("caBundle")
            .to_string();
        String::from_utf8(
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, bundle)
                .expect("caBundle base64"),
        )
        .expect("PEM")
    };
    let new = kube_persist::certs::generate(&kube_persist::certs::dev_options())
        .expect("new certificate");
    let set_bundle = |pem: &str| {
        let patch = json!([{"op": "replace", "path": "/webhooks/0/clientConfig/caBundle",
                            "value": b64(pem)}]);
        let out = c.kubectl(&[
            "patch",
            "mutatingwebhookconfiguration",
            WEBHOOK_CONFIG,
            "--type=json",
            "-p",
            &patch.to_string(),
        ]);
        assert!(out.ok, "patching the caBundle: {}", out.stderr);
    };

    // The load records, with each create, the phase of the rotation it ran in.
    const PHASES: [&str; 4] = [
        "old CA",
        "both CAs, old cert",
        "both CAs, new cert",
        "new CA",
    ];
    let phase = AtomicUsize::new(0);
    let results = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..400 {
                let now = phase.load(Ordering::SeqCst);
                if now >= PHASES.len() {
                    break;
                }
                let name = format!("rot-{i}");
                let out = c.kubectl_stdin(
                    &["apply", "-f", "-"],
                    &small_statefulset(ns, &name).to_string(),
                );
                let warned = warning_of(&out.stderr).is_some();
                if let Ok(mut r) = results.lock() {
                    r.push((now, name, out.ok, warned, out.stderr));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        // Ends the load even when a step below panics.
        let _end = EndLoad(&phase);
        let creates_in = |p: usize| {
            wait_for(
                &format!("three creates in phase {}", PHASES[p]),
                Duration::from_secs(60),
                || c.tails(),
                || {
                    let done = results
                        .lock()
                        .map(|r| r.iter().filter(|r| r.0 == p).count());
                    (done.unwrap_or_default() >= 3).then_some(())
                },
            );
        };
        creates_in(0);
        set_bundle(&format!("{old_ca}{}", new.ca_cert_pem));
        phase.store(1, Ordering::SeqCst);
        creates_in(1);
        let reloads = |c: &Cluster| {
            c.webhook
                .as_ref()
                .map(|w| w.log().matches("Serving certificate reloaded").count())
                .unwrap_or_default()
        };
        let reloaded = reloads(c);
        write_atomic(&c.webhook_tls.join("tls.key"), &new.key_pem);
        write_atomic(&c.webhook_tls.join("tls.crt"), &new.cert_pem);
        wait_for(
            "the webhook serving the new certificate",
            Duration::from_secs(30),
            || c.tails(),
            || (reloads(c) > reloaded).then_some(()),
        );
        phase.store(2, Ordering::SeqCst);
        creates_in(2);
        set_bundle(&new.ca_cert_pem);
        phase.store(3, Ordering::SeqCst);
        creates_in(3);
        phase.store(PHASES.len(), Ordering::SeqCst);
    });
    let results = results.into_inner().expect("results");

    for (p, name) in PHASES.iter().enumerate() {
        let n = results.iter().filter(|r| r.0 == p).count();
        assert!(n >= 2, "only {n} creates while {name}");
    }
    for (p, name, ok, warned, stderr) in &results {
        let p = PHASES[*p];
        assert!(ok, "create of {name} failed ({p}): {stderr}");
        assert!(
            warned,
            "{name} was admitted without the webhook's answer ({p}): {stderr}"
        );
        let stored = c.get("statefulset", Some(ns), name).expect("stored");
        assert!(
            stored["spec"]["volumeClaimTemplates"].is_array(),
            "{name} stored without its claim"
        );
    }
    eprintln!("cert-rotation: {} creates, all mutated", results.len());
    c.webhook_config["webhooks"][0]["clientConfig"]["caBundle"] = json!(b64(&new.ca_cert_pem));
}

/// Moves the rotation's load past its last phase when dropped, so the load thread stops.
struct EndLoad<'a>(&'a AtomicUsize);

impl Drop for EndLoad<'_> {
    fn drop(&mut self) {
        self.0.store(usize::MAX, Ordering::SeqCst);
    }
}

fn small_statefulset(ns: &str, name: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "serviceName": name, "replicas": 0,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [{"name": "app", "image": "registry.invalid/app:1",
                                    "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                    "volumes": [{"name": "data", "emptyDir": {}}]
                }
            }
        }
    })
}
