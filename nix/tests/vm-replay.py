#!/usr/bin/env python3
"""Runs the testScript of each VM test (nixos/tests/*.nix) against real programs, without VMs.

Every node becomes a set of Linux namespaces (network, mount, UTS, IPC) on one bridge, the test's VLAN 1:
its addresses (the test's static IPv4 on eth1, the driver's 2001:db8:1::N, the driver's /etc/hosts), its
firewall (NixOS's default: drop what is not allowed, iptables), its own /etc (what NixOS and the node's
`environment.etc` put there, nothing of Debian's service configs), private /tmp, /run and /var. Its services
are the real programs: image-cache (the release binary, configured by nixos/render.nix as nixos/module.nix
configures it, with the unit's user, capabilities, state directory, credentials, notify socket and
read-only system), dnsmasq, nginx, docker-registry, containerd, and the test's own units; a netbooting node
(directBoot off, `-boot order=n`) is QEMU with its iPXE ROM on the same bridge. Every file the node
definitions build (certificates, OS images, kernels, initrds, scripts) is built for real by Nix from the
node definitions (nix/tests/vm-replay-pkgs.nix).

The testScript then runs with a stand-in for the NixOS test driver (nixpkgs' nixos/lib/test-driver, read at
the commits nix/tests/nixos-facts.json names): `succeed`/`fail`/`execute` run `timeout N bash -c 'set -euo
pipefail; CMD'` in the node, stdout captured, as the driver's backdoor shell does; `wait_until_succeeds`,
`wait_for_open_port` (`nc -z` in the node), `wait_for_unit` (the unit's state, from the replay's own
supervisor), `wait_for_console_text` (one console line per second, as the driver consumes them), `start`,
`wait_for_shutdown`, `start_all`, `subtest`, `retry`. `systemctl start|stop|restart|is-active UNIT` and
`journalctl -u UNIT` in a node act on the replay's supervisor; any other use of them, and any driver method
or global not listed, stops the test with "not replayed": the replay never pretends.

Then every assertion is mutated (nix/tests/vm-replay-mutate.py): each expected value changed, one at a time,
evaluated at the same point of the same run; a mutant that passes fails the replay.

Usage: vm-replay.py [--dir DIR] [TEST.nix ...]  (root; every test of nixos/tests by default; exit 1 on any
failure). Needs VM_REPLAY_KERNEL (a Debian kernel package unpacked: boot/, lib/modules/) and
VM_REPLAY_CONTAINERD (a folder with containerd 2.x, ctr and containerd-shim-runc-v2); tests/nix.sh sets both.
  VM_REPLAY_WORK (default /srv/ic-vm-replay) is the work folder, VM_REPLAY_KEEP=1 keeps it after each test;
  VM_REPLAY_HOLD=SECONDS keeps the nodes running
  that long after the script (to enter one with nsenter); VM_REPLAY_LATE=SECONDS (default 20) is how late a
  unit nobody waits for comes up; VM_REPLAY_ACCEL=kvm runs the netbooting VM under KVM (default tcg).
"""

import json
import os
import queue
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import importlib  # noqa: E402

mutate = importlib.import_module("vm-replay-mutate")

VLAN = 1
# What every NixOS node has on its PATH (nixos/modules/config/system-path.nix: corePackages and
# defaultPackages; systemd, iproute2 and kmod from their modules), as the Debian packages that provide the
# same commands. `systemctl` and `journalctl` are the replay's own (below).
CORE_PACKAGES = ["acl", "attr", "bash", "bzip2", "coreutils", "cpio", "curl", "diffutils", "findutils", "gawk",
                 "libc-bin", "grep", "patch", "sed", "tar", "gzip", "xz-utils", "less", "libcap2-bin",
                 "ncurses-bin", "netcat-openbsd", "whois", "procps", "login", "time", "util-linux", "debianutils",
                 "zstd", "perl-base", "rsync", "strace", "iproute2", "kmod", "hostname"]
# Commands of a package that NixOS would not have under that name (Debian's wrappers and extras).
SKIP_COMMANDS = {"which.debianutils", "run-parts", "savelog", "installkernel", "ischroot", "tempfile", "add-shell",
                 "remove-shell", "update-shells"}


class NotReplayed(Exception):
    """The test asked for something the replay cannot mean the way NixOS means it."""


class AssertionFailed(Exception):
    """What the driver's RequestedAssertionFailed says: a command or condition did not hold."""


def log(msg):
    print(f"  {msg}", flush=True)


def run(*args, check=True, **kw):
    return subprocess.run([str(a) for a in args], check=check, **kw)


def debian_commands(packages):
    out = {}
    for pkg in packages:
        r = subprocess.run(["dpkg", "-L", pkg], capture_output=True, text=True)
        for line in r.stdout.splitlines():
            if re.fullmatch(r"(/usr)?/s?bin/[^/]+", line) and os.path.exists(line):
                name = os.path.basename(line)
                if name not in SKIP_COMMANDS:
                    out.setdefault(name, os.path.realpath(line))
    out.setdefault("nc", os.path.realpath(shutil.which("nc") or "/bin/false"))
    out.setdefault("awk", os.path.realpath(shutil.which("gawk") or shutil.which("awk") or "/bin/false"))
    return out


# ---------------------------------------------------------------------------------------------------------
# Units: the replay's supervisor, with the states the driver reads (systemctl show -p ActiveState).


