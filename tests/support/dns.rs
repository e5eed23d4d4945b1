//! A local authoritative DNS server (hickory-server, in-memory zone) on
//! 127.0.0.1, UDP and TCP on the same port.

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
    for (name, ip) in records {
        let name = Name::from_str(name).expect("record name");
        authority.upsert_mut(Record::from_rdata(name, 300, RData::A(A(*ip))), 1);
    }
    let mut catalog = Catalog::new();
    catalog.upsert(LowerName::new(&origin_name), vec![Arc::new(authority)]);

    let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind DNS UDP");
    let addr = udp.local_addr().unwrap();
    // Same port for TCP (truncated answers); fine if the port is taken.
    let tcp = TcpListener::bind(addr).await.ok();
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
