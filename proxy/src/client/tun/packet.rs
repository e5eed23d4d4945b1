//! What the TUN device hands us, checked before the user-space stack sees
//! it: a pure function from one IP packet (and the link's state) to a
//! verdict, so it is tested without a device.
//!
//! Packets the stack must not see are dropped and counted: truncated or
//! malformed headers, bad IPv4 header / TCP / UDP checksums (the kernel
//! writes complete checksums into a TUN device without offloads, so a bad
//! one is corruption or forgery), IP fragments (the stack does not
//! reassemble; the MTU of the device keeps the kernel from fragmenting
//! what it sends us), and what is not carried (multicast, ICMP, other
//! protocols). While the gateway link is down the device fails closed:
//! a TCP SYN is answered with a RST and UDP (except DNS, which is answered
//! SERVFAIL by the DNS handler) with ICMP "administratively prohibited",
//! unless the destination is a captive-portal check host in its window.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use etherparse::{icmpv4, icmpv6, Icmpv4Type, Icmpv6Type, PacketBuilder};

/// Why a packet was dropped (a counter each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    Malformed,
    BadChecksum,
    Fragment,
    /// Multicast, broadcast, ICMP, protocols other than TCP and UDP.
    NotCarried,
}

/// Why a packet was answered by us instead of being carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The gateway link is down (fail closed).
    LinkDown,
    /// UDP that is not carried (no CONNECT-UDP on this link).
    UdpNotCarried,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Hand the packet to the stack.
    Pass,
    Drop(Drop),
    /// Write this packet (a TCP RST or an ICMP error) back to the device.
    Reply(Refusal, Vec<u8>),
}

/// The state a verdict depends on.
pub trait Gate {
    fn link_up(&self) -> bool;
    /// Whether a flow to `dst` may go direct now (captive-portal window).
    fn captive_direct(&self, dst: SocketAddr) -> bool;
    /// Whether UDP other than DNS is carried (CONNECT-UDP on the link).
    fn udp_carried(&self) -> bool;
}

const TCP: u8 = 6;
const UDP: u8 = 17;
const FRAGMENT_HEADER: u8 = 44;
pub const DNS_PORT: u16 = 53;

/// The parts of a packet the verdict needs.
struct Parsed<'a> {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    /// The IP header(s), for quoting in ICMP errors.
    ip_header: &'a [u8],
    /// The transport header and payload.
    transport: &'a [u8],
}

pub fn inspect(packet: &[u8], gate: &impl Gate) -> Verdict {
    let p = match parse(packet) {
        Ok(p) => p,
        Err(d) => return Verdict::Drop(d),
    };
    if !unicast(p.dst) {
        return Verdict::Drop(Drop::NotCarried);
    }
    match p.proto {
        TCP => tcp(&p, gate),
        UDP => udp(&p, gate),
        _ => Verdict::Drop(Drop::NotCarried),
    }
}

fn parse(packet: &[u8]) -> Result<Parsed<'_>, Drop> {
    match packet.first().map(|b| b >> 4) {
        Some(4) => parse_v4(packet),
        Some(6) => parse_v6(packet),
        _ => Err(Drop::Malformed),
    }
}

fn parse_v4(packet: &[u8]) -> Result<Parsed<'_>, Drop> {
    if packet.len() < 20 {
        return Err(Drop::Malformed);
    }
    let ihl = (packet[0] & 0x0f) as usize * 4;
    let total = u16::from_be_bytes([packet[2], packet[3]]) as usize;
    if ihl < 20 || total < ihl || total > packet.len() {
        return Err(Drop::Malformed);
    }
    if fold(sum(&packet[..ihl], 0)) != 0xffff {
        return Err(Drop::BadChecksum);
    }
    let flags_offset = u16::from_be_bytes([packet[6], packet[7]]);
    // More-fragments set, or a non-zero offset: a fragment.
    if flags_offset & 0x3fff != 0 {
        return Err(Drop::Fragment);
    }
    let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
    Ok(Parsed {
        src: src.into(),
        dst: dst.into(),
        proto: packet[9],
        ip_header: &packet[..ihl],
        transport: &packet[ihl..total],
    })
}

