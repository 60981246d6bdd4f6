//! The policy file parser: YAML text in, a validated `Policy` or an error out.
//!
//! Checked for every policy that loads: every field is within what validation promises (class
//! names are DNS subdomains, sizes positive and at most 2^80 bytes, access modes known and
//! never empty, the retention ratio in [0, 1), namespace names are DNS labels), the storage of
//! each namespace comes from its override or the defaults, the compiled volume-name exclusions
//! agree with each pattern compiled alone, and the admission engine under the policy keeps its
//! promises on the review fixtures (see `check_review`).
#![no_main]

use kube_persist::{
    policy::{Mode, Overrides, Policy, Source},
    quantity::{ACCESS_MODES, Quantity, is_dns_subdomain},
};
use kube_persist_fuzz::check_review;
use libfuzzer_sys::fuzz_target;

const REVIEWS: [&[u8]; 2] = [
    include_bytes!("../../tests/fixtures/reviews/a-prometheus.json"),
    include_bytes!("../../tests/fixtures/bench/b-sts-small.json"),
];

/// Volume names to try the exclusions on.
const VOLUMES: [&str; 6] = ["data", "tmp", "cache", "run", "", "prometheus-k8s-db"];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(policy) = Policy::from_yaml(text, "fuzz") else {
        return;
    };
    check(&policy);
    for review in REVIEWS {
        check_review(review, &policy);
    }
});

fn check(policy: &Policy) {
    let storage = &policy.storage;
    check_storage(
        &storage.storage_class_name,
        &storage.size,
        &storage.access_modes,
    );
    assert!((0.0..1.0).contains(&policy.retention_size_ratio));
    for ns in &policy.exclude_namespaces {
        assert!(is_dns_label(ns), "excluded namespace {ns:?}");
        assert!(policy.is_excluded_namespace(ns));
    }
    for (ns, o) in &policy.namespaces {
        assert!(is_dns_label(ns), "namespace key {ns:?}");
        assert_eq!(policy.mode_for(ns), o.mode.unwrap_or(policy.mode));
        let spec = policy
            .storage_for(ns, &Overrides::default())
            .expect("no annotations, no errors");
        assert_eq!(
            spec.storage_class_name,
            o.storage_class_name
                .as_deref()
                .unwrap_or(&storage.storage_class_name)
        );
        assert_eq!(*spec.size, *o.size.as_ref().unwrap_or(&storage.size));
        assert_eq!(
            *spec.access_modes,
            *o.access_modes.as_deref().unwrap_or(&storage.access_modes)
        );
        let overridden =
            o.storage_class_name.is_some() || o.size.is_some() || o.access_modes.is_some();
        let source = if overridden {
            Source::Namespace
        } else {
            Source::Default
        };
        assert_eq!(spec.source, source);
        check_storage(&spec.storage_class_name, &spec.size, &spec.access_modes);
    }
    // A namespace without an override gets the defaults.
    let unnamed = policy
        .storage_for("", &Overrides::default())
        .expect("no annotations, no errors");
    assert_eq!(unnamed.source, Source::Default);
    assert_eq!(policy.mode_for(""), policy.mode);
    assert!(matches!(policy.mode, Mode::Enforce | Mode::Audit));

    let patterns = &policy.stateful_sets.exclude_volume_names;
    for volume in VOLUMES
        .iter()
        .copied()
        .chain(patterns.iter().map(String::as_str))
    {
        let alone = patterns.iter().any(|p| {
            regex::Regex::new(p)
                .expect("a pattern the policy accepted")
                .is_match(volume)
        });
        assert_eq!(
            policy.stateful_sets.is_excluded_volume(volume),
            alone,
            "exclusion of {volume:?} by {patterns:?}"
        );
    }
}

fn check_storage(class: &str, size: &Quantity, modes: &[String]) {
    assert!(is_dns_subdomain(class), "class {class:?}");
    assert!((1..=1u128 << 80).contains(&size.bytes()), "size {size}");
    assert_eq!(Quantity::parse(size.as_str()).as_ref(), Ok(size));
    assert!(!modes.is_empty());
    assert!(
        modes.iter().all(|m| ACCESS_MODES.contains(&m.as_str())),
        "{modes:?}"
    );
}

fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}
