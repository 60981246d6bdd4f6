//! `kube-persist certs`.

use std::process::ExitCode;

/// Runs `kube-persist certs`.
pub fn run(_args: crate::cli::CertsArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("certs: not built yet")
}
