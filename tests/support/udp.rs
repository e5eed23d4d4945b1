//! UDP through the gateway: a CONNECT-UDP client (RFC 9298) over a real
//! HTTP/2 link (the `h2` crate, extended CONNECT with `:protocol
//! connect-udp`) and a UDP echo origin that notes who sent to it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use http::{HeaderMap, Method, Request, StatusCode};
use masque::CapsuleDecoder;
use tokio::net::UdpSocket;

/// A UDP echo server on `ip`, port 0.
pub struct UdpEcho {
    pub addr: SocketAddr,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
}

impl UdpEcho {
    pub async fn start(ip: &str) -> UdpEcho {
        let socket = UdpSocket::bind((ip, 0)).await.expect("bind UDP echo");
        let addr = socket.local_addr().unwrap();
        let peers = Arc::new(Mutex::new(Vec::new()));
        let seen = peers.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                seen.lock().unwrap().push(from);
                let _ = socket.send_to(&buf[..n], from).await;
            }
        });
        UdpEcho { addr, peers }
    }

    /// Source addresses of the datagrams received so far.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().unwrap().clone()
    }
}

/// One HTTP/2 connection to the gateway that carries CONNECT-UDP streams.
#[derive(Clone)]
pub struct Link {
    client: SendRequest<Bytes>,
}

/// A CONNECT-UDP request the gateway refused.
#[derive(Debug)]
pub struct Refused {
    pub status: StatusCode,
    pub headers: HeaderMap,
}

impl Refused {
    /// The `komugate-rule` header of a block.
    pub fn rule(&self) -> Option<&str> {
        self.headers
            .get("komugate-rule")
            .and_then(|v| v.to_str().ok())
    }
}

impl Link {
    /// HTTP/2 over `tls` (ALPN h2 already negotiated); waits for the
    /// gateway's SETTINGS to allow extended CONNECT.
    pub async fn over<S>(tls: S) -> Link
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (client, conn) = h2::client::handshake(tls).await.expect("h2 handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut client = client.ready().await.expect("h2 ready");
        let enabled = super::eventually(Duration::from_secs(3), || {
            let on = client.is_extended_connect_protocol_enabled();
            async move { on.then_some(()) }
        })
        .await;
        // One request round trip also gets the SETTINGS processed.
        if enabled.is_none() {
            client = client.ready().await.expect("h2 ready");
        }
        assert!(
            client.is_extended_connect_protocol_enabled(),
            "the gateway does not offer extended CONNECT (SETTINGS_ENABLE_CONNECT_PROTOCOL)"
        );
        Link { client }
    }

    /// Opens a UDP flow to `host:port` (the RFC 9298 default template).
    pub async fn open(&self, host: &str, port: u16) -> Result<UdpFlow, Refused> {
        self.open_path(&masque::udp_path(host, port), true).await
    }

    /// Opens a CONNECT-UDP stream with `path`, with or without the
    /// `capsule-protocol: ?1` header.
    pub async fn open_path(&self, path: &str, capsules: bool) -> Result<UdpFlow, Refused> {
        self.open_extended(masque::PROTOCOL, path, capsules).await
    }

    /// An extended CONNECT for `protocol` (a 2xx is read as a UDP flow).
    pub async fn open_extended(
        &self,
        protocol: &str,
        path: &str,
        capsules: bool,
    ) -> Result<UdpFlow, Refused> {
        let mut req = Request::builder()
            .method(Method::CONNECT)
            .uri(format!("https://localhost{path}"))
            .extension(h2::ext::Protocol::from(protocol));
        if capsules {
            req = req.header(
                masque::CAPSULE_PROTOCOL_HEADER,
                masque::CAPSULE_PROTOCOL_VALUE,
            );
        }
        let req = req.body(()).unwrap();
        let mut client = self.client.clone().ready().await.expect("h2 ready");
        let (resp, send) = client.send_request(req, false).expect("send request");
        let resp = resp.await.expect("response head");
        if resp.status() != StatusCode::OK {
            return Err(Refused {
                status: resp.status(),
                headers: resp.headers().clone(),
            });
        }
        assert_eq!(
            resp.headers()
                .get(masque::CAPSULE_PROTOCOL_HEADER)
                .map(|v| v.as_bytes()),
            Some(&b"?1"[..]),
            "2xx without capsule-protocol: ?1"
        );
        Ok(UdpFlow {
            send,
            recv: resp.into_body(),
            decoder: CapsuleDecoder::default(),
        })
    }
}

/// One open UDP flow.
#[derive(Debug)]
pub struct UdpFlow {
    send: SendStream<Bytes>,
    recv: RecvStream,
    decoder: CapsuleDecoder,
}

impl UdpFlow {
    /// Sends one UDP payload as a DATAGRAM capsule.
    pub fn send(&mut self, payload: &[u8]) {
        let mut wire = Vec::with_capacity(masque::datagram_capsule_len(payload.len()));
        masque::encode_datagram(payload, &mut wire);
        self.send_raw(&wire);
    }

    /// Sends raw bytes on the stream (capsules, or garbage).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.send
            .send_data(Bytes::copy_from_slice(bytes), false)
            .expect("send on the CONNECT-UDP stream");
    }

    /// Ends the client's side of the stream.
    pub fn finish(&mut self) {
        let _ = self.send.send_data(Bytes::new(), true);
    }

    /// The next UDP payload from the origin; `None` when the stream ended
    /// or was reset.
    pub async fn recv(&mut self) -> Option<Bytes> {
        loop {
            match self.decoder.next_payload() {
                Ok(Some(p)) => return Some(p),
                Ok(None) => {}
                Err(e) => panic!("the gateway sent a malformed capsule stream: {e}"),
            }
            let data = self.recv.data().await?.ok()?;
            let _ = self.recv.flow_control().release_capacity(data.len());
            self.decoder.push(&data);
        }
    }

    /// The next payload within `limit`, `None` if none came.
    pub async fn recv_within(&mut self, limit: Duration) -> Option<Bytes> {
        tokio::time::timeout(limit, self.recv())
            .await
            .ok()
            .flatten()
    }

    /// Sends `payload` and waits (2 s) for the echo.
    pub async fn echo(&mut self, payload: &[u8]) -> Bytes {
        self.send(payload);
        self.recv_within(Duration::from_secs(2))
            .await
            .expect("echo through the gateway")
    }
}
