//! A real SMTP server (Python's aiosmtpd from the venv `.ci/run` prepares),
//! STARTTLS required, with its own CA; delivered mails are appended as JSON
//! lines to a file.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// The Python virtualenv .ci/run prepares (aiosmtpd installed).
pub fn venv_python() -> PathBuf {
    let venv = std::env::var_os("KOMUGATE_CI_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache"));
            cache.join("komugate-ci/venv")
        });
    let python = venv.join("bin/python");
    let ok = Command::new(&python)
        .args(["-c", "import aiosmtpd"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{} cannot import aiosmtpd: run .ci/run once, or `{}/bin/pip install aiosmtpd`",
        python.display(),
        venv.display()
    );
    python
}

const SMTP_SERVER: &str = r#"
import asyncio, json, ssl, sys
from aiosmtpd.controller import Controller
cert, key, port, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
class Handler:
    async def handle_DATA(self, server, session, envelope):
        with open(out, "a") as f:
            f.write(json.dumps({"from": envelope.mail_from, "to": envelope.rcpt_tos,
                                "tls": session.ssl is not None,
                                "data": envelope.original_content.decode("utf-8", "replace")}) + "\n")
        return "250 OK"
ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(cert, key)
c = Controller(Handler(), hostname="127.0.0.1", port=port, tls_context=ctx, require_starttls=True)
c.start()
print("ready", flush=True)
sys.stdin.read()
"#;

pub struct SmtpServer {
    child: Child,
    pub port: u16,
    /// The CA that issued the server's certificate (for `[alerts] smtp_ca`).
    pub ca_path: PathBuf,
    /// Delivered mails, one JSON object per line.
    pub mails: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmtpServer {
    /// Started and ready on 127.0.0.1 (certificate for "localhost").
    pub fn start() -> SmtpServer {
        let python = venv_python();
        let dir = tempfile::tempdir().unwrap();
        let ca = komugate::pki::generate_ca("test SMTP CA").unwrap();
        let leaf = ca
            .issue_server(&["localhost".into(), "127.0.0.1".into()])
            .unwrap();
        let p = |name: &str| dir.path().join(name);
        std::fs::write(p("smtp.pem"), &leaf.cert_pem).unwrap();
        std::fs::write(p("smtp.key"), &leaf.key_pem).unwrap();
        std::fs::write(p("smtp-ca.pem"), ca.cert_pem()).unwrap();
        std::fs::write(p("server.py"), SMTP_SERVER).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new(&python)
            .arg(p("server.py"))
            .arg(p("smtp.pem"))
            .arg(p("smtp.key"))
            .arg(port.to_string())
            .arg(p("mails.jsonl"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start aiosmtpd");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "aiosmtpd did not start");
        SmtpServer {
            child,
            port,
            ca_path: p("smtp-ca.pem"),
            mails: p("mails.jsonl"),
            _dir: dir,
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
