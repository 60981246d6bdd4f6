//! Every Kubernetes API access the code makes, in one table.
//!
//! `deploy/` grants exactly these rules (a test renders the kustomize base and compares), and the
//! mock API servers of the provisioner and `scan` tests refuse any request this table does not
//! cover. Adding an API call means adding it here, and the RBAC test then says what to grant.

/// One API resource and the verbs the code uses on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiAccess {
    /// API group (`""` for the core group).
    pub group: &'static str,
    /// Resource (plural, lowercase).
    pub resource: &'static str,
    /// Verbs, sorted.
    pub verbs: &'static [&'static str],
    /// Whether the access is granted only in the webhook's own namespace (a Role), not
    /// cluster-wide (a ClusterRole).
    pub namespaced: bool,
    /// Which code needs it.
    pub used_by: &'static str,
}

pub const API_ACCESS: &[ApiAccess] = &[
    ApiAccess {
        group: "",
        resource: "persistentvolumes",
        verbs: &["create", "delete", "get", "list", "watch"],
        namespaced: false,
        used_by: "provisioner: create PVs for claims, delete released ones (cache via list/watch, read afresh before any data goes)",
    },
    ApiAccess {
        group: "",
        resource: "persistentvolumeclaims",
        verbs: &["list", "watch"],
        namespaced: false,
        used_by: "provisioner: watch claims of our StorageClasses",
    },
    ApiAccess {
        group: "storage.k8s.io",
        resource: "storageclasses",
        verbs: &["list", "watch"],
        namespaced: false,
        used_by: "provisioner: class parameters, reclaim policy, mount options",
    },
    ApiAccess {
        group: "events.k8s.io",
        resource: "events",
        verbs: &["create", "patch"],
        namespaced: false,
        used_by: "provisioner: Provisioning* events on claims",
    },
    ApiAccess {
        group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["create", "get", "update"],
        namespaced: true,
        used_by: "provisioner: leader election",
    },
    ApiAccess {
        group: "monitoring.coreos.com",
        resource: "prometheuses",
        verbs: &["list"],
        namespaced: false,
        used_by: "scan",
    },
    ApiAccess {
        group: "monitoring.coreos.com",
        resource: "prometheusagents",
        verbs: &["list"],
        namespaced: false,
        used_by: "scan",
    },
    ApiAccess {
        group: "monitoring.coreos.com",
        resource: "alertmanagers",
        verbs: &["list"],
        namespaced: false,
        used_by: "scan",
    },
    ApiAccess {
        group: "monitoring.coreos.com",
        resource: "thanosrulers",
        verbs: &["list"],
        namespaced: false,
        used_by: "scan",
    },
    ApiAccess {
        group: "apps",
        resource: "statefulsets",
        verbs: &["list"],
        namespaced: false,
        used_by: "scan",
    },
];

/// Whether `verb` on `group`/`resource` is in [`API_ACCESS`].
pub fn is_allowed(group: &str, resource: &str, verb: &str) -> bool {
    API_ACCESS
        .iter()
        .any(|a| a.group == group && a.resource == resource && a.verbs.contains(&verb))
}
