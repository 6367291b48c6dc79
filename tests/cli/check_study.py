"""The ablation pipeline end to end on a handful of examples: `blockdiff study` on the embedded
models must print its table and write a CSV with every row it should have, whose figures agree
with each other (tokens per forward = new tokens / denoising forwards, and so on)."""
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile

exe, models = sys.argv[1], sys.argv[2]
out = tempfile.mkdtemp()
run = subprocess.run([exe, "study", "--ar-model", f"{models}/tasks-ar", "--model", f"{models}/tasks-fdllm2", "--n", "6", "--repeats", "2",
                      "--batch", "3", "--out", out, "--no-plot"], capture_output=True, text=True)
failures = []
if run.returncode != 0:
    print(run.stdout, run.stderr)
    sys.exit(1)
rows = list(csv.DictReader(open(f"{out}/study.csv")))
groups = {}
for r in rows:
    groups.setdefault(r["group"], []).append(r)
expect = {"baseline": 2, "threshold x cache": 18, "sub-block (Table 3)": 8, "block mismatch (Table 4)": 10, "policy": 6, "commit forward": 8}
for g, n in expect.items():
    if len(groups.get(g, [])) != n:
        failures.append(f"group {g!r}: {len(groups.get(g, []))} rows, expected {n}")
caches = {(r["cache"], r["knob"]) for r in groups.get("threshold x cache", [])}
for c in ("none", "block", "hierarchical"):
    for t in ("0.50", "0.70", "0.80", "0.90", "0.95", "1.00"):
        if (c, t) not in caches:
            failures.append(f"missing threshold {t} with cache {c}")
ar_tps = float(rows[0]["tokens_per_second"])
for r in rows:
    n, new, den, tot = int(r["n"]), int(r["new_tokens"]), int(r["denoising_forwards"]), int(r["total_forwards"])
    name = f"{r['group']}/{r['decoder']}/{r['knob']}/{r['block']}/{r['sub_block']}/{r['cache']}"
    if n != 6:
        failures.append(f"{name}: n = {n}")
    if not 0 <= float(r["accuracy"]) <= 1 or not abs(float(r["accuracy"]) * n - round(float(r["accuracy"]) * n)) <= 1e-4:
        failures.append(f"{name}: accuracy {r['accuracy']} is not a count over {n}")
    if den == 0 or not abs(float(r["tokens_per_forward"]) - new / den) <= 1e-3 * new / den:
        failures.append(f"{name}: tokens per forward {r['tokens_per_forward']} != {new} / {den}")
    if not abs(float(r["forwards_per_token"]) - tot / new) <= 1e-3 * tot / new:
        failures.append(f"{name}: forwards per token {r['forwards_per_token']} != {tot} / {new}")
    if not abs(float(r["tokens_per_second"]) - new / float(r["seconds"])) <= 1e-3 * new / float(r["seconds"]):
        failures.append(f"{name}: tokens/s inconsistent with new tokens and seconds")
    if not abs(float(r["speedup_vs_ar"]) - float(r["tokens_per_second"]) / ar_tps) <= 1e-3:
        failures.append(f"{name}: speed-up inconsistent with the AR row")
    if r["decoder"] == "threshold" and r["knob"] == "1.00" and new > tot:
        # Threshold 1.0 commits one token per denoising forward, and a prefill or commit forward at
        # most one (the next block's first token); tokens past an EOS are cut.
        failures.append(f"{name}: threshold 1.0 gave {new} tokens from {den} denoising of {tot} forwards")
    if tot < den:
        failures.append(f"{name}: fewer forwards in all than denoising forwards")
    if r["commit"] not in (("-",) if r["decoder"] == "ar" else ("forward", "reuse")):
        failures.append(f"{name}: commit mode {r['commit']!r}")
    if r["commit"] == "reuse" and tot - den > n:
        # Without the commit forward, the only forwards that are not denoising ones are the
        # prefills, at most one per example.
        failures.append(f"{name}: no commit forward, yet {tot - den} non-denoising forwards for {n} examples")
commit = groups.get("commit forward", [])
for c in ("block", "hierarchical"):
    for t in ("0.90", "1.00"):
        modes = {r["commit"] for r in commit if r["cache"] == c and r["knob"] == t}
        if modes != {"forward", "reuse"}:
            failures.append(f"commit forward group, cache {c}, threshold {t}: modes {sorted(modes)}")
# The multiple-choice rows: each model scored both ways, zero-shot and 3-shot, the same counts as
# eval --choices gives for each.
choices = list(csv.DictReader(open(f"{out}/choices.csv")))
keys = [(r["model"], r["scoring"], r["shots"]) for r in choices]
if sorted(keys) != sorted((m, s, k) for m in ("ar-base", "fdllm2") for s in ("causal", "first-token") for k in ("0", "3")):
    failures.append(f"choices.csv rows: {keys}")
