//! Explain: the decision the proxy would make for (device, client address,
//! URL, method), computed by the same conversion and the same
//! `Policy::evaluate` the data path uses. Shared by `komugate policy
//! explain` and `GET /admin/explain`.

use std::net::{IpAddr, SocketAddr};
use std::time::SystemTime;

use crate::device_auth::DeviceIdentity;
use crate::stages::decide::{policy_request, ListenerKind, RequestInfo, RequestKind};

/// Evaluates `url` (`http://…`, `https://…`, or `host:port` for a CONNECT)
/// as sent by `device` from `from`.
pub fn explain(
    policy: &komugate_policy::Policy,
    device: Option<&str>,
    from: &str,
    url: &str,
    method: &str,
) -> anyhow::Result<komugate_policy::Decision> {
    let ip: IpAddr = from
        .parse()
        .map_err(|_| anyhow::anyhow!("--from {from:?} is not an IP address"))?;
    let method = method.to_ascii_uppercase();
    let (kind, scheme, rest) = if let Some(r) = url.strip_prefix("https://") {
        (RequestKind::Http, "https", r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (RequestKind::Http, "http", r)
    } else if method == "CONNECT" {
        (RequestKind::Connect, "", url)
    } else {
        anyhow::bail!("--url {url:?} must start with http:// or https:// (or use --method CONNECT with host:port)");
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (
            rest,
            if kind == RequestKind::Connect {
                ""
            } else {
                "/"
            },
        ),
    };
    let authority: http::uri::Authority = authority
        .parse()
        .map_err(|_| anyhow::anyhow!("{url:?}: invalid host"))?;
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let port = authority
        .port_u16()
        .unwrap_or(if scheme == "http" { 80 } else { 443 });
    let identity = device.map(|d| DeviceIdentity {
        device_id: d.to_string(),
        cert_groups: Vec::new(),
        serial_hex: String::new(),
    });
    let req = RequestInfo {
        listener: if identity.is_some() {
            ListenerKind::Mtls
        } else {
            ListenerKind::Plain
        },
        device: identity.as_ref(),
        client: SocketAddr::new(ip, 0),
        kind,
        method: &method,
        host: &host,
        port,
        path,
        scheme,
        location: None,
    };
    Ok(policy.evaluate(&policy_request(&req, SystemTime::now())))
}
