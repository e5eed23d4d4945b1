//! Which host name an address was looked up under: learned from the DNS
//! answers the TUN's DNS handler passes back, so a TCP flow to an address
//! becomes a CONNECT to `name:port` and the gateway's policy sees the
//! host name, not only the address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_resolver::proto::op::Message;
use hickory_resolver::proto::rr::RData;

/// Entries kept at most; past it, expired ones go, then the map is cleared
/// (an address without a name is still carried, as `ip:port`).
const MAX_ENTRIES: usize = 16_384;
/// How long a name is kept at least (short TTLs outlive their answer in
/// applications' own caches) and at most.
const MIN_KEEP: Duration = Duration::from_secs(300);
const MAX_KEEP: Duration = Duration::from_secs(86_400);

#[derive(Default)]
pub struct Names {
    map: Mutex<HashMap<IpAddr, (String, Instant)>>,
}

impl Names {
    /// Remembers the addresses in `answer` (a DNS response message) under
    /// the name that was asked; returns them.
    pub fn learn(&self, answer: &[u8]) -> Vec<IpAddr> {
        let Some((name, found)) = addresses(answer) else {
            return Vec::new();
        };
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() + found.len() > MAX_ENTRIES {
            map.retain(|_, (_, until)| *until > now);
            if map.len() + found.len() > MAX_ENTRIES {
                map.clear();
            }
        }
        for (ip, ttl) in &found {
            let keep = Duration::from_secs(*ttl as u64).clamp(MIN_KEEP, MAX_KEEP);
            map.insert(*ip, (name.clone(), now + keep));
        }
        found.into_iter().map(|(ip, _)| ip).collect()
    }

    pub fn name_of(&self, ip: IpAddr) -> Option<String> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&ip)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(n, _)| n.clone())
    }
}

/// The asked name (lower case, no trailing dot) and the A/AAAA addresses
/// with their TTLs, from a DNS response.
pub fn addresses(answer: &[u8]) -> Option<(String, Vec<(IpAddr, u32)>)> {
    let msg = Message::from_vec(answer).ok()?;
    let name = question_name(&msg)?;
    let found = msg
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(a) => Some((IpAddr::V4(a.0), r.ttl())),
            RData::AAAA(a) => Some((IpAddr::V6(a.0), r.ttl())),
            _ => None,
        })
        .collect();
    Some((name, found))
}

/// The first question's name of a DNS message (query or response).
pub fn question(message: &[u8]) -> Option<String> {
    question_name(&Message::from_vec(message).ok()?)
}

fn question_name(msg: &Message) -> Option<String> {
    let q = msg.queries().first()?;
    let n = q.name().to_ascii();
    Some(n.trim_end_matches('.').to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::proto::op::{MessageType, Query};
    use hickory_resolver::proto::rr::{rdata, Name, Record, RecordType};
    use std::str::FromStr;

    fn answer(name: &str, cname: Option<&str>, ip: [u8; 4]) -> Vec<u8> {
        let mut m = Message::new();
        m.set_message_type(MessageType::Response);
        let asked = Name::from_str(name).unwrap();
        m.add_query(Query::query(asked.clone(), RecordType::A));
        let owner = match cname {
            Some(c) => {
                let target = Name::from_str(c).unwrap();
                m.add_answer(Record::from_rdata(
                    asked,
                    60,
                    RData::CNAME(rdata::CNAME(target.clone())),
                ));
                target
            }
            None => asked,
        };
        m.add_answer(Record::from_rdata(owner, 30, RData::A(rdata::A(ip.into()))));
        m.to_vec().unwrap()
    }

    #[test]
    fn addresses_are_named_by_the_asked_name() {
        let names = Names::default();
        let got = names.learn(&answer(
            "WWW.Example.test.",
            Some("cdn.example.net."),
            [192, 0, 2, 7],
        ));
        assert_eq!(got, vec![IpAddr::from([192, 0, 2, 7])]);
        assert_eq!(
            names.name_of([192, 0, 2, 7].into()).as_deref(),
            Some("www.example.test")
        );
        assert_eq!(names.name_of([192, 0, 2, 8].into()), None);
        assert!(names.learn(b"not dns").is_empty());
        assert_eq!(
            question(&answer("a.test.", None, [192, 0, 2, 1])).as_deref(),
            Some("a.test")
        );
    }
}
