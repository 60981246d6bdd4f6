//! `kube-persist certs`, run as the real binary, and its certificates used for real TLS: a
//! tokio-rustls listener on 127.0.0.1 serves the generated certificate and a rustls client that
//! trusts only the generated CA connects by the Service's DNS names, as the API server does.
//! Expired, not-yet-valid, wrong-name and wrong-CA certificates must be refused with the
//! matching rustls error. (The real webhook server has its own end-to-end tests; this one
//! checks the certificates, so it does not depend on it.)

use std::{
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::Arc,
    time::Duration,
};

use base64::Engine as _;
use rustls::{
    CertificateError, ClientConfig, RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject as _},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const SERVICE_NAMES: [&str; 4] = [
    "kube-persist",
    "kube-persist.kube-persist",
    "kube-persist.kube-persist.svc",
    "kube-persist.kube-persist.svc.cluster.local",
];
/// The name the API server uses for a webhook Service.
const API_SERVER_NAME: &str = "kube-persist.kube-persist.svc";
const DAY: u64 = 86_400;

fn install_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

// ---------------------------------------------------------------------------------------------
// The binary

fn certs_cmd(out: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kube-persist"))
        .args(["certs", "--out"])
        .arg(out)
        .args(extra)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("the binary runs")
}

/// The PEM files written by a successful run, and its standard output.
struct Files {
    ca: String,
    ca_key: String,
    cert: String,
    key: String,
    stdout: String,
}

fn generate(out: &Path, extra: &[&str]) -> Files {
    let output = certs_cmd(out, extra);
    assert!(
        output.status.success(),
        "kube-persist certs failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let read = |name: &str| std::fs::read_to_string(out.join(name)).expect("file written");
    Files {
        ca: read("ca.crt"),
        ca_key: read("ca.key"),
        cert: read("tls.crt"),
        key: read("tls.key"),
        stdout: String::from_utf8(output.stdout).expect("utf-8"),
    }
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path)
        .expect("exists")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn writes_the_four_files_keys_owner_only_and_prints_the_ca_bundle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("new/sub");
    let files = generate(&out, &[]);

    let mut names: Vec<String> = std::fs::read_dir(&out)
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["ca.crt", "ca.key", "tls.crt", "tls.key"],
        "and nothing else"
    );
    #[cfg(unix)]
    {
        assert_eq!(mode(&out.join("ca.key")), 0o600);
        assert_eq!(mode(&out.join("tls.key")), 0o600);
        assert_eq!(mode(&out.join("ca.crt")), 0o644);
        assert_eq!(mode(&out.join("tls.crt")), 0o644);
        assert_eq!(mode(&out), 0o700, "a directory it creates is owner-only");
    }

    // Standard output is the caBundle alone: base64 of ca.crt, one line.
    let lines: Vec<&str> = files.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "stdout: {:?}", files.stdout);
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(lines[0])
        .expect("base64");
    assert_eq!(decoded, files.ca.as_bytes());

    assert_eq!(
        CertificateDer::pem_slice_iter(files.ca.as_bytes()).count(),
        1
    );
    assert_eq!(
        CertificateDer::pem_slice_iter(files.cert.as_bytes()).count(),
        1
    );
    for key in [&files.ca_key, &files.key] {
        let pair = rcgen::KeyPair::from_pem(key).expect("a PKCS#8 key");
        assert_eq!(
            pair.algorithm(),
            &rcgen::PKCS_ECDSA_P256_SHA256,
            "ECDSA P-256"
        );
    }
    assert_ne!(
        files.ca_key, files.key,
        "the CA and the server have their own keys"
    );
}

#[test]
fn refuses_to_overwrite_without_force_and_replaces_everything_with_force() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = generate(dir.path(), &[]);

    let output = certs_cmd(dir.path(), &[]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("kube-persist: ") && last.contains("--force"),
        "{stderr}"
    );
    assert!(
        last.contains(&dir.path().join("ca.crt").display().to_string()),
        "{last}"
    );
    assert!(
        output.stdout.is_empty(),
        "no caBundle when nothing was written"
    );
    let ca_after = std::fs::read_to_string(dir.path().join("ca.crt")).expect("ca.crt");
    assert_eq!(ca_after, first.ca, "unchanged");

    // A single leftover file is enough to refuse.
    let partial = tempfile::tempdir().expect("tempdir");
    std::fs::write(partial.path().join("tls.key"), "keep me").expect("write");
    assert_eq!(certs_cmd(partial.path(), &[]).status.code(), Some(2));
    assert_eq!(
        std::fs::read_to_string(partial.path().join("tls.key")).expect("read"),
        "keep me"
    );
    assert!(!partial.path().join("ca.crt").exists(), "nothing written");

    let second = generate(dir.path(), &["--force"]);
    assert_ne!(second.ca, first.ca);
    assert_ne!(second.key, first.key);
    #[cfg(unix)]
    assert_eq!(mode(&dir.path().join("tls.key")), 0o600);
}

