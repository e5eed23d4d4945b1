//! DNS over HTTPS (RFC 8484) on the mTLS listener: `GET /dns-query?dns=`
//! (base64url) and `POST /dns-query` (`application/dns-message`), for
//! device-authenticated clients only.
//!
//! Each query is checked, in order, against the threat-intel domain lists,
//! the IPS `dns.query` (and `alert dns` payload) rules, and the decision
//! point (as a CONNECT to the name on port 443, so DNS follows the same
//! category and policy rules as the web). Blocked names get NXDOMAIN or the
//! configured block-page address (`[doh] blocked_answer`). Allowed queries
//! are resolved with hickory (the gateway's `[dns]` servers); answers whose
//! addresses or CNAME targets are threat-intel listed are blocked as well.
//! Every query is one access record (method `DNS`, target the name). The
//! order of these steps is stated in [`crate::flow`]; this module has them.

use std::net::IpAddr;

use base64::Engine as _;
use bytes::Bytes;
use hickory_resolver::proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, AAAA};
use hickory_resolver::proto::rr::{RData, Record, RecordType};
use hickory_resolver::proto::ProtoErrorKind;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

pub use crate::config::{BlockedAnswer, DohConfig};
use crate::egress::Resolver;
use crate::ips::{EventContext, Security};
use crate::record::AccessRecord;
use crate::request::{ConnContext, ListenerKind, ProxyBody};
use crate::stages::ips::add_events;

pub const PATH: &str = "/dns-query";
const CONTENT_TYPE: &str = "application/dns-message";
/// Largest DNS message (RFC 8484 §6 allows up to 65535 bytes).
const MAX_MESSAGE: usize = 65535;

/// Whether a request on the proxy listeners is a DoH request to the
/// gateway itself (origin-form `/dns-query`, or an `https://` h2 request
/// with that path, on the mTLS listener).
pub fn is_doh<B>(conn: &ConnContext, req: &Request<B>) -> bool {
    conn.listener == ListenerKind::Mtls
        && req.method() != Method::CONNECT
        && req.uri().path() == PATH
        && req.uri().scheme_str() != Some("http")
}

fn respond(status: StatusCode, content_type: &str, body: Bytes) -> Response<ProxyBody> {
    let mut resp = Response::new(Full::new(body).map_err(|never| match never {}).boxed());
    *resp.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp
}

fn bad(status: StatusCode, msg: &str) -> Response<ProxyBody> {
    respond(
        status,
        "text/plain; charset=utf-8",
        Bytes::from(format!("{msg}\n")),
    )
}

/// The HTTP answer carrying a DNS reply (`Cache-Control` from its TTLs).
pub fn reply(answer: &Message, record: &mut AccessRecord) -> Response<ProxyBody> {
    match answer.to_vec() {
        Ok(wire) => {
            let mut resp = respond(StatusCode::OK, CONTENT_TYPE, Bytes::from(wire));
            let ttl = answer
                .answers()
                .iter()
                .map(|r| r.ttl())
                .min()
                .unwrap_or(0)
                .min(300);
            if let Ok(v) = HeaderValue::from_str(&format!("max-age={ttl}")) {
                resp.headers_mut().insert(header::CACHE_CONTROL, v);
            }
            resp
        }
        Err(e) => {
            record.error = Some(format!("cannot encode the DNS answer: {e}"));
            bad(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot encode the DNS answer",
            )
        }
    }
}

/// The one question of a DoH query, lowercase without the trailing dot.
pub struct Question {
    query: Message,
    pub name: String,
}

/// Parses a query; a malformed one is answered right away (400, or a DNS
/// FORMERR / NOTIMP reply).
// The refusal is answered at once: its size does not matter.
#[allow(clippy::result_large_err)]
pub fn question(wire: &[u8], record: &mut AccessRecord) -> Result<Question, Response<ProxyBody>> {
    let query = Message::from_vec(wire)
        .map_err(|e| bad(StatusCode::BAD_REQUEST, &format!("not a DNS message: {e}")))?;
    if query.message_type() != MessageType::Query || query.queries().len() != 1 {
        record.error = Some("not a query with exactly one question".into());
        let mut resp = response_for(&query);
        resp.set_response_code(ResponseCode::FormErr);
        return Err(reply(&resp, record));
    }
    if query.op_code() != OpCode::Query {
        record.error = Some(format!("unsupported opcode {:?}", query.op_code()));
        let mut resp = response_for(&query);
        resp.set_response_code(ResponseCode::NotImp);
        return Err(reply(&resp, record));
    }
    let name = query.queries()[0]
        .name()
        .to_ascii()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    Ok(Question { query, name })
}

