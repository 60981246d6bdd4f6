//! kube-persist: makes sure monitoring data in Kubernetes survives pod restarts.
//!
//! Three jobs share this library: the mutating admission webhook ([`server`] around the pure
//! [`admission`] engine), the NFS provisioner controller ([`provisioner`]) and the offline
//! policy commands ([`commands`]). Decisions are plain functions over plain data; I/O is a thin
//! shell around them.
//!
//! The commands that serve are composed here, in one place: [`run`] and [`run_provisioner`]
//! build the one metrics registry, the Kubernetes client (only where the provisioner runs), the
//! webhook, the provisioner and the [`admin`] port, and hand each its parts.
#![forbid(unsafe_code)]

pub mod admin;
pub mod admission;
pub mod audit;
pub mod certs;
pub mod cli;
pub mod commands;
mod json;
pub mod metrics;
pub mod policy;
pub mod provisioner;
pub mod quantity;
pub mod rbac;
pub mod server;
pub mod telemetry;

use std::{future::Future, process::ExitCode, sync::Arc};

use anyhow::Context as _;
use futures::FutureExt as _;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use admin::AdminState;
use cli::{Cli, Command, ServeConfig};
use provisioner::Provisioner;
use server::{JOIN_LIMIT, Server};

/// Runs the command line `cli` to completion and returns the process exit code.
pub async fn main(cli: Cli) -> anyhow::Result<ExitCode> {
    let Cli {
        log_format: _,
        log_level: _,
        command,
    } = cli;
    let Some(command) = command else {
        anyhow::bail!("no subcommand (parse with Cli::parse_with_default, which implies one)");
    };
    match command {
        Command::Serve(args) => {
            run(args.into_config()?, shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Provisioner(args) => {
            run_provisioner(args.into_config()?, shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Mutate(args) => commands::mutate::run(args),
        Command::Scan(args) => commands::scan::run(args).await,
        Command::Certs(args) => commands::certs::run(args),
    }
}

const CLIENT_SOURCES: &str =
    "cannot configure the Kubernetes client (KUBECONFIG, or the in-cluster service account)";

/// `kube-persist serve`: the webhook and its admin port, with the provisioner beside it when
/// `--provisioner` is set, until `shutdown` resolves. Shutdown order: stop accepting, drain,
/// flush the audit log, stop the reloads, the provisioner and the admin port. A provisioner
/// that ends on its own ends `serve` with an error.
pub async fn run(
    mut config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let provisioner_config = config.provisioner.take();
    let admin_listen = config.admin_listen;
    let admin_max_connections = config.admin_max_connections;
    let mut registry = Registry::default();
    let server = Server::bind(config, &mut registry).await?;
    let admin_listener = TcpListener::bind(admin_listen)
        .await
        .with_context(|| format!("cannot listen on --admin-listen {admin_listen}"))?;
    let provisioner = match provisioner_config {
        Some(config) => {
            let client = kube::Client::try_default()
                .await
                .with_context(|| format!("--provisioner: {CLIENT_SOURCES}"))?;
            Some(Provisioner::new(config, client, &mut registry))
        }
        None => None,
    };
    let mut admin_state = AdminState::new(Arc::new(registry), server.readiness());
    if let Some(p) = &provisioner {
        // The provisioner's health is reported apart: a stale NFS mount must not take the
        // webhook out of its Service.
        let readiness = p.readiness();
        admin_state
            .components
            .push(("provisioner", Arc::new(move || readiness.reason())));
    }
    let mut provisioner = provisioner.map(|p| tokio::spawn(p.run(server.stopping())));
    let hangups = reopen_audit_on_hangup(server.audit()).context("cannot handle SIGHUP")?;
    let admin_addr = admin_listener.local_addr()?;
    let admin_limits = admin::AdminLimits {
        conn: server.conn_limits(),
        max_connections: admin_max_connections,
    };
    let admin_task = tokio::spawn(admin::serve(
        admin_listener,
        admin_state,
        admin_limits,
        server.stopping(),
    ));
    tracing::info!(webhook = %server.local_addr()?, admin = %admin_addr, "Listening");

    // Whatever ends the provisioner while the webhook runs is an error.
    let failed = async {
        let Some(task) = provisioner.as_mut() else {
            return std::future::pending().await;
        };
        let ended = task.await;
        provisioner = None;
        match ended {
            Ok(Ok(())) => anyhow::anyhow!("the provisioner stopped unexpectedly"),
            Ok(Err(e)) => e.context("the provisioner failed"),
            Err(e) => anyhow::anyhow!("the provisioner task failed: {e}"),
        }
    };
    let result = server.run(shutdown, failed).await;
    hangups.abort();
    if let Some(task) = provisioner {
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
    result
}

/// `kube-persist provisioner`: the provisioner with its own admin port
/// (`--provisioner-admin-listen`, where `/readyz` is the mount's health and `/livez` the
/// provisioner's loops') until `shutdown` resolves.
pub async fn run_provisioner(
    config: provisioner::Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let admin_listen = config.admin_listen;
    let client = kube::Client::try_default().await.context(CLIENT_SOURCES)?;
    let mut registry = Registry::default();
    let provisioner = Provisioner::new(config, client, &mut registry);
    let readiness = provisioner.readiness();
    let liveness = provisioner.liveness();
    let listener = TcpListener::bind(admin_listen)
        .await
        .with_context(|| format!("cannot listen on --provisioner-admin-listen {admin_listen}"))?;
    tracing::info!(addr = %admin_listen, "Admin port listening (/livez, /readyz, /metrics)");

    let shutdown = shutdown.shared();
    let state = AdminState::new(Arc::new(registry), move || readiness.reason())
        .with_liveness(move || liveness.reason());
    let admin = admin::serve(
        listener,
        state,
        admin::AdminLimits::default(),
        shutdown.clone(),
    );
    let admin = async move { admin.await.context("admin port failed") };
    let (admin, run) = tokio::join!(admin, provisioner.run(shutdown));
    run.and(admin)
}

/// SIGHUP opens the audit log file again (after a rotation that renamed it, logrotate's
/// `postrotate`) instead of ending the process, as it would by default. Registered before it
/// returns, so no SIGHUP after the start can end the process.
fn reopen_audit_on_hangup(
    audit: audit::AuditSender,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = signal(SignalKind::hangup())?;
        Ok(tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                tracing::info!("SIGHUP: opening the audit log file again");
                audit.reopen();
            }
        }))
    }
    #[cfg(not(unix))]
    Ok(tokio::spawn(async move { drop(audit) }))
}

/// Resolves when the process is asked to stop (SIGTERM or Ctrl-C).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("Shutdown requested");
}
