"""Text in, text out on the embedded model (a character vocabulary in tokenizer.json): tokenize and
detokenize against the vocabulary read here, --prompt against --prompt-ids, the chat command's
streamed reply against generate's text, and clear errors."""
import json
import os
import subprocess
import sys
import tempfile

exe, models = sys.argv[1], sys.argv[2]
model = f"{models}/tasks-fdllm2"
vocab = json.load(open(f"{model}/tokenizer.json"))["model"]["vocab"]
by_id = {v: k for k, v in vocab.items()}
failures = []


def run(*args, stdin=None, ok=True):
    r = subprocess.run([exe, *args], capture_output=True, text=True, input=stdin)
    if ok and r.returncode != 0:
        print(r.stdout, r.stderr)
        sys.exit(f"FAIL: blockdiff {' '.join(args)} exited {r.returncode}")
    return r


prompt = "a:47+8-5+9="
ids = [vocab[c] for c in prompt]
got = json.loads(run("tokenize", "--tokenizer", model, "--text", prompt).stdout)
if got["ids"] != ids:
    failures.append(f"tokenize: {got['ids']} != {ids}")
empty = json.loads(run("tokenize", "--tokenizer", model, "--text", "").stdout)
if empty != {"ids": [], "count": 0}:
    failures.append(f"tokenize of the empty text: {empty}")
text = json.loads(run("detokenize", "--tokenizer", model, "--ids", ",".join(map(str, ids))).stdout)["text"]
if text != prompt:
    failures.append(f"detokenize: {text!r} != {prompt!r}")

flags = ["--block", "8", "--sub-block", "4", "--max-new-tokens", "24", "--json"]
by_text = json.loads(run("generate", "--model", model, "--prompt", prompt, "--raw", *flags).stdout)
by_ids = json.loads(run("generate", "--model", model, "--prompt-ids", ",".join(map(str, ids)), *flags).stdout)
if by_text["tokens"] != by_ids["tokens"]:
    failures.append(f"generate --prompt {by_text['tokens']} != --prompt-ids {by_ids['tokens']}")
expected_text = "".join(by_id[t] for t in by_ids["tokens"] if t > 1)  # ids 0, 1: <|im_end|>, |<MASK>| (special)
if by_text.get("text") != expected_text:
    failures.append(f"generate text {by_text.get('text')!r} != {expected_text!r}")
ar = json.loads(run("ar", "--model", f"{models}/tasks-ar", "--prompt", prompt, "--raw", "--json").stdout)
if ar.get("text") != "".join(by_id[t] for t in ar["tokens"] if t > 1):
    failures.append(f"ar text {ar.get('text')!r} does not match its tokens")

# The chat command streams the same reply (greedy), one line per turn; /reset and /quit.
chat = run("chat", "--model", model, "--raw", "--block", "8", "--sub-block", "4", "--max-new-tokens", "24",
           stdin=f"{prompt}\n/reset\n{prompt}\n/quit\nnever read\n")
replies = chat.stdout.split("\n")
if replies[:2] != [expected_text, expected_text]:
    failures.append(f"chat replies {replies[:2]!r} != generate's {expected_text!r}")
if "(conversation cleared)" not in chat.stderr:
    failures.append("chat did not acknowledge /reset")

# chat --device cuda: on a GPU the same replies; elsewhere it fails, saying why.
chat_args = ["chat", "--model", model, "--raw", "--block", "8", "--sub-block", "4", "--max-new-tokens", "24",
             "--device", "cuda"]
r = run(*chat_args, stdin=f"{prompt}\n/quit\n", ok=False)
if r.returncode == 0:
    if r.stdout.split("\n")[:1] != [expected_text]:
        failures.append(f"chat --device cuda replied {r.stdout.split(chr(10))[:1]!r}, the host {expected_text!r}")
elif not any(cause in r.stderr for cause in ("no CUDA device", "built without the CUDA backend")):
    failures.append(f"chat --device cuda without a GPU: exit {r.returncode}, stderr {r.stderr.strip()!r}")

# Errors name what is wrong.
r = run("generate", "--model", model, "--prompt", "hi", *flags, ok=False)
if r.returncode == 0 or "\"<\" is not in the vocabulary" not in r.stderr or "--raw" not in r.stderr:
    failures.append(f"the chat template on a character vocabulary: {r.stderr.strip()!r}")
