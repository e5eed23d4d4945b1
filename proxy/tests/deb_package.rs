//! The Debian package (proxy/packaging/debian): built by its script from
//! the binary this test run already built (no release build here), then
//! checked the way dpkg and systemd see it: control fields, file list,
//! conffiles, maintainer scripts, the unit under `systemd-analyze verify`
//! and `security`, the system user under `systemd-sysusers`, and the
//! packaged binary on the packaged configuration and policy.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// Tunnels one gateway must hold open (issue: 50,000 idle tunnels); each
/// holds a client-side and an upstream-side descriptor.
const TUNNELS: u64 = 50_000;

struct Package {
    /// Keeps the build and extraction directories alive for the whole run.
    _dir: tempfile::TempDir,
    deb: PathBuf,
    /// The package's files as `dpkg-deb -x` lays them out.
    root: PathBuf,
    /// The control archive (`dpkg-deb -e`).
    control: PathBuf,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e} (.ci/run installs it)"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

/// Builds the package once per test binary (uncompressed: the test is about
/// the contents, and xz of a debug binary takes minutes on a busy machine).
fn package() -> &'static Package {
    static PACKAGE: OnceLock<Package> = OnceLock::new();
    PACKAGE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let out_dir = dir.path().join("out");
        let script = repo().join("proxy/packaging/debian/build-deb.sh");
        let built = run(
            path_str(&script),
            &[
                "--binary",
                env!("CARGO_BIN_EXE_komugate"),
                "--out",
                path_str(&out_dir),
                "--compression",
                "none",
            ],
        );
        let deb = PathBuf::from(text(&built).trim());
        assert!(deb.is_file(), "build-deb.sh printed {deb:?}, not a file");
        let root = dir.path().join("root");
        let control = dir.path().join("control");
        run("dpkg-deb", &["-x", path_str(&deb), path_str(&root)]);
        run("dpkg-deb", &["-e", path_str(&deb), path_str(&control)]);
        Package {
            _dir: dir,
            deb,
            root,
            control,
        }
    })
}

fn control_field(field: &str) -> String {
    let out = run("dpkg-deb", &["-f", path_str(&package().deb), field]);
    text(&out).trim().to_string()
}

/// `dpkg-deb -c`: path (without the leading `.`) → (mode string, owner).
fn listing() -> BTreeMap<String, (String, String)> {
    let out = run("dpkg-deb", &["-c", path_str(&package().deb)]);
    text(&out)
        .lines()
        .map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let path = cols[5].trim_start_matches('.').trim_end_matches('/');
            (path.to_string(), (cols[0].to_string(), cols[1].to_string()))
        })
        .collect()
}

/// The `[Service]` section of the packaged unit: key → values in order
/// (a key such as `SystemCallFilter` may appear more than once).
fn service_section() -> BTreeMap<String, Vec<String>> {
    let unit = std::fs::read_to_string(
        package()
            .root
            .join("usr/lib/systemd/system/komugate.service"),
    )
    .unwrap();
    let mut section = String::new();
    let mut keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if line.starts_with('[') {
            section = line.to_string();
        } else if section == "[Service]" {
            let (k, v) = line.split_once('=').expect("unit lines are key=value");
            keys.entry(k.to_string()).or_default().push(v.to_string());
        }
    }
    keys
}

fn one(keys: &BTreeMap<String, Vec<String>>, key: &str) -> String {
    match keys.get(key).map(Vec::as_slice) {
        Some([v]) => v.clone(),
        other => panic!("komugate.service sets {key} {other:?}, expected exactly once"),
    }
}

