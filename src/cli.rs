//! Command line: clap definitions (long flags, each with an environment twin) and their
//! validation into plain configuration structs. Nothing outside this module sees clap types.

use std::{ffi::OsString, net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::provisioner;

/// Default admission request body limit: the API server sends objects up to ~3 MiB, and an
/// UPDATE carries both `object` and `oldObject`.
pub const DEFAULT_MAX_BODY: usize = 8 * 1024 * 1024;

/// Default memory for the bodies of all requests in progress: eight bodies of the largest
/// size at once, a small part of the pod's 512 MiB limit.
pub const DEFAULT_MAX_BODY_MEMORY: usize = 64 * 1024 * 1024;

/// Default cap on admin port connections (probes and scrapes need a few).
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = 32;

/// What `kube-persist` runs without a subcommand, for `--help`.
const NO_SUBCOMMAND_HELP: &str = "\
Without a subcommand: `provisioner` when NFS_SERVER or NFS_PATH is set in the environment (as
nfs-subdir-external-provisioner's Deployment sets them, so its image can be swapped for this one
with no command or arguments), else `serve`.";

/// kube-persist: keeps monitoring data in Kubernetes on persistent volumes.
#[derive(Debug, Parser)]
#[command(name = "kube-persist", version, about, long_about = None, after_help = NO_SUBCOMMAND_HELP)]
pub struct Cli {
    /// Log format of the diagnostic log (the audit log is always JSON).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "KUBE_PERSIST_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Log filter, in `tracing` env-filter syntax (e.g. `info`, `kube_persist=debug`).
    #[arg(
        long,
        global = true,
        default_value = "info",
        env = "KUBE_PERSIST_LOG_LEVEL"
    )]
    pub log_level: String,
    /// What to run (see below for none).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommand run when none is given: `provisioner` when either NFS export variable is set
/// (an nfs-subdir-external-provisioner Deployment sets both and passes no arguments; with only
/// one set, the provisioner then names the missing one instead of a webhook starting in its
/// place), else `serve`.
pub fn implied_subcommand(nfs_server_set: bool, nfs_path_set: bool) -> &'static str {
    if nfs_server_set || nfs_path_set {
        "provisioner"
    } else {
        "serve"
    }
}

impl Cli {
    /// Parses `args` (the program name first); without a subcommand, parses them again with the
    /// [`implied_subcommand`] appended, given which variables `is_set` finds in the environment.
    pub fn parse_with_default<I, T>(
        args: I,
        is_set: impl Fn(&str) -> bool,
    ) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let cli = Cli::try_parse_from(&args)?;
        if cli.command.is_some() {
            return Ok(cli);
        }
        let implied = implied_subcommand(is_set("NFS_SERVER"), is_set("NFS_PATH"));
        Cli::try_parse_from(args.into_iter().chain([OsString::from(implied)]))
    }
}

/// Output format of the diagnostic log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Text,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant, reason = "parsed once per process")]
pub enum Command {
    /// Run the HTTPS admission webhook (and the NFS provisioner with `--provisioner`).
    Serve(ServeArgs),
    /// Run the NFS provisioner controller alone.
    Provisioner(ProvisionerArgs),
    /// Apply the storage policy to manifest files, offline (for CI pipelines and GitOps).
    Mutate(MutateArgs),
    /// Report every target object of a live cluster that has no persistent storage.
    Scan(ScanArgs),
    /// Generate a CA and a serving certificate for the webhook Service.
    Certs(CertsArgs),
}

