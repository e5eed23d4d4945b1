//! The Kubernetes manifests (k8s/) and the container image (Dockerfile)
//! agree with the gateway: the ConfigMaps' gateway config and policy are
//! valid, every file the config names is mounted into the pod, the pod runs
//! the image's own command, and the gateway starts from exactly that config
//! (its absolute paths moved under a temp dir, listeners on loopback) with
//! key material shaped like k8s/secrets.example.yaml, and answers /healthz.
//! CI's schema validation (kubernetes-validate) cannot see any of this.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_komugate");

fn repo_file(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The text of a YAML block scalar `key: |` (ConfigMap data), de-indented.
fn block_scalar(yaml: &str, key: &str) -> String {
    let mut lines = yaml.lines().skip_while(|l| l.trim() != format!("{key}: |"));
    let header = lines
        .next()
        .unwrap_or_else(|| panic!("no `{key}: |` block"));
    let key_indent = header.len() - header.trim_start().len();
    let mut body = Vec::new();
    let mut indent = None;
    for line in lines {
        if line.trim().is_empty() {
            body.push(String::new());
            continue;
        }
        let this = line.len() - line.trim_start().len();
        if this <= key_indent {
            break;
        }
        let i = *indent.get_or_insert(this);
        body.push(line[i.min(this)..].to_string());
    }
    body.join("\n") + "\n"
}

/// Values of `field: value` lines (YAML, one per line), in order.
fn yaml_values(yaml: &str, field: &str) -> Vec<String> {
    yaml.lines()
        .filter_map(|l| {
            l.trim()
                .trim_start_matches("- ")
                .strip_prefix(&format!("{field}:"))
        })
        .map(|v| v.trim().trim_matches('"').to_string())
        .collect()
}

/// Absolute paths quoted in a TOML text.
fn absolute_paths(toml_text: &str) -> Vec<String> {
    toml_text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| {
            l.split('"')
                .skip(1)
                .step_by(2)
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter(|s| s.starts_with('/'))
        .collect()
}

struct Manifests {
    config: String,
    policy: String,
    deployment: String,
    secrets: String,
    dockerfile: String,
}

fn manifests() -> Manifests {
    Manifests {
        config: block_scalar(&repo_file("k8s/configmap-gateway.yaml"), "komugate.toml"),
        policy: block_scalar(&repo_file("k8s/configmap-policy.yaml"), "policy.toml"),
        deployment: repo_file("k8s/deployment.yaml"),
        secrets: repo_file("k8s/secrets.example.yaml"),
        dockerfile: repo_file("Dockerfile"),
    }
}

fn komugate(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().expect("run komugate")
}

#[test]
fn configmaps_hold_a_valid_config_and_policy() {
    let m = manifests();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("komugate.toml");
    let policy = dir.path().join("policy.toml");
    std::fs::write(&config, &m.config).unwrap();
    // The policy reads the registry the komugate-registry Secret mounts.
    let etc = dir.path().join("etc");
    place_mounted_files(&etc);
    std::fs::write(
        &policy,
        m.policy.replace("/etc/komugate", etc.to_str().unwrap()),
    )
    .unwrap();
    let out = komugate(&["config", "check", config.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "k8s/configmap-gateway.yaml: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = komugate(&["policy", "check", policy.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "k8s/configmap-policy.yaml: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        m.config
            .contains("file = \"/etc/komugate/policy/policy.toml\""),
        "the config must load the policy ConfigMap's file"
    );
}

#[test]
fn every_file_the_config_names_is_mounted_and_provided() {
    let m = manifests();
    let mounts = yaml_values(&m.deployment, "mountPath");
    assert!(!mounts.is_empty(), "no volumeMounts in k8s/deployment.yaml");
    // File names the pod gets: Secret items remapped by `path:`, Secret
    // data keys (secrets.example.yaml), the ConfigMaps' keys.
    let mut provided = yaml_values(&m.deployment, "path");
    for line in m
        .secrets
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
    {
        if let Some((key, value)) = line.trim().split_once(':') {
            if value.contains("REPLACE") {
                provided.push(key.trim().to_string());
            }
        }
    }
    provided.extend(["komugate.toml".to_string(), "policy.toml".to_string()]);
    // The small security files' ConfigMaps (`name: |` data keys).
    provided.extend(
        repo_file("k8s/configmap-security.yaml")
            .lines()
            .filter_map(|l| l.trim().strip_suffix(": |"))
            .map(str::to_string),
    );
    for path in absolute_paths(&m.config) {
        let mount = mounts
            .iter()
            .find(|mp| path == **mp || path.starts_with(&format!("{mp}/")))
            .unwrap_or_else(|| panic!("{path} (k8s/configmap-gateway.yaml) is not under any mountPath of k8s/deployment.yaml: {mounts:?}"));
        if path == *mount || mount == "/var/lib/komugate" {
            continue; // the data volume: written by the gateway itself
        }
        let file = path.rsplit('/').next().unwrap();
        assert!(
            provided.iter().any(|p| p == file),
            "{path}: no Secret/ConfigMap provides {file} (provided: {provided:?})"
        );
    }
}

#[test]
fn the_pod_runs_the_image_command() {
    let m = manifests();
    let cmd_line = m
        .dockerfile
        .lines()
        .find(|l| l.starts_with("CMD "))
        .expect("Dockerfile has a CMD");
    let cmd: Vec<String> =
        serde_json::from_str(cmd_line.trim_start_matches("CMD ")).expect("CMD in exec (JSON) form");
    let args_line = m
        .deployment
        .lines()
        .find(|l| l.trim_start().starts_with("args:"))
        .expect("deployment has args");
    let args: Vec<String> =
        serde_json::from_str(args_line.trim().trim_start_matches("args:").trim())
            .expect("args as a flow sequence");
    assert_eq!(
        cmd, args,
        "k8s/deployment.yaml args and the Dockerfile CMD differ"
    );
    assert!(
        m.dockerfile.contains("USER 65532:65532"),
        "the image must run as non-root"
    );
    let entry = m
        .dockerfile
        .lines()
        .find(|l| l.starts_with("ENTRYPOINT "))
        .expect("ENTRYPOINT");
    assert!(entry.contains("/usr/local/bin/komugate"));
    // The config the pod reads is the ConfigMap's key at its mount.
    let config_path = &args[args.iter().position(|a| a == "--config").expect("--config") + 1];
    assert!(yaml_values(&m.deployment, "mountPath")
        .iter()
        .any(|mp| config_path == &format!("{mp}/komugate.toml")));
}

/// The small files the Secrets and ConfigMaps of k8s/configmap-security.yaml
/// and k8s/secrets.example.yaml mount under `etc` (= /etc/komugate).
fn place_mounted_files(etc: &Path) {
    let security = repo_file("k8s/configmap-security.yaml");
    for (file, text) in [
        (
            "revocation/revoked-serials.txt",
            block_scalar(&security, "revoked-serials.txt"),
        ),
        ("ips/local.rules", block_scalar(&security, "local.rules")),
        (
            "threat-intel/local.txt",
            block_scalar(&security, "local.txt"),
        ),
        ("registry/registry.csv", repo_file("examples/registry.csv")),
    ] {
        let dest = etc.join(file);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::write(&dest, text).unwrap();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn healthz(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

#[test]
fn the_gateway_starts_from_the_configmap_config() {
    let m = manifests();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let etc = root.join("etc/komugate");
    let data = root.join("data");
    let (mtls, admin) = (free_port(), free_port());
    let config = m
        .config
        .replace("/etc/komugate", etc.to_str().unwrap())
        // Feeds: a closed port on loopback (tests never leave 127.0.0.0/8).
        .replace("url = \"https://", "url = \"https://127.0.0.1:1/")
        .replace("/var/lib/komugate", data.to_str().unwrap())
        .replace("0.0.0.0:8443", &format!("127.0.0.1:{mtls}"))
        .replace("0.0.0.0:9090", &format!("127.0.0.1:{admin}"));
    assert!(
        config.contains(&format!("127.0.0.1:{admin}")),
        "the ConfigMap's admin listener is no longer 0.0.0.0:9090: update this test"
    );
    // Key material as the Secrets provide it (names from secrets.example.yaml + deployment items).
    let pki = root.join("pki");
    let out = komugate(&["pki", "init", "--dir", pki.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "pki init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let place = |from: &str, to: &str| {
        let dest: PathBuf = etc.join(to);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(pki.join(from), &dest)
            .unwrap_or_else(|e| panic!("{from} → {}: {e}", dest.display()));
    };
    place("server.pem", "tls/server.pem");
    place("server.key", "tls/server.key");
    place("device-ca.pem", "device-ca/device-ca.pem");
    place("inspect-ca.pem", "inspect-ca/inspect-ca.pem");
    place("inspect-ca.key", "inspect-ca/inspect-ca.key");
    place_mounted_files(&etc);
    std::fs::create_dir_all(etc.join("policy")).unwrap();
    let policy = m.policy.replace("/etc/komugate", etc.to_str().unwrap());
    std::fs::write(etc.join("policy/policy.toml"), policy).unwrap();
    // The komugate-clickhouse Secret's key (ClickHouse itself is not
    // running: the records wait in the buffer, the gateway serves).
    std::fs::create_dir_all(etc.join("clickhouse")).unwrap();
    std::fs::write(etc.join("clickhouse/password"), "REPLACE\n").unwrap();
    std::fs::create_dir_all(etc.join("config")).unwrap();
    let config_path = etc.join("config/komugate.toml");
    std::fs::write(&config_path, config).unwrap();
    std::fs::create_dir_all(&data).unwrap();

    let child = Command::new(BIN)
        .args([
            "serve",
            "--config",
            config_path.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start komugate serve");
    let mut serve = Killed(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(resp) = healthz(admin) {
            assert!(
                resp.starts_with("HTTP/1.1 200"),
                "/healthz answered: {resp}"
            );
            break;
        }
        if let Ok(Some(status)) = serve.0.try_wait() {
            let mut err = String::new();
            serve
                .0
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("komugate exited ({status}) with the ConfigMap config:\n{err}");
        }
        assert!(
            Instant::now() < deadline,
            "no /healthz on 127.0.0.1:{admin} within 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The mTLS listener is up too (device certificates are checked per connection).
    TcpStream::connect(("127.0.0.1", mtls)).expect("mTLS listener");
}

/// The YAML documents of a file, split at `---` lines.
fn documents(yaml: &str) -> Vec<String> {
    yaml.split("\n---\n").map(str::to_string).collect()
}

/// The document of `kind` named `name`.
fn find_doc(yaml: &str, kind: &str, name: &str) -> String {
    documents(yaml)
        .into_iter()
        .find(|d| {
            yaml_values(d, "kind").first().map(String::as_str) == Some(kind)
                && yaml_values(d, "name").first().map(String::as_str) == Some(name)
        })
        .unwrap_or_else(|| panic!("no {kind} {name:?}"))
}

#[test]
fn the_gateways_log_to_the_clickhouse_service() {
    let m = manifests();
    let config = komugate::config::Config::parse(&m.config, "k8s/configmap-gateway.yaml")
        .expect("the ConfigMap's config parses");
    let ch = &config.log.clickhouse;
    assert!(ch.enabled, "[log.clickhouse] is enabled in the ConfigMap");
    assert_eq!(config.log.retention_days, 365);
    let clickhouse = repo_file("k8s/clickhouse.yaml");
    let kustomization = repo_file("k8s/kustomization.yaml");
    assert!(kustomization.contains("  - clickhouse.yaml"));
    // url = http://<Service>.<namespace>.svc.cluster.local:<Service port>
    let service = find_doc(&clickhouse, "Service", "clickhouse");
    let namespace = yaml_values(&service, "namespace")[0].clone();
    let port = yaml_values(&service, "port")[0].clone();
    assert_eq!(
        ch.url,
        format!("http://clickhouse.{namespace}.svc.cluster.local:{port}"),
        "[log.clickhouse] url names the clickhouse Service"
    );
    // The Service selects the StatefulSet's pods, which keep their data on a claim.
    let sts = find_doc(&clickhouse, "StatefulSet", "clickhouse");
    let selector = "app.kubernetes.io/name: clickhouse";
    assert!(service.contains(selector) && sts.contains(selector));
    assert!(
        sts.contains("volumeClaimTemplates:") && sts.contains("mountPath: /var/lib/clickhouse")
    );
    assert!(sts.contains(&format!("containerPort: {port}")));
    // One password: the Secret the StatefulSet sets it from is the one
    // mounted where the gateway reads it.
    let user_env = sts
        .split("name: CLICKHOUSE_USER")
        .nth(1)
        .and_then(|rest| yaml_values(rest, "value").first().cloned())
        .expect("CLICKHOUSE_USER");
    assert_eq!(ch.user, user_env);
    assert!(sts.contains("name: komugate-clickhouse") && sts.contains("key: password"));
    let file = ch
        .password_file
        .as_ref()
        .expect("password_file")
        .display()
        .to_string();
    let (mount_dir, key) = file.rsplit_once('/').unwrap();
    let deployment = &m.deployment;
    let volume = deployment
        .split(&format!("mountPath: {mount_dir}\n"))
        .next()
        .and_then(|before| yaml_values(before, "name").last().cloned())
        .expect("the password_file's folder is mounted");
    let volume_def = deployment
        .split("volumes:")
        .nth(1)
        .and_then(|v| v.split(&format!("- name: {volume}\n")).nth(1))
        .expect("the mounted volume is defined");
    assert_eq!(
        yaml_values(volume_def, "secretName")
            .first()
            .map(String::as_str),
        Some("komugate-clickhouse")
    );
    assert_eq!(key, "password");
    assert!(m.secrets.contains("name: komugate-clickhouse"));
    // The gateways' NetworkPolicy lets them reach it.
    let np = repo_file("k8s/networkpolicy.yaml");
    let egress = np.split("egress:").nth(1).expect("egress rules");
    assert!(egress.contains(selector) && egress.contains(&format!("port: {port}")));
    // The local volume is documented as a buffer only.
    assert!(deployment.contains("A buffer only"));
}

#[test]
fn block_scalar_reader() {
    let yaml = "data:\n  a.toml: |\n    x = 1\n\n    [s]\n      y = 2\n  b: c\n";
    assert_eq!(block_scalar(yaml, "a.toml"), "x = 1\n\n[s]\n  y = 2\n");
}

/// The runtime image is distroless/cc (glibc, libgcc, no other libraries):
/// the binary must not link anything else dynamically (e.g. OpenSSL).
#[test]
fn binary_needs_only_what_distroless_cc_has() {
    let m = manifests();
    assert!(
        m.dockerfile.contains("gcr.io/distroless/cc-debian12"),
        "runtime image changed: update this test's library list"
    );
    let out = match Command::new("ldd").arg(BIN).output() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("skipped: ldd not available ({e})");
            return;
        }
    };
    let listing = String::from_utf8_lossy(&out.stdout);
    let allowed = [
        "linux-vdso.so",
        "libgcc_s.so",
        "libm.so",
        "libc.so",
        "ld-linux-x86-64.so",
        "libpthread.so",
        "libdl.so",
        "librt.so",
        "ld-linux-aarch64.so",
    ];
    for line in listing.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let lib = line.split_whitespace().next().unwrap_or("");
        let name = lib.rsplit('/').next().unwrap_or(lib);
        assert!(
            allowed.iter().any(|a| name.starts_with(a)),
            "komugate links {name}, which gcr.io/distroless/cc-debian12 does not have:\n{listing}"
        );
    }
}

/// The policy ConfigMap is the board's example policy in force: the same
/// sites, groups, tenants, CASB/DLP, egress, apps, rule sets, policies and
/// firewall; only the files a ConfigMap cannot hold (registry, UT1 lists and
/// the rule on their categories) are left out.
#[test]
fn policy_configmap_holds_the_examples_controls() {
    let parse = |what: &str, text: &str| -> toml::Table {
        toml::from_str(text).unwrap_or_else(|e| panic!("{what}: {e}"))
    };
    let example = parse("examples/policy.toml", &repo_file("examples/policy.toml"));
    let shipped = parse("k8s/configmap-policy.yaml", &manifests().policy);
    for key in [
        "version", "timezone", "contact", "defaults", "tenant", "casb", "group", "site", "app",
        "policy", "firewall",
    ] {
        assert_eq!(
            example.get(key),
            shipped.get(key),
            "`{key}` differs between examples/policy.toml and k8s/configmap-policy.yaml"
        );
    }
    // The same pools; on a single host the example binds the city's address
    // (`source`), a pod cannot and names it as `seen_as` (the NAT translates).
    let mut pools = example["egress"].as_array().unwrap().clone();
    for pool in &mut pools {
        let table = pool.as_table_mut().unwrap();
        let address = table
            .remove("source")
            .expect("the example binds its source");
        table.insert("seen_as".into(), address);
    }
    assert_eq!(Some(&toml::Value::Array(pools)), shipped.get("egress"));
    let mut rulesets = example["ruleset"].as_array().unwrap().clone();
    for rs in &mut rulesets {
        let rules = rs["rule"].as_array_mut().unwrap();
        rules.retain(|r| r.get("categories").is_none());
    }
    assert_eq!(
        Some(&toml::Value::Array(rulesets)),
        shipped.get("ruleset"),
        "the rule sets differ (besides the UT1 category rule)"
    );
    for key in ["casb", "firewall", "tenant"] {
        assert!(
            shipped.contains_key(key),
            "the shipped policy has no [{key}]"
        );
    }
}

/// Every `komugate_*` metric an expression names.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("komugate_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        out.push(name);
    }
    out
}

/// Metric names the gateway registers (string literals in proxy/src).
fn exported_metrics() -> std::collections::HashSet<String> {
    fn walk(dir: &Path, out: &mut std::collections::HashSet<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).unwrap();
                for part in text.split('"').skip(1).step_by(2) {
                    if part.starts_with("komugate_")
                        && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    {
                        out.insert(part.to_string());
                    }
                }
            }
        }
    }
    let mut out = std::collections::HashSet::new();
    walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut out);
    out
}

/// The Prometheus alert rules pass `promtool check rules` and the Grafana
/// dashboard parses; both name only metrics komugate exports.
#[test]
fn prometheus_rules_and_grafana_dashboard() {
    let exported = exported_metrics();
    assert!(exported.contains("komugate_requests_total"), "{exported:?}");
    let rules = block_scalar(
        &repo_file("k8s/prometheus-rules.yaml"),
        "komugate-rules.yaml",
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("komugate-rules.yaml");
    std::fs::write(&file, &rules).unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool ({e}): install Debian's prometheus package (.ci/run does)")
        });
    assert!(
        out.status.success(),
        "promtool check rules k8s/prometheus-rules.yaml:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let in_rules: Vec<String> = rules
        .lines()
        .filter(|l| l.trim_start().starts_with("expr:"))
        .flat_map(metric_names)
        .collect();
    assert!(in_rules.len() >= 9, "{in_rules:?}");
    for m in &in_rules {
        assert!(
            exported.contains(m),
            "k8s/prometheus-rules.yaml names {m}, which komugate does not export"
        );
    }
    let dashboard: serde_json::Value =
        serde_json::from_str(&repo_file("k8s/grafana-dashboard.json"))
            .expect("k8s/grafana-dashboard.json is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(!panels.is_empty());
    for p in panels {
        let targets = p["targets"].as_array().expect("targets");
        for t in targets {
            let expr = t["expr"].as_str().expect("expr");
            let names = metric_names(expr);
            assert!(!names.is_empty(), "panel {}: {expr}", p["title"]);
            for m in names {
                assert!(
                    exported.contains(&m),
                    "panel {} names {m}, which komugate does not export",
                    p["title"]
                );
            }
        }
    }
}

/// Items of the YAML list under the first `key:` line, each as its
/// `field: value` pairs in order (nested fields flattened).
fn list_items(yaml: &str, key: &str) -> Vec<Vec<(String, String)>> {
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut lines = yaml.lines().skip_while(|l| l.trim() != format!("{key}:"));
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    let key_indent = indent(header);
    let mut items: Vec<Vec<(String, String)>> = Vec::new();
    let mut item_indent = None;
    for line in lines {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        if indent(line) <= key_indent {
            break;
        }
        let trimmed = line.trim();
        if trimmed.starts_with("- ") && *item_indent.get_or_insert(indent(line)) == indent(line) {
            items.push(Vec::new());
        }
        if let (Some(item), Some((k, v))) = (
            items.last_mut(),
            trimmed.trim_start_matches("- ").split_once(':'),
        ) {
            item.push((k.trim().to_string(), v.trim().trim_matches('"').to_string()));
        }
    }
    items
}

fn field<'a>(item: &'a [(String, String)], name: &str) -> Option<&'a str> {
    item.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The document of a multi-document YAML text whose metadata names `name`.
fn object_named<'a>(yaml: &'a str, kind: &str, name: &str) -> Option<&'a str> {
    yaml.split("\n---").find(|doc| {
        doc.contains(&format!("kind: {kind}\n"))
            && yaml_values(doc, "name").first().map(String::as_str) == Some(name)
    })
}

