//! Reloads of the policy and certificate files. Both are polled: mounted ConfigMaps and Secrets
//! change through a symlink swap, which polling sees reliably. A file that fails to parse is
//! reported once (log + metric) and the previous version keeps serving.

use std::{path::PathBuf, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use tokio::sync::watch;

use super::tls::{CertResolver, PemPair};
use crate::{metrics::WebhookMetrics, policy::Policy};

/// Polls `path` every `interval` and swaps the policy when it changes and is valid.
pub async fn watch_policy(
    path: PathBuf,
    mut seen: Vec<u8>,
    store: Arc<ArcSwap<Policy>>,
    metrics: WebhookMetrics,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let origin = path.display().to_string();
    let mut unreadable = false;
    while tick(interval, &mut stop).await {
        let text = match tokio::fs::read(&path).await {
            Ok(text) => {
                unreadable = false;
                text
            }
            Err(e) => {
                if !unreadable {
                    tracing::warn!(policy = %origin, error = %e, "Cannot read the policy file; keeping the current policy");
                    unreadable = true;
                }
                continue;
            }
        };
        if text == seen {
            continue;
        }
        match Policy::from_reloaded_yaml(&String::from_utf8_lossy(&text), &origin) {
            Ok(policy) => {
                store.store(Arc::new(policy));
                metrics.reload("policy", true);
                tracing::info!(policy = %origin, "Policy reloaded");
            }
            Err(e) => {
                metrics.reload("policy", false);
                tracing::error!(policy = %origin, error = %e, "Policy file rejected; the previous policy keeps serving");
            }
        }
        seen = text;
    }
}

/// The certificate files being watched.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// `--tls-cert`.
    pub cert: PathBuf,
    /// `--tls-key`.
    pub key: PathBuf,
}

/// Polls the certificate files and swaps the served key pair when they change and are valid.
pub async fn watch_certificate(
    files: CertFiles,
    mut seen: PemPair,
    resolver: Arc<CertResolver>,
    provider: Arc<CryptoProvider>,
    metrics: WebhookMetrics,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut unreadable = false;
    while tick(interval, &mut stop).await {
        let (cert, key) = (files.cert.clone(), files.key.clone());
        let read = tokio::task::spawn_blocking(move || PemPair::read(&cert, &key)).await;
        let pair = match read {
            Ok(Ok(pair)) => {
                unreadable = false;
                pair
            }
            Ok(Err(e)) => {
                if !unreadable {
                    metrics.reload("certificate", false);
                    tracing::warn!(error = %e, "Cannot read the certificate files; the current certificate keeps serving");
                    unreadable = true;
                }
                continue;
            }
            Err(_) => continue,
        };
        if pair == seen {
            continue;
        }
        match pair.certified_key(&files.cert, &files.key, &provider) {
            Ok(key) => {
                resolver.replace(key);
                metrics.reload("certificate", true);
                tracing::info!(cert = %files.cert.display(), "Serving certificate reloaded");
            }
            Err(e) => {
                metrics.reload("certificate", false);
                tracing::error!(error = %e, "New certificate rejected; the previous one keeps serving");
            }
        }
        seen = pair;
    }
}

/// Waits one interval; false once shutdown has begun.
async fn tick(interval: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    let stopped = tokio::select! {
        () = tokio::time::sleep(interval) => false,
        _ = stop.wait_for(|stop| *stop) => true,
    };
    !stopped && !*stop.borrow()
}
