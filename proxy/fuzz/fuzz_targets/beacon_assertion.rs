//! Site assertion tokens (`ksa1.<payload>.<signature>`) as laptops send them
//! in the site-assertion header: decoding and full verification. Since the
//! fuzzer cannot forge signatures, every decodable payload is also re-signed
//! with the site's key so the checks after the signature are fuzzed too.
#![no_main]

use std::collections::HashMap;
use std::sync::OnceLock;

use ed25519_dalek::VerifyingKey;
use komugate::beacon::{decode, verify, AssertionError, BeaconKey};
use libfuzzer_sys::fuzz_target;

const SITE: &str = "site-a";
const NOW: u64 = 1_700_000_000;

/// A fixed key (the PKCS#8 Ed25519 prefix and a constant seed), so a
/// crash input reproduces.
fn key() -> &'static (BeaconKey, HashMap<String, VerifyingKey>) {
    static KEY: OnceLock<(BeaconKey, HashMap<String, VerifyingKey>)> = OnceLock::new();
    KEY.get_or_init(|| {
        let pem = "-----BEGIN PRIVATE KEY-----\n\
                   MC4CAQAwBQYDK2VwBCIEIAEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEB\n\
                   -----END PRIVATE KEY-----\n";
        let key = BeaconKey::from_pem(pem, "fuzz").expect("fixed test key");
        let keys = HashMap::from([(SITE.to_string(), key.verifying_key())]);
        (key, keys)
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let (key, keys) = key();
    let _ = verify(token, keys, "device-1", NOW);
    let Ok(mut assertion) = decode(token) else {
        return;
    };
    assertion.site = SITE.to_string();
    let signed = key.sign(&assertion);
    match verify(&signed, keys, &assertion.device, NOW) {
        Err(AssertionError::BadSignature(_)) | Err(AssertionError::UnknownSite(_)) => {
            panic!("a token signed with the site's key was refused: {signed}")
        }
        Ok(accepted) => assert_eq!(accepted, assertion),
        Err(_) => {}
    }
});
