//! CASB and DLP in the data path, called by [`crate::flow`] for every
//! plain and inspected HTTP request, in three steps:
//!
//! 1. [`Casb::begin`] (after the decision): the request's app (catalog),
//!    whether the instance is the board's tenant; blocks download / sync
//!    endpoints and known upload endpoints when the rule's `casb` says so,
//!    before anything goes upstream.
//! 2. [`Casb::request`] (before sending upstream): tenant-restriction
//!    headers (client copies removed first, then the configured values),
//!    and the body: read as a stream up to `[casb] inspect_max_bytes`,
//!    classified (multipart file parts, size over `upload_threshold`) and
//!    scanned by the DLP patterns (text from plain / JSON / form /
//!    multipart bodies and .docx / .xlsx / .pptx). The body prefix is the
//!    request's [`BodyPrefix`], shared with the IPS body rules. Nothing is
//!    buffered beyond the cap: a larger body is blocked or streamed on
//!    uninspected past the cap, as `[casb] over_cap` says.
//! 3. [`Casb::response`]: a file delivered to the laptop
//!    (`Content-Disposition: attachment`) is replaced by the block page.
//!
//! The access record gets a `casb` note (upload, download, DLP pattern
//! *names* — never the matched data); metrics are labelled by app.
//!
//! [`report`] is `komugate casb report`.

pub mod extract;
pub mod report;

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Uri};
use hyper::body::Body;
use komugate_policy::{Action, CasbHook, Policy};

use crate::metrics::Metrics;
use crate::record::AccessRecord;
pub use crate::record::CasbNote;
use crate::replay_body::BodyPrefix;
use crate::request::{Block, Refusal};
use crate::stages::decide::Decision;

/// CASB state of one request (see the module docs).
pub struct Casb {
    metrics: Arc<Metrics>,
    /// Categories of the destination, for the block page.
    category: Option<String>,
    hook: CasbHook,
    policy: Option<Arc<Policy>>,
    app: Option<String>,
    /// Upload classification by size applies (storage, transfer, AI).
    size_upload: bool,
    host: String,
    path: String,
    note: CasbNote,
}

const FILE_CATEGORIES: &[&str] = &["storage", "transfer", "ai"];

impl Casb {
    /// Step 1: the app and tenant of the request; request-level download,
    /// sync and upload-endpoint blocks.
    #[allow(clippy::too_many_arguments)]
    pub fn begin(
        policy: Option<&Arc<Policy>>,
        metrics: &Arc<Metrics>,
        decision: &Decision,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        host: &str,
        record: &mut AccessRecord,
    ) -> Result<Casb, Refusal> {
        // Borrowed from the caller's policy: cloning the app (patterns,
        // endpoint lists) cost more than the rest of this step.
        let app = decision.app.as_deref().and_then(|a| policy?.app(a));
        let mut note = CasbNote::default();
        let mut size_upload = false;
        if let (Some(a), Some(p)) = (app, policy) {
            note.tenant = Some(if a.is_own(host, p.tenants()) {
                "own"
            } else {
                "other"
            });
            note.category = Some(a.category.clone());
            size_upload = FILE_CATEGORIES.contains(&a.category.as_str());
        }
        let mut casb = Casb {
            metrics: metrics.clone(),
            category: (!decision.categories.is_empty()).then(|| decision.categories.join(", ")),
            hook: decision.casb.clone().unwrap_or_default(),
            policy: policy.cloned(),
            app: app.map(|a| a.name.clone()),
            size_upload,
            host: host.to_string(),
            path: uri.path().to_string(),
            note,
        };
        let Some(app) = app else { return Ok(casb) };
        let query = uri.query().unwrap_or("");
        let ua = headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let download = app.is_download(&casb.path, query) || app.is_sync(&casb.path, ua);
        if download && !is_body_method(method) {
            casb.note.download = true;
            casb.event("download");
        }
        if download && casb.hook.download == Some(Action::Block) {
            casb.note.download = true;
            return Err(casb.block(record, "casb-download", DOWNLOAD_MSG));
        }
        if is_body_method(method) && app.is_upload_path(&casb.path) {
            casb.note.upload = true;
            if casb.hook.upload == Some(Action::Block) {
                return Err(casb.block(record, "casb-upload", UPLOAD_MSG));
            }
        }
        let length = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if let (Some(len), Some(p)) = (length, &casb.policy) {
            if casb.size_upload && len > p.casb().upload_threshold {
                casb.note.upload = true;
                if casb.hook.upload == Some(Action::Block) {
                    return Err(casb.block(record, "casb-upload", UPLOAD_MSG));
                }
            }
        }
        Ok(casb)
    }

