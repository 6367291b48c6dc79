"""The blockdiff program's JSON contract, checked against the golden vectors.

logits, ar and generate are run as an outside tool would run them; their output must match the
golden files (logits to 2e-5 relative, tokens and forward counts exactly), and bad input must
exit non-zero with a message that names the problem.
"""
import array
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile

exe, golden = sys.argv[1], sys.argv[2]
failures = []


def largest_difference(xs, ys):
    """max |x - y|, infinite where a difference is not a number (max() would pass over it)."""
    differences = [abs(x - y) for x, y in zip(xs, ys)]
    return math.inf if any(math.isnan(d) for d in differences) else max(differences, default=0.0)


def run(*args, stdin=None, cwd=None):
    return subprocess.run([exe, *args], capture_output=True, text=True, input=stdin, cwd=cwd)


def read_safetensors(path):
    blob = open(path, "rb").read()
    n = struct.unpack("<Q", blob[:8])[0]
    return json.loads(blob[8:8 + n]), blob[8 + n:]


# The BF16 golden model also with --weights bf16: the same values held in BF16, the same logits.
for model, weights in (("f32-tied", "f32"), ("bf16-untied", "f32"), ("bf16-untied", "bf16")):
    for mask in ("causal", "block-causal"):
        header, data = read_safetensors(f"{golden}/logits-{model}-{mask}.safetensors")
        ids = json.loads(header["__metadata__"]["ids"])
        begin, end = header["logits"]["data_offsets"]
        ref = array.array("f")
        ref.frombytes(data[begin:end])
        args = ["logits", "--model", f"{golden}/model-{model}", "--weights", weights, "--ids", ",".join(map(str, ids)),
                "--mask", mask, "--json"]
        if mask == "block-causal":
            args += ["--block", header["__metadata__"].get("block", "8")]
        out = run(*args)
        got = [x for row in json.loads(out.stdout)["logits"] for x in row]
        err = largest_difference(got, ref) / max(abs(x) for x in ref)
        if len(got) != len(ref) or err > 2e-5:
            failures.append(f"logits {model} {mask} --weights {weights}: relative error {err}")

# --weights bf16 takes effect: the f32 golden model's weights are rounded to BF16, so its logits
# move away from the golden ones (by about 3% of their range), but not far.
header, data = read_safetensors(f"{golden}/logits-f32-tied-causal.safetensors")
ids = json.loads(header["__metadata__"]["ids"])
ref = array.array("f")
ref.frombytes(data[header["logits"]["data_offsets"][0]:header["logits"]["data_offsets"][1]])
out = run("logits", "--model", f"{golden}/model-f32-tied", "--weights", "bf16", "--ids", ",".join(map(str, ids)), "--json")
got = [x for row in json.loads(out.stdout)["logits"] for x in row]
err = largest_difference(got, ref) / max(abs(x) for x in ref)
if len(got) != len(ref) or not 1e-3 < err < 0.1:
    failures.append(f"logits f32-tied --weights bf16: relative error {err}, expected the BF16 rounding's (1e-3 to 0.1)")

# --weights bf16-products: the BF16 golden model with its activations rounded to BF16 in products of
# several rows. On a CPU with AVX512-BF16 the logits move by about what rounding the weights does
# (5% of their range here), elsewhere the flag changes nothing.
header, data = read_safetensors(f"{golden}/logits-bf16-untied-causal.safetensors")
ids = json.loads(header["__metadata__"]["ids"])
ref = array.array("f")
ref.frombytes(data[header["logits"]["data_offsets"][0]:header["logits"]["data_offsets"][1]])
out = run("logits", "--model", f"{golden}/model-bf16-untied", "--weights", "bf16-products", "--ids",
          ",".join(map(str, ids)), "--json")
got = [x for row in json.loads(out.stdout)["logits"] for x in row]
err = largest_difference(got, ref) / max(abs(x) for x in ref)
has_bf16_dot = "BLOCKDIFF_NO_AVX512" not in os.environ and any(
    "avx512_bf16" in line.split() for line in open("/proc/cpuinfo") if line.startswith("flags"))
