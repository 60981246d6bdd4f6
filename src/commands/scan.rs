//! `kube-persist scan`: every target object of a live cluster that keeps its data on something
//! that does not survive a pod restart, with what the webhook would add if it were created now.
//!
//! Reads only: `list` on the five target resources (see [`crate::rbac`]), 500 objects a page.
//! Each object goes through the admission engine as a CREATE ([`super::engine`]); whether it
//! lacks persistent storage is a fact about the object ([`super::gap`]). Objects the engine
//! skips (the `skip` annotation, an excluded namespace, a disabled target family) have opted
//! out and are only counted.
//!
//! Exit codes: 1 when any object is at risk, 0 when none is; errors (cluster unreachable, a
//! forbidden list) end the command with 2.

use std::{
    fmt::Write as _,
    io::{self, Write},
    process::ExitCode,
};

use anyhow::Context as _;
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, ListParams},
};
use serde::Serialize;
use serde_json::Value;

use super::{
    engine::{self, TypeMeta},
    gap,
};
use crate::{
    admission::{Change, Verdict},
    cli::{OperationArg, ScanArgs, ScanOutput},
    policy::Policy,
};

/// Objects per list request.
pub const PAGE_SIZE: u32 = 500;

/// A resource `scan` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resource {
    pub group: &'static str,
    /// Version listed.
    pub version: &'static str,
    /// Plural resource name.
    pub plural: &'static str,
    pub kind: &'static str,
}

impl Resource {
    fn api_resource(&self) -> ApiResource {
        ApiResource {
            group: self.group.to_string(),
            version: self.version.to_string(),
            api_version: format!("{}/{}", self.group, self.version),
            kind: self.kind.to_string(),
            plural: self.plural.to_string(),
        }
    }

    fn type_meta(&self) -> TypeMeta {
        TypeMeta {
            group: self.group.to_string(),
            version: self.version.to_string(),
            kind: self.kind.to_string(),
        }
    }

    /// `plural.group`, as kubectl names a resource.
    pub fn name(&self) -> String {
        format!("{}.{}", self.plural, self.group)
    }
}

/// The target resources, in the order they are listed.
pub const RESOURCES: [Resource; 5] = [
    Resource {
        group: "monitoring.coreos.com",
        version: "v1",
        plural: "prometheuses",
        kind: "Prometheus",
    },
    Resource {
        group: "monitoring.coreos.com",
        version: "v1alpha1",
        plural: "prometheusagents",
        kind: "PrometheusAgent",
    },
    Resource {
        group: "monitoring.coreos.com",
        version: "v1",
        plural: "alertmanagers",
        kind: "Alertmanager",
    },
    Resource {
        group: "monitoring.coreos.com",
        version: "v1",
        plural: "thanosrulers",
        kind: "ThanosRuler",
    },
    Resource {
        group: "apps",
        version: "v1",
        plural: "statefulsets",
        kind: "StatefulSet",
    },
];

/// One object at risk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    pub namespace: String,
    pub kind: String,
    pub name: String,
    /// `spec.replicas` (1 when unset): how many pods lose their data.
    pub replicas: i64,
    /// Where the data lives instead of a persistent volume.
    pub risk: String,
    /// What the webhook would add on CREATE, or why nothing.
    pub would_add: String,
    /// The engine's decision (`mutated`, `unchanged`, ...).
    pub decision: &'static str,
}

/// What a scan found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// The objects at risk, by namespace, kind and name.
    pub at_risk: Vec<Finding>,
    /// Objects decided.
    pub scanned: usize,
    /// Objects without persistent storage that opted out (counted, not listed).
    pub opted_out: usize,
    /// Resources the cluster does not serve (CRD not installed): skipped.
    pub missing_resources: Vec<String>,
    /// Objects the engine could not read (`namespace/name: problem`).
    pub unreadable: Vec<String>,
}

/// Why a scan could not finish.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// A list request failed (other than 404).
    #[error("cannot list {resource}: {problem}")]
    List {
        /// `plural.group`.
        resource: String,
        /// The API server's status, or the client error with its causes.
        problem: String,
    },
    /// The engine refused a synthetic review (a bug).
    #[error(transparent)]
    Engine(#[from] engine::SyntheticReviewError),
}

