//! `kube-persist mutate`, end to end through the binary, over the manifest sets in
//! `tests/fixtures/manifests/` (kube-prometheus style directory, Helm-rendered streams, JSON
//! objects and Lists, edge cases).
//!
//! Golden files: `tests/fixtures/manifests/expected/<case>.out` (standard output) and
//! `<case>.err` (standard error). After a deliberate change of behaviour (e.g. when the
//! StatefulSet rules of the engine land), regenerate them and review the diff:
//!
//! ```sh
//! KUBE_PERSIST_BLESS=1 cargo test --test mutate
//! git diff tests/fixtures/manifests/expected
//! ```
//!
//! Only the golden files depend on StatefulSet decisions; every other assertion holds whatever
//! the engine decides for StatefulSets.
// Helpers outside #[test] functions are test code too (clippy.toml allows unwrap in tests).
#![allow(clippy::unwrap_used)]

use std::{
    collections::BTreeSet,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use base64::Engine as _;
use serde_json::Value;

fn manifests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/manifests")
}

/// Runs `kube-persist mutate ARGS` in `dir`, with `stdin` on standard input.
fn mutate_in(dir: &Path, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kube-persist"))
        .arg("mutate")
        .args(args)
        .current_dir(dir)
        .env_remove("KUBE_PERSIST_POLICY")
        .env_remove("KUBE_PERSIST_NAMESPACE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the kube-persist binary runs");
    let mut input = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        input.write_all(bytes).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn mutate(args: &[&str]) -> Output {
    mutate_in(&manifests(), args, None)
}

fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).expect("UTF-8 output")
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exited")
}

/// Compares `actual` with the golden file, or rewrites it under `KUBE_PERSIST_BLESS=1`.
fn golden(name: &str, actual: &str) {
    let path = manifests().join("expected").join(name);
    if std::env::var_os("KUBE_PERSIST_BLESS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with KUBE_PERSIST_BLESS=1 to create it)",
            path.display()
        )
    });
    if expected != actual {
        let diff = similar::TextDiff::from_lines(expected.as_str(), actual)
            .unified_diff()
            .header("expected", "actual")
            .to_string();
        panic!(
            "{} differs (KUBE_PERSIST_BLESS=1 rewrites it after review):\n{diff}",
            path.display()
        );
    }
}

/// The sets whose golden output is checked, with their arguments.
const GOLDEN: &[(&str, &[&str])] = &[
    ("kube-prometheus", &["-f", "kube-prometheus"]),
    (
        "kube-prometheus-diff",
        &["-f", "kube-prometheus", "-o", "diff"],
    ),
    (
        "kube-prometheus-patch",
        &["-f", "kube-prometheus", "-o", "patch"],
    ),
    (
        "kube-prometheus-update",
        &["-f", "kube-prometheus", "--operation", "UPDATE"],
    ),
    ("helm", &["-f", "helm"]),
    ("helm-diff", &["-f", "helm", "-o", "diff"]),
    ("json", &["-f", "json"]),
    ("json-as-yaml", &["-f", "json", "-o", "yaml"]),
    ("edge", &["-f", "edge"]),
    (
        "edge-as-json",
        &["-f", "edge", "-o", "json", "-n", "team-a"],
    ),
    (
        "mixed",
        &[
            "-f",
            "json/prometheus.json",
            "-f",
            "kube-prometheus/thanosRuler-thanosRuler.yaml",
        ],
    ),
];

#[test]
fn golden_outputs_match_the_expected_files() {
    for (name, args) in GOLDEN {
        let out = mutate(args);
        assert_eq!(code(&out), 0, "{name}: {}", text(&out.stderr));
        golden(&format!("{name}.out"), text(&out.stdout));
        golden(&format!("{name}.err"), text(&out.stderr));
    }
}

#[test]
fn unchanged_documents_are_written_back_byte_for_byte() {
    for file in [
        "kube-prometheus/grafana-config.yaml",
        "kube-prometheus/thanosRuler-thanosRuler.yaml",
        "kube-prometheus/alertmanager-secret.yaml",
        "json/statefulset.json",
    ] {
        let out = mutate(&["-f", file]);
        assert_eq!(code(&out), 0, "{file}: {}", text(&out.stderr));
        let input = std::fs::read_to_string(manifests().join(file)).unwrap();
        assert_eq!(text(&out.stdout), input, "{file}");
    }
}

