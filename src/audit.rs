//! The policy audit log: one JSON line per admission decision.
//!
//! [`AuditRecord::new`] is a pure function of the request and the decision; it never holds
//! object contents (no Secret data, no whole objects), only identity, decision and the patch
//! operations. [`AuditLog`] writes the lines from a dedicated thread through a buffer, one write
//! per burst of lines, so the log never becomes the webhook's bottleneck.

use std::{
    io::{self, Write},
    path::Path,
    sync::mpsc::{self, Receiver, SyncSender},
    thread::JoinHandle,
    time::Duration,
};

use json_patch::PatchOperation;
use serde::Serialize;

use crate::{
    admission::{Decision, Outcome, Request},
    policy::Source,
};

/// One audit line.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord<'a> {
    /// When the decision was made (RFC 3339, UTC).
    pub ts: String,
    /// Request uid.
    pub uid: &'a str,
    /// The outcome.
    pub decision: Outcome,
    /// Why.
    pub reason: &'a str,
    /// Whether the request was allowed.
    pub allowed: bool,
    /// API group of the object.
    pub group: &'a str,
    /// API version of the object.
    pub version: &'a str,
    /// Kind of the object.
    pub kind: &'a str,
    /// Namespace.
    pub namespace: &'a str,
    /// Name, when the object has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    /// `generateName`, when the object has no name yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generate_name: Option<&'a str>,
    /// CREATE, UPDATE, ...
    pub operation: &'static str,
    /// Requesting user.
    pub user: &'a str,
    /// The user's groups.
    pub groups: Vec<&'a str>,
    /// Whether the request was a dry run.
    pub dry_run: bool,
    /// StorageClass added (or proposed).
    pub storage_class: Option<&'a str>,
    /// Size added (or proposed).
    pub size: Option<&'a str>,
    /// Where class and size came from.
    pub source: Option<Source>,
    /// The patch operations (returned, or proposed in audit mode).
    pub patch: &'a [PatchOperation],
    /// The warnings returned to the user.
    pub warnings: &'a [String],
    /// Time from body received to response encoded.
    pub duration_micros: u64,
}

impl<'a> AuditRecord<'a> {
    /// Builds the record for `decision` about `req`.
    pub fn new(
        req: &'a Request<'a>,
        decision: &'a Decision,
        ts: jiff::Timestamp,
        duration: Duration,
    ) -> Self {
        let ident = crate::admission::Ident::of(req);
        let (name, generate_name) = if ident.generated {
            (None, Some(ident.name).filter(|n| !n.is_empty()))
        } else {
            (Some(ident.name), None)
        };
        let storage = decision.storage.as_ref();
        AuditRecord {
            ts: ts.to_string(),
            uid: &req.uid,
            decision: decision.outcome,
            reason: &decision.reason,
            allowed: decision.denied.is_none(),
            group: &req.kind.group,
            version: &req.kind.version,
            kind: &req.kind.kind,
            namespace: ident.namespace,
            name,
            generate_name,
            operation: req.operation.as_str(),
            user: req.user_info.username.as_deref().unwrap_or(""),
            groups: req
                .user_info
                .groups
                .iter()
                .flatten()
                .map(|g| g.0.as_ref())
                .collect(),
            dry_run: req.dry_run.unwrap_or(false),
            storage_class: storage.map(|s| s.storage_class_name.as_str()),
            size: storage.map(|s| s.size.as_str()),
            source: storage.map(|s| s.source),
            patch: match decision.outcome {
                Outcome::Mutated | Outcome::WouldMutate => &decision.patch,
                _ => &[],
            },
            warnings: &decision.warnings,
            duration_micros: u64::try_from(duration.as_micros()).unwrap_or(u64::MAX),
        }
    }

    /// The record as one JSON line, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).unwrap_or_default();
        line.push(b'\n');
        line
    }
}

/// Where audit lines go.
pub enum AuditTarget<'p> {
    /// Standard output.
    Stdout,
    /// A file, appended to.
    File(&'p Path),
}

/// The audit log writer: a thread that drains a bounded channel into a buffered writer.
#[derive(Debug)]
pub struct AuditLog {
    tx: SyncSender<Vec<u8>>,
    thread: JoinHandle<()>,
}

/// A cheap handle to send lines to the [`AuditLog`].
#[derive(Debug, Clone)]
pub struct AuditSender(SyncSender<Vec<u8>>);

impl AuditSender {
    /// Queues one line (blocks only when 64k lines are already waiting).
    pub fn send(&self, line: Vec<u8>) {
        if self.0.send(line).is_err() {
            tracing::error!("Audit log writer has stopped; audit line dropped");
        }
    }
}

impl AuditLog {
    /// Opens `target` and starts the writer thread.
    pub fn open(target: AuditTarget<'_>) -> io::Result<AuditLog> {
        let out: Box<dyn Write + Send> = match target {
            AuditTarget::Stdout => Box::new(io::stdout()),
            AuditTarget::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| {
                        io::Error::new(
                            e.kind(),
                            format!("cannot open --audit-log {}: {e}", path.display()),
                        )
                    })?,
            ),
        };
        let (tx, rx) = mpsc::sync_channel(65_536);
        let thread = std::thread::Builder::new()
            .name("audit-log".to_string())
            .spawn(move || write_lines(rx, io::BufWriter::with_capacity(64 * 1024, out)))?;
        Ok(AuditLog { tx, thread })
    }

    /// A handle for request handlers.
    pub fn sender(&self) -> AuditSender {
        AuditSender(self.tx.clone())
    }

    /// Flushes every queued line and stops the writer. Call after all senders are dropped.
    pub fn close(self) {
        let AuditLog { tx, thread } = self;
        drop(tx);
        if thread.join().is_err() {
            tracing::error!("Audit log writer panicked");
        }
    }
}

fn write_lines(rx: Receiver<Vec<u8>>, mut out: io::BufWriter<Box<dyn Write + Send>>) {
    let mut failing = false;
    while let Ok(line) = rx.recv() {
        let mut result = out.write_all(&line);
        while let Ok(line) = rx.try_recv() {
            if result.is_ok() {
                result = out.write_all(&line);
            }
        }
        let result = result.and_then(|()| out.flush());
        match (result, failing) {
            (Err(e), false) => {
                tracing::error!(error = %e, "Cannot write the audit log");
                failing = true;
            }
            (Ok(()), true) => {
                tracing::info!("Audit log writable again");
                failing = false;
            }
            _ => {}
        }
    }
    let _ = out.flush();
}
