//! Text extraction for DLP and upload classification: plain, JSON, form and
//! multipart bodies, and the XML inside .docx / .xlsx / .pptx (zip) files.
//! Works on a possibly truncated body (the inspected prefix of a body over
//! the cap): whatever can be read is read, nothing panics on input.

use std::io::Read;

/// What a request body contains, as far as CASB cares.
#[derive(Debug, Default)]
pub struct Extracted {
    /// Multipart parts with a (non-empty) file name: local files.
    pub file_parts: usize,
    /// Text for the DLP patterns (parts separated by newlines).
    pub text: String,
    /// Office documents (zip) whose XML was read.
    pub documents: usize,
}

/// Limits for one body.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Decompressed bytes read from all zip entries together.
    pub max_unzipped: u64,
    /// Zip entries looked at.
    pub max_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_unzipped: 64 << 20,
            max_entries: 4096,
        }
    }
}

/// Extracts from `body` (complete or a prefix) with its Content-Type.
pub fn extract(content_type: &str, body: &[u8], limits: Limits) -> Extracted {
    let mut out = Extracted::default();
    let ct = content_type.to_ascii_lowercase();
    let mut budget = limits.max_unzipped;
    if ct.starts_with("multipart/") {
        if let Some(boundary) = param(content_type, "boundary") {
            for part in multipart_parts(body, boundary.as_bytes()) {
                if part.filename.as_deref().is_some_and(|f| !f.is_empty()) {
                    out.file_parts += 1;
                }
                content_text(
                    &part.content_type,
                    part.data,
                    &mut out,
                    &mut budget,
                    limits.max_entries,
                );
                out.text.push('\n');
            }
            return out;
        }
    }
    content_text(&ct, body, &mut out, &mut budget, limits.max_entries);
    out
}

fn content_text(ct: &str, data: &[u8], out: &mut Extracted, budget: &mut u64, max_entries: usize) {
    let ct = ct.to_ascii_lowercase();
    if data.starts_with(b"PK\x03\x04") && office_text(data, out, budget, max_entries) {
        out.documents += 1;
        return;
    }
    if ct.contains("json") {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
            json_strings(&v, &mut out.text, 0);
            return;
        }
    } else if ct.starts_with("application/x-www-form-urlencoded") {
        for pair in data.split(|b| *b == b'&') {
            out.text.push_str(&form_pair_text(pair));
            out.text.push('\n');
        }
        return;
    }
    out.text.push_str(&String::from_utf8_lossy(data));
}

fn json_strings(v: &serde_json::Value, out: &mut String, depth: usize) {
    if depth > 128 {
        return;
    }
    match v {
        serde_json::Value::String(s) => {
            out.push_str(s);
            out.push('\n');
        }
        serde_json::Value::Number(n) => {
            out.push_str(&n.to_string());
            out.push('\n');
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| json_strings(x, out, depth + 1)),
        serde_json::Value::Object(o) => {
            for (k, x) in o {
                out.push_str(k);
                out.push('\n');
                json_strings(x, out, depth + 1);
            }
        }
        _ => {}
    }
}

/// One `key=value` pair of a form body as text: both sides decoded, on
/// separate lines (a DLP pattern must not match across them). `=` inside
/// a key or value is escaped, so the first raw one is the separator.
fn form_pair_text(pair: &[u8]) -> String {
    let decode = crate::common::percent_decode_form;
    let text = match pair.iter().position(|b| *b == b'=') {
        Some(eq) => {
            let mut t = decode(&pair[..eq]);
            t.push(b'\n');
            t.extend(decode(&pair[eq + 1..]));
            t
        }
        None => decode(pair),
    };
    String::from_utf8_lossy(&text).into_owned()
}

/// `name=value` parameter of a header value (quoted or not).
pub fn param(header: &str, name: &str) -> Option<String> {
    for p in header.split(';').skip(1) {
        let (k, v) = p.split_once('=')?;
        if k.trim().eq_ignore_ascii_case(name) {
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|x| x.strip_suffix('"'))
                .unwrap_or(v);
            return Some(v.to_string());
        }
    }
    None
}

/// One part of a multipart body (also the console's file uploads).
pub(crate) struct Part<'a> {
    /// The form field's `name`.
    pub name: Option<String>,
    pub filename: Option<String>,
    pub content_type: String,
    pub data: &'a [u8],
}

