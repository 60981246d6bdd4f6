//! The policy audit log: one JSON line per admission decision.
//!
//! [`AuditRecord::new`] is a pure function of the request and the decision; it never holds
//! object contents (no Secret data, no whole objects), only identity, decision and the patch
//! operations. [`AuditLog`] collects the lines in a buffer and writes them a batch at a time: from
//! the request handler that filled a 32 KiB batch when the output takes it without waiting,
//! otherwise from a dedicated thread, so the log never becomes the webhook's bottleneck.

use std::{
    cell::RefCell,
    fmt::{self, Write as _},
    io::{self, IoSlice, Write},
    os::fd::AsFd,
    path::Path,
    sync::{
        Arc, Condvar, Mutex, MutexGuard, PoisonError, TryLockError,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{
    admission::{Decision, Outcome, Patch, Request, Verdict},
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
    pub patch: &'a Patch,
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
        // The patch returned, or proposed in audit mode.
        let (patch, storage) = match &decision.verdict {
            Verdict::Mutate(change) | Verdict::WouldMutate(change) => {
                (&change.patch, change.storage.as_ref())
            }
            _ => (&NO_PATCH, None),
        };
        AuditRecord {
            ts: rfc3339(ts),
            uid: &req.uid,
            decision: decision.outcome(),
            reason: decision.reason(),
            allowed: decision.denied().is_none(),
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
            patch,
            warnings: &decision.warnings,
            duration_micros: u64::try_from(duration.as_micros()).unwrap_or(u64::MAX),
        }
    }

    /// Appends the record as one JSON line, newline included, to `out`: the bytes serde_json
    /// writes for the record's `Serialize` form (the tests compare them), written by hand
    /// because this runs for every request.
    pub fn write_line(&self, out: &mut Vec<u8>) {
        let AuditRecord {
            ts,
            uid,
            decision,
            reason,
            allowed,
            group,
            version,
            kind,
            namespace,
            name,
            generate_name,
            operation,
            user,
            groups,
            dry_run,
            storage_class,
            size,
            source,
            patch,
            warnings,
            duration_micros,
        } = self;
        let text = |out: &mut Vec<u8>, key: &[u8], value: &str| {
            out.extend_from_slice(key);
            json::str(out, value);
        };
        let optional = |out: &mut Vec<u8>, key: &[u8], value: Option<&str>| {
            out.extend_from_slice(key);
            match value {
                Some(v) => json::str(out, v),
                None => out.extend_from_slice(b"null"),
            }
        };
        text(out, br#"{"ts":"#, ts);
        text(out, br#","uid":"#, uid);
        text(out, br#","decision":"#, decision.as_str());
        text(out, br#","reason":"#, reason);
        out.extend_from_slice(br#","allowed":"#);
        json::bool(out, *allowed);
        text(out, br#","group":"#, group);
        text(out, br#","version":"#, version);
        text(out, br#","kind":"#, kind);
        text(out, br#","namespace":"#, namespace);
        if let Some(name) = name {
            text(out, br#","name":"#, name);
        }
        if let Some(generate_name) = generate_name {
            text(out, br#","generateName":"#, generate_name);
        }
        text(out, br#","operation":"#, operation);
        text(out, br#","user":"#, user);
        out.extend_from_slice(br#","groups":["#);
        for (i, g) in groups.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            json::str(out, g);
        }
        out.extend_from_slice(br#"],"dryRun":"#);
        json::bool(out, *dry_run);
        optional(out, br#","storageClass":"#, *storage_class);
        optional(out, br#","size":"#, *size);
        optional(out, br#","source":"#, source.map(Source::as_str));
        out.extend_from_slice(br#","patch":"#);
        // A patch of JSON values: writing it to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, patch);
        out.extend_from_slice(br#","warnings":["#);
        for (i, w) in warnings.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            json::str(out, w);
        }
        out.extend_from_slice(br#"],"durationMicros":"#);
        json::uint(out, *duration_micros);
        out.extend_from_slice(b"}\n");
    }
}

/// The record of a decision without a patch carries an empty one.
static NO_PATCH: Patch = json_patch::Patch(Vec::new());

/// Compact JSON written straight into the line buffer: byte for byte what serde_json writes
/// for the same values (the tests compare the lines), but a string that needs no escaping (as
/// nearly all do) is checked as a whole and copied, not escaped byte by byte.
mod json {
    /// Appends `s` as a JSON string.
    pub(super) fn str(out: &mut Vec<u8>, s: &str) {
        // No early exit, so the loop vectorizes: serde_json escapes only these bytes.
        let plain = s
            .bytes()
            .fold(true, |ok, b| ok & (b >= 0x20) & (b != b'"') & (b != b'\\'));
        if plain {
            out.reserve(s.len() + 2);
            out.push(b'"');
            out.extend_from_slice(s.as_bytes());
            out.push(b'"');
        } else {
            // Writing a string to a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *out, s);
        }
    }

    /// Appends `b` as `true` or `false`.
    pub(super) fn bool(out: &mut Vec<u8>, b: bool) {
        out.extend_from_slice(if b { b"true" } else { b"false" });
    }

    /// Appends `n`.
    pub(super) fn uint(out: &mut Vec<u8>, n: u64) {
        // Writing to a Vec cannot fail.
        let _ = std::io::Write::write_fmt(out, format_args!("{n}"));
    }
}

/// `ts` as jiff's `Display` writes it (RFC 3339 in UTC, the fraction of a second without
/// trailing zeros), with the date and time of day formatted once per second on each thread:
/// every audit line starts with one.
fn rfc3339(ts: jiff::Timestamp) -> String {
    thread_local! {
        /// The whole second last formatted on this thread, without its `Z`.
        static SECOND: RefCell<(i64, String)> = const { RefCell::new((i64::MIN, String::new())) };
    }
    let (second, nanos) = (ts.as_second(), ts.subsec_nanosecond());
    if nanos < 0 {
        return ts.to_string(); // before 1970: not worth a cache
    }
    SECOND.with_borrow_mut(|(cached, prefix)| {
        if *cached != second {
            // The whole second of a valid timestamp is one too.
            let Ok(whole) = jiff::Timestamp::from_second(second) else {
                return ts.to_string();
            };
            prefix.clear();
            // Infallible for a String.
            let _ = write!(prefix, "{whole}");
            prefix.pop(); // the `Z`
            *cached = second;
        }
        let mut text = String::with_capacity(prefix.len() + 11);
        text.push_str(prefix);
        if nanos != 0 {
            let mut digits = [b'0'; 9];
            let mut rest = nanos.unsigned_abs();
            for d in digits.iter_mut().rev() {
                *d = b'0' + (rest % 10) as u8;
                rest /= 10;
            }
            let len = digits.len() - digits.iter().rev().take_while(|d| **d == b'0').count();
            text.push('.');
            text.extend(digits[..len].iter().map(|d| char::from(*d)));
        }
        text.push('Z');
        text
    })
}

/// Where audit lines go.
pub enum AuditTarget<'p> {
    /// Standard output.
    Stdout,
    /// A file, appended to.
    File(&'p Path),
}

/// A per-thread line buffer that grew beyond this (a record with a huge name or patch) is freed.
const KEEP_LINE_BUFFER: usize = 64 * 1024;
/// How long a line may wait in memory before it is written.
const FLUSH_EVERY: Duration = Duration::from_millis(20);
/// With this much pending, the request handler that added the last line writes the buffer
/// itself when the output takes a write without blocking ([`Direct`]): a few tens of
/// microseconds of the handler's own time, where the writer thread, woken on the handlers'
/// core, took it away for a whole 256 KiB write (~200 us) and fattened the latency tail.
const DIRECT_AT: usize = 32 * 1024;
/// The writer thread writes as soon as this much is pending. (Smaller batches from the thread
/// cost more than they save: at 32 KiB, its extra wake-ups on the handlers' core took ~20% more
/// CPU per review and raised p99 latency in the load benchmark.)
const FLUSH_AT: usize = 256 * 1024;
/// A handler's write to a regular file that took longer than this (the disk is throttling
/// writeback) pauses direct writes for [`DIRECT_PAUSE`]: only the writer thread waits for the
/// disk meanwhile. (A healthy ext4 takes 25-40 us for a 32 KiB append, 1-3 ms a few times a
/// minute: journal commits, the file truncated by logrotate.)
const SLOW_DIRECT: Duration = Duration::from_millis(10);
/// How long a slow or failing direct write keeps handlers from trying again.
const DIRECT_PAUSE: Duration = Duration::from_secs(10);
/// Above this, request handlers wait for the writer (backpressure instead of unbounded memory).
const MAX_PENDING: usize = 32 * 1024 * 1024;
/// The longest a request handler waits for a stalled audit output.
const MAX_WAIT: Duration = Duration::from_millis(100);

#[derive(Debug, Default)]
struct Pending {
    lines: Vec<u8>,
    closed: bool,
    dropped: u64,
    /// The writer found nothing to write for a whole period and sleeps until woken.
    writer_idle: bool,
    /// A handler's direct write stopped short; the writer thread finishes it.
    handed_off: bool,
    /// Handlers waiting for `drained` (backpressure).
    waiting: usize,
}

#[derive(Debug)]
struct Shared {
    pending: Mutex<Pending>,
    /// Signalled when the buffer is full, a direct write was handed off or the log closes.
    full: Condvar,
    /// Signalled when the buffer was taken.
    drained: Condvar,
    /// Whoever holds the output takes the buffer and writes it, so lines reach the output in
    /// the order they were added. Lock order: `output`, then `pending`; a handler holding
    /// `pending` only ever tries `output`.
    output: Mutex<Output>,
    /// Whether handlers may write directly.
    direct: AtomicBool,
}

struct Output {
    /// Where the writer thread writes, waiting as long as it takes.
    out: Box<dyn Write + Send>,
    /// The same output for handlers, written without waiting.
    direct: Option<Direct>,
    /// Taken from the buffer but not written yet (a direct write stopped short): written first.
    carry: Vec<u8>,
    /// The batch being written, swapped with the pending buffer so the two alternate.
    batch: Vec<u8>,
    /// The last write failed (logged once until the output recovers).
    failing: bool,
    /// Direct writes are paused until then (see [`SLOW_DIRECT`]).
    paused_until: Option<Instant>,
    /// Batches handlers wrote themselves.
    direct_batches: u64,
}

impl fmt::Debug for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Output")
            .field("direct", &self.direct)
            .field("carry", &self.carry.len())
            .field("failing", &self.failing)
            .field("paused_until", &self.paused_until)
            .field("direct_batches", &self.direct_batches)
            .finish_non_exhaustive()
    }
}

/// How a request handler writes to the output without waiting for it (Linux).
#[derive(Debug)]
enum Direct {
    /// A pipe (standard output in a container), socket or device: `pwritev2` with
    /// `RWF_NOWAIT` answers `EAGAIN` instead of waiting for room, and the rest is handed to
    /// the writer thread.
    #[cfg(target_os = "linux")]
    NoWait(std::os::fd::OwnedFd),
    /// A regular file on a local filesystem: a write into the page cache. Linux has no
    /// non-blocking buffered write to regular files (`RWF_NOWAIT` is refused on ext4 and tmpfs),
    /// so a write that took longer than [`SLOW_DIRECT`] pauses direct writes. (A local disk
    /// throttles a writer for at most 200 ms at a time; files on NFS or FUSE, which can hang,
    /// are left to the writer thread.)
    #[cfg(target_os = "linux")]
    File(std::os::fd::OwnedFd),
}

impl Direct {
    /// The direct way to write to `file`, if there is one.
    #[cfg(target_os = "linux")]
    fn of(file: &std::fs::File) -> Option<Direct> {
        /// ext2/3/4, XFS, btrfs, tmpfs, overlayfs (a container's own filesystem).
        const LOCAL: [i64; 5] = [0xEF53, 0x5846_5342, 0x9123_683E, 0x0102_1994, 0x794C_7630];
        let regular = file.metadata().ok()?.file_type().is_file();
        if regular {
            // `f_type` is an i64 here, an i32 or u32 on some other targets.
            #[allow(clippy::useless_conversion)]
            let kind = i64::from(rustix::fs::fstatfs(file).ok()?.f_type);
            if !LOCAL.contains(&kind) {
                return None;
            }
        }
        let fd = std::os::fd::OwnedFd::from(file.try_clone().ok()?);
        Some(if regular {
            Direct::File(fd)
        } else {
            Direct::NoWait(fd)
        })
    }

    #[cfg(not(target_os = "linux"))]
    fn of(_: &std::fs::File) -> Option<Direct> {
        None
    }

    /// One write system call; `Err(None)` is `EAGAIN`.
    fn write(&self, bufs: &[IoSlice<'_>]) -> Result<usize, Option<io::Error>> {
        #[cfg(target_os = "linux")]
        {
            use rustix::io::{Errno, ReadWriteFlags};
            let written = match self {
                // u64::MAX: at (and advancing) the file's own offset, as `write` does.
                Direct::NoWait(fd) => {
                    rustix::io::pwritev2(fd, bufs, u64::MAX, ReadWriteFlags::NOWAIT)
                }
                Direct::File(fd) => rustix::io::writev(fd, bufs),
            };
            written.map_err(|e| (e != Errno::AGAIN).then(|| io::Error::from(e)))
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = bufs;
            match *self {}
        }
    }

    fn is_regular_file(&self) -> bool {
        #[cfg(target_os = "linux")]
        return matches!(self, Direct::File(_));
        #[cfg(not(target_os = "linux"))]
        match *self {}
    }
}

impl Output {
    /// Writes `carry` and `batch` from a request handler, without waiting for the output.
    /// Whatever the output did not take is left in `carry` for the writer thread and `false`
    /// returned.
    fn write_direct(&mut self, direct_on: &AtomicBool) -> bool {
        debug_assert!(self.direct_allowed());
        let Some(direct) = &self.direct else {
            direct_on.store(false, Ordering::Relaxed);
            self.keep_unwritten(0);
            return false;
        };
        let started = Instant::now();
        let total = self.carry.len() + self.batch.len();
        let mut done = 0;
        let stopped = loop {
            if done == total {
                break None;
            }
            let (carry, batch) = if done < self.carry.len() {
                (&self.carry[done..], &self.batch[..])
            } else {
                (&[][..], &self.batch[done - self.carry.len()..])
            };
            match direct.write(&[IoSlice::new(carry), IoSlice::new(batch)]) {
                Ok(0) => break Some(Some(io::ErrorKind::WriteZero.into())),
                Ok(n) => done += n,
                Err(Some(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Some(e),
            }
        };
        let took = started.elapsed();
        if direct.is_regular_file() && took > SLOW_DIRECT {
            tracing::info!(
                took_micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
                "Audit log file slow to write; written from its own thread for {DIRECT_PAUSE:?}"
            );
            self.pause_direct(direct_on);
        }
        match stopped {
            None => {
                self.carry.clear();
                self.batch.clear();
                self.direct_batches += 1;
                return true;
            }
            // Full (EAGAIN): the writer thread waits for room.
            Some(None) => {}
            // An output that cannot write without waiting: the writer thread only, for good.
            #[cfg(target_os = "linux")]
            Some(Some(e))
                if e.raw_os_error() == Some(rustix::io::Errno::OPNOTSUPP.raw_os_error()) =>
            {
                tracing::debug!("Audit log output refuses non-blocking writes");
                self.direct = None;
                direct_on.store(false, Ordering::Relaxed);
            }
            // A real error: the writer thread meets it again and reports it.
            Some(Some(_)) => self.pause_direct(direct_on),
        }
        self.keep_unwritten(done);
        false
    }

    /// Whether a handler may write now (the shared flag can be a moment out of date).
    fn direct_allowed(&self) -> bool {
        self.direct.is_some() && self.paused_until.is_none()
    }

    fn pause_direct(&mut self, direct_on: &AtomicBool) {
        direct_on.store(false, Ordering::Relaxed);
        self.paused_until = Some(Instant::now() + DIRECT_PAUSE);
    }

    /// Lets handlers write directly again once a pause is over.
    fn resume_direct(&mut self, direct_on: &AtomicBool) {
        if let Some(until) = self.paused_until
            && Instant::now() >= until
        {
            self.paused_until = None;
            direct_on.store(self.direct.is_some(), Ordering::Relaxed);
        }
    }

    /// Leaves what follows the first `done` bytes of `carry` and `batch` in `carry`.
    fn keep_unwritten(&mut self, done: usize) {
        if done < self.carry.len() {
            self.carry.drain(..done);
            self.carry.extend_from_slice(&self.batch);
        } else {
            let written = done - self.carry.len();
            self.carry.clear();
            self.carry.extend_from_slice(&self.batch[written..]);
        }
        self.batch.clear();
    }

    /// Writes `carry` and `batch` from the writer thread, waiting as long as the output needs.
    fn write_blocking(&mut self) {
        if self.carry.is_empty() && self.batch.is_empty() {
            return;
        }
        let result = self
            .out
            .write_all(&self.carry)
            .and_then(|()| self.out.write_all(&self.batch))
            .and_then(|()| self.out.flush());
        self.carry.clear();
        self.batch.clear();
        match (result, self.failing) {
            (Err(e), false) => {
                tracing::error!(error = %e, "Cannot write the audit log");
                self.failing = true;
            }
            (Ok(()), true) => {
                tracing::info!("Audit log writable again");
                self.failing = false;
            }
            _ => {}
        }
    }
}

/// The audit log writer: request handlers append lines to a shared buffer. Once 32 KiB are
/// pending, the handler that added the last line writes them, if the output takes them
/// without waiting; otherwise (and on a quieter log) a thread writes them every 20 ms, or as
/// soon as 256 KiB are pending, and sleeps without a timer once a whole period passed without
/// a line.
#[derive(Debug)]
pub struct AuditLog {
    shared: Arc<Shared>,
    thread: JoinHandle<()>,
}

/// A cheap handle to send lines to the [`AuditLog`].
#[derive(Debug, Clone)]
pub struct AuditSender(Arc<Shared>);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl AuditSender {
    /// Writes `record` as one line ([`AuditRecord::write_line`]) and sends it. The line is built
    /// in a buffer each thread keeps, so recording a decision allocates nothing.
    pub fn record(&self, record: &AuditRecord<'_>) {
        thread_local! {
            static LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
        }
        LINE.with(|line| {
            let Ok(mut line) = line.try_borrow_mut() else {
                // Only reachable if sending recorded again on this thread; stay correct.
                let mut line = Vec::new();
                record.write_line(&mut line);
                return self.send(&line);
            };
            line.clear();
            record.write_line(&mut line);
            self.send(&line);
            if line.capacity() > KEEP_LINE_BUFFER {
                *line = Vec::new();
            }
        });
    }

    /// Appends one line. When 32 MiB are already pending (the output is stalled), waits up to
    /// [`MAX_WAIT`] for the writer, then drops the line with an error rather than block the
    /// request any longer.
    pub fn send(&self, line: &[u8]) {
        let shared = &self.0;
        let mut pending = lock(&shared.pending);
        let stalled = |p: &mut Pending| p.lines.len() > MAX_PENDING && !p.closed;
        // Checked before waiting: a timed wait reads the clock even when it need not wait, and
        // this runs for every review with the lock held.
        if stalled(&mut pending) {
            pending.waiting += 1;
            pending = shared
                .drained
                .wait_timeout_while(pending, MAX_WAIT, stalled)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            pending.waiting -= 1;
            if stalled(&mut pending) {
                pending.dropped += 1;
                if pending.dropped.is_power_of_two() {
                    tracing::error!(
                        dropped = pending.dropped,
                        "Audit output stalled; audit lines dropped"
                    );
                }
                return;
            }
        }
        if pending.closed {
            tracing::error!("Audit log is closed; audit line dropped");
            return;
        }
        pending.lines.extend_from_slice(line);
        // (From FLUSH_AT on, the writer thread is behind a slow output: the batch is its.)
        if (DIRECT_AT..FLUSH_AT).contains(&pending.lines.len())
            && shared.direct.load(Ordering::Relaxed)
            && let Some(mut output) = match shared.output.try_lock() {
                Ok(output) => Some(output),
                Err(TryLockError::Poisoned(output)) => Some(output.into_inner()),
                Err(TryLockError::WouldBlock) => None, // being written: the lines wait
            }
            && output.direct_allowed()
        {
            std::mem::swap(&mut output.batch, &mut pending.lines);
            let waiting = pending.waiting > 0;
            drop(pending);
            if waiting {
                shared.drained.notify_all();
            }
            if !output.write_direct(&shared.direct) {
                lock(&shared.pending).handed_off = true;
                shared.full.notify_one();
            }
            return;
        }
        // Wake the writer when the batch is full, or when it went to sleep on a quiet log. A busy
        // log's writer runs on its timer: no wake-up per batch on the handlers' cores.
        if std::mem::take(&mut pending.writer_idle) || pending.lines.len() >= FLUSH_AT {
            shared.full.notify_one();
        }
    }
}

impl AuditLog {
    /// Opens `target` and starts the writer thread.
    pub fn open(target: AuditTarget<'_>) -> io::Result<AuditLog> {
        let file = match target {
            // A descriptor of its own: the log bypasses the standard library's line buffer,
            // which nothing else writes to (the program logs to standard error).
            AuditTarget::Stdout => {
                std::fs::File::from(io::stdout().as_fd().try_clone_to_owned().map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("cannot use stdout for the audit log: {e}"),
                    )
                })?)
            }
            AuditTarget::File(path) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("cannot open --audit-log {}: {e}", path.display()),
                    )
                })?,
        };
        let direct = Direct::of(&file);
        AuditLog::start(Box::new(file), direct)
    }

    /// Starts the writer thread on `out`; handlers write to `direct` themselves, if given.
    fn start(out: Box<dyn Write + Send>, direct: Option<Direct>) -> io::Result<AuditLog> {
        let shared = Arc::new(Shared {
            pending: Mutex::default(),
            full: Condvar::new(),
            drained: Condvar::new(),
            direct: AtomicBool::new(direct.is_some()),
            output: Mutex::new(Output {
                out,
                direct,
                carry: Vec::new(),
                batch: Vec::new(),
                failing: false,
                paused_until: None,
                direct_batches: 0,
            }),
        });
        let writer = shared.clone();
        let thread = std::thread::Builder::new()
            .name("audit-log".to_string())
            .spawn(move || write_lines(&writer))?;
        Ok(AuditLog { shared, thread })
    }

    /// A handle for request handlers.
    pub fn sender(&self) -> AuditSender {
        AuditSender(self.shared.clone())
    }

    /// Writes every pending line and stops the writer.
    pub fn close(self) {
        let AuditLog { shared, thread } = self;
        lock(&shared.pending).closed = true;
        shared.full.notify_one();
        if thread.join().is_err() {
            tracing::error!("Audit log writer panicked");
        }
    }
}

fn write_lines(shared: &Shared) {
    loop {
        {
            let mut pending = lock(&shared.pending);
            loop {
                // Give the batch up to FLUSH_EVERY to fill.
                pending = shared
                    .full
                    .wait_timeout_while(pending, FLUSH_EVERY, |p| {
                        p.lines.len() < FLUSH_AT && !p.closed && !p.handed_off
                    })
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
                if !pending.lines.is_empty() || pending.closed || pending.handed_off {
                    break;
                }
                // A whole period without a line: sleep until the next one (no timer on a
                // quiet webhook), then give that line's batch its period.
                pending.writer_idle = true;
                pending = shared
                    .full
                    .wait_while(pending, |p| p.writer_idle && !p.closed && !p.handed_off)
                    .unwrap_or_else(PoisonError::into_inner);
                pending.writer_idle = false;
            }
        }
        // A handler may be writing: wait for it, then take what is pending.
        let mut output = lock(&shared.output);
        let closed = {
            let mut pending = lock(&shared.pending);
            let output = &mut *output;
            std::mem::swap(&mut output.batch, &mut pending.lines);
            pending.handed_off = false;
            pending.closed
        };
        shared.drained.notify_all();
        output.write_blocking();
        output.resume_direct(&shared.direct);
        drop(output);
        if closed && lock(&shared.pending).lines.is_empty() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{admission, policy::Policy};

    fn lines_match(body: &[u8], policy: &Policy) {
        let reviewed = admission::review(body, policy).expect("a valid review");
        let ts = "2026-11-25T05:00:00.123456789Z".parse().unwrap();
        let record = AuditRecord::new(
            &reviewed.request,
            &reviewed.decision,
            ts,
            Duration::from_micros(1234),
        );
        let mut fast = Vec::new();
        record.write_line(&mut fast);
        let mut expected = serde_json::to_vec(&record).unwrap();
        expected.push(b'\n');
        assert_eq!(
            String::from_utf8_lossy(&fast),
            String::from_utf8_lossy(&expected)
        );
    }

    #[test]
    fn a_stalled_output_costs_a_bounded_wait_then_drops_lines() {
        /// Blocks in its first write until the test opens the gate; keeps what it is given.
        struct Gate(std::sync::mpsc::Receiver<()>, Arc<Mutex<Vec<u8>>>, bool);
        impl Write for Gate {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                if !self.2 {
                    let _ = self.0.recv_timeout(Duration::from_secs(10));
                    self.2 = true;
                }
                self.1.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let (open_gate, gate) = std::sync::mpsc::channel();
        let written = Arc::new(Mutex::new(Vec::new()));
        let log = AuditLog::start(Box::new(Gate(gate, written.clone(), false)), None).unwrap();
        let sender = log.sender();
        let mut line = vec![b'x'; 1 << 20];
        *line.last_mut().unwrap() = b'\n';
        // A full batch wakes the writer, which takes it and then hangs in the write.
        sender.send(&line);
        for _ in 0..500 {
            if log.shared.pending.lock().unwrap().lines.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(log.shared.pending.lock().unwrap().lines.is_empty());
        // Up to MAX_PENDING queue without waiting; the line beyond it waits MAX_WAIT, then is
        // dropped and counted.
        let queued = MAX_PENDING / line.len() + 1;
        for _ in 0..queued {
            sender.send(&line);
        }
        let started = std::time::Instant::now();
        sender.send(&line);
        let waited = started.elapsed();
        assert!(waited >= MAX_WAIT, "waited {waited:?}");
        assert!(waited < MAX_WAIT * 20, "waited {waited:?}");
        assert_eq!(log.shared.pending.lock().unwrap().dropped, 1);
        // Once the output moves again, everything that was accepted is written, in order.
        open_gate.send(()).unwrap();
        log.close();
        let written = written.lock().unwrap();
        assert_eq!(written.len(), (1 + queued) * line.len());
        assert!(written.chunks(line.len()).all(|l| l == line.as_slice()));
    }

    #[test]
    fn timestamps_read_as_jiff_writes_them() {
        let check = |second: i64, nanos: i32| {
            let ts = jiff::Timestamp::new(second, nanos).unwrap();
            assert_eq!(rfc3339(ts), ts.to_string(), "{second} s {nanos} ns");
        };
        // Whole seconds, trailing zeros, the same second again (cached), then other seconds.
        for nanos in [
            0,
            1,
            10,
            120_000_000,
            123_456_789,
            999_999_999,
            500_000_000,
            0,
        ] {
            check(1_764_600_000, nanos);
        }
        for second in [0, 59, 86_399, 951_782_400, 4_102_444_799, 253_402_207_000] {
            check(second, 7);
            check(second, 0);
        }
        // Before 1970 (negative fraction) and jiff's limits.
        check(-1, -1);
        check(-86_400, 0);
        check(jiff::Timestamp::MIN.as_second(), 0);
        check(
            jiff::Timestamp::MAX.as_second(),
            jiff::Timestamp::MAX.subsec_nanosecond(),
        );
        proptest::proptest!(|(second in 0i64..4_102_444_800, nanos in 0i32..1_000_000_000)| {
            check(second, nanos);
            check(second, nanos / 1000 * 1000);
        });
    }

    #[test]
    fn writer_flushes_a_lone_line_then_everything_on_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(AuditTarget::File(&path)).unwrap();
        let sender = log.sender();
        // A single line on an idle log is written without waiting for more (bounded poll);
        // the second one reaches a writer that has surely gone back to sleep.
        let wait_for = |expected: &str| {
            let mut seen = String::new();
            for _ in 0..200 {
                seen = std::fs::read_to_string(&path).unwrap();
                if seen == expected {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            assert_eq!(seen, expected);
        };
        sender.send(b"first\n");
        wait_for("first\n");
        std::thread::sleep(FLUSH_EVERY * 3);
        sender.send(b"second\n");
        wait_for("first\nsecond\n");
        // Several full batches and a partial one, from two threads: all of it, each line whole.
        let line = format!("{}\n", "x".repeat(999));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let sender = sender.clone();
                let line = line.clone();
                std::thread::spawn(move || {
                    for _ in 0..150 {
                        sender.send(line.as_bytes());
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        log.close();
        let written = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = written.lines().collect();
        assert_eq!(lines.len(), 302);
        assert_eq!(lines[..2], ["first", "second"]);
        assert!(lines[2..].iter().all(|l| *l == &line[..999]));
    }

    /// Sends `per_thread` numbered lines from each of `threads` threads and returns the longest
    /// a single send took.
    fn send_numbered(sender: &AuditSender, threads: usize, per_thread: usize) -> Duration {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let sender = sender.clone();
                std::thread::spawn(move || {
                    let mut longest = Duration::ZERO;
                    for i in 0..per_thread {
                        let line = format!("{t} {i:06} {}\n", "y".repeat(300));
                        let started = Instant::now();
                        sender.send(line.as_bytes());
                        longest = longest.max(started.elapsed());
                    }
                    longest
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .max()
            .unwrap()
    }

    /// Every numbered line arrived whole, once, and each thread's in the order it sent them.
    fn assert_numbered(written: &str, threads: usize, per_thread: usize) {
        let mut next = vec![0; threads];
        for line in written.lines() {
            let mut words = line.split(' ');
            let t: usize = words.next().unwrap().parse().unwrap();
            let i: usize = words.next().unwrap().parse().unwrap();
            assert_eq!(i, next[t], "thread {t}'s lines out of order or missing");
            assert_eq!(words.next(), Some("y".repeat(300).as_str()));
            next[t] += 1;
        }
        assert_eq!(next, vec![per_thread; threads]);
    }

    #[test]
    fn handlers_write_a_busy_file_themselves_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(AuditTarget::File(&path)).unwrap();
        let sender = log.sender();
        // ~1.3 MB from four threads.
        send_numbered(&sender, 4, 1000);
        let direct_batches = log.shared.output.lock().unwrap().direct_batches;
        log.close();
        assert_numbered(&std::fs::read_to_string(&path).unwrap(), 4, 1000);
        // (Forty-odd on a quiet machine; one slow write pauses them, so only one is certain.)
        if cfg!(target_os = "linux") {
            assert!(direct_batches >= 1, "{direct_batches} direct batches");
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_full_pipe_goes_to_the_writer_thread_and_handlers_never_wait() {
        use std::io::Read;
        let (mut reader, writer) = std::io::pipe().unwrap();
        let file = std::fs::File::from(std::os::fd::OwnedFd::from(writer));
        let direct = Direct::of(&file);
        assert!(matches!(direct, Some(Direct::NoWait(_))));
        let log = AuditLog::start(Box::new(file), direct).unwrap();
        let sender = log.sender();
        // Nobody reads for the first 500 ms: the pipe (64 KiB) fills at once, the writer thread
        // waits in its write, and ~1.3 MB more queue in memory.
        let read = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            let mut all = String::new();
            reader.read_to_string(&mut all).unwrap();
            all
        });
        let longest = send_numbered(&sender, 4, 1000);
        assert!(
            longest < Duration::from_millis(250),
            "a send waited {longest:?}"
        );
        // A kernel that refuses RWF_NOWAIT on pipes (EOPNOTSUPP; older ones do) leaves it all
        // to the thread.
        let output = log.shared.output.lock().unwrap();
        if output.direct.is_some() {
            assert!(output.direct_batches >= 1);
            assert!(
                log.shared.direct.load(Ordering::Relaxed),
                "EAGAIN keeps direct writes on"
            );
        } else {
            assert_eq!(output.direct_batches, 0);
        }
        drop(output);
        // Closing waits for the reader; the pipe closes with the last handle.
        log.close();
        drop(sender);
        assert_numbered(&read.join().unwrap(), 4, 1000);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn an_output_that_cannot_write_without_waiting_loses_nothing() {
        // RWF_NOWAIT on a regular file: EOPNOTSUPP on ext4 and tmpfs (Linux 6.18), another error
        // (a pause) or written where buffered NOWAIT works; every line arrives in order.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let file = std::fs::File::create(&path).unwrap();
        let direct = Direct::NoWait(std::os::fd::OwnedFd::from(file.try_clone().unwrap()));
        let log = AuditLog::start(Box::new(file), Some(direct)).unwrap();
        let sender = log.sender();
        send_numbered(&sender, 2, 1000);
        let refused = !log.shared.direct.load(Ordering::Relaxed);
        let direct_batches = log.shared.output.lock().unwrap().direct_batches;
        log.close();
        assert_numbered(&std::fs::read_to_string(&path).unwrap(), 2, 1000);
        assert!(
            refused != (direct_batches > 0),
            "{refused} {direct_batches}"
        );
    }

    #[test]
    fn direct_writes_resume_when_their_pause_is_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(AuditTarget::File(&path)).unwrap();
        let sender = log.sender();
        let written = |n: usize| {
            for _ in 0..200 {
                if std::fs::read_to_string(&path).unwrap().lines().count() == n {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            panic!("{n} lines not written");
        };
        let pause = |until: Instant| {
            log.shared.output.lock().unwrap().paused_until = Some(until);
            log.shared.direct.store(false, Ordering::Relaxed);
        };
        // Still paused after the writer's next write: handlers keep off.
        pause(Instant::now() + DIRECT_PAUSE);
        sender.send(b"one\n");
        written(1);
        std::thread::sleep(Duration::from_millis(50));
        assert!(!log.shared.direct.load(Ordering::Relaxed));
        // The pause is over: the writer's next write turns direct writes back on.
        pause(Instant::now() - Duration::from_millis(1));
        sender.send(b"two\n");
        written(2);
        // (The writer resumes right after its write; give it the moment.)
        for _ in 0..200 {
            if log.shared.direct.load(Ordering::Relaxed) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(log.shared.direct.load(Ordering::Relaxed));
        log.close();
    }

    #[test]
    fn write_line_is_byte_for_byte_serde_json() {
        let bodies: [&[u8]; 6] = [
            include_bytes!("../tests/fixtures/reviews/a-prometheus.json"),
            include_bytes!("../tests/fixtures/reviews/d-configmap.json"),
            include_bytes!("../tests/fixtures/bench/b-sts-small.json"),
            include_bytes!("../tests/fixtures/bench/c-sts-1mb.json"),
            include_bytes!("../tests/fixtures/statefulsets/edge-generate-name-dry-run.json"),
            include_bytes!("../tests/fixtures/statefulsets/edge-update-escaped.json"),
        ];
        let policies = [
            Policy::default(),
            Policy::from_yaml("mode: audit", "p").unwrap(),
            Policy::from_yaml("strict: true\nonUpdate: mutate", "p").unwrap(),
            Policy::from_yaml("namespaces: { monitoring: { size: 200Gi } }", "p").unwrap(),
        ];
        for body in bodies {
            for policy in &policies {
                lines_match(body, policy);
            }
        }
        // Escapes everywhere, an invalid annotation, no user and no groups.
        let escaped = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u\"1\u0001","kind":{"group":"monitoring.coreos.com","version":"v1","kind":"Prometheus"},"namespace":"mon\\itoring","operation":"CREATE","userInfo":{},"object":{"metadata":{"generateName":"k8s-\u00e9\t","annotations":{"kube-persist.io/size":"\"big\""}},"spec":{}}}}"#;
        lines_match(escaped, &Policy::default());
        lines_match(escaped, &Policy::from_yaml("strict: true", "p").unwrap());
    }
}