/// Flags of `kube-persist serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address of the HTTPS webhook (`POST /mutate`).
    #[arg(long, default_value = "0.0.0.0:8443", env = "KUBE_PERSIST_LISTEN")]
    pub listen: SocketAddr,
    /// Address of the plain-HTTP admin port (`/livez`, `/readyz`, `/metrics`).
    #[arg(
        long,
        default_value = "0.0.0.0:8080",
        env = "KUBE_PERSIST_ADMIN_LISTEN"
    )]
    pub admin_listen: SocketAddr,
    /// PEM certificate chain of the webhook. Without `--tls-cert` and `--tls-key`, a
    /// self-signed development certificate for localhost is generated.
    #[arg(long, env = "KUBE_PERSIST_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the webhook (PKCS#8, SEC1 or PKCS#1).
    #[arg(long, env = "KUBE_PERSIST_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM bundle of the CAs whose client certificates may call the webhook. When set, a client
    /// must present a certificate they signed (the API server does, from the kubeconfig of its
    /// admission configuration); without it anyone who reaches the port can post reviews.
    #[arg(long, env = "KUBE_PERSIST_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,
    /// Where the development CA certificate is written when no certificate is given.
    #[arg(long, default_value = "certs/dev", env = "KUBE_PERSIST_DEV_CERT_DIR")]
    pub dev_cert_dir: PathBuf,
    /// Policy file (YAML). Without it the built-in defaults apply.
    #[arg(long, env = "KUBE_PERSIST_POLICY")]
    pub policy: Option<PathBuf>,
    /// Largest accepted admission request body, in bytes (larger ones get 413).
    #[arg(long, default_value_t = DEFAULT_MAX_BODY, env = "KUBE_PERSIST_MAX_BODY")]
    pub max_body: usize,
    /// Memory for the bodies of all requests in progress, in bytes; a request that finds none
    /// free within a second gets 503. At least `--max-body`.
    #[arg(long, default_value_t = DEFAULT_MAX_BODY_MEMORY, env = "KUBE_PERSIST_MAX_BODY_MEMORY")]
    pub max_body_memory: usize,
    /// Policy audit log file (JSON lines, appended). Default: standard output.
    #[arg(long, env = "KUBE_PERSIST_AUDIT_LOG")]
    pub audit_log: Option<PathBuf>,
    /// How often the policy and certificate files are checked for changes, in seconds.
    #[arg(long, default_value = "5", value_parser = parse_seconds, env = "KUBE_PERSIST_RELOAD_INTERVAL")]
    pub reload_interval: Duration,
    /// A client must finish the TLS handshake, and then send a request's headers, within this
    /// many seconds each.
    #[arg(long, default_value = "10", value_parser = parse_seconds, env = "KUBE_PERSIST_HEADER_TIMEOUT")]
    pub header_timeout: Duration,
    /// A request body must arrive within this many seconds (408 otherwise).
    #[arg(long, default_value = "15", value_parser = parse_seconds, env = "KUBE_PERSIST_BODY_TIMEOUT")]
    pub body_timeout: Duration,
    /// A connection with no request in progress for this many seconds is closed (whatever
    /// else, such as HTTP/2 PINGs, moves on it).
    #[arg(long, default_value = "90", value_parser = parse_seconds, env = "KUBE_PERSIST_IDLE_TIMEOUT")]
    pub idle_timeout: Duration,
    /// On SIGTERM, in-flight requests get this many seconds to finish.
    #[arg(long, default_value = "25", value_parser = parse_seconds, env = "KUBE_PERSIST_DRAIN_TIMEOUT")]
    pub drain_timeout: Duration,
    /// On SIGTERM, keep accepting for this many seconds (with /readyz failing) so the endpoints
    /// controller and the API server stop sending requests before the port closes. 0 disables.
    #[arg(long, default_value = "5", value_parser = parse_delay, env = "KUBE_PERSIST_SHUTDOWN_DELAY")]
    pub shutdown_delay: Duration,
    /// Most webhook connections served at once. When all are taken, a new client takes the
    /// slot of the longest idle connection; if none is idle, it waits in the listen backlog.
    #[arg(long, default_value_t = 1024, env = "KUBE_PERSIST_MAX_CONNECTIONS")]
    pub max_connections: usize,
    /// Most admin port connections served at once (same rules; kept apart so the admin port
    /// cannot use the file descriptors the webhook needs).
    #[arg(long, default_value_t = DEFAULT_ADMIN_MAX_CONNECTIONS, env = "KUBE_PERSIST_ADMIN_MAX_CONNECTIONS")]
    pub admin_max_connections: usize,
    /// Also run the NFS provisioner controller in this process.
    #[arg(long, env = "KUBE_PERSIST_PROVISIONER")]
    pub provisioner: bool,
    /// Provisioner settings (used with `--provisioner`).
    #[command(flatten)]
    pub provisioner_args: ProvisionerArgs,
}

