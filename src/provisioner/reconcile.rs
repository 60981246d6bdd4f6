//! Kubernetes I/O around the pure plans: reconcile one claim (provision) or one volume
//! (clean up), publish events, count metrics, back off on errors.
//!
//! Every step is idempotent so that a restart between any two converges: the PV name is
//! deterministic (`pvc-<claim uid>`), an existing directory is accepted, a 409 on PV create means
//! "done", a missing directory on delete is not an error, a 404 on PV delete is success.
//! Before each step that changes something the leader handle is asked again, so losing the
//! Lease stops work mid-operation.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    core::v1::{ObjectReference, PersistentVolume, PersistentVolumeClaim},
    storage::v1::StorageClass,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, PostParams, Preconditions},
    runtime::{
        controller::Action,
        events::{Event, EventType, Reporter},
        reflector::{ObjectRef, Store},
    },
};

use super::{
    Config,
    leader::LeaderHandle,
    metrics::{Metrics, Operation},
    plan::{
        self, DeleteDecision, DeleteFail, DeletePlan, DirAction, FailReason, ProvisionDecision,
        PvPlan, RetainReason, SkipReason,
    },
    volume::{Cleaned, DirPerms, Ensured, FsError, Usage, VolumeRoot, WalkLimits},
};

/// Event reasons (those of the external-provisioner library, so existing alerts keep working).
pub mod reasons {
    /// Provisioning of a claim started.
    pub const PROVISIONING: &str = "Provisioning";
    /// The PV was created.
    pub const PROVISIONING_SUCCEEDED: &str = "ProvisioningSucceeded";
    /// The claim could not be provisioned.
    pub const PROVISIONING_FAILED: &str = "ProvisioningFailed";
    /// After a failed provisioning, the directory created for it could not be removed.
    pub const PROVISIONING_CLEANUP_FAILED: &str = "ProvisioningCleanupFailed";
    /// A released volume's directory or PV could not be cleaned up (event on the PV).
    pub const VOLUME_FAILED_DELETE: &str = "VolumeFailedDelete";
    /// A released volume's directory was kept (or archived) where its class asked otherwise,
    /// or asked in a way we do not understand: the event says why (on the PV).
    pub const VOLUME_DATA_KEPT: &str = "VolumeDataKept";
}

/// A failed reconcile; the controller retries with exponential backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The claim cannot be provisioned as asked.
    #[error("claim {claim}: {reason}")]
    Plan {
        /// `namespace/name`.
        claim: String,
        #[source]
        reason: FailReason,
    },
    /// The volume cannot be cleaned up safely.
    #[error(transparent)]
    Delete(#[from] DeleteFail),
    /// The filesystem failed.
    #[error("{object}: {source}")]
    Fs {
        /// The claim or volume.
        object: String,
        #[source]
        source: FsError,
    },
    /// The API server failed.
    #[error("{action} {object}: {source}")]
    Kube {
        /// What we were doing.
        action: &'static str,
        object: String,
        #[source]
        source: kube::Error,
    },
    /// A cache did not fill in time.
    #[error("the {0} cache is not synced yet")]
    NotSynced(&'static str),
}

impl Error {
    /// Whether retrying cannot help until the object, its StorageClass or the export changes (a
    /// change of the first two starts a reconcile of its own): the claim asks for something we
    /// do not do, a parameter is wrong, a path is unsafe, the export is not writable by us.
    pub fn is_permanent(&self) -> bool {
        match self {
            Error::Plan { .. } | Error::Delete(_) => true,
            // Permissions on the export, a symlink where a directory belongs: someone must
            // change the server first.
            Error::Fs { source, .. } => source.is_permanent(),
            Error::Kube { .. } | Error::NotSynced(_) => false,
        }
    }

    /// Short label for the `failures_total{reason}` metric.
    pub fn metric_reason(&self) -> &'static str {
        match self {
            Error::Plan { reason, .. } => reason.metric_reason(),
            Error::Delete(_) => "unsafe_volume",
            Error::Fs { source, .. } => source.metric_reason(),
            Error::Kube { .. } => "api_error",
            Error::NotSynced(_) => "cache_not_synced",
        }
    }
}

