//! The bundled NFS provisioner: a drop-in replacement for nfs-subdir-external-provisioner.
//!
//! `plan` decides (pure), `volume` touches the filesystem under the NFS mount, `reconcile`
//! talks to the API server.

use std::{net::SocketAddr, path::PathBuf};

/// Provisioner flags as given, before validation.
#[derive(Debug, Clone)]
pub struct RawConfig {
    /// `PROVISIONER_NAME`.
    pub provisioner_name: String,
    /// `NFS_SERVER`.
    pub nfs_server: Option<String>,
    /// `NFS_PATH`.
    pub nfs_path: Option<String>,
    /// Mount point of the export.
    pub nfs_root: PathBuf,
    /// `ENABLE_LEADER_ELECTION`.
    pub enable_leader_election: bool,
    /// Namespace of the Lease.
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
    /// Namespace of the Lease.
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
}

impl Config {
    /// Validates [`RawConfig`].
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
        Ok(Config {
            provisioner_name,
            nfs_server: nfs_server.ok_or(ConfigError::Missing("NFS_SERVER (--nfs-server)"))?,
            nfs_path: nfs_path.ok_or(ConfigError::Missing("NFS_PATH (--nfs-path)"))?,
            nfs_root,
            enable_leader_election,
            lease_namespace,
            admin_listen,
        })
    }
}
