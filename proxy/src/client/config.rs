//! `komugate client` settings: command-line flags and the equivalent TOML
//! file (for deployment by device management). Flags override the file.
//!
//! ```toml
//! server = "gw.example.jp:8443"        # the gateway's mTLS listener
//! # server_name = "gw.example.jp"      # TLS name (default: the host of `server`)
//! cert = "C:/ProgramData/komugate/device.pem"
//! key = "C:/ProgramData/komugate/device.key"
//! ca = "C:/ProgramData/komugate/inspect-ca.pem"   # CA of the gateway's certificate
//! http = "127.0.0.1:3128"              # local HTTP proxy + /proxy.pac ("" = off)
//! socks = "127.0.0.1:1080"             # local SOCKS5 ("" = off)
//! dns = ""                             # local DNS (UDP) forwarded over DoH, e.g. "127.0.0.1:5353"
//! beacons = ["http://10.20.0.5:8740/assertion"]   # site beacons to ask for assertions
//! keepalive_secs = 20                  # HTTP/2 PING interval
//! keepalive_timeout_secs = 10          # no PING answer for this long = reconnect
//! connect_timeout_ms = 3000
//! backoff_min_ms = 200                 # reconnect backoff (doubles, with jitter)
//! backoff_max_ms = 15000
//! beacon_refresh_secs = 60             # assertions are valid 5 min; refresh every minute
//! sign_in = "browser"                  # sign the user in at start: "browser", "device" (code), "none"
//! oidc_ca = ""                         # extra CA (PEM) for the OpenID provider's TLS
//! posture = true                       # send signed posture reports
//! posture_interval_secs = 300
//! posture_file = ""                    # facts from device management (JSON), override the collected ones
//! key_store = "pem"                    # "pem" (the key file) or "pkcs11" (a key in a token)
//! [tun]                                # full-device mode (Linux; docs/client-tun.md)
//! enabled = false                      # also --tun
//! name = "komugate0"
//! address = "198.18.0.1"               # the device's address (/30)
//! mtu = 9000                           # local only: the flows end in komugate's own stack
//! captive_portal_hosts = ["detectportal.firefox.com", "connectivitycheck.gstatic.com", "www.msftconnecttest.com", "captive.apple.com"]
//! captive_portal_secs = 300            # direct while the gateway is unreachable, this long
//! [pkcs11]                             # with key_store = "pkcs11"
//! module = "/usr/lib/softhsm/libsofthsm2.so"
//! token_label = "komugate"
//! key_label = "device"
//! pin_file = "C:/ProgramData/komugate/pin"   # the user PIN, one line
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientConfig {
    pub server: String,
    pub server_name: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    pub http: String,
    pub socks: String,
    pub dns: String,
    pub beacons: Vec<String>,
    pub keepalive_secs: u64,
    pub keepalive_timeout_secs: u64,
    pub connect_timeout_ms: u64,
    pub backoff_min_ms: u64,
    pub backoff_max_ms: u64,
    pub beacon_refresh_secs: u64,
    /// Sign the user in at start: `browser`, `device` or `none`.
    pub sign_in: String,
    /// Extra CA certificates (PEM) for the OpenID provider's TLS.
    pub oidc_ca: PathBuf,
    /// Send signed posture reports on the link.
    pub posture: bool,
    pub posture_interval_secs: u64,
    /// Facts written by device management (JSON, the fields of a posture
    /// report's facts); those present override the collected ones.
    pub posture_file: PathBuf,
    /// `pem` or `pkcs11`.
    pub key_store: String,
    pub pkcs11: Pkcs11Config,
    /// Full-device mode (`[tun]`, `--tun`).
    pub tun: TunConfig,
}

/// `[pkcs11]`: the device key inside a PKCS#11 token.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Pkcs11Config {
    /// The token's PKCS#11 module (shared library).
    pub module: PathBuf,
    pub token_label: String,
    /// The private key object's label (CKA_LABEL).
    pub key_label: String,
    /// A file holding the user PIN (one line).
    pub pin_file: PathBuf,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            server: String::new(),
            server_name: String::new(),
            cert: PathBuf::new(),
            key: PathBuf::new(),
            ca: PathBuf::new(),
            http: "127.0.0.1:3128".into(),
            socks: "127.0.0.1:1080".into(),
            dns: String::new(),
            beacons: Vec::new(),
            keepalive_secs: 20,
            keepalive_timeout_secs: 10,
            connect_timeout_ms: 3000,
            backoff_min_ms: 200,
            backoff_max_ms: 15_000,
            beacon_refresh_secs: 60,
            sign_in: "none".into(),
            oidc_ca: PathBuf::new(),
            posture: true,
            posture_interval_secs: 300,
            posture_file: PathBuf::new(),
            key_store: "pem".into(),
            pkcs11: Pkcs11Config::default(),
            tun: TunConfig::default(),
        }
    }
}