/// Per-object retry state, forgotten on success: exponential backoff for failures that may pass
/// (1 s, 2 s, 4 s, ... capped at 5 minutes), one retry an hour for permanent ones (a change of
/// the object or its class reconciles it anyway), and the failure last published as an event,
/// so that a failure is reported once, not at every retry. Objects deleted while failing would
/// stay here, so at most [`RetryBackoff::MAX_TRACKED`] are kept: past that, those not seen for
/// two slow retries go, then the least recently seen.
#[derive(Debug, Default)]
pub struct RetryBackoff {
    entries: Mutex<HashMap<String, Retry>>,
}

#[derive(Debug)]
struct Retry {
    attempts: u32,
    reported: Option<String>,
    touched: Instant,
}

/// Delay before retry number `attempt` (0-based).
pub fn backoff_delay(attempt: u32) -> Duration {
    const BASE: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(300);
    BASE.checked_mul(1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX))
        .map_or(MAX, |d| d.min(MAX))
}

impl RetryBackoff {
    /// Objects remembered at most.
    pub const MAX_TRACKED: usize = 10_000;
    /// Delay between retries of a permanent failure.
    pub const SLOW_RETRY: Duration = Duration::from_secs(3600);

    fn with_entry<T>(&self, key: &str, f: impl FnOnce(&mut Retry) -> T) -> Option<T> {
        let mut map = self.entries.lock().ok()?;
        if map.len() >= Self::MAX_TRACKED && !map.contains_key(key) {
            prune(&mut map);
        }
        let entry = map.entry(key.to_owned()).or_insert_with(|| Retry {
            attempts: 0,
            reported: None,
            touched: Instant::now(),
        });
        entry.touched = Instant::now();
        Some(f(entry))
    }

    /// Records a failure of `key`; returns how long to wait.
    pub fn failed(&self, key: &str, permanent: bool) -> Duration {
        self.with_entry(key, |e| {
            let delay = if permanent {
                Self::SLOW_RETRY
            } else {
                backoff_delay(e.attempts)
            };
            e.attempts = e.attempts.saturating_add(1);
            delay
        })
        .unwrap_or(backoff_delay(0))
    }

    /// Whether `message` about `key` should be published: not when it is the one published
    /// last since the object's last success.
    pub fn should_report(&self, key: &str, message: &str) -> bool {
        self.with_entry(key, |e| {
            if e.reported.as_deref() == Some(message) {
                false
            } else {
                e.reported = Some(message.to_owned());
                true
            }
        })
        .unwrap_or(true)
    }

    /// Forgets `key`: it succeeded, or there is nothing to do for it.
    pub fn succeeded(&self, key: &str) {
        if let Ok(mut map) = self.entries.lock() {
            map.remove(key);
        }
    }

    /// Failures recorded for `key` since its last success.
    pub fn attempts(&self, key: &str) -> u32 {
        self.entries
            .lock()
            .map_or(0, |m| m.get(key).map_or(0, |e| e.attempts))
    }

    /// Objects remembered.
    pub fn len(&self) -> usize {
        self.entries.lock().map_or(0, |m| m.len())
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn prune(map: &mut HashMap<String, Retry>) {
    let stale = RetryBackoff::SLOW_RETRY * 2;
    map.retain(|_, e| e.touched.elapsed() < stale);
    if map.len() >= RetryBackoff::MAX_TRACKED {
        let mut touched: Vec<Instant> = map.values().map(|e| e.touched).collect();
        touched.sort_unstable();
        let cut = touched[touched.len() / 2];
        map.retain(|_, e| e.touched > cut);
    }
}

/// Everything a reconcile needs. Built by [`super::Provisioner`]; tests build it by hand with a
/// mocked client and hand-filled stores.
pub struct Context {
    pub client: Client,
    pub config: Config,
    /// StorageClasses, from a reflector.
    pub classes: Store<StorageClass>,
    /// PersistentVolumes, from the volume controller's reflector.
    pub volumes: Store<PersistentVolume>,
    pub fs: VolumeRoot,
    /// Whether we may act.
    pub leader: LeaderHandle,
    pub metrics: Metrics,
    pub recorder: super::events::Publisher,
    pub backoff: RetryBackoff,
    /// How long to wait for the caches to sync before failing a reconcile.
    pub sync_timeout: Duration,
    /// Lets one task at a time wait for the caches: kube-runtime's readiness future wakes only
    /// the task that polled it last, so reconciles waiting on it together (every pending claim
    /// after a leader change) would otherwise sleep until their timeout.
    pub sync_gate: tokio::sync::Mutex<()>,
}

/// The `reportingController` of our events: the provisioner name when it is a valid qualified
/// name (as Kubernetes requires), else `kube-persist.io/provisioner`.
pub fn reporter(provisioner_name: &str, instance: &str) -> Reporter {
    let controller = if is_qualified_name(provisioner_name) {
        provisioner_name.to_owned()
    } else {
        "kube-persist.io/provisioner".to_owned()
    };
    Reporter {
        controller,
        instance: Some(instance.chars().take(128).collect()),
    }
}

fn is_qualified_name(s: &str) -> bool {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                    && l.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                    && l.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            })
    });
    name_ok && prefix_ok
}

