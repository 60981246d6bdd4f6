//! Shared by `tests/statefulset_fixtures.rs` and `tests/statefulset_props.rs`: wraps a
//! StatefulSet in an AdmissionReview, runs the engine, and checks every invariant the issue
//! lists on the response and the patched object.

#![allow(dead_code)]

use base64::Engine as _;
use json_patch::PatchOperation;
use k8s_openapi::api::apps::v1::StatefulSet;
use kube_persist::{
    admission::{Decision, MAX_WARNING_LEN, Operation, Outcome, ReviewBody, review},
    policy::Policy,
};
use serde_json::Value;

/// An AdmissionReview v1 request for `object` (a StatefulSet) with `operation`, in namespace
/// `default` unless the object names one.
pub fn review_of(operation: &str, object: &Value) -> Value {
    let operation: Operation = serde_json::from_value(operation.into()).expect("an operation");
    let namespace = object["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default");
    let body = ReviewBody::new(object)
        .uid("7c0e7f4a-3a53-4c3c-9d43-0d9f1b1e2a11")
        .namespace(Some(namespace))
        .operation(operation)
        .user(
            "system:serviceaccount:argocd:argocd-application-controller",
            &["system:serviceaccounts", "system:authenticated"],
        );
    let body = if operation == Operation::Update {
        body.old_object(object)
    } else {
        body
    };
    serde_json::from_slice(&body.to_vec()).expect("JSON")
}

/// What [`check`] found.
#[derive(Debug)]
pub struct Checked {
    /// The engine's decision.
    pub decision: Decision,
    /// The decoded AdmissionReview response.
    pub response: Value,
    /// The request object.
    pub original: Value,
    /// The object after the response's patch (the original when there is none).
    pub result: Value,
    /// Names of the claim templates the patch added.
    pub added_claims: Vec<String>,
}

fn pod(object: &Value) -> &Value {
    &object["spec"]["template"]["spec"]
}

fn items(value: &Value) -> impl Iterator<Item = &Value> {
    value.as_array().into_iter().flatten()
}

fn names(value: &Value) -> Vec<&str> {
    items(value)
        .filter_map(|v| v["name"].as_str().or(v["metadata"]["name"].as_str()))
        .collect()
}

/// Every `(container, mount)` of containers and init containers.
pub fn mounts(object: &Value) -> Vec<(&str, &Value)> {
    let pod = pod(object);
    items(&pod["containers"])
        .chain(items(&pod["initContainers"]))
        .flat_map(|c| {
            let name = c["name"].as_str().unwrap_or("");
            items(&c["volumeMounts"]).map(move |m| (name, m))
        })
        .collect()
}

/// The base64 patch of a response, decoded.
pub fn response_patch(response: &Value) -> Option<Vec<PatchOperation>> {
    let text = response["response"]["patch"].as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("the patch is base64");
    Some(serde_json::from_slice(&bytes).expect("the patch is an RFC 6902 array"))
}

