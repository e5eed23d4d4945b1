//! TLS inspection of CONNECT tunnels the decision marks `inspect`: the
//! pieces the flow's inspected-tunnel order uses (`crate::flow`).
//!
//! The ClientHello is read first ([`peek_client_hello`]: SNI, ALPN) without
//! consuming it; policy decides again on the SNI; then the client is
//! answered with a certificate minted for that name by the inspection CA
//! ([`Inspector::accept`]), and every inner request (HTTP/1.1 or HTTP/2 by
//! ALPN) goes through the same flow as plain requests. Upstream TLS is
//! verified strictly; an invalid upstream certificate yields the block page
//! inside the inspected session.

pub mod mint;
pub mod rewind;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use prometheus::{IntCounterVec, Opts};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use crate::config::{Config, NonTlsAction};
use crate::metrics::Metrics;
use mint::{CertMinter, MintMetrics};
use rewind::{CountingIo, Rewind};

/// Largest ClientHello we buffer while peeking (several records are allowed).
const MAX_CLIENT_HELLO: usize = 64 * 1024;

pub struct Inspector {
    pub minter: CertMinter,
    non_tls: NonTlsAction,
    client_rejects: IntCounterVec,
}

impl Inspector {
    pub fn new(config: &Config, metrics: &Metrics) -> anyhow::Result<Inspector> {
        let cert = config.data_path(&config.inspect.ca_cert);
        let key = config.data_path(&config.inspect.ca_key);
        let ca = crate::pki::CaMaterial::load(&cert, &key)
            .context("cannot load the inspection CA ([inspect] ca_cert / ca_key)")?;
        let client_rejects = IntCounterVec::new(
            Opts::new(
                "komugate_inspect_client_rejects_total",
                "Clients that aborted the handshake with a minted certificate (pinning?), by SNI",
            ),
            &["sni"],
        )?;
        let _ = metrics.registry.register(Box::new(client_rejects.clone()));
        Ok(Inspector {
            minter: CertMinter::new(
                ca,
                Duration::from_secs(config.inspect.leaf_validity_hours.max(1) * 3600),
                config.inspect.cache_entries,
                MintMetrics::register(&metrics.registry),
            ),
            non_tls: config.inspect.non_tls,
            client_rejects,
        })
    }
}

/// What the peek at the first client bytes found.
pub struct Hello {
    /// Every byte read so far, replayed to whoever handles the tunnel next.
    pub bytes: Vec<u8>,
    pub sni: Option<String>,
    pub offers_h2: bool,
}

pub enum Peek {
    Tls(Hello),
    NotTls(Vec<u8>),
}

/// The first bytes of a tunnel, within `timeout`: a ClientHello or bytes
/// that are not TLS. `Err`: why there are none (for the record).
pub async fn peek_client_hello<S: AsyncRead + Unpin>(
    client: &mut S,
    timeout: Duration,
) -> Result<Peek, String> {
    match tokio::time::timeout(timeout, read_client_hello(client)).await {
        Ok(Ok(Some(peek))) => Ok(peek),
        Ok(Ok(None)) => Err("client closed the tunnel before sending anything".into()),
        Ok(Err(e)) => Err(format!("reading the ClientHello: {e}")),
        Err(_) => Err("no ClientHello within the header timeout".into()),
    }
}

/// Reads until a complete ClientHello is buffered (rustls parses it);
/// `None`: the client closed without sending anything.
async fn read_client_hello<S: AsyncRead + Unpin>(client: &mut S) -> std::io::Result<Option<Peek>> {
    let mut bytes = Vec::with_capacity(1024);
    let mut acceptor = rustls::server::Acceptor::default();
    let mut chunk = [0u8; 4096];
    loop {
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok((!bytes.is_empty()).then_some(Peek::NotTls(bytes)));
        }
        bytes.extend_from_slice(&chunk[..n]);
        if bytes[0] != 0x16 {
            return Ok(Some(Peek::NotTls(bytes)));
        }
        let mut fresh = &chunk[..n];
        while !fresh.is_empty() {
            if acceptor.read_tls(&mut fresh).is_err() {
                return Ok(Some(Peek::NotTls(bytes)));
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let hello = accepted.client_hello();
                let sni = hello
                    .server_name()
                    .map(|s| s.trim_end_matches('.').to_ascii_lowercase());
                let offers_h2 = hello
                    .alpn()
                    .map(|mut a| a.any(|p| p == b"h2"))
                    .unwrap_or(false);
                return Ok(Some(Peek::Tls(Hello {
                    bytes,
                    sni,
                    offers_h2,
                })));
            }
            Ok(None) => {}
            Err(_) => return Ok(Some(Peek::NotTls(bytes))),
        }
        if bytes.len() > MAX_CLIENT_HELLO {
            return Ok(Some(Peek::NotTls(bytes)));
        }
    }
}

/// A client TLS session with a minted certificate, and the byte counters
/// of the raw client stream under it.
pub struct Accepted<S> {
    pub tls: tokio_rustls::server::TlsStream<CountingIo<Rewind<S>>>,
    /// The client negotiated HTTP/2.
    pub h2: bool,
    pub read: Arc<AtomicU64>,
    pub written: Arc<AtomicU64>,
}

impl Inspector {
    /// What to do with bytes that are not TLS (`[inspect] non_tls`).
    pub fn non_tls(&self) -> NonTlsAction {
        self.non_tls
    }

    /// Answers the client's ClientHello (`hello`, already read) with a
    /// certificate minted for `name`. `Err`: why not (for the record).
    pub async fn accept<S>(
        &self,
        name: &str,
        hello: Vec<u8>,
        client: S,
        timeout: Duration,
    ) -> Result<Accepted<S>, String>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let config = self
            .minter
            .config_for(name)
            .await
            .map_err(|e| format!("minting a certificate for {name}: {e:#}"))?;
        let counting = CountingIo::new(Rewind::new(hello, client));
        let (read, written) = (counting.read.clone(), counting.written.clone());
        let handshake = async {
            let start = tokio_rustls::LazyConfigAcceptor::new(
                rustls::server::Acceptor::default(),
                counting,
            )
            .await?;
            start.into_stream(config).await
        };
        match tokio::time::timeout(timeout, handshake).await {
            Ok(Ok(tls)) => {
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                Ok(Accepted {
                    tls,
                    h2,
                    read,
                    written,
                })
            }
            Ok(Err(e)) => {
                // The client refused our certificate (pinning, or the CA is not deployed).
                self.client_rejects.with_label_values(&[name]).inc();
                Err(format!(
                    "client rejected the inspection certificate for {name}: {e}"
                ))
            }
            Err(_) => Err("TLS handshake with the client timed out".into()),
        }
    }
}
