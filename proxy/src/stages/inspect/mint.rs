//! Certificate minting for TLS inspection: one leaf per host, signed by the
//! inspection CA, held in a bounded cache. Concurrent first requests for a
//! host wait on one mint (single flight).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Registry};
use tokio::sync::OnceCell;

use crate::pki::CaMaterial;

/// A ready-to-use rustls server config for one host (cert + ALPN).
pub type HostConfig = Arc<rustls::ServerConfig>;

struct Entry {
    cell: Arc<OnceCell<HostConfig>>,
    /// Re-mint after this, well before the certificate expires.
    fresh_until: Instant,
}

pub struct MintMetrics {
    pub cache_size: IntGauge,
    pub hits: IntCounter,
    pub misses: IntCounter,
    pub mint_seconds: Histogram,
}

impl MintMetrics {
    pub fn register(registry: &Registry) -> MintMetrics {
        let m = MintMetrics {
            cache_size: IntGauge::new(
                "komugate_inspect_cert_cache_size",
                "Minted certificates held in the cache",
            )
            .expect("metric"),
            hits: IntCounter::new(
                "komugate_inspect_cert_cache_hits_total",
                "Inspection certificates served from the cache",
            )
            .expect("metric"),
            misses: IntCounter::new(
                "komugate_inspect_cert_cache_misses_total",
                "Inspection certificates minted",
            )
            .expect("metric"),
            mint_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "komugate_inspect_cert_mint_seconds",
                    "Time to mint one inspection certificate",
                )
                .buckets(vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05,
                ]),
            )
            .expect("metric"),
        };
        let _ = registry.register(Box::new(m.cache_size.clone()));
        let _ = registry.register(Box::new(m.hits.clone()));
        let _ = registry.register(Box::new(m.misses.clone()));
        let _ = registry.register(Box::new(m.mint_seconds.clone()));
        m
    }
}

pub struct CertMinter {
    ca: CaMaterial,
    validity: Duration,
    capacity: usize,
    cache: Mutex<(HashMap<String, Entry>, VecDeque<String>)>,
    metrics: MintMetrics,
}

impl CertMinter {
    pub fn new(ca: CaMaterial, validity: Duration, capacity: usize, metrics: MintMetrics) -> Self {
        CertMinter {
            ca,
            validity,
            capacity: capacity.max(1),
            cache: Mutex::new((HashMap::new(), VecDeque::new())),
            metrics,
        }
    }

    /// The server config presenting a certificate for `host` (lowercase
    /// name or IP literal), minting it on first use.
    pub async fn config_for(&self, host: &str) -> anyhow::Result<HostConfig> {
        let cell = {
            let mut guard = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            let (map, order) = &mut *guard;
            let now = Instant::now();
            match map.get(host) {
                Some(e) if e.fresh_until > now => {
                    if e.cell.initialized() {
                        self.metrics.hits.inc();
                    }
                    e.cell.clone()
                }
                _ => {
                    // Bounded: evict the oldest hosts first.
                    while map.len() >= self.capacity {
                        match order.pop_front() {
                            Some(old) => {
                                map.remove(&old);
                            }
                            None => break,
                        }
                    }
                    let cell = Arc::new(OnceCell::new());
                    // Refresh at 3/4 of the validity so a cached cert is never near expiry.
                    let fresh_until = now + self.validity.mul_f64(0.75);
                    if map
                        .insert(
                            host.to_string(),
                            Entry {
                                cell: cell.clone(),
                                fresh_until,
                            },
                        )
                        .is_none()
                    {
                        order.push_back(host.to_string());
                    }
                    self.metrics.cache_size.set(map.len() as i64);
                    cell
                }
            }
        };
        let config = cell
            .get_or_try_init(|| async {
                self.metrics.misses.inc();
                let started = Instant::now();
                let config = self.mint(host);
                self.metrics
                    .mint_seconds
                    .observe(started.elapsed().as_secs_f64());
                config
            })
            .await?;
        Ok(config.clone())
    }

