"""blockdiff score: first-token log-likelihoods (FASTDLLM_V2.md §3.6) against a log-softmax taken
here of `blockdiff logits` over the scoring view built here from the spec; text against ids;
multiple choice on the embedded model's arithmetic; clear errors."""
import json
import math
import os
import random
import re
import subprocess
import sys
import tempfile

exe, golden, models = sys.argv[1], sys.argv[2], sys.argv[3]
gold = f"{golden}/model-f32-tied"  # vocab 320, [MASK] 319, EOS 318, bd_size 32, no tokenizer.json
tasks = f"{models}/tasks-fdllm2"   # character vocabulary, [MASK] 1, EOS 0, bd_size 8
work = tempfile.mkdtemp()
failures = []


def run(*args, ok=True):
    r = subprocess.run([exe, *args], capture_output=True, text=True)
    if ok and r.returncode != 0:
        print(r.stdout, r.stderr)
        sys.exit(f"FAIL: blockdiff {' '.join(args)} exited {r.returncode}")
    return r


def requests_file(name, lines):
    path = f"{work}/{name}.jsonl"
    with open(path, "w") as f:
        for line in lines:
            f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    return path


def score(model, lines, *flags):
    return json.loads(run("score", "--model", model, "--requests", requests_file("r", lines), "--json", *flags).stdout)


# 1. Against the logits of the view written out here: prefix, [MASK], target[1:], EOS, then
#    [MASK] to block - L % block more positions; log p(target[0]) from the row before it.
def reference(prefix, target, block, mask=319, eos=318):
    seq = prefix + target
    L, P = len(seq), len(prefix)
    seq[P] = mask
    seq += [mask] * (block - L % block)
    seq[L] = eos
    out = run("logits", "--model", gold, "--ids", ",".join(map(str, seq)), "--mask", "block-causal",
              "--block", str(block), "--json")
    row = json.loads(out.stdout)["logits"][P - 1]
    top = max(row)
    return row[target[0]] - top - math.log(sum(math.exp(x - top) for x in row))


rng = random.Random(5)
cases = [(rng.sample(range(300), p), rng.sample(range(300), t)) for p, t in [(3, 1), (8, 2), (31, 1), (32, 3), (40, 5)]]
for block in (32, 8):
    flags = [] if block == 32 else ["--block", "8"]  # 32 is the golden model's bd_size, the default
    got = score(gold, [{"prefix_ids": p, "target_ids": t} for p, t in cases], "--batch", "2", *flags)
    # Scored blocks 0, 0, 0, 0, 1 at 32 and 0, 0, 3, 3, 4 at 8; two requests a forward, each with
    # a prefill where its scored block is not the first.
    if got["block"] != block or got["requests"] != len(cases) or got["forwards"] != {32: 4, 8: 5}[block]:
        failures.append(f"block {block}: header {({k: v for k, v in got.items() if k != 'results'})}")
    for (p, t), r in zip(cases, got["results"]):
        want = reference(p, t, block)
        if not abs(r["loglikelihood"] - want) <= 1e-3:  # 1e-5 of logits up to 48, twice
            failures.append(f"block {block}, prefix {len(p)}, target {len(t)}: {r['loglikelihood']} != {want}")

# The causal score (--ar): the sum over the whole target of log-softmaxes of `logits --mask causal`
# over prefix + target[:-1], row P - 1 + i for target[i].
def causal_reference(prefix, target):
    seq = prefix + target[:-1]
    out = run("logits", "--model", gold, "--ids", ",".join(map(str, seq)), "--mask", "causal", "--json")
    rows = json.loads(out.stdout)["logits"]
    total = 0
    for i, t in enumerate(target):
        row = rows[len(prefix) - 1 + i]
        top = max(row)
        total += row[t] - top - math.log(sum(math.exp(x - top) for x in row))
    return total


got = score(gold, [{"prefix_ids": p, "target_ids": t} for p, t in cases], "--ar", "--batch", "2")
if got["scoring"] != "causal" or "block" in got:
    failures.append(f"--ar header: {({k: v for k, v in got.items() if k != 'results'})}")