/// The DNS message of a DoH request (GET `?dns=` or POST body).
pub async fn read_query(
    config: &DohConfig,
    req: Request<Incoming>,
) -> Result<Vec<u8>, Response<ProxyBody>> {
    if !config.enabled {
        return Err(bad(
            StatusCode::NOT_FOUND,
            "DNS over HTTPS is disabled on this gateway ([doh] enabled = false)",
        ));
    }
    match *req.method() {
        Method::GET => {
            let query = req.uri().query().unwrap_or("");
            let Some(param) = query.split('&').find_map(|kv| kv.strip_prefix("dns=")) else {
                return Err(bad(
                    StatusCode::BAD_REQUEST,
                    "GET /dns-query needs a ?dns= parameter (base64url DNS message, RFC 8484)",
                ));
            };
            let param = param.trim_end_matches('=');
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(param)
                .map_err(|e| {
                    bad(
                        StatusCode::BAD_REQUEST,
                        &format!("the dns= parameter is not base64url: {e}"),
                    )
                })
        }
        Method::POST => {
            let ct = req
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !ct
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case(CONTENT_TYPE)
            {
                return Err(bad(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "POST /dns-query needs Content-Type: application/dns-message",
                ));
            }
            let body = Limited::new(req.into_body(), MAX_MESSAGE)
                .collect()
                .await
                .map_err(|e| {
                    bad(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        &format!("cannot read the DNS message (at most {MAX_MESSAGE} bytes): {e}"),
                    )
                })?;
            Ok(body.to_bytes().to_vec())
        }
        _ => {
            let mut resp = bad(
                StatusCode::METHOD_NOT_ALLOWED,
                "use GET or POST for /dns-query",
            );
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, POST"));
            Err(resp)
        }
    }
}

fn response_for(query: &Message) -> Message {
    let mut resp = Message::new();
    resp.set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .set_checking_disabled(query.checking_disabled());
    for q in query.queries() {
        resp.add_query(q.clone());
    }
    if query.extensions().is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        resp.set_edns(edns);
    }
    resp
}

/// Threat intel and IPS `dns` rules on the queried name; events go to the
/// record. `true`: the name is blocked (`record.rule` says why).
pub fn screen_name(
    sec: &Security,
    ctx: &EventContext,
    q: &Question,
    wire: &[u8],
    record: &mut AccessRecord,
) -> bool {
    let name = &q.name;
    if let Some(hit) = sec.intel.check_host(name) {
        let event = ctx.threat("dns", name, &hit);
        record.rule = event.rule_name();
        add_events(record, [event]);
        return true;
    }
    if sec.engine.has_dns_rules() {
        let events = ctx.ips("dns", &sec.engine.scan_dns_query(name, Some(wire)));
        let drop = events.iter().find(|e| e.is_drop()).map(|e| e.rule_name());
        add_events(record, events);
        if let Some(rule) = drop {
            record.rule = rule;
            return true;
        }
    }
    false
}

/// Resolves an allowed query; answers whose addresses or CNAME targets are
/// threat-intel listed are blocked.
pub async fn resolve(
    config: &DohConfig,
    resolver: &Resolver,
    sec: &Security,
    ctx: &EventContext,
    q: &Question,
    record: &mut AccessRecord,
) -> Message {
    let mut resp = response_for(&q.query);
    let question = &q.query.queries()[0];
    let name = &q.name;
    match resolver
        .hickory()
        .lookup(question.name().clone(), question.query_type())
        .await
    {
        Ok(lookup) => {
            let records: Vec<Record> = lookup.records().to_vec();
            for r in &records {
                let listed = match r.data() {
                    RData::A(a) => sec
                        .intel
                        .check_ip(IpAddr::V4(a.0))
                        .map(|h| (a.0.to_string(), h)),
                    RData::AAAA(a) => sec
                        .intel
                        .check_ip(IpAddr::V6(a.0))
                        .map(|h| (a.0.to_string(), h)),
                    RData::CNAME(c) => {
                        let target = c.0.to_ascii();
                        sec.intel
                            .check_host(&target)
                            .map(|h| (target.trim_end_matches('.').to_string(), h))
                    }
                    _ => None,
                };
                if let Some((what, hit)) = listed {
                    let event = ctx.threat("dns-answer", &format!("{name} ({what})"), &hit);
                    record.rule = event.rule_name();
                    add_events(record, [event]);
                    return blocked(config, q, record);
                }
            }
            record.decision = "allow";
            resp.insert_answers(records);
            resp.set_response_code(ResponseCode::NoError);
        }
        Err(e) => {
            record.decision = "allow";
            match e.proto().map(|p| p.kind()) {
                Some(ProtoErrorKind::NoRecordsFound {
                    response_code, soa, ..
                }) => {
                    resp.set_response_code(*response_code);
                    if let Some(soa) = soa {
                        resp.add_name_server(soa.as_ref().clone().into_record_of_rdata());
                    }
                }
                _ => {
                    record.decision = "error";
                    record.error = Some(format!("resolving {name}: {e}"));
                    resp.set_response_code(ResponseCode::ServFail);
                }
            }
        }
    }
    resp
}