class Unit:
    """One service of a node. `kind`: notify (active after READY=1 on its NOTIFY_SOCKET), listen (active
    once the process listens: Type=dbus, whose bus name dnsmasq takes after binding) or simple (active at
    exec, as systemd's Type=simple)."""

    def __init__(self, node, name, argv, kind="simple", env=None, prefix=(), restart=False, restart_sec=0.1,
                 watchdog=None, setup=None):
        self.node, self.name, self.argv, self.kind = node, name, argv, kind
        self.env, self.prefix, self.restart, self.restart_sec = env or {}, list(prefix), restart, restart_sec
        self.watchdog, self.setup = watchdog, setup
        self.state = "inactive"
        self.proc = None
        self.stopping = False
        self.starts = []
        self.log_path = node.dir / f"unit-{name}.log"
        self.lock = threading.RLock()
        self.last_ping = 0.0
        self.wanted = False

    def start(self, explicit=False):
        """Boot (a timer, a wait) starts a unit once; `systemctl start` starts it again after it ended."""
        with self.lock:
            if self.state in ("active", "activating") or (self.proc is not None and not explicit):
                return
            self.stopping = False
            self._spawn()

    def _spawn(self):
        now = time.monotonic()
        self.starts = [t for t in self.starts if now - t < 10] + [now]
        if len(self.starts) > 5:  # systemd's default start limit: 5 starts in 10 s
            self.state = "failed"
            self._log(f"start request repeated too quickly for {self.name}.service")
            return
        self.state = "activating"
        if self.setup:
            self.setup(self)
        env = {"PATH": self.node.path, "LANG": "C.UTF-8"}
        env.update(self.env)
        notify = None
        if self.kind == "notify":
            notify = self.node.dir / f"notify-{self.name}.sock"
            notify.unlink(missing_ok=True)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.bind(str(notify))
            os.chmod(notify, 0o777)
            env["NOTIFY_SOCKET"] = str(notify)
            if self.watchdog:
                env["WATCHDOG_USEC"] = str(int(self.watchdog * 1e6))
        out = open(self.log_path, "ab")
        cmd = self.node.enter() + self.prefix + ["env", "-i"] + [f"{k}={v}" for k, v in env.items()] + self.argv
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        proc = self.proc
        if self.kind == "simple":
            self.state = "active"
        if notify:
            threading.Thread(target=self._notify, args=(sock, proc), daemon=True).start()
        if self.kind == "listen":
            threading.Thread(target=self._listening, args=(proc,), daemon=True).start()
        threading.Thread(target=self._wait, args=(proc,), daemon=True).start()

    def _log(self, msg):
        with open(self.log_path, "a") as f:
            f.write(f"[vm-replay] {msg}\n")

    def _notify(self, sock, proc):
        sock.settimeout(1)
        while proc.poll() is None:
            try:
                data = sock.recv(4096).decode(errors="replace")
            except socket.timeout:
                if self.watchdog and self.state == "active" and time.monotonic() - self.last_ping > self.watchdog:
                    self._log("watchdog timeout: killing with SIGABRT")
                    proc.send_signal(signal.SIGABRT)
                continue
            fields = dict(line.split("=", 1) for line in data.splitlines() if "=" in line)
            if fields.get("WATCHDOG") == "1" or fields.get("READY") == "1":
                self.last_ping = time.monotonic()
            if fields.get("READY") == "1" and proc is self.proc and self.state == "activating":
                self.state = "active"
        sock.close()

    def _listening(self, proc):
        while proc.poll() is None and self.state == "activating":
            r = subprocess.run(self.node.enter() + ["ss", "-Hlnp"], capture_output=True, text=True)
            if f"pid={proc.pid}," in r.stdout:
                self.state = "active"
                return
            time.sleep(0.1)

    def _wait(self, proc):
        rc = proc.wait()
        with self.lock:
            if proc is not self.proc:
                return
            if self.stopping:
                self.state = "inactive"
                return
            self._log(f"main process exited, status {rc}")
            if self.restart and rc != 0:
                self.state = "activating"
                time.sleep(self.restart_sec)
                if not self.stopping:
                    self._spawn()
            else:
                self.state = "failed" if rc != 0 else "inactive"

    def stop(self):
        with self.lock:
            self.stopping = True
            proc = self.proc
        if proc and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.state = "inactive"

    def kill(self):
        self.stopping = True
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# ---------------------------------------------------------------------------------------------------------
# Nodes