/// Flags of the NFS provisioner (`kube-persist provisioner`, `serve --provisioner`). The
/// environment names are those of nfs-subdir-external-provisioner, so a Deployment can switch
/// images without changing its environment.
#[derive(Debug, Args)]
pub struct ProvisionerArgs {
    /// Provisioner name that StorageClasses refer to.
    #[arg(long, default_value = "fuseim.pri/ifs", env = "PROVISIONER_NAME")]
    pub provisioner_name: String,
    /// NFS server written into provisioned PersistentVolumes.
    #[arg(long, env = "NFS_SERVER")]
    pub nfs_server: Option<String>,
    /// Exported path on the NFS server, written into provisioned PersistentVolumes.
    #[arg(long, env = "NFS_PATH")]
    pub nfs_path: Option<String>,
    /// Where the NFS export is mounted in this container.
    #[arg(
        long,
        default_value = "/persistentvolumes",
        env = "KUBE_PERSIST_NFS_ROOT"
    )]
    pub nfs_root: PathBuf,
    /// Take a coordination.k8s.io Lease before provisioning, so several replicas can run.
    /// Accepts the spellings Go's `strconv.ParseBool` accepted (`1`, `t`, `True`, `0`, ...).
    #[arg(
        long,
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new(),
        env = "ENABLE_LEADER_ELECTION"
    )]
    pub enable_leader_election: bool,
    /// Namespace of the leader-election Lease (default: the pod's namespace, else `kube-persist`).
    #[arg(long, env = "KUBE_PERSIST_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// Address of the provisioner's admin port when run alone (`/livez`, `/readyz`, `/metrics`).
    #[arg(
        long,
        default_value = "0.0.0.0:8080",
        env = "KUBE_PERSIST_PROVISIONER_ADMIN_LISTEN"
    )]
    pub provisioner_admin_listen: SocketAddr,
}

/// Output of `kube-persist mutate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MutateOutput {
    /// The mutated manifests as YAML.
    Yaml,
    /// The mutated manifests as JSON.
    Json,
    /// The JSON Patch of each changed object, one JSON line each.
    Patch,
    /// A unified diff of the YAML rendering of each changed object.
    Diff,
}

/// Admission operation simulated by `kube-persist mutate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "UPPERCASE")]
pub enum OperationArg {
    /// As if the objects were created.
    Create,
    /// As if the objects were updated.
    Update,
}

/// Flags of `kube-persist mutate`.
#[derive(Debug, Args)]
pub struct MutateArgs {
    /// Manifest files or directories (recursive); `-` reads standard input.
    #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
    pub paths: Vec<PathBuf>,
    /// Policy file (YAML). Without it the built-in defaults apply.
    #[arg(long, env = "KUBE_PERSIST_POLICY")]
    pub policy: Option<PathBuf>,
    /// What to print (default: the manifests, in the format of the first input document).
    #[arg(long, short = 'o', value_enum)]
    pub output: Option<MutateOutput>,
    /// The admission operation to simulate.
    #[arg(long, value_enum, default_value_t = OperationArg::Create)]
    pub operation: OperationArg,
    /// Exit 1 when any object would be mutated or lacks persistent storage (a CI gate).
    #[arg(long)]
    pub check: bool,
    /// Namespace assumed for namespaced objects that set none (as `kubectl apply -n`); policy
    /// namespace exclusions and overrides apply to it.
    #[arg(
        long,
        short = 'n',
        default_value = "default",
        env = "KUBE_PERSIST_NAMESPACE"
    )]
    pub namespace: String,
}

/// Output of `kube-persist scan`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScanOutput {
    /// An aligned text table.
    Table,
    /// One JSON document.
    Json,
}

/// Flags of `kube-persist scan`.
#[derive(Debug, Args)]
pub struct ScanArgs {
    /// Only this namespace (default: all namespaces).
    #[arg(long, short = 'n', env = "KUBE_PERSIST_NAMESPACE")]
    pub namespace: Option<String>,
    /// Policy file (YAML). Without it the built-in defaults apply.
    #[arg(long, env = "KUBE_PERSIST_POLICY")]
    pub policy: Option<PathBuf>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = ScanOutput::Table)]
    pub output: ScanOutput,
}

