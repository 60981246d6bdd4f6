//! `kube-persist scan` against a scripted API server (kube-rs' "ApiServerVerifier" pattern): each
//! step checks the next request (method, path, query, and that `kube_persist::rbac` grants it)
//! and answers like the API server. No cluster needed.
//!
//! The assertions hold whatever the engine decides for StatefulSets (their rules are being
//! written): only "lacks persistent storage" facts are checked for them, not "would add".
// Helpers outside #[test] functions are test code too (clippy.toml allows unwrap in tests).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use http::{Method, Request, Response, StatusCode};
use kube::{Client, client::Body};
use kube_persist::{
    cli::ScanOutput,
    commands::scan::{self, Finding, Report},
    policy::Policy,
    rbac,
};
use serde_json::{Value, json};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// One expected request and its answer.
struct Step {
    path: String,
    query: Vec<(&'static str, &'static str)>,
    status: StatusCode,
    body: Vec<u8>,
}

fn list(path: &str, query: &[(&'static str, &'static str)], items: Value, next: &str) -> Step {
    Step {
        path: path.to_string(),
        query: query.to_vec(),
        status: StatusCode::OK,
        body: serde_json::to_vec(&json!({
            "apiVersion": "v1",
            "kind": "List",
            "metadata": {"resourceVersion": "4711", "continue": next},
            "items": items,
        }))
        .unwrap(),
    }
}

fn status(path: &str, code: StatusCode, body: &str) -> Step {
    Step {
        path: path.to_string(),
        query: vec![("limit", "500")],
        status: code,
        body: body.as_bytes().to_vec(),
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

/// `(group, resource, verb)` of a request, as RBAC sees it.
fn access(request: &Request<Body>) -> (String, String, &'static str) {
    let segments: Vec<&str> = request.uri().path().trim_matches('/').split('/').collect();
    let rest = match segments.as_slice() {
        ["api", "v1", rest @ ..] => ("".to_string(), rest),
        ["apis", group, _version, rest @ ..] => (group.to_string(), rest),
        _ => panic!("not an API path: {}", request.uri()),
    };
    let (group, rest) = rest;
    let rest = match rest {
        ["namespaces", _ns, rest @ ..] if !rest.is_empty() => rest,
        other => other,
    };
    let watch = request.uri().query().unwrap_or("").contains("watch=true");
    let verb = match (request.method().clone(), rest.len(), watch) {
        (Method::GET, 1, true) => "watch",
        (Method::GET, 1, false) => "list",
        (Method::GET, _, _) => "get",
        (Method::POST, _, _) => "create",
        (Method::PUT, _, _) => "update",
        (Method::PATCH, _, _) => "patch",
        (Method::DELETE, _, _) => "delete",
        (m, _, _) => panic!("unexpected method {m}"),
    };
    (group, rest[0].to_string(), verb)
}

/// Answers `steps` in order, checking each request, then expects no further request.
async fn verify(mut handle: Handle, steps: Vec<Step>) {
    for step in steps {
        let (request, send) = handle
            .next_request()
            .await
            .unwrap_or_else(|| panic!("no request for {}", step.path));
        let (group, resource, verb) = access(&request);
        assert!(
            rbac::is_allowed(&group, &resource, verb),
            "{verb} {resource}.{group} is not in rbac::API_ACCESS ({})",
            request.uri()
        );
        assert_eq!(request.method(), Method::GET);
        assert_eq!(request.uri().path(), step.path);
        let query: BTreeMap<String, String> = request
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect();
        let expected: BTreeMap<String, String> = step
            .query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(query, expected, "query of {}", request.uri());
        send.send_response(
            Response::builder()
                .status(step.status)
                .header("content-type", "application/json")
                .body(Body::from(step.body))
                .unwrap(),
        );
    }
    assert!(
        handle.next_request().await.is_none(),
        "a request beyond the script"
    );
}

/// Runs a scan against `steps`.
async fn scan_with(namespace: Option<&str>, steps: Vec<Step>) -> Result<Report, scan::ScanError> {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(verify(handle, steps));
    let client = Client::new(service, "default");
    let result = scan::scan(&client, namespace, &Policy::default()).await;
    drop(client);
    server.await.expect("the verifier's assertions hold");
    result
}

fn prometheus(ns: &str, name: &str, extra: Value) -> Value {
    let mut object = json!({
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "Prometheus",
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"), "resourceVersion": "1"},
        "spec": {"replicas": 2, "serviceAccountName": "prometheus"},
    });
    merge(&mut object, extra);
    object
}

fn merge(target: &mut Value, extra: Value) {
    match (target, extra) {
        (Value::Object(t), Value::Object(e)) => {
            for (k, v) in e {
                merge(t.entry(k).or_insert(Value::Null), v);
            }
        }
        (t, e) => *t = e,
    }
}

/// A StatefulSet as the API server lists it (items of a typed list carry no kind).
fn statefulset(ns: &str, name: &str, volumes: Value, claims: Option<Value>) -> Value {
    let mut sts = json!({
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}")},
        "spec": {
            "replicas": 3,
            "serviceName": name,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [{"name": "main", "image": "example/app:1", "volumeMounts": [
                        {"name": "data", "mountPath": "/data"},
                        {"name": "tmp", "mountPath": "/tmp"},
                    ]}],
                    "volumes": volumes,
                },
            },
        },
    });
    if let Some(claims) = claims {
        sts["spec"]["volumeClaimTemplates"] = claims;
    }
    sts
}

