//! The HTTPS webhook of `kube-persist serve` (own accept loop: TCP -> rustls -> hyper, HTTP/1.1
//! and HTTP/2 by ALPN), policy and certificate reloads, and a graceful shutdown that answers
//! every request accepted before SIGTERM. The admin port and the provisioner are wired beside it
//! by [`crate::run`].

pub mod http;
mod io;
pub mod reload;
pub mod tls;

use std::{
    future::Future,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use prometheus_client::registry::Registry;
use tokio::{net::TcpListener, sync::watch, task::JoinSet};
use tokio_rustls::TlsAcceptor;

use crate::{
    audit::{AuditLog, AuditTarget},
    cli::{ServeConfig, TlsSource},
    metrics::WebhookMetrics,
    policy::Policy,
};

/// A bound, not yet running webhook: the policy and certificate are loaded, the port is bound
/// and the audit log is open.
pub struct Server {
    listener: TcpListener,
    state: Arc<http::WebhookState>,
    audit: AuditLog,
    acceptor: TlsAcceptor,
    reloads: JoinSet<()>,
    limits: ConnLimits,
    drain_timeout: Duration,
    shutdown_delay: Duration,
    max_connections: usize,
    ready: Arc<AtomicBool>,
    stop: watch::Sender<bool>,
}

impl Server {
    /// Loads the policy and certificate (refusing to start on bad ones), binds `--listen`, opens
    /// the audit log, registers the webhook's metrics into `registry` and starts polling the
    /// policy and certificate files. `--admin-listen` and `--provisioner` are left to the caller.
    pub async fn bind(config: ServeConfig, registry: &mut Registry) -> anyhow::Result<Server> {
        let ServeConfig {
            listen,
            admin_listen: _,
            tls: tls_source,
            policy: policy_path,
            max_body,
            audit_log,
            reload_interval,
            header_timeout,
            body_timeout,
            idle_timeout,
            drain_timeout,
            shutdown_delay,
            max_connections,
            provisioner: _,
        } = config;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let (policy, policy_file) = match policy_path {
            Some(path) => {
                let text = std::fs::read(&path)
                    .with_context(|| format!("cannot read --policy {}", path.display()))?;
                let policy = Policy::from_yaml(
                    &String::from_utf8_lossy(&text),
                    &path.display().to_string(),
                )?;
                (policy, Some((path, text)))
            }
            None => (Policy::default(), None),
        };
        let (pair, cert_files) = match tls_source {
            TlsSource::Files { cert, key } => {
                let pair = tls::PemPair::read(&cert, &key)?;
                (pair.clone(), Some((reload::CertFiles { cert, key }, pair)))
            }
            TlsSource::Dev { ca_dir } => (tls::dev_certificate(&ca_dir)?, None),
        };
        let (cert_path, key_path) = match &cert_files {
            Some((files, _)) => (files.cert.clone(), files.key.clone()),
            None => (PathBuf::from("<generated>"), PathBuf::from("<generated>")),
        };
        let key = pair.certified_key(&cert_path, &key_path, &provider)?;
        let resolver = Arc::new(tls::CertResolver::new(key));
        let tls = Arc::new(tls::server_config(resolver.clone(), provider.clone())?);
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on --listen {listen}"))?;
        let metrics = WebhookMetrics::register(registry);
        let audit = AuditLog::open(
            match &audit_log {
                Some(path) => AuditTarget::File(path),
                None => AuditTarget::Stdout,
            },
            &metrics.audit_dropped,
        )?;
        let state = Arc::new(http::WebhookState {
            policy: Arc::new(ArcSwap::from_pointee(policy)),
            audit: audit.sender(),
            metrics,
            max_body,
            body_timeout,
        });
        let stop = watch::channel(false).0;
        let mut reloads = JoinSet::new();
        if let Some((path, text)) = policy_file {
            reloads.spawn(reload::watch_policy(
                path,
                text,
                state.policy.clone(),
                state.metrics.clone(),
                reload_interval,
                stop.subscribe(),
            ));
        }
        if let Some((files, pair)) = cert_files {
            reloads.spawn(reload::watch_certificate(
                files,
                pair,
                resolver,
                provider,
                state.metrics.clone(),
                reload_interval,
                stop.subscribe(),
            ));
        }
        Ok(Server {
            listener,
            state,
            audit,
            acceptor: TlsAcceptor::from(tls),
            reloads,
            limits: ConnLimits {
                header_timeout,
                idle_timeout,
            },
            drain_timeout,
            shutdown_delay,
            max_connections,
            ready: Arc::new(AtomicBool::new(true)),
            stop,
        })
    }

    /// The webhook's bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The webhook's readiness (`/readyz`): `None` until shutdown starts.
    pub fn readiness(&self) -> impl Fn() -> Option<String> + Send + Sync + 'static {
        let serving = self.ready.clone();
        move || (!serving.load(Ordering::SeqCst)).then(|| "shutting down".to_string())
    }

    /// Resolves when the webhook stops accepting (or is dropped without running): the moment
    /// the parts beside it are told to stop.
    pub fn stopping(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stop = self.stop.subscribe();
        async move {
            let _ = stop.wait_for(|stop| *stop).await;
        }
    }

    /// Serves until `shutdown` resolves (then keeps answering for `--shutdown-delay` with
    /// readiness failing) or `failed` resolves (then at once, returning its error). Afterwards
    /// stops accepting, drains in-flight requests and flushes the audit log.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send,
        failed: impl Future<Output = anyhow::Error> + Send,
    ) -> anyhow::Result<()> {
        let Server {
            listener,
            state,
            audit,
            acceptor,
            mut reloads,
            limits,
            drain_timeout,
            shutdown_delay,
            max_connections,
            ready,
            stop,
        } = self;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(10))
            .max_concurrent_streams(250);

        let mut connections = JoinSet::new();
        // After SIGTERM: keep serving (with /readyz failing) until this instant, so requests
        // routed to us before the endpoints update are still answered.
        let mut closing_at: Option<tokio::time::Instant> = None;
        tokio::pin!(shutdown, failed);
        let failure = loop {
            tokio::select! {
                () = &mut shutdown, if closing_at.is_none() => {
                    ready.store(false, Ordering::SeqCst);
                    if shutdown_delay.is_zero() {
                        break None;
                    }
                    tracing::info!(delay = ?shutdown_delay, "Failing readiness; still serving until the delay passes");
                    closing_at = Some(tokio::time::Instant::now() + shutdown_delay);
                }
                () = async { match closing_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                } } => break None,
                e = &mut failed => break Some(e),
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                accepted = listener.accept(), if connections.len() < max_connections => {
                    let (stream, peer) = match accepted {
                        Ok(conn) => conn,
                        Err(e) => {
                            // EMFILE and friends: back off instead of spinning.
                            tracing::warn!(error = %e, "Accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    connections.spawn(serve_connection(
                        stream,
                        peer,
                        acceptor.clone(),
                        builder.clone(),
                        state.clone(),
                        limits,
                        stop.subscribe(),
                    ));
                }
            }
        };

        // Shutdown: stop accepting, let open connections finish their requests.
        tracing::info!(open = connections.len(), "Draining connections");
        ready.store(false, Ordering::SeqCst);
        drop(listener);
        stop.send_replace(true);
        let drained = tokio::time::timeout(drain_timeout, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                open = connections.len(),
                "Drain deadline passed; closing connections"
            );
            connections.abort_all();
        }
        // The router (and its audit sender) is gone with the connections: flush the log first,
        // so nothing below can keep an answered review out of it.
        drop(state);
        if tokio::task::spawn_blocking(move || audit.close())
            .await
            .is_err()
        {
            tracing::error!("Audit log writer did not stop cleanly");
        }
        let _ = tokio::time::timeout(JOIN_LIMIT, async {
            while reloads.join_next().await.is_some() {}
        })
        .await;
        failure.map_or(Ok(()), Err)
    }
}

/// How long each part may take to stop once told to.
pub const JOIN_LIMIT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy)]
struct ConnLimits {
    header_timeout: Duration,
    idle_timeout: Duration,
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    builder: auto::Builder<TokioExecutor>,
    state: Arc<http::WebhookState>,
    limits: ConnLimits,
    mut stop: watch::Receiver<bool>,
) {
    // Without TCP_NODELAY, Nagle's algorithm holds small HTTP/2 frames for ~40 ms.
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%peer, error = %e, "Cannot set TCP_NODELAY");
    }
    let tls = match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let metrics = state.metrics.clone();
    metrics.connections.inc();
    let (io, activity) = io::Tracked::new(tls);
    let conn = builder.serve_connection(TokioIo::new(io), http::service(state));
    tokio::pin!(conn);
    let mut draining = false;
    let mut idle_check =
        tokio::time::interval((limits.idle_timeout / 4).max(Duration::from_millis(10)));
    idle_check.tick().await;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "Connection ended with an error");
                }
                break;
            }
            _ = stop.wait_for(|stop| *stop), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = idle_check.tick(), if !draining => {
                if activity.idle_for() >= limits.idle_timeout {
                    tracing::debug!(%peer, "Closing idle connection");
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
    metrics.connections.dec();
}