#[test]
fn a_mutated_document_keeps_its_leading_comments_and_key_order() {
    let out = mutate(&["-f", "kube-prometheus/prometheus-prometheus.yaml"]);
    assert_eq!(code(&out), 0);
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("# Prometheus of the cluster (kube-prometheus v0.14"),
        "{stdout}"
    );
    let keys: Vec<&str> = stdout
        .lines()
        .filter(|l| !l.starts_with(' ') && !l.starts_with('#'))
        .collect();
    assert_eq!(
        keys,
        [
            "apiVersion: monitoring.coreos.com/v1",
            "kind: Prometheus",
            "metadata:",
            "spec:"
        ]
    );
    // The spec's own fields first, in their order; the added ones after them.
    let alerting = stdout.find("  alerting:").unwrap();
    let version = stdout.find("  version: ").unwrap();
    let storage = stdout.find("  storage:").unwrap();
    assert!(alerting < version && version < storage, "{stdout}");
}

/// Objects of a YAML or JSON stream, with `List` items in place of their list.
fn objects(stream: &str) -> Vec<Value> {
    let docs: Vec<Value> = if stream.trim_start().starts_with('{') {
        serde_json::Deserializer::from_str(stream)
            .into_iter::<Value>()
            .map(Result::unwrap)
            .collect()
    } else {
        let options = serde_saphyr::options! { legacy_octal_numbers: true };
        serde_saphyr::from_multiple_with_options::<Value>(stream, options).unwrap()
    };
    docs.into_iter()
        .filter(|d| !d.is_null())
        .flat_map(|d| match d.get("items").and_then(Value::as_array) {
            Some(items) if d["kind"].as_str().is_some_and(|k| k.ends_with("List")) => items.clone(),
            _ => vec![d],
        })
        .collect()
}

/// The webhook's answer for `object` on CREATE, as the API server would ask (built here, not by
/// the command's own code).
fn webhook(object: &Value) -> (kube_persist::admission::Outcome, Option<json_patch::Patch>) {
    let namespace = object["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default");
    let body = kube_persist::admission::ReviewBody::new(object)
        .uid("e2e")
        .namespace(Some(namespace))
        .user("kubernetes-admin", &["system:masters"])
        .to_vec();
    let reviewed =
        kube_persist::admission::review(&body, &kube_persist::policy::Policy::default()).unwrap();
    let response: Value = serde_json::from_slice(&reviewed.response).unwrap();
    let patch = response["response"]["patch"].as_str().map(|p| {
        let bytes = base64::engine::general_purpose::STANDARD.decode(p).unwrap();
        serde_json::from_slice(&bytes).unwrap()
    });
    (reviewed.decision.outcome(), patch)
}

