#!/usr/bin/env python3
"""Replays vm-dns (nixos/tests/dns.nix) without VMs: the "internet" node's dnsmasq settings, rendered as
nixpkgs' dnsmasq module renders them, and the cache node's image-cache settings, both moved to 127.0.0.1
ports, then the test's DNS assertions with dig. Catches what a VM run would: an upstream that answers
REFUSED where the test expects NXDOMAIN, a forwarder that relays the wrong rcode.

Usage: vm-dns-replay.py NODES_JSON IMAGE_CACHE_BINARY   (needs dnsmasq and dig; exit 1 on failure)
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dnsmasq_conf(settings, port):
    """nixpkgs' dnsmasq module: `key` for true, nothing for false, one `key=value` line per list element."""
    settings = dict(settings, **{"listen-address": "127.0.0.1", "port": port})
    lines = []
    for key, value in settings.items():
        for v in value if isinstance(value, list) else [value]:
            if v is True:
                lines.append(key)
            elif v is not False and v is not None:
                lines.append(f"{key}={v}")
    return "\n".join(lines) + "\n"


def toml(settings):
    """The settings as TOML, written by the module's own renderer (nixos/render.nix)."""
    render = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "nixos", "render.nix")
    expr = f"(import {render}).toTOML (builtins.fromJSON {json.dumps(json.dumps(settings))})"
    out = subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", "--expr", expr],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def dig(port, *args):
    r = subprocess.run(["dig", "-p", str(port), "@127.0.0.1", "+time=3", "+tries=1", *args],
                       capture_output=True, text=True, timeout=20)
    return r.stdout


def main():
    nodes = json.load(open(sys.argv[1]))["dns.nix"]["nodes"]
    binary = sys.argv[2]
    work = tempfile.mkdtemp(prefix="ic-vm-dns-")
    up_port, dns_port, http_port = free_port(), free_port(), free_port()
    with open(os.path.join(work, "dnsmasq.conf"), "w") as f:
        f.write(dnsmasq_conf(nodes["internet"]["dnsmasq"], up_port))
    settings = json.loads(json.dumps(nodes["cache"]["imageCache"]))
    cache_addr = settings["nodes"]["self"]
    settings["state_dir"] = os.path.join(work, "state")
    settings.setdefault("http", {})["listen"] = [f"127.0.0.1:{http_port}"]
    settings["dns"].update(listen=[f"127.0.0.1:{dns_port}"], upstreams=[f"127.0.0.1:{up_port}"], allow=["127.0.0.0/8"])
    with open(os.path.join(work, "config.toml"), "w") as f:
        f.write(toml(settings))

    procs = [
        subprocess.Popen(["dnsmasq", "-k", "-C", os.path.join(work, "dnsmasq.conf"), "-x", os.path.join(work, "pid")],
                         stderr=subprocess.DEVNULL),
        subprocess.Popen([binary, "serve", "--config", os.path.join(work, "config.toml")],
                         stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "serve.log"), "w")),
    ]
    failures = []
    try:
        deadline = time.time() + 20
        while cache_addr not in dig(dns_port, "+short", "images.test", "A") and time.time() < deadline:
            time.sleep(0.2)
        checks = [
            ("images.test A is this node", cache_addr in dig(dns_port, "+short", "images.test", "A").split()),
            ("images.test A over TCP", cache_addr in dig(dns_port, "+short", "+tcp", "images.test", "A").split()),
            ("images.test MX is NOERROR", "status: NOERROR" in dig(dns_port, "images.test", "MX")),
            ("www.fwd.test is forwarded", "192.0.2.7" in dig(dns_port, "+short", "www.fwd.test", "A").split()),
            ("nosuch.example is NXDOMAIN", "status: NXDOMAIN" in dig(dns_port, "nosuch.example", "A")),
        ]
        failures = [name for name, ok in checks if not ok]
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=10)
    if failures:
        print("FAIL vm-dns replay (dnsmasq + image-cache on 127.0.0.1):", ", ".join(failures))
        print(open(os.path.join(work, "dnsmasq.conf")).read())
        sys.exit(1)
    print("PASS vm-dns replay: the internet node's dnsmasq and the cache node's settings answer as dns.nix asserts")


if __name__ == "__main__":
    main()
