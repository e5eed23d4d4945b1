//! UDP through the gateway (issue 18): CONNECT-UDP (RFC 9298) on the mTLS
//! listener over a real HTTP/2 link with a real device certificate, to real
//! UDP echo origins on loopback. Egress source, firewall (`protocol =
//! "udp"`, DNS and QUIC refused by default), destination guard, per-device
//! limits, bad input, access records and metrics.

use std::time::Duration;

use komugate_tests::gw::{city_fixed_egress, tls_connect, TestGateway};
use komugate_tests::udp::{Link, UdpEcho};
use komugate_tests::{eventually, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An HTTP/2 link to the mTLS listener as device `id`.
async fn link(gw: &TestGateway, id: &str) -> Link {
    let pki = gw.tls();
    let device = pki.device(id, &["staff"]);
    let tls = tls_connect(gw.mtls(), pki.client_config(Some(&device), &[b"h2"]))
        .await
        .expect("mTLS handshake");
    Link::over(tls).await
}

/// The access record of the UDP flow to `target`.
async fn udp_record(gw: &TestGateway, target: &str) -> serde_json::Value {
    let target = target.to_string();
    gw.access_record(move |r| r["method"] == "CONNECT-UDP" && r["target"] == target.as_str())
        .await
}

#[tokio::test]
async fn echo_through_the_gateway_leaves_from_the_egress_source() {
    within("udp echo", async {
        let gw = TestGateway::start(|c, _| {
            c.egress.fixed = vec![city_fixed_egress()];
        })
        .await;
        let echo = UdpEcho::start("127.0.0.1").await;
        let port = echo.addr.port();
        let link = link(&gw, "laptop-udp").await;

        // By name, through the fixed egress source.
        let mut flow = link.open("www.c4th.test", port).await.expect("flow opens");
        for msg in [&b"one"[..], b"two", &[0u8; 1200]] {
            assert_eq!(&flow.echo(msg).await[..], msg);
        }
        // By address (IPv4 literal), from the default source.
        let mut direct = link.open("127.0.0.1", port).await.expect("flow opens");
        assert_eq!(&direct.echo(b"direct").await[..], b"direct");
        let peers = echo.peers();
        assert_eq!(peers.len(), 4, "{peers:?}");
        assert!(
            peers[..3].iter().all(|p| p.ip().to_string() == "127.0.0.2"),
            "{peers:?}"
        );
        assert_eq!(peers[3].ip().to_string(), "127.0.0.1");

        // Closing the stream ends the flow: one record with the counts.
        flow.finish();
        let rec = udp_record(&gw, &format!("www.c4th.test:{port}")).await;
        assert_eq!(rec["protocol"], "udp");
        assert_eq!(rec["listener"], "mtls");
        assert_eq!(rec["device"], "laptop-udp");
        assert_eq!(rec["decision"], "allow");
        assert_eq!(rec["status"], 200);
        assert_eq!(rec["egress"], "127.0.0.2");
        assert_eq!(rec["packets_up"], 3);
        assert_eq!(rec["packets_down"], 3);
        assert_eq!(rec["bytes_up"], 1206);
        assert_eq!(rec["bytes_down"], 1206);
        assert!(rec["duration_ms"].is_u64(), "{rec}");
        assert!(
            rec.get("error").is_none() || rec["error"].is_null(),
            "{rec}"
        );

        assert!(gw.metric("komugate_udp_flows_total", &[("result", "allow")]) >= 2.0);
        assert!(gw.metric("komugate_udp_datagrams_total", &[("direction", "up")]) >= 4.0);
        assert!(
            gw.metric(
                "komugate_requests_total",
                &[("kind", "udp"), ("decision", "allow")]
            ) >= 1.0
        );
        gw.shutdown().await;
    })
    .await
}

fn policy(allowed: u16) -> String {
    format!(
        r#"
version = 1

[defaults]
action = "allow"

[firewall]
default = "deny"

[[firewall.rule]]
name = "echo-udp"
cidrs = ["127.0.0.0/8"]
ports = [{allowed}]
protocol = "udp"
action = "allow"

[[firewall.rule]]
name = "any-protocol-dns"
ports = [53]
action = "allow"
"#
    )
}

#[tokio::test]
async fn firewall_decides_udp_and_refuses_dns_and_quic_by_default() {
    within("udp firewall", async {
        let allowed = UdpEcho::start("127.0.0.1").await;
        let other = UdpEcho::start("127.0.0.1").await;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("policy.toml");
        std::fs::write(&file, policy(allowed.addr.port())).unwrap();
        let file = file.display().to_string();
        let gw = TestGateway::start(move |c, _| c.policy.file = file).await;
        let link = link(&gw, "laptop-fw").await;

        let mut ok = link
            .open("127.0.0.1", allowed.addr.port())
            .await
            .expect("allowed by the udp rule");
        assert_eq!(&ok.echo(b"hi").await[..], b"hi");

        // No rule for this port: the default denies it, before any socket.
        let refused = link.open("127.0.0.1", other.addr.port()).await.unwrap_err();
        assert_eq!(refused.status, 403);
        assert_eq!(refused.rule(), Some("firewall-default"));
        let rec = udp_record(&gw, &format!("127.0.0.1:{}", other.addr.port())).await;
        assert_eq!(rec["decision"], "block");
        assert_eq!(rec["rule"], "firewall-default");
        assert_eq!(rec["status"], 403);
        assert_eq!(rec["device"], "laptop-fw");
        assert!(other.peers().is_empty());

        // DNS: a rule for any protocol does not open it; DoH is the way.
        let dns = link.open("127.0.0.1", 53).await.unwrap_err();
        assert_eq!(
            (dns.status.as_u16(), dns.rule()),
            (403, Some("firewall-udp-dns"))
        );
        // QUIC to a web port: refused so the browser uses TCP.
        let quic = link.open("127.0.0.1", 443).await.unwrap_err();
        assert_eq!(
            (quic.status.as_u16(), quic.rule()),
            (403, Some("firewall-udp-quic"))
        );
        let rec = udp_record(&gw, "127.0.0.1:443").await;
        assert_eq!(rec["rule"], "firewall-udp-quic");

        // The link is fine after the refusals.
        assert_eq!(&ok.echo(b"still").await[..], b"still");
        assert!(gw.metric("komugate_udp_flows_total", &[("result", "block")]) >= 3.0);
        gw.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn guard_refuses_own_listeners_internal_ranges_and_dns_without_a_policy() {
    within("udp guard", async {
        let gw = TestGateway::start(|_, _| {}).await;
        let link = link(&gw, "laptop-guard").await;
        // The gateway's own listeners, even on loopback (which the test
        // config allows as a destination).
        for addr in [gw.mtls(), gw.admin(), gw.plain()] {
            let r = link.open("127.0.0.1", addr.port()).await.unwrap_err();
            assert_eq!(
                (r.status.as_u16(), r.rule()),
                (403, Some("own-listener")),
                "{addr}"
            );
        }
        // Private, metadata and link-local ranges are not destinations.
        for host in [
            "10.1.2.3",
            "169.254.169.254",
            "192.168.0.1",
            "::ffff:10.0.0.1",
        ] {
            let r = link.open(host, 5000).await.unwrap_err();
            assert_eq!(
                (r.status.as_u16(), r.rule()),
                (403, Some("destination-guard")),
                "{host}"
            );
        }
        let rec = udp_record(&gw, "169.254.169.254:5000").await;
        assert_eq!(rec["decision"], "block");
        assert!(
            rec["error"].as_str().unwrap().contains("cloud metadata"),
            "{rec}"
        );
        // Without a [firewall], DNS over UDP is still refused.
        let r = link.open("127.0.0.1", 53).await.unwrap_err();
        assert_eq!(r.rule(), Some("firewall-udp-dns"));
        gw.shutdown().await;
    })
    .await
}

/// The HTTP/1.1 form (`GET` + `Upgrade: connect-udp`) of a request.
fn http1_upgrade(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: connect-udp\r\nCapsule-Protocol: ?1\r\n\r\n"
    )
}

async fn read_head<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(s.read(&mut b).await.unwrap(), 1, "closed in the head");
        head.push(b[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[tokio::test]
async fn plain_listener_refuses_and_http1_upgrade_works_on_mtls() {
    within("udp http/1.1", async {
        let gw = TestGateway::start(|_, _| {}).await;
        let echo = UdpEcho::start("127.0.0.1").await;
        let path = masque::udp_path("127.0.0.1", echo.addr.port());

        // The plain (in-site, no device certificate) listener: refused.
        let mut plain = tokio::net::TcpStream::connect(gw.plain()).await.unwrap();
        plain
            .write_all(http1_upgrade(&path).as_bytes())
            .await
            .unwrap();
        let head = read_head(&mut plain).await;
        assert!(head.starts_with("HTTP/1.1 403"), "{head}");
        assert!(
            head.contains("komugate-rule: connect-udp-mtls-only"),
            "{head}"
        );
        let rec = gw
            .access_record(|r| r["method"] == "CONNECT-UDP" && r["listener"] == "plain")
            .await;
        assert_eq!(rec["rule"], "connect-udp-mtls-only");
        assert!(echo.peers().is_empty());

        // mTLS over HTTP/1.1: 101, then the connection is the capsule stream.
        let pki = gw.tls();
        let device = pki.device("laptop-h1", &[]);
        let mut tls = tls_connect(gw.mtls(), pki.client_config(Some(&device), &[b"http/1.1"]))
            .await
            .unwrap();
        tls.write_all(http1_upgrade(&path).as_bytes())
            .await
            .unwrap();
        let head = read_head(&mut tls).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(
            head.to_ascii_lowercase().contains("capsule-protocol: ?1"),
            "{head}"
        );
        let mut wire = Vec::new();
        masque::encode_datagram(b"over h1", &mut wire);
        tls.write_all(&wire).await.unwrap();
        let mut dec = masque::CapsuleDecoder::default();
        let mut buf = [0u8; 256];
        let got = loop {
            if let Some(p) = dec.next_payload().unwrap() {
                break p;
            }
            let n = tls.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before the echo");
            dec.push(&buf[..n]);
        };
        assert_eq!(&got[..], b"over h1");
        drop(tls);
        let rec = udp_record(&gw, &format!("127.0.0.1:{}", echo.addr.port())).await;
        assert_eq!(
            (rec["status"].as_u64(), rec["device"].as_str()),
            (Some(101), Some("laptop-h1"))
        );
        assert_eq!(rec["packets_up"], 1);
        gw.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn per_device_flow_limit_and_datagram_rate() {
    within("udp limits", async {
        let gw = TestGateway::start(|c, _| {
            c.udp.max_flows_per_device = 2;
            c.udp.datagrams_per_second = 10;
            c.udp.datagram_burst = 10;
        })
        .await;
        let echo = UdpEcho::start("127.0.0.1").await;
        let port = echo.addr.port();
        let link = link(&gw, "laptop-limits").await;
        let other_device = self::link(&gw, "laptop-other").await;

        let mut a = link.open("127.0.0.1", port).await.expect("first flow");
        let b = link.open("127.0.0.1", port).await.expect("second flow");
        // A flood of new flows: each refused with 429, counted and logged.
        for _ in 0..20 {
            let r = link.open("127.0.0.1", port).await.unwrap_err();
            assert_eq!(r.status, 429);
        }
        assert_eq!(
            gw.metric("komugate_udp_flows_total", &[("result", "limited")]),
            20.0
        );
        let rec = gw
            .access_record(|r| r["method"] == "CONNECT-UDP" && r["rule"] == "udp-flow-limit")
            .await;
        assert_eq!(rec["status"], 429);
        assert_eq!(rec["device"], "laptop-limits");
        // Another device has its own count.
        other_device
            .open("127.0.0.1", port)
            .await
            .expect("other device");
        // Closing one frees its slot.
        drop(b);
        let reopened = eventually(Duration::from_secs(3), || {
            let link = link.clone();
            async move { link.open("127.0.0.1", port).await.ok() }
        })
        .await;
        assert!(reopened.is_some(), "slot not released");

        // Rate: 10 datagrams per second, both directions and all the
        // device's flows together, burst 10. 40 sent at once: about 10 go
        // up (a few more earned while the test waits), the rest are dropped.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let before = echo.peers().len();
        for i in 0..40u8 {
            a.send(&[i; 8]);
        }
        let mut echoed = 0;
        while a.recv_within(Duration::from_millis(300)).await.is_some() {
            echoed += 1;
        }
        let reached = echo.peers().len() - before;
        assert!((8..=16).contains(&reached), "{reached} reached the origin");
        assert!(echoed <= reached, "{echoed} echoed of {reached}");
        let dropped = gw.metric(
            "komugate_udp_datagrams_dropped_total",
            &[("reason", "rate")],
        );
        assert!(dropped >= 24.0, "{dropped}");
        a.finish();
        let rec = gw
            .access_record(|r| {
                r["method"] == "CONNECT-UDP"
                    && r["device"] == "laptop-limits"
                    && r["packets_dropped"].as_u64().unwrap_or(0) >= 24
            })
            .await;
        assert_eq!(rec["decision"], "allow");
        gw.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn bad_input_ends_one_flow_and_the_link_stays_up() {
    within("udp bad input", async {
        let gw = TestGateway::start(|c, _| c.udp.max_datagram_bytes = 1000).await;
        let echo = UdpEcho::start("127.0.0.1").await;
        let port = echo.addr.port();
        let link = link(&gw, "laptop-bad").await;
        let mut bad = link.open("127.0.0.1", port).await.unwrap();
        let mut good = link.open("127.0.0.1", port).await.unwrap();
        assert_eq!(&good.echo(b"before").await[..], b"before");

        // A DATAGRAM capsule without a context ID: that flow ends.
        bad.send_raw(&[0x00, 0x00]);
        assert!(bad.recv_within(Duration::from_secs(3)).await.is_none());
        let rec = gw
            .access_record(|r| {
                r["method"] == "CONNECT-UDP"
                    && r["error"]
                        .as_str()
                        .is_some_and(|e| e.contains("malformed capsule stream"))
            })
            .await;
        assert_eq!(rec["device"], "laptop-bad");
        assert_eq!(gw.metric("komugate_udp_malformed_streams_total", &[]), 1.0);

        // A datagram over [udp] max_datagram_bytes: dropped, flow goes on.
        good.send(&[7u8; 1001]);
        assert_eq!(&good.echo(&[8u8; 1000]).await[..], &[8u8; 1000][..]);
        // Unknown capsule types and contexts are skipped, flow goes on.
        let mut junk = Vec::new();
        masque::encode_capsule(0x2f_00, b"future extension", &mut junk);
        masque::encode_capsule(masque::DATAGRAM, &[0x02, 1, 2, 3], &mut junk);
        good.send_raw(&junk);
        assert_eq!(&good.echo(b"after junk").await[..], b"after junk");
        let dropped = |reason| {
            gw.metric(
                "komugate_udp_datagrams_dropped_total",
                &[("reason", reason)],
            )
        };

        // Refused requests on the same link: bad path, no capsule-protocol,
        // another extended CONNECT protocol.
        let bad_port = link
            .open_path("/.well-known/masque/udp/127.0.0.1/0/", true)
            .await
            .unwrap_err();
        assert_eq!(bad_port.status, 400);
        let no_capsules = link
            .open_path(&masque::udp_path("127.0.0.1", port), false)
            .await
            .unwrap_err();
        assert_eq!(no_capsules.status, 400);
        let websocket = link
            .open_extended("websocket", "/chat", true)
            .await
            .unwrap_err();
        assert_eq!(websocket.status, 400);

        // Still up: the good flow and a new one.
        assert_eq!(&good.echo(b"still up").await[..], b"still up");
        let mut fresh = link.open("127.0.0.1", port).await.expect("new flow");
        assert_eq!(&fresh.echo(b"fresh").await[..], b"fresh");
        good.finish();
        let rec = gw
            .access_record(|r| r["method"] == "CONNECT-UDP" && r["packets_up"].as_u64() == Some(4))
            .await;
        assert_eq!(rec["packets_dropped"], 3, "{rec}");
        assert_eq!(dropped("oversized"), 1.0);
        assert_eq!(dropped("unknown_capsule"), 1.0);
        assert_eq!(dropped("unknown_context"), 1.0);
        gw.shutdown().await;
    })
    .await
}
