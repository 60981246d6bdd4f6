//! Leader election, so several replicas can run while only one provisions.
//!
//! Two kinds of lock, one algorithm (client-go's): a `coordination.k8s.io/v1` Lease, and the
//! `Endpoints` object that nfs-subdir-external-provisioner's library locks (named after the
//! provisioner with `/` replaced by `-`, the record as JSON in the annotation
//! `control-plane.alpha.kubernetes.io/leader`). Read the lock; take it when it is free, expired
//! (judged by *our* clock, from when we last saw its record change, so clock skew between nodes
//! does not matter) or already ours; write with optimistic concurrency (a 409 means someone
//! else won).
//!
//! A replica leads only while it holds every lock it may write. The locks are taken in a fixed
//! order (Lease, then Endpoints) and a round stops at the first one held by someone else, so two
//! replicas can never each hold one and wait for the other. A lock the API refuses with 403 does
//! not count in that round (this is how a replica under upstream's RBAC, which grants only
//! endpoints, elects on the Endpoints alone); when every lock has been refused for a whole lease
//! duration the election fails with one error naming what to grant. Permission is judged from
//! the API's own answers, not a SelfSubjectAccessReview: they are the authority for every
//! authorizer, follow RBAC changes without a restart and need no further API.
//!
//! Leadership is a deadline, not a flag: a replica is leader until `renew_deadline` after the
//! start of its last round that held every lock, and [`LeaderHandle::is_leader`] turns false
//! the moment that passes, even if the renew loop is stuck. Others only take over
//! `lease_duration` after the last renewal they saw, which is later. Losing a lock therefore
//! stops provisioning at once. A replica that must not lead (its NFS mount is unhealthy)
//! releases its locks and stops campaigning until it may again.
//!
//! This module decides nothing about volumes; the reconcilers ask [`LeaderHandle`] before each
//! step that changes anything.
use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::{
    api::{
        coordination::v1::{Lease, LeaseSpec},
        core::v1::Endpoints,
    },
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
};
use kube::{Api, Client, api::PostParams};
use tokio::{sync::watch, time::Instant};

/// Timing of the election (client-go's defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaderTiming {
    /// How long a Lease stays valid after its last renewal, for the others.
    pub lease_duration: Duration,
    /// How long we stay leader after our last successful renewal (shorter than the above).
    pub renew_deadline: Duration,
    /// Pause between attempts.
    pub retry_period: Duration,
    /// Limit of each API call.
    pub call_timeout: Duration,
}

impl Default for LeaderTiming {
    fn default() -> Self {
        LeaderTiming {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            call_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug)]
struct Inner {
    always: bool,
    valid_until: Mutex<Option<Instant>>,
    changed: watch::Sender<u64>,
}

/// Cheap handle answering "are we leader right now?".
#[derive(Debug, Clone)]
pub struct LeaderHandle {
    inner: Arc<Inner>,
}

impl LeaderHandle {
    fn new(always: bool) -> Self {
        LeaderHandle {
            inner: Arc::new(Inner {
                always,
                valid_until: Mutex::new(None),
                changed: watch::Sender::new(0),
            }),
        }
    }

    /// Always leader (`ENABLE_LEADER_ELECTION=false`).
    pub fn always() -> Self {
        LeaderHandle::new(true)
    }

    /// Whether we hold the Lease now (our renewal deadline has not passed).
    pub fn is_leader(&self) -> bool {
        self.inner.always || self.valid_until().is_some_and(|d| Instant::now() < d)
    }

    fn valid_until(&self) -> Option<Instant> {
        self.inner.valid_until.lock().map_or(None, |v| *v)
    }

    fn set_valid_until(&self, until: Option<Instant>) {
        if let Ok(mut v) = self.inner.valid_until.lock() {
            *v = until;
        }
        self.inner.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Resolves once we are leader.
    pub async fn acquired(&self) {
        let mut rx = self.inner.changed.subscribe();
        loop {
            if self.is_leader() {
                return;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Resolves as soon as we are not leader (never, when always leader).
    pub async fn lost(&self) {
        if self.inner.always {
            return std::future::pending().await;
        }
        let mut rx = self.inner.changed.subscribe();
        loop {
            let Some(deadline) = self.valid_until().filter(|d| Instant::now() < *d) else {
                return;
            };
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {}
                r = rx.changed() => if r.is_err() { tokio::time::sleep_until(deadline).await },
            }
        }
    }
}

/// A failed election round.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The API server refused or failed.
    #[error("{kind} {namespace}/{name}: {source}")]
    Api {
        kind: LockKind,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    /// No answer in time.
    #[error("{kind} {namespace}/{name}: no answer from the API server within {timeout:?}")]
    Timeout {
        kind: LockKind,
        namespace: String,
        name: String,
        timeout: Duration,
    },
    /// Every lock is forbidden: no replica could ever lead.
    #[error("{0}")]
    NoLock(String),
}

/// The kinds of lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockKind {
    /// `coordination.k8s.io/v1` Lease.
    Lease,
    /// Core `Endpoints` with the record in an annotation (what upstream's library locks).
    Endpoints,
}

impl std::fmt::Display for LockKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LockKind::Lease => "Lease",
            LockKind::Endpoints => "Endpoints",
        })
    }
}

