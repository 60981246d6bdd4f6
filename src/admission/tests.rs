//! Table tests of the engine over reviews of the Prometheus-Operator kinds, built with
//! [`ReviewBody`].

use serde_json::{Value, json};

use super::{
    testing::{apply, paths},
    *,
};

fn review_of(kind: &str, version: &str, op: &str, object: Value, old: Option<Value>) -> Vec<u8> {
    let op: Operation = serde_json::from_value(op.into()).unwrap();
    let body = ReviewBody::new(&object)
        .kind("monitoring.coreos.com", version, kind)
        .namespace(Some("monitoring"))
        .operation(op)
        .user("alice", &["system:authenticated", "team-a"]);
    match &old {
        Some(old) => body.old_object(old).to_vec(),
        None => body.to_vec(),
    }
}

fn prometheus(spec: Value) -> Value {
    json!({
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "Prometheus",
        "metadata": {"name": "k8s", "namespace": "monitoring", "labels": {"prometheus": "k8s"}},
        "spec": spec,
    })
}

fn with_annotations(mut object: Value, annotations: Value) -> Value {
    object["metadata"]["annotations"] = annotations;
    object
}

fn decide(body: &[u8], policy: &Policy) -> (Decision, Value) {
    let reviewed = review(body, policy).expect("a valid review");
    let response: Value = serde_json::from_slice(&reviewed.response).unwrap();
    (reviewed.decision, response)
}

#[test]
fn prometheus_without_storage_gets_the_default_volume_and_extras() {
    let object = prometheus(json!({"replicas": 2, "retention": "30d", "futureField": {"x": [1]}}));
    let (d, response) = decide(
        &review_of("Prometheus", "v1", "CREATE", object.clone(), None),
        &Policy::default(),
    );
    assert_eq!(d.outcome(), Outcome::Mutated);
    assert_eq!(
        paths(&d),
        [
            "add /spec/storage",
            "add /spec/persistentVolumeClaimRetentionPolicy",
            "add /spec/retentionSize"
        ]
    );
    let r = &response["response"];
    assert_eq!(r["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(r["allowed"], true);
    assert_eq!(r["patchType"], "JSONPatch");
    assert_eq!(
        r["auditAnnotations"],
        json!({"decision": "mutated", "storage": "prometheus-data-db/100Gi"})
    );
    assert_eq!(
        r["warnings"],
        json!([
            "kube-persist: added 100Gi volume on StorageClass prometheus-data-db (Prometheus monitoring/k8s)"
        ])
    );
    let mutated = apply(&object, &response);
    assert_eq!(
        mutated["spec"]["storage"],
        json!({"volumeClaimTemplate": {"spec": {
            "storageClassName": "prometheus-data-db",
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "100Gi"}}
        }}})
    );
    assert_eq!(mutated["spec"]["retentionSize"], "85GiB");
    assert_eq!(
        mutated["spec"]["persistentVolumeClaimRetentionPolicy"],
        json!({"whenDeleted": "Retain", "whenScaled": "Retain"})
    );
    // Everything else is untouched, unknown fields included.
    assert_eq!(mutated["spec"]["futureField"], json!({"x": [1]}));
    assert_eq!(mutated["metadata"], object["metadata"]);
    // Re-submitting the result gives no patch.
    let (again, response) = decide(
        &review_of("Prometheus", "v1", "CREATE", mutated, None),
        &Policy::default(),
    );
    assert_eq!(again.outcome(), Outcome::Unchanged);
    assert!(response["response"].get("patch").is_none());
}

