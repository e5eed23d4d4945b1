//! The mTLS listener after the handshake: a device's connection bytes
//! (HTTP/2 preface and frames, or HTTP/1.1) into the gateway's connection
//! server, with CONNECT, forwarding, DoH, CASB and IPS behind it. The
//! gateway runs the embedded default configuration with a policy that
//! blocks everything but 127.0.0.1:9 and DNS at 127.0.0.1:9, so no request
//! can leave the machine. Input: a selector byte (bit 0: HTTP/2), two
//! chunking bytes, then the connection's bytes.
#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use komugate::config::Config;
use komugate::request::ListenerKind;
use komugate::device_auth::DeviceIdentity;
use komugate::gateway::start::{self, Running};
use komugate::request::ConnContext;
use komugate::listen::serve_connection;
use komugate_fuzz::{runtime, split_plan, ChunkedStream};
use libfuzzer_sys::fuzz_target;

const POLICY: &str = r#"
version = 1
[defaults]
action = "block"

[[rule]]
name = "loopback discard port only"
hosts = ["127.0.0.1"]
action = "allow"
"#;

fn gateway() -> &'static Running {
    static GW: OnceLock<(tempfile::TempDir, Running)> = OnceLock::new();
    &GW.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temporary directory");
        std::fs::write(dir.path().join("policy.toml"), POLICY).expect("policy file");
        std::fs::write(
            dir.path().join("fuzz.rules"),
            include_str!("../../../tests/data/ips/komugate-test.rules"),
        )
        .expect("IPS rules");
        let mut config = Config::embedded_default();
        config.data.dir = dir.path().to_path_buf();
        config.data.create_pki = true;
        config.data.demo_device = String::new();
        config.data.demo_origin = String::new();
        config.listen.plain = String::new();
        config.listen.mtls = String::new();
        config.listen.admin = String::new();
        config.policy.file = "policy.toml".into();
        config.policy.watch = false;
        config.dns.servers = vec!["127.0.0.1:9".parse().unwrap()];
        config.dns.timeout_ms = 200;
        config.dns.attempts = 1;
        config.egress.fixed = Vec::new();
        config.egress.allow_destinations = vec!["127.0.0.1/32".parse().unwrap()];
        config.decision.allowed_ports = vec![9];
        config.ips.rules = vec!["fuzz.rules".into()];
        config.limits.header_read_timeout_ms = 1000;
        let running = runtime()
            .block_on(start::start(config))
            .expect("the fuzz gateway starts");
        (dir, running)
    })
    .1
}

fuzz_target!(|data: &[u8]| {
    let Some((plan, input)) = split_plan(data, 3) else {
        return;
    };
    let gw = gateway().gateway.clone();
    let ctx = Arc::new(ConnContext::new(
        ListenerKind::Mtls,
        SocketAddr::from(([127, 0, 0, 1], 50_000)),
        Some(DeviceIdentity {
            device_id: "fuzz-laptop".into(),
            cert_groups: vec!["teachers".into()],
            serial_hex: "01".into(),
        }),
        None,
    ));
    let h2 = plan[0] & 1 == 1;
    let stream = ChunkedStream::new(input, &plan[1..]);
    runtime().block_on(async {
        serve_connection(gw, ctx, stream, h2).await;
        // Let the tasks the connection spawned (streams, tunnels) finish.
        for _ in 0..16 {
            tokio::task::yield_now().await;
        }
    });
});