/// Validated settings of `kube-persist scan`.
#[derive(Debug, Clone)]
pub struct Config {
    /// Only this namespace; `None` scans all.
    pub namespace: Option<String>,
    pub policy: Policy,
    pub output: ScanOutput,
}

impl Config {
    /// Validates the flags and loads the policy file.
    pub fn from_args(args: ScanArgs) -> anyhow::Result<Config> {
        let ScanArgs {
            namespace,
            policy,
            output,
        } = args;
        let policy = match policy {
            Some(path) => Policy::load(&path)?,
            None => Policy::default(),
        };
        Ok(Config {
            namespace,
            policy,
            output,
        })
    }
}

/// Runs `kube-persist scan` against the cluster of the kubeconfig (or the in-cluster config).
pub async fn run(args: ScanArgs) -> anyhow::Result<ExitCode> {
    let config = Config::from_args(args)?;
    let client = Client::try_default().await.map_err(|e| {
        anyhow::anyhow!(
            "cannot reach the cluster (kubeconfig or in-cluster configuration): {}",
            describe(&e)
        )
    })?;
    let report = scan(&client, config.namespace.as_deref(), &config.policy).await?;
    let stdout = io::stdout().lock();
    let stderr = io::stderr().lock();
    print(&report, config.output, stdout, stderr).context("cannot write the report")?;
    Ok(ExitCode::from(exit_code(&report)))
}

/// 2 when objects could not be read, else 1 when any object is at risk, else 0.
pub fn exit_code(report: &Report) -> u8 {
    if !report.unreadable.is_empty() {
        2
    } else if !report.at_risk.is_empty() {
        1
    } else {
        0
    }
}

/// Lists the target resources (in `namespace`, or cluster-wide) page by page and decides each
/// object.
pub async fn scan(
    client: &Client,
    namespace: Option<&str>,
    policy: &Policy,
) -> Result<Report, ScanError> {
    let mut report = Report::default();
    for resource in &RESOURCES {
        let api_resource = resource.api_resource();
        let api: Api<DynamicObject> = match namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &api_resource),
            None => Api::all_with(client.clone(), &api_resource),
        };
        let meta = resource.type_meta();
        let mut params = ListParams::default().limit(PAGE_SIZE);
        loop {
            let page = match api.list(&params).await {
                Ok(page) => page,
                Err(kube::Error::Api(status)) if status.code == 404 => {
                    report.missing_resources.push(resource.name());
                    break;
                }
                Err(e) => {
                    return Err(ScanError::List {
                        resource: resource.name(),
                        problem: describe(&e),
                    });
                }
            };
            for object in page.items {
                decide(&object, resource, &meta, policy, &mut report)?;
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => break,
            }
        }
    }
    report
        .at_risk
        .sort_by(|a, b| (&a.namespace, &a.kind, &a.name).cmp(&(&b.namespace, &b.kind, &b.name)));
    Ok(report)
}

/// A client error in one line: the API server's status as it says it, or the error and its
/// causes (kube's own messages repeat their sources).
fn describe(e: &kube::Error) -> String {
    if let kube::Error::Api(status) = e {
        return format!("{} {}: {}", status.code, status.reason, status.message);
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            let _ = write!(text, ": {cause_text}");
        }
        source = cause.source();
    }
    text
}

fn decide(
    object: &DynamicObject,
    resource: &Resource,
    meta: &TypeMeta,
    policy: &Policy,
    report: &mut Report,
) -> Result<(), ScanError> {
    let namespace = object.metadata.namespace.clone().unwrap_or_default();
    let name = object.metadata.name.clone().unwrap_or_default();
    // A DynamicObject always serializes (a map of JSON values and plain metadata).
    let value = serde_json::to_value(object).unwrap_or(Value::Null);
    let uid = format!("scan-{}-{namespace}-{name}", resource.plural);
    let decided = engine::decide(&value, meta, OperationArg::Create, &uid, &namespace, policy)?;
    report.scanned += 1;
    let d = &decided.decision;
    if let Verdict::Error { reason } = &d.verdict {
        report
            .unreadable
            .push(format!("{}: {reason}", decided.ident));
        return Ok(());
    }
    let gap = meta
        .target()
        .and_then(|target| gap::of(target, &value, policy));
    if !gap::at_risk(gap.as_ref(), decided.changes(), d.outcome()) {
        report.opted_out += usize::from(gap.is_some());
        return Ok(());
    }
    let would_add = match &d.verdict {
        Verdict::Mutate(Change {
            storage: Some(s), ..
        }) => format!("{} on {}", s.size, s.storage_class_name),
        Verdict::WouldMutate(Change {
            storage: Some(s), ..
        }) => format!(
            "nothing: audit mode (would be {} on {})",
            s.size, s.storage_class_name
        ),
        _ => format!("nothing: {}", d.reason()),
    };
    report.at_risk.push(Finding {
        namespace,
        kind: resource.kind.to_string(),
        name,
        replicas: gap::replicas(&value),
        risk: gap.map_or_else(|| "no persistent storage".to_string(), |g| g.to_string()),
        would_add,
        decision: d.outcome().as_str(),
    });
    Ok(())
}

