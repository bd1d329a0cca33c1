#!/usr/bin/env python3
"""Writes `tests/data/tokenizer_corpus.jsonl`: the strings the tokenizer parity tests encode.

The corpus is generated (seeded) from hand-written samples plus random draws, so it is small
(< 1 MB) and reproducible; rerun after changing this script and commit both. One JSON string
per line; lone surrogates are written as `\\udXXX` escapes (they have no UTF-8 form).

It covers: 30+ scripts (words and random runs of each script's block), emoji with skin tones,
ZWJ sequences, flags and keycaps, combining marks and decomposed (NFD) text that the NFC
normalizer must compose, code in several languages, long runs of spaces/tabs/newlines, digits
of many systems, special-token text inside ordinary text, English contractions in any case,
and bad input: lone surrogates, NUL and control characters, noncharacters, private use and
unassigned code points, byte-order marks, and random code points from every plane.

    python tools/make_tokenizer_corpus.py            # writes the file
    python tools/make_tokenizer_corpus.py --check    # fails if the file is stale
"""

# ruff: noqa: E501  (sample tables read best one entry per line)
from __future__ import annotations

import argparse
import json
import random
import re
import sys
import unicodedata
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "tokenizer_corpus.jsonl"
SEED = 20260501

# (script, sample text, code point ranges to draw random "words" from)
SCRIPTS: list[tuple[str, str, list[tuple[int, int]]]] = [
    ("Latin/English", "The quick brown fox jumps over the lazy dog.", [(0x61, 0x7A)]),
    ("Latin/French", "Où est passé l'été ? Déjà vu, naïve façade, cœur.", [(0xC0, 0xFF)]),
    ("Latin/German", "Größenwahn: Straße, Übermaß und Fußgängerübergänge.", [(0xC0, 0xFF)]),
    ("Latin/Polish", "Zażółć gęślą jaźń — źdźbło, łódź.", [(0x100, 0x17F)]),
    ("Latin/Vietnamese", "Tiếng Việt có dấu: người, được, những.", [(0x1EA0, 0x1EF9)]),
    ("Latin/Turkish", "İstanbul'da ılık ışık; ÇĞİÖŞÜ çğıöşü.", [(0x11E, 0x15F)]),
    ("Greek", "Ξεσκεπάζω την ψυχοφθόρα βδελυγμία. Ἐν ἀρχῇ ἦν ὁ λόγος.", [(0x3B1, 0x3C9)]),
    ("Cyrillic", "Съешь же ещё этих мягких французских булок, да выпей чаю.", [(0x430, 0x44F)]),
    (
        "Cyrillic/Ukrainian",
        "Чуєш їх, доцю, га? Кумедна ж ти, прощайся без ґольфів!",
        [(0x400, 0x45F)],
    ),
    ("Armenian", "Բարեւ աշխարհ։ Հայերեն լեզու", [(0x561, 0x586)]),
    ("Georgian", "გამარჯობა მსოფლიო, ქართული ენა", [(0x10D0, 0x10F0)]),
    ("Hebrew", "שלום עולם! עִבְרִית עם ניקוד", [(0x5D0, 0x5EA)]),
    ("Arabic", "مرحبا بالعالم. اللُّغَةُ العَرَبِيَّةُ جميلة", [(0x621, 0x64A)]),
    ("Persian", "سلام دنیا، زبان فارسی گچپژ", [(0x620, 0x6D3)]),
    ("Syriac", "ܫܠܡܐ ܥܠܡܐ", [(0x710, 0x72F)]),
    ("Thaana", "ދިވެހިބަސް", [(0x780, 0x7A5)]),
    ("Devanagari", "नमस्ते दुनिया, हिन्दी भाषा। क्षत्रिय", [(0x905, 0x939)]),
    ("Bengali", "হ্যালো বিশ্ব, বাংলা ভাষা", [(0x985, 0x9B9)]),
    ("Gurmukhi", "ਸਤਿ ਸ੍ਰੀ ਅਕਾਲ ਦੁਨੀਆ", [(0xA05, 0xA39)]),
    ("Gujarati", "નમસ્તે વિશ્વ, ગુજરાતી", [(0xA85, 0xAB9)]),
    ("Tamil", "வணக்கம் உலகம், தமிழ் மொழி", [(0xB85, 0xBB9)]),
    ("Telugu", "హలో ప్రపంచం, తెలుగు భాష", [(0xC05, 0xC39)]),
    ("Kannada", "ನಮಸ್ಕಾರ ಜಗತ್ತು, ಕನ್ನಡ", [(0xC85, 0xCB9)]),
    ("Malayalam", "ഹലോ വേൾഡ്, മലയാളം", [(0xD05, 0xD39)]),
    ("Sinhala", "ආයුබෝවන් ලෝකය", [(0xD85, 0xDC6)]),
    ("Thai", "สวัสดีชาวโลก ภาษาไทยไม่มีการเว้นวรรค", [(0xE01, 0xE30)]),
    ("Lao", "ສະບາຍດີ ໂລກ", [(0xE81, 0xEAE)]),
    ("Tibetan", "བཀྲ་ཤིས་བདེ་ལེགས། བོད་ཡིག", [(0xF40, 0xF6C)]),
    ("Myanmar", "မင်္ဂလာပါ ကမ္ဘာ", [(0x1000, 0x102A)]),
    ("Khmer", "សួស្តី​ពិភពលោក", [(0x1780, 0x17B3)]),
    ("Ethiopic", "ሰላም ልዑል፣ አማርኛ ቋንቋ።", [(0x1200, 0x1357)]),
    ("Cherokee", "ᎣᏏᏲ ᎡᎶᎯ", [(0x13A0, 0x13F4)]),
    ("Canadian syllabics", "ᐊᐃᓐᓇᐅᓯᖅ ᐃᓄᒃᑎᑐᑦ", [(0x1401, 0x166C)]),
    ("Mongolian", "ᠮᠣᠩᠭᠣᠯ ᠪᠢᠴᠢᠭ", [(0x1820, 0x1877)]),
    ("Runic", "ᚠᚢᚦᚨᚱᚲ ᚷᚹ", [(0x16A0, 0x16EA)]),
    ("Han/Simplified", "你好，世界！人力资源部的俱乐部在新加坡。", [(0x4E00, 0x9FA5)]),
    ("Han/Traditional", "繁體中文測試：臺灣、龜、鬱。", [(0x4E00, 0x9FA5)]),
    (
        "Japanese",
        "こんにちは世界。カタカナとひらがな、漢字。ｶﾀｶﾅ",
        [(0x3041, 0x3096), (0x30A1, 0x30FA)],
    ),
    ("Hangul", "안녕하세요 세계, 한국어 문장입니다.", [(0xAC00, 0xD7A3)]),
    ("Yi", "ꆈꌠꁱꂷ", [(0xA000, 0xA48C)]),
    ("Gothic", "𐌷𐌰𐌹𐌻𐍃 𐌼𐌹𐌳𐌾𐌿𐌽𐌲𐌰𐍂𐌳", [(0x10330, 0x1034A)]),
    ("Math alphanumerics", "𝐀𝐁𝐂 𝒜𝒷𝒸 𝔄𝔅 𝕏𝕐 ∀x∈ℝ: x²≥0", [(0x1D400, 0x1D6A5)]),
]