# --raw and --system shape a text prompt; beside prompt ids, or each other, one would be ignored.
for args, needle in ((["generate", "--model", model, "--prompt-ids", "5,6", "--raw"], "--raw requires --prompt"),
                     (["ar", "--model", model, "--prompt-ids", "5,6", "--system", "S"], "--system requires --prompt"),
                     (["generate", "--model", model, "--prompt", prompt, "--raw", "--system", "S"], "--raw excludes --system"),
                     (["chat", "--model", model, "--raw", "--system", "S"], "excludes")):
    r = run(*args, stdin="", ok=False)
    if r.returncode == 0 or needle not in r.stderr:
        failures.append(f"{' '.join(args[:1] + args[3:])}: exit {r.returncode}, {r.stderr.strip()!r}, wanted {needle!r}")
r = run("detokenize", "--tokenizer", model, "--ids", "5,999", ok=False)
if r.returncode == 0 or "token id 999 is not in the vocabulary" not in r.stderr:
    failures.append(f"detokenize of an unknown id: {r.stderr.strip()!r}")
# An id past 32 bits is refused as itself, not read as the id it wraps to (2**32 + 5 is not 5).
ids_file = tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False)
ids_file.write(f"[3]\n[{2**32 + 5}]\n")
ids_file.close()
r = run("detokenize", "--tokenizer", model, "--jsonl", ids_file.name, ok=False)
if r.returncode == 0 or f"line 2 holds {2**32 + 5}, which is not a token id" not in r.stderr:
    failures.append(f"detokenize of an id past 32 bits: exit {r.returncode}, {r.stderr.strip()!r}")
r = run("tokenize", "--tokenizer", "/nonexistent", "--text", "x", ok=False)
if r.returncode == 0 or "no tokenizer.json" not in r.stderr:
    failures.append(f"a missing tokenizer: {r.stderr.strip()!r}")

bad = tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False)
bad.write('"1+2"\n\n[1, 2]\n{oops\n')
bad.close()
r = run("tokenize", "--tokenizer", model, "--jsonl", bad.name, ok=False)
if r.returncode == 0 or f"{bad.name}: line 3 is not a JSON string" not in r.stderr:
    failures.append(f"tokenize --jsonl with a non-string line: {r.stderr.strip()!r}")
with open(bad.name, "w") as f:
    f.write('"1+2"\n{oops\n')
r = run("tokenize", "--tokenizer", model, "--jsonl", bad.name, ok=False)
if r.returncode == 0 or f"{bad.name}: line 2 is not valid JSON" not in r.stderr:
    failures.append(f"tokenize --jsonl with a broken line: {r.stderr.strip()!r}")

# A raw chat prompt longer than the context is refused, and the session goes on.
chat = run("chat", "--model", model, "--raw", "--block", "8", "--sub-block", "4", "--max-new-tokens", "24",
           stdin="1" * 300 + f"\n{prompt}\n/quit\n")
if "the prompt fills the context of" not in chat.stderr or chat.stdout.split("\n")[0] != expected_text:
    failures.append(f"chat after an over-long prompt: {chat.stdout!r} {chat.stderr.strip()!r}")

# A chat line the tokenizer cannot encode is refused, and the session goes on: with the chat
# template ("<" is not in this vocabulary, so no templated line encodes), and raw ("~" is not either).
chat = run("chat", "--model", model, "--block", "8", "--sub-block", "4", "--max-new-tokens", "24",
           stdin=f"{prompt}\n{prompt}\n/quit\n")
if chat.stderr.count("\"<\" is not in the vocabulary") != 2 or "--raw" not in chat.stderr or chat.stdout.strip():
    failures.append(f"chat with the template on a character vocabulary: {chat.stdout!r} {chat.stderr.strip()!r}")
chat = run("chat", "--model", model, "--raw", "--block", "8", "--sub-block", "4", "--max-new-tokens", "24",
           stdin=f"a:1~2=\n{prompt}\n/quit\n")
if "\"~\" is not in the vocabulary" not in chat.stderr or chat.stdout.split("\n")[0] != expected_text:
    failures.append(f"chat after a line it cannot encode: {chat.stdout!r} {chat.stderr.strip()!r}")