if len(got) != len(ref) or not (1e-3 < err < 0.1 if has_bf16_dot else err <= 2e-5):
    failures.append(f"logits bf16-untied --weights bf16-products: relative error {err} "
                    f"(AVX512-BF16 {'present' if has_bf16_dot else 'absent'})")

for line in open(f"{golden}/ar.jsonl"):
    g = json.loads(line)
    out = json.loads(run("ar", "--model", f"{golden}/{g['model']}", "--prompt-ids", ",".join(map(str, g["prompt_ids"])),
                         "--max-new-tokens", str(g["max_new_tokens"]), "--json").stdout)
    if out["tokens"] != g["tokens"] or out["nfe"] != g["nfe"]:
        failures.append(f"ar {g['prompt_ids'][:3]}...: {out['nfe']} vs {g['nfe']}")

# --device cuda: where a GPU is visible, the golden cases of the GPU's compiled set (block/sub-block
# 32/8, f32 weights) must decode the same there; elsewhere it must fail and say why.
probe = run("generate", "--model", f"{golden}/model-f32-tied", "--prompt-ids", "1,2", "--max-new-tokens", "4",
            "--device", "cuda", "--json")
gpu = probe.returncode == 0
if not gpu and not any(cause in probe.stderr for cause in ("no CUDA device", "built without the CUDA backend")):
    failures.append(f"generate --device cuda without a GPU: exit {probe.returncode}, stderr {probe.stderr.strip()!r}")

# ar and logits take --device too, failing as generate does where there is no GPU (chat: check_text.py);
# on a GPU, ar's golden cases and the logits of the f32 golden model (within f32 rounding).
tied = f"{golden}/model-f32-tied"
for args, stdin in ((["ar", "--model", tied, "--prompt-ids", "1,2", "--max-new-tokens", "4", "--json"], None),
                    (["logits", "--model", tied, "--ids", "1,2", "--json"], None),
                    (["logits", "--model", tied, "--ids", "1,2", "--mask", "block-causal", "--block", "8", "--json"], None)):
    r = run(*args, "--device", "cuda", stdin=stdin)
    if (r.returncode == 0) != gpu or (not gpu and not any(cause in r.stderr for cause in
                                                           ("no CUDA device", "built without the CUDA backend"))):
        failures.append(f"{args[0]} --device cuda: exit {r.returncode} where generate's was {probe.returncode}, "
                        f"stderr {r.stderr.strip()!r}")
if gpu:
    for line in open(f"{golden}/ar.jsonl"):
        g = json.loads(line)
        out = json.loads(run("ar", "--model", f"{golden}/{g['model']}", "--prompt-ids", ",".join(map(str, g["prompt_ids"])),
                             "--max-new-tokens", str(g["max_new_tokens"]), "--device", "cuda", "--json").stdout)
        if out["tokens"] != g["tokens"] or out["nfe"] != g["nfe"]:
            failures.append(f"ar --device cuda {g['prompt_ids'][:3]}...: {out['nfe']} vs {g['nfe']}")
    ids = ",".join(str((7 * i + 3) % 200) for i in range(24))
    host, cuda = ([x for row in json.loads(run("logits", "--model", tied, "--ids", ids, "--device", device, "--json").stdout)["logits"]
                   for x in row] for device in ("host", "cuda"))
    err = largest_difference(host, cuda) / max(abs(a) for a in host)
    if len(host) != len(cuda) or err > 2e-5:
        failures.append(f"logits --device cuda against --device host: relative error {err}")

# The GPU's side is a module that the program opens only for --device cuda (examples/device.hpp):
# the program itself starts without the CUDA libraries, and without its module it still runs on
# the host, while --device cuda names the module it cannot load.
dynamic = subprocess.run(["readelf", "-d", exe], capture_output=True, text=True).stdout
if "(NEEDED)" not in dynamic or any(lib in dynamic for lib in ("libcudart", "libcublas")):
    failures.append("the program needs the CUDA libraries to start (readelf -d); they belong to its GPU module")
