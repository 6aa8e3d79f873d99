#!/usr/bin/env python3
"""Writes the Nix expressions of the publish benchmark's synthetic fleet (see BENCHMARKS.md).

    genfleet.py OUTDIR SALT

OUTDIR/fleet.nix       { salt ? …, nightly ? "0" }: { hosts = [4 toplevels]; }
                       ~600 store paths, ~400 MB of NAR: real ELF files from /usr/bin and
                       /usr/lib, text from /usr/share and /usr/lib/python3*, /dev/urandom data;
                       a DAG of references; ~80 % of the paths are in all 4 hosts' closures.
                       `nightly` feeds one mid-level shared path: bumping it rebuilds that path
                       and everything that (transitively) refers to it (10-20 % of the paths).
OUTDIR/many.nix        { salt }: one root whose closure is ~2,000 tiny paths (no-op at scale).
OUTDIR/big.nix         { salt }: one path with a 1 GiB NAR (peak RSS).
OUTDIR/fleet.json      the shape: paths, planned bytes, which path the nightly bump hits.

The shape (sizes, files, edges) comes from a fixed seed, so every run publishes the same kind
of fleet; only SALT (unique per run) makes the store paths new. Plain `derivation`s with
builder /bin/sh (no nixpkgs); they copy files from /usr, so build with sandbox = false.
"""

import json
import os
import random
import sys

SEED = 20240601
SHARED = 476  # paths in every host's closure
PER_HOST = 30  # paths only one host has
HOSTS = ["alpha", "beta", "gamma", "delta"]
ELF_BYTES = 240_000_000
TEXT_BYTES = 60_000_000
RANDOM_BYTES = 100_000_000
MAX_ELF_FILE = 40_000_000
BUMP_TARGET = (0.12, 0.18)  # share of all paths the nightly bump rebuilds