for (p, t), r in zip(cases, got["results"]):
    want = causal_reference(p, t)
    if not abs(r["loglikelihood"] - want) <= 1e-3 * len(t):
        failures.append(f"--ar, prefix {len(p)}, target {len(t)}: {r['loglikelihood']} != {want}")

# 2. Text is split as lm-eval splits it; on a character vocabulary that is one id a character.
vocab = json.load(open(f"{tasks}/tokenizer.json"))["model"]["vocab"]
enc = lambda s: [vocab[c] for c in s]
by_text = score(tasks, [{"prefix": "a:47+8-5+9=", "target": "55,50,59#59"}])["results"][0]
by_ids = score(tasks, [{"prefix_ids": enc("a:47+8-5+9="), "target_ids": enc("55,50,59#59")}])["results"][0]
if by_text != by_ids:
    failures.append(f"text and ids differ: {by_text} {by_ids}")
if not by_text["greedy"] or by_text["argmax"] != vocab["5"]:
    failures.append(f"the embedded model does not put '5' first after a:47+8-5+9=: {by_text}")


# 2b. Chat turns as the prefix ("messages"): the ChatML text written out here and encoded here by
#     a byte-level vocabulary without merges (one id a byte, the ChatML markers added tokens 256
#     and 257), against the same ids given as prefix_ids.
def byte_level_alphabet():
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return {b: chr(b if b in printable else next(extra)) for b in range(256)}


bytes_dir = f"{work}/bytes"
os.makedirs(bytes_dir)
byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": True}
added = [{"id": 256 + i, "content": c, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
          "special": True} for i, c in enumerate(["<|im_start|>", "<|im_end|>"])]
with open(f"{bytes_dir}/tokenizer.json", "w") as f:
    json.dump({"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
               "pre_tokenizer": byte_level, "post_processor": byte_level, "decoder": byte_level,
               "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                         "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False,
                         "vocab": {s: b for b, s in byte_level_alphabet().items()}, "merges": []}}, f)


def chatml_ids(turns):
    ids = []
    for role, content in [("system", "You are a helpful assistant.")] + turns:  # Fast-dLLM v2's system turn
        ids += [256, *f"{role}\n{content}".encode(), 257, *b"\n"]
    return ids + [256, *b"assistant\n"]


shots = [("user", "2+3?"), ("assistant", "5"), ("user", "1+6?"), ("assistant", "7")]
chat_lines, id_lines = [], []
for question, answer in (("4+4?", 0), ("3+5?", 0), ("9-2?", 2)):
    turns = shots + [("user", question)]
    chat_lines.append({"messages": [{"role": r, "content": c} for r, c in turns], "choices": ["8", "9", "7"],
                       "answer": answer})
    id_lines.append({"prefix_ids": chatml_ids(turns), "choice_ids": [[ord("8")], [ord("9")], [ord("7")]], "answer": answer})
by_chat = score(gold, chat_lines, "--tokenizer", bytes_dir, "--eos-id", "318", "--block", "8", "--min-copy", "8")
by_ids = score(gold, id_lines, "--eos-id", "318", "--block", "8", "--min-copy", "8")
if [r["loglikelihoods"] for r in by_chat["results"]] != [r["loglikelihoods"] for r in by_ids["results"]]:
    failures.append(f"messages and their ChatML ids score differently: {by_chat['results']} {by_ids['results']}")
for (p, t), got_ll in zip([(chatml_ids(shots + [("user", q)]), [ord(c)]) for q in ("4+4?", "3+5?", "9-2?") for c in "897"],
                          [ll for r in by_chat["results"] for ll in r["loglikelihoods"]]):
    if not abs(got_ll - reference(p, t, 8)) <= 1e-3:
        failures.append(f"messages: {got_ll} against the view's {reference(p, t, 8)}")
