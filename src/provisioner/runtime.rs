//! Wiring: kube-runtime controllers for claims and volumes, a StorageClass reflector, the leader
//! election, the mount probe and the usage walker. Decides nothing about a claim or a volume: the
//! reconcilers ([`super::reconcile`]) do.

use std::{
    collections::HashSet,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::{
    core::v1::{PersistentVolume, PersistentVolumeClaim},
    storage::v1::StorageClass,
};
use kube::{
    Api, Client,
    runtime::{
        Controller, WatchStreamExt,
        controller::{self, Action},
        reflector, watcher,
    },
};
use prometheus_client::registry::Registry;
use tokio::{sync::watch, time::Instant};

use super::{
    Config,
    events::Publisher,
    leader::{self, LeaderHandle, LeaderTiming, LeaseElector, LockNames},
    metrics::Metrics,
    plan,
    reconcile::{self, Context, RetryBackoff},
    volume::{MountHealth, VolumeRoot, WalkLimits},
};

/// Timings and bounds; the defaults suit production, tests shorten them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    /// Limit of each filesystem call on the NFS mount.
    pub fs_timeout: Duration,
    /// How often the mount is probed (readiness).
    pub probe_interval: Duration,
    /// How often provisioned volumes are walked for their used bytes.
    pub walk_interval: Duration,
    /// Bound of each volume's walk.
    pub walk_limits: WalkLimits,
    pub leader: LeaderTiming,
    /// Reconciles running at once, per controller.
    pub concurrency: u16,
    /// How long a reconcile waits for the caches to sync.
    pub sync_timeout: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            fs_timeout: Duration::from_secs(15),
            probe_interval: Duration::from_secs(10),
            walk_interval: Duration::from_secs(300),
            walk_limits: WalkLimits::default(),
            leader: LeaderTiming::default(),
            concurrency: 8,
            sync_timeout: Duration::from_secs(30),
        }
    }
}

/// Readiness of the provisioner: the NFS mount answered the last probe (a write and a remove)
/// and no call has failed on it since. Leadership does not matter: a standby replica is ready.
#[derive(Debug, Clone)]
pub struct Readiness {
    health: Arc<MountHealth>,
}

impl Readiness {
    /// Whether `/readyz` should answer 200.
    pub fn is_ready(&self) -> bool {
        self.health.is_healthy()
    }

    /// Why not, for the `/readyz` body.
    pub fn reason(&self) -> Option<String> {
        if self.is_ready() {
            None
        } else {
            Some(
                self.health
                    .last_error()
                    .unwrap_or_else(|| "NFS mount not probed yet".to_owned()),
            )
        }
    }
}

/// Liveness of the provisioner: its election loop still turns (each turn is bounded by the API
/// call timeouts, so a loop silent for much longer is wedged). The mount plays no part: a hung
/// hard NFS mount is not fixed by a restart, and an unhealthy mount already gives leadership up.
#[derive(Debug, Clone)]
pub struct Liveness {
    beat: Option<Arc<Mutex<Instant>>>,
    limit: Duration,
}

impl Liveness {
    /// Why the provisioner is not live, for `/livez`; `None` when it is.
    pub fn reason(&self) -> Option<String> {
        let beat = self.beat.as_ref()?;
        let last = beat.lock().map_or_else(|_| Instant::now(), |b| *b);
        let silent = last.elapsed();
        (silent > self.limit).then(|| {
            format!(
                "the leader election loop has not turned for {} s",
                silent.as_secs()
            )
        })
    }
}

/// The NFS provisioner controller.
pub struct Provisioner {
    config: Config,
    client: Client,
    metrics: Metrics,
    fs: VolumeRoot,
    tuning: Tuning,
    instance: String,
    identity: String,
    /// Last turn of the election loop (none without leader election).
    beat: Option<Arc<Mutex<Instant>>>,
}