if os.path.exists(os.path.join(os.path.dirname(exe), "blockdiff-cuda.so")):
    alone = tempfile.mkdtemp()
    lonely = shutil.copy(exe, alone)
    host = subprocess.run([lonely, "logits", "--model", tied, "--ids", "1,2", "--json"], capture_output=True, text=True)
    cuda = subprocess.run([lonely, "logits", "--model", tied, "--ids", "1,2", "--device", "cuda"], capture_output=True,
                          text=True)
    shutil.rmtree(alone)
    if host.returncode != 0:
        failures.append(f"the program without its GPU module, on the host: exit {host.returncode}, {host.stderr.strip()!r}")
    if cuda.returncode == 0 or "blockdiff-cuda.so" not in cuda.stderr:
        failures.append(f"--device cuda without the GPU module: exit {cuda.returncode}, {cuda.stderr.strip()!r}")

count = 0
generate_runs = [(json.loads(line), "f32", "host") for line in open(f"{golden}/generate.jsonl")]
generate_runs += [(g, "bf16", "host") for g, _, _ in generate_runs if "bf16" in g["model"]]
if gpu:
    generate_runs += [(g, "f32", "cuda") for g, w, _ in generate_runs if w == "f32" and (g["block"], g["sub_block"]) == (32, 8)]
for g, weights, device in generate_runs:
    out = json.loads(run("generate", "--model", f"{golden}/{g['model']}", "--weights", weights, "--prompt-ids",
                         ",".join(map(str, g["prompt_ids"])), "--block", str(g["block"]), "--sub-block", str(g["sub_block"]),
                         "--threshold", str(g["threshold"]), "--cache", g["cache"], "--eos-id", str(g["eos_id"]),
                         "--max-new-tokens", str(g["max_new_tokens"]), "--device", device, "--json").stdout)
    count += 1
    nfe = dict(g["nfe"])
    # The golden counts include the last block's commit forward, whose token lies past max_new_tokens.
    ok = out["tokens"] == g["tokens"] and all(out["nfe"][k] == nfe[k] for k in ("prefill", "block", "sub_block")) \
        and nfe["commit"] - out["nfe"]["commit"] in (0, 1)
    denoise = out["nfe"]["block"] + out["nfe"]["sub_block"]
    ok = ok and abs(out["tokens_per_forward"] - len(out["tokens"]) / denoise) < 1e-9
    if not ok:
        failures.append(f"generate case {count} (--weights {weights}, --device {device}): {out['nfe']} vs {nfe}")

# A batch file: each row as alone.
with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
    f.write("[41, 48, 55]\n\n[128, 135, 142, 149, 156, 163, 170, 177]\n")
    batch_file = f.name
batch = json.loads(run("generate", "--model", f"{golden}/model-f32-tied", "--prompt-file", batch_file, "--block", "8",
                       "--sub-block", "4", "--max-new-tokens", "12", "--json").stdout)
for i, prompt in enumerate(["41,48,55", "128,135,142,149,156,163,170,177"]):
    alone = json.loads(run("generate", "--model", f"{golden}/model-f32-tied", "--prompt-ids", prompt, "--block", "8",
                           "--sub-block", "4", "--max-new-tokens", "12", "--json").stdout)
    if alone["tokens"] != batch[i]["tokens"]:
        failures.append(f"batch row {i} differs from the row alone")

# A block other than the one the model was trained with decodes, with a note that says so.
for block, noted in (("8", True), ("32", False)):
    r = run("generate", "--model", f"{golden}/model-f32-tied", "--prompt-ids", "1,2", "--block", block, "--max-new-tokens", "4")
    said = "note: --block 8 is not the block the model was trained with (config.json bd_size 32)" in r.stderr
    if r.returncode != 0 or said != noted or (not noted and r.stderr):
        failures.append(f"generate --block {block} on a bd_size 32 model: exit {r.returncode}, {r.stderr.strip()!r}")

