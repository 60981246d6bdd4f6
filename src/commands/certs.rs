//! `kube-persist certs`: writes a CA and a serving certificate for the webhook Service into a
//! directory and prints the `caBundle` for the MutatingWebhookConfiguration.
//!
//! Standard output carries only the base64 `caBundle` (one line), so scripts can capture it;
//! what was written and what to do next goes to standard error. Nothing is written unless every
//! file can be: the four files are written to temporary names first, then renamed into place.
//! Existing files are kept unless `--force` is given.

use std::{
    fs,
    io::{self, Write as _},
    path::{Path, PathBuf},
    process::ExitCode,
};

use crate::{
    certs::{self, Generated},
    cli::CertsArgs,
};

/// The CA certificate: what the API server trusts (`caBundle`).
pub const CA_CERT_FILE: &str = "ca.crt";
/// The CA private key: keep it to issue the next serving certificate, or delete it.
pub const CA_KEY_FILE: &str = "ca.key";
/// The serving certificate (the Secret's `tls.crt`).
pub const CERT_FILE: &str = "tls.crt";
/// The serving private key (the Secret's `tls.key`).
pub const KEY_FILE: &str = "tls.key";

/// Permissions of the certificate files.
const CERT_MODE: u32 = 0o644;
/// Permissions of the private keys: owner only.
const KEY_MODE: u32 = 0o600;
/// Permissions of an output directory this command creates.
const DIR_MODE: u32 = 0o700;