impl LockKind {
    /// The resource as RBAC names it.
    pub fn resource(self) -> &'static str {
        match self {
            LockKind::Lease => "coordination.k8s.io leases",
            LockKind::Endpoints => "core endpoints",
        }
    }
}

/// The annotation of an `Endpoints` lock that holds the record (client-go's
/// `LeaderElectionRecordAnnotationKey`).
pub const LEADER_ANNOTATION: &str = "control-plane.alpha.kubernetes.io/leader";

/// client-go's `LeaderElectionRecord`: who holds a lock, for how long, since when.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeaderRecord {
    /// Empty when nobody holds it.
    pub holder_identity: String,
    pub lease_duration_seconds: i32,
    pub acquire_time: Option<jiff::Timestamp>,
    pub renew_time: Option<jiff::Timestamp>,
    pub leader_transitions: i32,
}

/// The record's JSON, field for field as client-go writes it (`metav1.Time`: RFC 3339 in UTC,
/// whole seconds, `null` when unset).
#[derive(serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct RecordJson {
    holder_identity: String,
    lease_duration_seconds: i32,
    acquire_time: Option<String>,
    renew_time: Option<String>,
    leader_transitions: i32,
}

/// A record annotation that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("the leader record is not JSON of the expected shape: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the leader record's {field} is not an RFC 3339 time: {value:?}")]
    Time { field: &'static str, value: String },
}

/// Parses the annotation of an `Endpoints` lock.
pub fn parse_record(text: &str) -> Result<LeaderRecord, RecordError> {
    let json: RecordJson = serde_json::from_str(text)?;
    let time = |field: &'static str, value: Option<String>| match value {
        None => Ok(None),
        Some(v) if v.is_empty() => Ok(None),
        Some(v) => v
            .parse::<jiff::Timestamp>()
            .map(Some)
            .map_err(|_| RecordError::Time { field, value: v }),
    };
    Ok(LeaderRecord {
        holder_identity: json.holder_identity,
        lease_duration_seconds: json.lease_duration_seconds,
        acquire_time: time("acquireTime", json.acquire_time)?,
        renew_time: time("renewTime", json.renew_time)?,
        leader_transitions: json.leader_transitions,
    })
}

/// Formats a record for the annotation, as client-go does.
pub fn format_record(record: &LeaderRecord) -> String {
    let time = |t: Option<jiff::Timestamp>| t.map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
    let json = RecordJson {
        holder_identity: record.holder_identity.clone(),
        lease_duration_seconds: record.lease_duration_seconds,
        acquire_time: time(record.acquire_time),
        renew_time: time(record.renew_time),
        leader_transitions: record.leader_transitions,
    };
    serde_json::to_string(&json).unwrap_or_default()
}

/// What a lock's record means for us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nobody holds it.
    Free,
    /// We hold it.
    Ours,
    /// Someone else holds it and renewed it (as far as we saw) less than its duration ago.
    Held,
    /// Someone else held it but has not renewed it for its whole duration.
    Expired,
}

/// Judges a record we first saw (with this content) at `seen_at`, at `now`. The duration is the
/// record's own, or `default` when it names none.
pub fn judge(
    record: &LeaderRecord,
    identity: &str,
    seen_at: Instant,
    now: Instant,
    default: Duration,
) -> Verdict {
    if record.holder_identity.is_empty() {
        return Verdict::Free;
    }
    if record.holder_identity == identity {
        return Verdict::Ours;
    }
    let duration = u64::try_from(record.lease_duration_seconds)
        .ok()
        .filter(|s| *s > 0)
        .map_or(default, Duration::from_secs);
    if now < seen_at + duration {
        Verdict::Held
    } else {
        Verdict::Expired
    }
}

/// The record we write to take or renew a lock whose record is `current` (`None`: the lock does
/// not exist yet): acquire time and transition count kept when renewing, moved on when taking.
pub fn next_record(
    current: Option<&LeaderRecord>,
    identity: &str,
    now: jiff::Timestamp,
    lease_seconds: i32,
) -> LeaderRecord {
    match current {
        Some(c) if c.holder_identity == identity => LeaderRecord {
            holder_identity: identity.to_owned(),
            lease_duration_seconds: lease_seconds,
            acquire_time: c.acquire_time.or(Some(now)),
            renew_time: Some(now),
            leader_transitions: c.leader_transitions,
        },
        Some(c) => LeaderRecord {
            holder_identity: identity.to_owned(),
            lease_duration_seconds: lease_seconds,
            acquire_time: Some(now),
            renew_time: Some(now),
            leader_transitions: c.leader_transitions.saturating_add(1),
        },
        None => LeaderRecord {
            holder_identity: identity.to_owned(),
            lease_duration_seconds: lease_seconds,
            acquire_time: Some(now),
            renew_time: Some(now),
            leader_transitions: 0,
        },
    }
}

