//! komugate-linkemu: a packet-level link emulator for the home-link
//! benchmark (benches/home-link.sh). This kernel has no `netem` qdisc, and a
//! TCP-level relay would hide loss from TCP, so packets are carried in user
//! space between two TUN devices, one in each network namespace: every IP
//! packet read from one side is delayed (half the RTT), dropped at random
//! (the loss rate), paced to the link rate behind a bounded queue (drop-tail,
//! like a home router's buffer), then written to the other side.
//!
//! ```text
//! ip -n laptop tuntap add dev emu0 mode tun; ip -n gw tuntap add dev emu1 mode tun
//! komugate-linkemu --a laptop:emu0 --b gw:emu1 --rtt-ms 30 --loss 0.005 \
//!     --rate-mbit 100 [--rate-up-mbit 20] [--queue-ms 50] [--seed 1]
//! ```
//! (a = the laptop side: `--rate-mbit` is the download rate b → a,
//! `--rate-up-mbit` the upload rate a → b, default the same.)
//! On SIGTERM or SIGINT it prints per-direction counters and exits.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "komugate-linkemu",
    about = "packet-level link emulator between two TUN devices"
)]
struct Cli {
    /// Laptop side: NETNS:DEVICE (a persistent TUN device in that namespace).
    #[arg(long)]
    a: String,
    /// Network side: NETNS:DEVICE.
    #[arg(long)]
    b: String,
    /// Round-trip time added (each direction gets half).
    #[arg(long, default_value_t = 30.0)]
    rtt_ms: f64,
    /// Probability that a packet is lost, each direction.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Download rate (b → a), Mbit/s.
    #[arg(long, default_value_t = 100.0)]
    rate_mbit: f64,
    /// Upload rate (a → b), Mbit/s [default: --rate-mbit].
    #[arg(long)]
    rate_up_mbit: Option<f64>,
    /// Queue in front of the link, as milliseconds at the link rate
    /// (packets that would wait longer are dropped).
    #[arg(long, default_value_t = 50.0)]
    queue_ms: f64,
    /// Seed of the loss draws (reproducible runs).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// How one direction of the link behaves.
#[derive(Clone, Copy)]
struct Shape {
    one_way: Duration,
    loss: f64,
    bits_per_sec: f64,
    queue: Duration,
}

#[derive(Default)]
struct Counters {
    packets: AtomicU64,
    bytes: AtomicU64,
    lost: AtomicU64,
    queue_drops: AtomicU64,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let signals = block_signals();
    let a = open_tun(&cli.a)?;
    let b = open_tun(&cli.b)?;
    let down = Shape {
        one_way: Duration::from_secs_f64(cli.rtt_ms / 2000.0),
        loss: cli.loss,
        bits_per_sec: cli.rate_mbit * 1e6,
        queue: Duration::from_secs_f64(cli.queue_ms / 1000.0),
    };
    let up = Shape {
        bits_per_sec: cli.rate_up_mbit.unwrap_or(cli.rate_mbit) * 1e6,
        ..down
    };
    let up_counters = Arc::new(Counters::default());
    let down_counters = Arc::new(Counters::default());
    let (a_read, a_write) = (a.try_clone()?, a);
    let (b_read, b_write) = (b.try_clone()?, b);
    direction("up", a_read, b_write, up, cli.seed, up_counters.clone());
    direction(
        "down",
        b_read,
        a_write,
        down,
        cli.seed ^ 0x9e37_79b9,
        down_counters.clone(),
    );
    eprintln!(
        "linkemu: {} <-> {}: RTT {} ms, loss {}, down {} Mbit/s, up {} Mbit/s, queue {} ms",
        cli.a,
        cli.b,
        cli.rtt_ms,
        cli.loss,
        cli.rate_mbit,
        cli.rate_up_mbit.unwrap_or(cli.rate_mbit),
        cli.queue_ms
    );
    wait_for_signal(&signals);
    for (name, c) in [("up", &up_counters), ("down", &down_counters)] {
        eprintln!(
            "linkemu {name}: {} packets, {} bytes delivered; {} lost at random, {} dropped at the queue",
            c.packets.load(Ordering::Relaxed),
            c.bytes.load(Ordering::Relaxed),
            c.lost.load(Ordering::Relaxed),
            c.queue_drops.load(Ordering::Relaxed)
        );
    }
    Ok(())
}

/// Blocks SIGTERM and SIGINT in this thread and the threads it starts
/// after this, so that [`wait_for_signal`] receives them.
fn block_signals() -> libc::sigset_t {
    // SAFETY: a sigset on the stack, filled and installed by libc only.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Blocks until SIGTERM or SIGINT.
fn wait_for_signal(set: &libc::sigset_t) {
    let mut sig = 0;
    // SAFETY: waits on a set built by block_signals.
    unsafe { libc::sigwait(set, &mut sig) };
}

/// Packets on their way across one direction, with their delivery times
/// (in order: delivery times only grow).
type DelayQueue = (Mutex<VecDeque<(Instant, Vec<u8>)>>, Condvar);

/// Starts the reader (loss, pacing, queue) and the writer (delay) threads of
/// one direction.
fn direction(
    name: &'static str,
    mut from: File,
    mut to: File,
    shape: Shape,
    seed: u64,
    counters: Arc<Counters>,
) {
    let queue: Arc<DelayQueue> = Arc::default();
    let q = queue.clone();
    let c = counters.clone();
    std::thread::Builder::new()
        .name(format!("{name}-read"))
        .spawn(move || {
            let mut rng = SplitMix64(seed);
            // When the link finishes sending what it has accepted so far.
            let mut link_free = Instant::now();
            let mut buf = vec![0u8; 65536];
            loop {
                let n = match from.read(&mut buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        eprintln!("linkemu {name}: read: {e}");
                        return;
                    }
                };
                if rng.next_f64() < shape.loss {
                    c.lost.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let now = Instant::now();
                let start = link_free.max(now);
                if start - now > shape.queue {
                    c.queue_drops.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                link_free = start + Duration::from_secs_f64(n as f64 * 8.0 / shape.bits_per_sec);
                let deliver = link_free + shape.one_way;
                let (lock, ready) = &*q;
                lock.lock().unwrap().push_back((deliver, buf[..n].to_vec()));
                ready.notify_one();
            }
        })
        .expect("thread");
    std::thread::Builder::new()
        .name(format!("{name}-write"))
        .spawn(move || {
            let (lock, ready) = &*queue;
            loop {
                let (deliver, packet) = {
                    let mut q = lock.lock().unwrap();
                    loop {
                        if let Some(p) = q.pop_front() {
                            break p;
                        }
                        q = ready.wait(q).unwrap();
                    }
                };
                // Delivery times only grow: the queue is in order.
                let now = Instant::now();
                if deliver > now {
                    std::thread::sleep(deliver - now);
                }
                // One write is one packet on a TUN device: never partial.
                match to.write_all(&packet) {
                    Ok(()) => {
                        counters.packets.fetch_add(1, Ordering::Relaxed);
                        counters
                            .bytes
                            .fetch_add(packet.len() as u64, Ordering::Relaxed);
                    }
                    // A packet the kernel refuses (e.g. the device is down) is lost.
                    Err(e) => eprintln!("linkemu {name}: write: {e}"),
                }
            }
        })
        .expect("thread");
}

/// Opens the persistent TUN device DEVICE inside network namespace NETNS.
fn open_tun(spec: &str) -> Result<File> {
    let (netns, dev) = spec
        .split_once(':')
        .with_context(|| format!("{spec}: expected NETNS:DEVICE"))?;
    if dev.is_empty() || dev.len() >= libc::IFNAMSIZ {
        bail!(
            "{spec}: device name must be 1 to {} bytes",
            libc::IFNAMSIZ - 1
        );
    }
    let own = File::open("/proc/self/ns/net").context("/proc/self/ns/net")?;
    let target = File::open(format!("/var/run/netns/{netns}")).with_context(|| {
        format!("network namespace {netns} (create it with `ip netns add {netns}`)")
    })?;
    // The device name is looked up in the namespace the thread is in.
    setns(&target).with_context(|| format!("entering network namespace {netns}"))?;
    let opened = attach(dev);
    setns(&own).context("returning to the original network namespace")?;
    opened.with_context(|| format!("attaching to TUN device {dev} in {netns} (create it with `ip -n {netns} tuntap add dev {dev} mode tun`)"))
}

fn setns(ns: &File) -> std::io::Result<()> {
    // SAFETY: plain syscall on a valid descriptor.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn attach(dev: &str) -> std::io::Result<File> {
    // struct ifreq: the name, then flags (a short) in the union.
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just opened and is owned by the File from here on.
    let file = unsafe { File::from_raw_fd(fd) };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..dev.len()].copy_from_slice(dev.as_bytes());
    // SAFETY: TUNSETIFF reads and writes one struct ifreq.
    if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(file)
}

/// Small deterministic PRNG for the loss draws (reproducible runs).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}
