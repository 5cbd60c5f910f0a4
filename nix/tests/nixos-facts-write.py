#!/usr/bin/env python3
"""Writes nix/tests/nixos-facts.json from a nixpkgs checkout: the options JSON nixos-facts-options.nix
evaluated, and the test driver's machine methods and testScript globals read from its sources with `ast`.

Usage: nixos-facts-write.py NIXPKGS OPTIONS_JSON FACTS_JSON   (FACTS_JSON is updated in place)
"""
import ast, json, subprocess, sys
nixpkgs, options_file, out = sys.argv[1:]
driver = f"{nixpkgs}/nixos/lib/test-driver/src/test_driver"

def methods(tree, classes):
    found = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name in classes:
            for f in node.body:
                if isinstance(f, ast.FunctionDef) and not f.name.startswith("_"):
                    a = f.args
                    params = [p.arg for p in a.posonlyargs + a.args][1:]
                    if a.vararg:
                        params.append("*" + a.vararg.arg)
                    params += [p.arg for p in a.kwonlyargs]
                    found[f.name] = params
    return found

import os
machine_file = f"{driver}/machine/__init__.py" if os.path.exists(f"{driver}/machine/__init__.py") else f"{driver}/machine.py"
machine = ast.parse(open(machine_file).read())
machine_methods = methods(machine, {"BaseMachine", "QemuMachine", "Machine"})
drv = ast.parse(open(f"{driver}/driver.py").read())
globals_ = set()
for node in ast.walk(drv):
    if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "dict":
        keys = [k.arg for k in node.keywords if k.arg]
        if "start_all" in keys:
            globals_.update(keys)
rev = subprocess.run(["git", "-C", nixpkgs, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
facts = json.load(open(out))
standing = ("verified: read at the pin itself" if rev == facts["nixpkgs_pin"]
            else f"unverified: read at {rev or '(not a git checkout)'}, not the pin {facts['nixpkgs_pin']}")
facts["taken_from"] = {"sources": [
    {"file": f, "commit": rev or "(not a git checkout)", "used_for": use, "at_pin": standing}
    for f, use in [("nixos/ (every option under nix/tests/nixos-facts-options.nix's prefixes)", "options"),
                   (os.path.relpath(machine_file, nixpkgs), "driver.machine_methods"),
                   ("nixos/lib/test-driver/src/test_driver/driver.py", "driver.globals")]]}
facts["options"] = dict(sorted(json.load(open(options_file)).items()))
facts["driver"] = {"machine_methods": dict(sorted(machine_methods.items())), "globals": sorted(globals_)}
json.dump(facts, open(out, "w"), indent=1)
print(f"{out}: {len(facts['options'])} options, {len(machine_methods)} machine methods, {len(globals_)} globals")