/// The revocation list, IPS rules, threat lists, registry CSV and console
/// credentials each come from the Secret or ConfigMap mounted where the
/// gateway config (or the policy) looks for them, with a key of that file
/// name; the downloaded feeds go to a writable volume.
#[test]
fn security_files_come_from_secrets_and_configmaps_and_feeds_from_a_writable_volume() {
    let m = manifests();
    let config = komugate::config::Config::parse(&m.config, "k8s/configmap-gateway.yaml").unwrap();
    let policy: toml::Table = toml::from_str(&m.policy).unwrap();
    let configmaps = [
        repo_file("k8s/configmap-security.yaml"),
        repo_file("k8s/configmap-gateway.yaml"),
        repo_file("k8s/configmap-policy.yaml"),
    ]
    .join("\n---\n");
    let mounts = list_items(&m.deployment, "volumeMounts");
    let volumes = list_items(&m.deployment, "volumes");
    let mount_of = |path: &str| {
        mounts
            .iter()
            .filter(|mt| {
                field(mt, "mountPath").is_some_and(|mp| path.starts_with(&format!("{mp}/")))
            })
            .max_by_key(|mt| field(mt, "mountPath").unwrap().len())
            .unwrap_or_else(|| panic!("{path} is under no mountPath of k8s/deployment.yaml"))
    };
    let volume_of = |mount: &[(String, String)]| {
        let name = field(mount, "name").unwrap();
        volumes
            .iter()
            .find(|v| field(v, "name") == Some(name))
            .unwrap_or_else(|| panic!("volume {name} is mounted but not defined"))
            .clone()
    };
    let must_be_provided: Vec<(&str, String)> = vec![
        ("[tls] revoked_serials", config.tls.revoked_serials.clone()),
        (
            "[ips] rules",
            config
                .ips
                .rules
                .first()
                .expect("[ips] rules")
                .display()
                .to_string(),
        ),
        (
            "[threat_intel] lists",
            config
                .threat_intel
                .lists
                .first()
                .expect("[threat_intel] lists")
                .display()
                .to_string(),
        ),
        (
            "[admin] users_file",
            config.admin.users_file.display().to_string(),
        ),
        (
            "the policy's [registry] path",
            policy
                .get("registry")
                .and_then(|r| r.get("path"))
                .and_then(|p| p.as_str())
                .expect("the policy ConfigMap names the registry")
                .to_string(),
        ),
    ];
    for (what, path) in must_be_provided {
        assert!(
            path.starts_with("/etc/komugate/"),
            "{what} = {path:?}: not a mounted file"
        );
        let mount = mount_of(&path);
        assert_eq!(
            field(mount, "readOnly"),
            Some("true"),
            "{what}: {path} is on a writable mount"
        );
        let volume = volume_of(mount);
        let file = path.rsplit('/').next().unwrap();
        let (kind, name, source) = if let Some(secret) = field(&volume, "secretName") {
            ("Secret", secret.to_string(), m.secrets.clone())
        } else if volume.iter().any(|(k, _)| k == "configMap") {
            let name = volume
                .iter()
                .filter(|(k, _)| k == "name")
                .nth(1)
                .map(|(_, v)| v.clone())
                .unwrap();
            ("ConfigMap", name, configmaps.clone())
        } else {
            panic!("{what}: {path} is on volume {volume:?}, not a Secret or ConfigMap");
        };
        let doc = object_named(&source, kind, &name)
            .unwrap_or_else(|| panic!("{what}: {kind} {name} is mounted but not defined in k8s/"));
        assert!(
            doc.lines()
                .any(|l| l.trim().starts_with(&format!("{file}:"))),
            "{what}: {kind} {name} has no key {file}"
        );
    }
    // Feeds: on a writable volume (not the read-only mounts), one that is not
    // the log buffer, so a full list volume never stops logging.
    let feeds: Vec<_> = config
        .ips
        .feeds
        .iter()
        .chain(&config.threat_intel.feeds)
        .collect();
    assert!(
        !config.ips.feeds.is_empty() && !config.threat_intel.feeds.is_empty(),
        "the ConfigMap downloads no IPS or threat-intel feed"
    );
    for feed in feeds {
        let path = config.data_path(&feed.path).display().to_string();
        let mount = mount_of(&path);
        assert_ne!(
            field(mount, "readOnly"),
            Some("true"),
            "feed {}: {path} is read-only",
            feed.url
        );
        let volume = volume_of(mount);
        assert!(
            volume
                .iter()
                .any(|(k, _)| k == "emptyDir" || k == "persistentVolumeClaim"),
            "feed {}: {path} is on {volume:?}",
            feed.url
        );
        assert_ne!(
            field(mount, "mountPath"),
            Some("/var/lib/komugate"),
            "feed {}: keep feeds off the log volume",
            feed.url
        );
    }
}