/// Writes the report to `out` (a table or one JSON document) and notes and a summary line to
/// `log`.
pub fn print<W: Write, L: Write>(
    report: &Report,
    output: ScanOutput,
    mut out: W,
    mut log: L,
) -> io::Result<()> {
    for resource in &report.missing_resources {
        writeln!(
            log,
            "kube-persist scan: {resource} is not served by the cluster (CRD not installed?): skipped"
        )?;
    }
    for problem in &report.unreadable {
        writeln!(log, "error: cannot read {problem}")?;
    }
    match output {
        ScanOutput::Json => {
            let text = serde_json::to_string_pretty(report).map_err(io::Error::other)?;
            writeln!(out, "{text}")?;
        }
        ScanOutput::Table if report.at_risk.is_empty() => {}
        ScanOutput::Table => out.write_all(table(&report.at_risk).as_bytes())?,
    }
    out.flush()?;
    writeln!(
        log,
        "kube-persist scan: {} objects scanned, {} at risk, {} without persistent storage opted out",
        report.scanned,
        report.at_risk.len(),
        report.opted_out
    )?;
    log.flush()
}

/// An aligned table, kubectl style (columns separated by three spaces).
pub fn table(findings: &[Finding]) -> String {
    const HEADER: [&str; 6] = ["NAMESPACE", "KIND", "NAME", "REPLICAS", "RISK", "WOULD ADD"];
    let rows: Vec<[String; 6]> = findings
        .iter()
        .map(|f| {
            [
                f.namespace.clone(),
                f.kind.clone(),
                f.name.clone(),
                f.replicas.to_string(),
                f.risk.clone(),
                f.would_add.clone(),
            ]
        })
        .collect();
    let mut widths = HEADER.map(|h| h.chars().count());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    let header = HEADER.map(str::to_string);
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}   ");
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_resource_is_in_the_rbac_table_and_a_target() {
        for r in &RESOURCES {
            assert!(
                crate::rbac::is_allowed(r.group, r.plural, "list"),
                "{} not granted",
                r.name()
            );
            assert!(r.type_meta().target().is_some(), "{} not a target", r.kind);
        }
    }

    #[test]
    fn the_table_is_aligned() {
        let finding = |ns: &str, name: &str, replicas| Finding {
            namespace: ns.to_string(),
            kind: "Prometheus".to_string(),
            name: name.to_string(),
            replicas,
            risk: "no spec.storage: data in an emptyDir".to_string(),
            would_add: "100Gi on prometheus-data-db".to_string(),
            decision: "mutated",
        };
        let text = table(&[
            finding("monitoring", "k8s", 2),
            finding("a", "long-name", 10),
        ]);
        assert_eq!(
            text,
            "\
NAMESPACE    KIND         NAME        REPLICAS   RISK                                   WOULD ADD
monitoring   Prometheus   k8s         2          no spec.storage: data in an emptyDir   100Gi on prometheus-data-db
a            Prometheus   long-name   10         no spec.storage: data in an emptyDir   100Gi on prometheus-data-db
"
        );
    }

    #[test]
    fn exit_codes() {
        let mut report = Report::default();
        assert_eq!(exit_code(&report), 0);
        report.at_risk.push(Finding {
            namespace: String::new(),
            kind: String::new(),
            name: String::new(),
            replicas: 1,
            risk: String::new(),
            would_add: String::new(),
            decision: "mutated",
        });
        assert_eq!(exit_code(&report), 1);
        report.unreadable.push("x".to_string());
        assert_eq!(exit_code(&report), 2);
    }
}
