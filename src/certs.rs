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
        #[source]
        source: rcgen::Error,
    },
    /// A name is not a valid DNS name.
    #[error("`{0}` is not a valid DNS name for a certificate")]
    BadName(String),
    /// A validity period is zero or reaches past what a certificate can express.
    #[error("the {what} validity of {days} days is out of range (1 to {MAX_DAYS} days)")]
    Validity {
        /// Which certificate.
        what: &'static str,
        days: u32,
    },
}

/// Longest validity accepted, in days (100 years: far past any sensible rotation, well inside
/// what X.509 and the `time` crate can represent).
pub const MAX_DAYS: u32 = 36_500;

/// The DNS names the API server may use for `service` in `namespace`.
pub fn service_dns_names(service: &str, namespace: &str, cluster_domain: &str) -> Vec<String> {
    vec![
        service.to_string(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.{cluster_domain}"),
    ]
}

/// Options for the serving certificate of the webhook Service `service` in `namespace`: the
/// names of [`service_dns_names`], no IP address. Names are not checked here; see
/// [`is_dns_label`] and [`is_dns_subdomain`].
pub fn service_options(
    service: &str,
    namespace: &str,
    cluster_domain: &str,
    days: u32,
    ca_days: u32,
) -> CertOptions {
    let svc = format!("{service}.{namespace}.svc");
    // X.509 limits a common name to 64 characters; the SANs are what clients check anyway.
    let common_name = if svc.len() <= 64 {
        svc
    } else {
        service.to_string()
    };
    CertOptions {
        ca_common_name: format!("kube-persist CA for {service}.{namespace}"),
        common_name,
        dns_names: service_dns_names(service, namespace, cluster_domain),
        ip_addresses: Vec::new(),
        ca_days,
        days,
    }
}

/// The webhook configuration's `caBundle`: the CA certificate PEM, base64 encoded.
pub fn ca_bundle(ca_cert_pem: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(ca_cert_pem.as_bytes())
}

/// Whether `name` is an RFC 1123 DNS label, as Kubernetes requires of namespace names:
/// 1 to 63 lowercase letters, digits and `-`, starting and ending with a letter or digit.
pub fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first().is_some_and(|b| *b != b'-')
        && bytes.last().is_some_and(|b| *b != b'-')
}

/// Whether `name` is an RFC 1035 DNS label, as Kubernetes requires of Service names: an
/// [RFC 1123 label](is_dns_label) that starts with a letter.
pub fn is_service_name(name: &str) -> bool {
    is_dns_label(name) && name.as_bytes().first().is_some_and(u8::is_ascii_lowercase)
}

/// Whether `name` is a DNS subdomain (dot-separated [labels](is_dns_label), at most 253
/// characters), such as a cluster domain.
pub fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_dns_label)
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
    let ca_not_after = not_after(now, opts.ca_days, "CA")?;
    let leaf_not_after = not_after(now, opts.days, "serving certificate")?;

    let ca_key = KeyPair::generate().map_err(gen_err("CA key"))?;
    let mut ca = CertificateParams::default();
    // A per-key suffix makes every CA's name unique, so a client that trusts another
    // kube-persist CA reports an unknown issuer instead of a bad signature.
    ca.distinguished_name = name(&format!("{} {}", opts.ca_common_name, key_tag(&ca_key)));
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = now - time_days(1);
    ca.not_after = ca_not_after;
    let ca_cert = ca.self_signed(&ca_key).map_err(gen_err("CA certificate"))?;

    let key = KeyPair::generate().map_err(gen_err("serving key"))?;
    let mut leaf = CertificateParams::default();
    leaf.distinguished_name = name(&opts.common_name);
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.not_before = now - time_days(1);
    leaf.not_after = leaf_not_after;
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

/// Eight hex digits of the public key (after the SEC1 point-format byte): random per key.
fn key_tag(key: &KeyPair) -> String {
    key.public_key_raw()
        .iter()
        .skip(1)
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn time_days(days: u32) -> time::Duration {
    time::Duration::days(i64::from(days))
}

/// `now` plus `days`, refusing zero and anything past [`MAX_DAYS`] (which could overflow).
fn not_after(
    now: time::OffsetDateTime,
    days: u32,
    what: &'static str,
) -> Result<time::OffsetDateTime, CertError> {
    if days == 0 || days > MAX_DAYS {
        return Err(CertError::Validity { what, days });
    }
    now.checked_add(time_days(days))
        .ok_or(CertError::Validity { what, days })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_options_carry_the_four_service_names() {
        let opts = service_options("kube-persist", "kube-persist", "cluster.local", 30, 300);
        assert_eq!(
            opts.dns_names,
            [
                "kube-persist",
                "kube-persist.kube-persist",
                "kube-persist.kube-persist.svc",
                "kube-persist.kube-persist.svc.cluster.local",
            ]
        );
        assert_eq!(opts.common_name, "kube-persist.kube-persist.svc");
        assert!(opts.ip_addresses.is_empty());
        assert_eq!((opts.days, opts.ca_days), (30, 300));
    }

    #[test]
    fn a_long_service_name_keeps_the_common_name_short() {
        let long = "a".repeat(63);
        let opts = service_options(&long, &long, "cluster.local", 1, 1);
        assert_eq!(opts.common_name, long);
        assert!(generate(&opts).is_ok());
    }

    #[test]
    fn out_of_range_validity_is_an_error_not_a_panic() {
        for (days, ca_days) in [
            (0, 10),
            (10, 0),
            (u32::MAX, 10),
            (10, u32::MAX),
            (1, MAX_DAYS + 1),
        ] {
            let opts = service_options("a", "b", "cluster.local", days, ca_days);
            let err = generate(&opts).unwrap_err();
            assert!(matches!(err, CertError::Validity { .. }), "{err}");
        }
        assert!(generate(&service_options("a", "b", "c", MAX_DAYS, MAX_DAYS)).is_ok());
    }

    #[test]
    fn names_follow_kubernetes_rules() {
        for ok in ["a", "kube-persist", "a1", &"x".repeat(63)] {
            assert!(is_dns_label(ok), "{ok}");
            assert!(is_service_name(ok), "{ok}");
        }
        assert!(is_dns_label("1abc"));
        assert!(!is_service_name("1abc"));
        for bad in ["", "-a", "a-", "A", "a.b", "a_b", "ä", &"x".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad:?}");
            assert!(!is_service_name(bad), "{bad:?}");
        }
        assert!(is_dns_subdomain("cluster.local"));
        assert!(is_dns_subdomain("k8s"));
        for bad in [
            "",
            ".",
            "cluster..local",
            "cluster.local.",
            "Cluster.local",
            "a b",
        ] {
            assert!(!is_dns_subdomain(bad), "{bad:?}");
        }
    }

    #[test]
    fn ca_bundle_is_base64_of_the_pem() {
        assert_eq!(ca_bundle("-----BEGIN"), "LS0tLS1CRUdJTg==");
    }
}
