//! The `komugate client` local HTTP proxy listener: one connection's bytes
//! (requests, CONNECT, `/proxy.pac`), in input-chosen chunks. The link to
//! the gateway is never connected, so every forwarded request gets the
//! "gateway unreachable" answer at once and nothing leaves the process.
#![no_main]

use std::sync::{Arc, OnceLock};

use komugate::client::config::ClientConfig;
use komugate::client::link::Link;
use komugate::client::local::serve_http_connection;
use komugate::pki::{self, DeviceCertOptions};
use komugate_fuzz::{runtime, split_plan, ChunkedStream};
use libfuzzer_sys::fuzz_target;

/// A link with a real device certificate (made once, in a temporary
/// directory), pointing at a loopback port nobody connects to.
fn link() -> Arc<Link> {
    static LINK: OnceLock<(tempfile::TempDir, Arc<Link>)> = OnceLock::new();
    LINK.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temporary directory");
        let pki_dir = dir.path().join("pki");
        let paths = pki::init(&pki_dir, &[], false).expect("test PKI");
        let groups = vec!["teachers".to_string()];
        let (cert, key) = pki::issue_device(
            &pki_dir,
            &DeviceCertOptions {
                device_id: "fuzz-laptop",
                groups: &groups,
                days: 30,
            },
            &dir.path().join("fuzz-laptop"),
            false,
        )
        .expect("device certificate");
        let cfg = ClientConfig {
            server: "127.0.0.1:9".into(),
            cert,
            key,
            ca: paths.server_cert(),
            ..ClientConfig::default()
        };
        let link = Arc::new(Link::new(cfg).expect("link"));
        (dir, link)
    })
    .1
    .clone()
}

fuzz_target!(|data: &[u8]| {
    let Some((plan, input)) = split_plan(data, 2) else {
        return;
    };
    let stream = ChunkedStream::new(input, plan);
    let pac_proxy = Arc::new("PROXY 127.0.0.1:3128".to_string());
    runtime().block_on(serve_http_connection(link(), pac_proxy, stream));
});
