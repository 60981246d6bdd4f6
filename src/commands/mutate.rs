//! `kube-persist mutate`.

use std::process::ExitCode;

/// Runs `kube-persist mutate`.
pub fn run(_args: crate::cli::MutateArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("mutate: not built yet")
}
