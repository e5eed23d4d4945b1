//! A komugate gateway in a tempdir: its own PKI, a local DNS server,
//! listeners on port 0; plus mTLS client helpers and readers for the access
//! log and the metrics.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use komugate::config::{Config, DEFAULT_CONFIG};
use komugate::gateway::start::{BoundAddrs, Running};
use komugate::pki::{CaMaterial, IssuedCert};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::dns::{self, DnsServer};

/// Names the local DNS server answers (zone `test.`).
pub const DNS_RECORDS: &[(&str, Ipv4Addr)] = &[
    ("www.c4th.test.", Ipv4Addr::new(127, 0, 0, 1)),
    ("plain.test.", Ipv4Addr::new(127, 0, 0, 1)),
    ("localhost.rebind.test.", Ipv4Addr::new(127, 0, 0, 1)),
    ("blocked.test.", Ipv4Addr::new(127, 0, 0, 1)),
];

/// `[[egress.fixed]]` for `*.c4th.test` from 127.0.0.2 (the city's fixed
/// IP in the tests; `www.c4th.test` resolves to 127.0.0.1).
pub fn city_fixed_egress() -> komugate::config::FixedEgress {
    komugate::config::FixedEgress {
        name: "city-fixed-ip".into(),
        hosts: vec!["*.c4th.test".into()],
        source: "127.0.0.2".parse().unwrap(),
    }
}

pub struct TestGateway {
    pub running: Option<Running>,
    pub addrs: BoundAddrs,
    pub pki: PathBuf,
    pub access_log: PathBuf,
    pub dns: DnsServer,
    pub dir: tempfile::TempDir,
}

/// The test defaults: embedded default + loopback port 0 everywhere, PKI
/// in the tempdir, DNS at the local server, short timeouts, all ports
/// allowed, loopback destinations allowed (tests override what they test).
pub fn base_config(dir: &std::path::Path, dns: SocketAddr) -> Config {
    let mut c = Config::parse(DEFAULT_CONFIG, "<test>").expect("default config");
    c.data.dir = dir.to_path_buf();
    c.data.create_pki = false;
    c.data.demo_device = String::new();
    c.listen.plain = "127.0.0.1:0".into();
    c.listen.mtls = "127.0.0.1:0".into();
    c.listen.admin = "127.0.0.1:0".into();
    c.listen.plain_clients = vec!["127.0.0.0/8".parse().unwrap()];
    c.dns.servers = vec![dns];
    c.egress.connect_timeout_ms = 2000;
    c.egress.allow_destinations = vec!["127.0.0.0/8".parse().unwrap()];
    c.egress.fixed = Vec::new();
    c.decision.blocked_hosts = vec!["blocked.test".into(), ".gambling.test".into()];
    c.decision.allowed_ports = Vec::new();
    c.limits.header_read_timeout_ms = 3000;
    c.limits.idle_timeout_secs = 30;
    c.limits.drain_secs = 2;
    c
}

impl TestGateway {
    /// PKI + DNS + config (`tweak` sees the PKI dir already written), started.
    pub async fn start(tweak: impl FnOnce(&mut Config, &TestPki)) -> TestGateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = dir.path().join("pki");
        komugate::pki::init(&pki, &["localhost".into(), "127.0.0.1".into()], false)
            .expect("pki init");
        let dns = dns::start("test.", DNS_RECORDS).await;
        let mut config = base_config(dir.path(), dns.addr);
        tweak(&mut config, &TestPki { dir: pki.clone() });
        let access_log = config.data_path(&config.log.access_log);
        let running = komugate::gateway::start::start(config)
            .await
            .expect("gateway starts");
        let addrs = running.addrs.clone();
        TestGateway {
            running: Some(running),
            addrs,
            pki,
            access_log,
            dns,
            dir,
        }
    }

    pub fn plain(&self) -> SocketAddr {
        self.addrs.plain.expect("plain listener")
    }
    pub fn mtls(&self) -> SocketAddr {
        self.addrs.mtls.expect("mtls listener")
    }
    pub fn admin(&self) -> SocketAddr {
        self.addrs.admin.expect("admin listener")
    }
    pub fn tls(&self) -> TestPki {
        TestPki {
            dir: self.pki.clone(),
        }
    }

    pub fn metrics(&self) -> String {
        self.running
            .as_ref()
            .expect("running")
            .gateway
            .metrics
            .render()
    }

    /// Value of a metric sample with (at least) these labels; 0 if absent.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.metrics(), name, labels)
    }

    /// Waits (up to 3 s) for an access record matching `pred`.
    pub async fn access_record(
        &self,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let path = self.access_log.clone();
        super::eventually(Duration::from_secs(3), || {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let found = text
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| pred(v));
            async move { found }
        })
        .await
        .unwrap_or_else(|| {
            panic!(
                "no matching access record in {}:\n{}",
                path.display(),
                std::fs::read_to_string(&path).unwrap_or_default()
            )
        })
    }

    pub async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown(Duration::from_secs(2)).await;
        }
    }
}

/// Parses the Prometheus text format for one sample.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric, label_text) = match series.split_once('{') {
            Some((m, rest)) => (m, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        let ok = labels
            .iter()
            .all(|(k, v)| label_text.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
        if ok {
            return value.parse().unwrap_or(0.0);
        }
    }
    0.0
}

/// The gateway's PKI directory, for minting device certificates.
pub struct TestPki {
    pub dir: PathBuf,
}

impl TestPki {
    pub fn device_ca(&self) -> CaMaterial {
        CaMaterial::load(
            &self.dir.join("device-ca.pem"),
            &self.dir.join("device-ca.key"),
        )
        .expect("device CA")
    }

    /// A valid device certificate (1 day).
    pub fn device(&self, id: &str, groups: &[&str]) -> IssuedCert {
        let now = time::OffsetDateTime::now_utc();
        let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        self.device_ca()
            .issue_device(
                id,
                &groups,
                now - time::Duration::hours(1),
                now + time::Duration::days(1),
            )
            .expect("issue device")
    }

    /// The CA the gateway's server certificate chains to.
    pub fn server_ca(&self) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(self.dir.join("inspect-ca.pem")).expect("inspect CA")
    }

    /// Client config trusting the gateway and presenting `device` (if any).
    pub fn client_config(
        &self,
        device: Option<&IssuedCert>,
        alpn: &[&[u8]],
    ) -> Arc<rustls::ClientConfig> {
        client_config(self.server_ca(), device, alpn)
    }
}

pub fn client_config(
    server_ca: CertificateDer<'static>,
    device: Option<&IssuedCert>,
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(server_ca).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut cfg = match device {
        Some(d) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(d.cert_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(d.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

/// TLS connect to `addr` as "localhost" with `config`.
pub async fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    // As komugate's own client does (multiplexed_socket.rs): without it an
    // HTTP/2 frame written while a small earlier one (a WINDOW_UPDATE) is
    // unacknowledged waits for the peer's delayed ACK, ~40 ms.
    tcp.set_nodelay(true)?;
    tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// Starts `komugate client` with `cfg` and waits (5 s) for its link to be up.
pub async fn start_client(cfg: komugate::client::ClientConfig) -> komugate::client::RunningClient {
    let c = komugate::client::start(cfg).await.expect("client starts");
    let link = c.link.clone();
    super::eventually(Duration::from_secs(5), || {
        let up = link.is_up();
        async move { up.then_some(()) }
    })
    .await
    .expect("client connects to the gateway");
    c
}
