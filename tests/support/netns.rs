//! Linux network namespaces for the full-device tests (tests/tun.rs): a
//! "laptop" namespace whose only link is a veth to the host (where the
//! gateway listens), an "internet" namespace reachable from the host only,
//! and a "hotel" address on the host that the laptop reaches directly (a
//! captive portal and its resolver). Everything is torn down on drop,
//! also when a test fails.
//!
//! ```text
//!  laptop ns                 host                         internet ns
//!  kgNl-p 10.A.1.2/30 ── kgNl 10.A.1.1/30 (gateway)       kgNi-p 10.A.2.2/30 (origins)
//!  default via 10.A.1.1      10.A.3.1/32 (hotel)  kgNi 10.A.2.1/30 ──┘
//!  komugate0 (TUN)           forwarding off on kgNl       no default route
//! ```

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;

pub struct Lab {
    pub laptop: String,
    pub internet: String,
    octet: u8,
    host_laptop_if: String,
    host_internet_if: String,
    etc: PathBuf,
}

/// Why these tests cannot run here, if they cannot.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (network namespaces and TUN devices need root)".into());
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("no `ip` command (iproute2)".into());
    }
    None
}

fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Lab {
    pub fn create() -> Lab {
        let pid = std::process::id();
        let tag = pid % 100_000;
        let lab = Lab {
            laptop: format!("kg{tag}-laptop"),
            internet: format!("kg{tag}-inet"),
            octet: 100 + (pid % 100) as u8,
            host_laptop_if: format!("kg{tag}l"),
            host_internet_if: format!("kg{tag}i"),
            etc: PathBuf::from(format!("/etc/netns/kg{tag}-laptop")),
        };
        // Leftovers of an earlier run with the same pid go first.
        lab.teardown();
        let (l, i) = (&lab.laptop, &lab.internet);
        let (hl, hi) = (&lab.host_laptop_if, &lab.host_internet_if);
        let (pl, pi) = (format!("{hl}-p"), format!("{hi}-p"));
        run(&["ip", "netns", "add", l]);
        run(&["ip", "netns", "add", i]);
        for (ns, host_if, peer, host_net, ns_addr) in [
            (
                l,
                hl,
                &pl,
                lab.laptop_gw_cidr(),
                format!("{}/30", lab.laptop_addr()),
            ),
            (
                i,
                hi,
                &pi,
                format!("{}/30", lab.internet_host()),
                format!("{}/30", lab.origin()),
            ),
        ] {
            run(&[
                "ip", "link", "add", host_if, "type", "veth", "peer", "name", peer,
            ]);
            run(&["ip", "link", "set", peer, "netns", ns]);
            run(&["ip", "addr", "add", &host_net, "dev", host_if]);
            run(&["ip", "link", "set", host_if, "up"]);
            run(&["ip", "-n", ns, "addr", "add", &ns_addr, "dev", peer]);
            run(&["ip", "-n", ns, "link", "set", peer, "up"]);
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/32", lab.hotel()),
            "dev",
            hl,
        ]);
        // The laptop's network: a router (the host) as its default route,
        // which does not forward (the origins are only reachable through
        // the gateway); the internet namespace has no way back anyway.
        run(&[
            "ip",
            "-n",
            l,
            "route",
            "add",
            "default",
            "via",
            &lab.host().to_string(),
        ]);
        std::fs::write(format!("/proc/sys/net/ipv4/conf/{hl}/forwarding"), "0").unwrap();
        // The laptop's resolver (`ip netns exec` puts it at /etc/resolv.conf).
        std::fs::create_dir_all(&lab.etc).unwrap();
        std::fs::write(
            lab.etc.join("resolv.conf"),
            format!("nameserver {}\noptions timeout:2 attempts:1\n", lab.hotel()),
        )
        .unwrap();
        lab
    }

    fn laptop_gw_cidr(&self) -> String {
        format!("{}/30", self.host())
    }
    /// The host's side of the laptop's link (the gateway listens here).
    pub fn host(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.octet, 1, 1)
    }
    pub fn laptop_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.octet, 1, 2)
    }
    /// The host's side of the internet link (the gateway's egress address).
    pub fn internet_host(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.octet, 2, 1)
    }
    /// The origins' address, in the internet namespace.
    pub fn origin(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.octet, 2, 2)
    }
    /// The hotel's portal and resolver: on the host, reached by the laptop directly.
    pub fn hotel(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.octet, 3, 1)
    }
    pub fn net16(&self) -> String {
        format!("10.{}.0.0/16", self.octet)
    }

    /// A command run inside namespace `ns`.
    pub fn exec(&self, ns: &str, program: &str) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("ip");
        c.args(["netns", "exec", ns, program]);
        c.kill_on_drop(true);
        c
    }

    /// Runs `f` on a thread inside namespace `ns`: sockets it creates stay
    /// in that namespace.
    pub fn within<T: Send>(&self, ns: &str, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{ns}");
        std::thread::scope(|s| {
            s.spawn(|| {
                let fd = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
                // SAFETY: setns on a namespace file we hold open; affects this thread only.
                let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("thread in namespace")
        })
    }

    fn teardown(&self) {
        for ns in [&self.laptop, &self.internet] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        // Deleting a namespace deletes the veth pair; these are for a
        // namespace that was never made.
        for i in [&self.host_laptop_if, &self.host_internet_if] {
            let _ = Command::new("ip").args(["link", "del", i]).output();
        }
        let _ = std::fs::remove_dir_all(&self.etc);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.teardown();
    }
}
