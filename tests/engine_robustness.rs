//! The engine never panics and never returns a patch that cannot apply: arbitrary bytes, and
//! real reviews with arbitrary JSON spliced into the places the engine reads (object, metadata,
//! annotations, spec fields, volumes).
#![allow(clippy::unwrap_used)]

mod common;

use kube_persist::{admission::review, policy::Policy};
use proptest::prelude::*;
use serde_json::Value;

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
        Just(Value::String("kube-persist.io/size".into())),
        Just(Value::String("DaemonSet".into())),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    ".{0,6}".boxed(),
                    Just("storage".to_string()).boxed(),
                    Just("emptyDir".to_string()).boxed(),
                    Just("volumes".to_string()).boxed(),
                    Just("name".to_string()).boxed(),
                ],
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const PLACES: &[&str] = &[
    "/request/object",
    "/request/object/metadata",
    "/request/object/metadata/annotations",
    "/request/object/metadata/ownerReferences",
    "/request/object/spec",
    "/request/object/spec/storage",
    "/request/object/spec/mode",
    "/request/object/spec/template",
    "/request/object/spec/template/spec/volumes",
    "/request/object/spec/template/spec/containers",
    "/request/object/spec/volumeClaimTemplates",
    "/request/oldObject",
    "/request/userInfo",
    "/request/kind",
    "/request/uid",
    "/request/operation",
];

fn splice(base: &Value, place: &str, value: Value) -> Value {
    let mut doc = base.clone();
    let (parent, key) = place.rsplit_once('/').unwrap();
    if let Some(Value::Object(map)) = doc.pointer_mut(parent) {
        map.insert(key.to_string(), value);
    }
    doc
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = review(&bytes, &Policy::default());
    }

    #[test]
    fn arbitrary_json_in_real_reviews_never_panics(
        which in 0usize..2,
        place in prop::sample::select(PLACES),
        value in json_value(),
    ) {
        let fixture = ["reviews/a-prometheus.json", "bench/b-sts-small.json"][which];
        let base: Value = serde_json::from_slice(&common::fixture(fixture)).unwrap();
        let body = serde_json::to_vec(&splice(&base, place, value)).unwrap();
        if let Ok(reviewed) = review(&body, &Policy::default()) {
            // Whatever was decided, the answer is a well-formed review with the request's uid.
            let answer: Value = serde_json::from_slice(&reviewed.response).unwrap();
            prop_assert_eq!(&answer["response"]["uid"], &Value::String(reviewed.request.uid.to_string()));
            if let Some(patch) = reviewed.decision.patch() {
                let request: Value = serde_json::from_slice(&body).unwrap();
                let mut object = request["request"]["object"].clone();
                let applied = json_patch::patch(&mut object, &patch.to_json_patch().unwrap());
                prop_assert!(applied.is_ok(), "{} on {}: {:?}", patch.json(), request["request"]["object"], applied);
            }
        }
    }
}

/// An array where the engine expects an object is an `error` decision, allowed unchanged: serde
/// would read it as a struct (fields by position) and the patch made for it cannot apply.
#[test]
fn arrays_where_objects_belong_are_errors_not_patches() {
    let cases = [
        (
            "reviews/a-prometheus.json",
            "/request/object",
            Value::Array(vec![]),
        ),
        (
            "reviews/a-prometheus.json",
            "/request/object/spec",
            Value::Array(vec![]),
        ),
        (
            "reviews/a-prometheus.json",
            "/request/object/metadata",
            Value::Array(vec![]),
        ),
        (
            "bench/b-sts-small.json",
            "/request/object/spec",
            Value::Array(vec![]),
        ),
        (
            "bench/b-sts-small.json",
            "/request/object/spec/template",
            Value::Array(vec![]),
        ),
        (
            "bench/b-sts-small.json",
            "/request/object/spec/template/spec",
            Value::Array(vec![]),
        ),
    ];
    for (fixture, place, value) in cases {
        let base: Value = serde_json::from_slice(&common::fixture(fixture)).unwrap();
        let body = serde_json::to_vec(&splice(&base, place, value)).unwrap();
        let reviewed = review(&body, &Policy::default()).unwrap();
        assert_eq!(
            reviewed.decision.outcome().as_str(),
            "error",
            "{fixture} {place}"
        );
        let answer: Value = serde_json::from_slice(&reviewed.response).unwrap();
        assert_eq!(answer["response"]["allowed"], true, "{fixture} {place}");
        assert!(
            answer["response"].get("patch").is_none(),
            "{fixture} {place}: {answer}"
        );
    }
    // Array elements: a volume and a container that are arrays.
    let base: Value = serde_json::from_slice(&common::fixture("bench/b-sts-small.json")).unwrap();
    for list in ["volumes", "containers"] {
        let mut doc = base.clone();
        let items = doc
            .pointer_mut(&format!("/request/object/spec/template/spec/{list}"))
            .and_then(Value::as_array_mut)
            .unwrap();
        items[0] = serde_json::json!(["data", {}]);
        let body = serde_json::to_vec(&doc).unwrap();
        let reviewed = review(&body, &Policy::default()).unwrap();
        assert_eq!(reviewed.decision.outcome().as_str(), "error", "{list}");
    }
}
