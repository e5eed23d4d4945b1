//! Board-scale access records for the benches: 3,000 devices in 19
//! schools, 30,000 hosts with Zipf popularity, 70 % CONNECT, 3 % blocks,
//! a JST school-day shape over the hours.

use std::io::Write;
use std::path::Path;

use komugate::logs::layout;
use komugate::logs::record::{format_rfc3339_ms, LogRecord};
use komugate::logs::writer;
use komugate::record::AccessRecord;

pub struct Rng(pub u64);
impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// Zipf-like: small indexes much more likely.
    pub fn zipf(&mut self, n: u64) -> u64 {
        let u = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        ((n as f64).powf(u) - 1.0) as u64 % n
    }
}

pub const RULES: [&str; 12] = [
    "default",
    "m365 tenant",
    "google tenant",
    "c4th only in school",
    "youtube teachers",
    "social block",
    "malware",
    "phishing",
    "adult",
    "gambling",
    "upload limit",
    "ips",
];
pub const CATS: [&str; 10] = [
    "",
    "education",
    "news",
    "social",
    "video",
    "search",
    "cloud",
    "shopping",
    "games",
    "malware",
];
pub const APPS: [&str; 8] = ["", "", "", "m365", "google", "c4th", "hyakumon", "box"];

/// A board-scale record at `t` (ms). Devices, users and sites repeat;
/// hosts follow a Zipf law over 30,000 names.
pub fn gen(rng: &mut Rng, t: i64) -> LogRecord {
    let dev = rng.zipf(3000);
    let host_id = rng.zipf(30_000);
    let host = match host_id {
        0 => "outlook.office365.com".to_string(),
        1 => "teams.microsoft.com".to_string(),
        2 => "www.google.com".to_string(),
        3 => "c4th.example.jp".to_string(),
        n => format!("h{n}.site{}.example", n % 997),
    };
    let connect = rng.below(10) < 7;
    let target = if connect {
        format!("{host}:443")
    } else {
        let p = rng.zipf(5000);
        if rng.below(5) == 0 {
            format!("https://{host}/p/{p}/item?id={}", rng.below(1_000_000))
        } else {
            format!("https://{host}/p/{p}/index.html")
        }
    };
    let blocked = rng.below(100) < 3;
    let site = dev % 19;
    LogRecord {
        time_ms: t,
        listener: if site == 18 { "mtls" } else { "plain" }.into(),
        device: format!("T-{dev:05}"),
        user: format!("u{:05}", dev),
        // The registry's users: nobody signed in through OpenID Connect.
        signed_in: false,
        user_groups: Vec::new(),
        groups: vec![
            if dev % 10 == 0 { "office" } else { "teachers" }.into(),
            format!("school-{site:02}"),
        ],
        site: format!("学校{site:02}"),
        client: format!(
            "10.{site}.{}.{}:{}",
            dev / 250 % 250,
            dev % 250,
            1024 + rng.below(60_000)
        ),
        method: if connect { "CONNECT" } else { "GET" }.into(),
        target,
        host: String::new(),
        action: if blocked { "block" } else { "allow" }.into(),
        rule: RULES[if blocked {
            5 + rng.below(6)
        } else {
            rng.below(5)
        } as usize]
            .into(),
        categories: match CATS[(host_id % 10) as usize] {
            "" => vec![],
            c => vec![c.into()],
        },
        app: APPS[(host_id % 8) as usize].into(),
        ips: String::new(),
        status: if blocked { 403 } else { 200 },
        bytes_up: if blocked { 0 } else { 200 + rng.below(20_000) },
        bytes_down: if blocked {
            1800
        } else {
            500 + rng.below(2_000_000)
        },
        duration_ms: rng.below(30_000),
        egress: if host_id == 3 {
            "198.51.100.7".into()
        } else {
            String::new()
        },
        error: String::new(),
    }
}

/// Diurnal shape: share of a day's records in each UTC hour (JST school day).
pub fn hour_weights() -> [f64; 24] {
    let mut w = [0.0; 24];
    for (h, x) in w.iter_mut().enumerate() {
        let jst = (h + 9) % 24;
        *x = match jst {
            8..=9 => 12.0,
            10..=16 => 8.0,
            7 | 17 => 4.0,
            18..=21 => 1.5,
            _ => 0.3,
        };
    }
    let sum: f64 = w.iter().sum();
    w.map(|x| x / sum)
}

/// The record as the data path hands it to the log writer.
pub fn access_record(r: LogRecord) -> AccessRecord {
    AccessRecord {
        time: format_rfc3339_ms(r.time_ms),
        listener: "mtls",
        device: Some(r.device),
        groups: r.groups,
        client: r.client,
        method: r.method,
        target: r.target,
        decision: if r.action == "block" {
            "block"
        } else {
            "allow"
        },
        rule: r.rule,
        status: r.status,
        bytes_up: r.bytes_up,
        bytes_down: r.bytes_down,
        duration_ms: r.duration_ms,
        user: Some(r.user),
        site: Some(r.site),
        categories: r.categories,
        app: (!r.app.is_empty()).then_some(r.app),
        ..Default::default()
    }
}

/// Closed hours `[from, to)` at board volume (`per_day` records a day in
/// the school-day shape), written as JSON lines in `staging` and compacted
/// into segments of `logs` by the production `writer::compact`. Returns
/// the records written.
pub fn write_closed_hours(
    logs: &Path,
    staging: &Path,
    from: i64,
    to: i64,
    per_day: u64,
    rng: &mut Rng,
) -> u64 {
    const HOUR: i64 = 3_600_000;
    let weights = hour_weights();
    let mut line = Vec::with_capacity(1024);
    let mut total = 0;
    let mut t0 = from;
    while t0 < to {
        let h = (t0 / HOUR % 24) as usize;
        let n = (per_day as f64 * weights[h]).round() as u64;
        let path = staging.join(format!("{}.jsonl", layout::stamp(t0)));
        let mut f =
            std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&path).unwrap());
        for i in 0..n {
            let r = gen(rng, t0 + (i as i64 * HOUR) / n as i64);
            line.clear();
            serde_json::to_writer(&mut line, &r).unwrap();
            line.push(b'\n');
            f.write_all(&line).unwrap();
        }
        drop(f);
        writer::compact(logs, &path, 6).unwrap();
        total += n;
        t0 += HOUR;
    }
    total
}
