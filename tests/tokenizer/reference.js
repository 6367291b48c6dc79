// The independent implementation the tokenizer is checked against: @lenml/tokenizers (a fork of
// transformers.js's tokenizers), run under node.
//
//   node reference.js PACKAGE_DIR TOKENIZER_DIR encode CORPUS.jsonl     one JSON array of ids per line
//   node reference.js PACKAGE_DIR TOKENIZER_DIR bench  CORPUS.txt SECONDS   {"mb_per_s": ...}
const fs = require('fs');
const path = require('path');
const [pkg, dir, mode, input, seconds] = process.argv.slice(2);
const { TokenizerLoader } = require(path.join(pkg, 'dist', 'main.js'));
const read = (name) => JSON.parse(fs.readFileSync(path.join(dir, name), 'utf8'));
const config = fs.existsSync(path.join(dir, 'tokenizer_config.json')) ? read('tokenizer_config.json') : {};
const tokenizer = TokenizerLoader.fromPreTrained({ tokenizerJSON: read('tokenizer.json'), tokenizerConfig: config });
const encode = (text) => tokenizer.encode(text, { add_special_tokens: false });

if (mode === 'encode') {
  const lines = fs.readFileSync(input, 'utf8').split('\n').filter((l) => l.trim().length > 0);
  process.stdout.write(lines.map((l) => JSON.stringify(encode(JSON.parse(l)))).join('\n') + '\n');
} else if (mode === 'bench') {
  // The corpus as lines of text, encoded line by line, as the C++ benchmark does.
  const text = fs.readFileSync(input, 'utf8');
  const lines = text.split('\n');
  const bytes = Buffer.byteLength(text, 'utf8');
  lines.forEach(encode);  // warm up
  const limit = Number(seconds || 2) * 1e9;
  let passes = 0;
  const start = process.hrtime.bigint();
  let elapsed = 0n;
  do {
    lines.forEach(encode);
    ++passes;
    elapsed = process.hrtime.bigint() - start;
  } while (Number(elapsed) < limit);
  console.log(JSON.stringify({ mb_per_s: (bytes * passes) / (Number(elapsed) / 1e9) / 1e6, passes }));
} else {
  console.error(`unknown mode ${mode}`);
  process.exit(2);
}
