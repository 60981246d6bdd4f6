//! A real control plane on 127.0.0.1: etcd, kube-apiserver, kube-controller-manager, the
//! Prometheus Operator, kube-persist's webhook (registered through the rendered `deploy/`) and
//! its NFS provisioner on a temporary directory. No kubelet or scheduler: pods stay Pending.
//!
//! Every wait is bounded and names the component that did not come up, with its log's last
//! lines. Every process is stopped when the [`Cluster`] is dropped, also after a panic.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use serde_json::{Value, json};

/// How often bounded waits poll.
const POLL: Duration = Duration::from_millis(200);

/// Where the components' binaries are: the pinned Go builds and our release binary.
pub struct Binaries {
    /// Directory with etcd, kube-apiserver, kube-controller-manager, kubectl, operator, helm
    /// and the operator's CRDs (`crds/`), as `tests/cluster/build.sh` makes it.
    pub go: PathBuf,
    /// `target/release/kube-persist`.
    pub kube_persist: PathBuf,
    /// oldleader (`tests/cluster/build-oldleader.sh`): client-go's leader election as
    /// nfs-subdir-external-provisioner runs it.
    pub oldleader: Option<PathBuf>,
}

impl Binaries {
    /// Reads the locations `tests/cluster/run.sh` passes, with a clear error when absent.
    pub fn from_env() -> Result<Binaries, String> {
        let go = std::env::var_os("KUBE_PERSIST_CLUSTER_BIN").map(PathBuf::from).ok_or(
            "KUBE_PERSIST_CLUSTER_BIN is not set: run the cluster tier with tests/cluster/run.sh, \
             which builds the control plane and sets it",
        )?;
        for b in [
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kubectl",
            "operator",
        ] {
            if !go.join(b).is_file() {
                return Err(format!(
                    "{} is missing: rebuild with tests/cluster/build.sh",
                    go.join(b).display()
                ));
            }
        }
        let kube_persist = std::env::var_os("KUBE_PERSIST_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo().join("target/release/kube-persist"));
        if !kube_persist.is_file() {
            return Err(format!(
                "{} is missing: `cargo build --release` first (run.sh does)",
                kube_persist.display()
            ));
        }
        let oldleader = std::env::var_os("KUBE_PERSIST_OLDLEADER").map(PathBuf::from);
        Ok(Binaries {
            go,
            kube_persist,
            oldleader,
        })
    }
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A free TCP port on 127.0.0.1 (the listener is closed again before the component binds it).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// Polls `check` every 200 ms until it returns `Some`, for at most `limit`; then panics with
/// `what` and `context()` (usually a component's log tail).
pub fn wait_for<T>(
    what: &str,
    limit: Duration,
    context: impl Fn() -> String,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("{what}: not within {} s\n{}", limit.as_secs(), context());
        }
        std::thread::sleep(POLL);
    }
}

/// A plain-HTTP GET on loopback, for health endpoints: the status code and body.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())?;
    Some((status, body))
}

// ---------------------------------------------------------------------------------------------
// Processes

/// A component process whose output goes to `<logs>/<name>.log`; stopped on drop.
pub struct Proc {
    /// Name used in messages and as the log file name.
    pub name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with its standard output and error in `<logs>/<name>.log`.
    pub fn start(name: &str, mut cmd: Command, logs: &Path) -> Proc {
        let log = logs.join(format!("{name}.log"));
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({:?}): {e}", cmd.get_program()));
        Proc {
            name: name.to_string(),
            child,
            log,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last `n` lines of the log.
    pub fn tail(&self, n: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(n);
        format!(
            "last lines of {} ({}):\n{}",
            self.name,
            self.log.display(),
            lines[start..].join("\n")
        )
    }

    /// The whole log.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics (with the log tail) if the process has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited ({status})\n{}", self.name, self.tail(30));
        }
    }