const PROMETHEUSES: &str = "/apis/monitoring.coreos.com/v1/prometheuses";
const AGENTS: &str = "/apis/monitoring.coreos.com/v1alpha1/prometheusagents";
const ALERTMANAGERS: &str = "/apis/monitoring.coreos.com/v1/alertmanagers";
const RULERS: &str = "/apis/monitoring.coreos.com/v1/thanosrulers";
const STATEFULSETS: &str = "/apis/apps/v1/statefulsets";

/// A cluster with two pages of Prometheuses, no PrometheusAgent CRD, and mixed objects.
fn cluster() -> Vec<Step> {
    let token = "eyJ2IjoibWV0YS5rOHMuaW8vdjEiLCJydiI6NDcxMX0/+=";
    vec![
        list(
            PROMETHEUSES,
            &[("limit", "500")],
            json!([
                prometheus("monitoring", "k8s", json!({})),
                prometheus(
                    "team-a",
                    "scratch",
                    json!({"spec": {"storage": {"emptyDir": {"medium": ""}}}})
                ),
            ]),
            token,
        ),
        list(
            PROMETHEUSES,
            &[("limit", "500"), ("continue", token)],
            json!([
                prometheus(
                    "team-a",
                    "apps",
                    json!({"spec": {"storage": {"volumeClaimTemplate": {"spec": {"resources": {"requests": {"storage": "50Gi"}}}}}}})
                ),
                prometheus(
                    "team-b",
                    "opted-out",
                    json!({"metadata": {"annotations": {"kube-persist.io/skip": "true"}}})
                ),
                prometheus("kube-system", "system", json!({"spec": {"replicas": 1}})),
            ]),
            "",
        ),
        // The API server's answer for a group/version it does not serve: plain text.
        status(AGENTS, StatusCode::NOT_FOUND, "404 page not found\n"),
        list(
            ALERTMANAGERS,
            &[("limit", "500")],
            json!([{
                "apiVersion": "monitoring.coreos.com/v1",
                "kind": "Alertmanager",
                "metadata": {"name": "main", "namespace": "monitoring"},
                "spec": {"replicas": 3, "storage": {"emptyDir": {}}},
            }]),
            "",
        ),
        list(RULERS, &[("limit", "500")], json!([]), ""),
        list(
            STATEFULSETS,
            &[("limit", "500")],
            json!([
                statefulset(
                    "logging",
                    "loki",
                    json!([{"name": "data", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}]),
                    None
                ),
                statefulset(
                    "db",
                    "postgres",
                    json!([{"name": "tmp", "emptyDir": {}}]),
                    Some(
                        json!([{"metadata": {"name": "data"}, "spec": {"resources": {"requests": {"storage": "10Gi"}}}}])
                    )
                ),
                statefulset(
                    "web",
                    "stateless",
                    json!([{"name": "tmp", "emptyDir": {}}]),
                    None
                ),
            ]),
            "",
        ),
    ]
}

fn find<'r>(report: &'r Report, ns: &str, name: &str) -> Option<&'r Finding> {
    report
        .at_risk
        .iter()
        .find(|f| f.namespace == ns && f.name == name)
}

#[tokio::test]
async fn scan_pages_through_every_target_and_reports_what_lacks_storage() {
    let report = scan_with(None, cluster()).await.unwrap();
    assert_eq!(report.scanned, 9);
    assert_eq!(
        report.missing_resources,
        ["prometheusagents.monitoring.coreos.com"]
    );
    assert!(report.unreadable.is_empty());

    // No storage: the webhook would add the policy's volume.
    assert_eq!(
        find(&report, "monitoring", "k8s"),
        Some(&Finding {
            namespace: "monitoring".to_string(),
            kind: "Prometheus".to_string(),
            name: "k8s".to_string(),
            replicas: 2,
            risk: "no spec.storage: data in an emptyDir".to_string(),
            would_add: "100Gi on prometheus-data-db".to_string(),
            decision: "mutated",
        })
    );
    // An explicit emptyDir (on the second page): respected by the webhook, still at risk.
    let scratch = find(&report, "team-a", "scratch").unwrap();
    assert_eq!(scratch.risk, "spec.storage is an emptyDir");
    assert!(
        scratch
            .would_add
            .starts_with("nothing: spec.storage is set (emptyDir)")
    );
    let main = find(&report, "monitoring", "main").unwrap();
    assert_eq!((main.kind.as_str(), main.replicas), ("Alertmanager", 3));
    assert_eq!(main.risk, "spec.storage is an emptyDir");
    // A StatefulSet whose data is in an emptyDir (whatever the engine would add).
    let loki = find(&report, "logging", "loki").unwrap();
    assert_eq!(loki.kind, "StatefulSet");
    assert_eq!(loki.replicas, 3);
    assert_eq!(loki.risk, "no volumeClaimTemplates: data in emptyDir data");

    // Not listed: storage present, claims present, only scratch space, opted out.
    for (ns, name) in [
        ("team-a", "apps"),
        ("db", "postgres"),
        ("web", "stateless"),
        ("team-b", "opted-out"),
        ("kube-system", "system"),
    ] {
        assert!(find(&report, ns, name).is_none(), "{ns}/{name} listed");
    }
    assert_eq!(report.at_risk.len(), 4, "{:#?}", report.at_risk);
    assert_eq!(report.opted_out, 2);
    assert_eq!(scan::exit_code(&report), 1);
    // Sorted by namespace, kind, name.
    let order: Vec<(&str, &str)> = report
        .at_risk
        .iter()
        .map(|f| (f.namespace.as_str(), f.name.as_str()))
        .collect();
    assert_eq!(
        order,
        [
            ("logging", "loki"),
            ("monitoring", "main"),
            ("monitoring", "k8s"),
            ("team-a", "scratch")
        ]
    );
}

