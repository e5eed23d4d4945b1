//! Unblock requests: the block page's 「アクセス許可を申請」 form posts a
//! reason to [`SUBMIT_PATH`] on the blocked site itself (same origin, plain
//! or inside the block page's TLS), the gateway answers it without going
//! upstream, and the request waits in the console for an operator to
//! approve it (an allow-list entry through `policy_edit`: diff, dry run,
//! versioned apply, reload, audit) or reject it with a message. The block
//! page shows the requester the outcome when they come back. Requests are
//! rate-limited per device (per address without one) and kept in a JSON
//! file in the data directory, so a restart keeps the queue.

use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Where the block page's form posts (any host; answered by the gateway).
pub const SUBMIT_PATH: &str = "/.well-known/komugate/unblock-request";
/// The queue's file in the data directory.
pub const QUEUE_FILE: &str = "unblock-requests.json";
/// Largest submission body read.
const MAX_FORM_BYTES: usize = 8 * 1024;
/// Requests one device (or address) may make per hour.
pub const MAX_PER_HOUR: usize = 5;
/// Longest reason kept, in characters.
pub const MAX_REASON_CHARS: usize = 500;
/// Requests kept at most (the oldest decided ones go first).
const MAX_KEPT: usize = 5000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Status {
    Pending,
    Approved {
        by: String,
        entry: String,
        scope: String,
        until: Option<String>,
    },
    Rejected {
        by: String,
        message: String,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UnblockRequest {
    pub id: u64,
    pub time_ms: i64,
    /// The device id, or the client address without one.
    pub requester: String,
    pub device: Option<String>,
    pub client: String,
    pub host: String,
    pub url: String,
    pub reason: String,
    pub status: Status,
}

/// Why a request was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum SubmitError {
    RateLimited,
    EmptyReason,
    Store(String),
}

#[derive(Default, Serialize, Deserialize)]
struct State {
    next_id: u64,
    requests: Vec<UnblockRequest>,
}

pub struct UnblockRequests {
    file: PathBuf,
    state: Mutex<State>,
}

impl std::fmt::Debug for UnblockRequests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnblockRequests")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    crate::logs::record::now_ms()
}

