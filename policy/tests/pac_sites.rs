//! `[pac]` and the site-assertion keys (`beacon_key`, `pac_direct`).

use komugate_policy::Policy;
use std::path::Path;

const KEY: &str = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="; // 32 bytes

fn load(text: &str) -> Result<Policy, String> {
    Policy::from_str(text, Path::new("t.toml")).map_err(|e| e.to_string())
}

#[test]
fn site_keys_and_pac_are_read() {
    let p = load(&format!(
        r#"
[[site]]
name = "school"
cidrs = ["10.1.0.0/16"]
pac_direct = ["learning.school.local"]
[[site]]
name = "hospital"
assertion = true
beacon_key = "{KEY}"
[pac]
direct = ["*.school.local", "10.0.0.0/8", "192.168.1.5"]
proxy = "HTTPS gw.example.jp:8443"
"#
    ))
    .unwrap();
    let h = &p.sites()[1];
    assert!(h.assertion);
    assert_eq!(h.beacon_key.unwrap()[0], 0xd7);
    assert_eq!(p.sites()[0].beacon_key, None);
    assert_eq!(p.sites()[0].pac_direct, vec!["learning.school.local"]);
    assert_eq!(p.pac().direct.len(), 3);
    assert_eq!(p.pac().proxy.as_deref(), Some("HTTPS gw.example.jp:8443"));
}

#[test]
fn bad_key_and_pac_entries_are_errors_with_position() {
    let err = load(
        r#"
[[site]]
name = "hospital"
assertion = true
beacon_key = "not-a-key"
[pac]
direct = ["evil\");alert(1);//"]
proxy = "SOCKS x"
"#,
    )
    .unwrap_err();
    assert!(err.contains("t.toml:5:"), "{err}");
    assert!(err.contains("beacon_key"), "{err}");
    assert!(err.contains("t.toml:7:"), "{err}");
    assert!(err.contains("t.toml:8:"), "{err}");
}