/// `kube-persist certs` failed. Every message is one line naming the flag or path at fault.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// `--service` is not a Service name.
    #[error(
        "--service `{0}` is not a valid Service name (1-63 lowercase letters, digits or '-', starting with a letter)"
    )]
    BadService(String),
    /// `--namespace` is not a namespace name.
    #[error(
        "--namespace `{0}` is not a valid namespace name (1-63 lowercase letters, digits or '-')"
    )]
    BadNamespace(String),
    /// `--cluster-domain` is not a DNS domain.
    #[error("--cluster-domain `{0}` is not a valid DNS domain (such as cluster.local)")]
    BadClusterDomain(String),
    /// A validity flag is out of range.
    #[error("--{flag} must be between 1 and {max} days (got {days})")]
    BadDays {
        /// `days` or `ca-days`.
        flag: &'static str,
        days: u32,
        /// The largest accepted value.
        max: u32,
    },
    /// The serving certificate would outlive its CA.
    #[error(
        "--days ({days}) must not exceed --ca-days ({ca_days}): the certificate would outlive its CA"
    )]
    OutlivesCa { days: u32, ca_days: u32 },
    /// `--out` exists and is not a directory.
    #[error("--out {} exists and is not a directory", .0.display())]
    NotADirectory(PathBuf),
    /// A file to write is a directory.
    #[error("cannot write {}: it is a directory", .0.display())]
    IsADirectory(PathBuf),
    /// Files would be overwritten.
    #[error("refusing to overwrite existing {} (use --force to replace)", list(.0))]
    Exists(Vec<PathBuf>),
    /// A filesystem operation failed.
    #[error("cannot {action} {}", path.display())]
    Io {
        /// What was attempted.
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Generation failed.
    #[error(transparent)]
    Generate(#[from] certs::CertError),
}

fn list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn run(args: CertsArgs) -> anyhow::Result<ExitCode> {
    let written = write_certs(&args)?;
    let stderr = io::stderr();
    let mut err = stderr.lock();
    // The summary is a courtesy: a closed stderr must not fail the command.
    let _ = summary(&mut err, &args, &written);
    let mut out = io::stdout().lock();
    writeln!(out, "{}", certs::ca_bundle(&written.generated.ca_cert_pem))
        .and_then(|()| out.flush())
        .map_err(|source| CertsError::Io {
            action: "write the caBundle to",
            path: PathBuf::from("standard output"),
            source,
        })?;
    Ok(ExitCode::SUCCESS)
}

/// What [`write_certs`] wrote.
#[derive(Debug)]
pub struct Written {
    pub generated: Generated,
    /// The files, in the order ca.crt, ca.key, tls.crt, tls.key.
    pub paths: Vec<PathBuf>,
}

/// Validates `args`, generates the certificates and writes them into `args.out`.
pub fn write_certs(args: &CertsArgs) -> Result<Written, CertsError> {
    let CertsArgs {
        service,
        namespace,
        cluster_domain,
        out,
        days,
        ca_days,
        force,
    } = args;
    let opts = validate(service, namespace, cluster_domain, *days, *ca_days)?;
    prepare_dir(out)?;
    let targets = [CA_CERT_FILE, CA_KEY_FILE, CERT_FILE, KEY_FILE].map(|name| out.join(name));
    if let Some(dir) = targets.iter().find(|p| p.is_dir()) {
        return Err(CertsError::IsADirectory(dir.clone()));
    }
    if !force {
        let existing: Vec<PathBuf> = targets
            .iter()
            .filter(|p| fs::symlink_metadata(p).is_ok())
            .cloned()
            .collect();
        if !existing.is_empty() {
            return Err(CertsError::Exists(existing));
        }
    }
    let generated = certs::generate(&opts)?;
    let contents = [
        (&generated.ca_cert_pem, CERT_MODE),
        (&generated.ca_key_pem, KEY_MODE),
        (&generated.cert_pem, CERT_MODE),
        (&generated.key_pem, KEY_MODE),
    ];
    write_all_or_nothing(targets.iter().zip(contents))?;
    Ok(Written {
        generated,
        paths: targets.to_vec(),
    })
}

fn validate(
    service: &str,
    namespace: &str,
    cluster_domain: &str,
    days: u32,
    ca_days: u32,
) -> Result<certs::CertOptions, CertsError> {
    if !certs::is_service_name(service) {
        return Err(CertsError::BadService(service.to_string()));
    }
    if !certs::is_dns_label(namespace) {
        return Err(CertsError::BadNamespace(namespace.to_string()));
    }
    if !certs::is_dns_subdomain(cluster_domain) {
        return Err(CertsError::BadClusterDomain(cluster_domain.to_string()));
    }
    for (flag, value) in [("days", days), ("ca-days", ca_days)] {
        if value == 0 || value > certs::MAX_DAYS {
            return Err(CertsError::BadDays {
                flag,
                days: value,
                max: certs::MAX_DAYS,
            });
        }
    }
    if days > ca_days {
        return Err(CertsError::OutlivesCa { days, ca_days });
    }
    Ok(certs::service_options(
        service,
        namespace,
        cluster_domain,
        days,
        ca_days,
    ))
}

/// Creates `dir` (owner-only) unless it exists; refuses a path that is not a directory.
fn prepare_dir(dir: &Path) -> Result<(), CertsError> {
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => return Ok(()),
        Ok(_) => return Err(CertsError::NotADirectory(dir.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(CertsError::Io {
                action: "read",
                path: dir.to_path_buf(),
                source,
            });
        }
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(DIR_MODE);
    }
    builder.create(dir).map_err(|source| CertsError::Io {
        action: "create directory",
        path: dir.to_path_buf(),
        source,
    })
}

/// Writes every file under a temporary name beside its target, then renames them all into
/// place. If any write fails, the temporary files are removed and no target is touched.
fn write_all_or_nothing<'a>(
    files: impl Iterator<Item = (&'a PathBuf, (&'a String, u32))>,
) -> Result<(), CertsError> {
    let mut staged: Vec<(PathBuf, &PathBuf)> = Vec::new();
    let cleanup = |staged: &[(PathBuf, &PathBuf)]| {
        for (tmp, _) in staged {
            let _ = fs::remove_file(tmp);
        }
    };
    for (target, (contents, mode)) in files {
        let tmp = temp_path(target);
        if let Err(e) = write_new(&tmp, contents.as_bytes(), mode) {
            cleanup(&staged);
            // Report the file the user asked for, not our temporary name.
            return Err(CertsError::Io {
                action: "write",
                path: target.clone(),
                source: e,
            });
        }
        staged.push((tmp, target));
    }
    for (i, (tmp, target)) in staged.iter().enumerate() {
        if let Err(source) = fs::rename(tmp, target) {
            cleanup(staged.get(i..).unwrap_or_default());
            return Err(CertsError::Io {
                action: "write",
                path: (*target).clone(),
                source,
            });
        }
    }
    Ok(())
}

fn temp_path(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(".{name}.tmp{}", std::process::id()))
}