EMOJI = [
    "😀", "😂🤣", "👍🏽", "👋🏿", "🧑‍💻", "👨‍👩‍👧‍👦", "👩‍❤️‍💋‍👨", "🏳️‍🌈", "🏴‍☠️", "❤️", "❤︎",
    "🇺🇸🇯🇵🇩🇪", "🇫🇷", "1️⃣2️⃣#️⃣", "🏴󠁧󠁢󠁳󠁣󠁴󠁿", "🫠🫶🪿", "🧔🏻‍♀️", "👁️‍🗨️", "🐈‍⬛", "☺", "✌️✌🏼",
]  # fmt: skip

COMBINING = [
    "e\u0301", "a\u0300\u0316", "n\u0303", "o\u0308\u0304", "Z\u0351\u0334\u0327\u0300\u0300",
    "\u1100\u1161\u11a8", "\u0915\u094d\u0937", "A\u030a", "\u212b", "\u1e9b\u0323", "i\u0307",
    "\u0627\u0653", "\u05e9\u05c1\u05b8", "\u0e01\u0e34\u0e4a", "\u0301", "\u0301\u0301x",
]  # fmt: skip

CODE = [
    "def fib(n: int) -> int:\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "#include <stdio.h>\nint main(void) {\n\tprintf(\"%d\\n\", 42);\n\treturn 0;\n}\n",
    "const f = async (x) => { await fetch(`/api/${x}?q=1&r=2`); };\n",
    '{"key": [1, 2.5e-3, null, true], "nested": {"a": "b\\u00e9"}}',
    "<html><body class=\"main\"><p>Hi &amp; bye</p></body></html>",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC;",
    "for f in *.txt; do echo \"$f\" | sed -e 's/a/b/g' >> out.log; done",
    r"^(?:[a-z0-9!#$%&'*+/=?^_`{|}~-]+)@(?:[a-z0-9-]+\.)+[a-z]{2,}$",
    "fn main() { let v: Vec<u8> = vec![0x1F; 16]; println!(\"{:?}\", v); }",
    "x=1;y=2\r\nz=x+y\r\n\r\n",
    "    \t  mixed\t\tindent\n\t    here",
    "if (a && b || !c) { a <<= 2; b >>>= 1; c ??= d?.e ?? f; }",
    "// comment\n/* block\n * comment */\n# hash comment\n-- sql comment",
    "!!!???...,,,;;;:::---___+++===***&&&|||^^^%%%$$$###@@@~~~```",
    "'''docstring''' \"\"\"another\"\"\" `backticks` ~~strike~~ **bold** __under__",
]  # fmt: skip

