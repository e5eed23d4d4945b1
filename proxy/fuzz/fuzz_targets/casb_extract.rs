//! CASB/DLP body extraction: multipart, JSON, form and plain bodies and the
//! XML inside .docx / .xlsx / .pptx (zip) uploads, complete or truncated.
//! Input: a Content-Type line, a newline, then the body.
#![no_main]

use komugate::stages::casb::extract::{extract, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (content_type, body) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (String::from_utf8_lossy(&data[..i]), &data[i + 1..]),
        None => ("application/octet-stream".into(), data),
    };
    // Small limits, so zip bombs are cut early rather than timing out.
    let limits = Limits {
        max_unzipped: 4 << 20,
        max_entries: 256,
    };
    let out = extract(&content_type, body, limits);
    assert!(out.file_parts <= body.len());
});