#[test]
fn control_fields_files_and_conffiles() {
    assert_eq!(control_field("Package"), "komugate");
    assert_eq!(control_field("Version"), env!("CARGO_PKG_VERSION"));
    let arch = text(&run("dpkg", &["--print-architecture"]));
    assert_eq!(control_field("Architecture"), arch.trim());
    let depends = control_field("Depends");
    // The C runtime the binary links, systemd (the unit, systemd-sysusers),
    // deb-systemd-helper (postinst), /bin/kill (ExecReload).
    assert!(depends.starts_with("libc6 (>= 2."), "Depends: {depends}");
    for package in ["systemd", "init-system-helpers", "procps"] {
        assert!(
            depends.split(", ").any(|d| d == package),
            "Depends: {depends} lacks {package}"
        );
    }
    assert!(!control_field("Description").is_empty());

    let files = listing();
    for (path, mode) in [
        ("/usr/bin/komugate", "-rwxr-xr-x"),
        ("/usr/lib/systemd/system/komugate.service", "-rw-r--r--"),
        ("/usr/lib/sysusers.d/komugate.conf", "-rw-r--r--"),
        ("/etc/komugate/komugate.toml", "-rw-r--r--"),
        ("/etc/komugate/policy.toml", "-rw-r--r--"),
        ("/usr/share/doc/komugate/copyright", "-rw-r--r--"),
        ("/usr/share/doc/komugate/README.md", "-rw-r--r--"),
        ("/usr/share/doc/komugate/examples/policy.toml", "-rw-r--r--"),
    ] {
        let (m, owner) = files
            .get(path)
            .unwrap_or_else(|| panic!("{path} is not in the package: {files:#?}"));
        assert_eq!((m.as_str(), owner.as_str()), (mode, "root/root"), "{path}");
    }
    for (path, (mode, owner)) in &files {
        assert_eq!(owner, "root/root", "{path}");
        assert!(
            !mode.contains('s') && !mode.ends_with('w'),
            "{path} is {mode}: no setuid and nothing world-writable"
        );
    }

    // Every file under /etc is a conffile (the administrator's edits survive
    // upgrades), and nothing else is.
    let conffiles = std::fs::read_to_string(package().control.join("conffiles")).unwrap();
    let mut listed: Vec<&str> = conffiles.lines().collect();
    listed.sort();
    let etc: Vec<&str> = files
        .iter()
        .filter(|(p, (m, _))| p.starts_with("/etc/") && m.starts_with('-'))
        .map(|(p, _)| p.as_str())
        .collect();
    assert_eq!(listed, etc);
}

#[test]
fn maintainer_scripts_parse_and_create_the_user() {
    let control = &package().control;
    for script in ["postinst", "prerm", "postrm"] {
        let path = control.join(script);
        let mode = std::os::unix::fs::PermissionsExt::mode(&path.metadata().unwrap().permissions());
        assert_eq!(mode & 0o777, 0o755, "{script} mode");
        // dpkg runs them with /bin/sh: dash on Debian, so parse them with it.
        run("dash", &["-n", path_str(&path)]);
        let body = std::fs::read_to_string(&path).unwrap();
        assert!(body.starts_with("#!/bin/sh\n"), "{script}");
        assert!(body.contains("set -e"), "{script}");
    }
    let postinst = std::fs::read_to_string(control.join("postinst")).unwrap();
    assert!(postinst.contains("systemd-sysusers komugate.conf"));
    assert!(postinst.contains("chown root:komugate /etc/komugate"));

    // The sysusers.d entry, applied to the package's own root, creates a
    // system user komugate whose home is the state directory, no login.
    let root = &package().root;
    run(
        "systemd-sysusers",
        &[&format!("--root={}", path_str(root)), "komugate.conf"],
    );
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    let user: Vec<&str> = passwd
        .lines()
        .find(|l| l.starts_with("komugate:"))
        .unwrap_or_else(|| panic!("no komugate user in {passwd}"))
        .split(':')
        .collect();
    let uid: u32 = user[2].parse().unwrap();
    assert!((1..1000).contains(&uid), "a system uid, got {uid}");
    assert_eq!(&user[5..], ["/var/lib/komugate", "/usr/sbin/nologin"]);
    let group = std::fs::read_to_string(root.join("etc/group")).unwrap();
    assert!(group.lines().any(|l| l.starts_with("komugate:")), "{group}");
}