/// `[tun]` in the client configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TunConfig {
    /// Full-device mode (also `--tun`).
    pub enabled: bool,
    /// Interface name.
    pub name: String,
    /// The device's address (a /30 around it is the device's network).
    pub address: std::net::Ipv4Addr,
    pub mtu: u16,
    /// Host names whose DNS questions and HTTP(S) go direct while the link
    /// is down, for `captive_portal_secs` (hotel and café Wi-Fi sign-in).
    pub captive_portal_hosts: Vec<String>,
    pub captive_portal_secs: u64,
}

impl Default for TunConfig {
    fn default() -> Self {
        TunConfig {
            enabled: false,
            name: "komugate0".into(),
            // RFC 2544 benchmarking range: not used on real networks.
            address: std::net::Ipv4Addr::new(198, 18, 0, 1),
            // The device's packets never reach a wire: TCP ends in the
            // user-space stack and UDP payloads ride CONNECT-UDP, so the
            // MTU only sets the packet size on the device. 9000 instead of
            // 1500: a download crosses the device in a sixth of the packets
            // (benches/RESULTS.md, full-device mode: 1.75x the throughput).
            mtu: 9000,
            captive_portal_hosts: [
                "detectportal.firefox.com",
                "connectivitycheck.gstatic.com",
                "www.msftconnecttest.com",
                "captive.apple.com",
            ]
            .map(String::from)
            .to_vec(),
            captive_portal_secs: 300,
        }
    }
}

/// `komugate client` arguments.
#[derive(Debug, Default, clap::Args)]
pub struct ClientArgs {
    /// Client configuration file (TOML; the flags below override it).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The gateway's mTLS proxy listener, HOST:PORT.
    #[arg(long)]
    pub server: Option<String>,
    /// TLS server name of the gateway (default: the host of --server).
    #[arg(long)]
    pub server_name: Option<String>,
    /// Device certificate (PEM).
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// Device private key (PEM).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// CA certificate(s) the gateway's certificate chains to (PEM).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Local HTTP proxy (and PAC at /proxy.pac) address; "" disables it.
    #[arg(long)]
    pub http: Option<String>,
    /// Local SOCKS5 address; "" disables it.
    #[arg(long)]
    pub socks: Option<String>,
    /// Local DNS (UDP) address forwarded to the gateway's DoH; "" disables it.
    #[arg(long)]
    pub dns: Option<String>,
    /// Site beacon URL (repeatable), e.g. http://10.20.0.5:8740/assertion.
    #[arg(long = "beacon")]
    pub beacons: Vec<String>,
    /// Sign the user in at start: browser, device (code shown) or none.
    #[arg(long)]
    pub sign_in: Option<String>,
    /// Sign the user out of this device at the gateway and exit (a running
    /// client's sign-in ends too).
    #[arg(long, conflicts_with = "sign_in")]
    pub sign_out: bool,
    /// Full-device mode: a TUN device carries all of the device's traffic
    /// through the gateway, failing closed while it is unreachable (root).
    #[arg(long)]
    pub tun: bool,
}

impl ClientConfig {
    pub fn parse(text: &str, origin: &str) -> Result<ClientConfig> {
        let c: ClientConfig = toml::from_str(text).map_err(|e| {
            let place = match e.span() {
                Some(span) => {
                    let (line, col) = crate::config::line_col(text, span.start);
                    format!("{origin}:{line}:{col}")
                }
                None => origin.to_string(),
            };
            anyhow!("{place}: invalid client configuration: {}", e.message())
        })?;
        Ok(c)
    }

