//! Composition: builds the one metrics registry, the Kubernetes client (only where the
//! provisioner runs), the webhook, the provisioner and the admin port, and hands each its parts.
//! Nothing here decides a review or a volume.

use std::{future::Future, sync::Arc};

use anyhow::Context as _;
use futures::FutureExt as _;
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;

use crate::{
    admin::{self, AdminState},
    cli::ServeConfig,
    provisioner::{self, Provisioner},
    server::{JOIN_LIMIT, Server},
};

const CLIENT_SOURCES: &str =
    "cannot configure the Kubernetes client (KUBECONFIG, or the in-cluster service account)";

/// `kube-persist serve`: the webhook and its admin port, with the provisioner beside it when
/// `--provisioner` is set, until `shutdown` resolves. Shutdown order: stop accepting, drain,
/// flush the audit log, stop the reloads, the provisioner and the admin port. A provisioner
/// that ends on its own ends `serve` with an error.
pub async fn serve(
    mut config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let provisioner_config = config.provisioner.take();
    let admin_listen = config.admin_listen;
    let mut registry = Registry::default();
    let server = Server::bind(config, &mut registry).await?;
    let admin_listener = admin::bind(admin_listen, "--admin-listen").await?;
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
    let admin_addr = admin_listener.local_addr()?;
    let admin_task = tokio::spawn(admin::serve(admin_listener, admin_state, server.stopping()));
    tracing::info!(webhook = %server.local_addr()?, admin = %admin_addr, "Listening");

    let result = server.run(shutdown, ended(&mut provisioner)).await;
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

/// Resolves when the provisioner task ends (never without one), and takes it: whatever ended
/// it is an error while the webhook still runs.
async fn ended(task: &mut Option<JoinHandle<anyhow::Result<()>>>) -> anyhow::Error {
    let Some(running) = task.as_mut() else {
        return std::future::pending().await;
    };
    let ended = running.await;
    *task = None;
    match ended {
        Ok(Ok(())) => anyhow::anyhow!("the provisioner stopped unexpectedly"),
        Ok(Err(e)) => e.context("the provisioner failed"),
        Err(e) => anyhow::anyhow!("the provisioner task failed: {e}"),
    }
}

/// `kube-persist provisioner`: the provisioner with its own admin port
/// (`--provisioner-admin-listen`, where `/readyz` is the provisioner's readiness) until
/// `shutdown` resolves.
pub async fn provisioner(
    config: provisioner::Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let admin_listen = config.admin_listen;
    let client = kube::Client::try_default().await.context(CLIENT_SOURCES)?;
    let mut registry = Registry::default();
    let provisioner = Provisioner::new(config, client, &mut registry);
    let readiness = provisioner.readiness();
    let listener = admin::bind(admin_listen, "--provisioner-admin-listen").await?;
    tracing::info!(addr = %admin_listen, "Admin port listening (/livez, /readyz, /metrics)");

    let shutdown = shutdown.shared();
    let state = AdminState::new(Arc::new(registry), move || readiness.reason());
    let admin = admin::serve(listener, state, shutdown.clone());
    let admin = async move { admin.await.context("admin port failed") };
    let (admin, run) = tokio::join!(admin, provisioner.run(shutdown));
    run.and(admin)
}