fn object_key<K: Resource>(obj: &K) -> String {
    let meta = obj.meta();
    match (&meta.uid, &meta.namespace, &meta.name) {
        (Some(uid), _, _) => uid.clone(),
        (None, Some(ns), Some(name)) => format!("{ns}/{name}"),
        (None, _, name) => name.clone().unwrap_or_default(),
    }
}

fn claim_id(pvc: &PersistentVolumeClaim) -> String {
    format!("{}/{}", pvc.namespace().unwrap_or_default(), pvc.name_any())
}

impl Context {
    async fn publish(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let mut note = note;
        if note.len() > 1000 {
            let mut end = 1000;
            while !note.is_char_boundary(end) {
                end -= 1;
            }
            note.truncate(end);
        }
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: if reason == reasons::VOLUME_FAILED_DELETE {
                "Delete"
            } else {
                "Provision"
            }
            .to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, regarding).await {
            tracing::warn!(error = %e, reason, object = ?regarding.name, "Could not publish event");
        }
    }

    /// Waits until the StorageClass and PersistentVolume caches have their first list, one
    /// waiter at a time (see `sync_gate`).
    pub async fn caches_ready(&self) -> Result<(), Error> {
        let _one_waiter = self.sync_gate.lock().await;
        self.classes
            .wait_until_ready()
            .await
            .map_err(|_| Error::NotSynced("storageclasses"))?;
        self.volumes
            .wait_until_ready()
            .await
            .map_err(|_| Error::NotSynced("persistentvolumes"))
    }

    async fn synced(&self) -> Result<(), Error> {
        tokio::time::timeout(self.sync_timeout, self.caches_ready())
            .await
            .unwrap_or(Err(Error::NotSynced("storageclasses/persistentvolumes")))
    }
}

/// Reconciles one claim: provisions it when it is ours and unbound.
pub async fn reconcile_claim(
    pvc: Arc<PersistentVolumeClaim>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    if !ctx.leader.is_leader() {
        return Ok(Action::await_change());
    }
    ctx.synced().await?;
    let key = object_key(pvc.as_ref());
    let class = plan::claim_class_name(&pvc).and_then(|c| ctx.classes.get(&ObjectRef::new(c)));
    let existing = plan::pv_name_for(&pvc).and_then(|n| ctx.volumes.get(&ObjectRef::new(&n)));
    let all = ctx.volumes.state();
    let volumes: Vec<&PersistentVolume> = all.iter().map(AsRef::as_ref).collect();
    let decision = plan::plan_provision(
        &pvc,
        class.as_deref(),
        &ctx.config,
        existing.as_deref(),
        &volumes,
    );
    match decision {
        ProvisionDecision::Skip { reason } => {
            tracing::debug!(claim = %claim_id(&pvc), %reason, "Skipped claim");
            ctx.backoff.succeeded(&key);
            if reason == SkipReason::Deleting && existing.is_none() {
                take_back_dir(&pvc, class.as_deref(), &volumes, &ctx).await;
            }
            Ok(Action::await_change())
        }
        ProvisionDecision::Fail { reason } => {
            let claim = claim_id(&pvc);
            let class = plan::claim_class_name(&pvc).unwrap_or_default();
            let note =
                format!("failed to provision volume with StorageClass \"{class}\": {reason}");
            if ctx.backoff.should_report(&key, &note) {
                tracing::warn!(%claim, error = %reason, "Cannot provision claim");
                ctx.publish(
                    &pvc.object_ref(&()),
                    EventType::Warning,
                    reasons::PROVISIONING_FAILED,
                    note,
                )
                .await;
            }
            ctx.metrics
                .failure(Operation::Provision, reason.metric_reason(), None);
            Err(Error::Plan { claim, reason })
        }
        ProvisionDecision::Provision(plan) => {
            let result = provision(&pvc, &plan, &ctx).await;
            if result.is_ok() {
                ctx.backoff.succeeded(&key);
            }
            result
        }
    }
}

