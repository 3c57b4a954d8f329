#!/usr/bin/env python3
"""Airlock's layering check (run by .ci/run; `python3 .ci/layers.py` from the top level).

Each top-level module of src/ has a rank; a module may import (`crate::x`, `super::` across
modules does not occur at top level) only modules of a LOWER rank. Ranks are unique, so a
passing check also proves there is no import cycle between top-level modules. Within a
module directory the same rule holds for its child modules where a ranking is given
below (SUBRANKS).

It also fails on `sqlx::` outside src/store/, on `axum::` outside src/http/ and src/app.rs,
and when a file under src/cli/client/ (the commands that talk HTTP) imports the store, the
server's state, the assembly, the HTTP edge or a service: the client side knows the server
only through `crate::wire`.

Prints the import graph with `--graph`.
"""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
SRC = os.path.join(ROOT, 'src')

# Lower rank = lower layer. Pure modules, then infrastructure, then the state type, then
# services, then the edges, then assembly and the command line.
RANKS = {
    # pure: no IO
    'domain': 0, 'secrets': 1, 'config': 2, 'policy': 3, 'audit': 4, 'token': 5, 'totp': 6,
    'wire': 7, 'clock': 8,
    # infrastructure
    'store': 10, 'keyring': 11, 'password': 12, 'refusals': 13, 'throttle': 14, 'notify': 15,
    'telemetry': 16,
    # the AppState type only
    'state': 20,
    # services
    'auth': 30, 'people': 31, 'agents': 32, 'escalations': 33, 'oauth': 34,
    # edges
    'http': 40, 'app': 50,
    # the command line: cli/operator/ opens the store, cli/client/ talks HTTP
    'cli': 60,
}
LAYER_NAMES = [(0, 'pure'), (10, 'infrastructure'), (20, 'state'), (30, 'services'),
               (40, 'edges'), (50, 'assembly and command line')]

# Child modules of a directory module that must not import each other upward.
SUBRANKS = {
    'oauth': {'request': 0, 'refusal': 1, 'issue': 2, 'client_credentials': 3,
              'token_exchange': 4, 'refresh_token': 5, 'device_code': 6, 'introspect': 7},
    'people': {'sign_in': 0, 'admin': 1, 'totp': 2, 'sessions': 3, 'device': 4},
    'escalations': {'sweeper': 0, 'views': 1, 'grants': 2, 'requests': 3, 'decisions': 4},
    'auth': {'session': 0, 'bearer': 1},
    # prompts are shared; an operator command may use a client helper, never the reverse
    'cli': {'prompt': 0, 'client': 1, 'operator': 2},
}

# What src/cli/client/ may not import: anything that opens, holds or serves the server's
# data. (Pure modules, `telemetry` and `wire` are fine.)
CLIENT_FORBIDDEN = {'store', 'state', 'app', 'http', 'auth', 'people', 'agents',
                    'escalations', 'oauth', 'keyring', 'password', 'refusals', 'throttle',
                    'notify'}

USE = re.compile(r'\bcrate::([a-z_][a-z0-9_]*)')
SUPER = re.compile(r'\bsuper::([a-z_][a-z0-9_]*)')


def code_lines(path):
    """The file's lines without comments (doc links name modules without importing them)."""
    out = []
    in_block = False
    for line in open(path, encoding='utf-8'):
        s = line
        if in_block:
            if '*/' in s:
                s = s.split('*/', 1)[1]
                in_block = False
            else:
                continue
        if '/*' in s:
            s, rest = s.split('/*', 1)
            if '*/' not in rest:
                in_block = True
        s = re.sub(r'//.*', '', s)
        # string literals can mention paths too
        s = re.sub(r'"(?:\\.|[^"\\])*"', '""', s)
        out.append(s)
    return out


def module_of(rel):
    parts = rel.split(os.sep)
    top = parts[0][:-3] if parts[0].endswith('.rs') else parts[0]
    child = None
    if len(parts) > 1:
        c = parts[1]
        child = c[:-3] if c.endswith('.rs') else c
        if child == 'mod':
            child = None
    return top, child


def main():
    problems = []
    graph = {}
    for dirpath, _, files in os.walk(SRC):
        for f in files:
            if not f.endswith('.rs'):
                continue
            path = os.path.join(dirpath, f)
            rel = os.path.relpath(path, SRC)
            if rel in ('lib.rs', 'main.rs'):
                continue
            top, child = module_of(rel)
            if top not in RANKS:
                problems.append(f'src/{rel}: module `{top}` has no rank in .ci/layers.py; give it one')
                continue
            lines = code_lines(path)
            for n, line in enumerate(lines, 1):
                for m in USE.finditer(line):
                    dep = m.group(1)
                    if dep == top or dep not in RANKS:
                        continue
                    graph.setdefault(top, set()).add(dep)
                    if RANKS[dep] >= RANKS[top]:
                        problems.append(f'src/{rel}:{n}: `{top}` imports `crate::{dep}`, which is not below it')
                if top == 'cli' and child == 'client':
                    for m in USE.finditer(line):
                        if m.group(1) in CLIENT_FORBIDDEN:
                            problems.append(f'src/{rel}:{n}: the CLI client side imports `crate::{m.group(1)}`; '
                                            'client commands talk HTTP and know the server only through `crate::wire`')
                if 'sqlx::' in line and top != 'store':
                    problems.append(f'src/{rel}:{n}: `sqlx::` outside src/store/')
                if re.search(r'\baxum::', line) and top not in ('http', 'app'):
                    problems.append(f'src/{rel}:{n}: `axum::` outside src/http/ and src/app.rs')
                if child is not None and top in SUBRANKS and child in SUBRANKS[top]:
                    for m in SUPER.finditer(line):
                        sib = m.group(1)
                        ranks = SUBRANKS[top]
                        if sib in ranks and sib != child and ranks[sib] >= ranks[child]:
                            problems.append(f'src/{rel}:{n}: `{top}::{child}` imports `super::{sib}`, which is not below it')
                    for m in re.finditer(r'\bcrate::' + top + r'::([a-z_][a-z0-9_]*)', line):
                        sib = m.group(1)
                        ranks = SUBRANKS[top]
                        if sib in ranks and sib != child and ranks[sib] >= ranks[child]:
                            problems.append(f'src/{rel}:{n}: `{top}::{child}` imports `{top}::{sib}`, which is not below it')
    if '--graph' in sys.argv:
        for mod in sorted(graph, key=lambda m: RANKS[m]):
            print(f'{mod:13s} -> ' + ', '.join(sorted(graph[mod], key=lambda m: RANKS[m])))
    if problems:
        print('layering check failed:', file=sys.stderr)
        for p in problems:
            print('  ' + p, file=sys.stderr)
        sys.exit(1)
    print(f'layering check: {sum(len(v) for v in graph.values())} imports between {len(RANKS)} modules, all downward')


if __name__ == '__main__':
    main()
