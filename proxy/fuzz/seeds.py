#!/usr/bin/env python3
"""Writes the seed inputs of every fuzz target into corpus/<target>/.

Real examples of what each parser reads: request heads, PROXY headers,
SOCKS5 handshakes, DNS queries, TLS ClientHellos, the repository's IPS
rules, UT1 list lines, the example policy and registry, Office documents,
multipart uploads, HTTP/2 connections. Run from proxy/fuzz/ (needs the
`h2` Python package for the HTTP/2 seeds; UT1 lines come from the
repository's excerpt, plus the shared sample when present). The fuzzing
runs grow the corpora from these; `-merge=1` keeps them small.
"""

import base64
import io
import json
import os
import ssl
import struct
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).resolve().parent / "corpus"


def put(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / f"seed-{name}").write_bytes(data if isinstance(data, bytes) else data.encode())


# ------------------------------------------------------------ HTTP/1.1 heads
HEADS = {
    "get-keepalive": b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n"
    b"GET http://example.com/b HTTP/1.1\r\nHost: example.com\r\n\r\n",
    "post-length": b"POST http://example.com/f HTTP/1.1\r\nHost: example.com\r\n"
    b"Content-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    "chunked-trailers": b"POST http://example.com/u HTTP/1.1\r\nHost: example.com\r\n"
    b"Transfer-Encoding: gzip, chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n"
    b"GET / HTTP/1.1\r\nHost: b\r\n\r\n",
    "smuggle-cl-te": b"POST http://example.com/ HTTP/1.1\r\nHost: example.com\r\n"
    b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "forged-marker": b"GET http://example.com/ HTTP/1.1\r\nkomugate-framing-error: x\r\n"
    b"Host: example.com\r\n\r\n",
    "connect": b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n\x16\x03\x01",
    "upgrade": b"GET http://example.com/ws HTTP/1.1\r\nHost: example.com\r\n"
    b"Upgrade: websocket\r\nConnection: Upgrade\r\n\r\nraw",
    "bare-lf": b"\r\n\r\nGET http://example.com/ HTTP/1.1\nHost: example.com\n\n",
    "two-lengths": b"POST http://a/ HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
}
for name, head in HEADS.items():
    put("framing_guard", name, bytes([4, 0, 7, 255]) + head)
    put("client_http", name, bytes([255, 3]) + head)