with open(batch_file, "w") as f:
    f.write("[1, 2]\n[3, oops]\n")
bad_cases = [
    (["generate", "--model", f"{golden}/model-f32-tied", "--prompt-ids", "1,2", "--block", "12"], "--block 12 is not compiled in"),
    (["generate", "--model", f"{golden}/model-f32-tied", "--prompt-ids", "1,2", "--block", "8", "--sub-block", "3"], "--sub-block 3"),
    (["generate", "--model", f"{golden}/model-f32-tied", "--prompt-ids", "1,2", "--unmask", "topk", "--block", "8", "--sub-block", "2"],
     "add the shape in examples/compiled_set.hpp"),
    (["generate", "--model", f"{golden}/model-f32-tied", "--prompt-ids", "1,2", "--threshold", "1.5"], "outside [0, 1]"),
    (["generate", "--model", f"{golden}/model-f32-tied", "--prompt-ids", "1,2", "--unmask", "topk", "--k", "0"], "k must be >= 1"),
    (["generate", "--model", f"{golden}/model-f32-tied", "--prompt-ids", "1,319"], "contains the mask id 319"),
    (["generate", "--model", f"{golden}/model-f32-tied", "--prompt-ids", "1,2", "--eos-id", "999"], "EOS id 999"),
    (["generate", "--model", f"{golden}/model-f32-tied", "--prompt-file", batch_file], "line 2"),
    (["ar", "--model", f"{golden}/model-f32-tied", "--prompt-ids", "1,x"], "\"x\" is not an integer"),
    (["ar", "--model", f"{golden}/model-f32-tied", "--prompt-ids", "1", "--max-new-tokens", "5000"], "beyond the context"),
    (["logits", "--model", "/nonexistent", "--ids", "1"], "no such directory"),
    (["ar", "--model", f"{golden}/model-f32-tied", "--prompt-ids", "1", "--weights", "f16"], "--weights: f16 not in"),
    (["loss", "--model", f"{golden}/model-f32-tied", "--batch", f"{golden}/loss-batch.json", "--objective", "fdllm2",
      "--block", "12"], "--block 12 is not compiled in"),
    (["loss", "--model", f"{golden}/model-f32-tied", "--batch", f"{golden}/loss-batch.json", "--objective", "ar",
      "--no-pad"], "--no-pad is read by --objective fdllm2 only; --objective ar does not use it"),
    # A flag that the chosen policy or objective does not read is refused, not silently ignored.
    (["loss", "--model", f"{golden}/model-f32-tied", "--batch", f"{golden}/loss-batch.json", "--objective", "ar",
      "--block", "8"], "--block is read by --objective fdllm2 only"),
    (["generate", "--model", f"{golden}/model-f32-tied", "--prompt-ids", "1,2", "--k", "4"],
     "--k is read by --unmask topk or random only; --unmask threshold does not use it"),
    (["generate", "--model", f"{golden}/model-f32-tied", "--prompt-ids", "1,2", "--unmask", "topk", "--threshold", "0.5"],
     "--threshold is read by --unmask threshold, margin, entropy, entropy-bounded or factor only"),
    (["generate", "--model", f"{golden}/model-f32-tied", "--prompt-ids", "1,2", "--unmask", "margin", "--steps", "4"],
     "--steps is read by --unmask scheduled only; --unmask margin does not use it"),
    (["generate", "--model", f"{golden}/model-f32-tied", "--prompt-ids", "1,2", "--schedule", "cosine"],
     "--schedule is read by --unmask scheduled only"),
    (["chat", "--model", f"{golden}/model-f32-tied", "--unmask", "random", "--threshold", "0.5"],
     "--threshold is read by --unmask threshold, margin"),
    (["generate", "--model", f"{golden}/model-f32-tied", "--prompt-ids", "1,2", "--unmask", "bogus", "--k", "4"],
     "--unmask must be threshold, topk"),
    (["generate", "--model", f"{golden}/model-f32-tied", "--prompt-ids", "1,2", "--eos-id", "5", "--ignore-eos"],
     "--eos-id excludes --ignore-eos"),
    (["ar", "--model", f"{golden}/model-f32-tied", "--prompt-ids", "1,2", "--eos-id", "5", "--ignore-eos"],
     "--eos-id excludes --ignore-eos"),
    (["train", "--data", f"{golden}/loss-batch.json", "--examples", "10", "--preset", "tiny", "--out", tempfile.mkdtemp()],
     "--examples requires --task"),
    (["logits", "--model", f"{golden}/model-f32-tied", "--ids", "1,2", "--block", "4"],
     "--block is read by --mask block-causal only; --mask causal does not use it"),
    # A seed is a whole number in [0, 2^64): CLI11 alone takes -1 as 2^64 - 1 and 2^64 as 2^64 - 1.
    (["generate", "--model", f"{golden}/model-f32-tied", "--prompt-ids", "1,2", "--seed=-1"],
     "--seed: must be an integer in [0, 2^64), got -1"),
    (["init", "--out", tempfile.mkdtemp(), "--seed", "18446744073709551616"],
     "--seed: must be an integer in [0, 2^64), got 18446744073709551616"),
    (["train", "--task", "mix", "--preset", "tasks", "--seed", "1e3", "--out", tempfile.mkdtemp()],
     "--seed: must be an integer in [0, 2^64), got 1e3"),
    (["train", "--task", "mix", "--preset", "tiny", "--out", tempfile.mkdtemp()], "needs a model with the task vocabulary"),
    (["train", "--task", "mix", "--preset", "tasks", "--block", "8", "--context", "60", "--out", tempfile.mkdtemp()],
     "the context 60 is not a multiple of the block size 8"),
    (["train", "--task", "mix", "--preset", "tasks", "--block", "8", "--lr", "5", "--out", tempfile.mkdtemp()],
     "learning rate 5 makes no sense"),
]
for args, needle in bad_cases:
    out = run(*args)
    if out.returncode == 0 or needle not in out.stderr:
        failures.append(f"{' '.join(args[:1] + args[3:])}: exit {out.returncode}, stderr {out.stderr.strip()!r}, wanted {needle!r}")