impl UnblockRequests {
    /// The queue kept in `file` (loaded when it exists; an unreadable file
    /// is an error, never silently emptied).
    pub fn open(file: PathBuf) -> anyhow::Result<UnblockRequests> {
        let state = match std::fs::read(&file) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => anyhow::bail!("{}: {e}", file.display()),
        };
        Ok(UnblockRequests {
            file,
            state: Mutex::new(state),
        })
    }

    fn save(&self, state: &State) -> Result<(), String> {
        let bytes = serde_json::to_vec(state).map_err(|e| e.to_string())?;
        crate::atomic_file::write(&self.file, &bytes).map_err(|e| e.to_string())
    }

    /// Queues a request (or returns the pending one for the same requester
    /// and host). Rate-limited per requester.
    pub fn submit(
        &self,
        device: Option<&str>,
        client: &str,
        host: &str,
        url: &str,
        reason: &str,
    ) -> Result<u64, SubmitError> {
        let reason: String = reason
            .chars()
            .filter(|c| !c.is_control() || *c == '\n')
            .take(MAX_REASON_CHARS)
            .collect();
        if reason.trim().is_empty() {
            return Err(SubmitError::EmptyReason);
        }
        let requester = device.unwrap_or(client).to_string();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = state
            .requests
            .iter()
            .find(|r| r.requester == requester && r.host == host && r.status == Status::Pending)
        {
            return Ok(r.id);
        }
        let hour_ago = now_ms() - 3_600_000;
        let recent = state
            .requests
            .iter()
            .filter(|r| r.requester == requester && r.time_ms > hour_ago)
            .count();
        if recent >= MAX_PER_HOUR {
            return Err(SubmitError::RateLimited);
        }
        state.next_id += 1;
        let id = state.next_id;
        state.requests.push(UnblockRequest {
            id,
            time_ms: now_ms(),
            requester,
            device: device.map(str::to_string),
            client: client.to_string(),
            host: host.to_string(),
            url: url.chars().take(2048).collect(),
            reason,
            status: Status::Pending,
        });
        if state.requests.len() > MAX_KEPT {
            if let Some(i) = state
                .requests
                .iter()
                .position(|r| r.status != Status::Pending)
            {
                state.requests.remove(i);
            }
        }
        self.save(&state).map_err(SubmitError::Store)?;
        Ok(id)
    }

    /// The latest request of `requester` for `host`.
    pub fn latest(&self, requester: &str, host: &str) -> Option<UnblockRequest> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state
            .requests
            .iter()
            .rev()
            .find(|r| r.requester == requester && r.host == host)
            .cloned()
    }

    /// Every request, newest first.
    pub fn list(&self) -> Vec<UnblockRequest> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.requests.iter().rev().cloned().collect()
    }

    pub fn get(&self, id: u64) -> Option<UnblockRequest> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.requests.iter().find(|r| r.id == id).cloned()
    }

    /// Records the decision on a pending request; `Err` when it is no
    /// longer pending (another operator decided it) or cannot be saved.
    pub fn decide(&self, id: u64, status: Status) -> Result<(), String> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let r = state
            .requests
            .iter_mut()
            .find(|r| r.id == id)
            .ok_or_else(|| format!("no request {id}"))?;
        if r.status != Status::Pending {
            return Err(format!("request {id} was already decided"));
        }
        r.status = status;
        self.save(&state)
    }

    /// What the block page shows `requester` for `host`.
    pub fn view(&self, requester: &str, host: &str) -> View {
        match self.latest(requester, host).map(|r| r.status) {
            Some(Status::Pending) => View::Pending,
            Some(Status::Rejected { message, .. }) => View::Rejected(message),
            _ => View::Form,
        }
    }
}

/// Who asks: the device id on the mTLS listener, else the client address.
pub fn requester(conn: &crate::request::ConnContext) -> String {
    conn.device_id()
        .map(str::to_string)
        .unwrap_or_else(|| conn.client.ip().to_string())
}

/// The host of a block page's target (`http://h:p/x`, `https://h/x`, `h:443`).
pub fn host_of(target: &str) -> String {
    let rest = target.split_once("://").map(|(_, r)| r).unwrap_or(target);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        authority
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(authority)
    };
    host.to_ascii_lowercase()
}

/// The queue, when `req` is a submission of the block page's form.
pub fn submission<'a, B>(
    queue: &'a Option<std::sync::Arc<UnblockRequests>>,
    req: &http::Request<B>,
) -> Option<&'a UnblockRequests> {
    (req.method() == http::Method::POST && req.uri().path() == SUBMIT_PATH)
        .then_some(queue.as_deref())
        .flatten()
}