/// The parts of a multipart body (the last one may be truncated).
pub(crate) fn multipart_parts<'a>(body: &'a [u8], boundary: &[u8]) -> Vec<Part<'a>> {
    let mut delim = b"--".to_vec();
    delim.extend_from_slice(boundary);
    let finder = memchr::memmem::Finder::new(&delim);
    let mut parts = Vec::new();
    let Some(first) = finder.find(body) else {
        return parts;
    };
    let mut pos = first + delim.len();
    while parts.len() < 10_000 {
        if body[pos..].starts_with(b"--") {
            break;
        }
        // Skip to the end of the delimiter line.
        let Some(nl) = memchr::memchr(b'\n', &body[pos..]) else {
            break;
        };
        let head_start = pos + nl + 1;
        let (head_end, data_start) = match memchr::memmem::find(&body[head_start..], b"\r\n\r\n") {
            Some(i) => (head_start + i, head_start + i + 4),
            None => match memchr::memmem::find(&body[head_start..], b"\n\n") {
                Some(i) => (head_start + i, head_start + i + 2),
                None => break,
            },
        };
        let head = String::from_utf8_lossy(&body[head_start..head_end]);
        let mut filename = None;
        let mut name = None;
        let mut content_type = String::new();
        for line in head.lines() {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            if k.trim().eq_ignore_ascii_case("content-disposition") {
                filename = param(v, "filename").or_else(|| param(v, "filename*"));
                name = param(v, "name");
            } else if k.trim().eq_ignore_ascii_case("content-type") {
                content_type = v.trim().to_string();
            }
        }
        let (data_end, next) = match finder.find(&body[data_start..]) {
            Some(i) => {
                let mut end = data_start + i;
                if body[..end].ends_with(b"\r\n") {
                    end -= 2;
                } else if body[..end].ends_with(b"\n") {
                    end -= 1;
                }
                (end, Some(data_start + i + delim.len()))
            }
            None => (body.len(), None),
        };
        parts.push(Part {
            name,
            filename,
            content_type,
            data: &body[data_start..data_end.max(data_start)],
        });
        match next {
            Some(n) => pos = n,
            None => break,
        }
    }
    parts
}

/// Text of the Office Open XML parts of a zip (docx, xlsx, pptx). False
/// when it is not a readable zip.
fn office_text(data: &[u8], out: &mut Extracted, budget: &mut u64, max_entries: usize) -> bool {
    let Ok(mut zip) = zip::ZipArchive::new(std::io::Cursor::new(data)) else {
        return false;
    };
    let n = zip.len().min(max_entries);
    let mut read_any = false;
    for i in 0..n {
        if *budget == 0 {
            break;
        }
        let Ok(entry) = zip.by_index(i) else { continue };
        let name = entry.name().to_ascii_lowercase();
        let wanted = name.ends_with(".xml")
            && (name.starts_with("word/") || name.starts_with("xl/") || name.starts_with("ppt/"))
            && !name.contains("/_rels/")
            && !name.contains("theme")
            && !name.ends_with("styles.xml");
        if !wanted {
            continue;
        }
        let mut xml = Vec::new();
        let limit = *budget;
        if entry.take(limit).read_to_end(&mut xml).is_err() {
            continue;
        }
        *budget = budget.saturating_sub(xml.len() as u64);
        xml_text(&xml, &mut out.text);
        out.text.push('\n');
        read_any = true;
    }
    read_any
}

/// Character data of an XML document; paragraph, cell and row ends become
/// newlines so that text of separate cells does not run together.
fn xml_text(xml: &[u8], out: &mut String) {
    let s = String::from_utf8_lossy(xml);
    let mut rest: &str = &s;
    while let Some(lt) = rest.find('<') {
        decode_entities(&rest[..lt], out);
        let Some(gt) = rest[lt..].find('>') else {
            return;
        };
        let tag = &rest[lt + 1..lt + gt];
        if let Some(name) = tag.strip_prefix('/') {
            let local = name.rsplit(':').next().unwrap_or(name);
            if matches!(
                local,
                "p" | "c" | "si" | "row" | "tc" | "tr" | "br" | "txBody"
            ) {
                out.push('\n');
            }
        } else if tag.ends_with('/') {
            let local = tag
                .trim_end_matches('/')
                .split_whitespace()
                .next()
                .unwrap_or("");
            let local = local.rsplit(':').next().unwrap_or(local);
            if matches!(local, "br" | "tab") {
                out.push(' ');
            }
        }
        rest = &rest[lt + gt + 1..];
    }
    decode_entities(rest, out);
}

