//! Mutual TLS for the control API's TCP listener: the server presents its certificate, and a
//! client must present one signed by the configured CA before any call runs (the handshake
//! fails otherwise). Certificate, key and CA are read from files and read again when any of
//! them changes on disk (checked every few seconds), so a rotated certificate (cert-manager, a
//! mounted Secret) takes effect without a restart; a bad new set is reported and the old one
//! kept.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};

/// The three files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The server's certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The CA that signs client certificates (PEM).
    pub ca: PathBuf,
}

/// Why the TLS material cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {why}")]
pub struct TlsError {
    /// The file at fault.
    pub file: PathBuf,
    /// What is wrong.
    pub why: String,
}

fn err(file: &Path, why: impl std::fmt::Display) -> TlsError {
    TlsError {
        file: file.to_path_buf(),
        why: why.to_string(),
    }
}

/// Reads the files into a server configuration that requires client certificates.
pub fn load(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| err(&files.cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(&files.cert, e))?;
    if certs.is_empty() {
        return Err(err(&files.cert, "no PEM certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| err(&files.key, e))?;
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(&files.ca).map_err(|e| err(&files.ca, e))? {
        roots
            .add(ca.map_err(|e| err(&files.ca, e))?)
            .map_err(|e| err(&files.ca, e))?;
    }
    if roots.is_empty() {
        return Err(err(&files.ca, "no PEM CA certificate in the file"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| err(&files.ca, e))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err(&files.cert, e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| err(&files.key, e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

fn stamps(files: &TlsFiles) -> [Option<SystemTime>; 3] {
    [&files.cert, &files.key, &files.ca]
        .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
}

/// The accepted TLS connections of `listener`, for tonic's `serve_with_incoming`. Handshakes
/// run in their own tasks (a slow client cannot stall others) and fail for clients without a
/// certificate the CA signed; those never reach the service.
pub fn incoming(
    listener: TcpListener,
    files: TlsFiles,
    first: Arc<ServerConfig>,
    mut stop: watch::Receiver<bool>,
) -> tokio_stream::wrappers::ReceiverStream<
    Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>, std::io::Error>,
> {
    let current = Arc::new(RwLock::new(first));
    let (tx, rx) = mpsc::channel(16);
    // Reload when a file changes.
    {
        let current = current.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let mut seen = stamps(&files);
            loop {
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
                let now = stamps(&files);
                if now == seen {
                    continue;
                }
                seen = now;
                match load(&files) {
                    Ok(c) => {
                        *current.write().unwrap_or_else(PoisonError::into_inner) = c;
                        tracing::info!("control API TLS material reloaded");
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "new TLS material refused; keeping the old")
                    }
                }
            }
        });
    }
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = stop.changed() => return,
                a = listener.accept() => a,
            };
            let (tcp, from) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "control API accept failed");
                    continue;
                }
            };
            let config = current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let handshake = TlsAcceptor::from(config).accept(tcp);
                match tokio::time::timeout(Duration::from_secs(10), handshake).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(%from, error = %e, "control API client refused (TLS)")
                    }
                    Err(_) => tracing::warn!(%from, "control API client refused (TLS timeout)"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
