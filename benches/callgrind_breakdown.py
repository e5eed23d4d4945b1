#!/usr/bin/env python3
"""Per-request breakdown of a callgrind dump of the inspected request path
(benches/profile-inspect.sh): instructions (Ir) per request in total, by
crate (self cost: sums to the total) and by stage (inclusive cost of the
function that implements it: stages nest, so they do not sum), and the
syscalls per request counted by strace -c over the same phase.

Usage: callgrind_breakdown.py DUMP REQUESTS LABEL [STRACE_C_OUTPUT]
       callgrind_breakdown.py --compare BEFORE_DUMP AFTER_DUMP REQUESTS LABEL
"""
import re
import subprocess
import sys
from collections import defaultdict

# Stage -> regex on the demangled function name; the inclusive cost of the
# most expensive matching function is reported (one frame, not a sum, so a
# recursive or repeated match is never counted twice). Indented stages are
# inside the one above them.
STAGES = [
    ("inner server: hyper HTTP/1.1 server connection (TLS, parse, stages, response)", r"^<hyper::server::conn::http1::UpgradeableConnection<I,S> as core::future::future::Future>::poll$"),
    ("inner server: hyper HTTP/2 server connection (TLS, frames)", r"^<hyper::server::conn::http2::Connection<I,S,E> as core::future::future::Future>::poll$"),
    ("inner server: HTTP/2 stream tasks (stages, response)", r"^<hyper::proto::h2::server::H2Stream<F,B> as core::future::future::Future>::poll$"),
    ("  client TLS read + decrypt", r"^<tokio_rustls::server::TlsStream<IO> as tokio::io::async_read::AsyncRead>::poll_read$"),
    ("  stages + upstream request (flow::exchange_stages)", r"^komugate::flow::exchange_stages::\{\{closure\}\}$"),
    ("    decision (policy)", r"^komugate::stages::decide::Runtime::decide$"),
    ("    CASB begin (app, tenant)", r"^komugate::stages::casb::Casb::begin$"),
    ("    upstream head rewrite", r"^komugate::flow::http::upstream_head$"),
    ("    upstream request: shared pool (hyper-util legacy client)", r"^hyper_util::client::legacy::client::Client<C,B>::send_request::\{\{closure\}\}$"),
    ("  record and entry (flow::Flow::new)", r"^komugate::flow::Flow::new$"),
    ("  response head rewrite", r"^komugate::flow::http::respond$"),
    ("  log: record handed over (Entry drop: metrics, alerts, channel)", r"^<komugate::flow::entry::Entry as core::ops::drop::Drop>::drop$"),
    ("upstream connection task: shared pool's (hyper h1 client)", r"^<hyper::client::conn::http1::upgrades::UpgradeableConnection<I,B> as core::future::future::Future>::poll$"),
    ("upstream connection task: pinned (hyper h1 client)", r"^komugate::egress::pinned::connect::\{\{closure\}\}::\{\{closure\}\}$"),
    ("  upstream TLS read + decrypt", r"^<tokio_rustls::client::TlsStream<IO> as tokio::io::async_read::AsyncRead>::poll_read$"),
    ("log writer thread (JSON, segment file)", r"^komugate::logs::writer::Writer::run$"),
    ("AES-GCM (ring, both sides, self cost)", r"^ring_core_.*aes|^ring_core_.*gcm_|^_aesni_ctr32_ghash"),
    ("memory allocator (self cost)", r"^(mi_|_mi_|malloc$|free$|realloc$)"),
    ("memcpy/memmove (self cost)", r"^__memcpy|^__memmove|^memcpy$|^memmove$"),
]

CRATES = [
    ("ring (crypto)", r"^ring|^ring_core|aes_hw|aesni|gcm_|ChaCha20|chacha|poly1305|sha256_block|sha512_block"),
    ("rustls", r"rustls::|rustls_"),
    ("tokio-rustls", r"tokio_rustls::"),
    ("hyper (h1)", r"hyper::proto::h1|hyper::proto::h1"),
    ("hyper (other)", r"hyper::"),
    ("hyper-util", r"hyper_util::"),
    ("h2", r"\bh2::"),
    ("tokio", r"tokio::"),
    ("http / bytes / httparse", r"\bhttp::|\bbytes::|httparse::"),
    ("komugate", r"komugate::|komugate_policy::|komugate_categories::"),
    ("allocator", r"^(mi_|_mi_)|malloc|free$|realloc|__rust_alloc|__rust_dealloc|__rust_realloc|alloc::alloc::"),
    ("libc memcpy/memmove/memset", r"mem(cpy|move|set|cmp)|__mem"),
    ("core / alloc / std", r"^<?core::|^<?alloc::|^<?std::|^<&|^<\[|^<\("),
]