fn parse_v6(packet: &[u8]) -> Result<Parsed<'_>, Drop> {
    if packet.len() < 40 {
        return Err(Drop::Malformed);
    }
    let payload_len = u16::from_be_bytes([packet[4], packet[5]]) as usize;
    if 40 + payload_len > packet.len() {
        return Err(Drop::Malformed);
    }
    let mut next = packet[6];
    let mut at = 40;
    // Walk the extension headers the stack would also skip; a fragment
    // header means a fragment (even an atomic one: nothing sends those to us).
    loop {
        match next {
            FRAGMENT_HEADER => return Err(Drop::Fragment),
            // hop-by-hop, routing, destination options
            0 | 43 | 60 => {
                if at + 8 > 40 + payload_len {
                    return Err(Drop::Malformed);
                }
                next = packet[at];
                at += (packet[at + 1] as usize + 1) * 8;
                if at > 40 + payload_len {
                    return Err(Drop::Malformed);
                }
            }
            _ => break,
        }
    }
    let mut s = [0u8; 16];
    s.copy_from_slice(&packet[8..24]);
    let mut d = [0u8; 16];
    d.copy_from_slice(&packet[24..40]);
    Ok(Parsed {
        src: Ipv6Addr::from(s).into(),
        dst: Ipv6Addr::from(d).into(),
        proto: next,
        ip_header: &packet[..at],
        transport: &packet[at..40 + payload_len],
    })
}

fn unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => !(a.is_multicast() || a.is_broadcast() || a.is_unspecified()),
        IpAddr::V6(a) => !(a.is_multicast() || a.is_unspecified()),
    }
}

fn tcp(p: &Parsed<'_>, gate: &impl Gate) -> Verdict {
    let t = p.transport;
    if t.len() < 20 || (t[12] >> 4) < 5 || (t[12] >> 4) as usize * 4 > t.len() {
        return Verdict::Drop(Drop::Malformed);
    }
    if !transport_checksum_ok(p, TCP) {
        return Verdict::Drop(Drop::BadChecksum);
    }
    let dport = u16::from_be_bytes([t[2], t[3]]);
    if gate.link_up() || gate.captive_direct(SocketAddr::new(p.dst, dport)) {
        return Verdict::Pass;
    }
    let flags = t[13];
    let (rst, syn, ack, fin) = (
        flags & 0x04 != 0,
        flags & 0x02 != 0,
        flags & 0x10 != 0,
        flags & 0x01 != 0,
    );
    if rst {
        return Verdict::Drop(Drop::NotCarried);
    }
    // RFC 9293 §3.10.7.1: answer a segment without ACK with
    // <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>, one with ACK with <SEQ=SEG.ACK><CTL=RST>.
    let seq = u32::from_be_bytes([t[4], t[5], t[6], t[7]]);
    let their_ack = u32::from_be_bytes([t[8], t[9], t[10], t[11]]);
    let data_len = (t.len() - (t[12] >> 4) as usize * 4) as u32;
    let seg_len = data_len + syn as u32 + fin as u32;
    let sport = u16::from_be_bytes([t[0], t[1]]);
    let reply = if ack {
        build(p, |b| b.tcp(dport, sport, their_ack, 0).rst())
    } else {
        build(p, |b| {
            b.tcp(dport, sport, 0, 0)
                .rst()
                .ack(seq.wrapping_add(seg_len))
        })
    };
    match reply {
        Some(r) => Verdict::Reply(Refusal::LinkDown, r),
        None => Verdict::Drop(Drop::Malformed),
    }
}