#[test]
fn the_command_gives_what_the_webhook_gives_and_the_webhook_then_has_nothing_to_add() {
    for set in ["kube-prometheus", "helm", "json", "edge"] {
        let out = mutate(&["-f", set, "-o", "json"]);
        assert_eq!(code(&out), 0, "{set}: {}", text(&out.stderr));
        let mutated = objects(text(&out.stdout));
        let mut inputs = Vec::new();
        for path in walk(&manifests().join(set)) {
            inputs.extend(objects(&std::fs::read_to_string(path).unwrap()));
        }
        assert_eq!(inputs.len(), mutated.len(), "{set}");
        for (input, output) in inputs.iter().zip(&mutated) {
            // One code path: the webhook's patch applied to the input is the command's output.
            let mut expected = input.clone();
            if let (_, Some(patch)) = webhook(input) {
                json_patch::patch(&mut expected, &patch).unwrap();
            }
            assert_eq!(&expected, output, "{set}: {}", input["metadata"]);
            // Idempotent: the webhook leaves the command's output alone.
            let (outcome, patch) = webhook(output);
            assert!(
                patch.is_none(),
                "{set}: the webhook would patch {} again ({outcome:?})",
                output["metadata"]
            );
        }
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// `Kind namespace/name` of the objects reported at risk in a summary on standard error.
fn at_risk(stderr: &str) -> BTreeSet<String> {
    stderr
        .lines()
        .filter(|l| l.contains("; at risk: "))
        .map(|l| {
            let (_, rest) = l.split_once(' ').unwrap();
            rest.split_once(": ").unwrap().0.to_string()
        })
        .collect()
}

#[test]
fn mutated_output_passes_the_check() {
    for set in ["kube-prometheus", "json", "helm"] {
        let first = mutate(&["-f", set]);
        assert_eq!(code(&first), 0);
        let second = mutate_in(&manifests(), &["-f", "-", "--check"], Some(&first.stdout));
        let stderr = text(&second.stderr);
        assert!(
            stderr.contains(", changed 0,"),
            "{set}: second pass changed something:\n{stderr}"
        );
        // What mutate cannot fix (nothing, for these sets, except StatefulSets while their rules
        // are being written) is all that can remain.
        let left = at_risk(stderr);
        assert!(
            left.is_subset(&at_risk(text(&first.stderr))),
            "{set}: {left:?}"
        );
        if left.is_empty() {
            assert_eq!(code(&second), 0, "{set}:\n{stderr}");
            assert!(stderr.ends_with("; check passed\n"), "{stderr}");
        } else {
            assert!(
                left.iter().all(|o| o.starts_with("StatefulSet ")),
                "{left:?}"
            );
            assert_eq!(code(&second), 1, "{set}:\n{stderr}");
        }
    }
    for set in ["kube-prometheus", "json"] {
        let first = mutate(&["-f", set]);
        let second = mutate_in(&manifests(), &["-f", "-", "--check"], Some(&first.stdout));
        assert_eq!(code(&second), 0, "{set}: {}", text(&second.stderr));
    }
}

#[test]
fn check_fails_on_changes_and_on_objects_at_risk() {
    let out = mutate(&["-f", "kube-prometheus", "--check"]);
    assert_eq!(code(&out), 1);
    assert!(text(&out.stderr).ends_with("; check failed\n"));
    // Output is still printed: the gate and the fix are the same command.
    assert!(text(&out.stdout).contains("storageClassName: prometheus-data-db"));

    // An explicit emptyDir is respected, not changed, but it is at risk.
    let out = mutate(&["-f", "edge", "--check"]);
    assert_eq!(code(&out), 1);
    let stderr = text(&out.stderr);
    assert!(stderr.contains(
        "edge/cases.yaml#1 Alertmanager monitoring/scratch: unchanged (spec.storage is set (emptyDir): explicit choice respected); at risk: spec.storage is an emptyDir"
    ), "{stderr}");
    // Opting out by annotation or namespace is not a risk the gate reports.
    let risky = at_risk(stderr);
    assert!(
        !risky.contains("Prometheus monitoring/opted-out"),
        "{risky:?}"
    );
    assert!(
        !risky.contains("Prometheus kube-system/system"),
        "{risky:?}"
    );
    assert!(
        !risky.contains("PrometheusAgent monitoring/node-agent"),
        "{risky:?}"
    );

    // UPDATE leaves a CR without storage alone (adding it restarts every pod), but it is at risk.
    let out = mutate(&[
        "-f",
        "kube-prometheus/prometheus-prometheus.yaml",
        "--operation",
        "UPDATE",
        "--check",
    ]);
    assert_eq!(code(&out), 1);
    assert_eq!(
        text(&out.stdout),
        std::fs::read_to_string(manifests().join("kube-prometheus/prometheus-prometheus.yaml"))
            .unwrap()
    );
    assert!(text(&out.stderr).contains("skipped (UPDATE of an object without storage"));
    assert!(text(&out.stderr).contains("at risk 1,"));

    // Objects with storage and other kinds pass.
    let out = mutate(&[
        "-f",
        "kube-prometheus/thanosRuler-thanosRuler.yaml",
        "-f",
        "kube-prometheus/prometheus-service.yaml",
        "--check",
    ]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
}

#[test]
fn a_policy_file_changes_the_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "storageClassName: nfs-client\nsize: 20Gi\nretentionSizeRatio: 0\nnamespaces: {monitoring: {mode: audit}}\n",
    )
    .unwrap();
    let policy = policy.to_str().unwrap();
    let out = mutate(&[
        "-f",
        "json/prometheus.json",
        "--policy",
        policy,
        "-o",
        "patch",
    ]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let line: Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(line["source"], "json/prometheus.json#1");
    assert_eq!(line["object"], "Prometheus edge-sites/edge");
    assert_eq!(
        line["patch"][0]["value"]["volumeClaimTemplate"]["spec"]["storageClassName"],
        "nfs-client"
    );
    assert_eq!(
        line["patch"][0]["value"]["volumeClaimTemplate"]["spec"]["resources"]["requests"]["storage"],
        "20Gi"
    );
    // Audit mode: the webhook would not patch, so neither does the command, but --check fails.
    let out = mutate(&[
        "-f",
        "kube-prometheus/prometheus-prometheus.yaml",
        "--policy",
        policy,
        "--check",
    ]);
    assert_eq!(code(&out), 1);
    assert!(text(&out.stderr).contains("would-mutate (audit mode: would add 20Gi volume)"));
    assert_eq!(
        text(&out.stdout),
        std::fs::read_to_string(manifests().join("kube-prometheus/prometheus-prometheus.yaml"))
            .unwrap()
    );
    // A broken policy file is an input error.
    std::fs::write(dir.path().join("bad.yaml"), "size: lots\n").unwrap();
    let bad = dir.path().join("bad.yaml");
    let out = mutate(&["-f", "json", "--policy", bad.to_str().unwrap()]);
    assert_eq!(code(&out), 2);
    assert!(
        text(&out.stderr).contains("policy"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn standard_input_is_read_with_a_dash_and_keeps_its_format() {
    let json =
        br#"{"apiVersion":"monitoring.coreos.com/v1","kind":"Prometheus","metadata":{"name":"p"}}"#;
    let out = mutate_in(&manifests(), &["-f", "-"], Some(json));
    assert_eq!(code(&out), 0);
    let value: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        value["spec"]["storage"]["volumeClaimTemplate"]["spec"]["storageClassName"],
        "prometheus-data-db"
    );
    assert!(text(&out.stderr).starts_with("<stdin>#1 Prometheus default/p: mutated"));

    let yaml = b"apiVersion: v1\nkind: ConfigMap # unchanged\nmetadata:\n  name: c\n";
    let out = mutate_in(&manifests(), &["-f", "-", "-n", "team-a"], Some(yaml));
    assert_eq!(code(&out), 0);
    assert_eq!(out.stdout, yaml);
    assert!(text(&out.stderr).starts_with("<stdin>#1 ConfigMap team-a/c: unchanged"));
}

/// A directory with good and bad inputs.
fn bad_inputs() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(
        root.join("a-many.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: first}\n---\napiVersion: v1\nkind: [unclosed\n---\n- a list\n---\nfoo: bar\n---\napiVersion: monitoring.coreos.com/v1\nkind: Prometheus\nmetadata: {name: p, namespace: m}\nspec:\n  storage: 7\n---\napiVersion: example.com/v1\nkind: Gadget\nmetadata: {name: g}\n---\napiVersion: monitoring.coreos.com/v1\nkind: Prometheus\nmetadata: {name: last, namespace: m}\n",
    )
    .unwrap();
    let mut binary = b"\x7fELF\x02\x01\x01\x00".to_vec();
    binary.extend((0..=255u8).cycle().take(4096));
    std::fs::write(root.join("b-binary.yaml"), binary).unwrap();
    std::fs::write(
        root.join("c-latin1.yaml"),
        b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: caf\xe9}\n",
    )
    .unwrap();
    std::fs::write(
        root.join("d-truncated.json"),
        "{\"apiVersion\": \"v1\", \"kind\": ",
    )
    .unwrap();
    std::os::unix::fs::symlink(
        root.join("missing-target.yaml"),
        root.join("e-dangling.yaml"),
    )
    .unwrap();
    std::fs::write(
        root.join("f-good.yaml"),
        "apiVersion: monitoring.coreos.com/v1\nkind: Alertmanager\nmetadata: {name: am, namespace: m}\n",
    )
    .unwrap();
    std::fs::write(
        root.join("g-nokind.json"),
        "{\"apiVersion\": \"v1\"}\n{\"apiVersion\": \"v1\", \"kind\": \"ConfigMap\", \"metadata\": {\"name\": \"c\"}}\n",
    )
    .unwrap();
    dir
}

#[test]
fn bad_input_is_reported_by_file_and_document_and_the_rest_is_processed() {
    let dir = bad_inputs();
    let out = mutate_in(dir.path(), &["-f", ".", "-f", "does-not-exist.yaml"], None);
    assert_eq!(code(&out), 2, "input errors exit 2");
    let stderr = text(&out.stderr);
    for expected in [
        "error: does-not-exist.yaml: No such file or directory",
        "./a-many.yaml#1 ConfigMap default/first: unchanged (not a target kind)",
        "error: ./a-many.yaml#2: invalid YAML at line 6: ",
        "error: ./a-many.yaml#3: not a Kubernetes object (expected a mapping with apiVersion and kind)",
        "error: ./a-many.yaml#4: not a Kubernetes object: apiVersion or kind is missing",
        "error: ./a-many.yaml#5: cannot read the object: invalid type: integer `7`",
        "./a-many.yaml#6 Gadget default/g: unchanged (not a target kind)",
        "./a-many.yaml#7 Prometheus m/last: mutated (added 100Gi volume)",
        "error: ./b-binary.yaml: binary data, not a YAML or JSON manifest",
        "error: ./c-latin1.yaml#1 (line 1): not UTF-8 text",
        "error: ./d-truncated.json#1: invalid JSON: EOF while parsing",
        "error: ./e-dangling.yaml: No such file or directory",
        "./f-good.yaml#1 Alertmanager m/am: mutated (added 100Gi volume)",
        "error: ./g-nokind.json#1: not a Kubernetes object: apiVersion or kind is missing",
        "./g-nokind.json#2 ConfigMap default/c: unchanged (not a target kind)",
        "kube-persist mutate: objects 5, changed 2, at risk 0, invalid annotations 0, input errors 10",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    // Documents that could not be processed are written back as they were, so nothing is lost.
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("kind: [unclosed\n---\n- a list\n---\nfoo: bar\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  name: last\n  namespace: m\nspec:\n  storage:"),
        "{stdout}"
    );
    assert!(stdout.contains("name: am"), "{stdout}");
    // The stream is YAML (its first document is): the JSON documents are converted, the one
    // that could not be processed is kept as it was (JSON is YAML).
    assert!(
        stdout.ends_with("---\n{\"apiVersion\": \"v1\"}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n"),
        "{stdout}"
    );
    // Input errors take precedence over the check's verdict.
    let out = mutate_in(dir.path(), &["-f", ".", "--check"], None);
    assert_eq!(code(&out), 2);
    assert!(text(&out.stderr).ends_with("; check failed (input errors)\n"));
}

#[test]
fn an_unreadable_file_is_an_input_error() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret.yaml");
    std::fs::write(
        &path,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).unwrap();
    if std::fs::File::open(&path).is_ok() {
        // Running as root: permissions do not stop reads. A directory in place of a file's
        // parent is unreadable for everyone.
        let out = mutate_in(dir.path(), &["-f", "secret.yaml/x.yaml"], None);
        assert_eq!(code(&out), 2);
        assert!(text(&out.stderr).contains("error: secret.yaml/x.yaml: Not a directory"));
        return;
    }
    let out = mutate_in(dir.path(), &["-f", "secret.yaml"], None);
    assert_eq!(code(&out), 2);
    assert!(text(&out.stderr).contains("error: secret.yaml: Permission denied"));
}

#[test]
fn unknown_kinds_pass_through_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let text_in = "# a CRD's object\napiVersion: example.com/v1alpha3\nkind: Widget\nmetadata:\n  name: w # inline\nspec:\n  storage: {emptyDir: {}}\n  size: 0755\n";
    std::fs::write(dir.path().join("w.yaml"), text_in).unwrap();
    let out = mutate_in(dir.path(), &["-f", "w.yaml", "--check"], None);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), text_in);
    assert!(
        text(&out.stderr).starts_with("w.yaml#1 Widget default/w: unchanged (not a target kind)")
    );
}