/// Runs the engine on `body` under `policy` and asserts every invariant:
/// uid echoed; allowed unless denied; only `add`/`remove` of what we own; the patch applies;
/// re-submitting the result gives no patch; the result is a valid `StatefulSet` for k8s-openapi;
/// every claim template has a mount; no pod volume shares a name with a claim; every mount
/// resolves; every field the patch did not target is unchanged.
pub fn check(body: &[u8], policy: &Policy) -> Checked {
    let request: Value = serde_json::from_slice(body).expect("the fixture is JSON");
    let uid = request["request"]["uid"].clone();
    let original = request["request"]["object"].clone();

    let reviewed = review(body, policy).expect("a valid AdmissionReview");
    let decision = reviewed.decision;
    let response: Value = serde_json::from_slice(&reviewed.response).expect("response is JSON");
    assert_eq!(response["apiVersion"], request["apiVersion"]);
    assert_eq!(response["kind"], "AdmissionReview");
    assert_eq!(response["response"]["uid"], uid, "uid echoed");
    assert_eq!(
        response["response"]["allowed"],
        decision.denied().is_none(),
        "allowed unless denied"
    );
    assert_eq!(
        response["response"]["auditAnnotations"]["decision"],
        decision.outcome().as_str()
    );
    for w in &decision.warnings {
        assert!(
            w.chars().count() <= MAX_WARNING_LEN,
            "warning too long: {w}"
        );
        assert!(w.starts_with("kube-persist: "), "{w}");
    }

    let ops = response_patch(&response);
    assert_eq!(
        ops.is_some(),
        decision.outcome() == Outcome::Mutated,
        "a patch exactly when mutated: {}",
        decision.reason()
    );
    if decision.outcome() == Outcome::Mutated {
        assert_eq!(response["response"]["patchType"], "JSONPatch");
    }
    let ops = ops.unwrap_or_default();
    let mut result = original.clone();
    let patch = json_patch::Patch(ops.clone());
    json_patch::patch(&mut result, &patch).expect("the patch applies cleanly");

    let added_claims = check_untargeted_unchanged(&original, &result, &ops);
    check_object(&result);
    if !ops.is_empty() {
        check_added_claims(&result, &added_claims);
    }

    // Re-submitting the result gives no patch.
    let mut again = request.clone();
    again["request"]["object"] = result.clone();
    let body = serde_json::to_vec(&again).expect("serializable");
    let second = review(&body, policy).expect("a valid AdmissionReview");
    let second_response: Value = serde_json::from_slice(&second.response).expect("JSON");
    assert!(
        second_response["response"].get("patch").is_none(),
        "re-submitting the result gave a patch: {}",
        second.decision.reason()
    );
    if !ops.is_empty() {
        assert_eq!(second.decision.outcome(), Outcome::Unchanged);
        assert!(
            second.decision.warnings.is_empty(),
            "{:?}",
            second.decision.warnings
        );
    }

    Checked {
        decision,
        response,
        original,
        result,
        added_claims,
    }
}

/// The invariants of a StatefulSet that must hold after the patch.
pub fn check_object(object: &Value) {
    if object.is_null() {
        return;
    }
    let typed: StatefulSet = serde_json::from_value(object.clone())
        .unwrap_or_else(|e| panic!("the result is not a k8s-openapi StatefulSet: {e}"));
    let claims: Vec<String> = typed
        .spec
        .volume_claim_templates
        .iter()
        .flatten()
        .filter_map(|c| c.metadata.name.clone())
        .collect();
    let volumes = names(&pod(object)["volumes"]);
    let mounts = mounts(object);
    for claim in &claims {
        assert!(
            mounts.iter().any(|(_, m)| m["name"] == claim.as_str()),
            "claim template {claim} has no volumeMount"
        );
        assert!(
            !volumes.contains(&claim.as_str()),
            "pod volume {claim} shares its name with a claim template"
        );
    }
    for (container, m) in &mounts {
        let name = m["name"].as_str().unwrap_or("");
        assert!(
            volumes.contains(&name) || claims.iter().any(|c| c == name),
            "container {container} mounts {name}, which is neither a volume nor a claim"
        );
    }
}

/// Each added claim asks for the policy's class and at least its size.
fn check_added_claims(result: &Value, added: &[String]) {
    for claim in items(&result["spec"]["volumeClaimTemplates"]) {
        let name = claim["metadata"]["name"].as_str().unwrap_or("");
        if !added.iter().any(|a| a == name) {
            continue;
        }
        assert_eq!(
            claim["metadata"]["annotations"]["kube-persist.io/added-by"], "kube-persist",
            "{name}: provenance annotation"
        );
        let spec = &claim["spec"];
        assert!(spec["storageClassName"].is_string(), "{name}: class");
        assert!(
            !items(&spec["accessModes"]).collect::<Vec<_>>().is_empty(),
            "{name}: access modes"
        );
        let size = spec["resources"]["requests"]["storage"]
            .as_str()
            .expect("a size");
        let bytes = kube_persist::quantity::parse_bytes(size).expect("a quantity");
        assert!(bytes > 0, "{name}: size {size}");
    }
}

