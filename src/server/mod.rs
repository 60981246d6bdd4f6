//! `kube-persist serve`: the HTTPS webhook (own accept loop: TCP -> rustls -> hyper, HTTP/1.1
//! and HTTP/2 by ALPN), the plain-HTTP admin port, policy and certificate reloads, and a
//! graceful shutdown that answers every request accepted before SIGTERM.

pub mod admin;
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

/// A bound, not yet running webhook: lets callers learn the ports before serving.
pub struct Server {
    config: ServeConfig,
    listener: TcpListener,
    admin_listener: TcpListener,
    policy: Arc<ArcSwap<Policy>>,
    resolver: Arc<tls::CertResolver>,
    tls: Arc<rustls::ServerConfig>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    cert_files: Option<(PathBuf, PathBuf, tls::PemPair)>,
    policy_text: Option<Vec<u8>>,
}

impl Server {
    /// Loads the policy and certificate (refusing to start on bad ones) and binds both ports.
    pub async fn bind(config: ServeConfig) -> anyhow::Result<Server> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let (policy, policy_text) = match &config.policy {
            Some(path) => {
                let text = std::fs::read(path)
                    .with_context(|| format!("cannot read --policy {}", path.display()))?;
                let policy = Policy::from_yaml(
                    &String::from_utf8_lossy(&text),
                    &path.display().to_string(),
                )?;
                (policy, Some(text))
            }
            None => (Policy::default(), None),
        };
        let (pair, cert_files) = match &config.tls {
            TlsSource::Files { cert, key } => {
                let pair = tls::PemPair::read(cert, key)?;
                (pair.clone(), Some((cert.clone(), key.clone(), pair)))
            }
            TlsSource::Dev { ca_dir } => (tls::dev_certificate(ca_dir)?, None),
        };
        let (cert_path, key_path) = match &cert_files {
            Some((c, k, _)) => (c.clone(), k.clone()),
            None => (PathBuf::from("<generated>"), PathBuf::from("<generated>")),
        };
        let key = pair.certified_key(&cert_path, &key_path, &provider)?;
        let resolver = Arc::new(tls::CertResolver::new(key));
        let tls = Arc::new(tls::server_config(resolver.clone(), provider.clone())?);
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on --listen {}", config.listen))?;
        let admin_listener = TcpListener::bind(config.admin_listen)
            .await
            .with_context(|| format!("cannot listen on --admin-listen {}", config.admin_listen))?;
        Ok(Server {
            config,
            listener,
            admin_listener,
            policy: Arc::new(ArcSwap::from_pointee(policy)),
            resolver,
            tls,
            provider,
            cert_files,
            policy_text,
        })
    }

    /// The webhook's bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The admin port's bound address.
    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin_listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then drains in-flight requests.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let Server {
            config,
            listener,
            admin_listener,
            policy,
            resolver,
            tls,
            provider,
            cert_files,
            policy_text,
        } = self;
        let ServeConfig {
            listen: _,
            admin_listen: _,
            tls: _,
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
            provisioner,
        } = config;
        let mut registry = Registry::default();
        let metrics = WebhookMetrics::register(&mut registry);
        let audit = AuditLog::open(
            match &audit_log {
                Some(path) => AuditTarget::File(path),
                None => AuditTarget::Stdout,
            },
            &metrics.audit_dropped,
        )?;
        let provisioner = match provisioner {
            Some(config) => {
                let client = kube::Client::try_default().await.context(
                    "--provisioner: cannot configure the Kubernetes client (KUBECONFIG, or the in-cluster service account)",
                )?;
                Some(crate::provisioner::Provisioner::new(
                    config,
                    client,
                    &mut registry,
                ))
            }
            None => None,
        };
        let ready = Arc::new(AtomicBool::new(true));
        let (stop_tx, stop_rx) = watch::channel(false);

        let mut background = JoinSet::new();
        if let (Some(path), Some(text)) = (policy_path, policy_text) {
            background.spawn(reload::watch_policy(
                path,
                text,
                policy.clone(),
                metrics.clone(),
                reload_interval,
                stop_rx.clone(),
            ));
        }
        if let Some((cert, key, pair)) = cert_files {
            background.spawn(reload::watch_certificate(
                reload::CertFiles { cert, key },
                pair,
                resolver,
                provider,
                metrics.clone(),
                reload_interval,
                stop_rx.clone(),
            ));
        }
        let mut components: Vec<(&'static str, admin::ReadyCheck)> = Vec::new();
        if let Some(p) = &provisioner {
            // The provisioner's health is reported apart: a stale NFS mount must not take the
            // webhook out of its Service.
            let readiness = p.readiness();
            components.push(("provisioner", Arc::new(move || readiness.reason())));
        }
        let serving = ready.clone();
        let admin_state = admin::AdminState {
            registry: Arc::new(registry),
            ready: Arc::new(move || {
                (!serving.load(Ordering::SeqCst)).then(|| "shutting down".to_string())
            }),
            components,
        };
        let mut provisioner_task = provisioner.map(|p| {
            let mut stop = stop_rx.clone();
            tokio::spawn(p.run(async move {
                let _ = stop.wait_for(|stop| *stop).await;
            }))
        });
        let admin_addr = admin_listener.local_addr()?;
        let mut admin_stop = stop_rx.clone();
        let admin_task = tokio::spawn(async move {
            axum::serve(admin_listener, admin::router(admin_state))
                .with_graceful_shutdown(async move {
                    let _ = admin_stop.wait_for(|stop| *stop).await;
                })
                .await
        });

        let state = Arc::new(http::WebhookState {
            policy,
            audit: audit.sender(),
            metrics: metrics.clone(),
            max_body,
            body_timeout,
        });
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(10))
            .max_concurrent_streams(250);
        let acceptor = TlsAcceptor::from(tls);
        let addr = listener.local_addr()?;
        tracing::info!(webhook = %addr, admin = %admin_addr, "Listening");

        let mut connections = JoinSet::new();
        let mut failure = None;
        // After SIGTERM: keep serving (with /readyz failing) until this instant, so requests
        // routed to us before the endpoints update are still answered.
        let mut closing_at: Option<tokio::time::Instant> = None;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown, if closing_at.is_none() => {
                    ready.store(false, Ordering::SeqCst);
                    if shutdown_delay.is_zero() {
                        break;
                    }
                    tracing::info!(delay = ?shutdown_delay, "Failing readiness; still serving until the delay passes");
                    closing_at = Some(tokio::time::Instant::now() + shutdown_delay);
                }
                () = async { match closing_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                } } => break,
                ended = async { match provisioner_task.as_mut() {
                    Some(task) => task.await,
                    None => std::future::pending().await,
                } } => {
                    provisioner_task = None;
                    failure = Some(match ended {
                        Ok(Ok(())) => anyhow::anyhow!("the provisioner stopped unexpectedly"),
                        Ok(Err(e)) => e.context("the provisioner failed"),
                        Err(e) => anyhow::anyhow!("the provisioner task failed: {e}"),
                    });
                    break;
                }
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
                        ConnLimits { header_timeout, idle_timeout },
                        metrics.clone(),
                        stop_rx.clone(),
                    ));
                }
            }
        }

        // Shutdown: stop accepting, let open connections finish their requests.
        tracing::info!(open = connections.len(), "Draining connections");
        ready.store(false, Ordering::SeqCst);
        drop(listener);
        let _ = stop_tx.send(true);
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
        const JOIN_LIMIT: Duration = Duration::from_secs(5);
        let _ = tokio::time::timeout(JOIN_LIMIT, async {
            while background.join_next().await.is_some() {}
        })
        .await;
        if let Some(task) = provisioner_task {
            match tokio::time::timeout(JOIN_LIMIT, task).await {
                Ok(Ok(Err(e))) => tracing::error!(
                    error = format!("{e:#}"),
                    "Provisioner stopped with an error"
                ),
                Ok(Err(e)) => tracing::error!(error = %e, "Provisioner task failed"),
                Err(_) => tracing::warn!("Provisioner did not stop in time"),
                Ok(Ok(Ok(()))) => {}
            }
        }
        match tokio::time::timeout(JOIN_LIMIT, admin_task).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "Admin server stopped with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "Admin server task failed"),
            Err(_) => tracing::warn!("Admin server did not stop in time"),
            Ok(Ok(Ok(()))) => {}
        }
        tracing::info!("Stopped");
        failure.map_or(Ok(()), Err)
    }
}

#[derive(Clone, Copy)]
struct ConnLimits {
    header_timeout: Duration,
    idle_timeout: Duration,
}

#[allow(clippy::too_many_arguments)]
async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    builder: auto::Builder<TokioExecutor>,
    state: Arc<http::WebhookState>,
    limits: ConnLimits,
    metrics: WebhookMetrics,
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

/// Runs `serve` with `config` until `shutdown` resolves.
pub async fn run(
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    Server::bind(config).await?.run(shutdown).await
}
