//! The TLS ClientHello SNI parser used on the first bytes of CONNECT
//! tunnels (IPS `tls.sni` rules).
#![no_main]

use komugate::ips::sni::{parse_client_hello, SniResult};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = parse_client_hello(data);
    // A prefix never yields a different server name than the whole hello.
    if let SniResult::Sni(name) = &whole {
        assert_eq!(name, &name.to_ascii_lowercase());
        assert!(!name.ends_with('.'));
    }
    if data.len() > 1 {
        let _ = parse_client_hello(&data[..data.len() / 2]);
    }
});
