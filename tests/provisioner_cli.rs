//! `kube-persist provisioner` flags: the nfs-subdir-external-provisioner spellings keep working.
#![allow(clippy::unwrap_used)]

use clap::Parser as _;
use kube_persist::cli::{Cli, Command};

fn provisioner(args: &[&str]) -> Result<kube_persist::provisioner::Config, String> {
    let cli = Cli::try_parse_from(["kube-persist", "provisioner"].iter().chain(args))
        .map_err(|e| e.to_string())?;
    let Some(Command::Provisioner(args)) = cli.command else {
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

/// The release or debug binary Cargo built for this test, run with no arguments.
struct Running {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Running {
    fn start(dir: &std::path::Path, env: &[(&str, String)], unset: &[&str]) -> Running {
        let log = dir.join("out.log");
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_kube-persist"));
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdin(std::process::Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        for name in unset {
            cmd.env_remove(name);
        }
        for (name, value) in env {
            cmd.env(name, value);
        }
        Running {
            child: cmd.spawn().unwrap(),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls `GET path` on `addr` until it answers `status`; returns the body.
    fn wait_for(&mut self, addr: std::net::SocketAddr, path: &str, status: u16) -> String {
        for _ in 0..200 {
            if let Ok(Some(exit)) = self.child.try_wait() {
                panic!("kube-persist exited ({exit}):\n{}", self.log());
            }
            if let Some((s, body)) = http_get(addr, path)
                && s == status
            {
                return body;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("{path} on {addr} never answered {status}:\n{}", self.log());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_addr() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut s =
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    s.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    Some((status, response.split_once("\r\n\r\n")?.1.to_owned()))
}

/// An nfs-subdir-external-provisioner Deployment starts the image with no command or arguments
/// and the export in NFS_SERVER and NFS_PATH: that runs the provisioner, on its admin port.
#[test]
fn no_arguments_with_the_export_in_the_environment_runs_the_provisioner() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("persistentvolumes");
    std::fs::create_dir(&root).unwrap();
    // An API server that is not there: the provisioner keeps trying and stays ready, since
    // readiness is the mount's.
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            r#"{{"apiVersion":"v1","kind":"Config","current-context":"t",
              "clusters":[{{"name":"t","cluster":{{"server":"http://{}"}}}}],
              "users":[{{"name":"t","user":{{}}}}],
              "contexts":[{{"name":"t","context":{{"cluster":"t","user":"t"}}}}]}}"#,
            free_addr()
        ),
    )
    .unwrap();
    let admin = free_addr();
    let mut p = Running::start(
        dir.path(),
        &[
            ("NFS_SERVER", "10.0.0.5".into()),
            ("NFS_PATH", "/export".into()),
            ("PROVISIONER_NAME", "example.com/nfs".into()),
            ("KUBECONFIG", kubeconfig.display().to_string()),
            ("KUBE_PERSIST_NFS_ROOT", root.display().to_string()),
            ("KUBE_PERSIST_PROVISIONER_ADMIN_LISTEN", admin.to_string()),
            ("POD_NAMESPACE", "nfs".into()),
        ],
        &[],
    );
    p.wait_for(admin, "/readyz", 200);
    let metrics = p.wait_for(admin, "/metrics", 200);
    assert!(
        metrics.contains("kube_persist_provisioner_leader"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("kube_persist_admission"),
        "the webhook runs too: {metrics}"
    );
}

/// Without the export in the environment, no arguments still mean `serve`.
#[test]
fn no_arguments_without_the_export_runs_the_webhook() {
    let dir = tempfile::tempdir().unwrap();
    let (listen, admin) = (free_addr(), free_addr());
    let mut p = Running::start(
        dir.path(),
        &[
            ("KUBE_PERSIST_LISTEN", listen.to_string()),
            ("KUBE_PERSIST_ADMIN_LISTEN", admin.to_string()),
            (
                "KUBE_PERSIST_DEV_CERT_DIR",
                dir.path().join("dev").display().to_string(),
            ),
        ],
        &["NFS_SERVER", "NFS_PATH"],
    );
    p.wait_for(admin, "/readyz", 200);
    let metrics = p.wait_for(admin, "/metrics", 200);
    assert!(metrics.contains("kube_persist_admission"), "{metrics}");
    assert!(!metrics.contains("kube_persist_provisioner"), "{metrics}");
}