#[test]
fn unit_is_hardened_as_specified() {
    let s = service_section();
    assert_eq!(one(&s, "User"), "komugate");
    assert_eq!(one(&s, "Group"), "komugate");
    assert_eq!(
        one(&s, "ExecStart"),
        "/usr/bin/komugate serve --config /etc/komugate/komugate.toml --data /var/lib/komugate"
    );
    assert_eq!(one(&s, "ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(one(&s, "StateDirectory"), "komugate");
    assert_eq!(one(&s, "ConfigurationDirectory"), "komugate");
    assert_eq!(one(&s, "ProtectSystem"), "strict");
    assert_eq!(one(&s, "ProtectHome"), "yes");
    assert_eq!(one(&s, "PrivateTmp"), "yes");
    assert_eq!(one(&s, "NoNewPrivileges"), "yes");
    assert_eq!(one(&s, "CapabilityBoundingSet"), "CAP_NET_BIND_SERVICE");
    assert_eq!(one(&s, "AmbientCapabilities"), "CAP_NET_BIND_SERVICE");
    assert_eq!(
        one(&s, "RestrictAddressFamilies"),
        "AF_INET AF_INET6 AF_UNIX"
    );
    assert_eq!(
        s["SystemCallFilter"].first().map(String::as_str),
        Some("@system-service")
    );
    let nofile: u64 = one(&s, "LimitNOFILE").parse().unwrap();
    assert!(
        nofile >= 2 * TUNNELS + 10_000,
        "LimitNOFILE={nofile}: {TUNNELS} tunnels need two descriptors each plus margin"
    );
    // The gateway drains for drain_secs (30 in the packaged config) on
    // SIGTERM; systemd must wait longer than that before SIGKILL.
    let stop: u64 = one(&s, "TimeoutStopSec").parse().unwrap();
    let config =
        komugate::config::Config::load(&package().root.join("etc/komugate/komugate.toml")).unwrap();
    assert!(stop > config.limits.drain_secs, "TimeoutStopSec={stop}");
}

/// `systemd-analyze verify --root` resolves the unit's commands and
/// dependencies inside the root: give it the host's targets and `kill`
/// next to the package's files (a copy; the host is not touched).
fn prepare_root_for_systemd(root: &Path) {
    let units = root.join("usr/lib/systemd/system");
    for dir in ["/usr/lib/systemd/system", "/lib/systemd/system"] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let target = units.join(&name);
            if name.to_string_lossy().ends_with(".target") && !target.exists() {
                std::fs::copy(e.path(), &target).unwrap();
            }
        }
    }
    let kill = root.join("usr/bin/kill");
    if !kill.exists() {
        std::fs::copy("/bin/kill", &kill).unwrap();
    }
    let bin = root.join("bin");
    if !bin.exists() {
        std::os::unix::fs::symlink("usr/bin", &bin).unwrap();
    }
}

#[test]
fn unit_passes_systemd_analyze_verify_and_security() {
    let root = &package().root;
    prepare_root_for_systemd(root);
    let unit = root.join("usr/lib/systemd/system/komugate.service");
    let root_arg = format!("--root={}", path_str(root));
    // verify reports unknown keys and unparsable values on stderr but exits
    // 0 for them: any output is a finding.
    let out = run("systemd-analyze", &["verify", &root_arg, path_str(&unit)]);
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        findings.trim().is_empty(),
        "systemd-analyze verify:\n{findings}"
    );

    // Overall exposure 2.0 or less ("OK"); --threshold is on a 0-100 scale.
    let out = Command::new("systemd-analyze")
        .args([
            "security",
            "--offline=true",
            "--threshold=20",
            &root_arg,
            path_str(&unit),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "systemd-analyze security: exposure above 2.0\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn packaged_binary_accepts_the_packaged_config_and_policy() {
    let root = &package().root;
    let binary = root.join("usr/bin/komugate");
    let config = root.join("etc/komugate/komugate.toml");
    let policy = root.join("etc/komugate/policy.toml");
    let out = run(path_str(&binary), &["config", "check", path_str(&config)]);
    assert!(text(&out).ends_with(": ok\n"), "{}", text(&out));
    let out = run(path_str(&binary), &["policy", "check", path_str(&policy)]);
    assert!(text(&out).contains(": OK"), "{}", text(&out));

    // Production-shaped: state under the unit's StateDirectory, policy in
    // its ConfigurationDirectory, no demo parts, no invented PKI.
    let c = komugate::config::Config::load(&config).unwrap();
    let state = Path::new("/var/lib/komugate");
    assert_eq!(c.data.dir, state);
    for p in [
        &c.log.access_log,
        &c.log.audit_log,
        &c.admin.users_file,
        &c.tls.server_key,
        &c.inspect.ca_key,
    ] {
        assert!(
            c.data_path(p).starts_with(state),
            "{p:?} is not under {state:?}"
        );
    }
    assert_eq!(c.policy.file, "/etc/komugate/policy.toml");
    assert!(!c.data.create_pki);
    assert_eq!(
        [
            &c.data.demo_device,
            &c.data.demo_origin,
            &c.data.demo_console_user
        ],
        [""; 3]
    );
    assert!(c.egress.allow_destinations.is_empty());
    assert_eq!(c.log.retention_days, 365);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.0 GET on loopback; the whole answer, or None if refused.
fn get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    Some(answer)
}

fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

fn replaced(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "the packaged file no longer has {from:?}"
    );
    text.replace(from, to)
}