    fn mint(&self, host: &str) -> anyhow::Result<HostConfig> {
        let validity = time::Duration::try_from(self.validity).unwrap_or(time::Duration::days(7));
        let (cert, key) = self.ca.mint_inspection_leaf(host, validity)?;
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    pub fn ca_cert_der(&self) -> &rustls_pki_types::CertificateDer<'static> {
        self.ca.cert_der()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minter(capacity: usize) -> CertMinter {
        let ca = crate::pki::generate_ca("komugate inspection CA").unwrap();
        CertMinter::new(
            ca,
            Duration::from_secs(7 * 24 * 3600),
            capacity,
            MintMetrics::register(&Registry::new()),
        )
    }

    #[tokio::test]
    async fn serials_are_unique_and_names_right() {
        let m = minter(1000);
        let mut serials = std::collections::HashSet::new();
        for i in 0..100 {
            let host = format!("host{i}.example");
            let config = m.config_for(&host).await.unwrap();
            let der = certificate_of(&config, &host);
            let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
            assert!(
                serials.insert(cert.raw_serial().to_vec()),
                "duplicate serial"
            );
            let san = cert.subject_alternative_name().unwrap().unwrap();
            assert!(format!("{:?}", san.value.general_names).contains(&host));
            assert!(
                cert.issuer()
                    .to_string()
                    .contains("CN=komugate inspection CA"),
                "{}",
                cert.issuer()
            );
            let validity = cert.validity();
            let secs = validity.not_after.timestamp() - validity.not_before.timestamp();
            assert!(
                (7 * 86400..=7 * 86400 + 3700).contains(&secs),
                "validity {secs}s"
            );
        }
        assert_eq!(m.metrics.misses.get(), 100);
    }

    #[tokio::test]
    async fn concurrent_first_requests_mint_once_and_repeats_hit() {
        let m = Arc::new(minter(1000));
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let m = m.clone();
                tokio::spawn(async move { m.config_for("same.example").await.unwrap() })
            })
            .collect();
        let mut configs = Vec::new();
        for t in tasks {
            configs.push(t.await.unwrap());
        }
        assert_eq!(m.metrics.misses.get(), 1, "single flight");
        assert!(configs.iter().all(|c| Arc::ptr_eq(c, &configs[0])));
        m.config_for("same.example").await.unwrap();
        assert!(m.metrics.hits.get() >= 1);
    }

    #[tokio::test]
    async fn cache_is_bounded() {
        let m = minter(10);
        for i in 0..25 {
            m.config_for(&format!("h{i}.example")).await.unwrap();
        }
        assert_eq!(m.metrics.cache_size.get(), 10);
        // The oldest entries were evicted: asking again mints anew.
        m.config_for("h0.example").await.unwrap();
        assert_eq!(m.metrics.misses.get(), 26);
    }

    /// Does a real handshake with the config and returns the leaf it presents.
    fn certificate_of(config: &HostConfig, host: &str) -> Vec<u8> {
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny))
        .with_no_client_auth();
        let mut c = rustls::ClientConnection::new(
            Arc::new(client),
            rustls_pki_types::ServerName::try_from(host.to_string()).unwrap(),
        )
        .unwrap();
        let mut s = rustls::ServerConnection::new(config.clone()).unwrap();
        for _ in 0..10 {
            let mut buf = Vec::new();
            c.write_tls(&mut buf).unwrap();
            s.read_tls(&mut &buf[..]).unwrap();
            s.process_new_packets().unwrap();
            let mut buf = Vec::new();
            s.write_tls(&mut buf).unwrap();
            c.read_tls(&mut &buf[..]).unwrap();
            c.process_new_packets().unwrap();
            if !c.is_handshaking() {
                break;
            }
        }
        c.peer_certificates().unwrap()[0].to_vec()
    }

    #[derive(Debug)]
    struct AcceptAny;
    impl rustls::client::danger::ServerCertVerifier for AcceptAny {
        fn verify_server_cert(
            &self,
            _: &rustls_pki_types::CertificateDer<'_>,
            _: &[rustls_pki_types::CertificateDer<'_>],
            _: &rustls_pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls_pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &rustls_pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &rustls_pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
}
