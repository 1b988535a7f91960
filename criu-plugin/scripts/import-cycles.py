#!/usr/bin/env python3
"""Prints the module import graph of a crate's library and fails if it has a cycle.

Usage: import-cycles.py <crate>/src [--graph]

Every module file is a node (`lib.rs` is `crate`, `a/mod.rs` and `a.rs` are `a`). An edge
A -> B is any path A names that resolves to module B: `use` statements (braces expanded) and
paths in code starting with `crate::`, `super::` or `self::`, or with the name of one of A's
own child modules. A path resolves to the longest module prefix it names, so
`use super::sibling::Item` is an edge to the sibling, and `use super::Item` (the parent, also
when the parent only re-exports `Item` from a child) an edge to the parent. Comments, string
literals, `#[cfg(test)]` modules and `src/bin/` are left out; `mod child;` declarations are not
edges. Cycles are the strongly connected components with more than one module.
"""
import os
import re
import sys


def module_of(root, path):
    rel = os.path.relpath(path, root)[:-3].split(os.sep)
    if rel == ["lib"]:
        return ()
    if rel[-1] == "mod":
        rel = rel[:-1]
    return tuple(rel)


def strip(text):
    """Drops comments, string and char literals (a small lexer), then `#[cfg(test)]` modules."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif re.match(r'(?:b|c)?r#*"', text[i : i + 8]) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = re.match(r'(?:b|c)?r(#*)"', text[i:])
            end = '"' + m.group(1)
            j = text.find(end, i + m.end())
            i = n if j < 0 else j + len(end)
            out.append('""')
        elif c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            i += 1
            out.append('""')
        elif c == "'":
            m = re.match(r"'(?:\\.[^']*|[^'\\\n])'", text[i:])
            if m:  # a char literal; otherwise a lifetime
                i += m.end()
                out.append("' '")
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    text = "".join(out)
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*(?:#\[[^\]]*\]\s*)*mod\s+\w+\s*\{", text):
        if m.start() < i:
            continue
        out.append(text[i : m.start()])
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    out.append(text[i:])
    return "".join(out)


def expand_use(tree):
    tree = re.sub(r"\s+", "", tree)
    if "{" not in tree:
        return [tree.split(" as ")[0]]
    i = tree.index("{")
    prefix, inner = tree[:i], tree[i + 1 : tree.rindex("}")]
    parts, depth, cur = [], 0, ""
    for c in inner:
        if c == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += {"{": 1, "}": -1}.get(c, 0)
        cur += c
    parts.append(cur)
    res = []
    for p in filter(None, parts):
        for e in expand_use(p):
            res.append(prefix + e if e != "self" else prefix.rstrip(":"))
    return res


def main():
    root = sys.argv[1].rstrip("/")
    files = {}
    for d, _, names in os.walk(root):
        if os.path.relpath(d, root).split(os.sep)[0] == "bin":
            continue
        for n in names:
            if n.endswith(".rs"):
                p = os.path.join(d, n)
                files[module_of(root, p)] = p
    mods = set(files)
    edges = {m: set() for m in mods}
    for m, p in files.items():
        code = strip(open(p).read())
        children = set(re.findall(r"\bmod\s+(\w+)\s*;", code))
        paths = []
        for u in re.findall(r"\buse\s+([^;]+);", code):
            paths += expand_use(u)
        paths += re.findall(r"(?<![\w:])((?:crate|super|self)(?:::\w+)+)", code)
        for c in children:
            paths += [c + x for x in re.findall(r"(?<![\w:])" + c + r"((?:::\w+)+)", code)]
        for path in paths:
            segs = [s for s in path.split("::") if s]
            if not segs:
                continue
            if segs[0] == "crate":
                base, segs = (), segs[1:]
            elif segs[0] in ("super", "self"):
                base = m
                while segs and segs[0] in ("super", "self"):
                    if segs[0] == "super":
                        base = base[:-1]
                    segs = segs[1:]
            elif segs[0] in children:
                base = m
            else:
                continue  # std, an external crate, or a local name
            target = base
            for s in segs:
                if target + (s,) in mods:
                    target = target + (s,)
                else:
                    break
            if target != m:
                edges[m].add(target)

    name = lambda t: "crate" if not t else "::".join(t)
    if "--graph" in sys.argv:
        for m in sorted(mods):
            print(f"{name(m)} -> {', '.join(sorted(name(t) for t in edges[m]))}")

    # Tarjan's strongly connected components
    index, low, stack, on, sccs, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            sccs.append(comp)

    sys.setrecursionlimit(10000)
    for v in sorted(mods):
        if v not in index:
            visit(v)
    cycles = [c for c in sccs if len(c) > 1]
    for c in cycles:
        print("cycle:", " <-> ".join(sorted(name(x) for x in c)))
    print(f"{len(mods)} modules, {sum(len(e) for e in edges.values())} edges, {len(cycles)} cycles")
    sys.exit(1 if cycles else 0)


if __name__ == "__main__":
    main()