fn udp(p: &Parsed<'_>, gate: &impl Gate) -> Verdict {
    let t = p.transport;
    if t.len() < 8 || (u16::from_be_bytes([t[4], t[5]]) as usize) != t.len() {
        return Verdict::Drop(Drop::Malformed);
    }
    // IPv4 UDP may leave the checksum out (0); IPv6 may not (RFC 8200 §8.1).
    let unchecked = p.src.is_ipv4() && t[6] == 0 && t[7] == 0;
    if !unchecked && !transport_checksum_ok(p, UDP) {
        return Verdict::Drop(Drop::BadChecksum);
    }
    let dport = u16::from_be_bytes([t[2], t[3]]);
    // DNS to any address is answered by the DNS handler (DoH, or SERVFAIL
    // while the link is down, or the captive-portal check hosts direct).
    if dport == DNS_PORT {
        return Verdict::Pass;
    }
    let refusal = if !gate.link_up() {
        Refusal::LinkDown
    } else if !gate.udp_carried() {
        Refusal::UdpNotCarried
    } else {
        return Verdict::Pass;
    };
    match icmp_prohibited(p) {
        Some(r) => Verdict::Reply(refusal, r),
        None => Verdict::Drop(Drop::Malformed),
    }
}

/// The ICMP error that refuses a UDP flow from `app` to `dst` after the
/// stack took it (the gateway refused the CONNECT-UDP): it quotes the
/// headers the application's socket is matched by.
pub fn udp_refusal(app: SocketAddr, dst: SocketAddr) -> Option<Vec<u8>> {
    let mut quoted = Vec::new();
    match (app.ip(), dst.ip()) {
        (IpAddr::V4(a), IpAddr::V4(d)) => PacketBuilder::ipv4(a.octets(), d.octets(), 64)
            .udp(app.port(), dst.port())
            .write(&mut quoted, &[])
            .ok()?,
        (IpAddr::V6(a), IpAddr::V6(d)) => PacketBuilder::ipv6(a.octets(), d.octets(), 64)
            .udp(app.port(), dst.port())
            .write(&mut quoted, &[])
            .ok()?,
        _ => return None,
    }
    icmp_prohibited(&parse(&quoted).ok()?)
}

/// ICMP destination unreachable, administratively prohibited, quoting
/// the packet's IP header and first 8 bytes (RFC 792; RFC 4443 allows
/// more, but the start is what the sender's stack matches on).
fn icmp_prohibited(p: &Parsed<'_>) -> Option<Vec<u8>> {
    let mut quote = p.ip_header.to_vec();
    quote.extend_from_slice(&p.transport[..p.transport.len().min(8)]);
    match (p.src, p.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let b = PacketBuilder::ipv4(d.octets(), s.octets(), 64).icmpv4(
                Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::FilterProhibited),
            );
            let mut out = Vec::with_capacity(b.size(quote.len()));
            b.write(&mut out, &quote).ok()?;
            Some(out)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let b = PacketBuilder::ipv6(d.octets(), s.octets(), 64).icmpv6(
                Icmpv6Type::DestinationUnreachable(icmpv6::DestUnreachableCode::Prohibited),
            );
            let mut out = Vec::with_capacity(b.size(quote.len()));
            b.write(&mut out, &quote).ok()?;
            Some(out)
        }
        _ => None,
    }
}

/// Builds a reply from `p.dst` to `p.src` with `f` adding the transport.
fn build(
    p: &Parsed<'_>,
    f: impl FnOnce(
        etherparse::PacketBuilderStep<etherparse::IpHeaders>,
    ) -> etherparse::PacketBuilderStep<etherparse::TcpHeader>,
) -> Option<Vec<u8>> {
    let ip = match (p.src, p.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => etherparse::IpHeaders::Ipv4(
            etherparse::Ipv4Header::new(0, 64, etherparse::IpNumber::TCP, d.octets(), s.octets())
                .ok()?,
            Default::default(),
        ),
        (IpAddr::V6(s), IpAddr::V6(d)) => etherparse::IpHeaders::Ipv6(
            etherparse::Ipv6Header {
                traffic_class: 0,
                flow_label: Default::default(),
                payload_length: 0,
                next_header: etherparse::IpNumber::TCP,
                hop_limit: 64,
                source: d.octets(),
                destination: s.octets(),
            },
            Default::default(),
        ),
        _ => return None,
    };
    let b = f(PacketBuilder::ip(ip));
    let mut out = Vec::with_capacity(b.size(0));
    b.write(&mut out, &[]).ok()?;
    Some(out)
}

