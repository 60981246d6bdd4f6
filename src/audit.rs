//! The policy audit log: one JSON line per admission decision.
//!
//! [`AuditRecord::new`] is a pure function of the request and the decision; it never holds
//! object contents (no Secret data, no whole objects), only identity, decision and the patch
//! operations. A request handler serializes its record ([`AuditSender::record`]) and puts the
//! line on a bounded queue; one thread ([`AuditLog`]) takes the lines off the queue and writes
//! them, in order, to standard output or a file: a line that arrives after a quiet spell at once,
//! the lines of a busy webhook together, every 5 ms.
//!
//! What it must not do is make a review wait. Only the writer thread touches the output, so a
//! slow, hung or full disk stalls that thread alone; a handler that finds the queue full drops
//! its line instead of waiting. Every line lost is counted in
//! `kube_persist_audit_records_dropped_total`, by reason (`queue_full`, or `write_error` when the
//! output refuses a write), and logged at most every ten seconds.

use std::{
    borrow::Cow,
    fs::File,
    io::{self, Write},
    os::{fd::AsFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
        mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use prometheus_client::metrics::{counter::Counter, family::Family};
use serde::Serialize;

use crate::{
    admission::{Decision, Outcome, Patch, Request},
    metrics::AuditDropLabels,
    policy::Source,
};

/// One audit line.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord<'a> {
    /// When the decision was made (RFC 3339, UTC).
    #[serde(serialize_with = "rfc3339")]
    pub ts: jiff::Timestamp,
    pub uid: Cow<'a, str>,
    pub decision: Outcome,
    pub reason: Cow<'a, str>,
    pub allowed: bool,
    pub group: Cow<'a, str>,
    pub version: Cow<'a, str>,
    pub kind: Cow<'a, str>,
    pub namespace: Cow<'a, str>,
    /// Name, when the object has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<Cow<'a, str>>,
    /// `generateName`, when the object has no name yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generate_name: Option<Cow<'a, str>>,
    /// CREATE, UPDATE, ...
    pub operation: &'static str,
    pub user: Cow<'a, str>,
    pub groups: Vec<Cow<'a, str>>,
    pub dry_run: bool,
    /// StorageClass added (or proposed).
    pub storage_class: Option<Cow<'a, str>>,
    /// Size added (or proposed).
    pub size: Option<Cow<'a, str>>,
    /// Where class and size came from.
    pub source: Option<Source>,
    /// The patch operations (returned, or proposed in audit mode); `[]` when there are none.
    #[serde(serialize_with = "empty_if_none")]
    pub patch: Option<&'a Patch>,
    pub warnings: &'a [String],
    /// Time from body received to response encoded.
    pub duration_micros: u64,
}

impl<'a> AuditRecord<'a> {
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
        let storage = decision.storage();
        AuditRecord {
            ts,
            uid: clip(&req.uid),
            decision: decision.outcome(),
            reason: clip(decision.reason()),
            allowed: decision.denied().is_none(),
            group: clip(&req.kind.group),
            version: clip(&req.kind.version),
            kind: clip(&req.kind.kind),
            namespace: clip(ident.namespace),
            name: name.map(clip),
            generate_name: generate_name.map(clip),
            operation: req.operation.as_str(),
            user: clip(req.user_info.username.as_deref().unwrap_or("")),
            groups: req
                .user_info
                .groups
                .iter()
                .flatten()
                .take(MAX_GROUPS)
                .map(|g| clip(&g.0))
                .collect(),
            dry_run: req.dry_run.unwrap_or(false),
            storage_class: storage.map(|s| clip(&s.storage_class_name)),
            size: storage.map(|s| clip(&s.size)),
            source: storage.map(|s| s.source),
            // The patch returned, or proposed in audit mode.
            patch: decision.patch(),
            warnings: &decision.warnings,
            duration_micros: u64::try_from(duration.as_micros()).unwrap_or(u64::MAX),
        }
    }

    /// Appends the record to `out` as one JSON line: serde_json's form of the record, then a
    /// newline.
    pub fn write_line(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        crate::json::write(out, self)?;
        out.push(b'\n');
        Ok(())
    }
}

