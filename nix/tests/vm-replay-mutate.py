"""Mutations of a testScript's assertions, checked in the same run of nix/tests/vm-replay.py.

Every expected value a VM test asserts is changed, one at a time, right after the original assertion held,
in the same state of the same nodes; the changed assertion must then fail, or the assertion checks nothing
the replay could tell apart. What counts as an expected value:

- in a command given to `succeed` or `wait_until_succeeds`: the pattern of each `grep` (`grep -x 10.0.0.2`,
  `grep -q 'status: NOERROR'`, `grep -E '…[1-9]'`), and the right side of each `test A = B` / `[ A = B ]`;
  the mutant runs once as `execute` in the same node and must exit non-zero;
- the regex of `wait_for_console_text`, against the console lines the original matched;
- a Python `assert A == B` (either side changed) or `assert A in B` (the left side changed), on the values
  the original assertion compared, without running anything again.

Negative assertions (`fail`, `wait_until_fails`, `!=`, `not in`) are not mutated: a changed value cannot make
them fail on a real NixOS run either.
"""

import ast
import re

SUFFIX = "zq9"
GREP = re.compile(r"""\bgrep((?:\s+-[A-Za-z]+)*)\s+('(?:[^'])*'|"(?:[^"\\]|\\.)*"|[^\s|;&)'"]+)""")
TEST = re.compile(r"""(\btest\s+|\[\s+)(.+?)\s+(!?=)\s+('(?:[^'])*'|"(?:[^"\\]|\\.)*"|[^\s|;&)\]'"]+)""")


class Survived(Exception):
    """A changed expected value passed: the assertion does not check what it says."""


def _changed(word):
    """The word with a changed value inside its quotes."""
    if word[:1] in ("'", '"') and word[-1:] == word[:1] and len(word) >= 2:
        return word[:-1] + SUFFIX + word[-1]
    return word + SUFFIX


def command_mutants(command):
    """(description, mutated command) for each expected value in a shell command."""
    out = []
    for m in GREP.finditer(command):
        flags, pattern = m.group(1), m.group(2)
        if "-v" in flags.split():
            continue  # an inverted grep asserts absence
        mutated = command[: m.start(2)] + _changed(pattern) + command[m.end(2):]
        out.append((f"grep pattern {pattern} changed", mutated))
    for m in TEST.finditer(command):
        if m.group(3) != "=":
            continue
        value = m.group(4)
        mutated = command[: m.start(4)] + _changed(value) + command[m.end(4):]
        out.append((f"`test … = {value}` changed", mutated))
    return out


def value_mutant(v):
    if isinstance(v, bool):
        return not v
    if isinstance(v, int):
        return v + 1
    if isinstance(v, str):
        return v + SUFFIX
    if isinstance(v, (set, frozenset)):
        return set(v) | {SUFFIX}
    if isinstance(v, (list, tuple)):
        return list(v) + [SUFFIX]
    if isinstance(v, dict):
        return {**v, SUFFIX: SUFFIX}
    return SUFFIX


class Mutations:
    def __init__(self, replay):
        self.replay = replay
        self.killed = 0
        self.negative = 0

    def summary(self):
        return f"{self.killed} mutated expected values all failed ({self.negative} negative assertions not mutated)"

    def finish(self):
        pass

    # --- called from the instrumented script ---------------------------------------------------------------
    def call(self, machine, method, lineno, *args, **kwargs):
        result = getattr(machine, method)(*args, **kwargs)
        if method in ("fail", "wait_until_fails"):
            self.negative += sum(len(command_mutants(c)) for c in args if isinstance(c, str))
            return result
        if method == "wait_for_console_text":
            # The regex changed must not match the console lines the original matched on.
            mutant = (args[0] if args else kwargs["regex"]) + SUFFIX
            if re.search(mutant, "".join(machine.consumed)):
                raise Survived(f"testScript line {lineno}: console regex {mutant!r} still matches")
            self.killed += 1
            return result
        if method not in ("succeed", "wait_until_succeeds"):
            return result
        for command in args:
            if not isinstance(command, str):
                continue
            for what, mutant in command_mutants(command):
                status, _ = machine.execute(mutant, timeout=kwargs.get("timeout") or 120)
                if status == 0:
                    raise Survived(f"testScript line {lineno}: {what} still passes: {mutant}")
                self.killed += 1
        return result

    def check(self, lineno, left, op, right, msg=None):
        if op == "==":
            if left != right:
                raise AssertionError(msg if msg is not None else f"{left!r} != {right!r}")
            for what, ok in ((f"right side {right!r} changed", left == value_mutant(right)),
                             (f"left side {left!r} changed", value_mutant(left) == right)):
                if ok:
                    raise Survived(f"testScript line {lineno}: `assert … == …` with the {what} still holds")
                self.killed += 1
        elif op == "in":
            if left not in right:
                raise AssertionError(msg if msg is not None else f"{left!r} not in …")
            if value_mutant(left) in right:
                raise Survived(f"testScript line {lineno}: `assert … in …` with {left!r} changed still holds")
            self.killed += 1

    # --- the instrumentation ---------------------------------------------------------------------------------
    def instrument(self, script):
        tree = ast.parse(script)
        tree = _Instrument().visit(tree)
        ast.fix_missing_locations(tree)
        return tree


class _Instrument(ast.NodeTransformer):
    METHODS = {"succeed", "wait_until_succeeds", "fail", "wait_until_fails", "wait_for_console_text"}

    def visit_Call(self, node):
        self.generic_visit(node)
        f = node.func
        if isinstance(f, ast.Attribute) and f.attr in self.METHODS:
            return ast.Call(
                func=ast.Attribute(value=ast.Name(id="__mut", ctx=ast.Load()), attr="call", ctx=ast.Load()),
                args=[f.value, ast.Constant(f.attr), ast.Constant(node.lineno)] + node.args,
                keywords=node.keywords)
        return node

    def visit_Assert(self, node):
        self.generic_visit(node)
        t = node.test
        if isinstance(t, ast.Compare) and len(t.ops) == 1 and isinstance(t.ops[0], (ast.Eq, ast.In)):
            op = "==" if isinstance(t.ops[0], ast.Eq) else "in"
            call = ast.Call(
                func=ast.Attribute(value=ast.Name(id="__mut", ctx=ast.Load()), attr="check", ctx=ast.Load()),
                args=[ast.Constant(node.lineno), t.left, ast.Constant(op), t.comparators[0]]
                + ([node.msg] if node.msg is not None else []),
                keywords=[])
            return ast.copy_location(ast.Expr(call), node)
        return node