    pub fn load(path: &Path) -> Result<ClientConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read client configuration {}", path.display()))?;
        let mut c = ClientConfig::parse(&text, &path.display().to_string())?;
        // Relative certificate paths are relative to the configuration file.
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut c.cert,
            &mut c.key,
            &mut c.ca,
            &mut c.oidc_ca,
            &mut c.posture_file,
            &mut c.pkcs11.pin_file,
        ] {
            if !p.as_os_str().is_empty() && p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(c)
    }

    /// The file (if any) with the flags applied, validated.
    pub fn from_args(a: &ClientArgs) -> Result<ClientConfig> {
        let mut c = match &a.config {
            Some(p) => ClientConfig::load(p)?,
            None => ClientConfig::default(),
        };
        if let Some(v) = &a.server {
            c.server = v.clone();
        }
        if let Some(v) = &a.server_name {
            c.server_name = v.clone();
        }
        if let Some(v) = &a.cert {
            c.cert = v.clone();
        }
        if let Some(v) = &a.key {
            c.key = v.clone();
        }
        if let Some(v) = &a.ca {
            c.ca = v.clone();
        }
        if let Some(v) = &a.http {
            c.http = v.clone();
        }
        if let Some(v) = &a.socks {
            c.socks = v.clone();
        }
        if let Some(v) = &a.dns {
            c.dns = v.clone();
        }
        if !a.beacons.is_empty() {
            c.beacons = a.beacons.clone();
        }
        if let Some(v) = &a.sign_in {
            c.sign_in = v.clone();
        }
        if a.tun {
            c.tun.enabled = true;
        }
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<()> {
        if self.server.is_empty() {
            bail!("no gateway: pass --server HOST:PORT (or `server = \"gw.example.jp:8443\"` in the client configuration)");
        }
        let (host, port) = split_host_port(&self.server)?;
        if host.is_empty() || port == 0 {
            bail!("--server {:?} is not HOST:PORT", self.server);
        }
        let key_in_file = match self.key_store.as_str() {
            "pem" => true,
            "pkcs11" => {
                let p = &self.pkcs11;
                if p.module.as_os_str().is_empty()
                    || p.token_label.is_empty()
                    || p.key_label.is_empty()
                    || p.pin_file.as_os_str().is_empty()
                {
                    bail!("key_store = \"pkcs11\" needs [pkcs11] module, token_label, key_label and pin_file");
                }
                false
            }
            other => bail!("key_store = {other:?}: use \"pem\" or \"pkcs11\""),
        };
        for (flag, p, needed) in [
            ("--cert", &self.cert, true),
            ("--key", &self.key, key_in_file),
            ("--ca", &self.ca, true),
        ] {
            if needed && p.as_os_str().is_empty() {
                bail!("{flag} is required (device certificate, its key, and the CA of the gateway's certificate)");
            }
        }
        if !matches!(self.sign_in.as_str(), "browser" | "device" | "none") {
            bail!("--sign-in {:?}: use browser, device or none", self.sign_in);
        }
        for (flag, a) in [
            ("--http", &self.http),
            ("--socks", &self.socks),
            ("--dns", &self.dns),
        ] {
            if !a.is_empty() && a.parse::<SocketAddr>().is_err() {
                bail!("{flag} {a:?} is not an address like 127.0.0.1:3128 (\"\" disables it)");
            }
        }
        for b in &self.beacons {
            if !b.starts_with("http://") || b.parse::<http::Uri>().is_err() {
                bail!("beacon URL {b:?} is not like http://10.20.0.5:8740/assertion");
            }
        }
        if self.keepalive_secs == 0
            || self.keepalive_timeout_secs == 0
            || self.backoff_min_ms == 0
            || self.backoff_max_ms < self.backoff_min_ms
        {
            bail!("keepalive_secs, keepalive_timeout_secs and backoff_min_ms must be positive and backoff_max_ms >= backoff_min_ms");
        }
        Ok(())
    }

    pub fn tls_name(&self) -> String {
        if !self.server_name.is_empty() {
            return self.server_name.clone();
        }
        split_host_port(&self.server)
            .map(|(h, _)| h)
            .unwrap_or_default()
    }

    /// Where the device key is, for messages.
    pub fn key_description(&self) -> String {
        match self.key_store.as_str() {
            "pkcs11" => format!(
                "PKCS#11 key {:?} in token {:?}",
                self.pkcs11.key_label, self.pkcs11.token_label
            ),
            _ => self.key.display().to_string(),
        }
    }

    pub fn keepalive(&self) -> Duration {
        Duration::from_secs(self.keepalive_secs)
    }
    pub fn keepalive_timeout(&self) -> Duration {
        Duration::from_secs(self.keepalive_timeout_secs)
    }
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms.max(1))
    }
}

/// `host:port` or `[v6]:port` → (host without brackets, port).
pub fn split_host_port(s: &str) -> Result<(String, u16)> {
    let (h, p) = s
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("{s:?} is not HOST:PORT"))?;
    let port: u16 = p
        .parse()
        .map_err(|_| anyhow!("{s:?}: port {p:?} is not a number"))?;
    Ok((
        h.trim_start_matches('[').trim_end_matches(']').to_string(),
        port,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_and_flags() {
        let c = ClientConfig::parse("server = \"gw:8443\"\ncert = \"d.pem\"\nkey = \"d.key\"\nca = \"ca.pem\"\nbeacons = [\"http://10.0.0.1:8740/assertion\"]\n", "c.toml").unwrap();
        c.validate().unwrap();
        assert_eq!(c.tls_name(), "gw");
        assert_eq!(c.http, "127.0.0.1:3128");
        let err = ClientConfig::parse("server = \"gw:8443\"\nsockz = \"x\"\n", "c.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("c.toml:2:1") && err.contains("sockz"), "{err}");
        let err = ClientConfig::from_args(&ClientArgs {
            server: Some("gw:8443".into()),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("--cert"), "{err}");
    }
}
