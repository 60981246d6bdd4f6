//! `kube-persist`: the binary. Everything lives in the library; this only wires the process.

use std::process::ExitCode;

fn main() -> ExitCode {
    // One crypto provider for rustls, chosen before anything builds a TLS config.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = match kube_persist::cli::Cli::parse_with_default(std::env::args_os(), |name| {
        std::env::var_os(name).is_some()
    }) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    if let Err(e) = kube_persist::telemetry::init(cli.log_format, &cli.log_level) {
        eprintln!("kube-persist: {e:#}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kube-persist: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(kube_persist::main(cli)) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "Exiting");
            eprintln!("kube-persist: {e:#}");
            ExitCode::from(2)
        }
    }
}