def nix_str(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${") + '"'


def sh_quote(s):
    return "'" + s.replace("'", "'\\''") + "'"


def walk_files(roots, accept):
    out = []
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for f in sorted(filenames):
                p = os.path.join(dirpath, f)
                if os.path.islink(p) or not os.path.isfile(p):
                    continue
                if not p.isascii() or any(c in p for c in " '\"$`\\\n"):
                    continue
                try:
                    size = os.path.getsize(p)
                    if not os.access(p, os.R_OK) or size == 0:
                        continue
                    if accept(p, size):
                        out.append((p, size))
                except OSError:
                    continue
    return out


def is_elf(p, size):
    if size < 4096 or size > MAX_ELF_FILE:
        return False
    with open(p, "rb") as f:
        return f.read(4) == b"\x7fELF"


def is_text(p, size):
    return size >= 512 and size < 2_000_000 and p.endswith(
        (".py", ".pm", ".pl", ".txt", ".h", ".md", ".rst", ".html", ".xml", ".sh", ".conf")
    )


def heavy_tailed_sizes(rng, n, total):
    """n positive sizes summing to ~total with a long tail (a few big paths, many small)."""
    w = [rng.lognormvariate(0, 1.6) for _ in range(n)]
    s = sum(w)
    return [max(1, int(total * x / s)) for x in w]


def take(pool, pos, budget):
    """Files from pool (cycling, from pos[0]) adding up to about budget bytes: a file that
    would overshoot the rest by more than half is skipped (up to 64 tries), so small budgets
    get small files or none."""
    files, got = [], 0
    while pool:
        rest = budget - got
        for _ in range(64):
            p, size = pool[pos[0] % len(pool)]
            pos[0] += 1
            if size <= rest * 1.5:
                files.append(p)
                got += size
                break
        else:
            break
    return files, got


def main():
    outdir, salt = sys.argv[1], sys.argv[2]
    os.makedirs(outdir, exist_ok=True)
    rng = random.Random(SEED)

    elf = walk_files(["/usr/bin", "/usr/lib"], is_elf)
    text = walk_files(["/usr/share", "/usr/lib/python3", "/usr/lib/python3.11"], is_text)
    if sum(s for _, s in elf) < ELF_BYTES // 2 or not text:
        sys.exit("genfleet: too few ELF or text files under /usr to build the fleet")
    rng.shuffle(elf)
    rng.shuffle(text)

    # Nodes: shared 0..SHARED-1 (topological: a node refers only to lower indexes), then per
    # host PER_HOST each, then one toplevel per host.
    nodes = []
    for i in range(SHARED):
        if i == 0:
            refs = []
        else:
            # Low indexes ("glibc", "openssl", …) are referred to most.
            k = min(i, rng.choice([1, 1, 2, 2, 3, 4, 5]))
            refs = sorted({int(i * rng.random() ** 2.5) for _ in range(k)})
        nodes.append({"name": f"pkg{i:03d}", "refs": refs, "host": None})
    for h in HOSTS:
        first = len(nodes)
        for j in range(PER_HOST):
            own = list(range(first, len(nodes)))
            k = rng.choice([1, 2, 3, 4])
            refs = {int(SHARED * rng.random() ** 1.5) for _ in range(k)}
            if own and rng.random() < 0.6:
                refs.add(rng.choice(own))
            nodes.append({"name": f"{h}-svc{j:02d}", "refs": sorted(refs), "host": h})
    referred = {r for n in nodes for r in n["refs"]}
    # Every shared path is in every host's closure: the toplevels refer to the shared paths
    # no other shared path refers to (a NixOS system-path does much the same).
    shared_tops = [i for i in range(SHARED) if i not in {r for n in nodes[:SHARED] for r in n["refs"]}]
    for h in HOSTS:
        own_tops = [i for i, n in enumerate(nodes) if n["host"] == h and i not in referred]
        nodes.append(
            {"name": f"nixos-system-{h}", "refs": sorted(shared_tops + own_tops), "host": h, "top": True}
        )

    # Contents: the few big paths get most bytes; a quarter of the paths carry random data.
    n_content = SHARED + PER_HOST * len(HOSTS)
    elf_sizes = heavy_tailed_sizes(rng, n_content, ELF_BYTES)
    text_sizes = heavy_tailed_sizes(rng, n_content, TEXT_BYTES)
    rnd_idx = sorted(rng.sample(range(n_content), n_content // 4))
    rnd_sizes = dict(zip(rnd_idx, heavy_tailed_sizes(rng, len(rnd_idx), RANDOM_BYTES)))
    elf_pos, text_pos = [0], [0]
    planned = {"elf": 0, "text": 0, "random": 0}
    for i in range(n_content):
        files, got = take(elf, elf_pos, elf_sizes[i])
        nodes[i]["elf"] = files
        tfiles, tgot = take(text, text_pos, text_sizes[i])
        nodes[i]["text"] = tfiles
        nodes[i]["random"] = rnd_sizes.get(i, 0)
        planned["elf"] += got
        planned["text"] += tgot
        planned["random"] += nodes[i]["random"]

    # The nightly bump: one shared path whose referrers (transitively) are 12-18 % of all.
    referrers = {i: set() for i in range(len(nodes))}
    for i, n in enumerate(nodes):
        for r in n["refs"]:
            referrers[r].add(i)

    def affected(x):
        seen, todo = {x}, [x]
        while todo:
            for r in referrers[todo.pop()]:
                if r not in seen:
                    seen.add(r)
                    todo.append(r)
        return seen

    lo, hi = (int(f * len(nodes)) for f in BUMP_TARGET)
    bump = next(
        (x for x in range(SHARED // 3, SHARED) if lo <= len(affected(x)) <= hi),
        None,
    ) or min(range(1, SHARED), key=lambda x: abs(len(affected(x)) - (lo + hi) // 2))
    nodes[bump]["nightly"] = True
    bumped = affected(bump)

    lines = [
        "# Generated by tests/bench/genfleet.py: the publish benchmark's fleet. Do not edit.",
        f"{{ salt ? {nix_str(salt)}, nightly ? \"0\" }}:",
        "let",
        "  mk = { name, refs, script, nightly ? null }: derivation ({",
        "    inherit name salt refs;",
        '    system = "x86_64-linux";',
        '    builder = "/bin/sh";',
        '    args = [ "-c" script ];',
        "  } // (if nightly == null then {} else { inherit nightly; }));",
        "  common = ''",
        "    export PATH=/usr/bin:/bin",
        "    set -e",
        "    mkdir -p $out/bin $out/lib $out/share/doc $out/nix-support",
        "    echo \"$name $salt\" > $out/share/doc/VERSION",
        "    for r in $refs; do echo $r; done > $out/nix-support/propagated-build-inputs",
        "  '';",
        "  n = [",
    ]
    for i, n in enumerate(nodes):
        script = []
        for j, f in enumerate(n.get("elf", [])):
            dest = "lib" if (".so" in os.path.basename(f) or "/lib/" in f) else "bin"
            script.append(f"cp {sh_quote(f)} $out/{dest}/{j}-{os.path.basename(f)}")
        for j, f in enumerate(n.get("text", [])):
            script.append(f"cp {sh_quote(f)} $out/share/doc/{j}-{os.path.basename(f)}")
        if n.get("random"):
            script.append(
                f"head -c {n['random']} /dev/urandom > $out/share/data.bin"
            )
        if n.get("top"):
            script.append("set -- $refs; ln -s $1 $out/sw")
        body = "\n".join(script)
        refs = " ".join(f"(builtins.elemAt n {r})" for r in n["refs"])
        extra = " nightly = nightly;" if n.get("nightly") else ""
        lines.append(
            f"    (mk {{ name = {nix_str(n['name'])}; refs = [ {refs} ];{extra}"
            f" script = common + {nix_str(body)}; }})"
        )
    lines += [
        "  ];",
        "in {",
        "  hosts = builtins.genList (i: builtins.elemAt n (builtins.length n - 4 + i)) 4;",
        "}",
    ]
    text_out = "\n".join(lines) + "\n"
    with open(os.path.join(outdir, "fleet.nix"), "w") as f:
        f.write(text_out)

    # ~2,000 tiny paths: 20 derivations with 100 outputs each, each output referring to the
    # same-numbered output of the previous derivation (chains), all under one root.
    with open(os.path.join(outdir, "many.nix"), "w") as f:
        f.write(
            f"""# Generated by tests/bench/genfleet.py: ~2,000 tiny paths under one root.
{{ salt ? {nix_str(salt)} }}:
let
  outs = builtins.genList (i: "o${{toString i}}") 100;
  layer = k: prev: derivation {{
    name = "many-${{toString k}}";
    system = "x86_64-linux";
    builder = "/bin/sh";
    outputs = outs;
    inherit salt;
    prev = if prev == null then "" else map (o: prev.${{o}}) outs;
    args = [ "-c" ''
      export PATH=/usr/bin:/bin
      set -- $prev
      for o in $outputs; do
        eval "d=\\$$o"
        mkdir -p $d
        echo "$o ${{toString k}} $salt $1" > $d/file
        if [ $# -gt 0 ]; then shift; fi
      done
    '' ];
  }};
  layers = builtins.foldl' (acc: k: acc ++ [ (layer k (if acc == [] then null else builtins.elemAt acc (k - 1))) ]) [] (builtins.genList (k: k) 20);
  last = builtins.elemAt layers 19;
in derivation {{
  name = "many-root";
  system = "x86_64-linux";
  builder = "/bin/sh";
  inherit salt;
  refs = map (o: last.${{o}}) outs;
  args = [ "-c" "export PATH=/usr/bin:/bin; echo $refs > $out" ];
}}
"""
        )

    # One path with a 1 GiB NAR: real ELF files (repeated) and random data.
    big_elf = [p for p, s in elf[:400]]
    with open(os.path.join(outdir, "big.nix"), "w") as f:
        f.write(
            f"""# Generated by tests/bench/genfleet.py: one path with a ~1 GiB NAR.
{{ salt ? {nix_str(salt)} }}:
derivation {{
  name = "big-1g";
  system = "x86_64-linux";
  builder = "/bin/sh";
  inherit salt;
  files = [ {" ".join(nix_str(p) for p in big_elf)} ];
  args = [ "-c" ''
    export PATH=/usr/bin:/bin
    set -e
    mkdir -p $out/lib
    head -c 400000000 /dev/urandom > $out/data.bin
    i=0; total=400000000
    while [ $total -lt 1073741824 ]; do
      for f in $files; do
        cp $f $out/lib/$i-$(basename $f); i=$((i+1)); total=$((total + $(stat -c %s $f)))
        [ $total -lt 1073741824 ] || break
      done
    done
  '' ];
}}
"""
        )

    with open(os.path.join(outdir, "fleet.json"), "w") as f:
        json.dump(
            {
                "paths": len(nodes),
                "shared": SHARED,
                "per_host": PER_HOST,
                "hosts": HOSTS,
                "planned_bytes": planned,
                "bump": nodes[bump]["name"],
                "bumped_paths": len(bumped),
            },
            f,
            indent=1,
        )


if __name__ == "__main__":
    main()