/// A claim of ours deleted before its volume existed: removes the directory that may have been
/// made for it (a restart between the directory and the PV leaves one), if it is empty and no
/// volume uses it.
async fn take_back_dir(
    pvc: &PersistentVolumeClaim,
    class: Option<&StorageClass>,
    volumes: &[&PersistentVolume],
    ctx: &Context,
) {
    let ours = Some(ctx.config.provisioner_name.as_str());
    if plan::claim_provisioner(pvc) != ours || class.map(|c| c.provisioner.as_str()) != ours {
        return;
    }
    let bound = pvc
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .is_some_and(|v| !v.is_empty());
    let Some(pv_name) = plan::pv_name_for(pvc).filter(|_| !bound) else {
        return;
    };
    let Ok(params) = plan::parse_class_params(class.and_then(|c| c.parameters.as_ref())) else {
        return;
    };
    let Ok((dir, _)) = plan::claim_dir(pvc, &pv_name, &params) else {
        return;
    };
    if plan::overlapping_volume(&dir, &pv_name, &ctx.config, volumes).is_some()
        || !ctx.leader.is_leader()
    {
        return;
    }
    match ctx.fs.remove_empty(&dir).await {
        Ok(Cleaned::Removed) => {
            tracing::info!(claim = %claim_id(pvc), %dir, "Removed the empty directory of a claim deleted before its volume was made");
        }
        Ok(_) => {}
        // Not empty (someone put data there) or the mount failed: leave it.
        Err(e) => {
            tracing::debug!(claim = %claim_id(pvc), %dir, error = %e, "Left the directory of a deleted claim")
        }
    }
}