/// The fixed-egress components fit the base: the NAT component patches the
/// Deployment the base defines, the Cilium egress gateway selects the pods
/// by their own labels and translates to the address the policy says the
/// C4th / 百問繚乱 pool is seen as (the address `komugate doctor` expects).
/// CI renders the base with both components and validates the result.
#[test]
fn fixed_egress_components_match_the_base() {
    let m = manifests();
    let deployment_name = yaml_values(&m.deployment, "name")[0].clone();
    let nat = repo_file("k8s/components/fixed-egress-nat/kustomization.yaml");
    assert!(nat.contains("kind: Component"));
    assert_eq!(yaml_values(&nat, "kind")[1..], ["Deployment", "Deployment"]);
    assert!(
        yaml_values(&nat, "name")
            .iter()
            .all(|n| *n == deployment_name),
        "the patch targets the base Deployment {deployment_name}"
    );
    assert_eq!(
        yaml_values(&nat, "komugate.example/egress"),
        ["fixed-ip"],
        "nodeSelector"
    );

    let cilium = repo_file("k8s/components/fixed-egress-cilium/egress-gateway-policy.yaml");
    let pod_label = yaml_values(&m.deployment, "app.kubernetes.io/name");
    assert!(!pod_label.is_empty());
    assert!(pod_label
        .iter()
        .all(|l| yaml_values(&cilium, "app.kubernetes.io/name") == [l.clone()]));
    let policy: toml::Value = toml::from_str(&m.policy).unwrap();
    let pool = &policy["egress"][0];
    assert!(
        pool.get("source").is_none(),
        "a pod cannot bind the city's public address: the k8s policy uses seen_as"
    );
    assert_eq!(
        yaml_values(&cilium, "egressIP"),
        [pool["seen_as"].as_str().unwrap()]
    );
    let components = repo_file("k8s/components/fixed-egress-cilium/kustomization.yaml");
    assert!(components.contains("resources:\n  - egress-gateway-policy.yaml"));
}
