//! Policy documents (TOML): parse, validate with file:line:column errors,
//! compile; a compiled policy then locates and evaluates a request. Paths
//! in the document resolve against a directory that does not exist.
#![no_main]

use std::path::Path;

use komugate_policy::Policy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Policy::from_str(text, Path::new("/nonexistent/komugate-fuzz/policy.toml")) {
        Ok(policy) => {
            let _ = policy.locate("203.0.113.3".parse().unwrap());
            let _ = policy.rule_summaries();
            let _ = policy.generation_digest();
        }
        Err(errors) => {
            assert!(!errors.is_empty());
            let _ = errors.to_string();
        }
    }
});