SPECIAL_TEXT = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<tool_call>",
    "</tool_call>", "<|vision_start|>", "<|image_pad|>", "<|fim_prefix|>", "<tts_text_bos_single>",
    "<|audio_pad|>", "<tool_response>", "<|im_", "im_end|>", "<|", "|>", "<|extra_0|>",
]  # fmt: skip

DIGITS = [
    "0", "42", "1234567890", "3.14159265358979", "-0.5e+10", "1,000,000.00", "0x7fffffff",
    "٠١٢٣٤٥٦٧٨٩", "۰۱۲۳", "०१२३४५६७८९", "০১২৩", "๐๑๒๓", "０１２３４５", "¹²³⁴", "₀₁₂", "½¾⅞",
    "Ⅰ Ⅱ Ⅻ ⅻ", "①②③", "𝟎𝟏𝟐", "२०२६-०५-०१", "2026-05-01T12:34:56Z", "+1 (555) 010-9999",
]  # fmt: skip

WHITESPACE = [
    " ", "  ", "\t", "\n", "\r\n", "\r", "\n\n\n", " \n ", "\t\n\t\n", "\u00a0", "\u3000",
    "\u2028", "\u2029", "\u202f", "\u2009", "\u200b", "\x0b\x0c", "\x85", "\x1c\x1d\x1e\x1f",
    " \r\n\r\n ", "  \t \u00a0 \t  ",
]  # fmt: skip

CONTRACTIONS = [
    "it's", "IT'S", "don't", "DON'T", "we're", "WE'RE", "I've", "I'm", "we'll", "WE'LL", "he'd",
    "'s'S't'T're'RE've'VE'm'M'll'LL'd'D", "'ſ", "ſ'ſ", "don’t", "rock'n'roll", "'''", "'' s",
]  # fmt: skip

BAD = [
    "\ud800", "\udfff", "a\ud83db", "\udc00\ud800", "\ud83d\ude00", "x\udcffy", "\x00", "a\x00b",
    "\x01\x02\x03\x7f", "\ufffd", "\ufffe\uffff", "\U0010ffff", "\ue000\uf8ff", "\U000f0000",
    "\ufeffBOM", "\u0378\u0379", "\U000e0001\U000e0041", "\u202etxet desrever\u202c",
    "\u200d", "\u200c\u200d\u2060", "\u034f", "\U0001e030\U00011f00\U00031350",
    "\U00010d40\U0001cec0", "\U000e0100\U000e01ef",
]  # fmt: skip


def random_word(rng: random.Random, ranges: list[tuple[int, int]], n: int) -> str:
    lo, hi = rng.choice(ranges)
    return "".join(chr(rng.randint(lo, hi)) for _ in range(n))


def random_code_point(rng: random.Random, allow_surrogates: bool) -> str:
    plane = rng.choice([0, 0, 0, 0, 1, 1, 2, 3, 14, 15, 16])
    while True:
        cp = plane * 0x10000 + rng.randrange(0x10000)
        if allow_surrogates or not 0xD800 <= cp <= 0xDFFF:
            return chr(cp)