#[tokio::test]
async fn the_report_prints_as_an_aligned_table_or_one_json_document() {
    let report = scan_with(None, cluster()).await.unwrap();

    let (mut out, mut log) = (Vec::new(), Vec::new());
    scan::print(&report, ScanOutput::Table, &mut out, &mut log).unwrap();
    let table = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 5);
    assert!(
        lines[0].starts_with("NAMESPACE    KIND           NAME      REPLICAS   RISK"),
        "{table}"
    );
    let column = lines[0].find("REPLICAS").unwrap();
    for line in &lines[1..] {
        assert!(
            line[column..].starts_with(|c: char| c.is_ascii_digit()),
            "{table}"
        );
    }
    assert!(
        lines[2].starts_with("monitoring   Alertmanager   main      3"),
        "{table}"
    );
    let log = String::from_utf8(log).unwrap();
    assert_eq!(
        log,
        "kube-persist scan: prometheusagents.monitoring.coreos.com is not served by the cluster (CRD not installed?): skipped\n\
         kube-persist scan: 9 objects scanned, 4 at risk, 2 without persistent storage opted out\n"
    );

    let mut out = Vec::new();
    scan::print(&report, ScanOutput::Json, &mut out, Vec::new()).unwrap();
    let doc: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(doc["scanned"], 9);
    assert_eq!(doc["atRisk"].as_array().unwrap().len(), 4);
    assert_eq!(doc["atRisk"][2]["wouldAdd"], "100Gi on prometheus-data-db");
    assert_eq!(
        doc["missingResources"][0],
        "prometheusagents.monitoring.coreos.com"
    );
}

#[tokio::test]
async fn namespace_scans_list_only_that_namespace() {
    let ns = |plural: &str| match plural {
        "statefulsets" => "/apis/apps/v1/namespaces/team-a/statefulsets".to_string(),
        "prometheusagents" => {
            "/apis/monitoring.coreos.com/v1alpha1/namespaces/team-a/prometheusagents".to_string()
        }
        p => format!("/apis/monitoring.coreos.com/v1/namespaces/team-a/{p}"),
    };
    let steps = vec![
        list(
            &ns("prometheuses"),
            &[("limit", "500")],
            json!([prometheus(
                "team-a",
                "apps",
                json!({"spec": {"storage": {"volumeClaimTemplate": {"spec": {}}}}})
            )]),
            "",
        ),
        list(&ns("prometheusagents"), &[("limit", "500")], json!([]), ""),
        list(&ns("alertmanagers"), &[("limit", "500")], json!([]), ""),
        list(&ns("thanosrulers"), &[("limit", "500")], json!([]), ""),
        list(&ns("statefulsets"), &[("limit", "500")], json!([]), ""),
    ];
    let report = scan_with(Some("team-a"), steps).await.unwrap();
    assert_eq!(report.scanned, 1);
    assert!(report.at_risk.is_empty());
    assert_eq!(scan::exit_code(&report), 0);
}

#[tokio::test]
async fn a_forbidden_list_is_an_error_naming_the_resource() {
    let forbidden = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "statefulsets.apps is forbidden: User \"system:serviceaccount:ci:scanner\" cannot list resource \"statefulsets\" in API group \"apps\" at the cluster scope",
        "reason": "Forbidden", "details": {"group": "apps", "kind": "statefulsets"}, "code": 403,
    });
    let steps = vec![
        list(PROMETHEUSES, &[("limit", "500")], json!([]), ""),
        list(AGENTS, &[("limit", "500")], json!([]), ""),
        list(ALERTMANAGERS, &[("limit", "500")], json!([]), ""),
        list(RULERS, &[("limit", "500")], json!([]), ""),
        status(STATEFULSETS, StatusCode::FORBIDDEN, &forbidden.to_string()),
    ];
    let err = scan_with(None, steps).await.unwrap_err().to_string();
    assert_eq!(
        err,
        "cannot list statefulsets.apps: 403 Forbidden: statefulsets.apps is forbidden: User \"system:serviceaccount:ci:scanner\" cannot list resource \"statefulsets\" in API group \"apps\" at the cluster scope"
    );
}
