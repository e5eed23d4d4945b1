//! Fetching a list or its checksum file with the gateway's own egress:
//! conditional GET, redirects (at most 5, never from `https` to `http`),
//! a size cap, and SHA-256 computed while streaming to disk.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use sha2::{Digest, Sha256};

use super::Stop;
use crate::common::hex;
use crate::egress::upstream::UpstreamAlpn;
use crate::gateway::Gateway;

const MAX_REDIRECTS: usize = 5;

pub(super) enum Fetched {
    NotModified,
    Body {
        sha256: String,
        bytes: u64,
        etag: Option<String>,
        last_modified: Option<String>,
    },
}

/// GET `url` (following redirects) into `to` (or nowhere: the caller reads
/// the hash only); at most `max_bytes`.
pub(super) async fn download(
    gw: &Arc<Gateway>,
    url: &str,
    validators: &(Option<String>, Option<String>),
    max_bytes: u64,
    to: Option<&Path>,
) -> Result<Fetched, Stop> {
    download_inner(gw, url, validators, max_bytes, to, None).await
}

async fn download_inner(
    gw: &Arc<Gateway>,
    url: &str,
    validators: &(Option<String>, Option<String>),
    max_bytes: u64,
    to: Option<&Path>,
    mut collect: Option<&mut Vec<u8>>,
) -> Result<Fetched, Stop> {
    let derr = |m: String| Stop("download_error", m);
    let client = gw.pools.client(None, UpstreamAlpn::Http1);
    let mut uri: http::Uri = url
        .parse()
        .map_err(|e| derr(format!("bad url {url}: {e}")))?;
    let mut redirects = 0;
    let resp = loop {
        let authority = uri
            .authority()
            .map(|a| a.to_string())
            .ok_or_else(|| derr(format!("no host in {uri}")))?;
        let mut req = Request::get(uri.clone())
            .header(header::HOST, authority)
            .header(
                header::USER_AGENT,
                concat!("komugate-list-update/", env!("CARGO_PKG_VERSION")),
            )
            .header(header::ACCEPT, "*/*");
        if let Some(etag) = &validators.0 {
            req = req.header(header::IF_NONE_MATCH, etag.as_str());
        }
        if let Some(lm) = &validators.1 {
            req = req.header(header::IF_MODIFIED_SINCE, lm.as_str());
        }
        let req = req
            .body(
                Empty::<Bytes>::new()
                    .map_err(|never| match never {})
                    .boxed(),
            )
            .map_err(|e| derr(format!("cannot build the request: {e}")))?;
        let resp = client.request(req).await.map_err(|e| {
            let mut msg = e.to_string();
            let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&e);
            while let Some(s) = cur {
                msg.push_str(&format!(": {s}"));
                cur = s.source();
            }
            derr(format!("GET {uri}: {msg}"))
        })?;
        if resp.status().is_redirection() && resp.status() != StatusCode::NOT_MODIFIED {
            redirects += 1;
            let location = resp
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            if redirects > MAX_REDIRECTS || location.is_empty() {
                return Err(derr(format!("GET {uri}: {} without a usable Location (or more than {MAX_REDIRECTS} redirects)", resp.status())));
            }
            let next: http::Uri =
                if location.starts_with("http://") || location.starts_with("https://") {
                    location
                        .parse()
                        .map_err(|e| derr(format!("bad redirect {location}: {e}")))?
                } else {
                    let mut parts = uri.clone().into_parts();
                    parts.path_and_query = Some(
                        location
                            .parse()
                            .map_err(|e| derr(format!("bad redirect {location}: {e}")))?,
                    );
                    http::Uri::from_parts(parts)
                        .map_err(|e| derr(format!("bad redirect {location}: {e}")))?
                };
            if uri.scheme_str() == Some("https") && next.scheme_str() != Some("https") {
                return Err(derr(format!(
                    "GET {uri}: refusing a redirect from https to {next}"
                )));
            }
            uri = next;
            continue;
        }
        break resp;
    };
    let status = resp.status();
    if status == StatusCode::NOT_MODIFIED {
        if validators.0.is_none() && validators.1.is_none() {
            return Err(derr(format!(
                "GET {uri}: 304 to a request without validators"
            )));
        }
        return Ok(Fetched::NotModified);
    }
    if !status.is_success() {
        return Err(derr(format!("GET {uri}: HTTP {status}")));
    }
    let size_err = |n: u64| {
        Stop(
            "refused_size",
            format!("the download is larger than max_bytes ({n} > {max_bytes} bytes)"),
        )
    };
    if let Some(len) = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > max_bytes {
            return Err(size_err(len));
        }
    }
    let header_text = |h: header::HeaderName| {
        resp.headers()
            .get(h)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let etag = header_text(header::ETAG);
    let last_modified = header_text(header::LAST_MODIFIED);
    let mut file = match to {
        Some(p) => Some(
            tokio::fs::File::create(p)
                .await
                .map_err(|e| Stop("error", format!("cannot create {}: {e}", p.display())))?,
        ),
        None => None,
    };
    let mut hasher = Sha256::new();
    let mut total: u64 = 0;
    let mut body = resp.into_body();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| derr(format!("GET {uri}: body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total += data.len() as u64;
        if total > max_bytes {
            return Err(size_err(total));
        }
        hasher.update(&data);
        if let Some(f) = file.as_mut() {
            tokio::io::AsyncWriteExt::write_all(f, &data)
                .await
                .map_err(|e| Stop("error", format!("writing the download: {e}")))?;
        }
        if let Some(c) = collect.as_deref_mut() {
            c.extend_from_slice(&data);
        }
    }
    if let Some(mut f) = file {
        tokio::io::AsyncWriteExt::flush(&mut f)
            .await
            .map_err(|e| Stop("error", format!("writing the download: {e}")))?;
        f.sync_all()
            .await
            .map_err(|e| Stop("error", format!("writing the download: {e}")))?;
    }
    Ok(Fetched::Body {
        sha256: hex(&hasher.finalize()),
        bytes: total,
        etag,
        last_modified,
    })
}

/// The expected hash from a checksum file (`<hex>` or `<hex>  name`).
pub(super) async fn fetch_checksum(gw: &Arc<Gateway>, url: &str) -> Result<String, Stop> {
    let mut text = Vec::new();
    download_inner(gw, url, &(None, None), 64 * 1024, None, Some(&mut text)).await?;
    let text = String::from_utf8_lossy(&text);
    let word = text
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if word.len() == 64 && word.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(word)
    } else {
        Err(Stop(
            "refused_sha256",
            format!("{url} does not start with a SHA-256 in hex"),
        ))
    }
}