/// The record that gives a lock up (client-go's release): no holder, valid for one second.
pub fn released_record(written: &LeaderRecord, now: jiff::Timestamp) -> LeaderRecord {
    LeaderRecord {
        holder_identity: String::new(),
        lease_duration_seconds: 1,
        acquire_time: Some(now),
        renew_time: Some(now),
        leader_transitions: written.leader_transitions,
    }
}

/// The one error when every lock is forbidden: what was refused and what to grant.
pub fn no_lock_message(namespace: &str, refused: &[(LockKind, &str)]) -> String {
    let what: Vec<String> = refused
        .iter()
        .map(|(kind, verb)| format!("{verb} {}", kind.resource()))
        .collect();
    format!(
        "cannot elect a leader: forbidden to {} in namespace {namespace}; grant get/create/update \
         on one of them (upstream's RBAC grants endpoints), or set ENABLE_LEADER_ELECTION=false \
         for a single replica",
        what.join(" and ")
    )
}

/// A lock object as stored.
#[derive(Debug, Clone)]
enum Stored {
    Lease(Lease),
    Endpoints(Endpoints),
}

impl Stored {
    fn record(&self) -> LeaderRecord {
        match self {
            Stored::Lease(l) => {
                let spec = l.spec.clone().unwrap_or_default();
                LeaderRecord {
                    holder_identity: spec.holder_identity.unwrap_or_default(),
                    lease_duration_seconds: spec.lease_duration_seconds.unwrap_or(0),
                    acquire_time: spec.acquire_time.map(|t| t.0),
                    renew_time: spec.renew_time.map(|t| t.0),
                    leader_transitions: spec.lease_transitions.unwrap_or(0),
                }
            }
            Stored::Endpoints(e) => e
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(LEADER_ANNOTATION))
                .and_then(|text| parse_record(text).ok())
                .unwrap_or_default(),
        }
    }

    fn with_record(&self, record: &LeaderRecord) -> Stored {
        match self {
            Stored::Lease(l) => {
                let mut l = l.clone();
                l.spec = Some(lease_spec(record, l.spec.clone().unwrap_or_default()));
                Stored::Lease(l)
            }
            Stored::Endpoints(e) => {
                let mut e = e.clone();
                e.metadata
                    .annotations
                    .get_or_insert_with(Default::default)
                    .insert(LEADER_ANNOTATION.to_owned(), format_record(record));
                Stored::Endpoints(e)
            }
        }
    }
}

fn lease_spec(record: &LeaderRecord, base: LeaseSpec) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(record.holder_identity.clone()).filter(|h| !h.is_empty()),
        lease_duration_seconds: Some(record.lease_duration_seconds),
        acquire_time: record.acquire_time.map(MicroTime),
        renew_time: record.renew_time.map(MicroTime),
        lease_transitions: Some(record.leader_transitions),
        ..base
    }
}

/// The outcome of one lock's round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LockRound {
    /// We hold it now.
    Held,
    /// Someone else does, or won the write.
    Taken,
    /// The API answered 403 to this verb.
    Forbidden(&'static str),
}

/// One lock and what we last saw of it.
struct Lock {
    kind: LockKind,
    leases: Api<Lease>,
    endpoints: Api<Endpoints>,
    namespace: String,
    name: String,
    /// The record last seen and when (our clock) it last changed.
    observed: Option<(LeaderRecord, Instant)>,
    /// Our last successful write, for release.
    last_written: Option<Stored>,
    /// Refused in the last round (for logging changes only).
    forbidden: bool,
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

impl Lock {
    fn error(&self, source: kube::Error) -> LeaderError {
        LeaderError::Api {
            kind: self.kind,
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            source,
        }
    }

    async fn call<T>(
        &self,
        timeout: Duration,
        fut: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<Result<T, kube::Error>, LeaderError> {
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| LeaderError::Timeout {
                kind: self.kind,
                namespace: self.namespace.clone(),
                name: self.name.clone(),
                timeout,
            })
    }

    async fn get(
        &self,
        timeout: Duration,
    ) -> Result<Result<Option<Stored>, kube::Error>, LeaderError> {
        match self.kind {
            LockKind::Lease => Ok(self
                .call(timeout, self.leases.get_opt(&self.name))
                .await?
                .map(|l| l.map(Stored::Lease))),
            LockKind::Endpoints => Ok(self
                .call(timeout, self.endpoints.get_opt(&self.name))
                .await?
                .map(|e| e.map(Stored::Endpoints))),
        }
    }