/// The TCP or UDP checksum over the pseudo-header and the segment.
fn transport_checksum_ok(p: &Parsed<'_>, proto: u8) -> bool {
    let len = p.transport.len() as u32;
    let mut acc = match (p.src, p.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => sum(&d.octets(), sum(&s.octets(), 0)),
        (IpAddr::V6(s), IpAddr::V6(d)) => sum(&d.octets(), sum(&s.octets(), 0)),
        _ => return false,
    };
    acc += proto as u32 + (len >> 16) + (len & 0xffff);
    fold(sum(p.transport, acc)) == 0xffff
}

/// One's-complement sum of 16-bit words (RFC 1071), not yet folded.
fn sum(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u16::from_be_bytes([c[0], c[1]]) as u32;
        // Fold now and then so a 64 KiB packet cannot overflow.
        if acc > 0xffff_0000 {
            acc = (acc & 0xffff) + (acc >> 16);
        }
    }
    if let [last] = chunks.remainder() {
        acc += (*last as u32) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    struct G {
        up: bool,
        captive: Option<SocketAddr>,
        udp: bool,
    }
    impl Gate for G {
        fn link_up(&self) -> bool {
            self.up
        }
        fn captive_direct(&self, dst: SocketAddr) -> bool {
            self.captive == Some(dst)
        }
        fn udp_carried(&self) -> bool {
            self.udp
        }
    }
    const UP: G = G {
        up: true,
        captive: None,
        udp: true,
    };
    const DOWN: G = G {
        up: false,
        captive: None,
        udp: true,
    };

    fn syn4(dst: [u8; 4], port: u16) -> Vec<u8> {
        let b = PacketBuilder::ipv4([10, 0, 0, 2], dst, 64)
            .tcp(40000, port, 1000, 64240)
            .syn();
        let mut v = Vec::new();
        b.write(&mut v, &[]).unwrap();
        v
    }
    fn udp4(dst: [u8; 4], port: u16, payload: &[u8]) -> Vec<u8> {
        let b = PacketBuilder::ipv4([10, 0, 0, 2], dst, 64).udp(40000, port);
        let mut v = Vec::new();
        b.write(&mut v, payload).unwrap();
        v
    }
    fn udp6(port: u16) -> Vec<u8> {
        let b = PacketBuilder::ipv6([0xfd; 16], [0x20; 16], 64).udp(40000, port);
        let mut v = Vec::new();
        b.write(&mut v, b"hello").unwrap();
        v
    }

    #[test]
    fn good_packets_pass_while_the_link_is_up() {
        assert_eq!(inspect(&syn4([192, 0, 2, 1], 443), &UP), Verdict::Pass);
        assert_eq!(
            inspect(&udp4([192, 0, 2, 1], 443, b"quic"), &UP),
            Verdict::Pass
        );
        assert_eq!(inspect(&udp6(443), &UP), Verdict::Pass);
    }

    #[test]
    fn bad_checksums_fragments_and_junk_are_dropped() {
        let mut p = syn4([192, 0, 2, 1], 443);
        p[20 + 16] ^= 0x55; // TCP checksum
        assert_eq!(inspect(&p, &UP), Verdict::Drop(Drop::BadChecksum));
        let mut p = udp4([192, 0, 2, 1], 53, b"q");
        p[10] ^= 1; // IPv4 header checksum
        assert_eq!(inspect(&p, &UP), Verdict::Drop(Drop::BadChecksum));
        let mut p = udp6(443);
        p[40 + 8] ^= 1; // payload byte under the UDP checksum
        assert_eq!(inspect(&p, &UP), Verdict::Drop(Drop::BadChecksum));

        // A first fragment (MF set): header checksum fixed up so only the flag differs.
        let mut p = udp4([192, 0, 2, 1], 443, b"frag");
        p[6] |= 0x20;
        p[10] = 0;
        p[11] = 0;
        let c = !fold(sum(&p[..20], 0));
        p[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(inspect(&p, &UP), Verdict::Drop(Drop::Fragment));
        // IPv6 with a fragment header.
        let mut p = udp6(443);
        p[6] = FRAGMENT_HEADER;
        assert_eq!(inspect(&p, &UP), Verdict::Drop(Drop::Fragment));

        assert_eq!(inspect(&[], &UP), Verdict::Drop(Drop::Malformed));
        assert_eq!(inspect(&[0x45; 19], &UP), Verdict::Drop(Drop::Malformed));
        let p = syn4([192, 0, 2, 1], 443);
        assert_eq!(inspect(&p[..30], &UP), Verdict::Drop(Drop::Malformed));
        let mut p = udp4([224, 0, 0, 251], 5353, b"mdns");
        assert_eq!(inspect(&p, &UP), Verdict::Drop(Drop::NotCarried));
        p[9] = 1; // ICMP
        assert!(matches!(inspect(&p, &UP), Verdict::Drop(_)));
    }

    #[test]
    fn while_the_link_is_down_syn_gets_a_reset_and_udp_an_icmp_error() {
        let Verdict::Reply(Refusal::LinkDown, rst) = inspect(&syn4([192, 0, 2, 1], 443), &DOWN)
        else {
            panic!("a SYN is refused while down")
        };
        let h = etherparse::SlicedPacket::from_ip(&rst).unwrap();
        let Some(etherparse::TransportSlice::Tcp(t)) = h.transport else {
            panic!()
        };
        assert!(t.rst() && t.ack());
        assert_eq!((t.source_port(), t.destination_port()), (443, 40000));
        assert_eq!(t.acknowledgment_number(), 1001);
        // Our reply must itself pass a checksum check.
        let back = parse(&rst).unwrap();
        assert!(transport_checksum_ok(&back, TCP));

        let Verdict::Reply(Refusal::LinkDown, icmp) =
            inspect(&udp4([192, 0, 2, 1], 443, b"q"), &DOWN)
        else {
            panic!("UDP is refused while down")
        };
        assert_eq!((icmp[9], icmp[20], icmp[21]), (1, 3, 13));
        assert_eq!(&icmp[16..20], &[10, 0, 0, 2]);
        let Verdict::Reply(Refusal::LinkDown, icmp6) = inspect(&udp6(443), &DOWN) else {
            panic!()
        };
        assert_eq!((icmp6[6], icmp6[40], icmp6[41]), (58, 1, 1));

        // DNS still reaches the handler (SERVFAIL or captive), captive hosts pass.
        assert_eq!(
            inspect(&udp4([192, 0, 2, 1], 53, b"q"), &DOWN),
            Verdict::Pass
        );
        let captive = G {
            up: false,
            captive: Some("192.0.2.9:80".parse().unwrap()),
            udp: true,
        };
        assert_eq!(inspect(&syn4([192, 0, 2, 9], 80), &captive), Verdict::Pass);
        assert!(matches!(
            inspect(&syn4([192, 0, 2, 9], 81), &captive),
            Verdict::Reply(..)
        ));

        // A refusal after the fact quotes what the application sent.
        let r = udp_refusal(
            "10.0.0.2:40000".parse().unwrap(),
            "192.0.2.1:9".parse().unwrap(),
        )
        .unwrap();
        assert_eq!((r[20], r[21]), (3, 13));
        assert_eq!(&r[28 + 12..28 + 20], &[10, 0, 0, 2, 192, 0, 2, 1]);
        assert_eq!(&r[28 + 20..28 + 24], &[0x9c, 0x40, 0, 9]);

        // Up, but no CONNECT-UDP: refused so QUIC falls back to TCP at once.
        let no_udp = G {
            up: true,
            captive: None,
            udp: false,
        };
        assert!(matches!(
            inspect(&udp4([192, 0, 2, 1], 443, b"q"), &no_udp),
            Verdict::Reply(Refusal::UdpNotCarried, _)
        ));
    }
}