for r in choices:
    name = f"choices {r['model']}/{r['scoring']}/{r['shots']}"
    if int(r["n"]) != 6 or not abs(float(r["accuracy"]) * 6 - int(r["correct"])) <= 1e-6:
        failures.append(f"{name}: accuracy {r['accuracy']}, {r['correct']} of {r['n']}")
    if r["block"] != ("0" if r["scoring"] == "causal" else "8"):
        failures.append(f"{name}: block {r['block']}")
    model = "tasks-ar" if r["model"] == "ar-base" else "tasks-fdllm2"
    e = subprocess.run([exe, "eval", "--model", f"{models}/{model}", "--choices", "4", "--n", "6", "--batch", "3",
                        "--shots", r["shots"], *(["--ar"] if r["scoring"] == "causal" else []), "--json"],
                       capture_output=True, text=True)
    got = json.loads(e.stdout) if e.returncode == 0 else {"error": e.stderr.strip()}
    if any(str(got.get(f)) != r[f] for f in ("correct", "tied", "forwards", "positions")):
        failures.append(f"{name}: {r}, eval --choices gives {got}")
for line in ("group", "baseline", "threshold x cache", "policy", "commit forward", "multiple choice of 4"):
    if line not in run.stdout:
        failures.append(f"the printed table lacks {line!r}")
# eval decodes one configuration as the study does: the same counts as the study's row, and its
# JSON names the policy's own parameters at the decimal given. Without --block and --sub-block it
# decodes at the model's block (config.json's bd_size, 8) in sub-blocks of 4, as the study does.
def evaluate(*flags):
    e = subprocess.run([exe, "eval", "--model", f"{models}/tasks-fdllm2", "--n", "6", "--batch", "3", *flags, "--json"],
                       capture_output=True, text=True)
    return json.loads(e.stdout) if e.returncode == 0 else {"error": e.stderr.strip()}
if json.load(open(f"{models}/tasks-fdllm2/config.json"))["bd_size"] != 8:
    failures.append("models/tasks-fdllm2 was not trained with blocks of 8; the checks below assume it")
for flags, decoder, knob, params in ((["--cache", "block", "--threshold", "0.9"], "threshold", "0.90", {"threshold": 0.9}),
                                     (["--cache", "hierarchical", "--unmask", "topk", "--k", "2", "--block", "8",
                                       "--sub-block", "4"], "topk", "k=2", {"k": 2})):
    got = evaluate(*flags)
    if (got.get("block"), got.get("sub_block")) != (8, 4):
        failures.append(f"eval {' '.join(flags)}: block/sub-block {got.get('block')}/{got.get('sub_block')}, not 8/4")
    row = [r for r in rows if r["decoder"] == decoder and r["knob"] == knob and r["cache"] == flags[1] and
           r["block"] == "8" and r["sub_block"] == "4" and r["commit"] == "forward"]
    if not row or any(str(got.get(f)) != row[0][f] for f in ("new_tokens", "denoising_forwards", "total_forwards")) or \
            abs(got.get("accuracy", -1) - float(row[0]["accuracy"])) > 1e-9:
        failures.append(f"eval {' '.join(flags)}: {got}, the study's row {row[:1]}")
    if any(got.get(k) != v for k, v in params.items()) or ("threshold" in got) != ("threshold" in params):
        failures.append(f"eval {' '.join(flags)}: the policy's parameters in {got}, expected {params}")
# Counts that leave nothing to score are refused by name (--max-new-tokens 0 scored 0%, quietly).
study_models = ["--ar-model", f"{models}/tasks-ar"]
for command, flag in (("eval", "--n"), ("eval", "--batch"), ("eval", "--max-new-tokens"), ("study", "--batch")):
    bad = subprocess.run([exe, command, "--model", f"{models}/tasks-fdllm2", *(study_models if command == "study" else []),
                          "--n", "1", flag, "0"], capture_output=True, text=True)
    if bad.returncode == 0 or f"{flag}: must be a positive integer, got 0" not in bad.stderr:
        failures.append(f"{command} {flag} 0: exit {bad.returncode}, {bad.stderr.strip()!r}")
# AR decoding has no block or policy: a block-diffusion flag beside --ar is refused, not ignored.
bad = subprocess.run([exe, "eval", "--model", f"{models}/tasks-ar", "--n", "1", "--ar", "--block", "8"],
                     capture_output=True, text=True)
if bad.returncode == 0 or "--ar excludes --block" not in bad.stderr:
    failures.append(f"eval --ar --block 8: exit {bad.returncode}, {bad.stderr.strip()!r}")
# Nor is a parameter beside a policy that does not read it (it would be ignored).
bad = subprocess.run([exe, "eval", "--model", f"{models}/tasks-fdllm2", "--n", "1", "--unmask", "topk", "--threshold", "0.5"],
                     capture_output=True, text=True)
if bad.returncode == 0 or "--threshold is read by --unmask threshold" not in bad.stderr:
    failures.append(f"eval --unmask topk --threshold 0.5: exit {bad.returncode}, {bad.stderr.strip()!r}")