def build(seed: int) -> list[str]:
    rng = random.Random(seed)
    out: list[str] = []
    samples = [s for _, s, _ in SCRIPTS]
    glue = [" ", "  ", ", ", ". ", "\n", " - ", "", "\t", "! ", "？", "。"]

    # 1. every fixed sample alone, and its NFD form
    for group in (samples, EMOJI, COMBINING, CODE, SPECIAL_TEXT, DIGITS, WHITESPACE,
                  CONTRACTIONS, BAD):  # fmt: skip
        out += group
    out += [unicodedata.normalize("NFD", s) for s in samples]
    out += [unicodedata.normalize("NFKD", s) for s in samples[::3]]

    # 2. random words from each script's block, with punctuation and spaces
    for _, _, ranges in SCRIPTS:
        for _ in range(12):
            words = [random_word(rng, ranges, rng.randint(1, 12)) for _ in range(rng.randint(1, 6))]
            out.append("".join(w + rng.choice(glue) for w in words))

    # 3. mixtures of every kind of sample
    pools = [samples, EMOJI, COMBINING, CODE, SPECIAL_TEXT, DIGITS, WHITESPACE, CONTRACTIONS, BAD]
    for _ in range(900):
        parts = [rng.choice(rng.choice(pools)) for _ in range(rng.randint(2, 6))]
        out.append("".join(p + rng.choice(glue) for p in parts))

    # 4. special-token text glued to letters, spaces, marks and newlines
    for tok in SPECIAL_TEXT:
        for left, right in [("", ""), ("a", "b"), (" ", " "), ("\n", "\n"), ("x", "\u0301"),
                            ("日本", "語"), ("  ", "\t"), ("'", "s"), (tok, tok)]:  # fmt: skip
            out.append(left + tok + right)

    # 5. long runs of whitespace and repeats (the BPE's long-word path)
    for ws in [" ", "\t", "\n", "\r\n", " \n", "\u3000", "\u00a0"]:
        for n in [7, 16, 33, 64, 129, 500]:
            out.append("a" + ws * n + "b")
            out.append(ws * n)
    for unit in ["ab", "=", "-", "😀", "的", "0", "aaa ", "\u0301", "ha"]:
        out.append(unit * rng.choice([50, 100, 300, 1000]))
    out.append(" " * 4000 + "end")
    out.append("x" * 3000)

    # 6. digits in long runs and mixed with letters
    for _ in range(60):
        digits = "".join(rng.choice("0123456789٠١٢३४") for _ in range(rng.randint(1, 40)))
        prefix, suffix = (
            rng.choice(["", "v", "x ", "abc", "$", "#"]),
            rng.choice(["", "th", "%", " km"]),
        )
        out.append(prefix + digits + suffix)

    # 7. random code points from every plane (with and without surrogates)
    for i in range(500):
        n = rng.randint(1, 24)
        out.append("".join(random_code_point(rng, allow_surrogates=i % 5 == 0) for _ in range(n)))

    # 8. random printable ASCII, the bulk of code and English text
    printable = [chr(c) for c in range(32, 127)] + ["\n", "\t"]
    for _ in range(200):
        out.append("".join(rng.choice(printable) for _ in range(rng.randint(1, 80))))
    return out


_ESCAPED = "[\ud800-\udfff\x85\u2028\u2029]"


def dump(strings: list[str]) -> str:
    lines = []
    for s in strings:
        line = json.dumps(s, ensure_ascii=False)
        # Lone surrogates have no UTF-8 form, and editors break lines at U+0085/2028/2029:
        # keep those as JSON escapes.
        lines.append(re.sub(_ESCAPED, lambda m: f"\\u{ord(m.group()):04x}", line))
    return "\n".join(lines) + "\n"


def load(path: Path = OUT) -> list[str]:
    """The committed corpus."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", type=Path, default=OUT)
    parser.add_argument("--check", action="store_true", help="fail if the file is out of date")
    args = parser.parse_args(argv)
    strings = build(SEED)
    text = dump(strings)
    if args.check:
        if args.output.read_text(encoding="utf-8") != text:
            print(f"{args.output} is stale: rerun tools/make_tokenizer_corpus.py")
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}: {len(strings)} strings, {len(text.encode()) / 1e3:.0f} kB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
