//! Certificate generation (rcgen, ECDSA P-256): the development certificate of `serve` and the
//! CA + serving certificate of `kube-persist certs`. Pure apart from the clock; writes nothing.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// What to put in a generated serving certificate.
#[derive(Debug, Clone)]
pub struct CertOptions {
    /// Common name of the CA.
    pub ca_common_name: String,
    /// Common name of the serving certificate.
    pub common_name: String,
    /// DNS subject alternative names.
    pub dns_names: Vec<String>,
    /// IP subject alternative names.
    pub ip_addresses: Vec<IpAddr>,
    /// Validity of the CA, in days from now.
    pub ca_days: u32,
    /// Validity of the serving certificate, in days from now.
    pub days: u32,
}

/// A generated CA and serving certificate, PEM encoded.
#[derive(Debug, Clone)]
pub struct Generated {
    /// CA certificate (goes into the webhook's `caBundle`).
    pub ca_cert_pem: String,
    /// CA private key (PKCS#8).
    pub ca_key_pem: String,
    /// Serving certificate, signed by the CA.
    pub cert_pem: String,
    /// Serving private key (PKCS#8).
    pub key_pem: String,
}

/// Certificate generation failed.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused the parameters or could not sign.
    #[error("cannot generate the {what}: {source}")]
    Generate {
        /// Which certificate.
        what: &'static str,
        /// The rcgen error.
        #[source]
        source: rcgen::Error,
    },
    /// A name is not a valid DNS name.
    #[error("`{0}` is not a valid DNS name for a certificate")]
    BadName(String),
}

/// The DNS names the API server may use for `service` in `namespace`.
pub fn service_dns_names(service: &str, namespace: &str, cluster_domain: &str) -> Vec<String> {
    vec![
        service.to_string(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.{cluster_domain}"),
    ]
}

/// Options for the development certificate: `localhost`, 127.0.0.1 and ::1.
pub fn dev_options() -> CertOptions {
    CertOptions {
        ca_common_name: "kube-persist development CA".to_string(),
        common_name: "localhost".to_string(),
        dns_names: vec!["localhost".to_string()],
        ip_addresses: vec![
            IpAddr::from([127, 0, 0, 1]),
            IpAddr::from([0, 0, 0, 0, 0, 0, 0, 1]),
        ],
        ca_days: 30,
        days: 30,
    }
}

/// Generates a CA and a serving certificate signed by it.
pub fn generate(opts: &CertOptions) -> Result<Generated, CertError> {
    let now = time_now();
    let gen_err = |what| move |source| CertError::Generate { what, source };

    let ca_key = KeyPair::generate().map_err(gen_err("CA key"))?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name = name(&opts.ca_common_name);
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = now - time_days(1);
    ca.not_after = now + time_days(opts.ca_days);
    let ca_cert = ca.self_signed(&ca_key).map_err(gen_err("CA certificate"))?;

    let key = KeyPair::generate().map_err(gen_err("serving key"))?;
    let mut leaf = CertificateParams::default();
    leaf.distinguished_name = name(&opts.common_name);
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.not_before = now - time_days(1);
    leaf.not_after = now + time_days(opts.days);
    for dns in &opts.dns_names {
        let ia5 = dns
            .as_str()
            .try_into()
            .map_err(|_| CertError::BadName(dns.clone()))?;
        leaf.subject_alt_names.push(SanType::DnsName(ia5));
    }
    for ip in &opts.ip_addresses {
        leaf.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    let issuer = Issuer::from_params(&ca, &ca_key);
    let cert = leaf
        .signed_by(&key, &issuer)
        .map_err(gen_err("serving certificate"))?;

    Ok(Generated {
        ca_cert_pem: ca_cert.pem(),
        ca_key_pem: ca_key.serialize_pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "kube-persist");
    dn
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn time_days(days: u32) -> time::Duration {
    time::Duration::days(i64::from(days))
}