class Node:
    def __init__(self, replay, name, facts, number):
        self.replay, self.name, self.facts, self.number = replay, name, facts, number
        self.dir = replay.work / "nodes" / name
        self.dir.mkdir(parents=True)
        self.holder = None
        self.units = {}
        self.timers = []
        self.booted = False
        addrs = facts.get("addresses")
        self.ipv4 = addrs[0]["address"] if addrs else f"192.168.{VLAN}.{number}"
        self.ipv6 = f"2001:db8:{VLAN}::{number}"
        self.path = ""

    def __repr__(self):
        return f"<Machine '{self.name}'>"

    # --- namespaces, network, files -----------------------------------------------------------------------
    def enter(self):
        return ["nsenter", "-t", str(self.holder.pid), "-n", "-m", "-u", "-i", "--"]

    def boot(self):
        if self.booted:
            return
        self._files()
        etc = self.dir / "etc"
        script = f"""set -e
mount --make-rprivate /
mount -t tmpfs -o mode=1777 tmp /tmp
mount -t tmpfs -o mode=0755 run /run
mount -t tmpfs -o mode=0755 var /var
mkdir -p /var/lib /var/log /var/cache /var/empty /var/tmp /run/wrappers/bin && chmod 1777 /var/tmp && ln -s /run /var/run
mount -t tmpfs -o mode=0700 root /root
mount --bind {etc} /etc
hostname {self.name}
ip link set lo up
exec sleep infinity
"""
        self.holder = subprocess.Popen(["unshare", "--net", "--mount", "--uts", "--ipc", "--propagation", "private",
                                        "bash", "-c", script], start_new_session=True,
                                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                       stderr=open(self.dir / "holder.log", "ab"))
        for _ in range(100):
            r = subprocess.run(self.enter() + ["hostname"], capture_output=True, text=True)
            if r.stdout.strip() == self.name:
                break
            time.sleep(0.05)
        self.replay.wire(self)
        self._disks()
        self._firewall()
        self._units()
        self.booted = True
        # A VM boots at its own pace: a unit the script does not wait for comes up late (VM_REPLAY_LATE
        # seconds after start), so a test that uses a service it never waited for fails here as it would
        # on a slow CI machine. Waiting for the unit (or for a port of the node) starts it at once.
        for unit in self.units.values():
            if unit.wanted:
                timer = threading.Timer(self.replay.late, unit.start)
                timer.daemon = True
                timer.start()
                self.timers.append(timer)

    def _files(self):
        f = self.facts
        etc = self.dir / "etc"
        etc.mkdir()
        for name in ["passwd", "group", "shadow", "gshadow", "nsswitch.conf", "protocols", "services", "ld.so.cache",
                     "ld.so.conf", "localtime", "os-release", "machine-id", "mime.types"]:
            if os.path.exists(f"/etc/{name}"):
                shutil.copy2(f"/etc/{name}", etc / name, follow_symlinks=True)
        for d in ["ld.so.conf.d", "alternatives", "ssl", "ca-certificates"]:
            if os.path.isdir(f"/etc/{d}"):
                shutil.copytree(f"/etc/{d}", etc / d, symlinks=True)
        # networking.hosts / extraHosts as the test driver sets them (nixos/lib/testing/network.nix).
        hosts = ["127.0.0.1 localhost", "::1 localhost", f"127.0.0.2 {self.name}"]
        for n in self.replay.node_names:
            hosts += [f"192.168.{VLAN}.{self.replay.numbers[n]} {n}", f"2001:db8:{VLAN}::{self.replay.numbers[n]} {n}"]
        (etc / "hosts").write_text("\n".join(hosts) + "\n")
        ns = list(f["nameservers"])
        if f["dnsmasqOn"] and f["dnsmasqResolveLocal"]:
            ns = ["127.0.0.1"] + ns
        (etc / "resolv.conf").write_text("".join(f"nameserver {n}\n" for n in ns) + "options edns0\n")
        for name, e in f["etc"].items():
            p = etc / name
            p.parent.mkdir(parents=True, exist_ok=True)
            if e["source"]:
                p.symlink_to(e["source"])
            else:
                p.write_text(e["text"] or "")
        # PATH: the system path (core packages), the node's packages, the modules' packages, the shims.
        bin_ = self.dir / "sw" / "bin"
        bin_.mkdir(parents=True)
        links = dict(self.replay.core)
        for pkg in f["systemPackages"]:
            for c in os.listdir(f"{pkg}/bin") if os.path.isdir(f"{pkg}/bin") else []:
                links[c] = f"{pkg}/bin/{c}"
        if f["imageCacheUnit"]:
            links["image-cache"] = str(self.replay.binary)
        if f["containerd"]:
            for c in ["containerd", "ctr", "containerd-shim-runc-v2"]:
                links[c] = self.replay.containerd[c]
            links["runc"] = os.path.realpath(shutil.which("runc") or "/bin/false")
        for on, command in ((f["dnsmasqOn"], "dnsmasq"), (f["nginx"], "nginx"), (f["dockerRegistry"], "docker-registry")):
            if on:
                links[command] = os.path.realpath(shutil.which(command) or f"/usr/sbin/{command}")
        for c, target in links.items():
            (bin_ / c).symlink_to(target)
        for shim in ["systemctl", "journalctl"]:
            (bin_ / shim).symlink_to(self.replay.work / "shim")
        self.path = f"/run/wrappers/bin:{bin_}"

    def _disks(self):
        """virtualisation.emptyDiskImages as loop devices (the VM's /dev/vdb, /dev/vdc, …) and the node's
        fileSystems on them, formatted when autoFormat asks, mounted before any unit starts (local-fs)."""
        self.loops = []
        devices = {}
        for i, mib in enumerate(self.facts["virtualisation"]["emptyDiskImages"]):
            image = self.dir / f"disk{i}.img"
            with open(image, "wb") as f:
                f.truncate(mib << 20)
            loop = subprocess.run(["losetup", "--find", "--show", str(image)], capture_output=True, text=True,
                                  check=True).stdout.strip()
            self.loops.append(loop)
            devices[f"/dev/vd{chr(ord('b') + i)}"] = loop
        for mountpoint, fs in sorted(self.facts["fileSystems"].items()):
            dev = devices.get(fs["device"])
            if dev is None:
                raise NotReplayed(f"{self.name}: fileSystems.{mountpoint}: device {fs['device']} is not an empty disk "
                                  "image of this node (virtualisation.emptyDiskImages)")
            if fs["autoFormat"]:
                run(f"mkfs.{fs['fsType']}", "-q", dev, stdout=subprocess.DEVNULL)
            run(*self.enter(), "sh", "-c", f"mkdir -p {mountpoint} && mount {dev} {mountpoint}")

    def _firewall(self):
        fw = self.facts["firewall"]
        if not fw["enable"]:
            return
        for tool, icmp in (("iptables", ["-p", "icmp", "--icmp-type", "echo-request"]), ("ip6tables", ["-p", "ipv6-icmp"])):
            ipt = ["nsenter", "-t", str(self.holder.pid), "-n", tool]
            run(*ipt, "-A", "INPUT", "-i", "lo", "-j", "ACCEPT")
            run(*ipt, "-A", "INPUT", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT")
            run(*ipt, "-A", "INPUT", *icmp, "-j", "ACCEPT")
            for p in sorted(set(fw["tcp"])):
                run(*ipt, "-A", "INPUT", "-p", "tcp", "--dport", p, "-j", "ACCEPT")
            for p in sorted(set(fw["udp"])):
                run(*ipt, "-A", "INPUT", "-p", "udp", "--dport", p, "-j", "ACCEPT")
            run(*ipt, "-P", "INPUT", "DROP")

    def _units(self):
        if self.facts["assertions"]:
            raise AssertionFailed(f"{self.name}: the system would not build: {'; '.join(self.facts['assertions'])}")
        services = self.replay.services
        for make in (services.image_cache, services.dnsmasq, services.nginx, services.docker_registry,
                     services.containerd, services.custom):
            for unit in make(self):
                unit.wanted = True
                self.units[unit.name] = unit

    def unit(self, name):
        name = name.removesuffix(".service")
        if name not in self.units:
            raise NotReplayed(f"{self.name}: no unit {name}.service in the replay (it runs {sorted(self.units)})")
        return self.units[name]

    def shutdown_all(self):
        for timer in self.timers:
            timer.cancel()
        for unit in self.units.values():
            unit.kill()
        if self.holder and self.holder.poll() is None:
            os.killpg(self.holder.pid, signal.SIGKILL)
            self.holder.wait()
        for loop in getattr(self, "loops", []):
            run("losetup", "-d", loop, check=False)

    # --- the driver's Machine API --------------------------------------------------------------------------
    def start(self, allow_reboot=False):
        self.boot()

    def is_up(self):
        return self.booted

    def execute(self, command, check_return=True, check_output=True, timeout=900):
        self.boot()
        self.replay.check_refusals()
        env = ["env", "-i", f"PATH={self.path}", "HOME=/root", "USER=root", "PAGER=", "TERM=dumb",
               f"VM_REPLAY_NODE={self.name}", f"VM_REPLAY_CONTROL={self.replay.work / 'control.sock'}"]
        inner = f"set -euo pipefail; {command}"
        cmd = self.enter() + env + (["timeout", str(timeout)] if timeout is not None else []) + \
            ["bash", "-c", f"cd /tmp; exec bash -c {shlex.quote(inner)}"]
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=self.replay.stderr, stdin=subprocess.DEVNULL)
        self.replay.check_refusals()
        return r.returncode, r.stdout.decode(errors="replace")

    def succeed(self, *commands, timeout=None):
        output = ""
        for command in commands:
            status, out = self.execute(command, timeout=timeout)
            if status != 0:
                raise AssertionFailed(f"{self.name}: command `{command}` failed (exit code {status})")
            output += out
        return output

    def fail(self, *commands, timeout=None):
        output = ""
        for command in commands:
            status, out = self.execute(command, timeout=timeout)
            if status == 0:
                raise AssertionFailed(f"{self.name}: command `{command}` unexpectedly succeeded")
            output += out
        return output

    def wait_until_succeeds(self, command, timeout=900):
        return self._wait_until(command, timeout, succeeds=True)

    def wait_until_fails(self, command, timeout=900):
        return self._wait_until(command, timeout, succeeds=False)

    def _wait_until(self, command, timeout, succeeds):
        output = ""

        def check(_last):
            nonlocal output
            status, output = self.execute(command, timeout=timeout)
            return (status == 0) == succeeds

        what = "success" if succeeds else "failure"
        retry(check, timeout, f"{self.name}: waiting for {what}: {command}")
        return output

    def wait_for_open_port(self, port, addr="localhost", timeout=900):
        self.boot()
        for unit in self.units.values():
            unit.start()
        retry(lambda _: self.execute(f"nc -z {addr} {port}")[0] == 0, timeout,
              f"{self.name}: waiting for TCP port {port} on {addr}")

    def wait_for_closed_port(self, port, addr="localhost", timeout=900):
        retry(lambda _: self.execute(f"nc -z {addr} {port}")[0] != 0, timeout,
              f"{self.name}: waiting for TCP port {port} on {addr} to be closed")

    def wait_for_file(self, filename, timeout=900):
        retry(lambda _: self.execute(f"test -e {filename}")[0] == 0, timeout, f"{self.name}: waiting for {filename}")

    def wait_for_unit(self, unit, user=None, timeout=900):
        if user is not None:
            raise NotReplayed("wait_for_unit(user=…): user units are not replayed")
        self.boot()
        u = self.unit(unit)
        u.start()

        def active(_last):
            if u.state == "failed":
                raise AssertionFailed(f'{self.name}: unit "{unit}" reached state "failed"')
            if u.state == "inactive" and not u.wanted:
                raise AssertionFailed(f'{self.name}: unit "{unit}" is inactive and there are no pending jobs')
            return u.state == "active"

        retry(active, timeout, f"{self.name}: waiting for unit {unit}")

    def require_unit_state(self, unit, require_state="active"):
        state = self.unit(unit).state
        if state != require_state:
            raise AssertionFailed(f"Expected unit '{unit}' to be in state '{require_state}' but it is in state '{state}'")

    def start_job(self, jobname, user=None):
        return self.execute(f"systemctl start {jobname}")

    def stop_job(self, jobname, user=None):
        return self.execute(f"systemctl stop {jobname}")

    def sleep(self, secs):
        self.succeed(f"sleep {secs}")

    def wait_for_shutdown(self):
        raise NotReplayed(f"{self.name}.wait_for_shutdown(): a namespace node does not power off")

    def shutdown(self):
        self.shutdown_all()
        self.booted = False

    def crash(self):
        self.shutdown()

    def log(self, msg):
        log(f"{self.name}: {msg}")

    def nested(self, msg, attrs={}):
        return Nested(msg)

    def __getattr__(self, attr):
        if attr.startswith("_"):
            raise AttributeError(attr)
        raise NotReplayed(f"{self.name}.{attr}(): not a driver method the replay carries out")