#[test]
fn bad_input_is_a_one_line_error_naming_the_culprit_never_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").expect("write");
    let under_file = file.join("sub");
    let ok = dir.path().join("ok");
    let cases: Vec<(PathBuf, Vec<&str>, String)> = vec![
        (file.clone(), vec![], file.display().to_string()),
        (under_file.clone(), vec![], under_file.display().to_string()),
        (
            ok.clone(),
            vec!["--service", "Kube_Persist"],
            "--service".into(),
        ),
        (ok.clone(), vec!["--namespace=-x"], "--namespace".into()),
        (
            ok.clone(),
            vec!["--cluster-domain", "a..b"],
            "--cluster-domain".into(),
        ),
        (ok.clone(), vec!["--days", "0"], "--days".into()),
        (
            ok.clone(),
            vec!["--days", "400", "--ca-days", "300"],
            "--ca-days".into(),
        ),
        (
            ok.clone(),
            vec!["--ca-days", "4000000000"],
            "--ca-days".into(),
        ),
        (ok.clone(), vec!["--days", "99999999999"], "--days".into()),
    ];
    for (out, extra, culprit) in cases {
        let output = certs_cmd(&out, &extra);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{extra:?} succeeded");
        assert_ne!(output.status.code(), Some(101), "panicked: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(stderr.contains(&culprit), "{extra:?}: {stderr}");
        assert!(output.stdout.is_empty());
    }
    assert!(!ok.exists(), "invalid flags write nothing");
}

// ---------------------------------------------------------------------------------------------
// TLS with the generated certificates

/// A TLS listener on 127.0.0.1 serving `cert_pem`/`key_pem`; after a handshake it writes `ok`.
async fn tls_server(cert_pem: &str, key_pem: &str) -> SocketAddr {
    install_provider();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("certificate PEM");
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key PEM");
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("rustls accepts the certificate and key");
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let _ = tls.write_all(b"ok").await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    addr
}

/// A clock for the client's certificate checks.
#[derive(Debug)]
struct Clock(UnixTime);

impl rustls::time_provider::TimeProvider for Clock {
    fn current_time(&self) -> Option<UnixTime> {
        Some(self.0)
    }
}

fn now_plus(seconds: i64) -> UnixTime {
    let now = UnixTime::now().as_secs();
    UnixTime::since_unix_epoch(Duration::from_secs(now.saturating_add_signed(seconds)))
}

/// Connects to `addr` as `name` (TCP to 127.0.0.1, SNI and verification by name), trusting only
/// `ca_pem`, with the clock at `at`. Returns what the server sent.
async fn connect(addr: SocketAddr, ca_pem: &str, name: &str, at: UnixTime) -> io::Result<String> {
    install_provider();
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(ca.expect("CA PEM"))
            .expect("a usable trust anchor");
    }
    assert_eq!(roots.len(), 1, "only the generated CA is trusted");
    let config = ClientConfig::builder_with_details(
        Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        Arc::new(Clock(at)),
    )
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let server_name = ServerName::try_from(name.to_string()).expect("a valid server name");
    let tcp = TcpStream::connect(addr).await?;
    let mut tls = tokio::time::timeout(
        Duration::from_secs(10),
        TlsConnector::from(Arc::new(config)).connect(server_name, tcp),
    )
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "handshake timed out"))??;
    let mut got = String::new();
    tls.read_to_string(&mut got).await?;
    Ok(got)
}

/// The certificate error a failed handshake carries.
fn certificate_error(result: io::Result<String>) -> CertificateError {
    let err = result.expect_err("the handshake must fail");
    match err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(e)) => e.clone(),
        other => panic!("not a certificate error: {err} ({other:?})"),
    }
}

#[tokio::test]
async fn a_client_trusting_only_the_ca_connects_by_every_service_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = generate(dir.path(), &[]);
    let addr = tls_server(&files.cert, &files.key).await;
    for name in SERVICE_NAMES {
        let got = connect(addr, &files.ca, name, now_plus(0)).await;
        assert_eq!(got.expect(name), "ok", "{name}");
    }
}

#[tokio::test]
async fn names_other_than_the_service_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = generate(dir.path(), &[]);
    let addr = tls_server(&files.cert, &files.key).await;
    for name in [
        "kube-persist.default.svc",
        "other.kube-persist.svc",
        "kube-persist.kube-persist.svc.cluster.example",
        "localhost",
        "127.0.0.1",
    ] {
        let err = certificate_error(connect(addr, &files.ca, name, now_plus(0)).await);
        assert!(
            matches!(
                err,
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            ),
            "{name}: {err:?}"
        );
    }
}