impl std::fmt::Debug for Provisioner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provisioner")
            .field("config", &self.config)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl Provisioner {
    /// Builds the provisioner and registers its metrics into the shared registry.
    pub fn new(config: Config, client: Client, registry: &mut Registry) -> Self {
        Provisioner::with_tuning(config, client, registry, Tuning::default())
    }

    /// [`Provisioner::new`] with explicit timings.
    pub fn with_tuning(
        config: Config,
        client: Client,
        registry: &mut Registry,
        tuning: Tuning,
    ) -> Self {
        let instance = leader::instance_name();
        let identity = leader::unique_identity(&instance);
        let probe_name = format!(".kube-persist-probe-{identity}");
        let fs = VolumeRoot::new(config.nfs_root.clone(), tuning.fs_timeout, &probe_name)
            .with_export(&config.nfs_path);
        let config_beat = config
            .enable_leader_election
            .then(|| Arc::new(Mutex::new(Instant::now())));
        Provisioner {
            metrics: Metrics::new(registry),
            config,
            client,
            fs,
            tuning,
            instance,
            identity,
            beat: config_beat,
        }
    }

    /// Cheap handle for `/livez`. Silence of the election loop for three full turns (a pause
    /// and every call timing out) counts as wedged.
    pub fn liveness(&self) -> Liveness {
        let timing = self.tuning.leader;
        Liveness {
            beat: self.beat.clone(),
            limit: (timing.retry_period + timing.call_timeout * 4) * 3,
        }
    }

    /// Cheap handle for `/readyz`.
    pub fn readiness(&self) -> Readiness {
        Readiness {
            health: self.fs.health(),
        }
    }

    /// Runs until `shutdown` resolves: probes the mount, campaigns for the leader locks while
    /// the mount is healthy (and gives them up while it is not), and while leader runs the
    /// claim and volume controllers. Losing leadership stops them at once; they start again
    /// (with fresh caches) when it is regained. Ends with an error when no lock can ever be
    /// taken.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let Provisioner {
            config,
            client,
            metrics,
            fs,
            tuning,
            instance,
            identity,
            beat,
        } = self;
        let (stop_tx, stop_rx) = watch::channel(false);
        let probe = tokio::spawn(probe_loop(
            fs.clone(),
            tuning.probe_interval,
            stop_rx.clone(),
        ));

        let (leader, mut elector) = if config.enable_leader_election {
            let namespace = leader::lease_namespace_from_env(config.lease_namespace.as_deref());
            let names = LockNames::for_provisioner(&config.provisioner_name, &namespace);
            tracing::info!(lease = %names.lease, endpoints = ?names.endpoints, %namespace, %identity, "Leader election enabled");
            let (elector, handle) =
                LeaseElector::with_locks(client.clone(), &names, &identity, tuning.leader);
            let elector = match beat {
                Some(beat) => elector.with_heartbeat(beat),
                None => elector,
            };
            let m = metrics.clone();
            let health = fs.health();
            let task = tokio::spawn(elector.run(
                stopped(stop_rx.clone()),
                move || health.is_healthy(),
                move |l| m.set_leader(l),
            ));
            (handle, Some(task))
        } else {
            metrics.set_leader(true);
            (LeaderHandle::always(), None)
        };

        let mut shutdown = std::pin::pin!(shutdown);
        let result = loop {
            tokio::select! {
                _ = &mut shutdown => break Ok(()),
                e = election_end(&mut elector) => break Err(e),
                _ = leader.acquired() => {}
            }
            tracing::info!(provisioner = %config.provisioner_name, "Provisioning started");
            let parts = Parts {
                client: client.clone(),
                config: config.clone(),
                fs: fs.clone(),
                leader: leader.clone(),
                metrics: metrics.clone(),
                instance: instance.clone(),
            };
            tokio::select! {
                _ = &mut shutdown => break Ok(()),
                e = election_end(&mut elector) => break Err(e),
                _ = leader.lost() => {
                    tracing::warn!("Lost leadership: provisioning stopped");
                }
                () = run_controllers(parts, tuning) => {
                    break Err(anyhow::anyhow!("the provisioner controllers stopped unexpectedly"));
                }
            }
        };
        let _ = stop_tx.send(true);
        if let Some(task) = elector {
            // Releases the locks; bounded so shutdown cannot hang on a dead API server.
            let _ = tokio::time::timeout(tuning.leader.call_timeout * 4, task).await;
        }
        probe.abort();
        tracing::info!("Provisioner stopped");
        result
    }
}