class QemuNode(Node):
    """A netbooting node: QEMU, its only NIC on the VLAN bridge, booting from its option ROM (iPXE)."""

    def boot(self):
        raise NotReplayed(f"{self.name}: commands in a netbooting VM are not replayed (it has no backdoor shell)")

    def start(self, allow_reboot=False):
        if self.booted:
            return
        tap = f"vrt{self.replay.tag}{self.number}"
        sw = self.replay.switch
        run("ip", "-n", sw, "tuntap", "add", "dev", tap, "mode", "tap")
        run("ip", "-n", sw, "link", "set", tap, "master", "br1")
        run("ip", "-n", sw, "link", "set", tap, "up")
        # TCG unless asked: where /dev/kvm exists here it does not run guests (its emulation fails).
        accel = os.environ.get("VM_REPLAY_ACCEL", "tcg")
        v = self.facts["virtualisation"]
        mac = f"52:54:00:12:{VLAN:02x}:{self.number:02x}"
        cmd = ["ip", "netns", "exec", sw, "qemu-system-x86_64", "-accel", accel, "-name", self.name,
               "-m", str(v["memorySize"]), "-smp", "1", "-cpu", "max" if accel == "tcg" else "host",
               "-device", "virtio-rng-pci", "-netdev", f"tap,id=vlan{VLAN},ifname={tap},script=no,downscript=no",
               "-device", f"virtio-net-pci,netdev=vlan{VLAN},mac={mac}", "-display", "none", "-vga", "none",
               "-serial", "stdio", "-monitor", "none"] + v["qemuOptions"] + ([] if allow_reboot else ["-no-reboot"])
        self.tap = tap
        self.qemu = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                     stderr=open(self.dir / "qemu.log", "ab"))
        self.last_lines = queue.Queue()
        self.console = open(self.dir / "console.log", "a")

        def serial():
            for raw in self.qemu.stdout:
                line = raw.decode(errors="ignore").replace("\r", "").rstrip()
                self.console.write(line + "\n")
                self.console.flush()
                self.last_lines.put(line)

        threading.Thread(target=serial, daemon=True).start()
        self.booted = True

    def wait_for_console_text(self, regex, timeout=None):
        # The driver takes one queued line per try and tries once a second (retry): a console that prints
        # many lines before the one awaited is read at one line per second.
        seen = self.consumed = []

        def matches(_last):
            try:
                seen.append(self.last_lines.get(block=False))
            except queue.Empty:
                pass
            return re.search(regex, "".join(seen)) is not None

        if timeout is not None:
            retry(matches, timeout, f"{self.name}: waiting for {regex} to appear on console")
        else:
            while not matches(False):
                pass

    def wait_for_shutdown(self):
        if not self.booted:
            return
        self.qemu.wait()
        self.booted = False
        run("ip", "-n", self.replay.switch, "link", "del", self.tap, check=False)

    def shutdown_all(self):
        if getattr(self, "qemu", None) and self.qemu.poll() is None:
            self.qemu.kill()
            self.qemu.wait()