    /// Polls `check` (bounded by `limit`) while the process runs; panics with `what` and the
    /// log's last lines when it exits or the time is up.
    pub fn wait_ready<T>(
        &mut self,
        what: &str,
        limit: Duration,
        mut check: impl FnMut() -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + limit;
        loop {
            self.assert_running();
            if let Some(v) = check() {
                return v;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{what}: not within {} s\n{}",
                    limit.as_secs(),
                    self.tail(30)
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Sends a signal by name (`STOP`, `KILL`, ...).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {} failed", self.name);
    }

    /// SIGTERM, up to 15 s to exit, then SIGKILL. Idempotent.
    pub fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // CONT after TERM: a process frozen by a scenario (SIGSTOP) would not act on TERM.
        for signal in ["-TERM", "-CONT"] {
            let _ = Command::new("kill")
                .arg(signal)
                .arg(self.pid().to_string())
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// Certificates

/// A CA that signs the control plane's serving and client certificates.
pub struct Ca {
    params: CertificateParams,
    key: KeyPair,
    /// The CA certificate, PEM.
    pub pem: String,
}

/// A signed certificate and its key, PEM.
pub struct Pair {
    /// Certificate.
    pub cert: String,
    /// Private key (PKCS#8).
    pub key: String,
}

impl Ca {
    /// A new self-signed CA.
    pub fn new(common_name: &str) -> Ca {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let pem = params.self_signed(&key).expect("CA certificate").pem();
        Ca { params, key, pem }
    }

    fn sign(&self, params: CertificateParams) -> Pair {
        let key = KeyPair::generate().expect("key");
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).expect("sign certificate");
        Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// A serving certificate for 127.0.0.1 and localhost (and `dns`).
    pub fn serving(&self, common_name: &str, dns: &[&str]) -> Pair {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.subject_alt_names = vec![
            SanType::IpAddress(IpAddr::from([127, 0, 0, 1])),
            SanType::DnsName("localhost".try_into().expect("dns name")),
        ];
        for name in dns {
            params
                .subject_alt_names
                .push(SanType::DnsName((*name).try_into().expect("dns name")));
        }
        self.sign(params)
    }

    /// A client certificate for `user` in `groups` (the API server reads CN and O).
    pub fn client(&self, user: &str, groups: &[&str]) -> Pair {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, user);
        for group in groups {
            params
                .distinguished_name
                .push(DnType::OrganizationName, *group);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.sign(params)
    }
}

/// Writes `contents` to `path` by rename, as a Secret volume update replaces files.
pub fn write_atomic(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, contents).expect("write file");
    fs::rename(&tmp, path).expect("rename file");
}

/// Base64 of a PEM, as `caBundle` and kubeconfig `*-data` fields take it.
pub fn b64(pem: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(pem)
}

// ---------------------------------------------------------------------------------------------
// kubectl

/// `program` run under coreutils' `timeout`: TERM after 120 s, KILL 5 s later (exit 124).
pub fn bounded(program: &Path) -> Command {
    let mut cmd = Command::new("timeout");
    cmd.args(["-k", "5", "120"]).arg(program);
    cmd
}

/// The result of a kubectl run.
pub struct Kubectl {
    /// Exit status was 0.
    pub ok: bool,
    /// Exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error (warnings land here).
    pub stderr: String,
}

fn finish(out: Output) -> Kubectl {
    Kubectl {
        ok: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// The cluster

/// The webhook's name in the MutatingWebhookConfiguration rendered from `deploy/`.
pub const WEBHOOK_CONFIG: &str = "kube-persist";

/// A running control plane with kube-persist wired in.
pub struct Cluster {
    /// Everything of this run: certificates, etcd data, the NFS root, logs.
    pub dir: PathBuf,
    /// Component logs (kept when a scenario fails).
    pub logs: PathBuf,
    bins: Binaries,
    /// Admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// The provisioner's NFS root (`NFS_PATH` is [`NFS_PATH`] in the PVs it writes).
    pub nfs_root: PathBuf,
    /// The API server's audit log.
    pub audit_log: PathBuf,
    /// The webhook's policy audit log.
    pub webhook_audit_log: PathBuf,
    /// The webhook's certificate directory (`tls.crt`, `tls.key`).
    pub webhook_tls: PathBuf,
    /// The policy rendered from `deploy/`, as the webhook reads it.
    pub policy: PathBuf,
    /// The webhook's address (stable across restarts, so the registered URL stays valid).
    pub webhook_addr: SocketAddr,
    webhook_admin: SocketAddr,
    /// The API server's URL.
    pub api_url: String,
    /// The MutatingWebhookConfiguration as registered (JSON).
    pub webhook_config: Value,
    // Stopped in this order by `Drop for Cluster`: ours first, etcd last.
    /// Running provisioners.
    pub provisioners: Vec<Proc>,
    /// The webhook, when running.
    pub webhook: Option<Proc>,
    operator: Option<Proc>,
    controller_manager: Option<Proc>,
    apiserver: Option<Proc>,
    etcd: Option<Proc>,
}

/// The `NFS_SERVER` the provisioners write into PVs (only a name: nothing mounts it).
pub const NFS_SERVER: &str = "127.0.0.1";
/// The `NFS_PATH` the provisioners write into PVs.
pub const NFS_PATH: &str = "/srv/nfs/kube-persist";
/// The provisioner name of the StorageClass in `deploy/`.
pub const PROVISIONER_NAME: &str = "fuseim.pri/ifs";

impl Cluster {
    /// Starts every component in order, waiting (bounded) for each to be ready.
    pub fn start(bins: Binaries) -> Cluster {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo().join("target"));
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let dir = target
            .join("cluster")
            .join(format!("run-{stamp}-{}", std::process::id()));
        let logs = dir.join("logs");
        for sub in ["logs", "pki", "etcd", "nfs", "webhook"] {
            fs::create_dir_all(dir.join(sub)).expect("create run directory");
        }
        let pki = dir.join("pki");
        let mut cluster = Cluster {
            kubeconfig: pki.join("admin.kubeconfig"),
            nfs_root: dir.join("nfs"),
            audit_log: logs.join("apiserver-audit.log"),
            webhook_audit_log: logs.join("webhook-audit.log"),
            webhook_tls: dir.join("webhook"),
            policy: dir.join("webhook/policy.yaml"),
            webhook_addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            webhook_admin: SocketAddr::from(([127, 0, 0, 1], free_port())),
            webhook_config: Value::Null,
            api_url: String::new(),
            dir,
            logs,
            bins,
            provisioners: Vec::new(),
            webhook: None,
            operator: None,
            controller_manager: None,
            apiserver: None,
            etcd: None,
        };
        cluster.start_etcd_and_apiserver(&pki);
        cluster.start_controller_manager(&pki);
        cluster.start_operator();
        cluster.install_kube_persist();
        cluster
    }

    fn start_etcd_and_apiserver(&mut self, pki: &Path) {
        let ca = Ca::new("kube-persist cluster-test CA");
        let serving = ca.serving(
            "kube-apiserver",
            &["kubernetes", "kubernetes.default", "kubernetes.default.svc"],
        );
        let admin = ca.client("kube-persist-test-admin", &["system:masters"]);
        let sa_key = KeyPair::generate().expect("service-account key");
        let files = [
            ("ca.crt", ca.pem.as_str()),
            ("apiserver.crt", serving.cert.as_str()),
            ("apiserver.key", serving.key.as_str()),
            ("sa.key", &sa_key.serialize_pem()),
            ("sa.pub", &sa_key.public_key_pem()),
            ("admin.crt", admin.cert.as_str()),
            ("admin.key", admin.key.as_str()),
        ];
        for (name, contents) in files {
            fs::write(pki.join(name), contents).expect("write pki file");
        }

        let client_port = free_port();
        let peer_port = free_port();
        let mut etcd = Command::new(self.bins.go.join("etcd"));
        etcd.args([
            "--name=default".to_string(),
            format!("--data-dir={}", self.dir.join("etcd").display()),
            format!("--listen-client-urls=http://127.0.0.1:{client_port}"),
            format!("--advertise-client-urls=http://127.0.0.1:{client_port}"),
            format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
            format!("--initial-cluster=default=http://127.0.0.1:{peer_port}"),
            "--unsafe-no-fsync=true".to_string(),
            "--log-level=warn".to_string(),
        ]);
        let mut etcd = Proc::start("etcd", etcd, &self.logs);
        let etcd_addr = SocketAddr::from(([127, 0, 0, 1], client_port));
        etcd.wait_ready("etcd ready (/health)", Duration::from_secs(60), || {
            http_get(etcd_addr, "/health").filter(|(s, b)| *s == 200 && b.contains("true"))
        });
        self.etcd = Some(etcd);

        let audit_policy = pki.join("audit-policy.yaml");
        fs::write(&audit_policy, AUDIT_POLICY).expect("write audit policy");
        let api_port = free_port();
        let mut api = Command::new(self.bins.go.join("kube-apiserver"));
        api.args([
            format!("--etcd-servers=http://127.0.0.1:{client_port}"),
            "--bind-address=127.0.0.1".to_string(),
            "--advertise-address=127.0.0.1".to_string(),
            format!("--secure-port={api_port}"),
            format!("--cert-dir={}", pki.display()),
            format!("--tls-cert-file={}", pki.join("apiserver.crt").display()),
            format!(
                "--tls-private-key-file={}",
                pki.join("apiserver.key").display()
            ),
            format!("--client-ca-file={}", pki.join("ca.crt").display()),
            format!(
                "--service-account-key-file={}",
                pki.join("sa.pub").display()
            ),
            format!(
                "--service-account-signing-key-file={}",
                pki.join("sa.key").display()
            ),
            "--service-account-issuer=https://kubernetes.default.svc".to_string(),
            "--service-cluster-ip-range=10.0.0.0/24".to_string(),
            "--authorization-mode=Node,RBAC".to_string(),
            format!("--audit-policy-file={}", audit_policy.display()),
            format!("--audit-log-path={}", self.audit_log.display()),
            "--audit-log-mode=blocking".to_string(),
            // Writes nothing outside the run directory and serves only on loopback.
            "--profiling=false".to_string(),
            "--v=1".to_string(),
        ]);
        let apiserver = Proc::start("kube-apiserver", api, &self.logs);
        self.apiserver = Some(apiserver);

        let kubeconfig = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": {
                "server": format!("https://127.0.0.1:{api_port}"),
                "certificate-authority-data": b64(&ca.pem),
            }}],
            "users": [{"name": "admin", "user": {
                "client-certificate-data": b64(&admin.cert),
                "client-key-data": b64(&admin.key),
            }}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "admin"}}],
            "current-context": "test",
        });
        fs::write(&self.kubeconfig, kubeconfig.to_string()).expect("write kubeconfig");
        self.api_url = format!("https://127.0.0.1:{api_port}");
        self.wait_component(
            "kube-apiserver ready (/readyz)",
            Duration::from_secs(120),
            |c| c.kubectl(&["get", "--raw", "/readyz"]).ok.then_some(()),
        );
    }

    fn start_controller_manager(&mut self, pki: &Path) {
        let mut kcm = Command::new(self.bins.go.join("kube-controller-manager"));
        kcm.args([
            format!("--kubeconfig={}", self.kubeconfig.display()),
            format!("--authentication-kubeconfig={}", self.kubeconfig.display()),
            format!("--authorization-kubeconfig={}", self.kubeconfig.display()),
            "--bind-address=127.0.0.1".to_string(),
            format!("--secure-port={}", free_port()),
            format!("--cert-dir={}", pki.join("kcm").display()),
            "--controllers=*".to_string(),
            "--leader-elect=false".to_string(),
            format!(
                "--service-account-private-key-file={}",
                pki.join("sa.key").display()
            ),
            format!("--root-ca-file={}", pki.join("ca.crt").display()),
            "--use-service-account-credentials=false".to_string(),
            "--v=1".to_string(),
        ]);
        self.controller_manager = Some(Proc::start("kube-controller-manager", kcm, &self.logs));
        // The service-account and root-CA publishers run: the controllers are working.
        self.wait_component(
            "kube-controller-manager running its controllers",
            Duration::from_secs(120),
            |c| {
                (c.kubectl(&["-n", "default", "get", "serviceaccount", "default"])
                    .ok
                    && c.kubectl(&["-n", "default", "get", "configmap", "kube-root-ca.crt"])
                        .ok)
                    .then_some(())
            },
        );
    }

    fn start_operator(&mut self) {
        // The four storage-bearing CRDs from the fixtures (what the unit tests validate
        // against), the rest from the operator's own pinned module.
        let fixtures = repo().join("tests/fixtures/crds");
        let mut crds: Vec<PathBuf> = fs::read_dir(&fixtures)
            .expect("read tests/fixtures/crds")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        let names: Vec<_> = crds
            .iter()
            .filter_map(|p| p.file_name())
            .map(|n| n.to_owned())
            .collect();
        if let Ok(dir) = fs::read_dir(self.bins.go.join("crds")) {
            for entry in dir.flatten() {
                if !names.contains(&entry.file_name()) {
                    crds.push(entry.path());
                }
            }
        }
        crds.sort();
        for crd in &crds {
            let out = self.kubectl(&["apply", "--server-side", "-f", &crd.display().to_string()]);
            assert!(out.ok, "applying CRD {}: {}", crd.display(), out.stderr);
        }
        let out = self.kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd",
            "--all",
        ]);
        assert!(out.ok, "CRDs not established: {}", out.stderr);

        let web = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut op = Command::new(self.bins.go.join("operator"));
        // The operator takes no kubeconfig: the API server and the admin client certificate.
        let pki = self.dir.join("pki");
        op.args([
            format!("--apiserver={}", self.api_url),
            format!("--ca-file={}", pki.join("ca.crt").display()),
            format!("--cert-file={}", pki.join("admin.crt").display()),
            format!("--key-file={}", pki.join("admin.key").display()),
            format!("--web.listen-address={web}"),
            "--log-level=info".to_string(),
        ]);
        let mut operator = Proc::start("prometheus-operator", op, &self.logs);
        operator.wait_ready(
            "prometheus-operator ready (/healthz)",
            Duration::from_secs(120),
            || http_get(web, "/healthz").filter(|(s, _)| *s == 200),
        );
        self.operator = Some(operator);
    }

    /// Applies `deploy/` as rendered by `kubectl kustomize`, with only the webhook's
    /// `clientConfig` turned into a URL on 127.0.0.1 (there is no kube-proxy) and its
    /// `caBundle` filled; then starts the webhook and one provisioner.
    fn install_kube_persist(&mut self) {
        let out = self.kubectl(&["kustomize", &repo().join("deploy").display().to_string()]);
        assert!(out.ok, "kubectl kustomize deploy: {}", out.stderr);
        let docs: Vec<Value> =
            serde_saphyr::from_multiple(&out.stdout).expect("kustomize output is YAML");

        let certs = kube_persist::certs::generate(&kube_persist::certs::dev_options())
            .expect("webhook certificate");
        write_atomic(&self.webhook_tls.join("tls.key"), &certs.key_pem);
        write_atomic(&self.webhook_tls.join("tls.crt"), &certs.cert_pem);

        let mut objects = Vec::new();
        for mut doc in docs.into_iter().filter(|d| !d.is_null()) {
            match doc["kind"].as_str() {
                Some("MutatingWebhookConfiguration") => {
                    for hook in doc["webhooks"].as_array_mut().expect("webhooks") {
                        hook["clientConfig"] = json!({
                            "url": format!("https://{}/mutate", self.webhook_addr),
                            "caBundle": b64(&certs.ca_cert_pem),
                        });
                    }
                    self.webhook_config = doc.clone();
                }
                Some("ConfigMap") if doc["metadata"]["name"] == "kube-persist-policy" => {
                    let policy = doc["data"]["policy.yaml"].as_str().expect("policy.yaml");
                    fs::write(&self.policy, policy).expect("write policy");
                }
                _ => {}
            }
            objects.push(doc);
        }
        assert!(
            !self.webhook_config.is_null(),
            "deploy/ renders no MutatingWebhookConfiguration"
        );
        let list = json!({"apiVersion": "v1", "kind": "List", "items": objects});
        let out = self.kubectl_stdin(&["apply", "-f", "-"], &list.to_string());
        assert!(out.ok, "kubectl apply of deploy/ failed: {}", out.stderr);

        self.start_webhook();
        let provisioner = self.start_provisioner("provisioner-a");
        self.provisioners.push(provisioner);
    }

    /// Starts `kube-persist serve` on the registered address and waits for `/readyz`.
    pub fn start_webhook(&mut self) {
        assert!(self.webhook.is_none(), "the webhook is already running");
        let mut cmd = Command::new(&self.bins.kube_persist);
        cmd.args([
            "--log-format".to_string(),
            "json".to_string(),
            "serve".to_string(),
            format!("--listen={}", self.webhook_addr),
            format!("--admin-listen={}", self.webhook_admin),
            format!("--tls-cert={}", self.webhook_tls.join("tls.crt").display()),
            format!("--tls-key={}", self.webhook_tls.join("tls.key").display()),
            format!("--policy={}", self.policy.display()),
            format!("--audit-log={}", self.webhook_audit_log.display()),
            "--reload-interval=0.5".to_string(),
            "--shutdown-delay=0".to_string(),
        ]);
        let mut webhook = Proc::start("kube-persist-webhook", cmd, &self.logs);
        let admin = self.webhook_admin;
        webhook.wait_ready(
            "kube-persist webhook ready (/readyz)",
            Duration::from_secs(30),
            || http_get(admin, "/readyz").filter(|(s, _)| *s == 200),
        );
        self.webhook = Some(webhook);
    }

    /// Stops the webhook (SIGTERM, bounded).
    pub fn stop_webhook(&mut self) {
        if let Some(mut webhook) = self.webhook.take() {
            webhook.stop();
        }
    }

    /// Starts `kube-persist provisioner` with leader election, named `name`, and waits until
    /// it reports ready.
    pub fn start_provisioner(&self, name: &str) -> Proc {
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut cmd = Command::new(&self.bins.kube_persist);
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .env("NFS_SERVER", NFS_SERVER)
            .env("NFS_PATH", NFS_PATH)
            .env("PROVISIONER_NAME", PROVISIONER_NAME)
            .env("ENABLE_LEADER_ELECTION", "true")
            .env_remove("POD_NAMESPACE")
            .args([
                "--log-format".to_string(),
                "json".to_string(),
                "provisioner".to_string(),
                format!("--nfs-root={}", self.nfs_root.display()),
                "--lease-namespace=kube-persist".to_string(),
                format!("--provisioner-admin-listen={admin}"),
            ]);
        let mut proc = Proc::start(name, cmd, &self.logs);
        proc.wait_ready(
            &format!("{name} ready (/readyz)"),
            Duration::from_secs(30),
            || http_get(admin, "/readyz").filter(|(s, _)| *s == 200),
        );
        proc
    }

    /// The oldleader binary, or a clear failure.
    pub fn oldleader(&self) -> PathBuf {
        let path = self.bins.oldleader.clone().expect(
            "KUBE_PERSIST_OLDLEADER is not set: run the cluster tier with tests/cluster/run.sh, \
             which builds oldleader with tests/cluster/build-oldleader.sh",
        );
        assert!(path.is_file(), "{} is missing", path.display());
        path
    }

    /// The kube-persist release binary.
    pub fn kube_persist_bin(&self) -> &Path {
        &self.bins.kube_persist
    }

    /// A kubeconfig for ServiceAccount `namespace/name`, with a token from the TokenRequest
    /// API: requests made with it are authorized by the RBAC bound to that ServiceAccount only.
    pub fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> PathBuf {
        let out = self.kubectl(&["-n", namespace, "create", "token", name, "--duration=2h"]);
        assert!(out.ok, "kubectl create token: {}", out.stderr);
        let admin: Value = serde_json::from_str(
            &fs::read_to_string(&self.kubeconfig).expect("read the admin kubeconfig"),
        )
        .expect("the admin kubeconfig is JSON");
        let kubeconfig = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": admin["clusters"],
            "users": [{"name": name, "user": {"token": out.stdout.trim()}}],
            "contexts": [{"name": "sa", "context": {"cluster": "test", "user": name}}],
            "current-context": "sa",
        });
        let path = self
            .dir
            .join("pki")
            .join(format!("{namespace}-{name}.kubeconfig"));
        fs::write(&path, kubeconfig.to_string()).expect("write kubeconfig");
        path
    }

    /// The Lease identity a provisioner announced in its log.
    pub fn provisioner_identity(proc: &Proc) -> Option<String> {
        proc.log().lines().find_map(|line| {
            let v: Value = serde_json::from_str(line).ok()?;
            let fields = if v["fields"].is_object() {
                &v["fields"]
            } else {
                &v
            };
            (fields["message"] == "Leader election enabled")
                .then(|| fields["identity"].as_str().map(str::to_string))
                .flatten()
        })
    }

    fn wait_component(
        &mut self,
        what: &str,
        limit: Duration,
        check: impl Fn(&Cluster) -> Option<()>,
    ) {
        let deadline = Instant::now() + limit;
        loop {
            for proc in self.processes_mut() {
                proc.assert_running();
            }
            if check(self).is_some() {
                return;
            }
            if Instant::now() >= deadline {
                let tails: Vec<String> = self.processes().map(|p| p.tail(25)).collect();
                panic!(
                    "{what}: not within {} s\n{}",
                    limit.as_secs(),
                    tails.join("\n")
                );
            }
            std::thread::sleep(POLL);
        }
    }

    fn processes(&self) -> impl Iterator<Item = &Proc> {
        self.provisioners.iter().chain(
            [
                &self.webhook,
                &self.operator,
                &self.controller_manager,
                &self.apiserver,
                &self.etcd,
            ]
            .into_iter()
            .flatten(),
        )
    }

    fn processes_mut(&mut self) -> impl Iterator<Item = &mut Proc> {
        self.provisioners.iter_mut().chain(
            [
                &mut self.webhook,
                &mut self.operator,
                &mut self.controller_manager,
                &mut self.apiserver,
                &mut self.etcd,
            ]
            .into_iter()
            .flatten(),
        )
    }

    /// Panics with the log tail of the first component that has exited.
    pub fn assert_running(&mut self) {
        for proc in self.processes_mut() {
            proc.assert_running();
        }
    }

    /// The last lines of every component's log.
    pub fn tails(&self) -> String {
        self.processes()
            .map(|p| p.tail(15))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The pinned kubectl against this cluster, killed after 2 minutes whatever it waits for.
    pub fn kubectl_cmd(&self) -> Command {
        let mut cmd = bounded(&self.bins.go.join("kubectl"));
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .arg("--request-timeout=30s");
        cmd
    }

    /// Runs kubectl with `args`.
    pub fn kubectl(&self, args: &[&str]) -> Kubectl {
        finish(self.kubectl_cmd().args(args).output().expect("run kubectl"))
    }

    /// Runs kubectl with `args` and `input` on standard input.
    pub fn kubectl_stdin(&self, args: &[&str], input: &str) -> Kubectl {
        let mut child = self
            .kubectl_cmd()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write kubectl stdin");
        finish(child.wait_with_output().expect("wait for kubectl"))
    }

    /// `kubectl get -o json` of one object, or `None` when it does not exist.
    pub fn get(&self, resource: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        self.try_get(resource, namespace, name)
            .unwrap_or_else(|e| panic!("kubectl get {resource} {name}: {e}"))
    }

    /// Like [`Cluster::get`], with kubectl's failure as an error (for polls, which retry).
    pub fn try_get(
        &self,
        resource: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<Value>, String> {
        let mut args = vec!["get", resource, name, "-o", "json", "--ignore-not-found"];
        if let Some(ns) = namespace {
            args.extend(["-n", ns]);
        }
        let out = self.kubectl(&args);
        if !out.ok {
            return Err(out.stderr);
        }
        if out.stdout.trim().is_empty() {
            return Ok(None);
        }
        serde_json::from_str(&out.stdout)
            .map(Some)
            .map_err(|e| format!("output is not JSON: {e}"))
    }

    /// `kube-persist` (the release binary) with this cluster's kubeconfig.
    pub fn kube_persist(&self, args: &[&str]) -> Kubectl {
        finish(
            bounded(&self.bins.kube_persist)
                .env("KUBECONFIG", &self.kubeconfig)
                .args(args)
                .output()
                .expect("run kube-persist"),
        )
    }

    /// The API server's audit events so far.
    pub fn audit_events(&self) -> Vec<Value> {
        fs::read_to_string(&self.audit_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The webhook's policy audit records so far.
    pub fn webhook_decisions(&self) -> Vec<Value> {
        fs::read_to_string(&self.webhook_audit_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Ours first, etcd last.
        for proc in self.processes_mut() {
            proc.stop();
        }
    }
}

/// Metadata (with our webhook's audit annotations) for what kube-persist mutates and what the
/// provisioner touches; nothing for the rest, to keep the log small.
const AUDIT_POLICY: &str = "\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    resources:
      - group: monitoring.coreos.com
      - group: apps
        resources: [statefulsets]
      - group: ''
        resources: [persistentvolumeclaims, persistentvolumes]
  - level: None
";
