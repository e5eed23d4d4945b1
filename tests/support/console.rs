//! An HTTP client for the admin console: a new real connection per
//! request (plain, or TLS trusting the gateway's CA), a cookie jar, forms.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use komugate::console::form::encode;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

/// A response read whole.
pub struct Page {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

impl Page {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The text as a browser shows it (the entities templates escape to
    /// turned back into characters).
    pub fn visible(&self) -> String {
        self.text()
            .replace("&#x2f;", "/")
            .replace("&#x27;", "'")
            .replace("&quot;", "\"")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&")
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    pub fn location(&self) -> Option<String> {
        self.header("location")
    }

    /// The `value` of the form field `name` (`<input name="csrf" value="…">`).
    pub fn field(&self, name: &str) -> Option<String> {
        let text = self.text();
        let at = text.find(&format!("name=\"{name}\" value=\""))?;
        let rest = &text[at + name.len() + 15..];
        Some(rest[..rest.find('"')?].to_string())
    }

    /// The raw `Set-Cookie` header lines.
    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect()
    }
}

pub struct ConsoleClient {
    pub addr: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    pub cookies: BTreeMap<String, String>,
}

impl ConsoleClient {
    pub fn plain(addr: SocketAddr) -> ConsoleClient {
        ConsoleClient {
            addr,
            tls: None,
            cookies: BTreeMap::new(),
        }
    }

    /// Over TLS, trusting `ca` for the name "localhost".
    pub fn tls(addr: SocketAddr, ca: rustls_pki_types::CertificateDer<'static>) -> ConsoleClient {
        ConsoleClient {
            addr,
            tls: Some(super::gw::client_config(ca, None, &[b"http/1.1"])),
            cookies: BTreeMap::new(),
        }
    }

    pub async fn get(&mut self, path: &str) -> Page {
        let req = Request::get(path).body(Full::new(Bytes::new())).unwrap();
        self.send(req).await
    }

    /// POSTs an urlencoded form.
    pub async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let body = form
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let req = Request::post(path)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        self.send(req).await
    }

    pub async fn send(&mut self, mut req: Request<Full<Bytes>>) -> Page {
        let host = format!("localhost:{}", self.addr.port());
        req.headers_mut().insert("host", host.parse().unwrap());
        if !self.cookies.is_empty() {
            let c = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            req.headers_mut().insert("cookie", c.parse().unwrap());
        }
        let tcp = TcpStream::connect(self.addr)
            .await
            .expect("connect to the admin listener");
        let resp = match &self.tls {
            None => exchange(tcp, req).await,
            Some(cfg) => {
                let tls = tokio_rustls::TlsConnector::from(cfg.clone())
                    .connect(ServerName::try_from("localhost").unwrap(), tcp)
                    .await
                    .expect("TLS handshake with the admin listener");
                exchange(tls, req).await
            }
        };
        let page = resp;
        for line in page.set_cookies() {
            let first = line.split(';').next().unwrap_or("");
            if let Some((k, v)) = first.split_once('=') {
                if v.is_empty() || line.contains("Max-Age=0") {
                    self.cookies.remove(k.trim());
                } else {
                    self.cookies.insert(k.trim().to_string(), v.to_string());
                }
            }
        }
        page
    }

    /// Signs in through the form (GET for its token, then POST).
    pub async fn sign_in(&mut self, user: &str, password: &str) -> Page {
        let form = self.get("/console/signin").await;
        let csrf = form
            .field("csrf")
            .expect("the sign-in form has a csrf field");
        self.post(
            "/console/signin",
            &[("csrf", &csrf), ("user", user), ("password", password)],
        )
        .await
    }
}

async fn exchange<S>(stream: S, req: Request<Full<Bytes>>) -> Page
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.expect("response");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes().to_vec();
    Page {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// Writes the console's accounts file the way `komugate admin user add` does.
pub fn write_accounts(
    config: &komugate::config::Config,
    accounts: &[(&str, komugate::console::accounts::Role, &str)],
) {
    use komugate::console::accounts::{self, Account, AccountFile};
    let mut file = AccountFile::default();
    for (name, role, pw) in accounts {
        file.accounts.push(Account {
            name: name.to_string(),
            role: *role,
            hash: accounts::hash_password(pw).unwrap(),
            changed: String::new(),
        });
    }
    accounts::save(&komugate::console::users_file(config), &file).unwrap();
}

/// A policy with one school on loopback and one blocking rule, for pages
/// that name the deciding rule (explain).
pub const SCHOOL_POLICY: &str = r#"
version = 1
timezone = "+09:00"

[defaults]
action = "allow"

[[site]]
name = "豊科南小学校"
cidrs = ["127.0.0.1/32"]

[[rule]]
name = "ゲーム禁止"
hosts = ["blocked.test"]
action = "block"
message = "ゲームサイトは利用できません。"
"#;
