#!/usr/bin/env python3
"""Checks the VM tests offline, from what nix/tests/vm-nodes.nix read out of them:

- every node definition names an option nixpkgs (or an imported module of this flake) declares;
- a netbooting node boots the way nixpkgs documents it (directBoot off, no boot disk) and adds no second
  NIC on a VLAN the test driver already connects it to;
- each testScript compiles (py_compile), calls only test-driver methods and globals that exist at the pinned
  nixpkgs (nix/tests/nixos-facts.json) with parameters they take, and waits for image-cache ports on
  addresses the node's settings actually listen on.

Also: `config.<option>` read by this flake's modules (MODULE.nix arguments) must be declared.

Usage: vm-scripts.py NODES_JSON FACTS_JSON [MODULE.nix ...]   (PASS/FAIL lines; exit 1 on any failure)
"""

import ast
import builtins
import json
import re
import sys

LOOPBACK = {"127.0.0.1", "::1", "localhost"}
WILDCARD = {"0.0.0.0", "::"}


def pythonize(name):
    return re.sub(r"^[^A-Za-z_]|[^A-Za-z0-9_]", "_", name)


def split_addr(addr):
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def listeners(settings):
    """(host, port) of every socket the image-cache node listens on."""
    out = []

    def section(name):
        return settings.get(name) or {}

    for key in ("http.listen", "http.admin_listen", "dns.listen", "passthrough.listen"):
        sec, field = key.split(".")
        if sec in ("dns", "passthrough") and section(sec).get("enabled", True) is False:
            continue
        # The settings come with the module's defaults already in (render.moduleSettings).
        out += [split_addr(a) for a in section(sec).get(field) or []]
    return out


def reachable(listening, port, addr):
    hosts = {h for h, p in listening if p == port}
    if not hosts:
        return None  # not an image-cache port: nothing to say
    if hosts & WILDCARD:
        return True
    if addr in ("localhost", "127.0.0.1", "::1"):
        return bool(hosts & LOOPBACK)
    return addr in hosts


def const(node):
    return node.value if isinstance(node, ast.Constant) else None


class ScriptChecker(ast.NodeVisitor):
    def __init__(self, test, nodes, facts):
        self.test = test
        self.nodes = nodes
        self.methods = facts["driver"]["machine_methods"]
        self.facts = facts
        self.globals = set(facts["driver"]["globals"])
        self.machines = {pythonize(n): n for n in nodes}
        self.machine_vars = dict(self.machines)
        self.defined = set()
        self.errors = []

    def err(self, node, msg):
        self.errors.append(f"{self.test}:testScript line {node.lineno}: {msg}")

    # Names bound to machines: `servers = [a, b]` then `for m in servers`.
    def machine_list(self, node):
        if isinstance(node, (ast.List, ast.Tuple)) and node.elts and all(
            isinstance(e, ast.Name) and e.id in self.machine_vars for e in node.elts
        ):
            return [self.machine_vars[e.id] for e in node.elts]
        if isinstance(node, ast.Name) and node.id in self.lists:
            return self.lists[node.id]
        return None

    def check(self, tree):
        self.lists = {}
        for n in ast.walk(tree):
            if isinstance(n, ast.ClassDef):
                self.defined.add(n.name)
            elif isinstance(n, ast.FunctionDef):
                self.defined.add(n.name)
                self.defined.update(a.arg for a in n.args.args)
            elif isinstance(n, ast.Assign):
                for t in n.targets:
                    if isinstance(t, ast.Name):
                        self.defined.add(t.id)
                        ml = self.machine_list(n.value)
                        if ml:
                            self.lists[t.id] = ml
            elif isinstance(n, (ast.For, ast.comprehension)):
                if isinstance(n.target, ast.Name):
                    self.defined.add(n.target.id)
                    ml = self.machine_list(n.iter)
                    if ml:
                        self.machine_vars[n.target.id] = ml[0]
            elif isinstance(n, ast.Lambda):
                self.defined.update(a.arg for a in n.args.args)
            elif isinstance(n, (ast.With,)):
                for item in n.items:
                    if isinstance(item.optional_vars, ast.Name):
                        self.defined.add(item.optional_vars.id)
        self.visit(tree)

    def visit_Call(self, node):
        f = node.func
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id in self.machine_vars:
            self.check_method(node, f.value.id, f.attr)
        elif isinstance(f, ast.Name):
            known = self.globals | self.defined | set(self.machines) | set(dir(builtins))
            unsure = {**self.facts["driver"].get("globals_not_at_pin", {}), **self.facts["driver"].get("globals_unverified", {})}
            if f.id in unsure and f.id not in self.defined:
                self.err(node, f"`{f.id}` cannot be relied on at the pinned nixpkgs: {unsure[f.id]}")
            elif f.id not in known:
                self.err(node, f"`{f.id}` is neither a test-driver global nor defined in the script")
        self.generic_visit(node)

    def check_method(self, node, var, method):
        if method not in self.methods:
            self.err(node, f"`{var}.{method}` is not a method of the test driver's Machine")
            return
        params = self.methods[method]
        variadic = any(p.startswith("*") for p in params)
        named = [p for p in params if not p.startswith("*")]
        positional = len(node.args)
        if not variadic and positional > len(params):
            self.err(node, f"`{var}.{method}` takes at most {len(params)} positional argument(s), given {positional}")
        for kw in node.keywords:
            if kw.arg is not None and kw.arg not in named:
                self.err(node, f"`{var}.{method}` has no parameter `{kw.arg}` (it takes {', '.join(params) or 'none'})")
        if method in ("wait_for_open_port", "wait_for_closed_port"):
            self.check_port(node, var)

    def check_port(self, node, var):
        machine = self.machine_vars[var]
        settings = self.nodes[machine].get("imageCache")
        if settings is None:
            return
        port = const(node.args[0]) if node.args else None
        addr = const(node.args[1]) if len(node.args) > 1 else None
        for kw in node.keywords:
            if kw.arg == "port":
                port = const(kw.value)
            if kw.arg == "addr":
                addr = const(kw.value)
        addr = addr or "localhost"
        if not isinstance(port, int):
            return
        ok = reachable(listeners(settings), port, addr)
        if ok is False:
            where = [f"{h}:{p}" for h, p in listeners(settings) if p == port]
            self.err(node, f"`{var}.wait_for_open_port({port})` probes {addr}, but image-cache listens on "
                     f"{', '.join(where)} only: it would wait for its whole timeout")


