//! Issue 18: full-device mode (`komugate client --tun`) in Linux network
//! namespaces the test creates (tests/support/netns.rs): the real binary
//! runs in a "laptop" namespace whose only link goes to the host, where the
//! gateway listens; the origins live in an "internet" namespace that only
//! the gateway (on the host) can reach. Applications in the laptop use no
//! proxy settings at all: plain curl, a DNS query to a hard-coded resolver,
//! a UDP echo exchange (CONNECT-UDP), raw packets.
//!
//! Needs root and /dev/net/tun (CI has both); skipped with a message
//! otherwise. What is not tested here (Windows, IPv6 uplinks): docs/client-tun.md.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use hickory_resolver::proto::op::{Message, Query};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use komugate_tests::dns;
use komugate_tests::gw::TestGateway;
use komugate_tests::netns::{self, Lab};
use komugate_tests::upstream::HttpUpstream;

const DEVICE: &str = "laptop-tun";
/// The captive-portal window in this test (the default is 300 s).
const CAPTIVE_SECS: u64 = 4;
/// What the gateway's resolver answers for whoami.test (the hotel's says otherwise).
const WHOAMI: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 77);

/// `komugate client --tun` in the laptop namespace; killed on drop.
struct Client {
    child: tokio::process::Child,
    log: PathBuf,
}

impl Client {
    /// What it printed, and its log (stderr).
    fn log(&self) -> String {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        format!(
            "{}{}",
            read(&self.log),
            read(&self.log.with_extension("err"))
        )
    }
}

/// curl in the laptop namespace, no proxy settings: (exit code, HTTP status, body).
async fn curl(lab: &Lab, url: &str) -> (i32, u16, String) {
    let out = lab
        .exec(&lab.laptop, "curl")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args(["-sS", "--max-time", "5", "-w", "\n%{http_code}", url])
        .output()
        .await
        .expect("curl runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", "0"));
    (
        out.status.code().unwrap_or(-1),
        code.trim().parse().unwrap_or(0),
        body.to_string(),
    )
}

/// The client's status (its local proxy's status page, from inside the laptop).
async fn status(lab: &Lab) -> serde_json::Value {
    let (_, code, body) = curl(lab, "http://127.0.0.1:3128/.komugate/client/status").await;
    if code != 200 {
        return serde_json::Value::Null;
    }
    serde_json::from_str(&body).unwrap_or_default()
}

async fn wait_for(
    lab: &Lab,
    client: &Client,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = status(lab).await;
        if pred(&s) {
            return s;
        }
        if Instant::now() > deadline {
            panic!(
                "{what}: not reached; last status {s}\nclient log:\n{}",
                client.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A DNS question for `name` (A) to `server`, from a socket in the laptop.
fn dns_query(lab: &Lab, server: SocketAddr, name: &str) -> std::io::Result<Vec<Ipv4Addr>> {
    let mut m = Message::new();
    m.set_id(0x4b47).set_recursion_desired(true);
    m.add_query(Query::query(Name::from_str(name).unwrap(), RecordType::A));
    let q = m.to_vec().unwrap();
    let answer = lab.within(&lab.laptop, || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
        s.set_read_timeout(Some(Duration::from_secs(4)))?;
        s.connect(server)?;
        s.send(&q)?;
        let mut buf = [0u8; 1500];
        let n = s.recv(&mut buf)?;
        Ok::<_, std::io::Error>(buf[..n].to_vec())
    })?;
    let a = Message::from_vec(&answer).expect("a DNS answer");
    assert_eq!(a.id(), 0x4b47);
    Ok(a.answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect())
}

/// A UDP datagram to `dst` from the laptop: the answer, or the error.
fn udp_exchange(lab: &Lab, dst: SocketAddr) -> std::io::Result<Vec<u8>> {
    lab.within(&lab.laptop, || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        s.connect(dst)?;
        s.send(b"ping")?;
        let mut buf = [0u8; 1500];
        // An ICMP error arrives as the error of the next call.
        let n = s.recv(&mut buf)?;
        Ok(buf[..n].to_vec())
    })
}

/// IPv4 packets with chosen defects, sent from a raw socket in the laptop
/// (the kernel fills in the IP header checksum and length, nothing else).
fn send_raw(lab: &Lab, dst: Ipv4Addr, packets: &[Vec<u8>]) {
    lab.within(&lab.laptop, || {
        // SAFETY: plain socket calls on a descriptor we own and close.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
            assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
            let sa = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(dst.octets()),
                },
                sin_zero: [0; 8],
            };
            for p in packets {
                let n = libc::sendto(
                    fd,
                    p.as_ptr().cast(),
                    p.len(),
                    0,
                    (&sa as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as u32,
                );
                assert_eq!(
                    n,
                    p.len() as isize,
                    "sendto: {}",
                    std::io::Error::last_os_error()
                );
            }
            libc::close(fd);
        }
    })
}