/// The most of one string from the request that an audit line carries. The API server checks
/// names and annotations only after the mutating webhooks, so a review can hold a name or an
/// annotation value (quoted in a reason) of any length.
const MAX_FIELD: usize = 1024;
/// The most user groups an audit line lists.
const MAX_GROUPS: usize = 64;

/// `text`, or its first [`MAX_FIELD`] bytes (cut at a character boundary) with the length of
/// the whole.
fn clip(text: &str) -> Cow<'_, str> {
    if text.len() <= MAX_FIELD {
        return Cow::Borrowed(text);
    }
    let mut end = MAX_FIELD;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!(
        "{}...[truncated: {} bytes in all]",
        &text[..end],
        text.len()
    ))
}

/// Where audit lines go.
pub enum AuditTarget<'p> {
    Stdout,
    /// A file, appended to, and opened again when it is rotated.
    File(&'p Path),
}

/// `2026-12-03T16:11:51.018541429Z`, written straight into the line.
fn rfc3339<S: serde::Serializer>(ts: &jiff::Timestamp, out: S) -> Result<S::Ok, S::Error> {
    out.collect_str(ts)
}

/// The record of a decision without a patch carries an empty one.
fn empty_if_none<S: serde::Serializer>(patch: &Option<&Patch>, out: S) -> Result<S::Ok, S::Error> {
    match patch {
        Some(patch) => patch.serialize(out),
        None => out.collect_seq(std::iter::empty::<()>()),
    }
}

/// Lines the queue holds: four seconds of a busy webhook (2,000 reviews/s) behind a stalled
/// output, about 8 MB of typical lines.
const QUEUE_LINES: usize = 8192;
/// The writer writes at the latest when it has taken this much off the queue.
const BATCH_BYTES: usize = 64 * 1024;
/// After a write, the writer rests this long before it looks at the queue again.
const PAUSE: Duration = Duration::from_millis(5);
/// How often the writer checks whether the log file was renamed or removed (rotated).
const REOPEN_CHECK: Duration = Duration::from_secs(1);
/// Lost lines and output errors are logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(10);

enum Message {
    /// One line, newline included.
    Line(Vec<u8>),
    /// Write what was sent before, then stop.
    Close,
}

/// Lets a log message through at most every [`LOG_EVERY`], from any thread.
#[derive(Debug, Default)]
struct LogLimit(Mutex<Option<Instant>>);

impl LogLimit {
    fn allow(&self) -> bool {
        let mut last = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if last.is_some_and(|last| now.duration_since(last) < LOG_EVERY) {
            return false;
        }
        *last = Some(now);
        true
    }
}

/// The audit log: a bounded queue of lines and the thread that writes them.
#[derive(Debug)]
pub struct AuditLog {
    sender: AuditSender,
    thread: JoinHandle<()>,
}

/// A handle for request handlers to send lines to the [`AuditLog`]; never waits.
#[derive(Debug, Clone)]
pub struct AuditSender {
    queue: SyncSender<Message>,
    queue_full: Counter,
    log: Arc<LogLimit>,
    /// Set by [`AuditSender::reopen`], taken by the writer before its next write.
    reopen: Arc<AtomicBool>,
}

impl AuditSender {
    /// Asks the writer to open the log file again before its next write (SIGHUP, after a
    /// rotation that renamed the file). Standard output is left as it is.
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Relaxed);
    }

    /// Serializes `record` as one line ([`AuditRecord::write_line`]) and sends it.
    pub fn record(&self, record: &AuditRecord<'_>) {
        let mut line = Vec::with_capacity(1024);
        match record.write_line(&mut line) {
            Ok(()) => self.send(line),
            // Not expected: every field serializes.
            Err(e) => {
                tracing::error!(error = %e, uid = %record.uid, "Cannot serialize an audit record")
            }
        }
    }

    /// Queues one line (newline included). When the queue is full the line is dropped and
    /// counted (`queue_full`).
    pub fn send(&self, line: Vec<u8>) {
        match self.queue.try_send(Message::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.queue_full.inc();
                if self.log.allow() {
                    tracing::error!(
                        dropped_total = self.queue_full.get(),
                        "Audit log output too slow or stalled, its queue is full: audit records dropped"
                    );
                }
            }
            Err(TrySendError::Disconnected(_)) => {
                if self.log.allow() {
                    tracing::error!("Audit log closed: audit record dropped");
                }
            }
        }
    }
}