/// Strips exactly what the operations target from both documents and asserts that what is left
/// is identical; checks each operation is one kube-persist owns. Returns the added claim names.
fn check_untargeted_unchanged(
    original: &Value,
    result: &Value,
    ops: &[PatchOperation],
) -> Vec<String> {
    let mut before = original.clone();
    let mut after = result.clone();
    let mut removed_volumes: Vec<usize> = Vec::new();
    let mut added_claims = Vec::new();
    for op in ops {
        let (kind, path) = match op {
            PatchOperation::Add(a) => ("add", a.path.as_str().to_string()),
            PatchOperation::Remove(r) => ("remove", r.path.as_str().to_string()),
            other => panic!("only add and remove are allowed: {other:?}"),
        };
        let tokens: Vec<&str> = path.split('/').skip(1).collect();
        match (kind, tokens.as_slice()) {
            ("remove", ["spec", "template", "spec", "volumes", i]) => {
                let i: usize = i.parse().expect("an index");
                let volume = &pod(original)["volumes"][i];
                let medium = volume["emptyDir"]["medium"].as_str().unwrap_or("");
                assert!(
                    volume["emptyDir"].is_object() && medium.is_empty(),
                    "removed volume {volume} is not a disk-backed emptyDir"
                );
                assert!(
                    removed_volumes.last().is_none_or(|last| *last > i),
                    "volumes must be removed from the highest index down: {path}"
                );
                removed_volumes.push(i);
            }
            ("add", ["spec", "volumeClaimTemplates"]) => {
                let existing = &original["spec"]["volumeClaimTemplates"];
                assert!(
                    existing.as_array().is_none_or(Vec::is_empty),
                    "claim templates added over existing ones"
                );
                added_claims = names(&result["spec"]["volumeClaimTemplates"])
                    .into_iter()
                    .map(str::to_string)
                    .collect();
                if let Some(spec) = before["spec"].as_object_mut() {
                    spec.remove("volumeClaimTemplates");
                }
                if let Some(spec) = after["spec"].as_object_mut() {
                    spec.remove("volumeClaimTemplates");
                }
            }
            ("add", ["spec", "template", "spec", list, i, "volumeMounts", "-"])
                if matches!(*list, "containers" | "initContainers") =>
            {
                let i: usize = i.parse().expect("an index");
                let mounts = after["spec"]["template"]["spec"][*list][i]["volumeMounts"]
                    .as_array_mut()
                    .expect("mounts");
                let added = mounts.pop().expect("the appended mount");
                assert_eq!(added["name"], "data", "{path}");
            }
            ("add", ["spec", "template", "spec", list, i, "volumeMounts"])
                if matches!(*list, "containers" | "initContainers") =>
            {
                let i: usize = i.parse().expect("an index");
                assert!(
                    pod(original)[*list][i]["volumeMounts"].is_null(),
                    "{path} replaced existing mounts"
                );
                for doc in [&mut before, &mut after] {
                    if let Some(c) = doc["spec"]["template"]["spec"][*list][i].as_object_mut() {
                        c.remove("volumeMounts");
                    }
                }
            }
            _ => panic!("operation on a path kube-persist does not own: {kind} {path}"),
        }
    }
    for i in &removed_volumes {
        let volumes = before["spec"]["template"]["spec"]["volumes"]
            .as_array_mut()
            .expect("volumes");
        let name = volumes[*i]["name"].as_str().unwrap_or("").to_string();
        assert!(
            added_claims.contains(&name),
            "volume {name} removed but no claim of that name added"
        );
        volumes.remove(*i);
    }
    // `Value` equality compares every string and number exactly (and the API server applies
    // the patch to the decoded object, not to the request's bytes).
    assert_eq!(
        before, after,
        "a field the patch did not target changed (or the patch did more than it says)"
    );
    added_claims
}