#[tokio::test]
async fn other_service_namespace_and_domain_flags_change_the_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = generate(
        dir.path(),
        &[
            "--service",
            "hook",
            "--namespace",
            "ops",
            "--cluster-domain",
            "k8s.example",
        ],
    );
    let addr = tls_server(&files.cert, &files.key).await;
    for name in [
        "hook",
        "hook.ops",
        "hook.ops.svc",
        "hook.ops.svc.k8s.example",
    ] {
        assert_eq!(
            connect(addr, &files.ca, name, now_plus(0))
                .await
                .expect(name),
            "ok"
        );
    }
    let err = certificate_error(connect(addr, &files.ca, API_SERVER_NAME, now_plus(0)).await);
    assert!(matches!(
        err,
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
    ));
}

#[tokio::test]
async fn the_certificate_is_valid_for_the_days_asked_and_no_longer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = generate(dir.path(), &["--days", "30", "--ca-days", "60"]);
    let addr = tls_server(&files.cert, &files.key).await;
    let day = i64::try_from(DAY).expect("fits");

    let at = |days: i64| now_plus(days * day);
    assert_eq!(
        connect(addr, &files.ca, API_SERVER_NAME, at(29))
            .await
            .expect("day 29"),
        "ok"
    );
    let err = certificate_error(connect(addr, &files.ca, API_SERVER_NAME, at(31)).await);
    assert!(
        matches!(
            err,
            CertificateError::Expired | CertificateError::ExpiredContext { .. }
        ),
        "{err:?}"
    );
    // Valid from a day back (clock skew between the machine that ran `certs` and the cluster).
    assert_eq!(
        connect(addr, &files.ca, API_SERVER_NAME, now_plus(-day / 2))
            .await
            .expect("skew"),
        "ok"
    );
    let err = certificate_error(connect(addr, &files.ca, API_SERVER_NAME, at(-2)).await);
    assert!(
        matches!(
            err,
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_expired_certificate_is_refused() {
    // A certificate whose validity has passed, from a CA the client trusts.
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test CA");
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params =
        rcgen::CertificateParams::new(SERVICE_NAMES.map(String::from).to_vec()).expect("params");
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(30);
    params.not_after = now - time::Duration::days(1);
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let cert = params.signed_by(&key, &issuer).expect("signed");

    let addr = tls_server(&cert.pem(), &key.serialize_pem()).await;
    let err = certificate_error(connect(addr, &ca_cert.pem(), API_SERVER_NAME, now_plus(0)).await);
    assert!(
        matches!(
            err,
            CertificateError::Expired | CertificateError::ExpiredContext { .. }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ours = generate(&dir.path().join("ours"), &[]);
    let theirs = generate(&dir.path().join("theirs"), &[]);
    let addr = tls_server(&theirs.cert, &theirs.key).await;
    let err = certificate_error(connect(addr, &ours.ca, API_SERVER_NAME, now_plus(0)).await);
    assert!(matches!(err, CertificateError::UnknownIssuer), "{err:?}");
}

#[tokio::test]
async fn the_serving_certificate_cannot_act_as_a_ca() {
    // Sign a certificate with the serving key, posing as an issuer: a client trusting the CA
    // must not accept the chain leaf <- serving cert <- CA.
    let dir = tempfile::tempdir().expect("tempdir");
    let files = generate(dir.path(), &[]);
    let serving_key = rcgen::KeyPair::from_pem(&files.key).expect("key");
    let mut issuer_params = rcgen::CertificateParams::default();
    issuer_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kube-persist.kube-persist.svc");
    issuer_params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "kube-persist");
    let issuer = rcgen::Issuer::from_params(&issuer_params, &serving_key);
    let leaf_key = rcgen::KeyPair::generate().expect("key");
    let leaf = rcgen::CertificateParams::new(vec![API_SERVER_NAME.to_string()])
        .expect("params")
        .signed_by(&leaf_key, &issuer)
        .expect("signed");
    let chain = format!("{}{}", leaf.pem(), files.cert);
    let addr = tls_server(&chain, &leaf_key.serialize_pem()).await;
    let err = certificate_error(connect(addr, &files.ca, API_SERVER_NAME, now_plus(0)).await);
    // webpki's EndEntityUsedAsCa, which rustls passes on as CertificateError::Other.
    assert!(
        format!("{err:?}").contains("EndEntityUsedAsCa"),
        "refused because the serving certificate is no CA: {err:?}"
    );
}