def annotate(dump, inclusive):
    """(total Ir, [(Ir, function)] sorted by Ir): one row per function name.
    callgrind lists a function once per source file its code came from
    (inlining): self costs are summed over them; an inclusive cost is
    repeated on each, so the largest is kept."""
    out = subprocess.run(
        ["callgrind_annotate", f"--inclusive={'yes' if inclusive else 'no'}", "--auto=no",
         "--threshold=100", dump],
        capture_output=True, text=True, check=True).stdout
    total = None
    by_fn = defaultdict(int)
    for line in out.splitlines():
        m = re.match(r"^\s*([\d,]+)\s+(\([\d.]+%\)\s+)?PROGRAM TOTALS", line)
        if m:
            total = int(m.group(1).replace(",", ""))
            continue
        m = re.match(r"^\s*([\d,]+)\s+(?:\([\s\d.]+%\)\s+)?(\S[^:]*):(.*?)(\s+\[.*\])?$", line)
        if m and total is not None:
            fn, ir = m.group(3).strip(), int(m.group(1).replace(",", ""))
            by_fn[fn] = max(by_fn[fn], ir) if inclusive else by_fn[fn] + ir
    rows = sorted(((ir, fn) for fn, ir in by_fn.items()), reverse=True)
    return total, rows


def stage_costs(dump):
    total, excl = annotate(dump, False)
    _, incl = annotate(dump, True)
    out = []
    for name, rx in STAGES:
        if "self cost" in name:
            ir = sum(ir for ir, fn in excl if re.search(rx, fn))
        else:
            ir = max([ir for ir, fn in incl if re.search(rx, fn)] or [0])
        out.append((name, ir))
    return total, out


def compare(before, after, n, label):
    tb, sb = stage_costs(before)
    ta, sa = stage_costs(after)
    print(f"\n| inner {label}: Ir per request | before | after | change |\n|---|---:|---:|---:|")
    print(f"| **total** | **{tb / n:,.0f}** | **{ta / n:,.0f}** | {100 * (ta - tb) / tb:+.0f}% |")
    for (name, b), (_, a) in zip(sb, sa):
        if b == 0 and a == 0:
            continue
        change = f"{100 * (a - b) / b:+.0f}%" if b else "new"
        print(f"| {name} | {b / n:,.0f} | {a / n:,.0f} | {change} |")


def main():
    if sys.argv[1] == "--compare":
        compare(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
        return
    dump, n, label = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    strace = sys.argv[4] if len(sys.argv) > 4 else ""
    total, excl = annotate(dump, False)
    _, incl = annotate(dump, True)
    per = lambda ir: ir / n
    print(f"\n## inner {label}: {per(total):,.0f} Ir per request (callgrind, {n} requests)\n")
    print("| by crate (self cost) | Ir per request | share |\n|---|---:|---:|")
    by_crate = defaultdict(int)
    for ir, fn in excl:
        for name, rx in CRATES:
            if re.search(rx, fn):
                by_crate[name] += ir
                break
        else:
            by_crate["other"] += ir
    for name, ir in sorted(by_crate.items(), key=lambda kv: -kv[1]):
        print(f"| {name} | {per(ir):,.0f} | {100 * ir / total:.1f}% |")
    print("\n| by stage (inclusive; stages nest) | Ir per request | share |\n|---|---:|---:|")
    for name, rx in STAGES:
        matches = [(ir, fn) for ir, fn in incl if re.search(rx, fn)]
        if not matches:
            continue
        if "self cost" in name:
            # Leaf functions: their self costs add up.
            ir = sum(ir for ir, fn in excl if re.search(rx, fn))
        else:
            ir = max(ir for ir, _ in matches)
        print(f"| {name} | {per(ir):,.0f} | {100 * ir / total:.1f}% |")
    print("\n| top self cost | Ir per request |\n|---|---:|")
    for ir, fn in excl[:25]:
        print(f"| `{fn[:110]}` | {per(ir):,.0f} |")
    if strace:
        try:
            text = open(strace).read()
        except OSError:
            text = ""
        rows = []
        for line in text.splitlines():
            f = line.split()
            if len(f) >= 5 and f[3].isdigit() and not line.startswith(("%", "-")) and f[-1] != "total":
                rows.append((int(f[3]), f[-1]))
        if rows:
            calls = sum(c for c, _ in rows)
            detail = ", ".join(f"{name} {c / n:.2f}" for c, name in sorted(rows, reverse=True)[:8])
            print(f"\nSyscalls per request (strace -c, {n} requests): {calls / n:.2f} ({detail})")


main()