async fn provision(
    pvc: &PersistentVolumeClaim,
    plan: &PvPlan,
    ctx: &Context,
) -> Result<Action, Error> {
    let started = Instant::now();
    let claim = claim_id(pvc);
    let reference = pvc.object_ref(&());
    let pv_name = plan.pv.name_any();
    let class = plan::claim_class_name(pvc).unwrap_or_default().to_owned();
    ctx.publish(
        &reference,
        EventType::Normal,
        reasons::PROVISIONING,
        format!("External provisioner is provisioning volume for claim \"{claim}\""),
    )
    .await;

    let fail = |error: Error, ensured: Option<Ensured>| {
        let (reference, claim, class, pv_name) = (&reference, &claim, &class, &pv_name);
        async move {
            tracing::warn!(%claim, pv = %pv_name, error = %error, "Provisioning failed");
            if ensured == Some(Ensured::Created) {
                // We made this directory in this attempt and there is no PV for it: take it back.
                if let Err(e) = ctx.fs.remove_empty(&plan.dir).await {
                    ctx.publish(
                    reference,
                    EventType::Warning,
                    reasons::PROVISIONING_CLEANUP_FAILED,
                    format!("Error cleaning provisioned directory {} for claim {claim}: {e}. Please delete it manually.", plan.dir),
                )
                .await;
                }
            }
            let note = format!("failed to provision volume with StorageClass \"{class}\": {error}");
            if ctx.backoff.should_report(&object_key(pvc), &note) {
                ctx.publish(
                    reference,
                    EventType::Warning,
                    reasons::PROVISIONING_FAILED,
                    note,
                )
                .await;
            }
            ctx.metrics.failure(
                Operation::Provision,
                error.metric_reason(),
                Some(started.elapsed()),
            );
            Err(error)
        }
    };

    if !ctx.leader.is_leader() {
        tracing::warn!(claim = %claim_id(pvc), "Lost the Lease: stopped before creating the directory");
        return Ok(Action::await_change());
    }
    if !plan.private {
        // The name is not private to the namespace: an existing directory with data and no
        // volume may be another namespace's (volumes were checked by the plan).
        match ctx.fs.holds_data(&plan.dir).await {
            Ok(false) => {}
            Ok(true) => {
                let reason = FailReason::Unclaimed {
                    dir: plan.dir.clone(),
                };
                let claim = claim_id(pvc);
                return fail(Error::Plan { claim, reason }, None).await;
            }
            Err(source) => {
                let object = claim_id(pvc);
                return fail(Error::Fs { object, source }, None).await;
            }
        }
    }
    let perms = DirPerms {
        mode: plan.mode,
        uid: plan.uid,
        gid: plan.gid,
    };
    let ensured = match ctx.fs.ensure_dir(&plan.dir, perms).await {
        Ok(e) => e,
        Err(source) => {
            let object = claim_id(pvc);
            return fail(Error::Fs { object, source }, None).await;
        }
    };
    tracing::info!(claim = %claim_id(pvc), dir = %plan.dir, ?ensured, "Volume directory ready");

    if !ctx.leader.is_leader() {
        // The directory stays: the next leader finds it and creates the same PV.
        tracing::warn!(claim = %claim_id(pvc), "Lost the Lease: stopped before creating the PersistentVolume");
        return Ok(Action::await_change());
    }
    let api: Api<PersistentVolume> = Api::all(ctx.client.clone());
    match api.create(&PostParams::default(), &plan.pv).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {
            tracing::info!(pv = %plan.pv.name_any(), "PersistentVolume already exists (an earlier attempt created it)");
        }
        Err(source) => {
            let error = Error::Kube {
                action: "creating PersistentVolume",
                object: plan.pv.name_any(),
                source,
            };
            // Whatever the error, a directory made in this attempt goes: the next attempt
            // makes it again, and a claim deleted meanwhile leaves nothing behind.
            return fail(error, Some(ensured)).await;
        }
    }
    ctx.publish(
        &reference,
        EventType::Normal,
        reasons::PROVISIONING_SUCCEEDED,
        format!("Successfully provisioned volume {}", plan.pv.name_any()),
    )
    .await;
    if let Some(bytes) = plan.requested_bytes {
        ctx.metrics.set_requested(&plan.pv.name_any(), bytes);
    }
    ctx.metrics.success(Operation::Provision, started.elapsed());
    tracing::info!(claim = %claim_id(pvc), pv = %plan.pv.name_any(), dir = %plan.dir, "Provisioned");
    Ok(Action::await_change())
}

/// Archive suffix from the clock: `20250102T030405Z`.
pub fn archive_stamp(now: jiff::Timestamp) -> String {
    now.strftime("%Y%m%dT%H%M%SZ").to_string()
}

/// Reconciles one volume: cleans up a released volume of ours.
pub async fn reconcile_volume(
    pv: Arc<PersistentVolume>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    if !ctx.leader.is_leader() {
        return Ok(Action::await_change());
    }
    ctx.synced().await?;
    let key = object_key(pv.as_ref());
    match plan_cleanup(&pv, &ctx) {
        DeleteDecision::Skip { reason } => {
            tracing::trace!(pv = %pv.name_any(), ?reason, "Skipped volume");
            ctx.backoff.succeeded(&key);
            Ok(Action::await_change())
        }
        DeleteDecision::Fail { reason } => {
            if ctx.backoff.should_report(&key, &reason.to_string()) {
                tracing::warn!(pv = %pv.name_any(), error = %reason, "Cannot clean up volume");
                ctx.publish(
                    &pv.object_ref(&()),
                    EventType::Warning,
                    reasons::VOLUME_FAILED_DELETE,
                    reason.to_string(),
                )
                .await;
            }
            let error = Error::Delete(reason);
            ctx.metrics
                .failure(Operation::Delete, error.metric_reason(), None);
            Err(error)
        }
        DeleteDecision::Delete(plan) => {
            let result = delete(&pv, &plan, &ctx).await;
            if result.is_ok() {
                ctx.backoff.succeeded(&key);
            }
            result
        }
    }
}