#[test]
fn extras_follow_what_each_crd_declares() {
    let cases = [
        (
            "PrometheusAgent",
            "v1alpha1",
            vec![
                "add /spec/storage",
                "add /spec/persistentVolumeClaimRetentionPolicy",
            ],
        ),
        (
            "Alertmanager",
            "v1",
            vec![
                "add /spec/storage",
                "add /spec/persistentVolumeClaimRetentionPolicy",
            ],
        ),
        ("ThanosRuler", "v1", vec!["add /spec/storage"]),
    ];
    for (kind, version, expected) in cases {
        let mut object = prometheus(json!({"replicas": 1}));
        object["kind"] = json!(kind);
        let (d, _) = decide(
            &review_of(kind, version, "CREATE", object, None),
            &Policy::default(),
        );
        assert_eq!(d.outcome(), Outcome::Mutated, "{kind}");
        assert_eq!(paths(&d), expected, "{kind}");
    }
}

#[test]
fn extras_already_set_or_disabled_are_left_alone() {
    let object = prometheus(json!({
        "retentionSize": "10GB",
        "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete"}
    }));
    let (d, _) = decide(
        &review_of("Prometheus", "v1", "CREATE", object, None),
        &Policy::default(),
    );
    assert_eq!(paths(&d), ["add /spec/storage"]);

    let policy = Policy::from_yaml("retentionPolicy: none\nretentionSizeRatio: 0", "p").unwrap();
    let (d, _) = decide(
        &review_of("Prometheus", "v1", "CREATE", prometheus(json!({})), None),
        &policy,
    );
    assert_eq!(paths(&d), ["add /spec/storage"]);
}

#[test]
fn a_missing_spec_is_added_whole() {
    let mut object = prometheus(json!({}));
    object.as_object_mut().unwrap().remove("spec");
    let (d, response) = decide(
        &review_of("Prometheus", "v1", "CREATE", object.clone(), None),
        &Policy::default(),
    );
    assert_eq!(paths(&d), ["add /spec"]);
    let mutated = apply(&object, &response);
    assert_eq!(
        mutated["spec"]["storage"]["volumeClaimTemplate"]["spec"]["storageClassName"],
        "prometheus-data-db"
    );
    assert_eq!(mutated["spec"]["retentionSize"], "85GiB");
}

#[test]
fn explicit_storage_in_any_form_is_respected() {
    for (storage, warned) in [
        (json!({"emptyDir": {"medium": ""}}), true),
        (json!({"ephemeral": {"volumeClaimTemplate": {}}}), false),
        (json!({}), false),
        (
            json!({"volumeClaimTemplate": {"spec": {"storageClassName": "fast"}}}),
            false,
        ),
    ] {
        let (d, response) = decide(
            &review_of(
                "Prometheus",
                "v1",
                "CREATE",
                prometheus(json!({"storage": storage})),
                None,
            ),
            &Policy::default(),
        );
        assert_eq!(d.outcome(), Outcome::Unchanged, "{storage}");
        assert!(d.patch().is_none());
        assert!(response["response"].get("patch").is_none());
        assert_eq!(
            !d.warnings.is_empty(),
            warned,
            "{storage}: {:?}",
            d.warnings
        );
    }
}

#[test]
fn agent_in_daemonset_mode_is_skipped() {
    let mut object = prometheus(json!({"mode": "DaemonSet"}));
    object["kind"] = json!("PrometheusAgent");
    let (d, _) = decide(
        &review_of("PrometheusAgent", "v1alpha1", "CREATE", object, None),
        &Policy::default(),
    );
    assert_eq!(d.outcome(), Outcome::Skipped);
    assert!(d.reason().contains("DaemonSet"));
}

#[test]
fn update_warns_by_default_and_mutates_when_adopted_or_configured() {
    let object = prometheus(json!({"replicas": 1}));
    let old = object.clone();
    let (d, response) = decide(
        &review_of(
            "Prometheus",
            "v1",
            "UPDATE",
            object.clone(),
            Some(old.clone()),
        ),
        &Policy::default(),
    );
    assert_eq!(d.outcome(), Outcome::Skipped);
    assert!(response["response"].get("patch").is_none());
    assert!(
        d.warnings
            .iter()
            .any(|w| w.contains("kube-persist.io/adopt=true")),
        "{:?}",
        d.warnings
    );

    let adopted = with_annotations(object.clone(), json!({"kube-persist.io/adopt": "true"}));
    let (d, _) = decide(
        &review_of("Prometheus", "v1", "UPDATE", adopted, Some(old.clone())),
        &Policy::default(),
    );
    assert_eq!(d.outcome(), Outcome::Mutated);

    let policy = Policy::from_yaml("onUpdate: mutate", "p").unwrap();
    let (d, _) = decide(
        &review_of("Prometheus", "v1", "UPDATE", object, Some(old)),
        &policy,
    );
    assert_eq!(d.outcome(), Outcome::Mutated);
}