/// An IPv4 header (checksum left to the kernel) + `transport`.
fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, flags_offset: u16, transport: &[u8]) -> Vec<u8> {
    let mut p = vec![0x45, 0, 0, 0, 0x12, 0x34];
    p.extend_from_slice(&flags_offset.to_be_bytes());
    p.extend_from_slice(&[64, proto, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let len = (p.len() + transport.len()) as u16;
    p[2..4].copy_from_slice(&len.to_be_bytes());
    p.extend_from_slice(transport);
    p
}

/// The laptop's IPv4 routes.
async fn laptop_routes(lab: &Lab) -> String {
    let out = lab
        .exec(&lab.laptop, "ip")
        .args(["route", "show"])
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A UDP echo origin that remembers who sent to it.
struct UdpEcho {
    peers: std::sync::Arc<std::sync::Mutex<Vec<IpAddr>>>,
    task: tokio::task::JoinHandle<()>,
}

impl UdpEcho {
    fn serve(socket: tokio::net::UdpSocket) -> UdpEcho {
        let peers = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = peers.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
                seen.lock().unwrap().push(peer.ip());
                let _ = socket.send_to(&buf[..n], peer).await;
            }
        });
        UdpEcho { peers, task }
    }
    fn peers(&self) -> Vec<IpAddr> {
        self.peers.lock().unwrap().clone()
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn komugate_exe() -> PathBuf {
    let exe = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/komugate");
    assert!(
        exe.exists(),
        "{} is missing: build it first (cargo build -p komugate; `cargo test --workspace` does)",
        exe.display()
    );
    exe
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_device_mode_carries_everything_through_the_gateway_and_fails_closed() {
    if let Some(why) = netns::unavailable() {
        eprintln!("SKIPPED tun: {why}");
        return;
    }
    let exe = komugate_exe();
    let lab = Lab::create();
    let (origin_ip, hotel) = (lab.origin(), lab.hotel());

    // The gateway's resolver, and the hotel's (which the laptop's
    // resolv.conf names): `whoami.test` differs, so an answer shows its path.
    let gw_dns = dns::start(
        "test.",
        &[
            ("origin.test.", origin_ip),
            ("blocked.test.", origin_ip),
            ("whoami.test.", WHOAMI),
            ("captive.test.", hotel),
        ],
    )
    .await;
    let hotel_dns = dns::serve_zones(
        tokio::net::UdpSocket::bind((hotel, 53))
            .await
            .expect("hotel DNS (udp)"),
        tokio::net::TcpListener::bind((hotel, 53)).await.ok(),
        &[(
            "test.",
            &[
                ("captive.test.", hotel),
                ("whoami.test.", Ipv4Addr::new(192, 0, 2, 99)),
                ("origin.test.", origin_ip),
            ],
        )],
    );
    let portal = HttpUpstream::serve(
        tokio::net::TcpListener::bind((hotel, 80))
            .await
            .expect("hotel portal"),
    );
    let origin_listener = lab.within(&lab.internet, || {
        let l =
            std::net::TcpListener::bind((origin_ip, 80)).expect("origin in the internet namespace");
        l.set_nonblocking(true).unwrap();
        l
    });
    let origin = HttpUpstream::serve(tokio::net::TcpListener::from_std(origin_listener).unwrap());
    let echo_socket = lab.within(&lab.internet, || {
        let s =
            std::net::UdpSocket::bind((origin_ip, 7)).expect("UDP echo in the internet namespace");
        s.set_nonblocking(true).unwrap();
        s
    });
    let echo = UdpEcho::serve(tokio::net::UdpSocket::from_std(echo_socket).unwrap());

    // Without the client the laptop has no path to the origin.
    let (code, _, _) = curl(&lab, &format!("http://{origin_ip}/")).await;
    assert_ne!(code, 0, "the laptop must not reach the origin directly");

    let policy_dir = tempfile::tempdir().unwrap();
    let printers = format!("10.{}.3.128/25", lab.host().octets()[1]);
    let policy = policy_dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[pac]\ndirect = [\"{printers}\"]\n\n[[rule]]\nname = \"no blocked.test\"\nhosts = [\"blocked.test\"]\naction = \"block\"\n\n\
             [firewall]\ndefault = \"allow\"\n\n[[firewall.rule]]\nname = \"no udp 9999\"\nports = [9999]\nprotocol = \"udp\"\naction = \"block\"\n"
        ),
    )
    .unwrap();
    let (host, net16) = (lab.host(), lab.net16());
    let gw = TestGateway::start(|c, _| {
        c.listen.mtls = format!("{host}:0");
        c.dns.servers = vec![gw_dns.addr];
        c.egress.allow_destinations.push(net16.parse().unwrap());
        c.policy.file = policy.display().to_string();
    })
    .await;

    let d = gw.tls().device(DEVICE, &["teachers"]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("device.pem"), &d.cert_pem).unwrap();
    std::fs::write(dir.path().join("device.key"), &d.key_pem).unwrap();
    std::fs::write(
        dir.path().join("client.toml"),
        format!(
            r#"server = "{}"
server_name = "localhost"
cert = "device.pem"
key = "device.key"
ca = "{}"
http = "127.0.0.1:3128"
socks = ""
posture = false
backoff_min_ms = 50
backoff_max_ms = 300

[tun]
captive_portal_hosts = ["captive.test"]
captive_portal_secs = {CAPTIVE_SECS}
"#,
            gw.mtls(),
            gw.pki.join("inspect-ca.pem").display()
        ),
    )
    .unwrap();
    let log = dir.path().join("client.log");
    let child = lab
        .exec(&lab.laptop, exe.to_str().unwrap())
        .args(["client", "--tun", "--config"])
        .arg(dir.path().join("client.toml"))
        .env("RUST_LOG", "info")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.path().join("client.err")).unwrap())
        .spawn()
        .expect("komugate client starts");
    let mut client = Client { child, log };
    wait_for(&lab, &client, "link up", |s| {
        s["link_up"] == true && s["tun"].is_object()
    })
    .await;

    // Split tunnel: the gateway and the policy's direct network go around the device.
    let routes = laptop_routes(&lab).await;
    assert!(
        routes.contains("0.0.0.0/1 dev komugate0") && routes.contains("128.0.0.0/1 dev komugate0"),
        "{routes}"
    );
    let direct = async {
        komugate_tests::eventually(Duration::from_secs(5), || async {
            let r = lab
                .exec(&lab.laptop, "ip")
                .args(["route", "show", &printers])
                .output()
                .await
                .unwrap();
            let r = String::from_utf8_lossy(&r.stdout).to_string();
            r.contains(&format!("via {host}")).then_some(r)
        })
        .await
    };
    assert!(
        direct.await.is_some(),
        "the policy's direct network {printers} is routed via the uplink"
    );

    // 1. Plain curl by name: through the gateway, which sees the name and the device.
    let (code, status_code, body) = curl(&lab, "http://origin.test/through").await;
    assert_eq!((code, status_code), (0, 200), "{body}\n{}", client.log());
    assert_eq!(body, "hello from upstream /through");
    let seen = origin.seen();
    assert_eq!(
        seen.last().unwrap().peer.ip(),
        IpAddr::V4(lab.internet_host()),
        "the origin sees the gateway's egress address"
    );
    let rec = gw
        .access_record(|r| r["target"] == "origin.test:80" && r["method"] == "CONNECT")
        .await;
    assert_eq!(rec["device"], DEVICE);
    assert_eq!(rec["listener"], "mtls");

    // The policy applies by name (here already to the DNS question).
    let (code, _, _) = curl(&lab, "http://blocked.test/").await;
    assert_ne!(code, 0);
    let rec = gw
        .access_record(|r| r["target"] == "blocked.test" && r["method"] == "DNS")
        .await;
    assert_eq!(
        (rec["decision"].as_str(), rec["device"].as_str()),
        (Some("block"), Some(DEVICE))
    );

    // 2. DNS to a hard-coded resolver address is answered by the gateway's DoH.
    let answer = dns_query(&lab, SocketAddr::from((hotel, 53)), "whoami.test.").unwrap();
    assert_eq!(
        answer,
        vec![WHOAMI],
        "answered by the gateway's resolver, not the hotel's"
    );
    gw.access_record(|r| {
        r["device"] == DEVICE
            && r["method"] == "DNS"
            && r["target"].as_str().unwrap_or("").contains("whoami.test")
    })
    .await;

    // 3. Other UDP rides CONNECT-UDP: the echo answers and sees the gateway;
    // a port the firewall denies is refused at once (ICMP), not timed out.
    let answer = udp_exchange(&lab, SocketAddr::from((origin_ip, 7)))
        .unwrap_or_else(|e| panic!("UDP echo: {e}\n{}", client.log()));
    assert_eq!(answer, b"ping");
    assert_eq!(echo.peers(), vec![IpAddr::V4(lab.internet_host())]);
    // (An allowed flow's record is written when it ends; the refusal's at once.)
    let started = Instant::now();
    let err = udp_exchange(&lab, SocketAddr::from((origin_ip, 9999))).unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused, not timed out: {err}"
    );
    let rec = gw
        .access_record(|r| r["method"] == "CONNECT-UDP" && r["target"] == "origin.test:9999")
        .await;
    assert_eq!(
        (rec["decision"].as_str(), rec["rule"].as_str()),
        (Some("block"), Some("no udp 9999"))
    );
    assert_eq!(rec["device"], DEVICE);

    // 4. Bad packets are dropped and counted; the link stays up.
    let before = status(&lab).await;
    let me = lab.laptop_addr();
    // A SYN whose checksum field (0xdead) is not its checksum.
    let bad_sum = vec![
        0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0xde, 0xad, 0, 0,
    ];
    // Data offset 15 words in a 20-byte segment.
    let malformed = vec![
        0x9c, 0x41, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0xf0, 0x02, 0xff, 0xff, 0, 0, 0, 0,
    ];
    let udp = vec![0x9c, 0x42, 0x27, 0x0f, 0, 12, 0, 0, b'f', b'r', b'a', b'g'];
    send_raw(
        &lab,
        origin_ip,
        &[
            ipv4(me, origin_ip, 6, 0, &bad_sum),
            ipv4(me, origin_ip, 6, 0, &malformed),
            ipv4(me, origin_ip, 17, 0x2000, &udp), // more fragments
        ],
    );
    let after = wait_for(&lab, &client, "bad packets counted", |s| {
        let n = |k: &str| s["tun"][k].as_u64().unwrap_or(0);
        let b = |k: &str| before["tun"][k].as_u64().unwrap_or(0);
        n("dropped_bad_checksum") > b("dropped_bad_checksum")
            && n("dropped_malformed") > b("dropped_malformed")
            && n("dropped_fragments") > b("dropped_fragments")
    })
    .await;
    assert_eq!(after["connects"], before["connects"], "the link stayed up");
    let (code, status_code, _) = curl(&lab, "http://origin.test/after-junk").await;
    assert_eq!((code, status_code), (0, 200));

    // 5. The gateway goes away: everything fails closed ...
    gw.shutdown().await;
    wait_for(&lab, &client, "link down", |s| s["link_up"] == false).await;
    let started = Instant::now();
    let (code, _, _) = curl(&lab, &format!("http://{origin_ip}/")).await;
    assert_eq!(
        code, 7,
        "connection refused (RST from the client), not a timeout"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    let (code, _, _) = curl(&lab, "http://origin.test/").await;
    assert_eq!(
        code, 6,
        "names do not resolve (SERVFAIL) while the gateway is away"
    );
    assert!(udp_exchange(&lab, SocketAddr::from((origin_ip, 7))).is_err());
    assert_eq!(
        echo.peers().len(),
        1,
        "nothing reached the echo while the gateway was away"
    );

    // ... except the captive-portal check host, directly, for the window.
    let (code, status_code, body) = curl(&lab, "http://captive.test/portal").await;
    assert_eq!((code, status_code), (0, 200), "{body}\n{}", client.log());
    assert_eq!(body, "hello from upstream /portal");
    assert_eq!(
        portal.seen().last().unwrap().peer.ip(),
        IpAddr::V4(lab.laptop_addr()),
        "direct from the laptop"
    );
    tokio::time::sleep(Duration::from_secs(CAPTIVE_SECS + 1)).await;
    let (code, _, _) = curl(&lab, "http://captive.test/portal").await;
    assert_ne!(code, 0, "the window is bounded");
    let s = status(&lab).await;
    assert!(s["tun"]["captive_direct"].as_u64().unwrap_or(0) >= 2, "{s}");
    assert!(
        s["tun"]["refused_link_down"].as_u64().unwrap_or(0) >= 2,
        "{s}"
    );

    // 6. On exit the client removes what it added.
    // SAFETY: kill on our own child's pid.
    unsafe { libc::kill(client.child.id().unwrap() as i32, libc::SIGTERM) };
    let exit = tokio::time::timeout(Duration::from_secs(10), client.child.wait()).await;
    assert!(matches!(exit, Ok(Ok(_))), "the client exits on SIGTERM");
    let routes = laptop_routes(&lab).await;
    assert!(
        !routes.contains("komugate0") && !routes.contains(&printers),
        "routes left behind:\n{routes}"
    );
    drop(hotel_dns);
}
