#!/usr/bin/env python3
"""Turns the publish benchmark's samples into the Markdown tables of BENCHMARKS.md.

    report.py results.tsv facts.env

results.tsv: NAME REP SECONDS PEAK_RSS_KIB LOAD1 CPU_SECONDS (one line per sample; CPU of the
process tree, or of the whole machine for the floor_* samples).
"""

import statistics
import sys
from collections import defaultdict

samples = defaultdict(list)
for line in open(sys.argv[1]):
    name, rep, secs, rss, load, cpu = line.rstrip("\n").split("\t")
    samples[name].append((float(secs), int(rss), float(load), float(cpu)))
facts = {}
for line in open(sys.argv[2]):
    if "=" in line:
        k, v = line.rstrip("\n").split("=", 1)
        facts[k] = v.strip()


def med(name, i=0):
    xs = [s[i] for s in samples.get(name, [])]
    return statistics.median(xs) if xs else None


def cell(name):
    xs = sorted(s[0] for s in samples.get(name, []))
    if not xs:
        return "–"
    m = statistics.median(xs)
    fmt = (lambda x: f"{x:.3f}") if m < 1 else (lambda x: f"{x:.2f}") if m < 10 else (lambda x: f"{x:.1f}")
    spread = f" ({fmt(xs[0])}–{fmt(xs[-1])})" if len(xs) > 1 else " (1 run)"
    return f"{fmt(m)} s{spread}"


def load(*names):
    xs = [s[2] for n in names for s in samples.get(n, [])]
    return f"{statistics.median(xs):.1f}" if xs else "–"


def ratio(a, b):
    x, y = med(a), med(b)
    return f"{x / y:.2f}×" if x and y else "–"


def verdict(ok):
    return "met" if ok else "**missed**"


def mb(n):
    return f"{int(n) / 1e6:.0f} MB" if n else "?"


out = []
p = out.append
f = facts
p(f"Fleet: {f.get('old_paths')} paths, {mb(f.get('old_bytes'))} of NAR; per-host closures "
  f"{f.get('per_host', '').strip()} paths, {f.get('shared')} paths in all four. Nightly bump: "
  f"{f.get('delta_paths')} new paths, {mb(f.get('delta_bytes'))} of NAR. "
  f"Median of {f.get('reps')} runs (min–max in parentheses); zstd level 3 unless noted.")
p("")
p("| case | farmctl publish (SFTP) | nix copy → local dir | nix copy → sshfs | rsync -a of a ready cache | farmctl ÷ nix local | farmctl ÷ sshfs | farmctl ÷ rsync | load |")
p("|---|---|---|---|---|---|---|---|---|")
for label, fa, nl, ns, rs in [
    ("loopback, full", "farm_full_lo", "nix_full_local", "nix_full_sshfs_lo", None),
    ("loopback, incremental", "farm_incr_lo", "nix_incr_local", "nix_incr_sshfs_lo", None),
    ("loopback, no-op", "farm_noop_lo", "nix_noop_local", "nix_noop_sshfs_lo", None),
    (f"{f.get('rtt_ms') or '~20'} ms RTT, full", "farm_full_wan", None, "nix_full_sshfs_wan", "rsync_full_wan"),
    (f"{f.get('rtt_ms') or '~20'} ms RTT, incremental", "farm_incr_wan", None, "nix_incr_sshfs_wan", "rsync_incr_wan"),
    (f"{f.get('rtt_ms') or '~20'} ms RTT, no-op", "farm_noop_wan", None, "nix_noop_sshfs_wan", "rsync_noop_wan"),
]:
    if fa not in samples:
        continue
    names = [n for n in (fa, nl, ns, rs) if n]
    p(f"| {label} | {cell(fa)} | {cell(nl) if nl else '–'} | {cell(ns)} | {cell(rs) if rs else '–'} "
      f"| {ratio(fa, nl) if nl else '–'} | {ratio(fa, ns)} | {ratio(fa, rs) if rs else '–'} | {load(*names)} |")
if "farm_xz_lo" in samples:
    p(f"| loopback, xz 6, subset: {f.get('xz_paths')} paths, {mb(f.get('xz_bytes'))} | {cell('farm_xz_lo')} "
      f"| {cell('nix_xz_local')} | – | – | {ratio('farm_xz_lo', 'nix_xz_local')} | – | – | {load('farm_xz_lo', 'nix_xz_local')} |")
