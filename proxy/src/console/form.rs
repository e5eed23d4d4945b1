//! Query strings, `application/x-www-form-urlencoded` bodies and cookies.

use http::HeaderMap;
use http_body_util::BodyExt;

/// Name/value pairs of a query string or form body.
#[derive(Debug, Clone, Default)]
pub struct Params(pub Vec<(String, String)>);

impl Params {
    pub fn parse(text: &str) -> Params {
        Params(crate::logs::admin_http::parse_query_string(text))
    }

    /// The last value given for `name`, trimmed; empty values count as absent.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    }

    /// The pairs again as a query string (for links that keep the filters).
    pub fn to_query(&self, skip: &[&str]) -> String {
        self.0
            .iter()
            .filter(|(k, v)| !skip.contains(&k.as_str()) && !v.trim().is_empty())
            .map(|(k, v)| format!("{}={}", encode(k), encode(v.trim())))
            .collect::<Vec<_>>()
            .join("&")
    }
}

/// Percent-encodes everything but unreserved characters.
pub use crate::common::percent_encode as encode;

/// The value of cookie `name`.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// Largest form body the console accepts.
pub const MAX_FORM_BYTES: usize = 64 * 1024;

/// Reads a form body (at most [`MAX_FORM_BYTES`]); `Err` is the wording key
/// of the problem (`err_form_read`, `err_form_utf8`).
pub async fn read_form(body: hyper::body::Incoming) -> Result<Params, String> {
    let limited = http_body_util::Limited::new(body, MAX_FORM_BYTES);
    let bytes = limited
        .collect()
        .await
        .map_err(|_| "err_form_read".to_string())?
        .to_bytes();
    let text = std::str::from_utf8(&bytes).map_err(|_| "err_form_utf8".to_string())?;
    Ok(Params::parse(text))
}

/// A file sent with a `multipart/form-data` form.
#[derive(Debug, Clone)]
pub struct Upload {
    /// The form field's name.
    pub field: String,
    pub filename: String,
    pub bytes: Vec<u8>,
}

/// Why an upload was not read.
#[derive(Debug, PartialEq, Eq)]
pub enum UploadError {
    /// The body is larger than the page takes (`Content-Length` when given).
    TooLarge(Option<u64>),
    /// Not `multipart/form-data` with a boundary, or cut off.
    Unreadable,
}

/// Most bytes of a refused upload read (and dropped) before the connection
/// is closed instead.
const MAX_DRAIN_BYTES: u64 = 64 * 1024 * 1024;

/// Reads a `multipart/form-data` body of at most `max` bytes: its text
/// fields as [`Params`] (for the CSRF token), its files as [`Upload`]s.
pub async fn read_multipart(
    headers: &HeaderMap,
    body: hyper::body::Incoming,
    max: usize,
) -> Result<(Params, Vec<Upload>), UploadError> {
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type
        .to_ascii_lowercase()
        .starts_with("multipart/form-data")
    {
        return Err(UploadError::Unreadable);
    }
    let boundary = crate::stages::casb::extract::param(content_type, "boundary")
        .ok_or(UploadError::Unreadable)?;
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // An upload over the limit is read to its end (up to MAX_DRAIN_BYTES)
    // and dropped, so the browser, still sending, gets the page saying why
    // rather than a reset connection.
    let mut body = body;
    let mut bytes = Vec::new();
    let mut total: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| UploadError::Unreadable)?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total += data.len() as u64;
        if total <= max as u64 {
            bytes.extend_from_slice(&data);
        } else if total > MAX_DRAIN_BYTES {
            break;
        }
    }
    if total > max as u64 {
        return Err(UploadError::TooLarge(declared.or(Some(total))));
    }
    let mut params = Vec::new();
    let mut files = Vec::new();
    for part in crate::stages::casb::extract::multipart_parts(&bytes, boundary.as_bytes()) {
        let field = part.name.unwrap_or_default();
        match part.filename {
            Some(filename) => files.push(Upload {
                field,
                filename,
                bytes: part.data.to_vec(),
            }),
            None => params.push((field, String::from_utf8_lossy(part.data).into_owned())),
        }
    }
    Ok((Params(params), files))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_and_params() {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::COOKIE,
            "a=1; komugate_session=abc; b=2".parse().unwrap(),
        );
        assert_eq!(cookie(&h, "komugate_session").as_deref(), Some("abc"));
        assert_eq!(cookie(&h, "c"), None);
        let p = Params::parse("host=%2A.example.com&device=&x=1&x=2");
        assert_eq!(p.get("host"), Some("*.example.com"));
        assert_eq!(p.get("device"), None);
        assert_eq!(p.get("x"), Some("2"));
        assert_eq!(p.to_query(&["x"]), "host=%2A.example.com");
    }
}
