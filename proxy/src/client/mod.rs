//! `komugate client`: the laptop side of the anywhere tunnel.
//!
//! One mTLS HTTP/2 connection to the gateway ([`link::Link`]) carries every
//! local connection: CONNECT (from the local HTTP proxy or SOCKS5) as an
//! HTTP/2 CONNECT stream (RFC 9113 §8.5), plain `http://` requests as
//! HTTP/2 requests (so the gateway still sees and filters the full URL),
//! DNS as DoH requests (RFC 8484). Site assertions from a reachable beacon
//! ride along in a header (see [`crate::beacon`]).

pub mod config;
pub mod keystore;
pub mod link;
pub mod local;
pub mod pkcs11;
pub mod posture;
pub mod renew;
pub mod signin;
#[cfg(target_os = "linux")]
pub mod tun;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;

pub use config::{ClientArgs, ClientConfig};
pub use link::Link;

/// A started client.
pub struct RunningClient {
    pub http: Option<SocketAddr>,
    pub socks: Option<SocketAddr>,
    pub dns: Option<SocketAddr>,
    pub link: Arc<Link>,
    /// Full-device mode's device (`--tun`); dropping it removes its routes.
    #[cfg(target_os = "linux")]
    pub tun: Option<tun::Tun>,
    shutdown: CancellationToken,
}

impl RunningClient {
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }
}

impl Drop for RunningClient {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Binds the local listeners and starts the gateway connection.
pub async fn start(cfg: ClientConfig) -> Result<RunningClient> {
    cfg.validate()?;
    let link = Arc::new(Link::new(cfg.clone())?);
    let shutdown = CancellationToken::new();
    let mut running = RunningClient {
        http: None,
        socks: None,
        dns: None,
        link: link.clone(),
        #[cfg(target_os = "linux")]
        tun: None,
        shutdown: shutdown.clone(),
    };
    if let Some(addr) = crate::config::Config::listen_addr(&cfg.http) {
        let l = TcpListener::bind(addr).await.with_context(|| {
            format!("cannot listen on {addr} (--http); is another proxy using the port?")
        })?;
        let bound = l.local_addr()?;
        running.http = Some(bound);
        tokio::spawn(local::serve_http(
            link.clone(),
            l,
            format!("PROXY {bound}"),
            shutdown.clone(),
        ));
    }
    if let Some(addr) = crate::config::Config::listen_addr(&cfg.socks) {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (--socks)"))?;
        running.socks = Some(l.local_addr()?);
        tokio::spawn(local::serve_socks(link.clone(), l, shutdown.clone()));
    }
    if let Some(addr) = crate::config::Config::listen_addr(&cfg.dns) {
        let s = UdpSocket::from_std(
            local::bind_udp(addr)
                .with_context(|| format!("cannot listen on {addr}/udp (--dns)"))?,
        )?;
        running.dns = Some(s.local_addr()?);
        tokio::spawn(local::serve_dns(link.clone(), s, shutdown.clone()));
    }
    if cfg.tun.enabled {
        #[cfg(target_os = "linux")]
        {
            let t = tun::start(link.clone(), &cfg.tun, shutdown.clone()).await?;
            let _ = link.tun_stats.set(t.stats.clone());
            running.tun = Some(t);
        }
        #[cfg(not(target_os = "linux"))]
        anyhow::bail!("--tun (full-device mode) is not available on this platform yet: use the local proxy (--http / --socks)");
    }
    tokio::spawn(link.clone().run(shutdown.clone()));
    tokio::spawn(renew::run(link.clone(), shutdown.clone()));
    Ok(running)
}

/// `komugate client --sign-out`: connects as the device, ends the user's
/// sign-in at the gateway (a running client's token and its renewals are
/// refused after): the device id, and whether a user was signed in.
pub async fn sign_out_once(cfg: ClientConfig) -> Result<(String, bool)> {
    cfg.validate()?;
    let link = Arc::new(Link::new(cfg.clone())?);
    let shutdown = CancellationToken::new();
    tokio::spawn(link.clone().run(shutdown.clone()));
    let deadline = tokio::time::Instant::now() + cfg.connect_timeout() * 4;
    while !link.is_up() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let r = link.sign_out().await;
    shutdown.cancel();
    Ok((link.device_id().to_string(), r?))
}

/// `komugate client`: runs until SIGTERM / Ctrl-C.
pub fn run_client(args: ClientArgs) -> Result<()> {
    let cfg = ClientConfig::from_args(&args)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    if args.sign_out {
        return rt.block_on(async move {
            match sign_out_once(cfg).await? {
                (device, true) => println!("サインアウトしました / signed out ({device})"),
                (device, false) => println!(
                    "サインインしている利用者はいませんでした / nobody was signed in ({device})"
                ),
            }
            Ok(())
        });
    }
    rt.block_on(async move {
        let running = start(cfg.clone()).await?;
        println!(
            "komugate client for device {} → gateway {}",
            running.link.device_id(),
            cfg.server
        );
        if let Some(a) = running.http {
            println!("  HTTP proxy   http://{a}   PAC: http://{a}/proxy.pac");
        }
        if let Some(a) = running.socks {
            println!("  SOCKS5       socks5h://{a}");
        }
        if let Some(a) = running.dns {
            println!("  DNS          {a} (udp) → gateway DoH");
        }
        #[cfg(target_os = "linux")]
        if let Some(t) = &running.tun {
            println!(
                "  full device  {} (all traffic; fails closed while the gateway is unreachable)",
                t.name
            );
        }
        for b in &cfg.beacons {
            println!("  site beacon  {b}");
        }
        if cfg.sign_in != "none" {
            let opener = signin::default_opener(cfg.sign_in == "browser");
            match signin::sign_in(&running.link, &cfg, &opener).await {
                Ok(v) => println!(
                    "  signed in    {} ({})",
                    v["user"].as_str().unwrap_or("?"),
                    v["groups"]
                        .as_array()
                        .map(|g| g
                            .iter()
                            .filter_map(|x| x.as_str())
                            .collect::<Vec<_>>()
                            .join(", "))
                        .unwrap_or_default()
                ),
                Err(e) => eprintln!("  sign-in failed: {e:#} (device-only rules apply)"),
            }
        }
        wait_for_signal().await;
        // The next person at a shared desktop must not inherit the session.
        if cfg.sign_in != "none" {
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(3), running.link.sign_out())
                    .await;
        }
        running.shutdown();
        Ok(())
    })
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {},
                _ = tokio::signal::ctrl_c() => {},
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