#[test]
fn update_that_drops_storage_gets_the_old_storage_back() {
    let old_storage = json!({"volumeClaimTemplate": {"spec": {"storageClassName": "fast", "resources": {"requests": {"storage": "7Gi"}}}}});
    let old = prometheus(json!({"storage": old_storage}));
    let object = prometheus(json!({"replicas": 1}));
    let (d, response) = decide(
        &review_of("Prometheus", "v1", "UPDATE", object.clone(), Some(old)),
        &Policy::default(),
    );
    assert_eq!(d.outcome(), Outcome::Mutated);
    assert_eq!(paths(&d), ["add /spec/storage"]);
    assert_eq!(apply(&object, &response)["spec"]["storage"], old_storage);
}

#[test]
fn excluded_namespace_and_skip_annotation_are_skipped() {
    let policy = Policy::from_yaml("excludeNamespaces: [monitoring]", "p").unwrap();
    let (d, _) = decide(
        &review_of("Prometheus", "v1", "CREATE", prometheus(json!({})), None),
        &policy,
    );
    assert_eq!(d.outcome(), Outcome::Skipped);
    assert!(d.reason().contains("monitoring"));

    let object = with_annotations(
        prometheus(json!({})),
        json!({"kube-persist.io/skip": "true"}),
    );
    let (d, _) = decide(
        &review_of("Prometheus", "v1", "CREATE", object, None),
        &Policy::default(),
    );
    assert_eq!(d.outcome(), Outcome::Skipped);
}

#[test]
fn annotations_override_class_size_and_access_modes() {
    let object = with_annotations(
        prometheus(json!({})),
        json!({
            "kube-persist.io/size": "50Gi",
            "kube-persist.io/storage-class": "fast-nfs",
            "kube-persist.io/access-modes": "ReadWriteMany",
            "kubectl.kubernetes.io/last-applied-configuration": "{\"huge\": \"json\"}"
        }),
    );
    let (d, response) = decide(
        &review_of("Prometheus", "v1", "CREATE", object.clone(), None),
        &Policy::default(),
    );
    let storage = d.storage().unwrap();
    assert_eq!(
        (
            storage.storage_class_name.as_str(),
            storage.size.as_str(),
            storage.source
        ),
        ("fast-nfs", "50Gi", Source::Annotation)
    );
    let mutated = apply(&object, &response);
    assert_eq!(
        mutated["spec"]["storage"]["volumeClaimTemplate"]["spec"]["accessModes"],
        json!(["ReadWriteMany"])
    );
    assert_eq!(mutated["spec"]["retentionSize"], "42.5GiB");
}

#[test]
fn namespace_override_is_the_source() {
    let policy = Policy::from_yaml("namespaces: { monitoring: { size: 200Gi } }", "p").unwrap();
    let (d, _) = decide(
        &review_of("Prometheus", "v1", "CREATE", prometheus(json!({})), None),
        &policy,
    );
    let storage = d.storage().unwrap();
    assert_eq!(
        (storage.size.as_str(), storage.source),
        ("200Gi", Source::Namespace)
    );
}

