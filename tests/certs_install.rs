//! `certs/install.sh` against a fake `kubectl` that records its calls: it runs the real
//! `kube-persist certs`, creates the TLS Secret from the files, and patches the caBundle of
//! every webhook with base64 of the CA; a second run reuses the certificates; it stops with a
//! clear message when the webhook configuration is not there yet. Needs bash.

use std::{path::Path, process::Command};

use base64::Engine as _;

/// A `kubectl` that appends each invocation (and the stdin of `apply -f -`) to `$FAKE_LOG`.
/// `get mutatingwebhookconfiguration` fails when `$FAKE_NO_WEBHOOK` is set, and reports
/// `$FAKE_WEBHOOKS` webhooks (default 1) for the jsonpath query.
const FAKE_KUBECTL: &str = r#"#!/usr/bin/env bash
set -eu
echo "ARGS $*" >>"$FAKE_LOG"
case "$*" in
  *"get mutatingwebhookconfiguration"*jsonpath*)
    for ((i = 0; i < ${FAKE_WEBHOOKS:-1}; i++)); do printf x; done ;;
  *"get mutatingwebhookconfiguration"*)
    if [[ -n ${FAKE_NO_WEBHOOK:-} ]]; then
      echo 'Error from server (NotFound): mutatingwebhookconfigurations "kube-persist" not found' >&2
      exit 1
    fi ;;
  *"create secret tls"*"--dry-run=client"*)
    echo "kind: Secret" ;;
  "apply -f -")
    sed 's/^/STDIN /' >>"$FAKE_LOG" ;;
esac
"#;

struct Run {
    ok: bool,
    stderr: String,
    log: String,
}

fn run_script(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Run {
    let fake = dir.join("kubectl");
    std::fs::write(&fake, FAKE_KUBECTL).expect("write fake kubectl");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let log = dir.join("kubectl.log");
    let _ = std::fs::remove_file(&log);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("certs/install.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(script)
        .args(["--out"])
        .arg(dir.join("out"))
        .args(extra)
        .env("KUBECTL", &fake)
        .env("KUBE_PERSIST", env!("CARGO_BIN_EXE_kube-persist"))
        .env("FAKE_LOG", &log);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let output = cmd.output().expect("bash runs");
    Run {
        ok: output.status.success(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        log: std::fs::read_to_string(&log).unwrap_or_default(),
    }
}

fn ca_bundle(dir: &Path) -> String {
    let ca = std::fs::read(dir.join("out/ca.crt")).expect("ca.crt");
    base64::engine::general_purpose::STANDARD.encode(ca)
}

#[test]
fn creates_the_secret_and_patches_the_ca_bundle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = run_script(dir.path(), &[], &[]);
    assert!(run.ok, "{}", run.stderr);
    let out = dir.path().join("out");
    for f in ["ca.crt", "ca.key", "tls.crt", "tls.key"] {
        assert!(out.join(f).exists(), "{f}");
    }
    assert!(
        run.log.contains(&format!(
            "ARGS -n kube-persist create secret tls kube-persist-tls --cert={} --key={} --dry-run=client -o yaml",
            out.join("tls.crt").display(),
            out.join("tls.key").display()
        )),
        "{}",
        run.log
    );
    // The two sides of the pipe run at once: their lines may interleave.
    assert!(run.log.contains("ARGS apply -f -"), "{}", run.log);
    assert!(run.log.contains("STDIN kind: Secret"), "{}", run.log);
    let patch = format!(
        "ARGS patch mutatingwebhookconfiguration kube-persist --type=json -p \
         [{{\"op\":\"add\",\"path\":\"/webhooks/0/clientConfig/caBundle\",\"value\":\"{}\"}}]",
        ca_bundle(dir.path())
    );
    assert!(run.log.contains(&patch), "{}", run.log);

    // Again: the same certificates, the same caBundle.
    let again = run_script(dir.path(), &[], &[]);
    assert!(again.ok, "{}", again.stderr);
    assert!(
        again.stderr.contains("using the certificates"),
        "{}",
        again.stderr
    );
    assert!(again.log.contains(&patch));

    // --renew: a new CA, and the patch carries it.
    let renewed = run_script(dir.path(), &["--renew"], &[]);
    assert!(renewed.ok, "{}", renewed.stderr);
    assert!(!renewed.log.contains(&patch), "a new CA");
    assert!(renewed.log.contains(&ca_bundle(dir.path())));
}

#[test]
fn every_webhook_of_the_configuration_gets_the_ca_bundle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = run_script(dir.path(), &[], &[("FAKE_WEBHOOKS", "2")]);
    assert!(run.ok, "{}", run.stderr);
    for i in 0..2 {
        assert!(
            run.log
                .contains(&format!("/webhooks/{i}/clientConfig/caBundle")),
            "{}",
            run.log
        );
    }
}

#[test]
fn without_the_webhook_configuration_it_says_to_apply_first_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = run_script(dir.path(), &[], &[("FAKE_NO_WEBHOOK", "1")]);
    assert!(!run.ok);
    assert!(
        run.stderr.contains("kubectl apply -k deploy/"),
        "{}",
        run.stderr
    );
    assert!(!run.log.contains("create secret"));
    assert!(!dir.path().join("out").exists());
}

#[test]
fn dry_run_prints_the_commands_and_changes_nothing_in_the_cluster() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = run_script(dir.path(), &["--dry-run"], &[]);
    assert!(run.ok, "{}", run.stderr);
    assert!(run.stderr.contains("+ "), "{}", run.stderr);
    assert!(run.stderr.contains("create secret tls kube-persist-tls"));
    assert!(run.stderr.contains("/webhooks/0/clientConfig/caBundle"));
    assert!(run.log.is_empty(), "kubectl was called: {}", run.log);
}

#[test]
fn unknown_arguments_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = run_script(dir.path(), &["--nope"], &[]);
    assert!(!run.ok);
    assert!(
        run.stderr.contains("unknown argument: --nope"),
        "{}",
        run.stderr
    );
    let run = run_script(dir.path(), &["--namespace"], &[]);
    assert!(!run.ok);
    assert!(
        run.stderr.contains("--namespace needs a value"),
        "{}",
        run.stderr
    );
}
