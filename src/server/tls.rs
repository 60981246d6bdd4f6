//! TLS for the webhook: the rustls server configuration (TLS 1.2 and 1.3, ALPN h2 and
//! http/1.1) and a certificate resolver whose key pair is swapped when the mounted files change.
//! A bad new pair never replaces a good one.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
};

use arc_swap::ArcSwap;
use rustls::{
    RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
};

use crate::certs;

/// A certificate or key that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        /// `--tls-cert` or `--tls-key`.
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The certificate file holds no PEM certificate.
    #[error("--tls-cert {0}: no PEM certificate found")]
    NoCertificate(PathBuf),
    /// A PEM block is malformed.
    #[error("{what} {path}: malformed PEM: {message}")]
    Pem {
        /// `--tls-cert` or `--tls-key`.
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    /// The key is unusable or does not belong to the certificate.
    #[error("--tls-key {path} does not fit --tls-cert: {source}")]
    Key {
        /// The key file.
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    /// `--client-ca` holds no usable CA certificate.
    #[error("--client-ca {path}: {problem}")]
    ClientCa { path: PathBuf, problem: String },
    /// The development certificate could not be made or written.
    #[error("development certificate: {0}")]
    Dev(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The certificate and key files, as read (to notice changes).
#[derive(Clone, PartialEq, Eq)]
pub struct PemPair {
    /// Certificate chain PEM.
    pub cert: Vec<u8>,
    /// Private key PEM.
    pub key: Vec<u8>,
}

impl fmt::Debug for PemPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("PemPair")
            .field("cert_bytes", &self.cert.len())
            .field("key_bytes", &self.key.len())
            .finish()
    }
}

impl PemPair {
    pub fn read(cert: &Path, key: &Path) -> Result<PemPair, TlsError> {
        let read = |what, path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                what,
                path: path.to_path_buf(),
                source,
            })
        };
        Ok(PemPair {
            cert: read("--tls-cert", cert)?,
            key: read("--tls-key", key)?,
        })
    }

    /// Parses the pair into a servable key, checking the key matches the certificate.
    pub fn certified_key(
        &self,
        cert_path: &Path,
        key_path: &Path,
        provider: &CryptoProvider,
    ) -> Result<CertifiedKey, TlsError> {
        let chain = CertificateDer::pem_slice_iter(&self.cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Pem {
                what: "--tls-cert",
                path: cert_path.to_path_buf(),
                message: e.to_string(),
            })?;
        if chain.is_empty() {
            return Err(TlsError::NoCertificate(cert_path.to_path_buf()));
        }
        let key = PrivateKeyDer::from_pem_slice(&self.key).map_err(|e| TlsError::Pem {
            what: "--tls-key",
            path: key_path.to_path_buf(),
            message: e.to_string(),
        })?;
        CertifiedKey::from_der(chain, key, provider).map_err(|source| TlsError::Key {
            path: key_path.to_path_buf(),
            source,
        })
    }
}

/// Serves whatever key pair is current.
#[derive(Debug)]
pub struct CertResolver {
    current: ArcSwap<CertifiedKey>,
}

impl CertResolver {
    pub fn new(key: CertifiedKey) -> Self {
        CertResolver {
            current: ArcSwap::from_pointee(key),
        }
    }

    /// Serves `key` from the next handshake on.
    pub fn replace(&self, key: CertifiedKey) {
        self.current.store(Arc::new(key));
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The CAs of `--client-ca` (a PEM bundle), read once at start.
pub fn client_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let problem = |problem: String| TlsError::ClientCa {
        path: path.to_path_buf(),
        problem,
    };
    let pem = std::fs::read(path).map_err(|e| problem(e.to_string()))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| problem(format!("malformed PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| problem(format!("not a CA certificate rustls can use: {e}")))?;
    }
    if roots.is_empty() {
        return Err(problem("no PEM certificate found".to_string()));
    }
    Ok(roots)
}

/// The rustls configuration of the webhook; with `client_roots`, a client must present a
/// certificate one of them signed.
pub fn server_config(
    resolver: Arc<CertResolver>,
    provider: Arc<CryptoProvider>,
    client_roots: Option<RootCertStore>,
) -> Result<ServerConfig, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match client_roots {
        None => builder.with_no_client_auth(),
        Some(roots) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Config(rustls::Error::General(e.to_string())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Generates the development certificate for localhost, writes its CA to `ca_dir/ca.crt` and
/// returns the serving pair.
pub fn dev_certificate(ca_dir: &Path) -> Result<PemPair, TlsError> {
    let generated =
        certs::generate(&certs::dev_options()).map_err(|e| TlsError::Dev(e.to_string()))?;
    std::fs::create_dir_all(ca_dir)
        .map_err(|e| TlsError::Dev(format!("cannot create {}: {e}", ca_dir.display())))?;
    let ca_path = ca_dir.join("ca.crt");
    std::fs::write(&ca_path, &generated.ca_cert_pem)
        .map_err(|e| TlsError::Dev(format!("cannot write {}: {e}", ca_path.display())))?;
    tracing::info!(
        ca = %ca_path.display(),
        "Generated a development certificate for localhost; trust its CA to call the webhook"
    );
    Ok(PemPair {
        cert: generated.cert_pem.into_bytes(),
        key: generated.key_pem.into_bytes(),
    })
}