# ... and a flag the policy reads is taken and used. After a prompt of one block, the prefill
# gives the next block's first token (token shift), leaving 3 + 4 masked positions in its two
# sub-blocks: topk commits k per forward, so --k 4 takes 1 + 1 forwards and --k 1 takes 3 + 4.
for args, forwards in ((["--unmask", "topk", "--k", "4"], 2), (["--unmask", "topk", "--k", "1"], 7),
                       (["--unmask", "scheduled", "--steps", "4", "--schedule", "cosine"], None)):
    out = run("generate", "--model", tied, "--prompt-ids", "1,2,3,4,5,6,7,8", "--block", "8", "--sub-block", "4",
              "--max-new-tokens", "8", "--ignore-eos", *args, "--json")
    got = json.loads(out.stdout)["nfe"] if out.returncode == 0 else None
    if got is None or (forwards is not None and got["block"] + got["sub_block"] != forwards):
        failures.append(f"generate {' '.join(args)}: exit {out.returncode}, nfe {got}, wanted {forwards} denoising forwards")

# train into a folder that holds a checkpoint: refused, the folder untouched, unless --overwrite
# (which replaces it) or --resume (which continues it; the two exclude each other).
held = tempfile.mkdtemp()
train = ["train", "--task", "mix", "--preset", "tasks", "--objective", "ar", "--examples", "50", "--context", "64",
         "--batch", "2", "--steps", "1", "--quiet", "--out", held]
first = run(*train)
before = {f: open(f"{held}/{f}", "rb").read() for f in sorted(os.listdir(held))}
again = run(*train, "--seed", "9")
after = {f: open(f"{held}/{f}", "rb").read() for f in sorted(os.listdir(held))}
if first.returncode != 0 or "model.safetensors" not in before:
    failures.append(f"train into an empty folder: exit {first.returncode}, {first.stderr.strip()!r}")