class Nested:
    def __init__(self, msg):
        self.msg = msg

    def __enter__(self):
        log(self.msg)

    def __exit__(self, *_):
        return False


def retry(fn, timeout_seconds=900, what="condition"):
    start = time.monotonic()
    while time.monotonic() - start < timeout_seconds:
        if fn(False):
            return
        time.sleep(1)
    if not fn(True):
        raise AssertionFailed(f"{what}: timed out after {time.monotonic() - start:.0f} s (timeout={timeout_seconds})")


# ---------------------------------------------------------------------------------------------------------
# The services of a node: nixpkgs' modules, replayed


class Services:
    def __init__(self, replay):
        self.replay = replay

    def image_cache(self, node):
        u = node.facts["imageCacheUnit"]
        if not u:
            return []
        sc = u["serviceConfig"]
        conf = node.dir / "etc" / "image-cache" / "config.toml"
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(u["config"])
        uid = 61000 + node.number
        cred_dir = f"/run/credentials/{'image-cache'}.service"
        state = f"/var/lib/private/{sc['StateDirectory']}"

        def setup(unit):
            # DynamicUser, StateDirectory, LoadCredential, RuntimeDirectory as systemd sets them up.
            creds = " ".join(shlex.quote(c) for c in u["credentials"])
            script = f"""set -e
mkdir -p /var/lib/private && chmod 0700 /var/lib/private
mkdir -p {state} && chown {uid}:{uid} {state} && chmod {sc['StateDirectoryMode']} {state}
ln -sfn private/{sc['StateDirectory']} /var/lib/{sc['StateDirectory']}
rm -rf {cred_dir} && mkdir -p {cred_dir}
for c in {creds}; do cp "${{c#*:}}" "{cred_dir}/${{c%%:*}}"; done
chown -R {uid}:{uid} {cred_dir} && chmod 0500 {cred_dir} && chmod 0400 {cred_dir}/* 2>/dev/null || true
"""
            run(*node.enter(), "bash", "-c", script)

        exe, *args = shlex.split(sc["ExecStart"])
        argv = [str(self.replay.binary)] + args
        caps = ",".join("+" + c.lower().removeprefix("cap_") for c in sc["AmbientCapabilities"])
        # ProtectSystem=strict, PrivateTmp: a mount namespace of the unit's own, read-only but for its state.
        # DynamicUser: the unit sees /var/lib/private as 0755 holding only its own directory.
        name = sc["StateDirectory"]
        protect = (f"set -e; mount --make-rprivate /; mount -t tmpfs -o mode=1777 tmp /tmp; "
                   f"mount -t tmpfs -o mode=1777 vartmp /var/tmp; mkdir -p /run/.unit-state; "
                   f"mount --bind {state} /run/.unit-state; mount -t tmpfs -o mode=0755 private /var/lib/private; "
                   f"mkdir /var/lib/private/{name}; mount --move /run/.unit-state /var/lib/private/{name}; "
                   f"for m in / /etc /var /run /root; do mount -o remount,bind,ro $m; done; exec \"$@\"")
        prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-c", protect, "unit",
                  "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", f"--inh-caps={caps}",
                  f"--ambient-caps={caps}", f"--bounding-set=-all,{caps}", "--no-new-privs",
                  "sh", "-c", f"umask {sc['UMask']} && cd {sc['WorkingDirectory']} && exec \"$@\"", "unit"]
        env = {"CREDENTIALS_DIRECTORY": cred_dir} if u["credentials"] else {}
        watchdog = float(sc["WatchdogSec"].removesuffix("s"))
        return [Unit(node, "image-cache", argv, kind="notify", env=env, prefix=prefix, setup=setup,
                     restart=sc["Restart"] == "on-failure", restart_sec=float(sc["RestartSec"].removesuffix("s")),
                     watchdog=watchdog)]

    def dnsmasq(self, node):
        f = node.facts
        if not f["dnsmasqOn"]:
            return []
        # nixos/modules/services/networking/dnsmasq.nix: `settings` one `key=value` line per value (`key` for
        # true), the lease file in the state directory; `dnsmasq -k --user=dnsmasq -C FILE`, Type=dbus.
        settings = dict(f["dnsmasq"] or {})
        settings.setdefault("dhcp-leasefile", "/var/lib/dnsmasq/dnsmasq.leases")
        lines = []
        for key, value in settings.items():
            for v in value if isinstance(value, list) else [value]:
                if v is True:
                    lines.append(key)
                elif v is not False and v is not None:
                    lines.append(f"{key}={v}")
        conf = node.dir / "dnsmasq.conf"
        conf.write_text("\n".join(lines) + "\n")

        def setup(unit):
            run(*node.enter(), "mkdir", "-p", "/var/lib/dnsmasq")

        return [Unit(node, "dnsmasq", ["dnsmasq", "-k", "--user=root", "--pid-file=", "-C", str(conf)],
                     kind="listen", setup=setup)]

    def nginx(self, node):
        cfg = node.facts["nginx"]
        if not cfg:
            return []
        # nixos/modules/services/web-servers/nginx/default.nix: each virtual host listens on 0.0.0.0 and [::],
        # port 80 unless onlySSL and 443 ssl with addSSL/onlySSL/forceSSL; error_log stderr; daemon off;
        # LogsDirectory /var/log/nginx; Type=simple.
        servers = []
        for name, h in sorted(cfg["virtualHosts"].items()):
            only = h.get("onlySSL", False)
            ssl = only or h.get("addSSL", False) or h.get("forceSSL", False)
            listen = [] if only else ["0.0.0.0:80", "[::]:80"]
            listen += ["0.0.0.0:443 ssl", "[::]:443 ssl"] if ssl else []
            body = "".join(f"listen {l};\n" for l in listen)
            body += f"server_name {h.get('serverName') or name} {' '.join(h.get('serverAliases', []))};\n"
            if h.get("root"):
                body += f"root {h['root']};\n"
            if ssl:
                body += f"ssl_certificate {h['sslCertificate']};\nssl_certificate_key {h['sslCertificateKey']};\n"
            servers.append("server {\n" + body + "}\n")
        conf = node.dir / "nginx.conf"
        shutil.copy("/etc/nginx/mime.types", node.dir / "mime.types")  # what ${nginx}/conf/mime.types holds
        conf.write_text(f"""pid /run/nginx/nginx.pid;
error_log stderr;
daemon off;
user root root;
events {{ }}
http {{
  include {conf.parent / "mime.types"};
  types_hash_max_size 4096;
  default_type application/octet-stream;
  access_log /var/log/nginx/access.log;
  ssl_protocols TLSv1.2 TLSv1.3;
  client_max_body_size 10m;
  server_tokens off;
  {''.join(servers)}
  {cfg['appendHttpConfig']}
}}
""")

        def setup(unit):
            run(*node.enter(), "mkdir", "-p", "/var/log/nginx", "/run/nginx", "/var/cache/nginx", "/var/lib/nginx")
            r = subprocess.run(node.enter() + ["nginx", "-t", "-c", str(conf)], capture_output=True, text=True)
            if r.returncode != 0:
                unit._log(r.stderr)

        return [Unit(node, "nginx", ["nginx", "-c", str(conf), "-e", "stderr"], setup=setup)]

    def docker_registry(self, node):
        cfg = node.facts["dockerRegistry"]
        if not cfg:
            return []
        # nixos/modules/services/misc/docker-registry.nix: storage in /var/lib/docker-registry, `registry
        # serve FILE`, Type=simple.
        conf = node.dir / "docker-registry.yml"
        conf.write_text(json.dumps({
            "version": "0.1", "log": {"fields": {"service": "registry"}},
            "storage": {"cache": {"blobdescriptor": "inmemory"},
                        "filesystem": {"rootdirectory": "/var/lib/docker-registry"}, "delete": {"enabled": False}},
            "http": {"addr": f"{cfg['listenAddress']}:{cfg['port']}", "headers": {"X-Content-Type-Options": ["nosniff"]}},
        }))

        def setup(unit):
            run(*node.enter(), "mkdir", "-p", "/var/lib/docker-registry")

        return [Unit(node, "docker-registry", [shutil.which("docker-registry"), "serve", str(conf)], setup=setup)]

    def containerd(self, node):
        cfg = node.facts["containerd"]
        if not cfg:
            return []
        # nixos/modules/virtualisation/containerd.nix: the settings (with its CNI default) in a file of the
        # store, `containerd --config FILE`, Type=notify. No /etc/containerd/config.toml.
        settings = merge({"version": 2, "plugins": {"io.containerd.grpc.v1.cri": {"cni": {"bin_dir": "/opt/cni/bin"}}}},
                         cfg["settings"])
        conf = node.dir / "containerd.toml"
        conf.write_text(self.replay.toml(settings))
        return [Unit(node, "containerd", ["containerd", "--config", str(conf)], kind="notify")]

    def custom(self, node):
        units = []
        for name, u in node.facts["units"].items():
            if "multi-user.target" not in u["wantedBy"]:
                continue
            if u["execStart"]:
                argv = shlex.split(u["execStart"])
            elif u["script"]:
                script = node.dir / f"{name}-script"
                script.write_text("#!/bin/bash\nset -e\n" + u["script"])
                script.chmod(0o755)
                argv = [str(script)]
            else:
                raise NotReplayed(f"{node.name}: unit {name} has neither ExecStart nor script")
            units.append(Unit(node, name, argv))
        return units


