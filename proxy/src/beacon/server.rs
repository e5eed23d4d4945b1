//! The beacon itself (`komugate beacon`): a small HTTP server on the site's
//! LAN that hands out fresh assertions, and the `komugate pki beacon-key`
//! command that makes its key pair.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use super::token::{write_key_pair, BeaconKey};
use crate::common::unix_now;

/// Serves `GET /assertion?device=ID` (a fresh token, `text/plain`) and
/// `GET /healthz` until `shutdown` is cancelled.
pub async fn serve_beacon(
    listener: tokio::net::TcpListener,
    site: String,
    key: Arc<BeaconKey>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let site = Arc::new(site);
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => { tracing::warn!("beacon accept: {e}"); tokio::time::sleep(Duration::from_millis(50)).await; continue; }
            },
        };
        let (site, key) = (site.clone(), key.clone());
        tokio::spawn(async move {
            let limits = crate::listen::http::ServerLimits::local(Duration::from_secs(5));
            let handler = move |req: http::Request<hyper::body::Incoming>| {
                let flagged = crate::listen::framing_guard::flagged(&req);
                let resp = beacon_response(&site, &key, req.method(), req.uri(), peer, flagged);
                async move { Ok::<_, std::convert::Infallible>(resp) }
            };
            let _ = crate::listen::http::serve(limits, stream, false, None, handler).await;
        });
    }
}

fn beacon_response(
    site: &str,
    key: &BeaconKey,
    method: &http::Method,
    uri: &http::Uri,
    peer: SocketAddr,
    smuggling: bool,
) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    let reply = |status: u16, body: String| {
        let mut r = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
        *r.status_mut() =
            http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r.headers_mut().insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-store"),
        );
        r
    };
    if smuggling {
        return reply(
            400,
            "both Content-Length and Transfer-Encoding: refused\n".into(),
        );
    }
    if method != http::Method::GET {
        return reply(405, "only GET\n".into());
    }
    match uri.path() {
        "/healthz" => reply(200, format!("komugate beacon for site {site}\n")),
        "/assertion" => {
            let device = uri
                .query()
                .unwrap_or("")
                .split('&')
                .find_map(|kv| kv.strip_prefix("device="))
                .map(percent_decode);
            let device =
                match device {
                    Some(Some(d)) if crate::pki::validate_name("device id", &d).is_ok() => d,
                    _ => return reply(
                        400,
                        "usage: GET /assertion?device=DEVICE-ID (ASCII letters, digits, - _ . @)\n"
                            .into(),
                    ),
                };
            match key.issue(site, &device, unix_now()) {
                Ok(token) => {
                    tracing::info!(%device, %peer, "beacon: issued a site assertion");
                    reply(200, format!("{token}\n"))
                }
                Err(e) => reply(500, format!("{e}\n")),
            }
        }
        _ => reply(404, "try GET /assertion?device=ID\n".into()),
    }
}

/// A query value decoded (`%XX`, `+`); `None` unless it is UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    String::from_utf8(crate::common::percent_decode_form(s.as_bytes())).ok()
}

/// `komugate beacon` arguments.
#[derive(Debug, clap::Args)]
pub struct BeaconArgs {
    /// The site's name exactly as in the policy's `[[site]] name`.
    #[arg(long)]
    pub site: String,
    /// The site's private key (`komugate pki beacon-key --out PREFIX` wrote PREFIX.key).
    #[arg(long)]
    pub key: PathBuf,
    /// Address to listen on; reachable from the site's LAN only.
    #[arg(long, default_value = "0.0.0.0:8740")]
    pub listen: String,
}

/// `komugate pki beacon-key` arguments.
#[derive(Debug, clap::Args)]
pub struct BeaconKeyArgs {
    /// Output prefix: writes PREFIX.key (private, 0600) and PREFIX.pub.
    #[arg(long)]
    pub out: PathBuf,
    /// The site's name, to print the policy snippet.
    #[arg(long)]
    pub site: Option<String>,
    /// Overwrite an existing key pair.
    #[arg(long)]
    pub force: bool,
}

/// `komugate beacon`.
pub fn run_beacon(a: BeaconArgs) -> Result<()> {
    serve_until_signal(&a.site, &a.key, &a.listen)
}

/// `komugate pki beacon-key`.
pub fn run_beacon_key(a: BeaconKeyArgs) -> Result<()> {
    let (key, public_path, public) = write_key_pair(&a.out, a.force)?;
    println!(
        "beacon key pair: {} (private, keep it on the site's server) and {}",
        key.display(),
        public_path.display()
    );
    println!("add the public key to the site in the policy:\n");
    println!(
        "[[site]]\nname = {:?}\nassertion = true\nbeacon_key = \"{public}\"",
        a.site.as_deref().unwrap_or("SITE NAME")
    );
    Ok(())
}

/// Runs the beacon until SIGTERM / Ctrl-C.
pub fn serve_until_signal(site: &str, key_path: &Path, listen: &str) -> Result<()> {
    if site.trim().is_empty() {
        bail!("--site must name the site as in the policy's [[site]] name");
    }
    let key = Arc::new(BeaconKey::load(key_path)?);
    let addr: SocketAddr = listen
        .parse()
        .map_err(|_| anyhow!("--listen {listen:?} is not an address like 0.0.0.0:8740"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("cannot listen on {addr} (--listen); is another process using the port?")
        })?;
        println!(
            "komugate beacon for site {site:?} on http://{}/assertion?device=ID",
            listener.local_addr()?
        );
        println!(
            "  public key (policy [[site]] beacon_key): {}",
            key.public_base64()
        );
        let shutdown = tokio_util::sync::CancellationToken::new();
        let server = tokio::spawn(serve_beacon(
            listener,
            site.to_string(),
            key,
            shutdown.clone(),
        ));
        let _ = tokio::signal::ctrl_c().await;
        shutdown.cancel();
        let _ = server.await;
        Ok(())
    })
}