    async fn create(
        &self,
        timeout: Duration,
        record: &LeaderRecord,
    ) -> Result<Result<Stored, kube::Error>, LeaderError> {
        let metadata = ObjectMeta {
            name: Some(self.name.clone()),
            namespace: Some(self.namespace.clone()),
            ..ObjectMeta::default()
        };
        let pp = PostParams::default();
        match self.kind {
            LockKind::Lease => {
                let lease = Lease {
                    metadata,
                    spec: Some(lease_spec(record, LeaseSpec::default())),
                };
                Ok(self
                    .call(timeout, self.leases.create(&pp, &lease))
                    .await?
                    .map(Stored::Lease))
            }
            LockKind::Endpoints => {
                let endpoints = Endpoints {
                    metadata: ObjectMeta {
                        annotations: Some(
                            [(LEADER_ANNOTATION.to_owned(), format_record(record))].into(),
                        ),
                        ..metadata
                    },
                    ..Endpoints::default()
                };
                Ok(self
                    .call(timeout, self.endpoints.create(&pp, &endpoints))
                    .await?
                    .map(Stored::Endpoints))
            }
        }
    }

    async fn replace(
        &self,
        timeout: Duration,
        object: &Stored,
    ) -> Result<Result<Stored, kube::Error>, LeaderError> {
        let pp = PostParams::default();
        match object {
            Stored::Lease(l) => Ok(self
                .call(timeout, self.leases.replace(&self.name, &pp, l))
                .await?
                .map(Stored::Lease)),
            Stored::Endpoints(e) => Ok(self
                .call(timeout, self.endpoints.replace(&self.name, &pp, e))
                .await?
                .map(Stored::Endpoints)),
        }
    }

    /// One round on this lock: read it, then take or renew it when free, expired or ours.
    async fn round(
        &mut self,
        identity: &str,
        timing: &LeaderTiming,
        started: Instant,
        now: jiff::Timestamp,
    ) -> Result<LockRound, LeaderError> {
        let lease_seconds = i32::try_from(timing.lease_duration.as_secs())
            .unwrap_or(i32::MAX)
            .max(1);
        let current = match self.get(timing.call_timeout).await? {
            Ok(c) => c,
            Err(e) if is_status(&e, 403) => return Ok(LockRound::Forbidden("get")),
            Err(e) => return Err(self.error(e)),
        };
        let Some(current) = current else {
            let record = next_record(None, identity, now, lease_seconds);
            return match self.create(timing.call_timeout, &record).await? {
                Ok(written) => Ok(self.won(written, started)),
                Err(e) if is_status(&e, 409) => Ok(self.taken()),
                Err(e) if is_status(&e, 403) => Ok(LockRound::Forbidden("create")),
                Err(e) => Err(self.error(e)),
            };
        };
        let record = current.record();
        if self
            .observed
            .as_ref()
            .is_none_or(|(seen, _)| *seen != record)
        {
            self.observed = Some((record.clone(), started));
        }
        let seen_at = self.observed.as_ref().map_or(started, |(_, at)| *at);
        if judge(&record, identity, seen_at, started, timing.lease_duration) == Verdict::Held {
            return Ok(self.taken());
        }
        let next = current.with_record(&next_record(Some(&record), identity, now, lease_seconds));
        match self.replace(timing.call_timeout, &next).await? {
            Ok(written) => Ok(self.won(written, started)),
            Err(e) if is_status(&e, 409) => Ok(self.taken()),
            Err(e) if is_status(&e, 403) => Ok(LockRound::Forbidden("update")),
            Err(e) => Err(self.error(e)),
        }
    }

    /// Reads the lock and notes when its record last changed, without taking it. Failures
    /// are ignored: the next round reads it again.
    async fn observe(&mut self, timeout: Duration, started: Instant) {
        if let Ok(Ok(Some(current))) = self.get(timeout).await {
            let record = current.record();
            if self
                .observed
                .as_ref()
                .is_none_or(|(seen, _)| *seen != record)
            {
                self.observed = Some((record, started));
            }
        }
        self.last_written = None;
    }

    fn won(&mut self, written: Stored, started: Instant) -> LockRound {
        self.observed = Some((written.record(), started));
        self.last_written = Some(written);
        LockRound::Held
    }

    fn taken(&mut self) -> LockRound {
        self.last_written = None;
        LockRound::Taken
    }

    /// Gives the lock up if we hold it.
    async fn release(&mut self, timeout: Duration) -> Result<(), LeaderError> {
        let Some(written) = self.last_written.take() else {
            return Ok(());
        };
        let released =
            written.with_record(&released_record(&written.record(), jiff::Timestamp::now()));
        match self.replace(timeout, &released).await? {
            Ok(stored) => {
                self.observed = Some((stored.record(), Instant::now()));
                Ok(())
            }
            Err(e) => Err(self.error(e)),
        }
    }
}

/// Where and under which names to elect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockNames {
    /// Namespace of both locks.
    pub namespace: String,
    /// The Lease's name ([`lease_name`]).
    pub lease: String,
    /// The Endpoints lock's name ([`endpoints_lock_name`]); `None` when the provisioner name
    /// gives no valid object name (upstream could not have locked it either).
    pub endpoints: Option<String>,
}

