//! The HTTPS webhook of `kube-persist serve` (own accept loop: TCP -> rustls -> hyper, HTTP/1.1
//! and HTTP/2 by ALPN), policy and certificate reloads, and a graceful shutdown that answers
//! every request accepted before SIGTERM. The admin port and the provisioner are wired beside it
//! by [`crate::run`].

pub mod conns;
pub mod http;
pub mod reload;
pub mod tls;

use std::{
    convert::Infallible,
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

use conns::{ConnLimits, ConnState, Slots};
use tokio_rustls::TlsAcceptor;

use crate::{
    audit::{AuditLog, AuditSender, AuditTarget},
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
            client_ca,
            policy: policy_path,
            max_body,
            max_body_memory,
            audit_log,
            reload_interval,
            header_timeout,
            body_timeout,
            idle_timeout,
            drain_timeout,
            shutdown_delay,
            max_connections,
            admin_max_connections: _,
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
        let client_roots = client_ca.as_deref().map(tls::client_roots).transpose()?;
        let tls = Arc::new(tls::server_config(
            resolver.clone(),
            provider.clone(),
            client_roots,
        )?);
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
            body_budget: http::BodyBudget::new(max_body_memory),
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

    /// The limits the admin port shares with the webhook.
    pub fn conn_limits(&self) -> ConnLimits {
        self.limits
    }

    /// A handle on the audit log (to open its file again on SIGHUP).
    pub fn audit(&self) -> AuditSender {
        self.audit.sender()
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
            .keep_alive(true)
            .max_buf_size(H1_BUFFER);
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(10))
            .max_concurrent_streams(MAX_STREAMS);

        let mut connections = Slots::new(max_connections);
        // At capacity, a newcomer may take the slot of a connection that goes idle later: look
        // again now and then.
        let mut recheck = tokio::time::interval(Duration::from_millis(50));
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
                Some(()) = connections.join_next(), if !connections.is_empty() => {}
                _ = recheck.tick(), if connections.full() => {}
                accepted = listener.accept(), if connections.can_accept() => {
                    let (stream, peer) = match accepted {
                        Ok(conn) => conn,
                        Err(e) => {
                            // EMFILE and friends: back off instead of spinning.
                            tracing::warn!(error = %e, "Accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let (acceptor, builder, state, stop) =
                        (acceptor.clone(), builder.clone(), state.clone(), stop.subscribe());
                    let evicted = connections.spawn(|conn| {
                        serve_connection(stream, peer, acceptor, builder, state, conn, limits, stop)
                    });
                    if evicted {
                        tracing::debug!(%peer, "Every connection slot taken: closed the longest idle connection");
                    }
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

/// Most concurrent HTTP/2 streams per connection. The API server opens few at once on one
/// connection (Go's HTTP/2 client opens another connection when a server's limit is reached,
/// so a low limit costs it nothing), and each stream may hold a request body: 32 bounds what
/// one connection can ask of the body budget at once without slowing a busy API server.
const MAX_STREAMS: u32 = 32;

/// Largest read buffer of an HTTP/1.1 connection (hyper's default is about 400 KiB). Review
/// headers are small and the body is copied out as it arrives, so 64 KiB reads lose nothing,
/// and 1024 connections reading bodies at once hold 64 MiB of buffers, not 400.
const H1_BUFFER: usize = 64 * 1024;

/// Decrements the open-connections gauge however the connection ends (an evicted connection's
/// task is aborted).
struct Counted(prometheus_client::metrics::gauge::Gauge);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[allow(
    clippy::too_many_arguments,
    reason = "one connection's parts, passed once"
)]
async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    builder: auto::Builder<TokioExecutor>,
    state: Arc<http::WebhookState>,
    conn: Arc<ConnState>,
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
    state.metrics.connections.inc();
    let _counted = Counted(state.metrics.connections.clone());
    let tracker = conn.clone();
    let service = hyper::service::service_fn(move |request| {
        let in_flight = tracker.request();
        let state = state.clone();
        async move {
            let response = http::handle(&state, request).await;
            drop(in_flight);
            Ok::<_, Infallible>(response)
        }
    });
    let served = builder.serve_connection(TokioIo::new(tls), service);
    tokio::pin!(served);
    let ended = conns::drive(
        served.as_mut(),
        |c| c.graceful_shutdown(),
        &conn,
        limits,
        &mut stop,
    )
    .await;
    match ended {
        Ok(()) => {}
        Err(conns::Ended::Error(e)) => {
            tracing::debug!(%peer, error = %e, "Connection ended with an error");
        }
        Err(conns::Ended::NoRequest) => {
            tracing::debug!(%peer, "No request within the header timeout: closed");
        }
        Err(conns::Ended::Idle) => tracing::debug!(%peer, "Idle connection closed"),
    }
}
