//! The device registry CSV (`device_id,user,groups`, exported from the
//! ID-management system) against a fixed set of groups.
#![no_main]

use std::path::Path;

use komugate_policy::parse_registry_csv;
use libfuzzer_sys::fuzz_target;

const GROUPS: &[&str] = &["教職員", "teachers", "管理職", "telework"];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_registry_csv(Path::new("registry.csv"), text, GROUPS) {
        Ok(devices) => {
            for (id, _user, groups) in &devices {
                assert!(!id.is_empty() && id.trim() == id);
                assert!(groups.iter().all(|g| *g < GROUPS.len()));
            }
        }
        Err(errors) => assert!(!errors.is_empty()),
    }
});
