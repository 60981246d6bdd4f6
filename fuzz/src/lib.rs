//! What the fuzz targets share.

use std::time::Duration;

use base64::Engine as _;
use kube_persist::{
    admission::{self, Verdict},
    audit::AuditRecord,
    policy::Policy,
};
use serde_json::Value;

/// Runs the admission engine on `body` under `policy` as the webhook does (response and audit
/// line) and checks, when the body decodes:
/// - the response is an AdmissionReview whose uid is the request's;
/// - the response carries a base64 JSON Patch exactly when the decision mutates, and it is the
///   decision's patch;
/// - the audit line is one JSON line with the same uid;
/// - a patch (returned, or proposed in audit mode) applies to the request object with
///   `json-patch`, and the same request with the patched object gets no patch and no proposal.
pub fn check_review(body: &[u8], policy: &Policy) {
    let Ok(reviewed) = admission::review(body, policy) else {
        return;
    };
    let response: Value = serde_json::from_slice(&reviewed.response).expect("the response is JSON");
    assert_eq!(response["kind"], "AdmissionReview");
    assert_eq!(response["apiVersion"], *reviewed.api_version);
    let uid = &response["response"]["uid"];
    assert_eq!(uid.as_str(), Some(&*reviewed.request.uid), "uid echoed");
    // The request as any JSON reader sees it (absent when serde_json cannot hold it, e.g. a
    // number out of f64 range in a field the engine skips).
    let request: Option<Value> = serde_json::from_slice(body).ok();
    if let Some(request) = &request {
        assert_eq!(uid, &request["request"]["uid"], "uid echoed");
    }
    assert_eq!(
        response["response"]["allowed"],
        reviewed.decision.denied().is_none()
    );

    // The response's patch is the decision's, and only a mutation has one.
    let returned = match &reviewed.decision.verdict {
        Verdict::Mutate(change) if !change.patch.is_empty() => Some(&change.patch),
        _ => None,
    };
    let in_response = response["response"].get("patch").map(|p| {
        let text = p.as_str().expect("the patch is a string");
        let json = base64::engine::general_purpose::STANDARD
            .decode(text)
            .expect("the patch is base64");
        serde_json::from_slice::<json_patch::Patch>(&json).expect("the patch is a JSON Patch")
    });
    match (returned, &in_response) {
        (None, None) => {}
        (Some(patch), Some(decoded)) => {
            assert_eq!(
                serde_json::to_value(decoded).expect("serializable"),
                serde_json::to_value(patch.to_json_patch().expect("a JSON Patch"))
                    .expect("serializable"),
                "the response carries the decision's patch"
            );
            assert_eq!(response["response"]["patchType"], "JSONPatch");
        }
        (returned, decoded) => panic!(
            "patch in the decision: {}, in the response: {}",
            returned.is_some(),
            decoded.is_some()
        ),
    }

    let mut line = Vec::new();
    AuditRecord::new(
        &reviewed.request,
        &reviewed.decision,
        jiff::Timestamp::UNIX_EPOCH,
        Duration::from_micros(1),
    )
    .write_line(&mut line)
    .expect("the audit record serializes");
    assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
    let audit: Value = serde_json::from_slice(&line).expect("the audit line is JSON");
    assert_eq!(&audit["uid"], uid);

    let Some(change) = reviewed.decision.change() else {
        return;
    };
    let Some(mut request) = request else {
        return;
    };
    let patch = change
        .patch
        .to_json_patch()
        .expect("the patch is a JSON Patch");
    let object = &mut request["request"]["object"];
    if let Err(e) = json_patch::patch(object, &patch) {
        panic!(
            "the patch does not apply: {e}\npatch: {}",
            change.patch.json()
        );
    }
    let again = serde_json::to_vec(&request).expect("serializable");
    let second = admission::review(&again, policy).expect("the patched review decodes");
    assert!(
        second.decision.change().is_none(),
        "the patched object gets another change ({}): {}\nfirst: {}",
        second.decision.reason(),
        second.decision.patch().map_or("", |p| p.json()),
        change.patch.json()
    );
    let second_response: Value =
        serde_json::from_slice(&second.response).expect("the response is JSON");
    assert!(second_response["response"].get("patch").is_none());
}