elif again.returncode == 0 or "holds a checkpoint already" not in again.stderr or "--overwrite" not in again.stderr \
        or after != before:
    failures.append(f"train over a checkpoint: exit {again.returncode}, {again.stderr.strip()!r}, "
                    f"folder {'unchanged' if after == before else 'changed'}")
else:
    over = run(*train, "--seed", "9", "--overwrite")
    if over.returncode != 0 or open(f"{held}/model.safetensors", "rb").read() == before["model.safetensors"]:
        failures.append(f"train --overwrite: exit {over.returncode}, {over.stderr.strip()!r}")
    both = run(*train, "--overwrite", "--resume")
    if both.returncode == 0 or "excludes" not in both.stderr:
        failures.append(f"train --overwrite --resume: exit {both.returncode}, {both.stderr.strip()!r}")
    # --resume continues only the run the folder holds: another seed is refused, naming it. (The
    # weights come from the checkpoint, so --preset is not given; the other flags may be.)
    resume = [a for a in train if a not in ("--preset", "tasks")] + ["--resume"]
    other = run(*resume, "--seed", "0")
    two = list(resume)
    two[two.index("--steps") + 1] = "2"
    longer = run(*two, "--seed", "9")
    state = json.load(open(f"{held}/trainer_state.json"))
    if other.returncode == 0 or "seed 0 (the checkpoint's 9)" not in other.stderr or longer.returncode != 0 \
            or state["step"] != 2:
        failures.append(f"train --resume with another seed: exit {other.returncode}, {other.stderr.strip()!r}; "
                        f"with the same: exit {longer.returncode}, {longer.stderr.strip()!r}, step {state['step']}")
    # init over the trained model: refused likewise; --overwrite replaces the model and forgets
    # the run (its state, optimiser moments and loss log), which can then not be resumed.
    trained = {f: open(f"{held}/{f}", "rb").read() for f in sorted(os.listdir(held))}
    init = run("init", "--out", held, "--preset", "tasks")
    if init.returncode == 0 or "holds a checkpoint already" not in init.stderr or \
            {f: open(f"{held}/{f}", "rb").read() for f in sorted(os.listdir(held))} != trained:
        failures.append(f"init over a checkpoint: exit {init.returncode}, {init.stderr.strip()!r}")
    init = run("init", "--out", held, "--preset", "tasks", "--overwrite")
    left = sorted(os.listdir(held))
    resumed = run(*resume)
    if init.returncode != 0 or any(f in left for f in ("trainer_state.json", "optimizer.safetensors", "loss.csv",
                                                       "train_args.json")) \
            or open(f"{held}/model.safetensors", "rb").read() == trained["model.safetensors"] \
            or resumed.returncode == 0 or "no trainer_state.json" not in resumed.stderr:
        failures.append(f"init --overwrite: exit {init.returncode}, {init.stderr.strip()!r}, folder {left}, "
                        f"then train --resume: exit {resumed.returncode}, {resumed.stderr.strip()!r}")

# --resume continues a run with the flags it was given (train_args.json beside its checkpoint): 2
# steps and then --resume --steps 3, with no other flag, give the weights and loss log of 3 steps
# in one run, though the resume runs in another folder than the relative --data path was given
# in. The recorded --init gives the tokenizer, which a run copies at its end (here: deleted, as if
# the first run had been cut off after its last checkpoint).
work = tempfile.mkdtemp()
shutil.copytree(f"{golden}/model-f32-tied", f"{work}/base")
with open(f"{work}/base/tokenizer.json", "w") as f:
    f.write('{"stand-in": "copied, not read"}')
with open(f"{work}/data.jsonl", "w") as f:
    for i in range(12):
        f.write(json.dumps({"prompt_ids": [2 + (7 * i + j) % 300 for j in range(9)],
                            "response_ids": [2 + (11 * i + j) % 300 for j in range(13)]}) + "\n")
