//! `kube-persist scan`.

use std::process::ExitCode;

/// Runs `kube-persist scan`.
pub async fn run(_args: crate::cli::ScanArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("scan: not built yet")
}
