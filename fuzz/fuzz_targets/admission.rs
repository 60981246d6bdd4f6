//! The admission engine as the webhook runs it: AdmissionReview bytes in, the response and the
//! audit line out, under several policies; see `check_review` for what is checked.
#![no_main]

use std::sync::LazyLock;

use kube_persist::policy::Policy;
use kube_persist_fuzz::check_review;
use libfuzzer_sys::fuzz_target;

/// The shipped policy, the defaults, and variants that reach the other branches (audit mode,
/// strict denial, UPDATE mutation of custom resources, namespace overrides, no extras).
static POLICIES: LazyLock<Vec<Policy>> = LazyLock::new(|| {
    [
        "",
        include_str!("../../deploy/base/policy.yaml"),
        "mode: audit",
        "strict: true\nonUpdate: mutate",
        "onUpdate: mutate\nretentionPolicy: none\nretentionSizeRatio: 0\n\
         namespaces: { default: { size: 5Gi, storageClassName: fast, accessModes: [ReadWriteMany] }, \
         monitoring: { mode: audit } }\nstatefulSets: { excludeVolumeNames: [] }",
    ]
    .iter()
    .map(|text| Policy::from_yaml(text, "fuzz").expect("a valid policy"))
    .collect()
});

fuzz_target!(|data: &[u8]| {
    for policy in POLICIES.iter() {
        check_review(data, policy);
    }
});