/// Creates `path` (which must not exist) with permissions `mode` and writes `contents`.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// What was written and what to do next, for a person.
fn summary(w: &mut impl io::Write, args: &CertsArgs, written: &Written) -> io::Result<()> {
    let CertsArgs {
        service,
        namespace,
        cluster_domain,
        out,
        days,
        ca_days,
        force: _,
    } = args;
    let names = certs::service_dns_names(service, namespace, cluster_domain).join(", ");
    let files = list(&written.paths);
    let cert = out.join(CERT_FILE);
    let key = out.join(KEY_FILE);
    writeln!(w, "kube-persist certs: wrote {files}")?;
    writeln!(
        w,
        "  ECDSA P-256 serving certificate for {names}: valid {days} days (until {}), CA {ca_days} days (until {})",
        date_in(*days),
        date_in(*ca_days)
    )?;
    writeln!(
        w,
        "  {} and {} are private keys (mode 0600): never commit them",
        out.join(CA_KEY_FILE).display(),
        key.display()
    )?;
    writeln!(w, "next (certs/install.sh does both):")?;
    writeln!(
        w,
        "  kubectl -n {namespace} create secret tls kube-persist-tls --cert={} --key={}",
        cert.display(),
        key.display()
    )?;
    writeln!(
        w,
        "  kubectl patch mutatingwebhookconfiguration kube-persist --type=json -p '[{{\"op\":\"add\",\"path\":\"/webhooks/0/clientConfig/caBundle\",\"value\":\"CA_BUNDLE\"}}]'"
    )?;
    writeln!(
        w,
        "caBundle (CA_BUNDLE above: base64 of {CA_CERT_FILE}) on standard output:"
    )
}

/// The UTC date `days` from now, for the summary.
fn date_in(days: u32) -> String {
    let seconds = i64::from(days).saturating_mul(86_400);
    jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_secs(seconds))
        .map(|t| t.strftime("%Y-%m-%d").to_string())
        .unwrap_or_else(|_| "far in the future".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(out: &Path) -> CertsArgs {
        CertsArgs {
            service: "kube-persist".into(),
            namespace: "kube-persist".into(),
            cluster_domain: "cluster.local".into(),
            out: out.to_path_buf(),
            days: 30,
            ca_days: 60,
            force: false,
        }
    }

    #[test]
    fn bad_flags_name_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        type Change = fn(&mut CertsArgs);
        let cases: [(Change, &str); 7] = [
            (|a| a.service = "Kube".into(), "--service"),
            (|a| a.service = "1svc".into(), "--service"),
            (|a| a.namespace = "a.b".into(), "--namespace"),
            (
                |a| a.cluster_domain = "cluster..local".into(),
                "--cluster-domain",
            ),
            (|a| a.days = 0, "--days"),
            (|a| a.ca_days = certs::MAX_DAYS + 1, "--ca-days"),
            (|a| a.days = 61, "must not exceed --ca-days"),
        ];
        for (change, needle) in cases {
            let mut a = args(dir.path());
            change(&mut a);
            let err = write_certs(&a).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_target_that_is_a_directory_is_refused_even_with_force() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join(KEY_FILE)).unwrap();
        let mut a = args(dir.path());
        a.force = true;
        let err = write_certs(&a).unwrap_err().to_string();
        assert!(
            err.contains("tls.key") && err.contains("directory"),
            "{err}"
        );
        assert!(!dir.path().join(CA_CERT_FILE).exists());
    }

    #[test]
    fn a_failed_write_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        // Occupy the temporary name of the last file, so its write fails after three staged.
        let blocker = temp_path(&dir.path().join(KEY_FILE));
        fs::create_dir(&blocker).unwrap();
        let err = write_certs(&args(dir.path())).unwrap_err().to_string();
        assert!(err.contains("tls.key"), "{err}");
        let mut left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        left.retain(|p| p != &blocker);
        assert!(left.is_empty(), "files left behind: {left:?}");
    }

    #[test]
    fn temp_names_stay_in_the_directory() {
        let tmp = temp_path(Path::new("/x/y/tls.key"));
        assert_eq!(tmp.parent(), Some(Path::new("/x/y")));
        assert!(
            tmp.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".tls.key.tmp")
        );
    }
}
