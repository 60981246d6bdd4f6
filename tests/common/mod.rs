//! Shared helpers of the integration tests: the real `kube-persist` binary started on
//! 127.0.0.1 with an rcgen certificate, a rustls HTTP/1.1 + HTTP/2 client, review builders and
//! CRD validation. Each test binary uses a different subset.
#![allow(dead_code, clippy::unwrap_used)]

pub mod crd;

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use kube_persist::admission::{Operation, ReviewBody};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Installs the process-wide rustls provider (idempotent).
pub fn install_crypto() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Writes a fresh CA + localhost serving pair into `dir` (`ca.crt`, `tls.crt`, `tls.key`).
pub fn write_certs(dir: &Path) -> kube_persist::certs::Generated {
    let generated = kube_persist::certs::generate(&kube_persist::certs::dev_options()).unwrap();
    std::fs::write(dir.join("ca.crt"), &generated.ca_cert_pem).unwrap();
    std::fs::write(dir.join("tls.crt"), &generated.cert_pem).unwrap();
    std::fs::write(dir.join("tls.key"), &generated.key_pem).unwrap();
    generated
}

/// Replaces `name` in `dir` atomically (write + rename), as a Secret volume update does.
pub fn replace_file(dir: &Path, name: &str, contents: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// A running `kube-persist serve`.
pub struct Webhook {
    /// The child process.
    pub child: Child,
    /// Webhook address.
    pub addr: SocketAddr,
    /// Admin address.
    pub admin: SocketAddr,
    /// Working directory (certificates, audit log, policy).
    pub dir: PathBuf,
    /// The CA the client trusts.
    pub ca_pem: String,
    stderr: Arc<Mutex<Vec<String>>>,
}

/// Owned command-line arguments.
pub fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// The binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_kube-persist")
}

impl Webhook {
    /// Starts `serve` with certificates in `dir` (written if missing) and `extra` flags.
    pub fn start(dir: &Path, extra: &[&str]) -> Webhook {
        Webhook::start_with_env(dir, extra, &[])
    }

    /// [`Webhook::start`] with further environment variables.
    pub fn start_with_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Webhook {
        Webhook::start_via(&[], dir, extra, env)
    }

    /// [`Webhook::start`] through `launcher`, a command that ends by running its first
    /// argument with the rest (e.g. `bash -c 'trap "" XFSZ; exec "$0" "$@"'`).
    pub fn start_via(
        launcher: &[&str],
        dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Webhook {
        if !dir.join("tls.crt").exists() {
            write_certs(dir);
        }
        let ca_pem = std::fs::read_to_string(dir.join("ca.crt")).unwrap();
        let mut args: Vec<String> = [
            "--log-format",
            "json",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--reload-interval",
            "0.2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for (flag, file) in [
            ("--tls-cert", "tls.crt"),
            ("--tls-key", "tls.key"),
            ("--audit-log", "audit.log"),
        ] {
            args.push(flag.to_string());
            args.push(dir.join(file).display().to_string());
        }
        if !extra.contains(&"--shutdown-delay") {
            args.extend(["--shutdown-delay".to_string(), "0".to_string()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let (child, stderr, rx) = spawn_via(launcher, &args, dir, env);
        let listening = wait_for_line(&rx, Duration::from_secs(20), |v| {
            v["message"] == "Listening"
        })
        .unwrap_or_else(|| {
            panic!(
                "the webhook did not start: {}",
                stderr.lock().unwrap().join("\n")
            )
        });
        let addr = listening["webhook"].as_str().unwrap().parse().unwrap();
        let admin = listening["admin"].as_str().unwrap().parse().unwrap();
        Webhook {
            child,
            addr,
            admin,
            dir: dir.to_path_buf(),
            ca_pem,
            stderr,
        }
    }

    /// Sends SIGTERM and waits (bounded) for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        self.wait(Duration::from_secs(30))
    }

    /// Waits for the process to exit.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the webhook did not exit in {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The diagnostic log so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// The audit log lines so far.
    pub fn audit(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.join("audit.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line {l:?}: {e}")))
            .collect()
    }

    /// A connected client.
    pub async fn client(&self, proto: Proto) -> Client {
        Client::connect(self.addr, &self.ca_pem, proto)
            .await
            .unwrap()
    }

    /// GET on the admin port: (status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let stream = TcpStream::connect(self.admin).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = hyper::Request::get(path)
            .header("host", "localhost")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Lines = (Child, Arc<Mutex<Vec<String>>>, mpsc::Receiver<String>);

/// Spawns the binary with `args` in `dir`, collecting its standard error.
pub fn spawn(args: &[String], dir: &Path) -> Lines {
    spawn_with_env(args, dir, &[])
}

/// [`spawn`] with further environment variables.
pub fn spawn_with_env(args: &[String], dir: &Path, env: &[(&str, &str)]) -> Lines {
    spawn_via(&[], args, dir, env)
}

/// [`spawn_with_env`] through `launcher` (see [`Webhook::start_via`]).
pub fn spawn_via(launcher: &[&str], args: &[String], dir: &Path, env: &[(&str, &str)]) -> Lines {
    let mut command = match launcher {
        [] => Command::new(binary()),
        [program, rest @ ..] => {
            let mut command = Command::new(program);
            command.args(rest).arg(binary());
            command
        }
    };
    let mut child = command
        .args(args)
        .envs(env.iter().copied())
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    let keep = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            keep.lock().unwrap().push(line.clone());
            let _ = tx.send(line);
        }
    });
    (child, lines, rx)
}