/// The reply for a blocked name: NXDOMAIN or the block-page address.
pub fn blocked(config: &DohConfig, q: &Question, record: &mut AccessRecord) -> Message {
    record.decision = "block";
    let answer = config.blocked_answer().unwrap_or(BlockedAnswer::NxDomain);
    block_answer(
        response_for(&q.query),
        &q.query.queries()[0],
        answer,
        config.blocked_ttl,
    )
}

/// The wire reply to the DoH query `wire` when its name is blocked (or the
/// refusal of a malformed query). Entry point for fuzzing and tests: the
/// decoding, mirroring and blocking steps without a gateway.
pub fn blocked_reply(wire: &[u8], answer: BlockedAnswer, ttl: u32) -> Result<Vec<u8>, String> {
    let mut record = AccessRecord::default();
    let reply = match question(wire, &mut record) {
        Ok(q) => block_answer(response_for(&q.query), &q.query.queries()[0], answer, ttl),
        Err(_) if Message::from_vec(wire).is_err() => {
            return Err(format!(
                "not a DNS message: {}",
                Message::from_vec(wire)
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_default()
            ))
        }
        Err(_) => {
            let query = Message::from_vec(wire).map_err(|e| e.to_string())?;
            let mut resp = response_for(&query);
            resp.set_response_code(
                if query.message_type() != MessageType::Query || query.queries().len() != 1 {
                    ResponseCode::FormErr
                } else {
                    ResponseCode::NotImp
                },
            );
            resp
        }
    };
    reply
        .to_vec()
        .map_err(|e| format!("cannot encode the DNS answer: {e}"))
}

/// `resp` answering question `q` as blocked: NXDOMAIN, or the block-page
/// address for A / AAAA (no data for other types).
fn block_answer(mut resp: Message, q: &Query, answer: BlockedAnswer, ttl: u32) -> Message {
    match answer {
        BlockedAnswer::NxDomain => {
            resp.set_response_code(ResponseCode::NXDomain);
        }
        BlockedAnswer::Address(ip) => {
            resp.set_response_code(ResponseCode::NoError);
            match (q.query_type(), ip) {
                (RecordType::A, IpAddr::V4(v4)) => {
                    resp.add_answer(Record::from_rdata(q.name().clone(), ttl, RData::A(A(v4))));
                }
                (RecordType::AAAA, IpAddr::V6(v6)) => {
                    resp.add_answer(Record::from_rdata(
                        q.name().clone(),
                        ttl,
                        RData::AAAA(AAAA(v6)),
                    ));
                }
                // Other types: no data (NOERROR, empty answer).
                _ => {}
            }
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_answer_config() {
        let mut c = DohConfig::default();
        assert_eq!(c.blocked_answer(), Ok(BlockedAnswer::NxDomain));
        c.blocked_answer = "192.0.2.1".into();
        assert_eq!(
            c.blocked_answer(),
            Ok(BlockedAnswer::Address("192.0.2.1".parse().unwrap()))
        );
        c.blocked_answer = "block-page".into();
        assert!(c.blocked_answer().unwrap_err().contains("nxdomain"));
    }

    #[test]
    fn blocked_reply_from_wire() {
        let mut q = Message::new();
        q.set_id(7).set_recursion_desired(true);
        q.add_query(Query::query("bad.example.".parse().unwrap(), RecordType::A));
        let wire = q.to_vec().unwrap();
        let ip = "192.0.2.9".parse().unwrap();
        let reply =
            Message::from_vec(&blocked_reply(&wire, BlockedAnswer::Address(ip), 60).unwrap())
                .unwrap();
        assert_eq!(reply.id(), 7);
        assert_eq!(reply.response_code(), ResponseCode::NoError);
        assert_eq!(
            reply.answers()[0].data(),
            &RData::A(A("192.0.2.9".parse().unwrap()))
        );
        let reply =
            Message::from_vec(&blocked_reply(&wire, BlockedAnswer::NxDomain, 60).unwrap()).unwrap();
        assert_eq!(reply.response_code(), ResponseCode::NXDomain);
        // Two questions: FORMERR, not a block.
        q.add_query(Query::query("b.example.".parse().unwrap(), RecordType::A));
        let reply = Message::from_vec(
            &blocked_reply(&q.to_vec().unwrap(), BlockedAnswer::NxDomain, 60).unwrap(),
        )
        .unwrap();
        assert_eq!(reply.response_code(), ResponseCode::FormErr);
        assert!(blocked_reply(b"\x00", BlockedAnswer::NxDomain, 60).is_err());
    }

    #[test]
    fn response_mirrors_query() {
        let mut q = Message::new();
        q.set_id(4242).set_recursion_desired(true);
        q.add_query(Query::query("a.example.".parse().unwrap(), RecordType::A));
        let r = response_for(&q);
        assert_eq!(r.id(), 4242);
        assert_eq!(r.message_type(), MessageType::Response);
        assert!(r.recursion_desired());
        assert_eq!(r.queries().len(), 1);
        let wire = r.to_vec().unwrap();
        assert_eq!(Message::from_vec(&wire).unwrap().id(), 4242);
    }
}