impl AuditLog {
    /// Opens `target` and starts the writer thread. Lost lines are counted in `dropped`.
    pub fn open(
        target: AuditTarget<'_>,
        dropped: &Family<AuditDropLabels, Counter>,
    ) -> io::Result<AuditLog> {
        AuditLog::start(Output::open(target)?, QUEUE_LINES, dropped)
    }

    fn start(
        output: Output,
        queue_lines: usize,
        dropped: &Family<AuditDropLabels, Counter>,
    ) -> io::Result<AuditLog> {
        let counter = |reason| dropped.get_or_create(&AuditDropLabels { reason }).clone();
        let (queue, lines) = mpsc::sync_channel(queue_lines);
        let reopen = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            output,
            reopen: Arc::clone(&reopen),
            batch: Vec::with_capacity(BATCH_BYTES),
            batch_lines: 0,
            cut_line: false,
            write_error: counter("write_error"),
            failing: false,
            log: LogLimit::default(),
        };
        let thread = std::thread::Builder::new()
            .name("audit-log".to_string())
            .spawn(move || writer.run(&lines))?;
        let sender = AuditSender {
            queue,
            queue_full: counter("queue_full"),
            log: Arc::default(),
            reopen,
        };
        Ok(AuditLog { sender, thread })
    }

    pub fn sender(&self) -> AuditSender {
        self.sender.clone()
    }

    /// Writes every line sent before the call, then stops the writer. Waits as long as the
    /// output does. (Lines sent later by a sender still alive are lost, with an error logged.)
    pub fn close(self) {
        let AuditLog { sender, thread } = self;
        // Waits for room in the queue; the writer stops once it has written what is before.
        let _ = sender.queue.send(Message::Close);
        drop(sender);
        if thread.join().is_err() {
            tracing::error!("Audit log writer panicked");
        }
    }
}

struct Output {
    file: File,
    /// The file's path, to open it again after a rotation (none for standard output).
    path: Option<PathBuf>,
    checked: Instant,
    check_every: Duration,
    log: LogLimit,
}

impl Output {
    fn open(target: AuditTarget<'_>) -> io::Result<Output> {
        let (file, path) = match target {
            // A descriptor of its own: the log bypasses the standard library's line buffer,
            // which nothing else writes to (the program logs to standard error).
            AuditTarget::Stdout => {
                let fd = io::stdout().as_fd().try_clone_to_owned().map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("cannot use stdout for the audit log: {e}"),
                    )
                })?;
                (File::from(fd), None)
            }
            AuditTarget::File(path) => (
                append(path).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("cannot open --audit-log {}: {e}", path.display()),
                    )
                })?,
                Some(path.to_path_buf()),
            ),
        };
        Ok(Output {
            file,
            path,
            checked: Instant::now(),
            check_every: REOPEN_CHECK,
            log: LogLimit::default(),
        })
    }

    /// Opens the path again when it no longer names the open file: renamed (logrotate's
    /// `create`) or removed, a new file is created. Checked at most every `check_every`, or
    /// now when `asked` (SIGHUP). (`copytruncate` needs nothing: the file is opened for
    /// appending, so writes continue at its new end.) Returns whether a new file is open.
    fn reopen_if_rotated(&mut self, asked: bool) -> bool {
        let Some(path) = &self.path else { return false };
        if !asked && self.checked.elapsed() < self.check_every {
            return false;
        }
        self.checked = Instant::now();
        let rotated = match (std::fs::metadata(path), self.file.metadata()) {
            (Ok(named), Ok(open)) => (named.dev(), named.ino()) != (open.dev(), open.ino()),
            (Err(e), _) => e.kind() == io::ErrorKind::NotFound,
            (_, Err(_)) => false,
        };
        if !(rotated || asked) {
            return false;
        }
        match append(path) {
            Ok(file) => {
                self.file = file;
                tracing::info!(path = %path.display(), "Audit log file opened again");
                true
            }
            Err(e) => {
                if self.log.allow() {
                    tracing::error!(error = %e, path = %path.display(), "Cannot open the audit log file again; still writing to the old one");
                }
                false
            }
        }
    }
}