/// [`plan::plan_delete`] against the caches.
fn plan_cleanup(pv: &PersistentVolume, ctx: &Context) -> DeleteDecision {
    let class = pv
        .spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .and_then(|c| ctx.classes.get(&ObjectRef::new(c)));
    let all = ctx.volumes.state();
    let volumes: Vec<&PersistentVolume> = all.iter().map(AsRef::as_ref).collect();
    let stamp = archive_stamp(jiff::Timestamp::now());
    plan::plan_delete(pv, class.as_deref(), &ctx.config, &volumes, &stamp)
}

/// Reads the volume again from the API server, not the cache, and plans its cleanup afresh:
/// the cache may be seconds old, and data goes only on what is true now. `None` when there is
/// nothing to do any more (gone, replaced by another object of that name, no longer released
/// or no longer to be cleaned up the same way).
async fn confirm_cleanup(
    pv: &PersistentVolume,
    plan: &DeletePlan,
    ctx: &Context,
) -> Result<Option<DeletePlan>, Error> {
    let fresh = read_volume(&plan.pv_name, ctx).await?;
    let Some(fresh) = fresh.filter(|f| f.metadata.uid == pv.metadata.uid) else {
        return Ok(None);
    };
    match plan_cleanup(&fresh, ctx) {
        DeleteDecision::Delete(again) if again.dir == plan.dir => Ok(Some(again)),
        other => {
            tracing::info!(pv = %plan.pv_name, now = ?other, "The volume changed since it was seen: cleanup left for its next reconcile");
            Ok(None)
        }
    }
}

/// The PV `name` as the API server has it now (`None` when it is gone).
async fn read_volume(name: &str, ctx: &Context) -> Result<Option<PersistentVolume>, Error> {
    let api: Api<PersistentVolume> = Api::all(ctx.client.clone());
    api.get_opt(name).await.map_err(|source| Error::Kube {
        action: "reading PersistentVolume",
        object: name.to_owned(),
        source,
    })
}

async fn delete(pv: &PersistentVolume, plan: &DeletePlan, ctx: &Context) -> Result<Action, Error> {
    let started = Instant::now();
    let reference = pv.object_ref(&());
    let key = object_key(pv);
    let fail = |error: Error| {
        let (reference, key) = (&reference, &key);
        async move {
            tracing::warn!(pv = %plan.pv_name, error = %error, "Cleanup failed");
            let note = error.to_string();
            if ctx.backoff.should_report(key, &note) {
                ctx.publish(
                    reference,
                    EventType::Warning,
                    reasons::VOLUME_FAILED_DELETE,
                    note,
                )
                .await;
            }
            ctx.metrics.failure(
                Operation::Delete,
                error.metric_reason(),
                Some(started.elapsed()),
            );
            Err(error)
        }
    };
    if !ctx.leader.is_leader() {
        return Ok(Action::await_change());
    }
    let plan = match confirm_cleanup(pv, plan, ctx).await {
        Ok(Some(plan)) => plan,
        Ok(None) => return Ok(Action::await_change()),
        Err(error) => return fail(error).await,
    };
    if !ctx.leader.is_leader() {
        return Ok(Action::await_change());
    }
    if let Some(warning) = &plan.warning {
        tracing::warn!(pv = %plan.pv_name, %warning, "Class parameter ignored");
        ctx.publish(
            &reference,
            EventType::Warning,
            reasons::VOLUME_DATA_KEPT,
            warning.clone(),
        )
        .await;
    }
    let cleaned = match &plan.action {
        DirAction::Archive { names } => ctx.fs.archive(&plan.dir, names).await.map(Some),
        DirAction::Remove => ctx.fs.remove_all(&plan.dir).await.map(Some),
        DirAction::Retain { reason } => {
            match reason {
                RetainReason::Requested => {
                    tracing::info!(pv = %plan.pv_name, dir = %plan.dir, "Directory retained (onDelete: retain)");
                }
                other => {
                    tracing::warn!(pv = %plan.pv_name, dir = %plan.dir, reason = %other, "Directory retained");
                    ctx.publish(
                        &reference,
                        EventType::Warning,
                        reasons::VOLUME_DATA_KEPT,
                        format!("directory {} of volume {}: {other}", plan.dir, plan.pv_name),
                    )
                    .await;
                }
            }
            Ok(None)
        }
    };
    match cleaned {
        Ok(Some(Cleaned::Missing)) => {
            tracing::info!(pv = %plan.pv_name, dir = %plan.dir, "Directory already gone");
        }
        Ok(Some(Cleaned::Archived(to))) => {
            tracing::info!(pv = %plan.pv_name, dir = %plan.dir, archive = %to, "Directory archived");
        }
        Ok(Some(Cleaned::Removed)) => {
            tracing::info!(pv = %plan.pv_name, dir = %plan.dir, "Directory removed");
        }
        Ok(None) => {}
        Err(source) => {
            let object = format!("PersistentVolume {}", plan.pv_name);
            return fail(Error::Fs { object, source }).await;
        }
    }
    if !ctx.leader.is_leader() {
        // The PV stays Released; the next leader finds the directory gone and deletes it.
        tracing::warn!(pv = %plan.pv_name, "Lost the Lease: stopped before deleting the PersistentVolume");
        return Ok(Action::await_change());
    }
    if let Err(error) = delete_volume(&plan, ctx).await {
        return fail(error).await;
    }
    ctx.metrics.forget_volume(&plan.pv_name);
    ctx.metrics.success(Operation::Delete, started.elapsed());
    tracing::info!(pv = %plan.pv_name, "Deleted");
    Ok(Action::await_change())
}