impl LockNames {
    /// The names upstream and we use for `provisioner_name` in `namespace`.
    pub fn for_provisioner(provisioner_name: &str, namespace: &str) -> Self {
        LockNames {
            namespace: namespace.to_owned(),
            lease: lease_name(provisioner_name),
            endpoints: endpoints_lock_name(provisioner_name),
        }
    }
}

/// One candidate in the election.
pub struct LeaseElector {
    locks: Vec<Lock>,
    namespace: String,
    identity: String,
    timing: LeaderTiming,
    handle: LeaderHandle,
    /// Since when every lock has been refused, if it has.
    all_forbidden_since: Option<Instant>,
    beat: Option<Arc<Mutex<Instant>>>,
}

impl std::fmt::Debug for LeaseElector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseElector")
            .field("namespace", &self.namespace)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl LeaseElector {
    /// A candidate for Lease `namespace/name` alone under `identity`, and the handle that
    /// reports its leadership.
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        timing: LeaderTiming,
    ) -> (Self, LeaderHandle) {
        let names = LockNames {
            namespace: namespace.to_owned(),
            lease: name.to_owned(),
            endpoints: None,
        };
        LeaseElector::with_locks(client, &names, identity, timing)
    }

    /// A candidate for every lock in `names` under `identity`, and the handle that reports its
    /// leadership.
    pub fn with_locks(
        client: Client,
        names: &LockNames,
        identity: &str,
        timing: LeaderTiming,
    ) -> (Self, LeaderHandle) {
        let handle = LeaderHandle::new(false);
        let lock = |kind, name: &str| Lock {
            kind,
            leases: Api::namespaced(client.clone(), &names.namespace),
            endpoints: Api::namespaced(client.clone(), &names.namespace),
            namespace: names.namespace.clone(),
            name: name.to_owned(),
            observed: None,
            last_written: None,
            forbidden: false,
        };
        let mut locks = vec![lock(LockKind::Lease, &names.lease)];
        if let Some(name) = &names.endpoints {
            locks.push(lock(LockKind::Endpoints, name));
        }
        let elector = LeaseElector {
            locks,
            namespace: names.namespace.clone(),
            identity: identity.to_owned(),
            timing,
            handle: handle.clone(),
            all_forbidden_since: None,
            beat: None,
        };
        (elector, handle)
    }

    /// Our identity in the records.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Records the time of every loop turn in `beat` (for liveness).
    pub fn with_heartbeat(mut self, beat: Arc<Mutex<Instant>>) -> Self {
        self.beat = Some(beat);
        self
    }

    /// One round: take or renew every lock we may write, in order. `Ok(true)` when we are
    /// leader afterwards. A lock held by someone else, or a lost write race, ends leadership
    /// immediately; an error keeps it until the renewal deadline passes.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, LeaderError> {
        let started = Instant::now();
        let now = jiff::Timestamp::now();
        let mut refused: Vec<(LockKind, &'static str)> = Vec::new();
        let mut held_any = false;
        for index in 0..self.locks.len() {
            let Some(lock) = self.locks.get_mut(index) else {
                break;
            };
            let outcome = lock.round(&self.identity, &self.timing, started, now).await;
            // An error says nothing about permission: only answers change what we logged.
            let forbidden_now = match &outcome {
                Ok(round) => matches!(round, LockRound::Forbidden(_)),
                Err(_) => lock.forbidden,
            };
            if forbidden_now != lock.forbidden {
                if forbidden_now {
                    tracing::warn!(lock = %lock.kind, name = %lock.name, namespace = %lock.namespace,
                        "No permission for this lock: electing without it");
                } else {
                    tracing::info!(lock = %lock.kind, name = %lock.name, namespace = %lock.namespace,
                        "Permission for this lock granted: electing with it");
                }
                lock.forbidden = forbidden_now;
            }
            match outcome {
                Ok(LockRound::Held) => held_any = true,
                Ok(LockRound::Forbidden(verb)) => {
                    // A lock we held and may no longer write no longer counts.
                    lock.last_written = None;
                    refused.push((lock.kind, verb));
                }
                Ok(LockRound::Taken) => {
                    // The later locks are only read, so that their records are judged from
                    // when they last changed, not from when we first get to them: a holder
                    // that dies holding them all is replaced after one lease duration.
                    for later in self.locks.iter_mut().skip(index + 1) {
                        later.observe(self.timing.call_timeout, started).await;
                    }
                    return Ok(self.lost_round());
                }
                Err(e) => {
                    self.all_forbidden_since = None;
                    return Err(e);
                }
            }
        }
        if held_any {
            self.all_forbidden_since = None;
            self.handle
                .set_valid_until(Some(started + self.timing.renew_deadline));
            return Ok(true);
        }
        let since = *self.all_forbidden_since.get_or_insert(started);
        self.lost_round();
        if started.duration_since(since) >= self.timing.lease_duration {
            return Err(LeaderError::NoLock(no_lock_message(
                &self.namespace,
                &refused,
            )));
        }
        Ok(false)
    }

    fn lost_round(&mut self) -> bool {
        if self.handle.valid_until().is_some() {
            self.handle.set_valid_until(None);
        }
        false
    }

    /// Gives every lock up (on shutdown, or when we must not lead), so another replica takes
    /// over without waiting for them to expire. Leadership ends before the writes.
    pub async fn release(&mut self) -> Result<(), LeaderError> {
        self.handle.set_valid_until(None);
        let mut result = Ok(());
        for lock in self.locks.iter_mut().rev() {
            if let Err(e) = lock.release(self.timing.call_timeout).await {
                result = Err(e);
            }
        }
        result
    }

    fn holds_any(&self) -> bool {
        self.locks.iter().any(|l| l.last_written.is_some())
    }

    /// Campaigns until `stop` resolves, then releases the locks held. While `eligible` (the NFS
    /// mount is healthy) answers false it does not campaign and gives up what it holds. Ends early only when no lock can
    /// ever be taken ([`LeaderError::NoLock`]).
    pub async fn run(
        mut self,
        stop: impl Future<Output = ()>,
        eligible: impl Fn() -> bool,
        on_change: impl Fn(bool),
    ) -> Result<(), LeaderError> {
        let mut stop = std::pin::pin!(stop);
        let mut was_leader = false;
        let mut was_eligible = None;
        let mut result = Ok(());
        loop {
            if let Some(beat) = &self.beat
                && let Ok(mut b) = beat.lock()
            {
                *b = Instant::now();
            }
            let may_lead = eligible();
            match (was_eligible, may_lead) {
                (None, false) => tracing::info!("Waiting for the NFS mount before campaigning"),
                (Some(false), true) => tracing::info!("The NFS mount answers: campaigning again"),
                (Some(true), false) => tracing::warn!(
                    "The NFS mount is unhealthy: giving leadership up until it answers again"
                ),
                _ => {}
            }
            was_eligible = Some(may_lead);
            if may_lead {
                match self.try_acquire_or_renew().await {
                    Ok(_) => {}
                    Err(e @ LeaderError::NoLock(_)) => {
                        result = Err(e);
                        break;
                    }
                    Err(e) => tracing::warn!(error = %e, "Leader election round failed"),
                }
            } else if (self.holds_any() || self.handle.valid_until().is_some())
                && let Err(e) = self.release().await
            {
                tracing::warn!(error = %e, "Could not release a leader lock");
            }
            let leader = self.handle.is_leader();
            if leader != was_leader {
                let locks: Vec<String> = self
                    .locks
                    .iter()
                    .filter(|l| !l.forbidden)
                    .map(|l| format!("{} {}", l.kind, l.name))
                    .collect();
                if leader {
                    tracing::info!(locks = %locks.join(", "), namespace = %self.namespace, identity = %self.identity, "Became leader");
                } else {
                    tracing::warn!(locks = %locks.join(", "), namespace = %self.namespace, identity = %self.identity, "Lost leadership");
                }
                on_change(leader);
                was_leader = leader;
            }
            tokio::select! {
                _ = &mut stop => break,
                _ = tokio::time::sleep(self.timing.retry_period) => {}
            }
        }
        if let Err(e) = self.release().await {
            tracing::warn!(error = %e, "Could not release a leader lock");
        }
        on_change(false);
        result
    }
}