def merge(a, b):
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# ---------------------------------------------------------------------------------------------------------
# One test


class Replay:
    def __init__(self, test, facts, script, binary, containerd, work, tag):
        self.test, self.facts, self.binary, self.containerd, self.work, self.tag = test, facts, binary, containerd, work, tag
        self.node_names = sorted(facts)
        self.numbers = {n: i + 1 for i, n in enumerate(self.node_names)}
        self.script = script
        self.switch = f"icvr-{tag}"
        self.stderr = open(work / "commands.stderr", "ab")
        self.late = float(os.environ.get("VM_REPLAY_LATE", "20"))
        self.refusals = work / "refusals"
        self.core = debian_commands(CORE_PACKAGES)
        self.services = Services(self)
        self.mutations = mutate.Mutations(self)
        self.nodes = {}
        for n in self.node_names:
            f = facts[n]
            netboot = "order=n" in " ".join(f["virtualisation"]["qemuOptions"])
            self.nodes[n] = (QemuNode if netboot else Node)(self, n, f, self.numbers[n])
        self._shim()

    def toml(self, settings):
        expr = (f"(import {REPO}/nixos/render.nix).toTOML (builtins.fromJSON {json.dumps(json.dumps(settings))})")
        out = subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", "--expr", expr],
                             capture_output=True, text=True, check=True)
        return json.loads(out.stdout)

    def _shim(self):
        shim = self.work / "shim"
        shim.write_text(SHIM)
        shim.chmod(0o755)
        self.refusals.write_text("")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(self.work / "control.sock"))
        os.chmod(self.work / "control.sock", 0o777)
        sock.listen(16)
        self.control = sock
        threading.Thread(target=self._serve_control, daemon=True).start()

    def _serve_control(self):
        while True:
            try:
                conn, _ = self.control.accept()
            except OSError:
                return
            with conn:
                req = json.loads(conn.makefile().readline())
                node = self.nodes[req["node"]]
                try:
                    rc, out = self._systemctl(node, req["verb"], req["units"])
                except NotReplayed as e:
                    rc, out = 2, str(e)
                conn.sendall(json.dumps({"rc": rc, "out": out}).encode() + b"\n")

    def _systemctl(self, node, verb, units):
        if verb == "log":
            return 0, "".join(node.unit(u).log_path.read_text(errors="replace") for u in units)
        rc = 0
        for name in units:
            u = node.unit(name)
            if verb == "start":
                u.start(explicit=True)
                deadline = time.monotonic() + 90
                while u.state == "activating" and time.monotonic() < deadline:
                    time.sleep(0.05)
                rc = rc or (0 if u.state == "active" else 1)
            elif verb == "stop":
                u.stop()
            elif verb == "restart":
                u.stop()
                u.start(explicit=True)
            elif verb == "is-active":
                rc = rc or (0 if u.state == "active" else 3)
        return rc, ""

    def check_refusals(self):
        text = self.refusals.read_text()
        if text:
            self.refusals.write_text("")
            raise NotReplayed(text.strip())

    def wire(self, node):
        i = self.numbers[node.name]
        host, peer = f"vr{self.tag}{i}", f"vr{self.tag}{i}p"
        run("ip", "link", "add", host, "type", "veth", "peer", "name", peer)
        run("ip", "link", "set", host, "netns", self.switch)
        run("ip", "-n", self.switch, "link", "set", host, "master", "br1")
        run("ip", "-n", self.switch, "link", "set", host, "up")
        run("ip", "link", "set", peer, "netns", str(node.holder.pid))
        inside = ["nsenter", "-t", str(node.holder.pid), "-n", "ip"]
        run(*inside, "link", "set", peer, "name", "eth1")
        run(*inside, "link", "set", "eth1", "address", f"52:54:00:12:{VLAN:02x}:{i:02x}")
        run(*inside, "addr", "add", f"{node.ipv4}/24", "dev", "eth1")
        run(*inside, "addr", "add", f"{node.ipv6}/64", "dev", "eth1", "nodad")
        run(*inside, "link", "set", "eth1", "up")

    def start_all(self):
        for n in self.nodes.values():
            n.start()

    def symbols(self):
        def subtest(name):
            return Nested(f"subtest: {name}")

        def refuse(what):
            def f(*_, **__):
                raise NotReplayed(f"{what}() is not replayed")
            return f

        symbols = {
            "start_all": self.start_all, "subtest": subtest, "retry": retry, "os": os,
            "join_all": lambda: [n.wait_for_shutdown() for n in self.nodes.values()],
            "serial_stdout_on": lambda: None, "serial_stdout_off": lambda: None,
            "create_machine": refuse("create_machine"), "polling_condition": refuse("polling_condition"),
            "run_tests": refuse("run_tests"), "test_script": refuse("test_script"),
        }
        symbols.update({re.sub(r"^[^A-Za-z_]|[^A-Za-z0-9_]", "_", n): m for n, m in self.nodes.items()})
        if len(self.nodes) == 1:
            symbols["machine"] = next(iter(self.nodes.values()))
        return symbols

    def run(self):
        run("ip", "netns", "add", self.switch)
        run("ip", "-n", self.switch, "link", "add", "br1", "type", "bridge", "forward_delay", "0", "stp_state", "0")
        run("ip", "-n", self.switch, "link", "set", "br1", "up")
        code = compile(self.mutations.instrument(self.script), f"{self.test}:testScript", "exec")
        exec(code, {**self.symbols(), "__mut": self.mutations}, None)
        self.mutations.finish()

    def teardown(self):
        for n in self.nodes.values():
            try:
                n.shutdown_all()
            except Exception as e:  # noqa: BLE001 - teardown goes on
                log(f"teardown {n.name}: {e}")
        run("ip", "netns", "del", self.switch, check=False)
        self.control.close()


