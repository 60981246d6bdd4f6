//! `--client-ca`: only clients with a certificate from those CAs (the API server, configured
//! with a client certificate for webhooks) may post reviews; anyone else is refused in the TLS
//! handshake. The real binary, real TLS.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Client, Proto, Webhook};
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use serde_json::Value;

/// A CA (PEM) and a client certificate it signed (PEM chain and key).
fn client_ca_and_certificate(name: &str) -> (String, String, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::new()).unwrap();
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} client CA"));
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(Vec::new()).unwrap();
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, "kube-apiserver-webhook-client");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = leaf
        .signed_by(&key, &Issuer::from_params(&ca, &ca_key))
        .unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

fn config_with(ca_pem: &str, cert_pem: &str, key_pem: &str) -> rustls::ClientConfig {
    common::install_crypto();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    config.alpn_protocols = common::alpn(Proto::H1).iter().map(|p| p.to_vec()).collect();
    config
}

async fn try_review(client: Result<Client, String>, body: &[u8]) -> Result<Value, String> {
    client?.review(body.to_vec()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_clients_with_a_certificate_of_the_client_ca_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let (client_ca, cert, key) = client_ca_and_certificate("trusted");
    let (_, other_cert, other_key) = client_ca_and_certificate("other");
    std::fs::write(dir.path().join("client-ca.crt"), &client_ca).unwrap();
    let webhook = Webhook::start(
        dir.path(),
        &[
            "--client-ca",
            dir.path().join("client-ca.crt").to_str().unwrap(),
        ],
    );
    let object: Value =
        serde_json::from_slice(&common::fixture("reviews/a-prometheus.json")).unwrap();
    let body = serde_json::to_vec(&object).unwrap();

    let anonymous = try_review(
        Client::connect(webhook.addr, &webhook.ca_pem, Proto::H1).await,
        &body,
    )
    .await;
    assert!(anonymous.is_err(), "served without a client certificate");
    let stranger = try_review(
        Client::connect_with(
            webhook.addr,
            config_with(&webhook.ca_pem, &other_cert, &other_key),
            Proto::H1,
        )
        .await,
        &body,
    )
    .await;
    assert!(stranger.is_err(), "served with another CA's certificate");

    let answer = try_review(
        Client::connect_with(
            webhook.addr,
            config_with(&webhook.ca_pem, &cert, &key),
            Proto::H1,
        )
        .await,
        &body,
    )
    .await
    .unwrap();
    assert_eq!(answer["response"]["allowed"], true);
    assert_eq!(
        answer["response"]["auditAnnotations"]["decision"],
        "mutated"
    );
}

#[test]
fn a_client_ca_file_without_a_certificate_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    common::write_certs(dir.path());
    std::fs::write(dir.path().join("empty.pem"), "not a certificate\n").unwrap();
    let output = std::process::Command::new(common::binary())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--tls-cert")
        .arg(dir.path().join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.path().join("tls.key"))
        .arg("--client-ca")
        .arg(dir.path().join("empty.pem"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--client-ca") && stderr.contains("no PEM certificate found"),
        "{stderr}"
    );
}