fn append(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// The writer thread's state.
struct Writer {
    output: Output,
    reopen: Arc<AtomicBool>,
    /// Lines taken off the queue, not written yet.
    batch: Vec<u8>,
    batch_lines: u64,
    /// The output ends in a line cut short by a failed write (a full disk takes what fits).
    cut_line: bool,
    write_error: Counter,
    /// The last write failed (its recovery is logged).
    failing: bool,
    log: LogLimit,
}

impl Writer {
    /// Takes lines off the queue and writes them whenever the queue is empty (or the batch is
    /// full), resting [`PAUSE`] after each write, until [`Message::Close`] and what was queued
    /// before it are written.
    fn run(mut self, queue: &Receiver<Message>) {
        let mut closing = false;
        loop {
            let message = match queue.try_recv() {
                Ok(message) => message,
                Err(TryRecvError::Empty) => {
                    let wrote = !self.batch.is_empty();
                    self.write();
                    if closing {
                        return;
                    }
                    if wrote {
                        // Lines sent during the pause queue up without waking this thread, so
                        // a busy webhook wakes it every PAUSE, not for every line (a wake-up
                        // per review took 1.7x the CPU of a review on the handlers' core).
                        std::thread::sleep(PAUSE);
                        continue;
                    }
                    match queue.recv() {
                        Ok(message) => message,
                        Err(mpsc::RecvError) => return, // every sender is gone
                    }
                }
                Err(TryRecvError::Disconnected) => break,
            };
            match message {
                Message::Line(line) => {
                    self.batch.extend_from_slice(&line);
                    self.batch_lines += 1;
                    if self.batch.len() >= BATCH_BYTES {
                        self.write();
                    }
                }
                Message::Close => closing = true,
            }
        }
        self.write();
    }

    /// Writes the batch. Lines the output refuses are dropped and counted (`write_error`); a
    /// line cut short by a full disk is ended before the next write, so no record is glued
    /// onto it.
    fn write(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        if self
            .output
            .reopen_if_rotated(self.reopen.swap(false, Ordering::Relaxed))
        {
            self.cut_line = false;
        }
        // A file emptied meanwhile (copytruncate) has no line to end.
        if self.cut_line && self.output.file.metadata().is_ok_and(|m| m.len() == 0) {
            self.cut_line = false;
        }
        let ending = usize::from(self.cut_line);
        let (written, result) = if self.cut_line {
            write_some(&mut self.output.file, &[b"\n", &self.batch[..]].concat())
        } else {
            write_some(&mut self.output.file, &self.batch)
        };
        match result {
            Ok(()) => {
                self.cut_line = false;
                if self.failing {
                    tracing::info!("Audit log writable again");
                    self.failing = false;
                }
            }
            Err(e) => {
                // What reached the output: the line ending owed, then some of the batch.
                let done = written.saturating_sub(ending).min(self.batch.len());
                let whole_lines = self.batch[..done].iter().filter(|&&b| b == b'\n').count();
                if written >= ending {
                    self.cut_line = done > 0 && self.batch[done - 1] != b'\n';
                }
                self.write_error
                    .inc_by(self.batch_lines - whole_lines as u64);
                self.failing = true;
                if self.log.allow() {
                    tracing::error!(
                        error = %e,
                        dropped_total = self.write_error.get(),
                        "Cannot write the audit log: audit records dropped"
                    );
                }
            }
        }
        self.batch.clear();
        self.batch.shrink_to(BATCH_BYTES);
        self.batch_lines = 0;
    }
}

/// Writes `bytes` like `write_all`, and says how many were written before an error.
fn write_some(out: &mut impl Write, bytes: &[u8]) -> (usize, io::Result<()>) {
    let mut written = 0;
    while written < bytes.len() {
        match out.write(&bytes[written..]) {
            Ok(0) => return (written, Err(io::ErrorKind::WriteZero.into())),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (written, Err(e)),
        }
    }
    (written, Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        admission::{self, ReviewBody},
        policy::Policy,
    };

    fn counters() -> Family<AuditDropLabels, Counter> {
        Family::default()
    }

    fn dropped(family: &Family<AuditDropLabels, Counter>, reason: &'static str) -> u64 {
        family.get_or_create(&AuditDropLabels { reason }).get()
    }

    /// Waits (2 s at most) until the file at `path` holds `expected`.
    fn wait_for(path: &Path, expected: &str) {
        let mut seen = String::new();
        for _ in 0..200 {
            seen = std::fs::read_to_string(path).unwrap_or_default();
            if seen == expected {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(seen, expected);
    }

    /// The records of three reviews and the lines the writer this one replaced wrote for them.
    #[test]
    fn a_record_is_one_line_of_its_serde_form_as_before() {
        let escaped: &[u8] = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u\"1\u0001","kind":{"group":"monitoring.coreos.com","version":"v1","kind":"Prometheus"},"namespace":"mon\\itoring","operation":"CREATE","userInfo":{},"object":{"metadata":{"generateName":"k8s-\u00e9\t","annotations":{"kube-persist.io/size":"\"big\""}},"spec":{}}}}"#;
        // Nanoseconds, trailing zeros, a whole second: the fraction as jiff writes it.
        let cases: [(&[u8], Policy, &str, u64); 3] = [
            (
                include_bytes!("../tests/fixtures/reviews/a-prometheus.json"),
                Policy::default(),
                "2026-11-25T05:00:00.123456789Z",
                1234,
            ),
            (
                include_bytes!("../tests/fixtures/statefulsets/edge-generate-name-dry-run.json"),
                Policy::from_yaml("mode: audit", "p").unwrap(),
                "2026-11-25T05:00:00.120Z",
                7,
            ),
            (
                escaped,
                Policy::from_yaml("strict: true", "p").unwrap(),
                "2026-11-25T05:00:00Z",
                0,
            ),
        ];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(AuditTarget::File(&path), &counters()).unwrap();
        let sender = log.sender();
        for (body, policy, ts, micros) in &cases {
            let reviewed = admission::review(body, policy).unwrap();
            let record = AuditRecord::new(
                &reviewed.request,
                &reviewed.decision,
                ts.parse().unwrap(),
                Duration::from_micros(*micros),
            );
            let mut line = Vec::new();
            record.write_line(&mut line).unwrap();
            let mut serde = serde_json::to_vec(&record).unwrap();
            serde.push(b'\n');
            assert_eq!(line, serde);
            sender.record(&record);
        }
        log.close();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            include_str!("../tests/fixtures/audit-lines.jsonl")
        );
    }

    #[test]
    fn strings_from_the_request_are_cut_in_the_line() {
        let long_name = "n".repeat(1 << 20);
        let long_value = "9".repeat(1 << 20);
        let groups: Vec<String> = (0..1000).map(|i| format!("group-{i}")).collect();
        let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
        let object = serde_json::json!({
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "Prometheus",
            "metadata": {
                "name": long_name,
                "namespace": "monitoring",
                "annotations": {"kube-persist.io/size": format!("{long_value}é")},
            },
            "spec": {},
        });
        let user = format!("a{}", "ü".repeat(600));
        let body = ReviewBody::new(&object).user(&user, &groups).to_vec();
        let reviewed = admission::review(&body, &Policy::default()).unwrap();
        assert_eq!(reviewed.decision.outcome(), Outcome::Invalid);
        let record = AuditRecord::new(
            &reviewed.request,
            &reviewed.decision,
            jiff::Timestamp::UNIX_EPOCH,
            Duration::ZERO,
        );
        let mut line = Vec::new();
        record.write_line(&mut line).unwrap();
        assert!(line.len() < 16 * 1024, "{} bytes", line.len());
        let line: serde_json::Value = serde_json::from_slice(&line).unwrap();
        let name = line["name"].as_str().unwrap();
        assert!(name.starts_with("nnnn"), "{name:.20}");
        assert!(
            name.ends_with("...[truncated: 1048576 bytes in all]"),
            "{name}"
        );
        assert!(line["reason"].as_str().unwrap().contains("[truncated: "));
        // Cut on a character boundary: byte 1024 is inside a two-byte 'ü'.
        assert_eq!(
            line["user"].as_str().unwrap(),
            format!("a{}...[truncated: 1201 bytes in all]", "ü".repeat(511))
        );
        assert_eq!(line["groups"].as_array().unwrap().len(), 64);
    }

    #[test]
    fn every_line_is_one_json_object_with_the_decisions_patch() {
        let bodies: [&[u8]; 4] = [
            include_bytes!("../tests/fixtures/reviews/a-prometheus.json"),
            include_bytes!("../tests/fixtures/reviews/d-configmap.json"),
            include_bytes!("../tests/fixtures/bench/b-sts-small.json"),
            include_bytes!("../tests/fixtures/statefulsets/edge-update-escaped.json"),
        ];
        let policies = [
            Policy::default(),
            Policy::from_yaml("mode: audit", "p").unwrap(),
            Policy::from_yaml("strict: true\nonUpdate: mutate", "p").unwrap(),
        ];
        for body in bodies {
            for policy in &policies {
                let reviewed = admission::review(body, policy).unwrap();
                let ts = jiff::Timestamp::now();
                let record =
                    AuditRecord::new(&reviewed.request, &reviewed.decision, ts, Duration::ZERO);
                let mut line = Vec::new();
                record.write_line(&mut line).unwrap();
                assert_eq!(line.iter().position(|b| *b == b'\n'), Some(line.len() - 1));
                let value: serde_json::Value = serde_json::from_slice(&line).unwrap();
                assert_eq!(value["ts"], ts.to_string());
                let patch = reviewed
                    .decision
                    .patch()
                    .map_or(serde_json::json!([]), |p| serde_json::to_value(p).unwrap());
                assert_eq!(value["patch"], patch);
            }
        }
    }

    #[test]
    fn a_lone_line_is_written_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(AuditTarget::File(&path), &counters()).unwrap();
        let sender = log.sender();
        // `tail -f` sees each line without waiting for more, or for close.
        sender.send(b"first\n".to_vec());
        wait_for(&path, "first\n");
        sender.send(b"second\n".to_vec());
        wait_for(&path, "first\nsecond\n");
        log.close();
    }

    /// A pipe nobody reads yet, as the log's output.
    fn pipe() -> (io::PipeReader, Output) {
        let (reader, writer) = io::pipe().unwrap();
        let output = Output {
            file: File::from(std::os::fd::OwnedFd::from(writer)),
            path: None,
            checked: Instant::now(),
            check_every: REOPEN_CHECK,
            log: LogLimit::default(),
        };
        (reader, output)
    }

    #[test]
    fn close_writes_everything_sent() {
        use std::io::Read;
        let (mut reader, output) = pipe();
        let log = AuditLog::start(output, 10_000, &counters()).unwrap();
        let sender = log.sender();
        // 2 x 3000 lines, ten times what the pipe holds: most are still queued at close.
        let threads: Vec<_> = (0..2)
            .map(|t| {
                let sender = sender.clone();
                std::thread::spawn(move || {
                    for i in 0..3000 {
                        sender.send(format!("{t} {i} {}\n", "y".repeat(100)).into_bytes());
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let read = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            let mut all = String::new();
            reader.read_to_string(&mut all).unwrap();
            all
        });
        log.close();
        // The pipe closes with the last sender.
        drop(sender);
        let written = read.join().unwrap();
        // Every line whole, once, and each thread's in order.
        let mut next = [0; 2];
        for line in written.lines() {
            let mut words = line.split(' ');
            let t: usize = words.next().unwrap().parse().unwrap();
            let i: usize = words.next().unwrap().parse().unwrap();
            assert_eq!(i, next[t], "thread {t}'s lines out of order or missing");
            assert_eq!(words.next(), Some("y".repeat(100).as_str()));
            next[t] += 1;
        }
        assert_eq!(next, [3000; 2]);
    }

    #[test]
    fn a_renamed_file_is_replaced_by_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let rotated = dir.path().join("audit.log.1");
        let mut output = Output::open(AuditTarget::File(&path)).unwrap();
        output.check_every = Duration::ZERO;
        let log = AuditLog::start(output, 16, &counters()).unwrap();
        let sender = log.sender();
        sender.send(b"one\n".to_vec());
        wait_for(&path, "one\n");
        // What logrotate's `create` does.
        std::fs::rename(&path, &rotated).unwrap();
        File::create(&path).unwrap();
        sender.send(b"two\n".to_vec());
        wait_for(&path, "two\n");
        // Removed: created again.
        std::fs::remove_file(&path).unwrap();
        sender.send(b"three\n".to_vec());
        log.close();
        assert_eq!(std::fs::read_to_string(&rotated).unwrap(), "one\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "three\n");
    }

    #[test]
    fn the_file_is_checked_for_rotation_only_after_the_check_interval() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let rotated = dir.path().join("audit.log.1");
        let mut output = Output::open(AuditTarget::File(&path)).unwrap();
        output.check_every = Duration::from_secs(3600);
        std::fs::rename(&path, &rotated).unwrap();
        // Within the interval: still the old file.
        output.reopen_if_rotated(false);
        output.file.write_all(b"one\n").unwrap();
        output.check_every = Duration::ZERO;
        output.reopen_if_rotated(false);
        output.file.write_all(b"two\n").unwrap();
        assert_eq!(std::fs::read_to_string(&rotated).unwrap(), "one\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two\n");
    }

    #[test]
    fn after_copytruncate_lines_continue_at_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(AuditTarget::File(&path), &counters()).unwrap();
        let sender = log.sender();
        let before = "x".repeat(999) + "\n";
        for _ in 0..10 {
            sender.send(before.clone().into_bytes());
        }
        wait_for(&path, &before.repeat(10));
        // What logrotate's copytruncate does.
        std::fs::copy(&path, dir.path().join("audit.log.1")).unwrap();
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        sender.send(b"after\n".to_vec());
        log.close();
        // No hole of NULs where the old lines were.
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "after\n");
    }

    #[test]
    fn a_stalled_output_drops_and_counts_lines_without_waiting() {
        use std::io::Read;
        // The writer blocks once the pipe holds 64 KiB.
        let (mut reader, output) = pipe();
        let family = counters();
        let log = AuditLog::start(output, 4, &family).unwrap();
        let sender = log.sender();
        // More than any pipe holds: the writer is stuck in this write.
        let mut big = vec![b'x'; 4 << 20];
        *big.last_mut().unwrap() = b'\n';
        sender.send(big.clone());
        let mut longest = Duration::ZERO;
        for i in 0..100 {
            let started = Instant::now();
            sender.send(format!("{i}\n").into_bytes());
            longest = longest.max(started.elapsed());
        }
        assert!(
            longest < Duration::from_millis(250),
            "a send waited {longest:?}"
        );
        // The writer is stuck with the big line; four small ones wait in the queue.
        let full = dropped(&family, "queue_full");
        assert!((95..=100).contains(&full), "{full} dropped");
        let read = std::thread::spawn(move || {
            let mut all = Vec::new();
            reader.read_to_end(&mut all).unwrap();
            all
        });
        log.close();
        drop(sender);
        let all = read.join().unwrap();
        assert!(all.starts_with(&big));
        let small = all[big.len()..].split(|b| *b == b'\n').count() - 1;
        assert_eq!(u64::try_from(small).unwrap() + full, 100);
        assert_eq!(dropped(&family, "write_error"), 0);
    }

    #[test]
    fn a_failing_output_counts_its_lost_lines() {
        let full = Path::new("/dev/full");
        if !full.exists() {
            return;
        }
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = crate::metrics::WebhookMetrics::register(&mut registry);
        let log = AuditLog::open(AuditTarget::File(full), &metrics.audit_dropped).unwrap();
        let sender = log.sender();
        for _ in 0..3 {
            sender.send(b"lost\n".to_vec());
        }
        log.close();
        let text = crate::metrics::render(&registry);
        for line in [
            r#"kube_persist_audit_records_dropped_total{reason="write_error"} 3"#,
            r#"kube_persist_audit_records_dropped_total{reason="queue_full"} 0"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
    }
}