SHIM = r'''#!/usr/bin/python3
"""systemctl / journalctl in a replayed node: the verbs that act on the replay's units; the rest refused."""
import json, os, socket, sys
tool = os.path.basename(sys.argv[0])
args = [a for a in sys.argv[1:] if a not in ("--no-pager", "-q", "--quiet", "--no-block", "-b", "--full", "-l")]
def refuse():
    with open(os.path.join(os.path.dirname(os.environ["VM_REPLAY_CONTROL"]), "refusals"), "a") as f:
        f.write(f"`{tool} {' '.join(sys.argv[1:])}` cannot mean in the replay what it means on NixOS: "
                "assert on behaviour (a file, a port, an HTTP answer, a log line) instead\n")
    sys.exit(2)
if tool == "systemctl" and len(args) >= 2 and args[0] in ("start", "stop", "restart", "is-active"):
    verb, units = args[0], args[1:]
elif tool == "journalctl" and len(args) == 2 and args[0] == "-u":
    verb, units = "log", args[1:]
elif tool == "journalctl" and len(args) == 1 and args[0].startswith("--unit="):
    verb, units = "log", [args[0].split("=", 1)[1]]
else:
    refuse()
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(os.environ["VM_REPLAY_CONTROL"])
s.sendall(json.dumps({"node": os.environ["VM_REPLAY_NODE"], "verb": verb, "units": units}).encode() + b"\n")
reply = json.loads(s.makefile().readline())
sys.stdout.write(reply["out"])
sys.exit(reply["rc"])
'''


