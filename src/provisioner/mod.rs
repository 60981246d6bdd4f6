//! The bundled NFS provisioner: a drop-in replacement for nfs-subdir-external-provisioner.
//!
//! [`plan`] decides (pure), [`volume`] touches the filesystem under the NFS mount, [`reconcile`]
//! talks to the API server, [`leader`] holds the leader locks, [`events`] publishes Events,
//! [`metrics`] counts. [`Provisioner`]
//! wires them into kube-runtime controllers; the client and the admin port come from
//! [`crate::run_provisioner`] (or [`crate::run`] beside the webhook).

pub mod events;
pub mod leader;
pub mod metrics;
pub mod plan;
pub mod reconcile;
pub mod volume;

mod runtime;

use std::{net::SocketAddr, path::PathBuf};

pub use runtime::{Liveness, Provisioner, Readiness, Tuning};

/// Provisioner flags as given, before validation.
#[derive(Debug, Clone)]
pub struct RawConfig {
    pub provisioner_name: String,
    pub nfs_server: Option<String>,
    pub nfs_path: Option<String>,
    /// Mount point of the export.
    pub nfs_root: PathBuf,
    pub enable_leader_election: bool,
    /// Namespace of the Lease; `None` picks one (`leader::lease_namespace`).
    pub lease_namespace: Option<String>,
    /// Admin port when run alone.
    pub admin_listen: SocketAddr,
}

/// Validated provisioner configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Provisioner name that StorageClasses refer to.
    pub provisioner_name: String,
    /// NFS server written into PVs.
    pub nfs_server: String,
    /// Exported path written into PVs.
    pub nfs_path: String,
    /// Mount point of the export.
    pub nfs_root: PathBuf,
    /// Whether to take a Lease before provisioning.
    pub enable_leader_election: bool,
    /// Namespace of the Lease; `None` picks one (`leader::lease_namespace`).
    pub lease_namespace: Option<String>,
    /// Admin port when run alone.
    pub admin_listen: SocketAddr,
}

/// An invalid provisioner setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A required setting is missing.
    #[error("{0} must be set (the NFS export that provisioned volumes point at)")]
    Missing(&'static str),
    /// A setting is empty.
    #[error("{0} must not be empty")]
    Empty(&'static str),
}

impl Config {
    pub fn new(raw: RawConfig) -> Result<Self, ConfigError> {
        let RawConfig {
            provisioner_name,
            nfs_server,
            nfs_path,
            nfs_root,
            enable_leader_election,
            lease_namespace,
            admin_listen,
        } = raw;
        let required = |value: Option<String>, name: &'static str| {
            let value = value.ok_or(ConfigError::Missing(name))?;
            if value.trim().is_empty() {
                return Err(ConfigError::Empty(name));
            }
            Ok(value.trim().to_owned())
        };
        if provisioner_name.trim().is_empty() {
            return Err(ConfigError::Empty("PROVISIONER_NAME (--provisioner-name)"));
        }
        Ok(Config {
            provisioner_name: provisioner_name.trim().to_owned(),
            nfs_server: required(nfs_server, "NFS_SERVER (--nfs-server)")?,
            nfs_path: required(nfs_path, "NFS_PATH (--nfs-path)")?,
            nfs_root,
            enable_leader_election,
            lease_namespace,
            admin_listen,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> RawConfig {
        RawConfig {
            provisioner_name: "fuseim.pri/ifs".into(),
            nfs_server: Some("10.0.0.1".into()),
            nfs_path: Some("/export".into()),
            nfs_root: "/persistentvolumes".into(),
            enable_leader_election: true,
            lease_namespace: None,
            admin_listen: "127.0.0.1:0".parse().unwrap(),
        }
    }

    #[test]
    fn config_requires_server_and_path() {
        assert!(Config::new(raw()).is_ok());
        let err = Config::new(RawConfig {
            nfs_server: None,
            ..raw()
        })
        .unwrap_err();
        assert!(err.to_string().contains("NFS_SERVER"), "{err}");
        let err = Config::new(RawConfig {
            nfs_path: Some(" ".into()),
            ..raw()
        })
        .unwrap_err();
        assert!(err.to_string().contains("NFS_PATH"), "{err}");
        let err = Config::new(RawConfig {
            provisioner_name: "".into(),
            ..raw()
        })
        .unwrap_err();
        assert!(err.to_string().contains("PROVISIONER_NAME"), "{err}");
    }
}