/// Flags of `kube-persist certs`.
#[derive(Debug, Args)]
pub struct CertsArgs {
    /// Name of the webhook Service.
    #[arg(long, default_value = "kube-persist")]
    pub service: String,
    /// Namespace of the webhook Service.
    #[arg(long, default_value = "kube-persist")]
    pub namespace: String,
    /// Cluster DNS domain.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Directory the CA and serving certificate are written to.
    #[arg(long, default_value = "certs/out")]
    pub out: PathBuf,
    /// Validity of the serving certificate, in days.
    #[arg(long, default_value_t = 365)]
    pub days: u32,
    /// Validity of the CA certificate, in days.
    #[arg(long, default_value_t = 3650)]
    pub ca_days: u32,
    /// Overwrite existing files in `--out`.
    #[arg(long)]
    pub force: bool,
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .trim_end_matches('s')
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !(secs.is_finite() && (0.01..=86_400.0).contains(&secs)) {
        return Err(format!("`{s}` must be between 0.01 and 86400 seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_delay(s: &str) -> Result<Duration, String> {
    if s.trim().trim_end_matches('s') == "0" {
        return Ok(Duration::ZERO);
    }
    parse_seconds(s)
}

/// Validated configuration of `kube-persist serve`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Webhook address.
    pub listen: SocketAddr,
    /// Admin (health, metrics) address.
    pub admin_listen: SocketAddr,
    /// Where the serving certificate comes from.
    pub tls: TlsSource,
    /// `--client-ca`: verify client certificates against these CAs.
    pub client_ca: Option<PathBuf>,
    /// Policy file; `None` applies the built-in defaults.
    pub policy: Option<PathBuf>,
    /// Body limit in bytes.
    pub max_body: usize,
    /// Memory for all bodies in progress, in bytes.
    pub max_body_memory: usize,
    /// Audit log file; `None` is standard output.
    pub audit_log: Option<PathBuf>,
    /// Poll interval for policy and certificate files.
    pub reload_interval: Duration,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    pub drain_timeout: Duration,
    /// Time between SIGTERM and closing the listener.
    pub shutdown_delay: Duration,
    pub max_connections: usize,
    pub admin_max_connections: usize,
    /// The provisioner to run beside the webhook, if any.
    pub provisioner: Option<provisioner::Config>,
}

/// Source of the webhook's serving certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    /// PEM files, watched for rotation.
    Files {
        /// Certificate chain.
        cert: PathBuf,
        key: PathBuf,
    },
    /// A generated development certificate; its CA is written into this directory.
    Dev {
        /// Directory for `ca.crt`.
        ca_dir: PathBuf,
    },
}

/// An invalid combination or value of flags.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Only one half of the key pair was given.
    #[error("--tls-cert and --tls-key must be given together (got only {0})")]
    HalfKeyPair(&'static str),
    /// `--max-body` too small to hold any review.
    #[error("--max-body must be at least 1024 bytes (got {0})")]
    MaxBodyTooSmall(usize),
    /// `--max-connections 0` or `--admin-max-connections 0`.
    #[error("--max-connections and --admin-max-connections must be at least 1")]
    NoConnections,
    /// `--max-body-memory` cannot hold one body of `--max-body`.
    #[error("--max-body-memory ({memory}) must be at least --max-body ({body})")]
    BodyMemoryTooSmall {
        /// `--max-body-memory`.
        memory: usize,
        /// `--max-body`.
        body: usize,
    },
    /// A provisioner flag is invalid.
    #[error(transparent)]
    Provisioner(#[from] provisioner::ConfigError),
}

impl ServeArgs {
    pub fn into_config(self) -> Result<ServeConfig, ConfigError> {
        let ServeArgs {
            listen,
            admin_listen,
            tls_cert,
            tls_key,
            client_ca,
            dev_cert_dir,
            policy,
            max_body,
            max_body_memory,
            audit_log,
            reload_interval,
            header_timeout,
            body_timeout,
            idle_timeout,
            drain_timeout,
            shutdown_delay,
            max_connections,
            admin_max_connections,
            provisioner,
            provisioner_args,
        } = self;
        let tls = match (tls_cert, tls_key) {
            (Some(cert), Some(key)) => TlsSource::Files { cert, key },
            (None, None) => TlsSource::Dev {
                ca_dir: dev_cert_dir,
            },
            (Some(_), None) => return Err(ConfigError::HalfKeyPair("--tls-cert")),
            (None, Some(_)) => return Err(ConfigError::HalfKeyPair("--tls-key")),
        };
        if max_body < 1024 {
            return Err(ConfigError::MaxBodyTooSmall(max_body));
        }
        if max_connections == 0 || admin_max_connections == 0 {
            return Err(ConfigError::NoConnections);
        }
        if max_body_memory < max_body {
            return Err(ConfigError::BodyMemoryTooSmall {
                memory: max_body_memory,
                body: max_body,
            });
        }
        let provisioner = if provisioner {
            Some(provisioner_args.into_config()?)
        } else {
            None
        };
        Ok(ServeConfig {
            listen,
            admin_listen,
            tls,
            client_ca,
            policy,
            max_body,
            max_body_memory,
            audit_log,
            reload_interval,
            header_timeout,
            body_timeout,
            idle_timeout,
            drain_timeout,
            shutdown_delay,
            max_connections,
            admin_max_connections,
            provisioner,
        })
    }
}

impl ProvisionerArgs {
    pub fn into_config(self) -> Result<provisioner::Config, provisioner::ConfigError> {
        let ProvisionerArgs {
            provisioner_name,
            nfs_server,
            nfs_path,
            nfs_root,
            enable_leader_election,
            lease_namespace,
            provisioner_admin_listen,
        } = self;
        provisioner::Config::new(provisioner::RawConfig {
            provisioner_name,
            nfs_server,
            nfs_path,
            nfs_root,
            enable_leader_election,
            lease_namespace,
            admin_listen: provisioner_admin_listen,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("kube-persist").chain(args.iter().copied()))
    }

    fn parse_env(args: &[&str], set: &[&str]) -> Option<Command> {
        Cli::parse_with_default(
            std::iter::once("kube-persist").chain(args.iter().copied()),
            |name| set.contains(&name),
        )
        .unwrap()
        .command
    }

    #[test]
    fn no_subcommand_runs_the_provisioner_when_the_export_is_in_the_environment() {
        let both = ["NFS_SERVER", "NFS_PATH"];
        assert!(matches!(
            parse_env(&[], &both),
            Some(Command::Provisioner(_))
        ));
        assert!(matches!(
            parse_env(&["--log-format", "json"], &both),
            Some(Command::Provisioner(_))
        ));
        assert!(matches!(
            parse_env(&[], &["NFS_PATH"]),
            Some(Command::Provisioner(_))
        ));
        assert!(matches!(parse_env(&[], &[]), Some(Command::Serve(_))));
        assert!(matches!(
            parse_env(&["--log-level", "debug"], &["KUBECONFIG"]),
            Some(Command::Serve(_))
        ));
        // An explicit subcommand wins.
        assert!(matches!(
            parse_env(&["serve"], &both),
            Some(Command::Serve(_))
        ));
        assert!(matches!(
            parse_env(&["certs", "--out", "x"], &both),
            Some(Command::Certs(_))
        ));
    }

    #[test]
    fn serve_defaults_use_a_dev_certificate() {
        let Some(Command::Serve(args)) = parse(&["serve"]).unwrap().command else {
            panic!("not serve")
        };
        let config = args.into_config().unwrap();
        assert_eq!(config.listen.to_string(), "0.0.0.0:8443");
        assert_eq!(config.admin_listen.to_string(), "0.0.0.0:8080");
        assert_eq!(config.max_body, 8 * 1024 * 1024);
        assert_eq!(config.max_body_memory, 64 * 1024 * 1024);
        assert_eq!(config.admin_max_connections, 32);
        assert!(matches!(config.tls, TlsSource::Dev { .. }));
        assert!(config.provisioner.is_none());
    }

    #[test]
    fn half_a_key_pair_is_refused() {
        let Some(Command::Serve(args)) = parse(&["serve", "--tls-cert", "a.crt"]).unwrap().command
        else {
            panic!("not serve")
        };
        let err = args.into_config().unwrap_err().to_string();
        assert!(err.contains("--tls-key"), "{err}");
    }

    #[test]
    fn body_memory_must_hold_one_body() {
        let Some(Command::Serve(args)) = parse(&["serve", "--max-body-memory", "1048576"])
            .unwrap()
            .command
        else {
            panic!("not serve")
        };
        let err = args.into_config().unwrap_err().to_string();
        assert!(err.contains("--max-body-memory"), "{err}");
    }

    #[test]
    fn durations_must_be_positive_seconds() {
        assert!(parse(&["serve", "--idle-timeout", "0"]).is_err());
        assert!(parse(&["serve", "--idle-timeout", "1e-9"]).is_err());
        assert!(parse(&["serve", "--shutdown-delay", "0"]).is_ok());
        assert!(parse(&["serve", "--idle-timeout", "abc"]).is_err());
        assert!(parse(&["serve", "--idle-timeout", "1.5"]).is_ok());
    }
}
