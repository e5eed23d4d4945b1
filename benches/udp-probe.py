#!/usr/bin/env python3
"""UDP echo origin and prober for benches/tun-client.sh (UDP through
`komugate client --tun`, CONNECT-UDP, vs direct).

  udp-probe.py echo HOST PORT                      echo every datagram back
  udp-probe.py ping HOST PORT SIZE N               -> "p50_us p99_us lost"
  udp-probe.py rate HOST PORT SIZE WINDOW SECS     -> "echoed_per_s lost_pct"
  udp-probe.py hold HOST PORT SIZE N               N flows, one echo each;
                                                    prints "up", holds them
                                                    until stdin closes

ping: one datagram at a time, round trip of each. rate: WINDOW datagrams
in flight; each echo sends the next; 100 ms without any echo counts the
window lost and sends a fresh one. A flow's first datagram (the client
opens its CONNECT-UDP stream then) is not measured.
"""
import socket
import sys
import time


def echo(host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind((host, port))
    while True:
        data, peer = s.recvfrom(65535)
        s.sendto(data, peer)


def flow(dst, payload):
    """A connected socket whose first datagram was echoed (the flow is up)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect(dst)
    for _ in range(5):
        s.send(payload)
        if echoed(s, 2):
            return s
    sys.exit(f"no echo from {dst[0]}:{dst[1]} in 10 s")


def echoed(s, limit):
    s.settimeout(limit)
    try:
        s.recv(65535)
        return True
    except socket.timeout:
        return False


def ping(dst, payload, n):
    s, rtts = flow(dst, payload), []
    for _ in range(n):
        t = time.perf_counter()
        s.send(payload)
        if echoed(s, 1):
            rtts.append((time.perf_counter() - t) * 1e6)
    rtts.sort()
    p = lambda q: rtts[int((len(rtts) - 1) * q)]
    print(f"{p(0.5):.0f} {p(0.99):.0f} {n - len(rtts)}")


def rate(dst, payload, window, secs):
    s = flow(dst, payload)
    sent = got = lost = 0
    for _ in range(window):
        s.send(payload)
    sent, in_flight = window, window
    end = time.perf_counter() + secs
    while time.perf_counter() < end:
        if echoed(s, 0.1):
            got += 1
            s.send(payload)
            sent += 1
        else:
            lost += in_flight
            for _ in range(window):
                s.send(payload)
            sent += window
            in_flight = window
    print(f"{got / secs:.0f} {100.0 * lost / max(1, sent):.2f}")


def hold(dst, payload, n):
    flows = [flow(dst, payload) for _ in range(n)]
    print("up", flush=True)
    sys.stdin.read()
    del flows


def main():
    mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode == "echo":
        return echo(host, port)
    payload = b"k" * int(sys.argv[4])
    args = [float(a) if "." in a else int(a) for a in sys.argv[5:]]
    {"ping": ping, "rate": rate, "hold": hold}[mode]((host, port), payload, *args)


if __name__ == "__main__":
    main()