/// Waits (bounded) for a JSON log line matching `pred`.
pub fn wait_for_line(
    rx: &mpsc::Receiver<String>,
    limit: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Option<Value> {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        let line = rx.recv_timeout(left).ok()?;
        if let Ok(v) = serde_json::from_str::<Value>(&line)
            && pred(&v)
        {
            return Some(v);
        }
    }
}

/// HTTP version to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// HTTP/1.1 (ALPN http/1.1).
    H1,
    /// HTTP/2 (ALPN h2).
    H2,
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// A keep-alive HTTPS client trusting only the given CA.
pub struct Client {
    sender: Sender,
    /// The server's leaf certificate (DER) seen in the handshake.
    pub peer_cert: Vec<u8>,
}

/// A rustls client configuration trusting only `ca_pem`.
pub fn client_config(ca_pem: &str, alpn: &[&[u8]]) -> rustls::ClientConfig {
    install_crypto();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// The ALPN protocol of `proto`.
pub fn alpn(proto: Proto) -> &'static [&'static [u8]] {
    match proto {
        Proto::H1 => &[b"http/1.1"],
        Proto::H2 => &[b"h2"],
    }
}

impl Client {
    /// Connects to `addr` as `localhost`.
    pub async fn connect(addr: SocketAddr, ca_pem: &str, proto: Proto) -> Result<Client, String> {
        Client::connect_with(addr, client_config(ca_pem, alpn(proto)), proto).await
    }

    /// [`Client::connect`] with a client configuration of the caller's (its ALPN set for
    /// `proto`), e.g. one that presents a client certificate.
    pub async fn connect_with(
        addr: SocketAddr,
        config: rustls::ClientConfig,
        proto: Proto,
    ) -> Result<Client, String> {
        let alpn = alpn(proto);
        let connector = TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let tls = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .map_err(|e| e.to_string())?;
        let (_, session) = tls.get_ref();
        let peer_cert = session
            .peer_certificates()
            .map(|c| c[0].to_vec())
            .unwrap_or_default();
        let negotiated = session.alpn_protocol().map(|p| p.to_vec());
        assert_eq!(negotiated.as_deref(), Some(alpn[0]), "ALPN");
        let io = TokioIo::new(tls);
        let sender = match proto {
            Proto::H1 => {
                let (sender, conn) = hyper::client::conn::http1::handshake(io)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                Sender::H1(sender)
            }
            Proto::H2 => {
                let (sender, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                        .await
                        .map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                Sender::H2(sender)
            }
        };
        Ok(Client { sender, peer_cert })
    }

    /// Sends one request: (status, body).
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<Bytes>,
    ) -> Result<(StatusCode, Bytes), String> {
        let mut req = hyper::Request::builder().method(method).uri(path);
        if let Sender::H1(_) = self.sender {
            req = req.header("host", "localhost");
        } else {
            req = req.uri(format!("https://localhost{path}"));
        }
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let req = req.body(Full::new(body.into())).unwrap();
        let resp = match &mut self.sender {
            Sender::H1(s) => {
                s.ready().await.map_err(|e| e.to_string())?;
                s.send_request(req).await
            }
            Sender::H2(s) => {
                s.ready().await.map_err(|e| e.to_string())?;
                s.send_request(req).await
            }
        }
        .map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    }

    /// POSTs a review to `/mutate` and decodes the answer.
    pub async fn review(&mut self, body: impl Into<Bytes>) -> Result<Value, String> {
        let (status, body) = self
            .send(Method::POST, "/mutate", Some("application/json"), body)
            .await?;
        if status != StatusCode::OK {
            return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
        }
        serde_json::from_slice(&body).map_err(|e| e.to_string())
    }
}

/// A CREATE (or `op`) AdmissionReview of `object` (an UPDATE from `object` itself).
pub fn review_of(object: &Value, op: &str, uid: &str) -> Value {
    let op: Operation = serde_json::from_value(op.into()).unwrap();
    let body = ReviewBody::new(object).uid(uid).operation(op).user(
        "kubernetes-admin",
        &["system:masters", "system:authenticated"],
    );
    let body = if op == Operation::Update {
        body.old_object(object)
    } else {
        body
    };
    serde_json::from_slice(&body.to_vec()).unwrap()
}

/// The response's patch applied to `object` (unchanged when there is none).
pub fn apply_patch(object: &Value, review_response: &Value) -> Value {
    let mut doc = object.clone();
    if let Some(p) = review_response["response"]["patch"].as_str() {
        assert_eq!(review_response["response"]["patchType"], "JSONPatch");
        let bytes = base64::engine::general_purpose::STANDARD.decode(p).unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
        json_patch::patch(&mut doc, &patch).unwrap_or_else(|e| panic!("patch does not apply: {e}"));
    }
    doc
}

/// Reads a fixture under `tests/fixtures/`.
pub fn fixture(path: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}