fresh = ["train", "--data", "data.jsonl", "--init", "base", "--objective", "fdllm2", "--context", "64", "--batch", "2",
         "--lr", "1e-3", "--decay", "constant", "--seed", "3", "--quiet"]
whole = run(*fresh, "--steps", "3", "--out", "whole", cwd=work)
part = run(*fresh, "--steps", "2", "--out", "part", cwd=work)
os.remove(f"{work}/part/tokenizer.json")
resumed = run("train", "--out", f"{work}/part", "--resume", "--steps", "3", "--quiet", cwd=tempfile.mkdtemp())
if whole.returncode != 0 or part.returncode != 0 or resumed.returncode != 0:
    failures.append(f"train, then --resume with no other flag: exit {whole.returncode}, {part.returncode}, "
                    f"{resumed.returncode}: {(whole.stderr + part.stderr + resumed.stderr).strip()!r}")
else:
    for f in ("model.safetensors", "optimizer.safetensors", "loss.csv", "tokenizer.json"):
        a, b = (open(p, "rb").read() if os.path.exists(p) else b"" for p in (f"{work}/whole/{f}", f"{work}/part/{f}"))
        if f == "loss.csv":  # the seconds column differs
            a, b = ([line.split(",")[:5] for line in x.decode().splitlines()] for x in (a, b))
        if a != b:
            failures.append(f"train --resume with the recorded flags: {f} differs from the uninterrupted run's")
    # A flag given again overrides the recorded one, and one that makes it another run is refused by name.
    other = run("train", "--out", f"{work}/part", "--resume", "--steps", "4", "--lr", "2e-3", cwd=work)
    if other.returncode == 0 or "lr 0.002 (the checkpoint's 0.001)" not in other.stderr:
        failures.append(f"train --resume --lr 2e-3: exit {other.returncode}, {other.stderr.strip()!r}")
    # A run saved without train_args.json (by an older blockdiff) is resumed with its flags given again.
    shutil.copytree(f"{work}/part", f"{work}/old")
    os.remove(f"{work}/old/train_args.json")
    old = run("train", "--out", "old", "--resume", "--steps", "4", cwd=work)
    if old.returncode == 0 or "old has no train_args.json to take them from" not in old.stderr:
        failures.append(f"train --resume without train_args.json: exit {old.returncode}, {old.stderr.strip()!r}")
    # The weights come from the checkpoint: --init and --preset are refused beside --resume, not ignored.
    for flag, value in (("--init", "base"), ("--preset", "tasks")):
        other = run("train", "--out", "part", "--resume", flag, value, cwd=work)
        if other.returncode == 0 or "excludes" not in other.stderr:
            failures.append(f"train --resume {flag}: exit {other.returncode}, {other.stderr.strip()!r}")

# blockdiff loss: the loss and every gradient of the golden batch, as an outside checker reads them.
loss_golden = json.load(open(f"{golden}/loss.json"))
loss_cases = 0
for model in ("f32-tied", "bf16-untied"):
    for objective in ("fdllm2", "ar"):
        grads_path = tempfile.mktemp(suffix=".safetensors")
        block = ["--block", "8"] if objective == "fdllm2" else []  # AR has no blocks: --block is refused there
        out = run("loss", "--model", f"{golden}/model-{model}", "--batch", f"{golden}/loss-batch.json", "--objective",
                  objective, *block, "--grads-out", grads_path, "--json")
        loss_cases += 1
        if out.returncode != 0:
            failures.append(f"loss {model} {objective}: exit {out.returncode}: {out.stderr.strip()}")
            continue
        got, want = json.loads(out.stdout), loss_golden[f"model-{model}/{objective}"]
        if got["n_tokens"] != want["n_tokens"] or abs(got["loss"] - want["loss"]) > 1e-5 * abs(want["loss"]):
            failures.append(f"loss {model} {objective}: {got} vs golden {want}")
        mine_h, mine_d = read_safetensors(grads_path)
        ref_h, ref_d = read_safetensors(f"{golden}/grads-{model}-{objective}.safetensors")
        names = sorted(k for k in ref_h if k != "__metadata__")
        if sorted(k for k in mine_h if k != "__metadata__") != names:
            failures.append(f"loss {model} {objective}: gradient names differ from the golden file")
            continue
        for name in names:
            a = array.array("f", mine_d[mine_h[name]["data_offsets"][0]:mine_h[name]["data_offsets"][1]])
            b = array.array("f", ref_d[ref_h[name]["data_offsets"][0]:ref_h[name]["data_offsets"][1]])
            scale = max(abs(x) for x in b) or 1.0
            err = largest_difference(a, b)
            if mine_h[name]["shape"] != ref_h[name]["shape"] or err > 2e-4 * scale:
                failures.append(f"loss {model} {objective}: gradient {name} off by {err} (max |g| {scale})")

