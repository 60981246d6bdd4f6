//! Every Prometheus-Operator custom resource among the manifest fixtures (kube-prometheus,
//! kube-prometheus-stack, the Prometheus Operator's example CRs, edge cases) goes through the
//! engine as CREATE and as an adopted UPDATE. For each: the uid is echoed, the patch applies
//! cleanly, the result validates against the CRD (no undeclared field), and re-submitting the
//! result gives no patch.
#![allow(clippy::unwrap_used)]

mod common;

use std::{collections::BTreeSet, path::Path};

use common::{apply_patch, review_of};
use kube_persist::{
    admission::{Outcome, review},
    policy::Policy,
};
use serde_json::{Value, json};

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    let docs: Vec<Value> = if path.extension().is_some_and(|e| e == "json") {
        vec![serde_json::from_str(&text).unwrap()]
    } else {
        serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    docs.into_iter()
        .flat_map(|d| match d["kind"].as_str() {
            Some("List") => d["items"].as_array().cloned().unwrap_or_default(),
            _ => vec![d],
        })
        .collect()
}

fn custom_resources() -> Vec<(String, Value)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/manifests");
    let mut out = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "expected") {
                    stack.push(path);
                }
                continue;
            }
            if !path.extension().is_some_and(|e| e == "yaml" || e == "json") {
                continue;
            }
            for (i, doc) in documents(&path).into_iter().enumerate() {
                if doc["apiVersion"]
                    .as_str()
                    .is_some_and(|a| a.starts_with("monitoring.coreos.com/"))
                    && common::crd::plural_of(doc["kind"].as_str().unwrap_or_default()).is_some()
                {
                    let name = format!("{}#{}", path.strip_prefix(&root).unwrap().display(), i + 1);
                    out.push((name, doc));
                }
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn decide(object: &Value, op: &str, uid: &str, policy: &Policy) -> (Outcome, Value) {
    let body = serde_json::to_vec(&review_of(object, op, uid)).unwrap();
    let reviewed = review(&body, policy).unwrap();
    let response: Value = serde_json::from_slice(&reviewed.response).unwrap();
    assert_eq!(response["response"]["uid"], uid, "uid echoed");
    (reviewed.decision.outcome(), response)
}

#[test]
fn every_custom_resource_fixture_keeps_the_invariants() {
    let fixtures = custom_resources();
    let policy = Policy::default();
    let mut mutated_kinds = BTreeSet::new();
    for (name, mut object) in fixtures.clone() {
        if object["metadata"]["namespace"].is_null() {
            object["metadata"]["namespace"] = json!("default");
        }
        let (outcome, response) = decide(&object, "CREATE", &format!("create-{name}"), &policy);
        let mutated = apply_patch(&object, &response);
        if outcome == Outcome::Mutated {
            mutated_kinds.insert(object["kind"].as_str().unwrap().to_string());
            assert!(
                !mutated["spec"]["storage"].is_null(),
                "{name}: storage added"
            );
        } else {
            assert_eq!(
                mutated, object,
                "{name}: {outcome:?} must not change the object"
            );
        }
        if common::crd::check(&object).is_ok() {
            common::crd::check(&mutated).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let (again, response) = decide(&mutated, "CREATE", "again", &policy);
        assert!(
            response["response"].get("patch").is_none(),
            "{name}: second patch ({again:?})"
        );

        // An adopted UPDATE of the same object decides like a CREATE.
        let mut adopted = object.clone();
        adopted["metadata"]["annotations"]["kube-persist.io/adopt"] = json!("true");
        let (update, response) = decide(&adopted, "UPDATE", "update", &policy);
        if outcome == Outcome::Mutated {
            assert_eq!(update, Outcome::Mutated, "{name}");
            let updated = apply_patch(&adopted, &response);
            assert_eq!(
                updated["spec"]["storage"], mutated["spec"]["storage"],
                "{name}"
            );
        }
    }
    assert_eq!(
        mutated_kinds,
        [
            "Alertmanager",
            "Prometheus",
            "PrometheusAgent",
            "ThanosRuler"
        ]
        .map(String::from)
        .into(),
        "every kind is covered by a fixture that gets storage ({} fixtures)",
        fixtures.len()
    );
}

#[test]
fn the_upstream_manifests_themselves_validate() {
    // Fixture sanity: the kube-prometheus objects as shipped are valid against the CRDs, so a
    // failure of the test above is the patch's fault.
    for (name, object) in custom_resources() {
        if name.starts_with("kube-prometheus/") {
            common::crd::check(&object).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}
