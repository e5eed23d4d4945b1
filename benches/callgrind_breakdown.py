#!/usr/bin/env python3
"""Per-request breakdown of a callgrind dump of the inspected request path
(benches/profile-inspect.sh): instructions (Ir) per request in total, by
crate (self cost: sums to the total) and by stage (inclusive cost of the
function that implements it: stages nest, so they do not sum), and the
syscalls per request counted by strace -c over the same phase.

Usage: callgrind_breakdown.py DUMP REQUESTS LABEL [STRACE_C_OUTPUT]
"""
import re
import subprocess
import sys
from collections import defaultdict

# Stage -> regex on the demangled function name; the inclusive cost of the
# most expensive matching function is reported (one frame, not a sum, so a
# recursive or repeated match is never counted twice).
STAGES = [
    ("client TLS: read + decrypt (rustls server)", r"ConnectionCommon<rustls::server::server_conn::ServerConnectionData>>::process_new_packets"),
    ("client TLS: encrypt + write (tokio-rustls server)", r"tokio_rustls::server::TlsStream<.*> as tokio::io::async_write::AsyncWrite>::poll_write$"),
    ("upstream TLS: read + decrypt (rustls client)", r"ConnectionCommon<rustls::client::client_conn::ClientConnectionData>>::process_new_packets"),
    ("upstream TLS: encrypt + write (tokio-rustls client)", r"tokio_rustls::client::TlsStream<.*> as tokio::io::async_write::AsyncWrite>::poll_write$"),
    ("AES-GCM seal/open (ring, both sides)", r"^ring_core_.*aes_gcm|^ring_core_.*gcm_|aes_hw_ctr32|aesni_gcm"),
    ("inner server: hyper HTTP/1.1 dispatcher", r"hyper::proto::h1::dispatch::Dispatcher<.*hyper::proto::h1::dispatch::Server<.*::poll_catch$"),
    ("inner server: hyper HTTP/2 server connection", r"hyper::proto::h2::server::Server<.*> as core::future::future::Future>::poll$"),
    ("inner request service (flow::inner_request)", r"komugate::flow::inner_request::\{\{closure\}\}$"),
    ("  decision (policy Runtime::decide)", r"komugate::.*Runtime::decide$|komugate::flow::Flow::decide$"),
    ("  CASB begin (app, tenant)", r"komugate::stages::casb::Casb::begin$"),
    ("  IPS on the request", r"komugate::stages::ips::inspect_request::\{\{closure\}\}$"),
    ("  CASB/DLP request body", r"komugate::stages::casb::Casb::request::\{\{closure\}\}$"),
    ("  upstream head rewrite", r"komugate::flow::http::upstream_head$"),
    ("  response head rewrite (flow::http::respond)", r"komugate::flow::http::respond$"),
    ("upstream client (hyper-util legacy Client::request)", r"hyper_util::client::legacy::client::Client<.*>::send_request::\{\{closure\}\}$"),
    ("upstream HTTP/1.1 client dispatcher", r"hyper::proto::h1::dispatch::Dispatcher<.*hyper::proto::h1::dispatch::Client<.*::poll_catch$"),
    ("log: access record written (Entry::write)", r"komugate::flow::entry::Entry::write$"),
    ("log: access log writer task", r"komugate::logs::writer::.*\{\{closure\}\}$|komugate::access_log::.*\{\{closure\}\}$"),
    ("memory allocator (malloc/free/realloc)", r"^(mi_|_mi_|malloc$|free$|realloc$|__rust_alloc|__rust_dealloc|__rust_realloc)"),
    ("memcpy/memmove", r"^__memcpy|^__memmove|^memcpy|^memmove"),
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


def main():
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
        if name.startswith(("memory allocator", "memcpy", "AES-GCM")):
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
