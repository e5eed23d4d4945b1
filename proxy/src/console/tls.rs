//! TLS for the admin listener (console, API, metrics): the gateway's server
//! certificate (`[tls] server_cert` / `server_key`, from `komugate pki
//! init`). Plain HTTP only on a loopback address, unless `[admin] tls = "on"`.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio_rustls::TlsAcceptor;

use crate::config::Config;

/// Does the admin listener on `addr` speak TLS?
pub fn wanted(config: &Config, addr: SocketAddr) -> bool {
    config.admin.tls == "on" || !addr.ip().is_loopback()
}

/// The acceptor for the admin listener bound to `addr`, or `None` for plain HTTP.
pub fn acceptor(config: &Config, addr: SocketAddr) -> Result<Option<TlsAcceptor>> {
    if !wanted(config, addr) {
        return Ok(None);
    }
    let cert = config.data_path(&config.tls.server_cert);
    let key = config.data_path(&config.tls.server_key);
    let why = || {
        format!(
            "the admin listener {addr} needs TLS (it is not on loopback, or [admin] tls = \"on\"): [tls] server_cert {} / server_key {}; create them with `komugate pki init`",
            cert.display(),
            key.display()
        )
    };
    let chain = crate::pki::load_certs(&cert).with_context(why)?;
    let private = crate::pki::load_private_key(&key).with_context(why)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("selecting TLS versions")?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .with_context(why)?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(server))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_only_on_loopback() {
        let mut c = Config::embedded_default();
        assert!(!wanted(&c, "127.0.0.1:9090".parse().unwrap()));
        assert!(!wanted(&c, "[::1]:9090".parse().unwrap()));
        assert!(wanted(&c, "0.0.0.0:9090".parse().unwrap()));
        assert!(wanted(&c, "10.0.0.5:9090".parse().unwrap()));
        c.admin.tls = "on".into();
        assert!(wanted(&c, "127.0.0.1:9090".parse().unwrap()));
        let dir = tempfile::tempdir().unwrap();
        c.data.dir = dir.path().to_path_buf();
        let e = acceptor(&c, "127.0.0.1:9090".parse().unwrap())
            .err()
            .unwrap();
        assert!(format!("{e:#}").contains("komugate pki init"), "{e:#}");
    }
}