put("client_http", "pac", bytes([255, 255]) + b"GET /proxy.pac HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
put("client_http", "https-absolute", bytes([255, 255]) + b"GET https://a.example/ HTTP/1.1\r\nHost: a\r\n\r\n")
put("client_http", "origin-form", bytes([255, 255]) + b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")

# ------------------------------------------------------------ PROXY protocol
SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v2(cmd_ver, fam, payload):
    return SIG + bytes([cmd_ver, fam]) + struct.pack(">H", len(payload)) + payload


PROXY = {
    "v1-tcp4": b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET / HTTP/1.1\r\n",
    "v1-tcp6": b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 8443\r\n",
    "v1-unknown": b"PROXY UNKNOWN\r\n",
    "v2-tcp4": v2(0x21, 0x11, bytes([192, 0, 2, 1, 198, 51, 100, 2]) + struct.pack(">HH", 56324, 443)),
    "v2-tcp6": v2(0x21, 0x21, bytes(range(16)) + bytes(range(16, 32)) + struct.pack(">HH", 1, 2)),
    "v2-local": v2(0x20, 0x00, b""),
    "v2-tlv": v2(0x21, 0x11, bytes([10, 0, 0, 1, 10, 0, 0, 2]) + struct.pack(">HH", 1, 2)
                 + b"\x04\x00\x04abcd"),
    "v2-unix": v2(0x21, 0x31, bytes(216)),
}
for name, data in PROXY.items():
    put("proxy_protocol", name, bytes([255, 0]) + data)

# ------------------------------------------------------------ SOCKS5
SOCKS = {
    "ipv4": b"\x05\x01\x00" + b"\x05\x01\x00\x01" + bytes([93, 184, 216, 34]) + struct.pack(">H", 443),
    "domain": b"\x05\x02\x00\x02" + b"\x05\x01\x00\x03\x0bexample.com" + struct.pack(">H", 80),
    "ipv6": b"\x05\x01\x00" + b"\x05\x01\x00\x04" + bytes(15) + b"\x01" + struct.pack(">H", 22),
    "udp-associate": b"\x05\x01\x00" + b"\x05\x03\x00\x01" + bytes(4) + b"\x00\x00",
    "no-method": b"\x05\x01\x02",
    "socks4": b"\x04\x01\x00\x50" + bytes([1, 2, 3, 4]) + b"\x00",
}
for name, data in SOCKS.items():
    put("client_socks5", name, bytes([255, 0]) + data)


# ------------------------------------------------------------ DNS
def dns_query(name, qtype, qid=0x1234, edns=False):
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 1 if edns else 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\x00" + struct.pack(">HH", qtype, 1)
    if edns:
        q += b"\x00" + struct.pack(">HHIH", 41, 1232, 0, 0)
    return q


DNS = {
    "a": dns_query("www.example.com", 1),
    "aaaa-edns": dns_query("ipv6.example.jp", 28, edns=True),
    "mx": dns_query("example.org", 15),
    "compressed": struct.pack(">HHHHHH", 1, 0x0100, 2, 0, 0, 0) + b"\x01a\x07example\x00\x00\x01\x00\x01"
    + b"\xc0\x0c\x00\x01\x00\x01",
    "idn": dns_query("xn--eckwd4c7c.xn--zckzah", 1),
}
for name, data in DNS.items():
    put("dns_message", name, data)

# ------------------------------------------------------------ TLS ClientHello
for host in ["www.example.com", "bad-sni.example", "a.b.c.example.jp"]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    conn = ctx.wrap_bio(incoming, outgoing, server_hostname=host)
    try:
        conn.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = outgoing.read()
    put("tls_client_hello", host, hello)
    if host == "www.example.com":
        # The same hello split over two records.
        body = hello[5:]
        cut = len(body) // 2
        split = (hello[:3] + struct.pack(">H", cut) + body[:cut]
                 + hello[:3] + struct.pack(">H", len(body) - cut) + body[cut:])
        put("tls_client_hello", "split-records", split)

# ------------------------------------------------------------ IPS rules
rules = (ROOT / "tests/data/ips/komugate-test.rules").read_text()
traffic = (b"POST\n/gate.php?id=1\nevil.zip\nsqlmap/1.7\nX-Bot-Id: 7\r\n\n"
           b"password=hunter2 MZ This program cannot be run in DOS mode")
put("ips_rules", "repository-rules", rules.encode() + b"\x00" + traffic)
for i, line in enumerate(l for l in rules.splitlines() if l and not l.startswith("#")):
    put("ips_rules", f"rule-{i:02}", line.encode() + b"\x00" + traffic)

# ------------------------------------------------------------ blocklists
FORMATS = {"domains": 0, "urls": 1, "expressions": 2, "hosts": 3, "plain": 4, "adblock": 5, "auto": 6}


def ut1_lines(category, kind, n=40):
    for base in [Path("/work/shared/blocklists/ut1"), ROOT / "examples/lists/ut1"]:
        p = base / category / kind
        if p.is_file():
            return "".join(p.read_text(errors="replace").splitlines(True)[:n])
    return ""


put("blocklist_import", "ut1-gambling-domains", bytes([0]) + ut1_lines("gambling", "domains").encode())
put("blocklist_import", "ut1-adult-urls", bytes([1]) + ut1_lines("adult", "urls").encode())
put("blocklist_import", "ut1-adult-expressions", bytes([0x82]) + ut1_lines("adult", "expressions", 5).encode())
put("blocklist_import", "hosts", bytes([3]) + b"# hosts\n127.0.0.1 localhost\n0.0.0.0 ads.example.com tracker.example\n::1 ip6-localhost\n0.0.0.0 xn--n3h.example # idn\n")
put("blocklist_import", "plain", bytes([4]) + b"# plain\n*.casino.example\n.poker.example\nexample.org/path/x\n[2001:db8::1]\n192.0.2.7\n\xe6\x97\xa5\xe6\x9c\xac.example\n")
put("blocklist_import", "adblock", bytes([5]) + b"[Adblock Plus 2.0]\n! comment\n||ads.example^\n@@||good.ads.example^\n||x.example^$third-party\n##.banner\n")
put("blocklist_import", "auto", bytes([6]) + b"||a.example^\n0.0.0.0 b.example\nc.example\nd.example/path\n")

# ------------------------------------------------------------ list archives
def tar_bytes(entries, gz):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as t:
        for name, data in entries:
            if data is None:
                info = tarfile.TarInfo(name)
                info.type = tarfile.DIRTYPE
                t.addfile(info)
            else:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


import gzip
tree = [
    ("blacklists/", None),
    ("blacklists/gambling/", None),
    ("blacklists/gambling/domains", ut1_lines("gambling", "domains", 10).encode()),
    ("blacklists/gambling/usage", b"black\n"),
    ("blacklists/adult/urls", ut1_lines("adult", "urls", 10).encode()),
    ("blacklists/adult/domains.0", b"a.example\nb.exa"),
    ("blacklists/adult/domains.1", b"mple\nc.example\n"),
    ("blacklists/phishing/domains.gz", gzip.compress(b"phish.example\n")),
]
put("list_archive", "ut1-tar-gz", tar_bytes(tree, True))
put("list_archive", "ut1-tar", tar_bytes(tree, False))
put("list_archive", "flat", tar_bytes([("malware/domains", b"evil.example\n")], True))

# ------------------------------------------------------------ policy, registry
put("policy_compile", "example-policy", (ROOT / "examples/policy.toml").read_bytes())
put("policy_compile", "small", b"""version = 1
[defaults]
action = "block"
[[site]]
name = "school"
cidrs = ["203.0.113.0/29"]
[[rule]]
name = "loopback"
hosts = ["127.0.0.1", "*.c4th.example"]
location = "offsite"
action = "allow"
tunnel = "inspect"
""")
put("registry_csv", "example-registry", (ROOT / "examples/registry.csv").read_bytes())
put("registry_csv", "quoted-bom", "\ufeffdevice_id,user,groups\r\nPC-1,\"Sato, A\",教職員;管理職\r\nPC-2,\"b \"\"q\"\"\",telework\r\n".encode())

# ------------------------------------------------------------ beacon tokens
def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


payload = json.dumps({"site": "site-a", "device": "device-1", "iat": 1_700_000_000,
                      "nonce": "00112233445566778899aabbccddeeff"}).encode()
put("beacon_assertion", "token", f"ksa1.{b64u(payload)}.{b64u(bytes(64))}")
put("beacon_assertion", "old-token", f"ksa1.{b64u(payload.replace(b'1700000000', b'1600000000'))}.{b64u(bytes(64))}")

# ------------------------------------------------------------ CASB bodies
def office(entries):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries:
            z.writestr(name, data)
    return buf.getvalue()


docx = office([("[Content_Types].xml", "<Types/>"),
               ("word/document.xml", "<w:document><w:body><w:p><w:r><w:t>マイナンバー 1234 5678 9018</w:t></w:r></w:p></w:body></w:document>")])
xlsx = office([("xl/sharedStrings.xml", "<sst><si><t>password</t></si><si><t>&amp;amp; 秘密</t></si></sst>"),
               ("xl/worksheets/sheet1.xml", "<worksheet><sheetData><row><c t=\"s\"><v>0</v></c></row></sheetData></worksheet>")])
put("casb_extract", "docx", b"application/vnd.openxmlformats-officedocument.wordprocessingml.document\n" + docx)
put("casb_extract", "xlsx", b"application/vnd.openxmlformats-officedocument.spreadsheetml.sheet\n" + xlsx)
boundary = b"----komugate"
multipart = (b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n"
             + b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a.docx\"\r\n"
             + b"Content-Type: application/octet-stream\r\n\r\n" + docx + b"\r\n--" + boundary + b"--\r\n")
put("casb_extract", "multipart", b"multipart/form-data; boundary=\"" + boundary + b"\"\n" + multipart)
put("casb_extract", "json", b"application/json\n" + json.dumps({"a": ["x", 1, {"b": "マイナンバー"}]}).encode())
put("casb_extract", "form", b"application/x-www-form-urlencoded\nq=%E3%81%82&x=1+2")

# ------------------------------------------------------------ mTLS listener
try:
    import h2.config
    import h2.connection

    def h2_bytes(requests):
        c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        c.initiate_connection()
        for i, (headers, body) in enumerate(requests):
            sid = 1 + 2 * i
            c.send_headers(sid, headers, end_stream=body is None)
            if body is not None:
                c.send_data(sid, body, end_stream=True)
        return c.data_to_send()

    H2 = {
        "connect": [([(":method", "CONNECT"), (":authority", "127.0.0.1:9")], b"\x16\x03\x01")],
        "connect-blocked": [([(":method", "CONNECT"), (":authority", "www.example.com:443")], None)],
        "get": [([(":method", "GET"), (":scheme", "http"), (":authority", "127.0.0.1:9"), (":path", "/a?b=c")], None)],
        "doh-post": [([(":method", "POST"), (":scheme", "https"), (":authority", "gw.example"), (":path", "/dns-query"),
                       ("content-type", "application/dns-message")], DNS["a"])],
        "doh-get": [([(":method", "GET"), (":scheme", "https"), (":authority", "gw.example"),
                      (":path", "/dns-query?dns=" + b64u(DNS["aaaa-edns"]))], None)],
        "pac": [([(":method", "GET"), (":scheme", "https"), (":authority", "gw.example"), (":path", "/proxy.pac")], None)],
        "upload": [([(":method", "POST"), (":scheme", "http"), (":authority", "127.0.0.1:9"), (":path", "/upload"),
                     ("content-type", "multipart/form-data; boundary=" + boundary.decode())], multipart)],
    }
    for name, reqs in H2.items():
        put("mtls_listener", f"h2-{name}", bytes([1, 255, 255]) + h2_bytes(reqs))
except ImportError:
    print("python h2 missing: no HTTP/2 seeds")
for name in ["get-keepalive", "connect", "chunked-trailers"]:
    put("mtls_listener", f"h1-{name}", bytes([0, 255, 255]) + HEADS[name])
put("mtls_listener", "h1-connect-loopback", bytes([0, 255, 255]) + b"CONNECT 127.0.0.1:9 HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n")

# ------------------------------------------------------------ CONNECT-UDP capsules
def varint(v):
    """RFC 9000 variable-length integer."""
    for prefix, length in ((0, 1), (1, 2), (2, 4), (3, 8)):
        if v < 1 << (8 * length - 2):
            return (v | prefix << (8 * length - 2)).to_bytes(length, "big")
    raise ValueError(v)


def capsule(ctype, value):
    return varint(ctype) + varint(len(value)) + value


def datagram(payload, context=0):
    return capsule(0, varint(context) + payload)


CAPSULES = {
    "datagrams": datagram(b"\x12\x34" + b"q" * 40) + datagram(b"") + datagram(b"x" * 1400),
    "unknown-type-between": datagram(b"a") + capsule(0x2F, b"skip me" * 10) + datagram(b"b"),
    "unknown-context": datagram(b"dropped", context=2) + datagram(b"kept"),
    "oversized": datagram(b"o" * 3000) + datagram(b"small"),
    "long-varints": bytes([0x40, 0x00, 0x80, 0, 0, 5, 0]) + b"abcd" + datagram(b"z"),
    "no-context": capsule(0, b""),
    "truncated": datagram(b"t" * 100)[:60],
}
for name, wire in CAPSULES.items():
    # limit 2048 (little-endian u16), then the chunking plan
    put("capsule_decoder", name, bytes([0, 8, 0, 6, 255, 1]) + wire)
print("seeds written to", CORPUS)