# The system turn and the two examples (over 64 tokens) run once: the first question's prefill,
# then the others' rest after a copy, and one scored block a question (its one-token choices').
prefixes = [chatml_ids(shots + [("user", q)]) for q in ("4+4?", "3+5?", "9-2?")]
shared = [(len(p) - 1) // 8 * 8 for p in prefixes]  # the whole blocks before the scored one
common = next(i for i in range(len(prefixes[0])) if len({p[i] for p in prefixes}) > 1) // 8 * 8
want = shared[0] + sum(n - common for n in shared[1:]) + 3 * 8
if by_chat["forwards"] != 3 or by_chat["positions"] != want:
    failures.append(f"few-shot turns: {by_chat['forwards']} forwards, {by_chat['positions']} positions (want 3, {want})")

# 3. Multiple choice: arithmetic prompts made here, the right response among three whose first
#    character differs, at a random place; the embedded model should pick the right one.
def arith(rng):
    total = rng.randrange(10, 100)
    prompt, steps = f"a:{total}", []
    for _ in range(rng.randrange(2, 5)):
        d = rng.randrange(10)
        plus = total + d <= 99 and (total - d < 0 or rng.random() < 0.5)
        total += d if plus else -d
        prompt += ("+" if plus else "-") + str(d)
        steps.append(str(total))
    return prompt + "=", ",".join(steps) + "#" + str(total)


rng = random.Random(11)
questions = []
for _ in range(40):
    prompt, response = arith(rng)
    wrong = [d for d in "0123456789" if d != response[0]]
    choices = [d + response[1:] for d in rng.sample(wrong, 3)]
    answer = rng.randrange(4)
    choices.insert(answer, response)
    questions.append({"prefix": prompt, "choices": choices, "answer": answer})
questions.append({"prefix": "a:12+3-4=", "choices": ["15,11#11", "16,12#12"]})  # no answer: chosen, not counted
mc = score(tasks, questions, "--batch", "16")
summary = mc["multiple_choice"]
rows = mc["results"]
correct = sum(r.get("correct", False) for r in rows)
if summary["questions"] != 41 or summary["answered"] != 40 or summary["correct"] != correct:
    failures.append(f"multiple-choice summary {summary} against {correct} correct rows")
if summary["correct"] < 36:
    failures.append(f"the embedded model chose right in {summary['correct']} of 40 questions")
if any(r["chosen"] != max(range(len(r["loglikelihoods"])), key=lambda i: r["loglikelihoods"][i]) for r in rows):
    failures.append("a chosen choice is not the most likely one")
if "correct" in rows[-1] or len(rows[-1]["loglikelihoods"]) != 2 or mc["requests"] != 162:
    failures.append(f"the unanswered question: {rows[-1]}, {mc['requests']} requests")
# The rest of a choice is in the view: inside the scored block it conditions the score; past a
# prefix that ends on a block boundary (8 characters, the model's block) it is not seen, and
# choices that share their first token tie.
apart = score(tasks, [{"prefix": "a:12+3-4=", "choices": ["15,11#11", "15,12#12"]}])["results"][0]
if apart["tied"] or apart["loglikelihoods"][0] == apart["loglikelihoods"][1]:
    failures.append(f"choices that differ inside the scored block must score apart: {apart}")
# The AR base scored causally on the same questions, each choice whole.
ar = score(f"{models}/tasks-ar", questions, "--ar")
if ar["multiple_choice"]["correct"] < 36:
    failures.append(f"the embedded AR model chose right in {ar['multiple_choice']['correct']} of 40 questions")

by_id = {v: k for k, v in vocab.items()}
best = by_id[score(tasks, [{"prefix": "a:1+2+3=", "target": "0"}])["results"][0]["argmax"]]
other = "9" if best != "9" else "8"
tied = score(tasks, [{"prefix": "a:1+2+3=", "choices": [best + ",1", best + "#2", other]}])["results"][0]
if not tied["tied"] or tied["loglikelihoods"][0] != tied["loglikelihoods"][1] or tied["chosen"] != 0:
    failures.append(f"choices sharing their first token past a block boundary must tie: {tied}")


# 3b. eval --choices: the held-out prompts as 4-way multiple choice, each model scored its way.
def choices_eval(model, *flags):
    return json.loads(run("eval", "--model", f"{models}/{model}", "--choices", "4", "--n", "40", "--batch", "4",
                          *flags, "--json").stdout)
forwards = {}
for model, flags in (("tasks-fdllm2", []), ("tasks-ar", ["--ar"])):
    r = choices_eval(model, *flags)
    # Causal: 16 questions a forward (--batch 4 times 4 rows), so 3 prefills and 3 x 4 rounds, a
    # round a choice's target.
    want = {"n": 40, "choices": 4, "shots": 0, "scoring": "causal" if flags else "first-token"}
    if flags:
        want["forwards"] = 3 * (1 + 4)
    if any(r.get(k) != v for k, v in want.items()) or r["accuracy"] < 0.9 or r["correct"] != round(40 * r["accuracy"]):
        failures.append(f"eval --choices on {model}: {r}")
    if not flags and r["block"] != 8:  # the model's bd_size
        failures.append(f"eval --choices scored at block {r['block']}")
    forwards[model] = (r["forwards"], r["positions"])
    # Two examples of the question's task before it (at least 12 tokens each, and 16 padded to the
    # block): every question reads them, but each task's are run about once (3 x 24 tokens at
    # least), not once a question (40 x 24).
    shot = choices_eval(model, *flags, "--shots", "2")
    extra = shot["positions"] - r["positions"]
    if shot["shots"] != 2 or shot["accuracy"] < 0.9 or not 3 * 24 <= extra <= 40 * 24 // 4:
        failures.append(f"eval --choices --shots 2 on {model}: {shot} (zero-shot: {r})")
    # Four questions a batch (--batch 1) of three tasks mixed: one cache a question (--caches 0)
    # gives up the examples of a task that a batch lacks, and the next batch of it runs them again;
    # eight caches keep all three. The same scores either way.
    kept = {}
    for caches in ("0", "8"):
        kept[caches] = json.loads(run("eval", "--model", f"{models}/{model}", "--choices", "4", "--n", "40",
                                      "--batch", "1", "--shots", "2", "--caches", caches, *flags, "--json").stdout)
    if kept["0"]["correct"] != kept["8"]["correct"] or not kept["8"]["positions"] < kept["0"]["positions"]:
        failures.append(f"eval --choices --shots 2 --batch 1 on {model}, --caches 0 and 8: {kept}")
# First-token views of choices that differ in their first token alone are the same, and run once
# (a round a forward where causal scoring runs four, each a whole target).
(ft, ft_positions), (causal, causal_positions) = forwards["tasks-fdllm2"], forwards["tasks-ar"]
if not (ft < causal and ft_positions < causal_positions // 2):
    failures.append(f"eval --choices forwards, first-token against causal: {forwards}")
for flags, needle in ((["--threshold", "0.5"], "--threshold excludes --choices"),
                      (["--max-new-tokens", "8"], "--max-new-tokens excludes --choices"),
                      (["--ar", "--block", "8"], "--ar excludes --block")):
    r = run("eval", "--model", tasks, "--choices", "4", *flags, ok=False)
    if r.returncode == 0 or needle not in r.stderr:
        failures.append(f"eval --choices 4 {' '.join(flags)}: rc {r.returncode}, {r.stderr.strip()!r}")
r = run("eval", "--model", tasks, "--shots", "2", ok=False)
if r.returncode == 0 or "--shots requires --choices" not in r.stderr:
    failures.append(f"eval --shots without --choices: rc {r.returncode}, {r.stderr.strip()!r}")
# Examples past the model's context (256 positions) are refused naming --shots, before any forward.
r = run("eval", "--model", tasks, "--choices", "4", "--task", "arith", "--shots", "40", ok=False)
if r.returncode == 0 or not re.search(r"--shots 40: question 0 \(arith\) after 40 examples of \d+ tokens in all is "
                                      r"scored through position \d+, beyond the context of 256", r.stderr):
    failures.append(f"eval --choices --shots 40: rc {r.returncode}, {r.stderr.strip()!r}")
r = run("eval", "--model", tasks, "--choices", "4", "--caches", "-1", ok=False)
if r.returncode == 0 or "--caches: must be an integer of 0 or more, got -1" not in r.stderr:
    failures.append(f"eval --caches -1: rc {r.returncode}, {r.stderr.strip()!r}")
for shots in ("-1", "1.5"):
    r = run("eval", "--model", tasks, "--choices", "4", "--shots", shots, ok=False)
    if r.returncode == 0 or f"--shots: must be an integer of 0 or more, got {shots}" not in r.stderr:
        failures.append(f"eval --shots {shots}: rc {r.returncode}, {r.stderr.strip()!r}")
r = run("eval", "--model", tasks, "--choices", "11", ok=False)
if r.returncode == 0 or "--choices" not in r.stderr:
    failures.append(f"eval --choices 11: rc {r.returncode}, {r.stderr.strip()!r}")

# 4. Bad requests are refused, naming the line and what is wrong.
def refused(model, lines, needle, *flags):
    r = run("score", "--model", model, "--requests", requests_file("bad", lines), *flags, ok=False)
    if r.returncode == 0 or needle not in r.stderr:
        failures.append(f"expected an error with {needle!r}: rc {r.returncode}, {r.stderr.strip()!r}")


refused(gold, ['{"prefix_ids": [1], "target_ids": [2]}', "[1, 2]"], "bad.jsonl: line 2 is not a JSON object")
refused(gold, ['{"prefix_ids": [1]}'], "line 1 needs \"target_ids\" or \"choice_ids\", one of them")
refused(gold, ['{"prefix_ids": [1], "target_ids": [2], "choice_ids": [[2]]}'], "one of them")
refused(gold, ['{"prefix_ids": [1], "choice_ids": [[2], [3]], "answer": 2}'],
        "line 1: \"answer\" must be the index of a choice, 0 to 1, got 2")
refused(gold, ['{"prefix_ids": [1], "target_ids": [2], "answer": 0}'], "\"answer\" needs \"choice_ids\"")
refused(gold, ['{"prefix": "hi", "target": " there"}'], "line 1 is text: it needs a tokenizer.json")
refused(gold, ['{"prefix_ids": [1, -2], "target_ids": [2]}'], "\"prefix_ids\" holds -2, which is not a token id")
refused(gold, ['{"prefix_ids": 5, "target_ids": [2]}'], "line 1: \"prefix_ids\" is not a JSON array of token ids")
refused(gold, ['{"prefix_ids": [], "target_ids": [2]}'], "score request 0: the prefix is empty")
refused(gold, ['{"prefix_ids": [1], "target_ids": [319]}'], "the target holds the [MASK] id 319")
refused(gold, ['{"prefix_ids": [1], "target_ids": [2]}'], "--block 12 is not compiled in (supported: 4, 8, 16, 32, 64)", "--block", "12")
refused(tasks, ['{"prefix": "a:1?", "target": "1"}'], "bad.jsonl: line 1: ")
refused(gold, [], "no requests")
refused(gold, ['{"prefix": "a", "messages": [], "target": "b"}'], "needs \"prefix\" (text), \"messages\" (chat turns) or")
refused(gold, ['{"messages": {"role": "user"}, "target": "b"}'], "line 1: \"messages\" must be a non-empty array",
        "--tokenizer", bytes_dir)
refused(gold, ['{"messages": [{"role": "user", "text": "hi"}], "target": "b"}'],
        'line 1: message 0 must be {"role": text, "content": text}', "--tokenizer", bytes_dir)
refused(gold, ['{"messages": [{"role": "user", "content": "hi"}, {"role": "system", "content": "x"}], "target": "b"}'],
        "line 1: chat message 1 has role \"system\"", "--tokenizer", bytes_dir)
refused(gold, ['{"prefix_ids": [1], "target_ids": [2]}'], "--ar excludes --block", "--ar", "--block", "8")
refused(gold, ['{"prefix_ids": [1], "target_ids": [2]}'], "--ar excludes --mask-id", "--ar", "--mask-id", "3")

for f in failures:
    print("FAIL:", f)
sys.exit(1 if failures else 0)
