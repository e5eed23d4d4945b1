//! MASQUE codec for komugate: UDP over HTTP (CONNECT-UDP, RFC 9298) with
//! HTTP Datagrams carried in capsules (RFC 9297). Pure: no sockets, no
//! runtime; the gateway (`proxy/src/flow/udp.rs`) and `komugate client
//! --tun` share it.
//!
//! # The exchange
//!
//! Over HTTP/2 extended CONNECT (RFC 8441 / RFC 9220 style) the client
//! sends
//!
//! ```text
//! :method = CONNECT
//! :protocol = connect-udp            (PROTOCOL)
//! :scheme = https
//! :authority = <gateway>
//! :path = /.well-known/masque/udp/<host>/<port>/   (udp_path)
//! capsule-protocol = ?1              (CAPSULE_PROTOCOL_HEADER, CAPSULE_PROTOCOL_VALUE)
//! ```
//!
//! A 2xx answer opens the flow; then both directions of the stream are a
//! capsule stream, each UDP payload one DATAGRAM capsule (context 0).
//!
//! # API
//!
//! - [`udp_path`]`(host, port) -> String`: the request path (IPv6 literals
//!   percent-encoded, brackets optional); [`parse_udp_path`]`(path) ->
//!   Result<`[`UdpTarget`]`, `[`PathError`]`>` reads it back (port 1-65535,
//!   host name or IP).
//! - [`encode_datagram`]`(payload, &mut out)`: appends one DATAGRAM capsule
//!   (`out`: `Vec<u8>` or `BytesMut`, any `bytes::BufMut`);
//!   [`datagram_capsule_len`] its size; [`encode_capsule`] any capsule.
//! - [`CapsuleDecoder`]: `push(&[u8])` what arrives, then `next_payload()`
//!   → `Ok(Some(Bytes))` a UDP payload, `Ok(None)` need more bytes,
//!   `Err(`[`CapsuleError`]`)` malformed (end the stream). Unknown capsule
//!   types, context IDs other than 0 and DATAGRAMs over the limit given to
//!   `CapsuleDecoder::new` (default [`DEFAULT_MAX_DATAGRAM`]) are skipped
//!   without buffering and counted in `stats()`; `finish()` at end of
//!   stream reports a capsule cut short.
//! - [`varint`]: QUIC variable-length integers.
//!
//! ```
//! let mut wire = Vec::new();
//! masque::encode_datagram(b"ping", &mut wire);
//! let mut dec = masque::CapsuleDecoder::default();
//! dec.push(&wire[..3]);
//! assert_eq!(dec.next_payload().unwrap(), None); // need more
//! dec.push(&wire[3..]);
//! assert_eq!(dec.next_payload().unwrap().as_deref(), Some(&b"ping"[..]));
//! ```

mod capsule;
#[cfg(any(test, feature = "checked"))]
pub mod checked;
mod path;
pub mod varint;

pub use capsule::{
    datagram_capsule_len, encode_capsule, encode_datagram, parse_datagram, CapsuleDecoder,
    CapsuleError, DecoderStats, DATAGRAM, DEFAULT_MAX_DATAGRAM, MAX_UDP_PAYLOAD, UDP_CONTEXT,
};
pub use path::{parse_udp_path, target_path, udp_path, Host, PathError, UdpTarget, PREFIX};

/// The `:protocol` pseudo-header value of a CONNECT-UDP request.
pub const PROTOCOL: &str = "connect-udp";

/// The header both sides send to say the stream carries capsules
/// (RFC 9297 section 3.4), and its value (a structured-field boolean true).
pub const CAPSULE_PROTOCOL_HEADER: &str = "capsule-protocol";
pub const CAPSULE_PROTOCOL_VALUE: &str = "?1";
