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
