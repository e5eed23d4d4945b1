use std::fs;
use std::path::Path;

use super::test_support::*;
use super::*;
use crate::device_auth::{server_config, DeviceAuthConfig};

fn mode_of(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn sans_of(cert_pem_path: &Path) -> Vec<String> {
    let der = load_certs(cert_pem_path).unwrap().remove(0);
    let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
    let san = x.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .map(|g| match g {
            x509_parser::extensions::GeneralName::DNSName(d) => format!("dns:{d}"),
            x509_parser::extensions::GeneralName::URI(u) => format!("uri:{u}"),
            x509_parser::extensions::GeneralName::IPAddress(b) => format!("ip:{b:?}"),
            other => format!("{other:?}"),
        })
        .collect()
}

#[test]
fn init_writes_six_files_with_modes_and_refuses_overwrite() {
    let dir = tempdir("pki-init").join("nested");
    let paths = init(&dir, &[], false).unwrap();
    assert_eq!(mode_of(&dir), 0o700);
    for k in [
        paths.device_ca_key(),
        paths.inspect_ca_key(),
        paths.server_key(),
    ] {
        assert_eq!(mode_of(&k), 0o600, "{}", k.display());
        load_private_key(&k).unwrap();
    }
    for c in [
        paths.device_ca_cert(),
        paths.inspect_ca_cert(),
        paths.server_cert(),
    ] {
        assert_eq!(mode_of(&c), 0o644, "{}", c.display());
        assert_eq!(load_certs(&c).unwrap().len(), 1);
    }
    assert_eq!(
        sans_of(&paths.server_cert()),
        vec!["dns:localhost".to_string(), "ip:[127, 0, 0, 1]".to_string()]
    );

    // CA properties.
    for (p, cn) in [
        (paths.device_ca_cert(), DEVICE_CA_CN),
        (paths.inspect_ca_cert(), INSPECT_CA_CN),
    ] {
        let der = load_certs(&p).unwrap().remove(0);
        let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
        let got_cn = x
            .subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap();
        assert_eq!(got_cn, cn);
        let bc = x.basic_constraints().unwrap().unwrap().value;
        assert!(bc.ca);
        assert_eq!(bc.path_len_constraint, Some(0));
        let ku = x.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign());
        assert!(x.raw_serial().len() <= 20 && x.raw_serial()[0] & 0x80 == 0);
        let life = x.validity().not_after.timestamp() - x.validity().not_before.timestamp();
        assert!(life > 3650 * 86400);
    }
    let der = load_certs(&paths.server_cert()).unwrap().remove(0);
    let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
    let life = x.validity().not_after.timestamp() - x.validity().not_before.timestamp();
    assert!(life <= 825 * 86400, "server cert lives {life}s");
    assert!(x.extended_key_usage().unwrap().unwrap().value.server_auth);

    // Refuses to overwrite, names the file and the flag, and leaves files untouched.
    let before = fs::read(paths.device_ca_key()).unwrap();
    let err = init(&dir, &[], false).unwrap_err().to_string();
    assert!(
        err.contains("device-ca.key") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(fs::read(paths.device_ca_key()).unwrap(), before);
    // ensure() sees a complete PKI.
    assert!(!ensure(&dir, &[]).unwrap());

    // With force: new CA, modes still right.
    fs::set_permissions(
        paths.server_key(),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    init(
        &dir,
        &["gw.example.jp".into(), "10.1.2.3".into(), "::1".into()],
        true,
    )
    .unwrap();
    assert_ne!(fs::read(paths.device_ca_key()).unwrap(), before);
    assert_eq!(mode_of(&paths.server_key()), 0o600);
    assert_eq!(
        sans_of(&paths.server_cert()),
        vec![
            "dns:gw.example.jp".to_string(),
            "ip:[10, 1, 2, 3]".to_string(),
            "ip:[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]".to_string()
        ]
    );
    let leftovers: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    fs::remove_dir_all(dir.parent().unwrap()).ok();
}

#[test]
fn ensure_creates_once_and_rejects_partial() {
    let dir = tempdir("pki-ensure");
    assert!(ensure(&dir, &[]).unwrap());
    assert!(!ensure(&dir, &[]).unwrap());
    fs::remove_file(PkiPaths::new(&dir).inspect_ca_key()).unwrap();
    let err = ensure(&dir, &[]).unwrap_err().to_string();
    assert!(
        err.contains("inspect-ca.key") && err.contains("incomplete"),
        "{err}"
    );
    fs::remove_dir_all(&dir).ok();
}

#[test]
fn init_rejects_bad_san_without_writing() {
    let dir = tempdir("pki-badsan");
    let err = init(&dir, &["bad name".into()], false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("bad name"), "{err}");
    assert!(PkiPaths::new(&dir).all().iter().all(|p| !p.exists()));
    fs::remove_dir_all(&dir).ok();
}

#[test]
fn validate_names() {
    for ok in ["laptop-001", "a", "t.yamada@school.example", "X_9"] {
        validate_name("device id", ok).unwrap();
    }
    for (bad, needle) in [
        ("", "empty"),
        ("a:b", "':'"),
        ("a b", "whitespace"),
        ("tab\there", "whitespace"),
        ("教員", "non-ASCII"),
        ("a/b", "'/'"),
    ] {
        let e = validate_name("device id", bad).unwrap_err().to_string();
        assert!(e.contains(needle), "{bad:?}: {e}");
    }
    assert!(validate_name("group", &"x".repeat(65)).is_err());
}

#[test]
fn serial_hex_parsing() {
    assert_eq!(parse_serial_hex("00:AB:cd"), Some(vec![0xab, 0xcd]));
    assert_eq!(parse_serial_hex("0xabc"), Some(vec![0x0a, 0xbc]));
    assert_eq!(parse_serial_hex("zz"), None);
    assert_eq!(parse_serial_hex(""), None);
    assert_eq!(serial_to_hex(&[0, 0x0a, 0xbc]), "0abc");
}

#[test]
fn load_errors_name_the_file() {
    let dir = tempdir("pki-load");
    init(&dir, &[], false).unwrap();
    let p = PkiPaths::new(&dir);
    let e = load_certs(&p.server_key()).unwrap_err().to_string();
    assert!(e.contains("server.key") && e.contains("private key"), "{e}");
    let e = load_private_key(&p.server_cert()).unwrap_err().to_string();
    assert!(e.contains("server.pem") && e.contains("certificate"), "{e}");
    let e = load_certs(&dir.join("nope.pem")).unwrap_err();
    assert!(format!("{e:#}").contains("nope.pem"), "{e:#}");
    // Mismatched CA key.
    let e = CaMaterial::load(&p.device_ca_cert(), &p.inspect_ca_key())
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not match"), "{e}");
    // Not a CA.
    let e = CaMaterial::load(&p.server_cert(), &p.server_key())
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a CA"), "{e}");
    fs::remove_dir_all(&dir).ok();
}

#[test]
fn issue_device_writes_files_and_rejects_bad_input() {
    let dir = tempdir("pki-issue");
    init(&dir, &[], false).unwrap();
    let out = dir.join("out").join("laptop.001");
    let groups = vec!["teachers".to_string(), "school-03".to_string()];
    let opts = DeviceCertOptions {
        device_id: "laptop.001",
        groups: &groups,
        days: DEFAULT_DEVICE_DAYS,
    };
    let (cert, key) = issue_device(&dir, &opts, &out, false).unwrap();
    assert_eq!(cert, dir.join("out").join("laptop.001.pem"));
    assert_eq!(key, dir.join("out").join("laptop.001.key"));
    assert_eq!(mode_of(&key), 0o600);
    assert_eq!(mode_of(&cert), 0o644);
    assert_eq!(load_certs(&cert).unwrap().len(), 1, "leaf only");
    assert_eq!(
        sans_of(&cert),
        vec![
            "uri:urn:komugate:device:laptop.001".to_string(),
            "uri:urn:komugate:group:teachers".to_string(),
            "uri:urn:komugate:group:school-03".to_string(),
        ]
    );
    let der = load_certs(&cert).unwrap().remove(0);
    let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert!(x.extended_key_usage().unwrap().unwrap().value.client_auth);
    let life = x.validity().not_after.timestamp() - x.validity().not_before.timestamp();
    assert!((730 * 86400..=731 * 86400).contains(&life), "{life}");

    // No overwrite without force; force works.
    let e = issue_device(&dir, &opts, &out, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("laptop.001.pem") && e.contains("--force"), "{e}");
    let before = fs::read(&cert).unwrap();
    issue_device(&dir, &opts, &out, true).unwrap();
    assert_ne!(fs::read(&cert).unwrap(), before);

    // Bad ids / groups / days.
    for (id, g) in [
        ("", "ok"),
        ("a:b", "ok"),
        ("a b", "ok"),
        ("ok", "x:y"),
        ("ok", ""),
    ] {
        let groups = vec![g.to_string()];
        let o = DeviceCertOptions {
            device_id: id,
            groups: &groups,
            days: 30,
        };
        let e = issue_device(&dir, &o, &dir.join("bad"), false).unwrap_err();
        assert!(!dir.join("bad.pem").exists(), "{e}");
    }
    let o = DeviceCertOptions {
        device_id: "ok",
        groups: &[],
        days: 0,
    };
    assert!(issue_device(&dir, &o, &dir.join("bad"), false).is_err());
    // Longer than the CA lives: clamped to the CA's expiry.
    let o = DeviceCertOptions {
        device_id: "long",
        groups: &[],
        days: 3650,
    };
    let (long, _) = issue_device(&dir, &o, &dir.join("long"), false).unwrap();
    let ca = load_certs(&PkiPaths::new(&dir).device_ca_cert())
        .unwrap()
        .remove(0);
    let (_, ca) = x509_parser::parse_x509_certificate(&ca).unwrap();
    let der = load_certs(&long).unwrap().remove(0);
    let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert_eq!(x.validity().not_after, ca.validity().not_after);
    // Never clobbers the PKI itself, even with force.
    let o = DeviceCertOptions {
        device_id: "ok",
        groups: &[],
        days: 30,
    };
    let e = issue_device(&dir, &o, &dir.join("device-ca"), true)
        .unwrap_err()
        .to_string();
    assert!(e.contains("PKI file"), "{e}");
    fs::remove_dir_all(&dir).ok();
}

/// The whole file-based flow with a real mTLS handshake: server.pem (signed by
/// inspect-ca) validates at a client trusting inspect-ca.pem, and a device cert signed
/// by the *reloaded* device CA validates at a server trusting device-ca.pem.
#[tokio::test]
async fn files_chain_in_real_handshake() {
    let dir = tempdir("pki-tls");
    let paths = init(&dir, &[], false).unwrap();
    let groups = vec!["staff".to_string()];
    let opts = DeviceCertOptions {
        device_id: "pc-42",
        groups: &groups,
        days: 30,
    };
    let (cert, key) = issue_device(&dir, &opts, &dir.join("pc-42"), false).unwrap();

    let server_cfg = server_config(&DeviceAuthConfig {
        server_cert: paths.server_cert(),
        server_key: paths.server_key(),
        device_ca: paths.device_ca_cert(),
        crls: vec![],
        revoked_serials: None,
    })
    .unwrap();
    let inspect_ca = load_certs(&paths.inspect_ca_cert()).unwrap().remove(0);
    for (name, tls12) in [("localhost", false), ("127.0.0.1", true)] {
        let client_cfg = client_config(
            &inspect_ca,
            Some((load_certs(&cert).unwrap(), load_private_key(&key).unwrap())),
            tls12,
        );
        let (outcome, client) = handshake(server_cfg.clone(), client_cfg, name).await;
        match outcome {
            ServerOutcome::Accepted { identity, .. } => {
                assert_eq!(identity.device_id, "pc-42");
                assert_eq!(identity.cert_groups, vec!["staff".to_string()]);
            }
            other => panic!("{other:?}"),
        }
        client.unwrap();
    }

    // The server cert does NOT validate against the device CA (CAs are distinct).
    let device_ca = load_certs(&paths.device_ca_cert()).unwrap().remove(0);
    let client_cfg = client_config(
        &device_ca,
        Some((load_certs(&cert).unwrap(), load_private_key(&key).unwrap())),
        false,
    );
    let (outcome, client) = handshake(server_cfg, client_cfg, "localhost").await;
    assert!(client.unwrap_err().contains("UnknownIssuer"));
    assert!(matches!(outcome, ServerOutcome::Refused { .. }));
    fs::remove_dir_all(&dir).ok();
}