/// The `Endpoints` lock's name as upstream's library names it (`/` replaced by `-`, nothing
/// else changed), when that is a valid object name.
pub fn endpoints_lock_name(provisioner_name: &str) -> Option<String> {
    let name = provisioner_name.replace('/', "-");
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && label.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        });
    valid.then_some(name)
}

/// Lease name for a provisioner name: `/` and other characters a Kubernetes name cannot hold
/// become `-` (so `fuseim.pri/ifs` gives `fuseim.pri-ifs`, the name the Go provisioner's
/// library used), lowercased, trimmed to 253 characters, never empty.
pub fn lease_name(provisioner_name: &str) -> String {
    let mapped: String = provisioner_name
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '.' | '-') => c,
            _ => '-',
        })
        .collect();
    let trimmed = mapped.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    let mut name: String = trimmed.chars().take(253).collect();
    while name.ends_with(|c: char| !c.is_ascii_alphanumeric()) {
        name.pop();
    }
    if name.is_empty() {
        "kube-persist-provisioner".to_owned()
    } else {
        name
    }
}

/// Where the Lease lives: the configured namespace, else the pod's (`POD_NAMESPACE`, then the
/// service account's namespace file), else `kube-persist`.
pub fn lease_namespace(
    configured: Option<&str>,
    pod_namespace: Option<&str>,
    service_account_namespace: Option<&str>,
) -> String {
    [configured, pod_namespace, service_account_namespace]
        .into_iter()
        .flatten()
        .map(str::trim)
        .find(|s| !s.is_empty())
        .unwrap_or("kube-persist")
        .to_owned()
}