/// Deletes the PV, on the condition that it is still the object we cleaned up (its uid). A 404
/// is success; a 409 is success only when a fresh read shows our object gone (replaced by
/// another of the same name), otherwise it is an error and the reconcile runs again.
async fn delete_volume(plan: &DeletePlan, ctx: &Context) -> Result<(), Error> {
    let api: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let params = DeleteParams {
        preconditions: plan.pv_uid.clone().map(|uid| Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    let kube_error = |source| Error::Kube {
        action: "deleting PersistentVolume",
        object: plan.pv_name.clone(),
        source,
    };
    match api.delete(&plan.pv_name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => match read_volume(&plan.pv_name, ctx).await? {
            Some(pv) if pv.metadata.uid == plan.pv_uid => Err(kube_error(kube::Error::Api(s))),
            _ => Ok(()),
        },
        Err(source) => Err(kube_error(source)),
    }
}

/// Requeue delay after a failed reconcile of `obj` (exponential per object).
pub fn error_policy<K: Resource>(obj: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = object_key(obj.as_ref());
    let delay = ctx.backoff.failed(&key, error.is_permanent());
    tracing::debug!(object = %key, error = %error, ?delay, "Retrying later");
    Action::requeue(delay)
}

/// Measures every provisioned, non-released volume once and updates the per-volume gauges;
/// `known` carries the set of measured volumes between rounds so series of vanished volumes
/// are dropped. Returns the usages measured.
pub async fn measure_volumes(
    ctx: &Context,
    limits: WalkLimits,
    known: &mut HashSet<String>,
) -> Vec<(String, Usage)> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for pv in ctx.volumes.state() {
        if !ctx.leader.is_leader() {
            return out;
        }
        let Some(dir) = plan::volume_dir(&pv, &ctx.config) else {
            continue;
        };
        let class = pv
            .spec
            .as_ref()
            .and_then(|s| s.storage_class_name.as_deref())
            .and_then(|c| ctx.classes.get(&ObjectRef::new(c)));
        if !plan::usage_walk_enabled(class.as_deref()) {
            continue;
        }
        if pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released") {
            continue;
        }
        let name = pv.name_any();
        if let Some(bytes) = pv
            .spec
            .as_ref()
            .and_then(|s| s.capacity.as_ref())
            .and_then(|c| c.get("storage"))
            .and_then(|q| plan::quantity_bytes(&q.0))
        {
            ctx.metrics.set_requested(&name, bytes);
        }
        match ctx.fs.usage(&dir, limits).await {
            Ok(usage) => {
                ctx.metrics.set_used(&name, usage.bytes, usage.complete);
                out.push((name.clone(), usage));
            }
            Err(e) => {
                tracing::warn!(pv = %name, error = %e, "Could not measure volume usage");
                if e.is_mount_failure() {
                    // Do not queue more calls on a hung mount this round.
                    seen.insert(name);
                    seen.extend(known.iter().cloned());
                    break;
                }
            }
        }
        seen.insert(name);
    }
    for gone in known.difference(&seen) {
        ctx.metrics.forget_volume(gone);
    }
    *known = seen;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff_delay(0), Duration::from_secs(1));
        assert_eq!(backoff_delay(3), Duration::from_secs(8));
        assert_eq!(backoff_delay(9), Duration::from_secs(300));
        assert_eq!(backoff_delay(40), Duration::from_secs(300));
        let b = RetryBackoff::default();
        assert_eq!(b.failed("a", false), Duration::from_secs(1));
        assert_eq!(b.failed("a", false), Duration::from_secs(2));
        assert_eq!(b.attempts("a"), 2);
        b.succeeded("a");
        assert_eq!(b.failed("a", false), Duration::from_secs(1));
        // A permanent failure waits an hour, every time.
        assert_eq!(b.failed("p", true), RetryBackoff::SLOW_RETRY);
        assert_eq!(b.failed("p", true), RetryBackoff::SLOW_RETRY);
    }

    #[test]
    fn filesystem_failures_that_need_the_server_changed_are_permanent() {
        let fs = |source| Error::Fs {
            object: "monitoring/db".into(),
            source,
        };
        let not_a_dir = FsError::NotADirectory {
            path: "/persistentvolumes/x".into(),
        };
        let hung = FsError::Timeout {
            op: "mkdir",
            path: "/persistentvolumes/x".into(),
            timeout: Duration::from_secs(15),
        };
        assert!(fs(not_a_dir).is_permanent());
        assert!(!fs(hung).is_permanent());
        assert!(!Error::NotSynced("persistentvolumes").is_permanent());
    }

    #[test]
    fn a_failure_is_reported_once_until_it_changes_or_passes() {
        let b = RetryBackoff::default();
        assert!(b.should_report("a", "no class"));
        assert!(!b.should_report("a", "no class"));
        assert!(b.should_report("a", "bad path"));
        assert!(!b.should_report("a", "bad path"));
        b.succeeded("a");
        assert!(b.should_report("a", "bad path"));
        assert!(b.should_report("b", "bad path"));
    }

    #[test]
    fn retry_state_stays_bounded() {
        let b = RetryBackoff::default();
        for i in 0..RetryBackoff::MAX_TRACKED * 3 {
            b.failed(&format!("claim-{i}"), i % 2 == 0);
            assert!(b.len() <= RetryBackoff::MAX_TRACKED, "{} at {i}", b.len());
        }
        // The most recent are the ones kept.
        let last = format!("claim-{}", RetryBackoff::MAX_TRACKED * 3 - 1);
        assert_eq!(b.attempts(&last), 1);
    }

    #[test]
    fn reporting_controller_is_a_qualified_name() {
        assert_eq!(
            reporter("fuseim.pri/ifs", "pod").controller,
            "fuseim.pri/ifs"
        );
        assert_eq!(
            reporter("k8s-sigs.io/nfs-subdir-external-provisioner", "pod").controller,
            "k8s-sigs.io/nfs-subdir-external-provisioner"
        );
        assert_eq!(
            reporter("Bad Name!", "pod").controller,
            "kube-persist.io/provisioner"
        );
        assert_eq!(
            reporter("a/b/c", "pod").controller,
            "kube-persist.io/provisioner"
        );
    }

    #[test]
    fn archive_stamp_format() {
        let ts: jiff::Timestamp = "2025-01-02T03:04:05Z".parse().unwrap();
        assert_eq!(archive_stamp(ts), "20250102T030405Z");
    }
}
