//! Helpers shared by the pki and device_auth tests: real TLS over loopback.

use std::fs;
use std::path::PathBuf;
use std::sync::Arc;

use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub fn tempdir(tag: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "komugate-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    ));
    let _ = fs::remove_dir_all(&d);
    d
}

/// Client config trusting `ca_pem` and presenting `client` (if any).
pub fn client_config(
    ca_der: &CertificateDer<'static>,
    client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    tls12_only: bool,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_der.clone()).unwrap();
    let versions: &[&'static rustls::SupportedProtocolVersion] = if tls12_only {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots);
    let mut cfg = match client {
        Some((chain, key)) => b.with_client_auth_cert(chain, key).unwrap(),
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(cfg)
}

/// What the server saw.
#[derive(Debug)]
pub enum ServerOutcome {
    Accepted {
        identity: crate::device_auth::DeviceIdentity,
        alpn: Option<Vec<u8>>,
        resumed: bool,
    },
    Refused {
        reason: &'static str,
        error: String,
    },
}

/// One real handshake over loopback TCP: server with `server_cfg`, client with
/// `client_cfg` connecting to `server_name`. Returns the server-side outcome and
/// whether the client managed to exchange application data.
pub async fn handshake(
    server_cfg: Arc<rustls::ServerConfig>,
    client_cfg: Arc<rustls::ClientConfig>,
    server_name: &str,
) -> (ServerOutcome, Result<(), String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(server_cfg);
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        match acceptor.accept(tcp).await {
            Ok(mut tls) => {
                let (_, conn) = tls.get_ref();
                let identity = crate::device_auth::identity_of(conn).unwrap();
                let alpn = conn.alpn_protocol().map(|p| p.to_vec());
                let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
                let mut buf = [0u8; 4];
                tls.read_exact(&mut buf).await.unwrap();
                tls.write_all(b"pong").await.unwrap();
                tls.shutdown().await.ok();
                ServerOutcome::Accepted {
                    identity,
                    alpn,
                    resumed,
                }
            }
            Err(e) => ServerOutcome::Refused {
                reason: crate::device_auth::handshake_failure_reason(&e),
                error: format!("{e}"),
            },
        }
    });
    let connector = tokio_rustls::TlsConnector::from(client_cfg);
    let name = rustls_pki_types::ServerName::try_from(server_name.to_string()).unwrap();
    let client = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let mut tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        if &buf != b"pong" {
            return Err("bad reply".to_string());
        }
        Ok(())
    };
    let client_res = tokio::time::timeout(std::time::Duration::from_secs(10), client)
        .await
        .unwrap_or_else(|_| Err("client timed out".into()));
    let outcome = tokio::time::timeout(std::time::Duration::from_secs(10), server)
        .await
        .expect("server timed out")
        .expect("server task panicked");
    (outcome, client_res)
}