# A decoder outside the compiled set is refused before the first prompt is read.
chat = run("chat", "--model", model, "--raw", "--block", "8", "--sub-block", "3", stdin=f"{prompt}\n", ok=False)
if chat.returncode == 0 or "--sub-block 3 is not compiled in" not in chat.stderr or "> " in chat.stderr:
    failures.append(f"chat with a decoder that is not compiled: exit {chat.returncode}, {chat.stderr.strip()!r}")
# So are sampling options and a reply length that no turn could use: before the first prompt, and
# in a session that ends before it has one.
for flag, value, needle in (("--temperature", "-1", "temperature must be finite and >= 0, got -1"),
                            ("--top-p", "0", "top-p must be in (0, 1], got 0"),
                            ("--max-new-tokens", "0", "must be a positive integer, got 0")):
    for stdin in (f"{prompt}\n", ""):
        chat = run("chat", "--model", model, "--raw", flag, value, stdin=stdin, ok=False)
        if chat.returncode == 0 or needle not in chat.stderr or "> " in chat.stderr:
            failures.append(f"chat {flag} {value} with {stdin!r} in: exit {chat.returncode}, {chat.stderr.strip()!r}")

# The chat template is read beside the tokenizer: a model folder without tokenizer files, and
# --tokenizer naming a folder whose tokenizer_config.json sets its own default system prompt.
# tokenize --chat, generate --prompt and chat must all render that prompt, with the same length.
work = tempfile.mkdtemp()
chars = ["\n"] + [chr(c) for c in range(32, 127)]
specials = ["<|im_start|>", "<|im_end|>", "|<MASK>|"]
tokens = specials + chars
char_tokenizer = {"version": "1.0", "truncation": None, "padding": None, "normalizer": None, "pre_tokenizer": None,
                  "post_processor": None, "decoder": None,
                  "added_tokens": [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                                    "normalized": False, "special": True} for i, t in enumerate(specials)],
                  "model": {"type": "BPE", "vocab": {t: i for i, t in enumerate(tokens)}, "merges": []}}
system = "You answer in digits, and only in digits, whatever the question is."
os.makedirs(f"{work}/tok")
json.dump(char_tokenizer, open(f"{work}/tok/tokenizer.json", "w"))
json.dump({"chat_template": "{%- if messages[0]['role'] != 'system' %}{{- '<|im_start|>system\\n" + system +
           "<|im_end|>\\n' }}{%- endif %}"}, open(f"{work}/tok/tokenizer_config.json", "w"))
run("init", "--preset", "tiny", "--out", f"{work}/model")
question = "1+2="
templated = json.loads(run("tokenize", "--tokenizer", f"{work}/tok", "--chat", "--text", question).stdout)
rendered = "".join(tokens[i] for i in templated["ids"])
if system not in rendered:
    failures.append(f"tokenize --chat did not render the folder's system prompt: {rendered!r}")
n = templated["count"]
for tokenizer in (f"{work}/tok", f"{work}/tok/tokenizer.json"):
    r = run("generate", "--model", f"{work}/model", "--tokenizer", tokenizer, "--prompt", question,
            "--max-new-tokens", "100000", ok=False)
    if f"prompt of {n} tokens plus max_new_tokens 100000" not in r.stderr:
        failures.append(f"generate --tokenizer {tokenizer} did not encode the {n} tokens of tokenize --chat: "
                        f"{r.stderr.strip()!r}")
# A context that holds the templated prompt and a block, but no more: the chat refuses the turn
# only if it rendered the folder's (longer) system prompt, then goes on with --raw.
config = json.load(open(f"{work}/model/config.json"))
config["max_position_embeddings"] = n + 8
json.dump(config, open(f"{work}/model/config.json", "w"))
chat = run("chat", "--model", f"{work}/model", "--tokenizer", f"{work}/tok", "--block", "8", "--sub-block", "4",
           "--max-new-tokens", "4", stdin=f"{question}\n/quit\n")
if "the conversation fills the context of" not in chat.stderr:
    failures.append(f"chat --tokenizer did not render the folder's system prompt: {chat.stderr.strip()!r}")

for f in failures:
    print("FAIL:", f)
print(f"text commands: {len(failures)} failures")
sys.exit(1 if failures else 0)
