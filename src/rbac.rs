//! Every Kubernetes API access the code makes, in one table.
//!
//! `deploy/` grants exactly the rules marked `in_deploy` (a test renders the kustomize base and
//! compares), and the mock API servers of the provisioner and `scan` tests refuse any request
//! this table does not cover. Adding an API call means adding it here, and the RBAC test then
//! says what to grant. The provisioner also runs under nfs-subdir-external-provisioner's RBAC
//! ([`UPSTREAM_RBAC`]); what that does not grant is marked with what happens instead.

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
    /// Whether `deploy/` grants it. Accesses only other installs grant (upstream's) are not.
    pub in_deploy: bool,
    /// What the code does instead when the API forbids it; `None` when it is required.
    pub when_forbidden: Option<&'static str>,
}

pub const API_ACCESS: &[ApiAccess] = &[
    ApiAccess {
        group: "",
        resource: "persistentvolumes",
        verbs: &["create", "delete", "get", "list", "watch"],
        namespaced: false,
        used_by: "provisioner: create PVs for claims, delete released ones (cache via list/watch, read afresh before any data goes)",
        in_deploy: true,
        when_forbidden: None,
    },
    ApiAccess {
        group: "",
        resource: "persistentvolumeclaims",
        verbs: &["list", "watch"],
        namespaced: false,
        used_by: "provisioner: watch claims of our StorageClasses",
        in_deploy: true,
        when_forbidden: None,
    },
    ApiAccess {
        group: "storage.k8s.io",
        resource: "storageclasses",
        verbs: &["list", "watch"],
        namespaced: false,
        used_by: "provisioner: class parameters, reclaim policy, mount options",
        in_deploy: true,
        when_forbidden: None,
    },
    ApiAccess {
        group: "events.k8s.io",
        resource: "events",
        verbs: &["create", "patch"],
        namespaced: false,
        used_by: "provisioner: Provisioning* events on claims",
        in_deploy: true,
        when_forbidden: Some("core events instead"),
    },
    ApiAccess {
        group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["create", "get", "update"],
        namespaced: true,
        used_by: "provisioner: leader election",
        in_deploy: true,
        when_forbidden: Some("elect on the Endpoints lock alone"),
    },
    ApiAccess {
        group: "",
        resource: "events",
        verbs: &["create"],
        namespaced: false,
        used_by: "provisioner: Provisioning* events on claims where events.k8s.io is forbidden",
        in_deploy: false,
        when_forbidden: Some("no events (one warning)"),
    },
    ApiAccess {
        group: "",
        resource: "endpoints",
        verbs: &["create", "get", "update"],
        namespaced: true,
        used_by: "provisioner: leader election on upstream's Endpoints lock",
        in_deploy: false,
        when_forbidden: Some("elect on the Lease alone"),
    },
    ApiAccess {
        group: "monitoring.coreos.com",
        resource: "prometheuses",
        verbs: &["list"],
        namespaced: false,
        used_by: "scan",
        in_deploy: true,
        when_forbidden: None,
    },
    ApiAccess {
        group: "monitoring.coreos.com",
        resource: "prometheusagents",
        verbs: &["list"],
        namespaced: false,
        used_by: "scan",
        in_deploy: true,
        when_forbidden: None,
    },
    ApiAccess {
        group: "monitoring.coreos.com",
        resource: "alertmanagers",
        verbs: &["list"],
        namespaced: false,
        used_by: "scan",
        in_deploy: true,
        when_forbidden: None,
    },
    ApiAccess {
        group: "monitoring.coreos.com",
        resource: "thanosrulers",
        verbs: &["list"],
        namespaced: false,
        used_by: "scan",
        in_deploy: true,
        when_forbidden: None,
    },
    ApiAccess {
        group: "apps",
        resource: "statefulsets",
        verbs: &["list"],
        namespaced: false,
        used_by: "scan",
        in_deploy: true,
        when_forbidden: None,
    },
];

/// Whether `verb` on `group`/`resource` is in [`API_ACCESS`].
pub fn is_allowed(group: &str, resource: &str, verb: &str) -> bool {
    API_ACCESS
        .iter()
        .any(|a| a.group == group && a.resource == resource && a.verbs.contains(&verb))
}

/// What nfs-subdir-external-provisioner's `deploy/rbac.yaml` grants its ServiceAccount: (group,
/// resource, verbs, namespaced).
pub const UPSTREAM_RBAC: &[(&str, &str, &[&str], bool)] = &[
    ("", "nodes", &["get", "list", "watch"], false),
    (
        "",
        "persistentvolumes",
        &["get", "list", "watch", "create", "delete"],
        false,
    ),
    (
        "",
        "persistentvolumeclaims",
        &["get", "list", "watch", "update"],
        false,
    ),
    (
        "storage.k8s.io",
        "storageclasses",
        &["get", "list", "watch"],
        false,
    ),
    ("", "events", &["create", "update", "patch"], false),
    (
        "",
        "endpoints",
        &["get", "list", "watch", "create", "update", "patch"],
        true,
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream_grants(a: &ApiAccess) -> bool {
        UPSTREAM_RBAC
            .iter()
            .any(|(group, resource, verbs, namespaced)| {
                *group == a.group
                    && *resource == a.resource
                    && (*namespaced == a.namespaced || !*namespaced)
                    && a.verbs.iter().all(|v| verbs.contains(v))
            })
    }

    /// A Deployment of upstream's with only the image swapped keeps working: everything the
    /// provisioner needs is granted there, or has a fallback that is.
    #[test]
    fn the_provisioner_needs_nothing_upstreams_rbac_does_not_grant() {
        let provisioner: Vec<&ApiAccess> = API_ACCESS
            .iter()
            .filter(|a| a.used_by.starts_with("provisioner"))
            .collect();
        for a in &provisioner {
            assert!(
                upstream_grants(a) || a.when_forbidden.is_some(),
                "{}/{} {:?} is required but upstream's RBAC does not grant it",
                a.group,
                a.resource,
                a.verbs
            );
        }
        // And each fallback is itself granted there.
        let granted = |group: &str, resource: &str| {
            provisioner
                .iter()
                .any(|a| a.group == group && a.resource == resource && upstream_grants(a))
        };
        assert!(granted("", "events"), "events fall back to core events");
        assert!(
            granted("", "endpoints"),
            "the election falls back to Endpoints"
        );
    }

    #[test]
    fn what_deploy_does_not_grant_is_optional() {
        for a in API_ACCESS.iter().filter(|a| !a.in_deploy) {
            assert!(a.when_forbidden.is_some(), "{}/{}", a.group, a.resource);
        }
    }
}