# Where --block (and --sub-block) are not given, they come from the model: config.json's bd_size, the
# block it was trained with, and a sub-block of min(8, block / 2). A copy of the golden model that
# says it was trained with blocks of 16 decodes the golden 16/8 cases without those flags; one
# that says 8 gives the golden block-causal logits (block 8) and fdllm2 loss (block 8).
def with_bd_size(bd):
    folder = tempfile.mkdtemp()
    for f in os.listdir(tied):
        if f != "config.json":
            os.symlink(f"{tied}/{f}", f"{folder}/{f}")
    config = json.load(open(f"{tied}/config.json"))
    config["bd_size"] = bd
    json.dump(config, open(f"{folder}/config.json", "w"))
    return folder


tied16, tied8 = with_bd_size(16), with_bd_size(8)
for g in (g for g, w, d in generate_runs if (g["model"], g["block"], g["sub_block"], w, d) == ("model-f32-tied", 16, 8, "f32", "host")):
    out = run("generate", "--model", tied16, "--prompt-ids", ",".join(map(str, g["prompt_ids"])), "--threshold",
              str(g["threshold"]), "--cache", g["cache"], "--eos-id", str(g["eos_id"]), "--max-new-tokens",
              str(g["max_new_tokens"]), "--json")
    if out.returncode != 0 or json.loads(out.stdout)["tokens"] != g["tokens"]:
        failures.append(f"generate without --block on a model of bd_size 16: exit {out.returncode}, not the golden 16/8 tokens")
header, data = read_safetensors(f"{golden}/logits-f32-tied-block-causal.safetensors")
ref = array.array("f", data[header["logits"]["data_offsets"][0]:header["logits"]["data_offsets"][1]])
out = run("logits", "--model", tied8, "--ids", ",".join(map(str, json.loads(header["__metadata__"]["ids"]))), "--mask",
          "block-causal", "--json")
got = [x for row in json.loads(out.stdout)["logits"] for x in row] if out.returncode == 0 else []
if header["__metadata__"].get("block", "8") != "8" or len(got) != len(ref) or \
        largest_difference(got, ref) > 2e-5 * max(abs(x) for x in ref):
    failures.append(f"logits --mask block-causal without --block on a model of bd_size 8: exit {out.returncode}, "
                    "not the golden block-8 logits")
out = run("loss", "--model", tied8, "--batch", f"{golden}/loss-batch.json", "--objective", "fdllm2", "--json")
want = loss_golden["model-f32-tied/fdllm2"]
if out.returncode != 0 or json.loads(out.stdout)["block"] != 8 or abs(json.loads(out.stdout)["loss"] - want["loss"]) > 1e-5 * abs(want["loss"]):
    failures.append(f"loss without --block on a model of bd_size 8: exit {out.returncode}, {out.stdout.strip()}, golden {want}")

help_text = run("--help").stdout
if "Compiled decoder configurations" not in help_text:
    failures.append("--help does not list the compiled decoder configurations")

for f in failures:
    print("FAIL:", f)
print(f"cli: {count} generate cases ({'with' if gpu else 'no'} GPU), {loss_cases} loss cases, {len(bad_cases)} error cases, "
      f"{len(failures)} failures")
sys.exit(1 if failures else 0)
