//! kube-persist: makes sure monitoring data in Kubernetes survives pod restarts.
//!
//! Three jobs share this library: the mutating admission webhook ([`server`] around the pure
//! [`admission`] engine), the NFS provisioner controller ([`provisioner`]) and the offline
//! policy commands ([`commands`]). [`run`] wires the first two with the [`admin`] port. Decisions are plain functions over plain data; I/O is a thin
//! shell around them.
#![forbid(unsafe_code)]

pub mod admin;
pub mod admission;
pub mod audit;
pub mod certs;
pub mod cli;
pub mod commands;
pub mod metrics;
pub mod policy;
pub mod provisioner;
pub mod quantity;
pub mod rbac;
pub mod run;
pub mod server;
pub mod telemetry;

use std::process::ExitCode;

use cli::{Cli, Command};

/// Runs the command line `cli` to completion and returns the process exit code.
pub async fn main(cli: Cli) -> anyhow::Result<ExitCode> {
    let Cli {
        log_format: _,
        log_level: _,
        command,
    } = cli;
    match command {
        Command::Serve(args) => {
            run::serve(args.into_config()?, shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Provisioner(args) => {
            run::provisioner(args.into_config()?, shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Mutate(args) => commands::mutate::run(args),
        Command::Scan(args) => commands::scan::run(args).await,
        Command::Certs(args) => commands::certs::run(args),
    }
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
