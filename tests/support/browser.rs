//! A real browser for tests that check what a person sees: Debian's
//! headless `chromium` driven over WebDriver by `chromedriver` (both from
//! apt, see `.ci/run`), each test with its own HOME whose NSS database
//! trusts the CAs the test names, so TLS is verified for real.
//!
//! ```ignore
//! let browser = Browser::start(&BrowserOptions {
//!     proxy: Some(gw.plain()),
//!     trusted_ca_pems: vec![inspect_ca_pem],
//! }).await;
//! browser.client.goto("https://www.gambling.test/").await?;
//! browser.screenshot(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("x.png")).await;
//! browser.stop().await;
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How to start the browser.
#[derive(Default)]
pub struct BrowserOptions {
    /// An HTTP proxy for every request (`--proxy-server`), loopback included.
    pub proxy: Option<SocketAddr>,
    /// CA certificates (PEM) the browser trusts, added to its NSS database.
    pub trusted_ca_pems: Vec<String>,
    /// Where downloads go (without it chromium asks where to save).
    pub download_dir: Option<std::path::PathBuf>,
}

/// A headless chromium session; stop it with [`Browser::stop`] (dropping
/// it kills chromedriver, which ends chromium).
pub struct Browser {
    pub client: Client,
    driver: Child,
    /// HOME of chromedriver and chromium (NSS db, profile), removed on drop.
    _home: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver on a free loopback port and one chromium session.
    /// Panics with what to install when chromium or chromedriver is missing.
    pub async fn start(options: &BrowserOptions) -> Browser {
        for exe in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(exe).exists(),
                "{exe} is missing: apt-get install chromium chromium-driver fonts-noto-cjk libnss3-tools (.ci/run does)"
            );
        }
        let home = tempfile::tempdir().expect("browser HOME");
        trust_cas(home.path(), &options.trusted_ca_pems);
        let port = free_port();
        // chromium inherits chromedriver's environment: HOME selects the NSS db.
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .env("HOME", home.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let mut args = vec![
            "--headless=new".to_string(),
            "--no-sandbox".to_string(),
            "--disable-gpu".to_string(),
            "--disable-dev-shm-usage".to_string(),
            "--no-first-run".to_string(),
            "--window-size=1024,900".to_string(),
            "--lang=ja".to_string(),
            // No traffic of the browser's own (updates, sync, safe browsing):
            // only the test's requests reach the gateway and its logs.
            "--disable-background-networking".to_string(),
            "--disable-component-update".to_string(),
            "--disable-sync".to_string(),
            "--disable-domain-reliability".to_string(),
            "--no-default-browser-check".to_string(),
            format!("--user-data-dir={}", home.path().join("profile").display()),
        ];
        if let Some(proxy) = options.proxy {
            args.push(format!("--proxy-server=http://{proxy}"));
            // Without this chromium sends loopback addresses around the proxy.
            args.push("--proxy-bypass-list=<-loopback>".to_string());
        }
        let mut chrome = serde_json::json!({ "binary": CHROMIUM, "args": args });
        if let Some(dir) = &options.download_dir {
            chrome["prefs"] = serde_json::json!({
                "download.default_directory": dir,
                "download.prompt_for_download": false,
            });
        }
        let caps = serde_json::json!({
            "browserName": "chrome",
            "goog:chromeOptions": chrome,
        });
        let serde_json::Value::Object(caps) = caps else {
            unreachable!("a JSON object")
        };
        let url = format!("http://127.0.0.1:{port}");
        let mut builder =
            ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
        builder.capabilities(caps);
        // chromedriver takes a moment to listen.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let client = loop {
            match builder.connect(&url).await {
                Ok(c) => break c,
                Err(_) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("no WebDriver session from {CHROMEDRIVER} on {url}: {e}"),
            }
        };
        Browser {
            client,
            driver,
            _home: home,
        }
    }

    /// Saves a PNG of the current page at `path` (its directory is
    /// created; tests pass a path under `CARGO_TARGET_TMPDIR`).
    pub async fn screenshot(&self, path: &Path) {
        let png = self.client.screenshot().await.expect("screenshot");
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot dir");
        }
        std::fs::write(path, png).expect("write screenshot");
    }

    /// Saves a PNG of the current page as `NAME.png` in
    /// [`screenshot_dir`]; returns its path.
    pub async fn shot(&self, name: &str) -> std::path::PathBuf {
        let path = screenshot_dir().join(format!("{name}.png"));
        self.screenshot(&path).await;
        path
    }

    /// The visible text of the page (`document.body.innerText`).
    pub async fn body_text(&self) -> String {
        self.client
            .execute("return document.body.innerText;", vec![])
            .await
            .expect("read the page text")
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Ends the session and chromedriver.
    pub async fn stop(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

// ---------------------------------------------------------------- console pages

/// Polls `check` on the page's text until it holds (20 s at most).
pub async fn wait_text(b: &Browser, what: &str, check: impl Fn(&str, &str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let url = b
            .client
            .current_url()
            .await
            .map(|u| u.to_string())
            .unwrap_or_default();
        let text = b.body_text().await;
        if check(&url, &text) {
            return text;
        }
        if Instant::now() > deadline {
            let shot = b.shot(&format!("failed-{}", what.replace(' ', "-"))).await;
            panic!(
                "{what}: not reached; at {url} ({}):\n{text}",
                shot.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn fill(b: &Browser, css: &str, text: &str) {
    let e = b
        .client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"));
    e.clear().await.unwrap();
    e.send_keys(text).await.unwrap();
}

pub async fn text_of(b: &Browser, css: &str) -> String {
    b.client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .unwrap()
}

pub async fn click(b: &Browser, css: &str) {
    b.client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap();
}

pub async fn password_sign_in(
    b: &Browser,
    base: &str,
    user: &str,
    password: &str,
    shot: Option<&str>,
) {
    b.client
        .goto(&format!("{base}/console/signin"))
        .await
        .unwrap();
    fill(b, "input[name=user]", user).await;
    fill(b, "input[name=password]", password).await;
    if let Some(name) = shot {
        b.shot(name).await;
    }
    click(b, "form[action='/console/signin'] button[type=submit]").await;
    wait_text(b, "dashboard after sign-in", |url, text| {
        url.ends_with("/console/dashboard") && text.contains(user)
    })
    .await;
}

pub async fn sign_out(b: &Browser) {
    click(b, "form[action='/console/signout'] button").await;
    wait_text(b, "signed out", |url, _| url.contains("/console/signin")).await;
}

/// The one finished download in `dir` (20 s at most).
pub async fn downloaded(dir: &Path, ext: &str) -> PathBuf {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == ext));
        if let Some(p) = found {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "no .{ext} download in {}",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Where tests save their screenshots: `$KOMUGATE_SCREENSHOT_DIR`, else
/// `tmp/screenshots/` in the target directory the test runs from
/// (`target/debug/deps/TEST` → `target/tmp/screenshots`).
pub fn screenshot_dir() -> std::path::PathBuf {
    if let Some(d) = std::env::var_os("KOMUGATE_SCREENSHOT_DIR") {
        return d.into();
    }
    let exe = std::env::current_exe().expect("the test's own path");
    match exe.ancestors().nth(3) {
        Some(target) => target.join("tmp/screenshots"),
        None => std::env::temp_dir().join("komugate-screenshots"),
    }
}

/// An NSS database in `home/.pki/nssdb` (where chromium on Linux looks)
/// trusting each CA for TLS servers.
fn trust_cas(home: &Path, pems: &[String]) {
    let db = home.join(".pki/nssdb");
    std::fs::create_dir_all(&db).expect("nssdb dir");
    let db_arg = format!("sql:{}", db.display());
    certutil(&["-N", "-d", &db_arg, "--empty-password"]);
    for (i, pem) in pems.iter().enumerate() {
        let file = home.join(format!("ca-{i}.pem"));
        std::fs::write(&file, pem).expect("write CA");
        let name = format!("komugate-test-ca-{i}");
        certutil(&[
            "-A",
            "-d",
            &db_arg,
            "-t",
            "C,,",
            "-n",
            &name,
            "-i",
            file.to_str().expect("utf-8 path"),
        ]);
    }
}

fn certutil(args: &[&str]) {
    let out = Command::new("certutil")
        .args(args)
        .output()
        .expect("certutil is missing: apt-get install libnss3-tools (.ci/run does)");
    assert!(
        out.status.success(),
        "certutil {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}