#[test]
fn invalid_annotations_are_reported_and_denied_when_strict() {
    let object = with_annotations(
        prometheus(json!({})),
        json!({"kube-persist.io/size": "a lot", "kube-persist.io/adopt": "yes"}),
    );
    let body = review_of("Prometheus", "v1", "CREATE", object, None);
    let (d, response) = decide(&body, &Policy::default());
    assert_eq!(d.outcome(), Outcome::Invalid);
    assert_eq!(response["response"]["allowed"], true);
    assert!(response["response"].get("patch").is_none());
    assert_eq!(d.warnings.len(), 2, "{:?}", d.warnings);
    assert!(
        d.reason().contains("kube-persist.io/size \"a lot\""),
        "{}",
        d.reason()
    );
    assert!(
        d.reason().contains("kube-persist.io/adopt \"yes\""),
        "{}",
        d.reason()
    );

    let strict = Policy::from_yaml("strict: true", "p").unwrap();
    let (d, response) = decide(&body, &strict);
    assert_eq!(d.outcome(), Outcome::Invalid);
    assert_eq!(response["response"]["allowed"], false);
    assert_eq!(response["response"]["status"]["code"], 403);
    assert!(
        response["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("a lot")
    );
}

#[test]
fn unknown_annotations_warn_but_do_not_block() {
    let object = with_annotations(
        prometheus(json!({})),
        json!({"kube-persist.io/szie": "1Gi"}),
    );
    let (d, _) = decide(
        &review_of("Prometheus", "v1", "CREATE", object, None),
        &Policy::default(),
    );
    assert_eq!(d.outcome(), Outcome::Mutated);
    assert!(
        d.warnings
            .iter()
            .any(|w| w.contains("unknown annotation kube-persist.io/szie"))
    );
}

#[test]
fn audit_mode_reports_without_patching() {
    for policy in [
        Policy::from_yaml("mode: audit", "p").unwrap(),
        Policy::from_yaml("namespaces: { monitoring: { mode: audit } }", "p").unwrap(),
    ] {
        let (d, response) = decide(
            &review_of("Prometheus", "v1", "CREATE", prometheus(json!({})), None),
            &policy,
        );
        assert_eq!(d.outcome(), Outcome::WouldMutate);
        assert!(
            d.patch().is_some(),
            "the proposed patch is kept for the audit log"
        );
        assert!(response["response"].get("patch").is_none());
        assert_eq!(
            response["response"]["auditAnnotations"]["decision"],
            "would-mutate"
        );
        assert!(d.warnings[0].contains("would add 100Gi"));
    }
}

#[test]
fn targets_switch_off_the_crs() {
    let policy = Policy::from_yaml("targets: { prometheusOperator: false }", "p").unwrap();
    let (d, _) = decide(
        &review_of("Prometheus", "v1", "CREATE", prometheus(json!({})), None),
        &policy,
    );
    assert_eq!(d.outcome(), Outcome::Skipped);
}

#[test]
fn other_kinds_operations_and_subresources_are_unchanged() {
    let mut other = serde_json::from_slice::<Value>(&review_of(
        "ServiceMonitor",
        "v1",
        "CREATE",
        prometheus(json!({})),
        None,
    ))
    .unwrap();
    let (d, _) = decide(&serde_json::to_vec(&other).unwrap(), &Policy::default());
    assert_eq!(d.outcome(), Outcome::Unchanged);

    other["request"]["kind"]["kind"] = json!("Prometheus");
    other["request"]["subResource"] = json!("status");
    let (d, _) = decide(&serde_json::to_vec(&other).unwrap(), &Policy::default());
    assert_eq!(
        (d.outcome(), d.reason()),
        (Outcome::Unchanged, "subresource status is not mutated")
    );

    let (d, _) = decide(
        &review_of("Prometheus", "v1", "DELETE", Value::Null, None),
        &Policy::default(),
    );
    assert_eq!(d.outcome(), Outcome::Unchanged);
}

#[test]
fn generate_name_identifies_the_object() {
    let mut object = prometheus(json!({}));
    object["metadata"] = json!({"generateName": "k8s-", "namespace": "monitoring"});
    let (d, _) = decide(
        &review_of("Prometheus", "v1", "CREATE", object, None),
        &Policy::default(),
    );
    assert!(
        d.warnings[0].contains("(Prometheus monitoring/k8s-*)"),
        "{:?}",
        d.warnings
    );
}

#[test]
fn long_names_keep_warnings_within_the_limit() {
    let mut object = prometheus(json!({}));
    object["metadata"]["name"] = json!("n".repeat(250));
    let (d, _) = decide(
        &review_of("Prometheus", "v1", "CREATE", object, None),
        &Policy::default(),
    );
    assert!(
        d.warnings
            .iter()
            .all(|w| w.chars().count() <= MAX_WARNING_LEN)
    );
}

#[test]
fn bad_bodies_are_errors_not_panics() {
    assert!(matches!(
        review(b"{\"apiVersion\": ", &Policy::default()),
        Err(ReviewError::Malformed(_))
    ));
    assert!(matches!(
        review(b"", &Policy::default()),
        Err(ReviewError::Malformed(_))
    ));
    assert!(matches!(
        review(b"[1,2]", &Policy::default()),
        Err(ReviewError::NotAReview(_))
    ));
    assert!(matches!(
        review(b"{}", &Policy::default()),
        Err(ReviewError::NotAReview(_))
    ));
    let no_request = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#;
    let err = review(no_request, &Policy::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "not an AdmissionReview: the review has no request"
    );
    let wrong_kind = br#"{"apiVersion":"v1","kind":"ConfigMap","data":{}}"#;
    assert!(
        review(wrong_kind, &Policy::default())
            .unwrap_err()
            .to_string()
            .contains("ConfigMap")
    );
    // JSON is UTF-8: a stray byte is refused even in a field the engine never reads.
    let mut latin1 = include_bytes!("../../tests/fixtures/reviews/a-prometheus.json").to_vec();
    let at = latin1
        .windows(10)
        .position(|w| w == b"\"resource\"")
        .unwrap()
        + 2;
    latin1[at] = 0xe4;
    let err = review(&latin1, &Policy::default()).unwrap_err();
    assert!(matches!(err, ReviewError::Malformed(_)), "{err}");
    assert!(err.to_string().contains("not UTF-8"), "{err}");
}

#[test]
fn an_unreadable_object_is_allowed_with_the_uid() {
    let mut body: Value = serde_json::from_slice(&review_of(
        "Prometheus",
        "v1",
        "CREATE",
        prometheus(json!({})),
        None,
    ))
    .unwrap();
    body["request"]["object"]["spec"]["storage"] = json!("not an object");
    let (d, response) = decide(&serde_json::to_vec(&body).unwrap(), &Policy::default());
    assert_eq!(d.outcome(), Outcome::Error);
    assert_eq!(
        response["response"]["uid"],
        "705ab4f5-6393-11e8-b7cc-42010a800002"
    );
    assert_eq!(response["response"]["allowed"], true);
    assert!(
        d.reason().contains("cannot read the object"),
        "{}",
        d.reason()
    );
}

#[test]
fn escaped_strings_decode_like_plain_ones() {
    let object = with_annotations(
        prometheus(json!({})),
        json!({"kube-persist.io/size": "5\u{0030}Gi"}),
    );
    let body = String::from_utf8(review_of("Prometheus", "v1", "CREATE", object, None))
        .unwrap()
        .replace("kube-persist.io/size", "kube-persist.io\\/size")
        .replace("50Gi", "5\\u0030Gi");
    let (d, _) = decide(body.as_bytes(), &Policy::default());
    assert_eq!(d.storage().unwrap().size, "50Gi");
}

#[test]
fn strict_policy_does_not_deny_in_audit_mode() {
    let object = with_annotations(
        prometheus(json!({})),
        json!({"kube-persist.io/size": "lots"}),
    );
    let body = review_of("Prometheus", "v1", "CREATE", object, None);
    for yaml in [
        "strict: true\nmode: audit",
        "strict: true\nnamespaces: { monitoring: { mode: audit } }",
    ] {
        let (d, response) = decide(&body, &Policy::from_yaml(yaml, "p").unwrap());
        assert_eq!(d.outcome(), Outcome::Invalid);
        assert_eq!(response["response"]["allowed"], true, "{yaml}");
    }
}

#[test]
fn update_without_spec_is_not_patched_below_a_missing_parent() {
    let old = prometheus(json!({"storage": {"emptyDir": {}}}));
    let mut object = prometheus(json!({}));
    object.as_object_mut().unwrap().remove("spec");
    let (d, response) = decide(
        &review_of("Prometheus", "v1", "UPDATE", object.clone(), Some(old)),
        &Policy::default(),
    );
    assert_ne!(d.outcome(), Outcome::Mutated);
    assert_eq!(apply(&object, &response), object);
}

#[test]
fn restored_storage_is_described_as_such() {
    let old = prometheus(
        json!({"storage": {"volumeClaimTemplate": {"spec": {"storageClassName": "fast"}}}}),
    );
    let (d, _) = decide(
        &review_of(
            "Prometheus",
            "v1",
            "UPDATE",
            prometheus(json!({"replicas": 1})),
            Some(old),
        ),
        &Policy::default(),
    );
    assert_eq!(d.outcome(), Outcome::Mutated);
    assert!(
        d.warnings[0].contains("kept the existing spec.storage"),
        "{:?}",
        d.warnings
    );
    assert!(
        !d.warnings[0].contains("prometheus-data-db"),
        "{:?}",
        d.warnings
    );
}

/// Server-side apply or `kubectl replace` of the original manifest drops everything the webhook
/// added at creation, not only `spec.storage`: the extras come back with it, or the TSDB loses
/// its size limit and the claims their retention policy on the next re-apply. A value the
/// UPDATE itself sets wins.
#[test]
fn restoring_storage_restores_the_extras_the_update_dropped() {
    let storage = json!({"volumeClaimTemplate": {"spec": {"storageClassName": "fast"}}});
    let retain = json!({"whenDeleted": "Retain", "whenScaled": "Retain"});
    let old = prometheus(json!({
        "replicas": 1, "storage": storage, "retentionSize": "85GiB",
        "persistentVolumeClaimRetentionPolicy": retain,
    }));
    let object = prometheus(json!({"replicas": 1}));
    let (d, response) = decide(
        &review_of(
            "Prometheus",
            "v1",
            "UPDATE",
            object.clone(),
            Some(old.clone()),
        ),
        &Policy::default(),
    );
    assert_eq!(d.outcome(), Outcome::Mutated);
    assert_eq!(apply(&object, &response), old);

    let object = prometheus(json!({"replicas": 1, "retentionSize": "10GiB"}));
    let (_, response) = decide(
        &review_of("Prometheus", "v1", "UPDATE", object.clone(), Some(old)),
        &Policy::default(),
    );
    let patched = apply(&object, &response);
    assert_eq!(patched["spec"]["retentionSize"], "10GiB");
    assert_eq!(patched["spec"]["storage"], storage);
    assert_eq!(
        patched["spec"]["persistentVolumeClaimRetentionPolicy"],
        retain
    );
}

#[test]
fn responses_are_byte_for_byte_serde_json_on_every_fixture() {
    let bodies: [&[u8]; 6] = [
        include_bytes!("../../tests/fixtures/reviews/a-prometheus.json"),
        include_bytes!("../../tests/fixtures/reviews/d-configmap.json"),
        include_bytes!("../../tests/fixtures/bench/b-sts-small.json"),
        include_bytes!("../../tests/fixtures/bench/c-sts-1mb.json"),
        include_bytes!("../../tests/fixtures/statefulsets/edge-generate-name-dry-run.json"),
        include_bytes!("../../tests/fixtures/statefulsets/edge-update-escaped.json"),
    ];
    let policies = [
        Policy::default(),
        Policy::from_yaml("mode: audit", "p").unwrap(),
        Policy::from_yaml("strict: true\nonUpdate: mutate", "p").unwrap(),
    ];
    for body in bodies {
        for policy in &policies {
            // `decide` compares the response with serde_json's.
            decide(body, policy);
        }
    }
    // Strings that need escaping, a denial and warnings, in one response.
    let object = with_annotations(
        prometheus(json!({})),
        json!({"kube-persist.io/size": "lots \"of\" \\ space\u{1}", "kube-persist.io/x\ty": "é"}),
    );
    let mut body = review_of("Prometheus", "v1", "CREATE", object, None);
    body = String::from_utf8(body)
        .unwrap()
        .replace("705ab4f5", "705ab4f5\\\"\\u00e9")
        .into_bytes();
    let strict = Policy::from_yaml("strict: true", "p").unwrap();
    let (d, response) = decide(&body, &strict);
    assert!(d.denied().is_some() && !d.warnings.is_empty());
    assert_eq!(
        response["response"]["uid"],
        "705ab4f5\"é-6393-11e8-b7cc-42010a800002"
    );
}

#[test]
fn optional_strings_borrow_from_the_body_unless_escaped() {
    let body = include_bytes!("../../tests/fixtures/reviews/a-prometheus.json");
    let (api_version, request) = decode(body).unwrap();
    let meta = request.object.as_ref().unwrap().metadata.as_ref().unwrap();
    for s in [
        Some(&api_version),
        request.name.as_ref(),
        request.namespace.as_ref(),
        request.user_info.username.as_ref(),
        meta.name.as_ref(),
        meta.namespace.as_ref(),
    ] {
        assert!(matches!(s, Some(Cow::Borrowed(_))), "{s:?}");
    }
    let escaped = String::from_utf8(body.to_vec()).unwrap().replacen(
        r#""namespace":"monitoring""#,
        r#""namespace":"monit\u006fring""#,
        1,
    );
    let (_, request) = decode(escaped.as_bytes()).unwrap();
    assert!(matches!(&request.namespace, Some(Cow::Owned(ns)) if ns == "monitoring"));
}

#[test]
fn object_names_read_the_same_however_they_are_written() {
    for (namespace, generated, expected) in [
        ("monitoring", false, "Prometheus monitoring/k8s"),
        ("", false, "Prometheus k8s"),
        ("monitoring", true, "Prometheus monitoring/k8s*"),
        ("", true, "Prometheus k8s*"),
    ] {
        let ident = super::Ident {
            kind: "Prometheus",
            namespace,
            name: "k8s",
            generated,
        };
        assert_eq!(ident.to_string(), expected);
    }
}

#[test]
fn responses_have_the_fields_the_api_server_reads_in_order() {
    let mutated =
        Decision::of(Verdict::Mutate(Change {
            reason: "added".to_string(),
            patch: Patch::new::<()>(&[patch::remove(
                json_patch::jsonptr::PointerBuf::from_tokens(["a/b"]),
            )])
            .unwrap(),
            storage: Some(AddedStorage {
                storage_class_name: "nfs".to_string(),
                size: "1Gi".to_string(),
                source: Source::Default,
            }),
        }))
        .warn("w \"1\"");
    let patch =
        base64::engine::general_purpose::STANDARD.encode(r#"[{"op":"remove","path":"/a~1b"}]"#);
    assert_eq!(
        String::from_utf8(encode("admission.k8s.io/v1", "u-1", &mutated)).unwrap(),
        format!(
            r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{{"uid":"u-1","allowed":true,"patchType":"JSONPatch","patch":"{patch}","warnings":["w \"1\""],"auditAnnotations":{{"decision":"mutated","storage":"nfs/1Gi"}}}}}}"#
        )
    );
    let denied = Decision::of(Verdict::Invalid {
        reason: "bad".to_string(),
        denied: Some("no".to_string()),
    });
    assert_eq!(
        String::from_utf8(encode("admission.k8s.io/v1beta1", "u-2", &denied)).unwrap(),
        r#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","response":{"uid":"u-2","allowed":false,"status":{"code":403,"reason":"Forbidden","message":"no"},"auditAnnotations":{"decision":"invalid"}}}"#
    );
}