/// Reads the form (`reason`, `url`), queues the request, answers with a
/// page saying what happens next.
pub async fn submit(
    queue: &UnblockRequests,
    conn: &crate::request::ConnContext,
    host: &str,
    req: http::Request<hyper::body::Incoming>,
) -> http::Response<crate::request::ProxyBody> {
    use http::StatusCode;
    use http_body_util::BodyExt;
    let page = |status: StatusCode, ja: &str, en: &str| {
        crate::flow::refusal::full(crate::flow::block_page::error_response(status, ja, en))
    };
    let body = match http_body_util::Limited::new(req.into_body(), MAX_FORM_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return page(
                StatusCode::PAYLOAD_TOO_LARGE,
                "申請の内容が長すぎます。理由は 500 文字までにしてください。",
                "The request is too long; keep the reason under 500 characters.",
            )
        }
    };
    let form = crate::logs::admin_http::parse_query_string(&String::from_utf8_lossy(&body));
    let field = |name: &str| {
        form.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let url = field("url");
    let url = if host_of(&url) == host {
        url
    } else {
        format!("http://{host}/")
    };
    let client = conn.client.ip().to_string();
    match queue.submit(conn.device_id(), &client, host, &url, &field("reason")) {
        Ok(id) => {
            tracing::info!(id, host, requester = %requester(conn), "unblock request queued");
            page(
                StatusCode::OK,
                &format!("アクセス許可の申請（受付番号 {id}）を受け付けました。担当者が確認します。結果は、同じページをもう一度開くと表示されます。"),
                &format!("Your request (number {id}) was received; the ICT staff will look at it. Open the same page again to see the outcome."),
            )
        }
        Err(SubmitError::EmptyReason) => page(
            StatusCode::BAD_REQUEST,
            "理由を書いてください（例: 授業で使う教材のため）。",
            "Write why you need the page (e.g. teaching material for a class).",
        ),
        Err(SubmitError::RateLimited) => page(
            StatusCode::TOO_MANY_REQUESTS,
            &format!("申請が多すぎます。1 台の端末から 1 時間に {MAX_PER_HOUR} 件までです。しばらくしてから、または担当者に直接連絡してください。"),
            &format!("Too many requests: at most {MAX_PER_HOUR} per device per hour. Try later or contact the ICT staff directly."),
        ),
        Err(SubmitError::Store(e)) => {
            tracing::error!("cannot save the unblock request queue: {e}");
            page(
                StatusCode::SERVICE_UNAVAILABLE,
                "申請を保存できませんでした。担当者に直接連絡してください。",
                "The request could not be saved; contact the ICT staff directly.",
            )
        }
    }
}

/// The unblock part of a block page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum View {
    Form,
    Pending,
    Rejected(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_of_targets() {
        assert_eq!(host_of("http://Blocked.test:8080/x?y"), "blocked.test");
        assert_eq!(host_of("https://a.example/"), "a.example");
        assert_eq!(host_of("a.example:443"), "a.example");
        assert_eq!(host_of("https://[::1]:443/"), "::1");
    }

    #[test]
    fn queue_rate_limit_and_decisions_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("unblock.json");
        let q = UnblockRequests::open(file.clone()).unwrap();
        let id = q
            .submit(
                Some("PC-1"),
                "10.0.0.5",
                "a.example",
                "http://a.example/",
                "授業で使う",
            )
            .unwrap();
        // The same host again: the pending one.
        assert_eq!(
            q.submit(
                Some("PC-1"),
                "10.0.0.5",
                "a.example",
                "http://a.example/x",
                "再送"
            )
            .unwrap(),
            id
        );
        assert_eq!(q.view("PC-1", "a.example"), View::Pending);
        assert_eq!(
            q.submit(Some("PC-1"), "10.0.0.5", "b.example", "u", " "),
            Err(SubmitError::EmptyReason)
        );
        for h in ["b", "c", "d", "e"] {
            q.submit(Some("PC-1"), "10.0.0.5", &format!("{h}.example"), "u", "r")
                .unwrap();
        }
        assert_eq!(
            q.submit(Some("PC-1"), "10.0.0.5", "f.example", "u", "r"),
            Err(SubmitError::RateLimited)
        );
        // Another device is not limited by PC-1's requests.
        q.submit(Some("PC-2"), "10.0.0.5", "f.example", "u", "r")
            .unwrap();
        q.decide(
            id,
            Status::Rejected {
                by: "山田".into(),
                message: "代わりに教材サイトを".into(),
            },
        )
        .unwrap();
        assert!(q.decide(id, Status::Pending).is_err(), "decided once");
        let q = UnblockRequests::open(file).unwrap();
        assert_eq!(
            q.view("PC-1", "a.example"),
            View::Rejected("代わりに教材サイトを".into())
        );
        assert_eq!(q.list().len(), 6);
    }
}