/// Reads [`lease_namespace`]'s inputs from the environment and the service account mount.
pub fn lease_namespace_from_env(configured: Option<&str>) -> String {
    let pod = std::env::var("POD_NAMESPACE").ok();
    let sa =
        std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace").ok();
    lease_namespace(configured, pod.as_deref(), sa.as_deref())
}

/// This replica's name: `POD_NAME`, else the host name, else `kube-persist`.
pub fn instance_name() -> String {
    std::env::var("POD_NAME")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "kube-persist".to_owned())
}

/// A holder identity unique to this process: the instance name and a random suffix (as
/// client-go does), so a restarted container never mistakes its predecessor's Lease for its own.
pub fn unique_identity(instance: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    format!("{instance}_{:016x}", h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_names_are_valid_and_compatible() {
        assert_eq!(lease_name("fuseim.pri/ifs"), "fuseim.pri-ifs");
        assert_eq!(
            lease_name("k8s-sigs.io/nfs-subdir-external-provisioner"),
            "k8s-sigs.io-nfs-subdir-external-provisioner"
        );
        assert_eq!(lease_name("My_Prov"), "my-prov");
        assert_eq!(lease_name("//"), "kube-persist-provisioner");
        assert_eq!(lease_name(&"a".repeat(300)).len(), 253);
    }

    #[test]
    fn lease_namespace_precedence() {
        assert_eq!(lease_namespace(Some("x"), Some("y"), Some("z")), "x");
        assert_eq!(lease_namespace(None, Some("y"), Some("z")), "y");
        assert_eq!(lease_namespace(None, Some(""), Some("z\n")), "z");
        assert_eq!(lease_namespace(None, None, None), "kube-persist");
    }

    #[test]
    fn identities_differ() {
        assert_ne!(unique_identity("pod"), unique_identity("pod"));
        assert!(unique_identity("pod").starts_with("pod_"));
    }

    fn ts(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    /// The annotation as client-go v0.23 writes it (`json.Marshal` of `LeaderElectionRecord`).
    const CLIENT_GO_RECORD: &str = r#"{"holderIdentity":"nfs-client-provisioner-7d9f_3f1c8e2a-5b6d-4c1e-9a7f-0e2d4c6b8a10","leaseDurationSeconds":15,"acquireTime":"2026-03-01T10:00:00Z","renewTime":"2026-03-01T10:05:02Z","leaderTransitions":2}"#;

    #[test]
    fn records_read_and_write_as_client_go_does() {
        let r = parse_record(CLIENT_GO_RECORD).unwrap();
        assert_eq!(
            r,
            LeaderRecord {
                holder_identity: "nfs-client-provisioner-7d9f_3f1c8e2a-5b6d-4c1e-9a7f-0e2d4c6b8a10"
                    .into(),
                lease_duration_seconds: 15,
                acquire_time: Some(ts("2026-03-01T10:00:00Z")),
                renew_time: Some(ts("2026-03-01T10:05:02Z")),
                leader_transitions: 2,
            }
        );
        // Byte for byte what client-go writes, so its readers see no change in content.
        assert_eq!(format_record(&r), CLIENT_GO_RECORD);
        // Sub-second times are cut to seconds, as metav1.Time marshals them.
        let fine = LeaderRecord {
            renew_time: Some(ts("2026-03-01T10:05:02.987654Z")),
            ..r.clone()
        };
        assert!(format_record(&fine).contains(r#""renewTime":"2026-03-01T10:05:02Z""#));
        // A released record: empty holder, unset times as null, both read back.
        let empty = LeaderRecord::default();
        let text = format_record(&empty);
        assert_eq!(
            text,
            r#"{"holderIdentity":"","leaseDurationSeconds":0,"acquireTime":null,"renewTime":null,"leaderTransitions":0}"#
        );
        assert_eq!(parse_record(&text).unwrap(), empty);
        assert_eq!(parse_record("{}").unwrap(), empty);
        assert!(parse_record("not json").is_err());
        assert!(parse_record(r#"{"renewTime":"yesterday"}"#).is_err());
    }

    #[test]
    fn expiry_is_judged_on_our_clock_from_when_the_record_last_changed() {
        let seen = Instant::now();
        let d = Duration::from_secs(15);
        let held = parse_record(CLIENT_GO_RECORD).unwrap();
        let me = "kube-persist-0_1";
        assert_eq!(judge(&held, me, seen, seen, d), Verdict::Held);
        assert_eq!(
            judge(&held, me, seen, seen + Duration::from_secs(14), d),
            Verdict::Held
        );
        assert_eq!(
            judge(&held, me, seen, seen + Duration::from_secs(15), d),
            Verdict::Expired
        );
        // The record's own duration counts; none falls back to ours.
        let short = LeaderRecord {
            lease_duration_seconds: 1,
            ..held.clone()
        };
        assert_eq!(
            judge(&short, me, seen, seen + Duration::from_secs(1), d),
            Verdict::Expired
        );
        let unset = LeaderRecord {
            lease_duration_seconds: 0,
            ..held.clone()
        };
        assert_eq!(
            judge(&unset, me, seen, seen + Duration::from_secs(14), d),
            Verdict::Held
        );
        // The times in the record play no part (another node's clock may be off).
        let ancient = LeaderRecord {
            renew_time: Some(ts("2001-01-01T00:00:00Z")),
            ..held.clone()
        };
        assert_eq!(judge(&ancient, me, seen, seen, d), Verdict::Held);
        let ours = LeaderRecord {
            holder_identity: me.into(),
            ..held.clone()
        };
        assert_eq!(
            judge(&ours, me, seen, seen + Duration::from_secs(100), d),
            Verdict::Ours
        );
        assert_eq!(
            judge(&LeaderRecord::default(), me, seen, seen, d),
            Verdict::Free
        );
    }

    #[test]
    fn taking_counts_a_transition_and_renewing_keeps_the_acquire_time() {
        let now = ts("2026-03-01T11:00:00Z");
        let theirs = parse_record(CLIENT_GO_RECORD).unwrap();
        let taken = next_record(Some(&theirs), "me_1", now, 15);
        assert_eq!(taken.holder_identity, "me_1");
        assert_eq!(taken.leader_transitions, 3);
        assert_eq!(taken.acquire_time, Some(now));
        assert_eq!(taken.renew_time, Some(now));
        assert_eq!(taken.lease_duration_seconds, 15);
        let later = ts("2026-03-01T11:00:02Z");
        let renewed = next_record(Some(&taken), "me_1", later, 15);
        assert_eq!(renewed.leader_transitions, 3);
        assert_eq!(renewed.acquire_time, Some(now));
        assert_eq!(renewed.renew_time, Some(later));
        let created = next_record(None, "me_1", now, 15);
        assert_eq!(created.leader_transitions, 0);
        let released = released_record(&renewed, later);
        assert_eq!(released.holder_identity, "");
        assert_eq!(released.lease_duration_seconds, 1);
        assert_eq!(released.leader_transitions, 3);
    }

    #[test]
    fn endpoints_locks_are_named_exactly_as_upstream_names_them() {
        assert_eq!(
            endpoints_lock_name("fuseim.pri/ifs").as_deref(),
            Some("fuseim.pri-ifs")
        );
        assert_eq!(
            endpoints_lock_name("k8s-sigs.io/nfs-subdir-external-provisioner").as_deref(),
            Some("k8s-sigs.io-nfs-subdir-external-provisioner")
        );
        // Upstream would fail to create these; so there is no such lock to respect.
        assert_eq!(endpoints_lock_name("My/Prov"), None);
        assert_eq!(endpoints_lock_name("a//b"), Some("a--b".into()));
        assert_eq!(endpoints_lock_name("/x"), None);
        let names = LockNames::for_provisioner("fuseim.pri/ifs", "nfs");
        assert_eq!(names.lease, "fuseim.pri-ifs");
        assert_eq!(names.endpoints.as_deref(), Some("fuseim.pri-ifs"));
    }

    #[test]
    fn the_no_lock_error_names_what_was_refused_and_what_to_grant() {
        let m = no_lock_message(
            "nfs",
            &[(LockKind::Lease, "get"), (LockKind::Endpoints, "update")],
        );
        assert_eq!(
            m,
            "cannot elect a leader: forbidden to get coordination.k8s.io leases and update core \
             endpoints in namespace nfs; grant get/create/update on one of them (upstream's RBAC \
             grants endpoints), or set ENABLE_LEADER_ELECTION=false for a single replica"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn leadership_lapses_at_the_deadline_without_any_call() {
        let handle = LeaderHandle::new(false);
        assert!(!handle.is_leader());
        handle.set_valid_until(Some(Instant::now() + Duration::from_secs(10)));
        assert!(handle.is_leader());
        let lost = handle.lost();
        tokio::pin!(lost);
        assert!(futures::poll!(&mut lost).is_pending());
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!handle.is_leader());
        lost.await;
        assert!(LeaderHandle::always().is_leader());
    }
}