#[test]
fn lists_are_decided_item_by_item_and_written_back_as_lists() {
    let out = mutate(&["-f", "json/monitoring-list.json", "-o", "yaml"]);
    assert_eq!(code(&out), 0);
    let stderr = text(&out.stderr);
    assert!(
        stderr
            .contains("json/monitoring-list.json#1.items[0] Prometheus team-apps/apps: unchanged")
    );
    assert!(stderr.contains("json/monitoring-list.json#1.items[1] Alertmanager team-apps/apps: mutated (added 5Gi volume)"));
    let list: Value = serde_saphyr::from_str(text(&out.stdout)).unwrap();
    assert_eq!(list["kind"], "List");
    assert_eq!(
        list["items"][1]["spec"]["storage"]["volumeClaimTemplate"]["spec"]["resources"]["requests"]
            ["storage"],
        "5Gi"
    );
}

#[test]
fn standard_input_is_processed_document_by_document() {
    // Each document is decided (its line on standard error) before the next one is even
    // written: the command streams instead of reading its whole input first.
    use std::{io::BufRead as _, sync::mpsc, time::Duration};
    let mut child = Command::new(env!("CARGO_BIN_EXE_kube-persist"))
        .args(["mutate", "-f", "-"])
        .env_remove("KUBE_PERSIST_POLICY")
        .env_remove("KUBE_PERSIST_NAMESPACE")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let (lines, received) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in stderr.lines() {
            if lines.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    for i in 1..=3 {
        write!(
            stdin,
            "apiVersion: monitoring.coreos.com/v1\nkind: Prometheus\nmetadata: {{name: p{i}, namespace: m}}\n---\n"
        )
        .unwrap();
        stdin.flush().unwrap();
        let line = received
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("document {i} was not decided before the input ended"));
        assert!(
            line.starts_with(&format!("<stdin>#{i} Prometheus m/p{i}: mutated")),
            "{line}"
        );
        // Its warning line.
        received.recv_timeout(Duration::from_secs(20)).unwrap();
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());
    reader.join().unwrap();
}
