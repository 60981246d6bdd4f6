//! Leader election on a `coordination.k8s.io/v1` Lease, so several replicas can run while only
//! one provisions.
//!
//! The algorithm is client-go's: read the Lease; take it when it is free, expired (judged by
//! *our* clock, from when we last saw it change, so clock skew between nodes does not matter)
//! or already ours; write with optimistic concurrency (a 409 means someone else won).
//! Leadership is a deadline, not a flag: a replica is leader until `renew_deadline` after its
//! last successful renewal, and [`LeaderHandle::is_leader`] turns false the moment that passes,
//! even if the renew loop is stuck. Others only take over `lease_duration` after the last
//! renewal they saw, which is later. Losing the Lease therefore stops provisioning at once.
//!
//! This module decides nothing about volumes; the reconcilers ask [`LeaderHandle`] before each
//! step that changes anything.

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
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
    #[error("Lease {namespace}/{name}: {source}")]
    Api {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    /// No answer in time.
    #[error("Lease {namespace}/{name}: no answer from the API server within {timeout:?}")]
    Timeout {
        namespace: String,
        name: String,
        timeout: Duration,
    },
}

/// One candidate in the election.
pub struct LeaseElector {
    api: Api<Lease>,
    namespace: String,
    name: String,
    identity: String,
    timing: LeaderTiming,
    handle: LeaderHandle,
    /// The Lease spec last seen and when (our clock) it last changed.
    observed: Option<(LeaseSpec, Instant)>,
    /// Our last successful write, for release.
    last_written: Option<Lease>,
}

impl std::fmt::Debug for LeaseElector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseElector")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl LeaseElector {
    /// A candidate for Lease `namespace/name` under `identity`, and the handle that reports
    /// its leadership.
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        timing: LeaderTiming,
    ) -> (Self, LeaderHandle) {
        let handle = LeaderHandle::new(false);
        let elector = LeaseElector {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            identity: identity.to_owned(),
            timing,
            handle: handle.clone(),
            observed: None,
            last_written: None,
        };
        (elector, handle)
    }

    /// Our identity in `spec.holderIdentity`.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    async fn call<T>(
        &self,
        fut: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, LeaderError> {
        match tokio::time::timeout(self.timing.call_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(source)) => Err(LeaderError::Api {
                namespace: self.namespace.clone(),
                name: self.name.clone(),
                source,
            }),
            Err(_) => Err(LeaderError::Timeout {
                namespace: self.namespace.clone(),
                name: self.name.clone(),
                timeout: self.timing.call_timeout,
            }),
        }
    }

    fn lease_seconds(&self) -> i32 {
        i32::try_from(self.timing.lease_duration.as_secs())
            .unwrap_or(i32::MAX)
            .max(1)
    }

    /// One round: take or renew the Lease. `Ok(true)` when we are leader afterwards. A Lease
    /// held by someone else, or a lost write race, ends leadership immediately; an error keeps
    /// it until the renewal deadline passes.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, LeaderError> {
        let started = Instant::now();
        let now = MicroTime(jiff::Timestamp::now());
        let current = self.call(self.api.get_opt(&self.name)).await?;
        let Some(current) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    namespace: Some(self.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(self.lease_seconds()),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self
                .call(self.api.create(&PostParams::default(), &lease))
                .await
            {
                Ok(written) => Ok(self.won(written, started)),
                Err(LeaderError::Api { source, .. }) if is_conflict(&source) => {
                    Ok(self.lost_round())
                }
                Err(e) => Err(e),
            };
        };
        let spec = current.spec.clone().unwrap_or_default();
        if self.observed.as_ref().is_none_or(|(seen, _)| *seen != spec) {
            self.observed = Some((spec.clone(), started));
        }
        let holder = spec.holder_identity.as_deref().unwrap_or_default();
        let ours = holder == self.identity;
        if !ours && !holder.is_empty() {
            let duration = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map_or(self.timing.lease_duration, Duration::from_secs);
            let seen_at = self.observed.as_ref().map_or(started, |(_, at)| *at);
            if started < seen_at + duration {
                return Ok(self.lost_round());
            }
        }
        let mut next = current;
        next.spec = Some(LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.lease_seconds()),
            acquire_time: if ours {
                spec.acquire_time.clone()
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(if ours {
                spec.lease_transitions.unwrap_or(0)
            } else {
                spec.lease_transitions.unwrap_or(0).saturating_add(1)
            }),
            ..spec
        });
        match self
            .call(self.api.replace(&self.name, &PostParams::default(), &next))
            .await
        {
            Ok(written) => Ok(self.won(written, started)),
            Err(LeaderError::Api { source, .. }) if is_conflict(&source) => Ok(self.lost_round()),
            Err(e) => Err(e),
        }
    }

    fn won(&mut self, written: Lease, started: Instant) -> bool {
        self.observed = Some((written.spec.clone().unwrap_or_default(), started));
        self.last_written = Some(written);
        self.handle
            .set_valid_until(Some(started + self.timing.renew_deadline));
        true
    }

    fn lost_round(&mut self) -> bool {
        self.last_written = None;
        if self.handle.valid_until().is_some() {
            self.handle.set_valid_until(None);
        }
        false
    }

    /// Gives the Lease up (on shutdown), so another replica takes over without waiting for it
    /// to expire. Leadership ends before the write.
    pub async fn release(&mut self) -> Result<(), LeaderError> {
        self.handle.set_valid_until(None);
        let Some(mut lease) = self.last_written.take() else {
            return Ok(());
        };
        let now = MicroTime(jiff::Timestamp::now());
        if let Some(spec) = lease.spec.as_mut() {
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(now);
        }
        self.call(self.api.replace(&self.name, &PostParams::default(), &lease))
            .await
            .map(|_| ())
    }

    /// Campaigns until `stop` resolves, then releases the Lease if held.
    pub async fn run(mut self, stop: impl Future<Output = ()>, on_change: impl Fn(bool)) {
        let mut stop = std::pin::pin!(stop);
        let mut was_leader = false;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "Leader election round failed"),
            }
            let leader = self.handle.is_leader();
            if leader != was_leader {
                if leader {
                    tracing::info!(lease = %self.name, namespace = %self.namespace, identity = %self.identity, "Became leader");
                } else {
                    tracing::warn!(lease = %self.name, namespace = %self.namespace, identity = %self.identity, "Lost leadership");
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
            tracing::warn!(error = %e, "Could not release the Lease");
        }
        on_change(false);
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
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