# ---------------------------------------------------------------------------------------------------------


def evaluate(tests, kernel, containerd_dir, test_dir):
    crictl = REPO / "nix" / "tests" / "vm-replay-crictl.py"
    pkgs = (f'import {REPO}/nix/tests/vm-replay-pkgs.nix {{ debianKernel = "{kernel}"; crictl = {crictl}; '
            f'containerd = "{containerd_dir}"; }}')
    nix_opts = ["--option", "build-users-group", "", "--option", "sandbox", "false", "--option", "substituters", ""]
    out = {}
    for t in tests:
        r = subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", "--read-write-mode",
                            str(REPO / "nix/tests/vm-nodes.nix"), "--arg", "dir", str(test_dir),
                            "--argstr", "only", t, "--arg", "replayPkgs", pkgs] + nix_opts,
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"evaluating {t}: {r.stderr[-3000:]}")
        d = json.loads(r.stdout)
        drvs = d.pop("drvs")
        if drvs:
            b = subprocess.run(["nix-store", "--realise", *drvs] + nix_opts, capture_output=True, text=True)
            if b.returncode != 0:
                raise RuntimeError(f"building {t}'s files: {b.stderr[-3000:]}")
        out.update(d)
    return out


def main():
    args = sys.argv[1:]
    test_dir = REPO / "nixos" / "tests"
    if args[:1] == ["--dir"]:
        test_dir, args = Path(args[1]).resolve(), args[2:]
    if not args:
        args = sorted(f.name for f in test_dir.glob("*.nix") if f.name not in ("common.nix", "settings.nix"))
    # Nodes mask /tmp, /var, /run and /root with their own: what they run and read lives where every node
    # sees it (the checkout itself may be under one of those).
    root = Path(os.environ.get("VM_REPLAY_WORK", "/srv/ic-vm-replay"))
    bins = root / "bin"
    bins.mkdir(parents=True, exist_ok=True)
    binary = bins / "image-cache"
    shutil.copy2(os.environ.get("IMAGE_CACHE_BIN", REPO / "target/release/image-cache"), binary)
    kernel = os.environ["VM_REPLAY_KERNEL"]
    containerd_dir = os.environ["VM_REPLAY_CONTAINERD"]
    containerd = {}
    for c in ["containerd", "ctr", "containerd-shim-runc-v2"]:
        shutil.copy2(os.path.join(containerd_dir, c), bins / c)
        containerd[c] = str(bins / c)
    tests = evaluate(args, kernel, containerd_dir, test_dir)
    failures = 0
    for i, (name, t) in enumerate(sorted(tests.items())):
        work = root / "tests" / name.removesuffix(".nix")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        nodes = {n: v for n, v in t["nodes"].items()}
        replay = Replay(name, nodes, t["testScript"], binary, containerd, work, f"{i}")
        t0 = time.monotonic()
        print(f"vm-replay {name} ({t['name']}): nodes {', '.join(sorted(nodes))}", flush=True)
        try:
            replay.run()
            print(f"PASS vm-replay {name}: testScript green against real programs ({time.monotonic() - t0:.0f} s); "
                  f"{replay.mutations.summary()}", flush=True)
        except (AssertionFailed, NotReplayed, mutate.Survived, Exception) as e:  # noqa: BLE001
            failures += 1
            kind = {NotReplayed: "not replayed", AssertionFailed: "assertion failed",
                    mutate.Survived: "a mutated assertion passed"}.get(type(e), type(e).__name__)
            print(f"FAIL vm-replay {name} ({kind}): {e}", flush=True)
            tb = [f for f in traceback.extract_tb(e.__traceback__) if f.filename.endswith(":testScript")]
            for f in tb:
                lines = t["testScript"].splitlines()
                print(f"  testScript line {f.lineno}: {lines[f.lineno - 1].strip() if f.lineno <= len(lines) else ''}")
            for n in replay.nodes.values():
                for p in sorted(n.dir.glob("unit-*.log")) + sorted(n.dir.glob("console.log")):
                    print(f"  --- {n.name}/{p.name} (last lines)")
                    for line in p.read_text(errors="replace").splitlines()[-15:]:
                        print(f"    {line}")
        finally:
            if os.environ.get("VM_REPLAY_HOLD"):
                # Debugging: the nodes stay up for VM_REPLAY_HOLD seconds (enter one with
                # `nsenter -t $(cat /srv/ic-vm-replay/tests/T/nodes/N/holder.pid) -n -m -u -i`).
                for n in replay.nodes.values():
                    if n.holder:
                        (n.dir / "holder.pid").write_text(str(n.holder.pid))
                print(f"  holding the nodes for {os.environ['VM_REPLAY_HOLD']} s", flush=True)
                time.sleep(float(os.environ["VM_REPLAY_HOLD"]))
            replay.teardown()
            if not os.environ.get("VM_REPLAY_KEEP"):
                shutil.rmtree(work, ignore_errors=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