def node_lints(test, name, node, all_nodes):
    errs = [f"{test}:{name}: {e}" for e in node["errors"]]
    opts = (node.get("qemuOptions") or []) + (node.get("qemuNetworkingOptions") or [])
    text = " ".join(opts)
    for vlan in node.get("vlans") or []:
        if f"QEMU_VDE_SOCKET_{vlan}" in text:
            errs.append(f"{test}:{name}: adds its own NIC on VLAN {vlan}, which the test driver already connects "
                        "(virtualisation.vlans): the VM gets two NICs there")
    netboot = "order=n" in text or bool(re.search(r"-net[^ ]*bootindex", text))
    direct = node.get("directBoot")
    if direct is None:
        direct = not node.get("useBootLoader")  # qemu-vm.nix's default
    if netboot:
        if node.get("useBootLoader"):
            errs.append(f"{test}:{name}: netboots but sets virtualisation.useBootLoader, which builds a full boot disk "
                        "it never uses; nixpkgs' way is virtualisation.directBoot.enable = false")
        elif direct:
            errs.append(f"{test}:{name}: netboots but keeps direct boot (-kernel/-initrd bypass the firmware); "
                        "set virtualisation.directBoot.enable = false")
    settings = node.get("imageCache") or {}
    for url in upstream_urls(settings):
        host = re.sub(r"^[a-z]+://", "", url).split("/")[0].rsplit(":", 1)[0]
        if host in all_nodes:
            errs.append(f"{test}:{name}: image-cache reaches `{url}` by the node name `{host}`, which the test "
                        "driver's /etc/hosts maps to the address it would have assigned, not the static one: use the address")
    return errs


def upstream_urls(settings):
    urls = list((settings.get("registry") or {}).get("upstreams", {}).values())
    urls += [d["origin"] for d in settings.get("domains") or [] if d.get("origin")]
    if (settings.get("sync") or {}).get("url"):
        urls.append(settings["sync"]["url"])
    return urls


def module_reads(paths, facts):
    """`config.<option>` read by this flake's modules must be declared (or be the module's own)."""
    declared = [k.split(".") for k in facts["options"]]
    own = [["services", "imageCache"]]
    errs = []
    for path in paths:
        for lineno, line in enumerate(open(path), 1):
            line = re.sub(r'"(?:[^"\\]|\\.)*"', '""', line.split("#", 1)[0])  # code only, not strings or comments
            for ref in re.findall(r"\bconfig\.([A-Za-z_][A-Za-z0-9_.]*)", line):
                segs = [s for s in ref.split(".") if s]
                if any(segs[: len(o)] == o for o in own):
                    continue
                if not any(
                    all(p in (s, "<name>", "*") for p, s in zip(d, segs)) for d in declared if len(d) <= len(segs)
                ):
                    errs.append(f"{path}:{lineno}: reads config.{ref}, an option nixpkgs does not declare "
                                "(nix/tests/nixos-facts.json)")
    return errs


def main():
    tests = json.load(open(sys.argv[1]))
    facts = json.load(open(sys.argv[2]))
    failures = 0
    for test, t in sorted(tests.items()):
        errs = []
        for name, node in sorted(t["nodes"].items()):
            errs += node_lints(test, name, node, set(t["nodes"]))
        try:
            tree = ast.parse(t["testScript"], filename=f"{test}:testScript")
            compile(tree, f"{test}:testScript", "exec")
        except SyntaxError as e:
            errs.append(f"{test}:testScript: {e}")
            tree = None
        if tree is not None:
            checker = ScriptChecker(test, t["nodes"], facts)
            checker.check(tree)
            errs += checker.errors
        if errs:
            failures += 1
            print(f"FAIL {test} ({t['name']}):")
            for e in errs:
                print(f"  {e}")
        else:
            print(f"PASS {test}: {len(t['nodes'])} nodes' options exist, testScript compiles and calls only driver API")
    reads = module_reads(sys.argv[3:], facts)
    if reads:
        failures += 1
        print("FAIL options the modules read:", *reads, sep="\n  ")
    elif sys.argv[3:]:
        print(f"PASS every config.* the modules read ({', '.join(sys.argv[3:])}) is declared")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