/// The packaged binary serves on the packaged configuration (moved to
/// loopback ports and a temporary state directory, the policy's download
/// replaced by the repository's UT1 excerpt: tests stay on 127.0.0.0/8),
/// writes its logs under the state directory and reloads on SIGHUP, what
/// `systemctl reload komugate` sends.
#[test]
fn packaged_gateway_serves_its_config_and_reloads_on_sighup() {
    let root = &package().root;
    let binary = root.join("usr/bin/komugate");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    run(
        path_str(&binary),
        &["pki", "init", "--dir", path_str(&state.join("pki"))],
    );

    let policy = std::fs::read_to_string(root.join("etc/komugate/policy.toml")).unwrap();
    let policy = replaced(
        &policy,
        "path = \"/var/lib/komugate/lists/ut1\"",
        &format!("path = {:?}", path_str(&repo().join("examples/lists/ut1"))),
    );
    let policy: String = policy
        .lines()
        .filter(|l| !l.starts_with("url = ") && !l.starts_with("refresh = "))
        .map(|l| format!("{l}\n"))
        .collect();
    let policy_file = dir.path().join("policy.toml");
    std::fs::write(&policy_file, policy).unwrap();

    let (mtls, admin) = (free_port(), free_port());
    let config = std::fs::read_to_string(root.join("etc/komugate/komugate.toml")).unwrap();
    let config = replaced(
        &config,
        "mtls = \"0.0.0.0:8443\"",
        &format!("mtls = \"127.0.0.1:{mtls}\""),
    );
    let config = replaced(
        &config,
        "admin = \"127.0.0.1:9090\"",
        &format!("admin = \"127.0.0.1:{admin}\""),
    );
    let config = replaced(
        &config,
        "file = \"/etc/komugate/policy.toml\"",
        &format!("file = {:?}", path_str(&policy_file)),
    );
    let config_file = dir.path().join("komugate.toml");
    std::fs::write(&config_file, config).unwrap();

    /// Stops the gateway if an assertion fails first.
    struct Running(std::process::Child);
    impl Drop for Running {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut gateway = Command::new(&binary)
        .args(["serve", "--config", path_str(&config_file), "--data"])
        .arg(&state)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map(Running)
        .unwrap();
    let generation = || {
        let metrics = get(admin, "/metrics")?;
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("komugate_policy_generation "))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    until("the packaged gateway answers /healthz", || {
        get(admin, "/healthz")
            .filter(|a| a.starts_with("HTTP/1.1 200") || a.starts_with("HTTP/1.0 200"))
    });
    let first = until("komugate_policy_generation", generation);

    let pid = gateway.0.id().to_string();
    run("kill", &["-HUP", &pid]);
    until("SIGHUP reloads the policy", || {
        generation().filter(|g| *g > first)
    });

    // Logs on the state directory: the live access log's folder and the
    // audit log, which names the SIGHUP reload.
    assert!(state.join("logs").is_dir());
    // The audit entry is appended just after the new generation is swapped
    // in (the metric above), so wait for it too.
    until("a SIGHUP reload in the audit log", || {
        let audit = std::fs::read_to_string(state.join("audit.log")).ok()?;
        audit
            .lines()
            .any(|l| l.contains("\"policy_reload\"") && l.contains("\"sighup\""))
            .then_some(())
    });

    run("kill", &["-TERM", &pid]);
    let status = gateway.0.wait().unwrap();
    assert!(
        status.success(),
        "the gateway exited with {status} on SIGTERM"
    );
}