# A study at a shape outside part of the compiled set runs what is compiled and lists the rest:
# the other policies and --no-commit are compiled at block/sub-block 32/8 and 8/4 only
# (examples/compiled_set.hpp), so at 8/2 the six policy rows and the four no-commit rows are
# skipped, and every threshold row still runs.
# It also plots, into a folder whose name needs quoting for the shell and for gnuplot.
out2 = os.path.join(tempfile.mkdtemp(), "it's a study")
run2 = subprocess.run([exe, "study", "--ar-model", f"{models}/tasks-ar", "--model", f"{models}/tasks-fdllm2", "--n", "2",
                       "--repeats", "1", "--block", "8", "--sub-block", "2", "--out", out2],
                      capture_output=True, text=True)
svg = os.path.join(out2, "study.svg")
if run2.returncode == 0 and shutil.which("gnuplot") and not (os.path.exists(svg) and os.path.getsize(svg) > 0):
    failures.append(f"study --out {out2!r}: no plot, stdout {run2.stdout.strip()[-200:]!r}")
if run2.returncode != 0:
    failures.append(f"study at sub-block 2: exit {run2.returncode}, {run2.stderr.strip()[-300:]!r}")
else:
    got = {}
    for r in csv.DictReader(open(f"{out2}/study.csv")):
        got[r["group"]] = got.get(r["group"], 0) + 1
        if r["device"] != "host" or (r["decoder"] != "ar" and r["sub_block"] != str(min(2, int(r["block"])))
                                     and r["group"] != "sub-block (Table 3)"):
            failures.append(f"study at sub-block 2: row {r}")
    want = {"baseline": 2, "threshold x cache": 18, "sub-block (Table 3)": 8, "block mismatch (Table 4)": 10,
            "commit forward": 4}
    if got != want:
        failures.append(f"study at sub-block 2: groups {got}, expected {want}")
    listed = run2.stdout[run2.stdout.find("skipped"):]
    skipped = [line for line in listed.split("\n\n")[0].split("\n")[1:] if line.strip()]  # up to a blank line
    if len(skipped) != 10 or sum("no-commit" in line for line in skipped) != 4 or \
            sum(line.startswith("policy") for line in skipped) != 6:
        failures.append(f"study at sub-block 2: the skipped list {skipped}")
    if run2.stderr.count("study: skipping") != 10 or "compiled for block/sub-block 32/8, 8/4 only" not in run2.stderr:
        failures.append(f"study at sub-block 2: stderr does not say why each row is skipped")

# A shape that is not compiled at all is refused before anything is decoded (no progress line,
# no CSV); --device cuda decodes on a GPU where one is visible, and is refused, saying why, elsewhere.
out3 = tempfile.mkdtemp()
bad = subprocess.run([exe, "study", "--ar-model", f"{models}/tasks-ar", "--model", f"{models}/tasks-fdllm2", "--n", "2",
                      "--block", "12", "--out", f"{out3}/x"], capture_output=True, text=True)
if bad.returncode == 0 or "--block 12 is not compiled in" not in bad.stderr or "[1/" in bad.stderr or \
        os.path.exists(f"{out3}/x"):
    failures.append(f"study --block 12: exit {bad.returncode}, {bad.stderr.strip()!r}")
# An --out that cannot be a folder is refused before anything is decoded, not after.
open(f"{out3}/file", "w").close()
bad = subprocess.run([exe, "study", "--ar-model", f"{models}/tasks-ar", "--model", f"{models}/tasks-fdllm2", "--n", "2",
                      "--out", f"{out3}/file"], capture_output=True, text=True)
if bad.returncode == 0 or "cannot be made a folder" not in bad.stderr or "[1/" in bad.stderr:
    failures.append(f"study --out FILE: exit {bad.returncode}, {bad.stderr.strip()!r}")
gpu = subprocess.run([exe, "study", "--ar-model", f"{models}/tasks-ar", "--model", f"{models}/tasks-fdllm2", "--n", "6",
                      "--repeats", "1", "--batch", "3", "--device", "cuda", "--out", f"{out3}/cuda", "--no-plot"],
                     capture_output=True, text=True)
if gpu.returncode == 0:
    # The GPU's set (threshold at 32/8 and 8/4) decodes the same tokens as the host on these f32 models.
    host = {(r["group"], r["decoder"], r["knob"], r["block"], r["sub_block"], r["cache"], r["commit"]): r for r in rows}
    for r in csv.DictReader(open(f"{out3}/cuda/study.csv")):
        key = (r["group"], r["decoder"], r["knob"], r["block"], r["sub_block"], r["cache"], r["commit"])
        h = host.get(key)
        if r["device"] != "cuda" or h is None or any(r[f] != h[f] for f in ("accuracy", "new_tokens", "total_forwards")):
            failures.append(f"study --device cuda: {key} differs from the host's")
elif not any(cause in gpu.stderr for cause in ("no CUDA device", "built without the CUDA backend")) or "[1/" in gpu.stderr:
    failures.append(f"study --device cuda without a GPU: exit {gpu.returncode}, {gpu.stderr.strip()!r}")

for f in failures:
    print("FAIL:", f)
print(f"study: {len(rows)} rows, {len(failures)} failures")
sys.exit(1 if failures else 0)
