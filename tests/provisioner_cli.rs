//! `kube-persist provisioner` flags: the nfs-subdir-external-provisioner spellings keep working.
#![allow(clippy::unwrap_used)]

use clap::Parser as _;
use kube_persist::cli::{Cli, Command};

fn provisioner(args: &[&str]) -> Result<kube_persist::provisioner::Config, String> {
    let cli = Cli::try_parse_from(["kube-persist", "provisioner"].iter().chain(args))
        .map_err(|e| e.to_string())?;
    let Command::Provisioner(args) = cli.command else {
        panic!("not provisioner")
    };
    args.into_config().map_err(|e| e.to_string())
}

#[test]
fn defaults_match_the_go_provisioner() {
    let c = provisioner(&["--nfs-server", "10.0.0.5", "--nfs-path", "/export"]).unwrap();
    assert_eq!(c.provisioner_name, "fuseim.pri/ifs");
    assert_eq!(c.nfs_root.to_str(), Some("/persistentvolumes"));
    assert!(c.enable_leader_election);
    assert_eq!(c.admin_listen.to_string(), "0.0.0.0:8080");
}

#[test]
fn leader_election_accepts_go_boolean_spellings() {
    for (v, want) in [
        ("false", false),
        ("0", false),
        ("F", false),
        ("False", false),
        ("1", true),
        ("t", true),
        ("TRUE", true),
    ] {
        let c = provisioner(&[
            "--nfs-server",
            "s",
            "--nfs-path",
            "/p",
            "--enable-leader-election",
            v,
        ])
        .unwrap();
        assert_eq!(c.enable_leader_election, want, "{v}");
    }
    assert!(
        provisioner(&[
            "--nfs-server",
            "s",
            "--nfs-path",
            "/p",
            "--enable-leader-election",
            "maybe"
        ])
        .is_err()
    );
}

#[test]
fn missing_export_is_named() {
    let err = provisioner(&["--nfs-path", "/p"]).unwrap_err();
    assert!(err.contains("NFS_SERVER"), "{err}");
    let err = provisioner(&["--nfs-server", "s", "--nfs-path", ""]).unwrap_err();
    assert!(err.contains("NFS_PATH"), "{err}");
}