/// Resolves when the election task ends (never without one), with why; takes the task.
async fn election_end(
    task: &mut Option<tokio::task::JoinHandle<Result<(), leader::LeaderError>>>,
) -> anyhow::Error {
    let Some(running) = task.as_mut() else {
        return std::future::pending().await;
    };
    let ended = running.await;
    *task = None;
    match ended {
        Ok(Ok(())) => anyhow::anyhow!("leader election stopped unexpectedly"),
        Ok(Err(e)) => anyhow::Error::new(e),
        Err(e) => anyhow::anyhow!("the leader election task failed: {e}"),
    }
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

async fn probe_loop(fs: VolumeRoot, interval: Duration, mut stop: watch::Receiver<bool>) {
    if let Ok(false) = fs.is_mount_point().await {
        tracing::warn!(
            root = %fs.root().display(),
            "The NFS root is not a mount point: volumes would be created on this container's own filesystem"
        );
    }
    let mut was_ok = None;
    loop {
        let result = fs.probe().await;
        let ok = result.is_ok();
        if was_ok != Some(ok) {
            match &result {
                Ok(()) => tracing::info!(root = %fs.root().display(), "NFS mount is healthy"),
                Err(e) => {
                    tracing::error!(root = %fs.root().display(), error = %e, "NFS mount is not usable")
                }
            }
            was_ok = Some(ok);
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// What the controllers share, before their caches exist.
struct Parts {
    client: Client,
    config: Config,
    fs: VolumeRoot,
    leader: LeaderHandle,
    metrics: Metrics,
    instance: String,
}

/// Runs the StorageClass reflector, both controllers and the usage walker until dropped.
async fn run_controllers(parts: Parts, tuning: Tuning) {
    let Parts {
        client,
        config,
        fs,
        leader,
        metrics,
        instance,
    } = parts;
    let (class_reader, class_writer) = reflector::store::<StorageClass>();
    let classes = reflector(
        class_writer,
        watcher(
            Api::<StorageClass>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff(),
    )
    .for_each(|event| async move {
        if let Err(e) = event {
            tracing::warn!(error = %e, "StorageClass watch failed; retrying");
        }
    });
    let controller_config = controller::Config::default().concurrency(tuning.concurrency);
    let volumes = Controller::new(
        Api::<PersistentVolume>::all(client.clone()),
        watcher::Config::default(),
    )
    .with_config(controller_config.clone());
    let claims = Controller::new(
        Api::<PersistentVolumeClaim>::all(client.clone()),
        watcher::Config::default(),
    )
    .with_config(controller_config);
    // A class that appears or changes reconciles its claims again: a failure that waits for a
    // fixed class is retried only once an hour otherwise.
    let claim_store = claims.store();
    let claims = claims.watches(
        Api::<StorageClass>::all(client.clone()),
        watcher::Config::default(),
        move |class| {
            let name = class.metadata.name.clone();
            claim_store
                .state()
                .into_iter()
                .filter(|c| plan::claim_class_name(c) == name.as_deref())
                .map(|c| reflector::ObjectRef::from_obj(c.as_ref()))
                .collect::<Vec<_>>()
        },
    );
    let ctx = Arc::new(Context {
        recorder: Publisher::new(
            client.clone(),
            reconcile::reporter(&config.provisioner_name, &instance),
        ),
        client,
        config,
        classes: class_reader,
        volumes: volumes.store(),
        fs,
        leader,
        metrics,
        backoff: RetryBackoff::default(),
        sync_timeout: tuning.sync_timeout,
        sync_gate: Default::default(),
    });
    let run_volumes = volumes
        .run(
            reconcile::reconcile_volume,
            reconcile::error_policy,
            Arc::clone(&ctx),
        )
        .for_each(|r| async move { log_outcome("PersistentVolume", r) });
    let run_claims = claims
        .run(
            reconcile::reconcile_claim,
            reconcile::error_policy,
            Arc::clone(&ctx),
        )
        .for_each(|r| async move { log_outcome("PersistentVolumeClaim", r) });
    let walker = usage_loop(Arc::clone(&ctx), tuning);
    tokio::join!(classes, run_volumes, run_claims, walker);
}

fn log_outcome<K, E: std::fmt::Display, Q: std::fmt::Display>(
    kind: &str,
    r: Result<(reflector::ObjectRef<K>, Action), controller::Error<E, Q>>,
) where
    K: kube::Resource,
{
    match r {
        Ok((obj, _)) => tracing::trace!(kind, name = %obj.name, "Reconciled"),
        Err(controller::Error::ObjectNotFound(_)) => {}
        Err(e) => tracing::debug!(kind, error = %e, "Reconcile failed"),
    }
}

async fn usage_loop(ctx: Arc<Context>, tuning: Tuning) {
    if ctx.caches_ready().await.is_err() {
        return;
    }
    let mut known = HashSet::new();
    loop {
        let measured = reconcile::measure_volumes(&ctx, tuning.walk_limits, &mut known).await;
        tracing::debug!(volumes = measured.len(), "Measured volume usage");
        tokio::time::sleep(tuning.walk_interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn liveness_fails_once_the_election_loop_is_silent_past_its_limit() {
        let beat = Arc::new(Mutex::new(Instant::now()));
        let live = Liveness {
            beat: Some(Arc::clone(&beat)),
            limit: Duration::from_secs(66),
        };
        assert_eq!(live.reason(), None);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(live.reason(), None);
        tokio::time::advance(Duration::from_secs(7)).await;
        let why = live.reason().unwrap();
        assert!(why.contains("has not turned for 67 s"), "{why}");
        *beat.lock().unwrap() = Instant::now();
        assert_eq!(live.reason(), None);
        // Without leader election there is no loop to watch.
        let none = Liveness {
            beat: None,
            limit: Duration::ZERO,
        };
        assert_eq!(none.reason(), None);
    }
}