fn decode_entities(s: &str, out: &mut String) {
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        match after.find(';').filter(|i| *i <= 10) {
            Some(semi) => {
                let ent = &after[..semi];
                let ch = match ent {
                    "amp" => Some('&'),
                    "lt" => Some('<'),
                    "gt" => Some('>'),
                    "quot" => Some('"'),
                    "apos" => Some('\''),
                    _ => ent
                        .strip_prefix("#x")
                        .and_then(|h| u32::from_str_radix(h, 16).ok())
                        .or_else(|| ent.strip_prefix('#').and_then(|d| d.parse().ok()))
                        .and_then(char::from_u32),
                };
                match ch {
                    Some(c) => out.push(c),
                    None => {
                        out.push('&');
                        out.push_str(ent);
                        out.push(';');
                    }
                }
                rest = &after[semi + 1..];
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn docx(text_runs: &[&str]) -> Vec<u8> {
        let mut buf = std::io::Cursor::new(Vec::new());
        let mut z = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        z.start_file("[Content_Types].xml", opts).unwrap();
        z.write_all(b"<Types/>").unwrap();
        z.start_file("word/document.xml", opts).unwrap();
        let runs: String = text_runs
            .iter()
            .map(|t| format!("<w:r><w:t>{t}</w:t></w:r>"))
            .collect();
        write!(z, r#"<?xml version="1.0"?><w:document xmlns:w="x"><w:body><w:p>{runs}</w:p><w:p><w:r><w:t>A &amp; B</w:t></w:r></w:p></w:body></w:document>"#).unwrap();
        z.finish().unwrap();
        buf.into_inner()
    }

    #[test]
    fn office_documents() {
        let d = docx(&["令和6年度 指導", "要録"]);
        let e = extract(
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            &d,
            Limits::default(),
        );
        assert_eq!(e.documents, 1);
        assert!(e.text.contains("指導要録"), "{}", e.text);
        assert!(e.text.contains("A & B"));
        // Truncated zip: no panic, falls back to lossy text.
        let e = extract(
            "application/octet-stream",
            &d[..d.len() / 2],
            Limits::default(),
        );
        assert_eq!(e.documents, 0);
    }

    #[test]
    fn multipart_json_form() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello 123456789018\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\nContent-Type: text/plain\r\n\r\nfile body\r\n--XyZ--\r\n";
        let e = extract("multipart/form-data; boundary=XyZ", body, Limits::default());
        assert_eq!(e.file_parts, 1);
        assert!(e.text.contains("hello 123456789018"));
        assert!(e.text.contains("file body"));
        let e = extract(
            "multipart/form-data; boundary=\"XyZ\"",
            &body[..60],
            Limits::default(),
        );
        assert_eq!(e.file_parts, 0);
        let e = extract(
            "application/json",
            br#"{"a":{"b":["x\u6210\u7e3e", 123456789018]}}"#,
            Limits::default(),
        );
        assert!(e.text.contains("x成績"));
        assert!(e.text.contains("123456789018"));
        let e = extract(
            "application/x-www-form-urlencoded",
            b"q=%E6%88%90%E7%B8%BE+1&x=%zz",
            Limits::default(),
        );
        assert!(e.text.contains("成績 1"), "{}", e.text);
        let e = extract("text/plain", &[0xff, 0xfe, b'a'], Limits::default());
        assert!(e.text.ends_with('a'));
        assert_eq!(form_pair_text(b"k%3D=v%3d+1"), "k=\nv= 1");
        assert_eq!(form_pair_text(b"a%"), "a%");
    }

    #[test]
    fn xml_entities_and_cells() {
        let mut s = String::new();
        xml_text(
            b"<row><c><v>1234</v></c><c><is><t>&#x6210;&#32318;</t></is></c></row>",
            &mut s,
        );
        assert_eq!(s, "1234\n成績\n\n");
    }
}