    fn dlp_on(&self) -> bool {
        self.hook.dlp == Some(true)
            && self
                .policy
                .as_ref()
                .is_some_and(|p| !p.casb().dlp.is_empty())
    }

    fn event(&self, kind: &str) {
        if let Some(app) = &self.app {
            self.metrics
                .casb
                .events
                .with_label_values(&[app.as_str(), kind])
                .inc();
        }
    }

    /// The refusal for a CASB decision; counts it and notes it in the record.
    fn block(&mut self, record: &mut AccessRecord, rule: &str, message: &str) -> Refusal {
        let resp = Refusal::Blocked(Block {
            rule: rule.to_string(),
            message: Some(message.to_string()),
            category: self.category.clone(),
        });
        if let Some(app) = &self.app {
            self.metrics
                .casb
                .requests
                .with_label_values(&[app.as_str(), "block"])
                .inc();
        }
        if self.note.upload {
            self.event("upload");
        }
        record.casb = Some(std::mem::take(&mut self.note));
        resp
    }

    /// Step 2: tenant-restriction headers, then the body (uploads, DLP),
    /// read into the request's shared [`BodyPrefix`] up to the cap.
    pub async fn request<B>(
        &mut self,
        headers: &mut HeaderMap,
        body: &mut BodyPrefix<B>,
        record: &mut AccessRecord,
    ) -> Result<(), Refusal>
    where
        B: Body<Data = Bytes, Error = hyper::Error> + Unpin,
    {
        self.tenant_restriction(headers);
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let inspect = self.policy.is_some()
            && !body.is_end_stream()
            && (self.dlp_on() || (self.hook.upload == Some(Action::Block) && self.app.is_some()));
        if !inspect {
            if self.note.upload {
                self.event("upload");
            }
            return Ok(());
        }
        let Some(policy) = self.policy.clone() else {
            return Ok(());
        };
        let settings = policy.casb();
        let cap = settings.inspect_max_bytes as usize;
        while body.buffered() <= cap {
            match body.read_frame().await {
                None => break,
                Some(Err(e)) => {
                    self.metrics.casb.buffered(body.buffered());
                    return Err(Refusal::BodyUnreadable(e.to_string()));
                }
                Some(Ok(_)) => {}
            }
        }
        // The frames up to the one that crossed the cap (an earlier
        // inspection may have read further).
        let data: Vec<u8> = {
            let mut v = Vec::with_capacity(body.buffered().min(cap + 1));
            for d in body.data() {
                if v.len() > cap {
                    break;
                }
                v.extend_from_slice(d);
            }
            v
        };
        let buffered = data.len();
        self.metrics.casb.buffered(buffered);
        let over = buffered > cap;
        let limits = extract::Limits {
            max_unzipped: (settings.inspect_max_bytes * 8).min(256 << 20),
            ..Default::default()
        };
        let ex = extract::extract(&content_type, &data, limits);
        drop(data);
        self.note.files = ex.file_parts;
        if ex.file_parts > 0
            || (self.size_upload && (over || buffered as u64 > settings.upload_threshold))
        {
            self.note.upload = true;
        }
        if over {
            self.note.over_cap = self.dlp_on();
        }
        if self.note.upload && self.hook.upload == Some(Action::Block) {
            return Err(self.block(record, "casb-upload", UPLOAD_MSG));
        }
        if self.dlp_on() {
            let mut found = Vec::new();
            settings.dlp.scan(&ex.text, &mut found);
            let mut blocking: Option<String> = None;
            for i in found {
                let p = &settings.dlp.patterns[i];
                let action = if p.action == Action::Block {
                    "block"
                } else {
                    "log"
                };
                self.metrics
                    .casb
                    .dlp_matches
                    .with_label_values(&[p.name.as_str(), action])
                    .inc();
                self.event("dlp");
                self.note.dlp.push(p.name.clone());
                if p.action == Action::Block && blocking.is_none() {
                    blocking = Some(p.name.clone());
                }
            }
            if let Some(name) = blocking {
                return Err(self.block(record, &format!("dlp:{name}"), DLP_MSG));
            }
            if over {
                self.event("over-cap");
                if settings.over_cap == Action::Block {
                    return Err(self.block(record, "casb-over-cap", OVER_CAP_MSG));
                }
            }
        }
        if self.note.upload {
            self.event("upload");
        }
        Ok(())
    }

