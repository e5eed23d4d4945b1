//! Site assertions: how a device at a site without a fixed IP (the hospital
//! classroom) is recognised as being at that site.
//!
//! - `komugate pki beacon-key` makes an Ed25519 key pair; the public key goes
//!   into the policy (`[[site]] beacon_key = "..."`), the private key stays
//!   on the site's own server.
//! - `komugate beacon --site NAME --key FILE --listen ADDR` runs there and
//!   answers `GET /assertion?device=ID` with a signed, short-lived token
//!   binding (site, device id, issue time, random nonce). It is only
//!   reachable on the site's LAN, so holding a fresh token means "was on
//!   that LAN within the last few minutes".
//! - `komugate client` fetches a token and sends it on its gateway
//!   connection in the [`ASSERTION_HEADER`] header.
//! - The gateway ([`SiteAssertions`]) checks the signature against the
//!   site's key, that the token names the device of the client certificate,
//!   freshness (at most [`MAX_AGE_SECS`] old, at most
//!   [`MAX_FUTURE_SKEW_SECS`] in the future), and binds the nonce to the
//!   first connection that presented it (the same token on another
//!   connection is a replay). A valid token makes that connection's location
//!   the site; anything else is rejected, counted and logged, and the
//!   location stays what the address says (normally `offsite`).
//!
//! Token format: `ksa1.<base64url(JSON payload)>.<base64url(signature)>`,
//! the signature is Ed25519 over `"komugate-site-assertion-v1\n" ||
//! <base64url(JSON payload)>`.

mod replay;
mod server;
mod sites;
mod token;

pub use replay::ReplayCache;
pub use server::{
    percent_decode, run_beacon, run_beacon_key, serve_beacon, serve_until_signal, BeaconArgs,
    BeaconKeyArgs,
};
pub use sites::{SiteAssertions, SiteDirectory, SiteEntry};
pub use token::{
    decode, parse_public_key, verify, write_key_pair, Assertion, AssertionError, BeaconKey,
};

/// Request header carrying the assertion from `komugate client` to the
/// gateway. `proxy-` prefixed: it is for the proxy only and is stripped
/// (with the other `proxy-*` headers) before anything is forwarded.
pub const ASSERTION_HEADER: &str = "proxy-komugate-site-assertion";
/// An assertion older than this is expired.
pub const MAX_AGE_SECS: u64 = 300;
/// Clock skew tolerated for assertions issued "in the future".
pub const MAX_FUTURE_SKEW_SECS: u64 = 30;

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use ed25519_dalek::VerifyingKey;

    use super::*;

    fn keys(site: &str, k: &BeaconKey) -> HashMap<String, VerifyingKey> {
        HashMap::from([(site.to_string(), k.verifying_key())])
    }

    #[test]
    fn pem_round_trip_and_public_key() {
        let k = BeaconKey::generate().unwrap();
        let k2 = BeaconKey::from_pem(&k.to_pem(), "x").unwrap();
        assert_eq!(k.public_base64(), k2.public_base64());
        assert_eq!(
            parse_public_key(&k.public_base64()).unwrap(),
            k.verifying_key()
        );
        assert!(BeaconKey::from_pem("garbage", "f.key")
            .unwrap_err()
            .to_string()
            .contains("f.key"));
    }

    #[test]
    fn valid_forged_expired_future_other_device() {
        let k = BeaconKey::generate().unwrap();
        let other = BeaconKey::generate().unwrap();
        let now = 1_800_000_000;
        let ks = keys("hospital", &k);
        let t = k.issue("hospital", "PC-1", now - 10).unwrap();
        assert_eq!(verify(&t, &ks, "PC-1", now).unwrap().site, "hospital");
        let forged = other.issue("hospital", "PC-1", now).unwrap();
        assert_eq!(
            verify(&forged, &ks, "PC-1", now).unwrap_err().label(),
            "bad_signature"
        );
        // Payload swapped under a valid signature.
        let t2 = k.issue("hospital", "PC-2", now).unwrap();
        let spliced = format!(
            "{}.{}",
            t2.rsplit_once('.').unwrap().0,
            t.rsplit_once('.').unwrap().1
        );
        assert_eq!(
            verify(&spliced, &ks, "PC-2", now).unwrap_err().label(),
            "bad_signature"
        );
        let old = k.issue("hospital", "PC-1", now - MAX_AGE_SECS - 1).unwrap();
        assert_eq!(
            verify(&old, &ks, "PC-1", now).unwrap_err().label(),
            "expired"
        );
        let future = k.issue("hospital", "PC-1", now + 120).unwrap();
        assert_eq!(
            verify(&future, &ks, "PC-1", now).unwrap_err().label(),
            "from_future"
        );
        assert_eq!(
            verify(&t, &ks, "PC-9", now).unwrap_err().label(),
            "wrong_device"
        );
        let elsewhere = k.issue("school", "PC-1", now).unwrap();
        assert_eq!(
            verify(&elsewhere, &ks, "PC-1", now).unwrap_err().label(),
            "unknown_site"
        );
        for junk in [
            "",
            "ksa1",
            "ksa1.a.b",
            "ksa2.e30.AA",
            "ksa1.!!.AA",
            &"x".repeat(5000),
        ] {
            assert_eq!(
                verify(junk, &ks, "PC-1", now).unwrap_err().label(),
                "malformed",
                "{junk}"
            );
        }
    }

    #[test]
    fn replay_cache_binds_nonce_to_first_connection() {
        let c = ReplayCache::new(2);
        assert!(c.bind("n1", "PC-1@a", 100, 0));
        assert!(c.bind("n1", "PC-1@a", 100, 1));
        assert!(!c.bind("n1", "PC-1@b", 100, 1));
        assert!(c.bind("n2", "x", 5, 1));
        assert!(
            !c.bind("n3", "x", 100, 2),
            "full of live nonces: fail closed"
        );
        assert!(c.bind("n3", "x", 100, 10), "expired n2 pruned");
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("PC-1%40x").unwrap(), "PC-1@x");
        // A broken escape stays as it is; the device-id check refuses `%`.
        assert_eq!(percent_decode("%4").unwrap(), "%4");
        assert_eq!(percent_decode("%zz").unwrap(), "%zz");
        assert!(percent_decode("%ff").is_none(), "not UTF-8");
    }
}