p("")

p("| target | measured | |")
p("|---|---|---|")
r = lambda a, b: (med(a) / med(b)) if med(a) and med(b) else None
if (x := r("farm_full_lo", "nix_full_local")) is not None:
    p(f"| loopback full ≤ 0.5× `nix copy` to a local dir (zstd 3) | {x:.2f}× | {verdict(x <= 0.5)} |")
if (x := r("nix_xz_local", "farm_xz_lo")) is not None:
    p(f"| xz: ≥ 2× faster than `nix copy` at xz | {x:.1f}× faster | {verdict(x >= 2)} |")
if (x := r("farm_full_wan", "rsync_full_wan")) is not None:
    p(f"| 20 ms RTT full ≤ 2× `rsync -a` of a ready cache | {x:.2f}× | {verdict(x <= 2)} |")
if (x := med("farm_noop_wan")) is not None:
    p(f"| 20 ms RTT no-op ≤ 1 s | {x:.2f} s | {verdict(x <= 1)} |")
if (x := med("farm_incr_wan")) is not None:
    p(f"| 20 ms RTT incremental ≤ 3 s | {x:.2f} s | {verdict(x <= 3)} |")
if (x := med("farm_many_noop")) is not None:
    ssh = med("ssh_connect_lo")
    p(f"| no-op of {f.get('many_paths')} paths ≤ 0.1 s + one SSH connection ({ssh:.3f} s) "
      f"| {x:.3f} s (= ssh + {x - ssh:.3f} s) | {verdict(x <= 0.1 + ssh)} |")
if (x := med("farm_big_lo", 1)) is not None:
    p(f"| peak RSS ≤ 100 MiB publishing one {mb(f.get('big_bytes'))} NAR | {x / 1024:.0f} MiB "
      f"(publish took {med('farm_big_lo'):.1f} s) | {verdict(x / 1024 <= 100)} |")
p("")

extra = []
if "farm_full_lo" in samples and "nix_full_local" in samples:
    extra.append(f"CPU (user+sys) of the client process tree, loopback full: farmctl {med('farm_full_lo', 3):.2f} s "
                 f"(without its ssh child and the server's sshd/sftp-server), nix copy to a local dir "
                 f"{med('nix_full_local', 3):.2f} s")
if "farm_full_lo" in samples:
    extra.append(f"peak RSS of farmctl publishing the whole fleet on loopback: {med('farm_full_lo', 1) / 1024:.0f} MiB")
floor = ["floor_zstd", "floor_sha_nar", "floor_sha_file", "floor_ssh"]
if all(n in samples for n in floor) and "nix_full_local_floor" in samples:
    cpu = sum(med(n, 3) for n in floor)
    cores = int(f.get("cpus") or 1)
    nix = med("nix_full_local_floor")
    parts = ", ".join(f"{n.removeprefix('floor_')} {med(n, 3):.2f} s" for n in floor)
    extra.append(f"floor of a loopback publish on this machine: its pieces alone take {cpu:.2f} s of "
                 f"CPU ({parts}; whole-machine CPU, sshd included; NAR serialisation left out), so at "
                 f"best {cpu / cores:.2f} s on {cores} cores = {cpu / cores / nix:.2f}× `nix copy` to a "
                 f"local dir measured alongside ({nix:.2f} s; its own CPU {med('nix_full_local_floor', 3):.2f} s)")
if "farm_full_wan_jobs8" in samples:
    extra.append(f"full publish at {f.get('rtt_ms')} ms RTT with `jobs = 8` (8 large, 128 small NARs in flight): "
                 f"{cell('farm_full_wan_jobs8')}, {ratio('farm_full_wan_jobs8', 'rsync_full_wan')} rsync")
if "ssh_connect_wan" in samples:
    extra.append(f"one SSH connection at {f.get('rtt_ms')} ms RTT: {med('ssh_connect_wan'):.3f} s")
if "nix_path_info_many" in samples:
    extra.append(f"`nix path-info --json -r` of the {f.get('many_paths')}-path closure (farmctl runs it too): "
                 f"{med('nix_path_info_many'):.3f} s")
for e in extra:
    p(f"- {e}")
p("")
p(f"Machine: {f.get('cpus')} × {f.get('cpu')}, {f.get('mem')} RAM, Linux {f.get('kernel')}, {f.get('nix')}.")
print("\n".join(out))