    fn tenant_restriction(&mut self, headers: &mut HeaderMap) {
        if self.hook.tenant_restriction != Some(true) {
            return;
        }
        let Some(policy) = &self.policy else { return };
        let mut applied = Vec::new();
        for tr in policy.casb().tenant_restrictions_for(&self.host) {
            for name in &tr.header_names {
                if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
                    headers.remove(n);
                }
            }
            for (name, value) in &tr.headers {
                if let (Ok(n), Ok(v)) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(value),
                ) {
                    headers.append(n, v);
                }
            }
            applied.push(tr.name.clone());
        }
        if !applied.is_empty() {
            self.event("tenant-restriction");
            self.note.tenant_restriction = applied;
        }
    }

    /// Step 3: files delivered to the laptop; notes and counts the request.
    pub fn response(
        &mut self,
        headers: &HeaderMap,
        record: &mut AccessRecord,
    ) -> Result<(), Refusal> {
        let attachment = headers
            .get_all(header::CONTENT_DISPOSITION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.trim_start()
                    .get(..10)
                    .is_some_and(|p| p.eq_ignore_ascii_case("attachment"))
            });
        if attachment && self.app.is_some() {
            if !self.note.download {
                self.event("download");
            }
            self.note.download = true;
            if self.hook.download == Some(Action::Block) {
                return Err(self.block(record, "casb-download", DOWNLOAD_MSG));
            }
        }
        if let Some(app) = &self.app {
            self.metrics
                .casb
                .requests
                .with_label_values(&[app.as_str(), "allow"])
                .inc();
            record.casb = Some(std::mem::take(&mut self.note));
        } else if self.note.upload
            || !self.note.tenant_restriction.is_empty()
            || !self.note.dlp.is_empty()
        {
            record.casb = Some(std::mem::take(&mut self.note));
        }
        Ok(())
    }
}

fn is_body_method(m: &Method) -> bool {
    !matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::DELETE | Method::TRACE
    )
}

const UPLOAD_MSG: &str = "このクラウドサービスへのファイルのアップロードは許可されていません。クラウド上での作成・編集は利用できます。 / Uploading files to this cloud service is not allowed; creating and editing in the cloud service is.";
const DOWNLOAD_MSG: &str = "校外からはファイルを端末にダウンロードできません。ブラウザー上で閲覧・編集してください。 / Off-site, files cannot be downloaded to the laptop; view and edit them in the browser.";
const DLP_MSG: &str = "送信内容に個人情報・機密情報 (DLP パターン) が含まれているため送信を止めました。 / The content matched a data-loss-prevention pattern and was not sent.";
const OVER_CAP_MSG: &str = "送信内容が大きすぎて検査できないため送信を止めました。 / The content is too large to be inspected and was not sent.";
