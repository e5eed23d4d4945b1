//! A local authoritative DNS server (hickory-server, in-memory zone) on
//! 127.0.0.1, UDP and TCP on the same port; and a misbehaving one
//! ([`FaultDns`]) for the DNS fault tests.

use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::authority::{Catalog, ZoneType};
use hickory_server::proto::rr::rdata::{A, SOA};
use hickory_server::proto::rr::{LowerName, Name, RData, Record};
use hickory_server::store::in_memory::InMemoryAuthority;
use hickory_server::ServerFuture;
use tokio::net::{TcpListener, UdpSocket};

pub struct DnsServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves zone `origin` (e.g. "test.") with the given A records
/// (fully qualified names, e.g. "www.c4th.test.").
pub async fn start(origin: &str, records: &[(&str, Ipv4Addr)]) -> DnsServer {
    start_zones(&[(origin, records)]).await
}

/// Serves several zones from one server: (origin, A records) each.
pub async fn start_zones(zones: &[(&str, &[(&str, Ipv4Addr)])]) -> DnsServer {
    let (udp, tcp) = bind_udp_and_tcp().await;
    serve_zones(udp, Some(tcp), zones)
}

/// A UDP socket and a TCP listener on one free port of 127.0.0.1 (DNS over
/// TCP follows a truncated UDP answer to the same port). The kernel picks
/// the UDP port; another test may hold that number for TCP, so a few
/// ports are tried.
async fn bind_udp_and_tcp() -> (UdpSocket, TcpListener) {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind DNS UDP");
        match TcpListener::bind(udp.local_addr().unwrap()).await {
            Ok(tcp) => return (udp, tcp),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => panic!("bind DNS TCP on the UDP port: {e}"),
        }
    }
    panic!("no port of 127.0.0.1 free for both DNS UDP and TCP after 50 tries");
}

/// Serves `zones` on sockets bound elsewhere (another address or namespace).
pub fn serve_zones(
    udp: UdpSocket,
    tcp: Option<TcpListener>,
    zones: &[(&str, &[(&str, Ipv4Addr)])],
) -> DnsServer {
    let mut catalog = Catalog::new();
    for (origin, records) in zones {
        let origin_name = Name::from_str(origin).expect("zone origin");
        let mut authority = InMemoryAuthority::empty(origin_name.clone(), ZoneType::Primary, false);
        let soa = SOA::new(
            Name::from_str(&format!("ns.{origin}")).unwrap(),
            Name::from_str(&format!("hostmaster.{origin}")).unwrap(),
            1,
            3600,
            600,
            86400,
            60,
        );
        authority.upsert_mut(
            Record::from_rdata(origin_name.clone(), 3600, RData::SOA(soa)),
            1,
        );
        for (name, ip) in records.iter() {
            let name = Name::from_str(name).expect("record name");
            authority.upsert_mut(Record::from_rdata(name, 300, RData::A(A(*ip))), 1);
        }
        catalog.upsert(LowerName::new(&origin_name), vec![Arc::new(authority)]);
    }

    let addr = udp.local_addr().unwrap();
    let mut server = ServerFuture::new(catalog);
    server.register_socket(udp);
    if let Some(tcp) = tcp {
        server.register_listener(tcp, Duration::from_secs(5));
    }
    let task = tokio::spawn(async move {
        let _ = server.block_until_done().await;
    });
    DnsServer { addr, task }
}

/// What [`FaultDns`] does with a query, chosen by the queried name's first label.
///
/// - `servfail.*`: answers SERVFAIL (UDP and TCP)
/// - `silent.*`: never answers
/// - `truncated.*`: UDP answers are empty with TC=1; TCP answers A 127.0.0.1
/// - `tcpgone.*`: UDP answers are empty with TC=1; TCP connections are closed unanswered
/// - anything else: A 127.0.0.1
pub struct FaultDns {
    pub addr: SocketAddr,
    seen: Arc<std::sync::Mutex<Vec<(String, &'static str)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for FaultDns {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl FaultDns {
    pub async fn start() -> FaultDns {
        let (udp, tcp) = bind_udp_and_tcp().await;
        let udp = Arc::new(udp);
        let addr = udp.local_addr().unwrap();
        let seen: Arc<std::sync::Mutex<Vec<(String, &'static str)>>> = Default::default();
        let seen_udp = seen.clone();
        let udp_task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, peer)) = udp.recv_from(&mut buf).await else {
                    return;
                };
                if let Some(answer) = fault_answer(&buf[..n], "udp", &seen_udp) {
                    let _ = udp.send_to(&answer, peer).await;
                }
            }
        });
        let seen_tcp = seen.clone();
        let tcp_task = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            loop {
                let Ok((mut s, _)) = tcp.accept().await else {
                    return;
                };
                let seen = seen_tcp.clone();
                tokio::spawn(async move {
                    loop {
                        let mut len = [0u8; 2];
                        if s.read_exact(&mut len).await.is_err() {
                            return;
                        }
                        let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
                        if s.read_exact(&mut q).await.is_err() {
                            return;
                        }
                        let Some(answer) = fault_answer(&q, "tcp", &seen) else {
                            return; // close unanswered
                        };
                        let mut framed = (answer.len() as u16).to_be_bytes().to_vec();
                        framed.extend_from_slice(&answer);
                        if s.write_all(&framed).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        FaultDns {
            addr,
            seen,
            tasks: vec![udp_task, tcp_task],
        }
    }

    /// Queries received for names starting with `label.`, by transport.
    pub fn queries(&self, label: &str, transport: &str) -> usize {
        let prefix = format!("{label}.");
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, t)| n.starts_with(&prefix) && *t == transport)
            .count()
    }
}

fn fault_answer(
    query: &[u8],
    transport: &'static str,
    seen: &std::sync::Mutex<Vec<(String, &'static str)>>,
) -> Option<Vec<u8>> {
    use hickory_server::proto::op::{Message, MessageType, ResponseCode};
    use hickory_server::proto::rr::RecordType;
    let q = Message::from_vec(query).ok()?;
    let question = q.queries().first()?.clone();
    let name = question.name().to_ascii().to_ascii_lowercase();
    seen.lock().unwrap().push((name.clone(), transport));
    let label = name.split('.').next().unwrap_or("");
    let mut m = Message::new();
    m.set_id(q.id())
        .set_message_type(MessageType::Response)
        .set_op_code(q.op_code())
        .set_recursion_desired(q.recursion_desired())
        .set_recursion_available(true)
        .add_query(question.clone());
    match (label, transport) {
        ("silent", _) => return None,
        ("servfail", _) => {
            m.set_response_code(ResponseCode::ServFail);
        }
        ("truncated" | "tcpgone", "udp") => {
            m.set_truncated(true);
        }
        ("tcpgone", _) => return None,
        _ => {
            m.set_authoritative(true);
            if question.query_type() == RecordType::A {
                m.add_answer(Record::from_rdata(
                    question.name().clone(),
                    60,
                    RData::A(A(Ipv4Addr::LOCALHOST)),
                ));
            }
        }
    }
    m.to_vec().ok()
}
