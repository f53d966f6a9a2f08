//! Generators of hostile input: arbitrary bytes, byte-level edits of valid seeds, and
//! structure-aware edits of their JSON/YAML trees (hostile values, removed, added and
//! duplicated keys, deep nesting).

use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::Value;

/// Cases per fuzz target: `SPENDGUARD_FUZZ_CASES` (the long run), else a budget that keeps
/// the normal suite fast.
pub fn cases(default: u32) -> u32 {
    std::env::var("SPENDGUARD_FUZZ_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

pub fn config(default: u32) -> ProptestConfig {
    ProptestConfig {
        cases: cases(default),
        // A failing input is shrunk, but not for ever on a 2-core CI machine.
        max_shrink_iters: 2_000,
        ..ProptestConfig::default()
    }
}

/// Fully arbitrary bytes, mostly short, sometimes long.
pub fn arbitrary_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => proptest::collection::vec(any::<u8>(), 0..256),
        1 => proptest::collection::vec(any::<u8>(), 256..20_000),
    ]
}

/// Byte strings that often trip JSON and YAML parsers.
const TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b"\\",
    b",",
    b":",
    b"null",
    b"-",
    b"0",
    b"e999",
    b"e-999",
    b"1e400",
    b".",
    b"\\u0000",
    b"\\ud800",
    b"\\uDFFF",
    b"\0",
    b"\xff",
    b"\xc3",
    b"\xed\xa0\x80",
    b"\n",
    b"\t",
    b"\r",
    b" ",
    b"\xef\xbb\xbf",
    b"\xe2\x80\xae",
    b"&a ",
    b"*a",
    b"!!binary ",
    b"---\n",
    b"...\n",
    b"? ",
    b"- ",
    b"|\n",
    b">-\n",
    b"%YAML 1.2\n",
    b"<<: ",
    b"~",
    b".nan",
    b"!Rust ",
    b"#",
    b"'",
    b"\"\":",
];

/// One edit of the bytes of a seed.
#[derive(Debug, Clone)]
pub enum ByteEdit {
    Delete(Index, usize),
    Duplicate(Index, usize),
    Flip(Index, u8),
    Insert(Index, Vec<u8>),
    Truncate(Index),
    Swap(Index, Index),
}

fn byte_edit() -> impl Strategy<Value = ByteEdit> {
    prop_oneof![
        (any::<Index>(), 1..32usize).prop_map(|(i, n)| ByteEdit::Delete(i, n)),
        (any::<Index>(), 1..64usize).prop_map(|(i, n)| ByteEdit::Duplicate(i, n)),
        (any::<Index>(), 1..=255u8).prop_map(|(i, m)| ByteEdit::Flip(i, m)),
        (any::<Index>(), proptest::sample::select(TOKENS))
            .prop_map(|(i, t)| ByteEdit::Insert(i, t.to_vec())),
        (any::<Index>(), proptest::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, b)| ByteEdit::Insert(i, b)),
        any::<Index>().prop_map(ByteEdit::Truncate),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| ByteEdit::Swap(a, b)),
    ]
}

pub fn byte_edits() -> impl Strategy<Value = Vec<ByteEdit>> {
    proptest::collection::vec(byte_edit(), 1..6)
}

pub fn apply_byte_edits(seed: &[u8], edits: &[ByteEdit]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for e in edits {
        // Positions are taken over len + 1 so an edit can land at the very end.
        let at = |i: &Index, len: usize| i.index(len + 1);
        match e {
            ByteEdit::Delete(i, n) => {
                let s = at(i, b.len()).min(b.len());
                let end = (s + n).min(b.len());
                b.drain(s..end);
            }
            ByteEdit::Duplicate(i, n) => {
                let s = at(i, b.len()).min(b.len());
                let end = (s + n).min(b.len());
                let chunk = b[s..end].to_vec();
                b.splice(end..end, chunk);
            }
            ByteEdit::Flip(i, m) if !b.is_empty() => {
                let s = i.index(b.len());
                b[s] ^= m;
            }
            ByteEdit::Flip(..) => {}
            ByteEdit::Insert(i, t) => {
                let s = at(i, b.len());
                b.splice(s..s, t.iter().copied());
            }
            ByteEdit::Truncate(i) => b.truncate(at(i, b.len())),
            ByteEdit::Swap(x, y) if !b.is_empty() => {
                let (x, y) = (x.index(b.len()), y.index(b.len()));
                b.swap(x, y);
            }
            ByteEdit::Swap(..) => {}
        }
    }
    b
}

/// Hostile JSON values, as raw JSON text (some cannot be held by `serde_json::Value`:
/// out-of-range numbers, lone surrogates, nesting deeper than its recursion limit).
pub fn hostile_json() -> BoxedStrategy<String> {
    const FIXED: &[&str] = &[
        "null",
        "true",
        "false",
        "0",
        "-0",
        "-1",
        "-250.00",
        "\"-250.00\"",
        "\"0\"",
        "\"0.00\"",
        "0.001",
        "\"0.001\"",
        "1e400",
        "-1e400",
        "1e-400",
        "\"1e400\"",
        "\"1e-400\"",
        "\"9e2147483647\"",
        "\"1e-2147483648\"",
        "\"1e99999999999999999999\"",
        "123456789012345678901234567890123456789",
        "\"79228162514264337593543950336\"",
        "\"79228162514264337593543950335\"",
        "\"-79228162514264337593543950335\"",
        "\"0.0000000000000000000000000001\"",
        "\"1000000000000.00\"",
        "\"1000000000000.01\"",
        "\"NaN\"",
        "\"nan\"",
        "\"Infinity\"",
        "\"-inf\"",
        "\" 250 \"",
        "\"250,00\"",
        "\"1_000\"",
        "\"0x10\"",
        "\"+5\"",
        "\"5.\"",
        "\".5\"",
        "\"\"",
        "\" \"",
        "[]",
        "{}",
        "[null]",
        "{\"\":null}",
        "\"\\u0000\"",
        "\"a\\u0000b\"",
        "\"\\ud800\"",
        "\"\\udc00\\ud800\"",
        "\"\\u001b[31m\"",
        "\"\\n\\r\\t\"",
        "\"\u{202e}gnp.exe\"",
        "\"\u{200b}\"",
        "\"\u{feff}BRL\"",
        "\"ÇÃÕ\"",
        "\"🙈🙉🙊\"",
        "\"BRL\"",
        "\"brl\"",
        "\"XXX\"",
        "\"APPROVE\"",
        "\"REJECT\"",
        "\"approve\"",
        "\"PIX\"",
        "\"global\"",
        "\"agent:\"",
        "\"entity:x\"",
        "\"agent:a:b\"",
        "\"2026-11-25T15:00:00Z\"",
        "\"2026-02-30T25:61:61Z\"",
        "\"+262143-12-31T23:59:59Z\"",
        "\"-262144-01-01T00:00:00Z\"",
        "\"1970-01-01T00:00:00+99:99\"",
        "\"America/Sao_Paulo\"",
        "\"Mars/Olympus\"",
        "\"24h\"",
        "\"9999999999999999999d\"",
        "\"0s\"",
        "\"1h-5m\"",
        "4294967296",
        "18446744073709551616",
        "-9223372036854775809",
        "1.7976931348623157e308",
        "5e-324",
    ];
    prop_oneof![
        8 => proptest::sample::select(FIXED).prop_map(str::to_string),
        // Very long strings, around and beyond every length limit.
        1 => (1usize..20_000, proptest::sample::select(&["a", "9", "é", "\\u0000", "*", "🙈"][..]))
            .prop_map(|(n, c)| format!("\"{}\"", c.repeat(n))),
        // Arbitrary unicode (printable and not).
        2 => any::<String>().prop_map(|s| Value::String(s).to_string()),
        2 => proptest::collection::vec(any::<char>(), 0..40)
            .prop_map(|v| Value::String(v.into_iter().collect()).to_string()),
        // Numbers of every size and shape.
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => any::<u64>().prop_map(|n| n.to_string()),
        1 => any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| format!("{f:e}")),
        1 => any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| format!("\"{f}\"")),
        1 => (any::<i64>(), 0u32..40).prop_map(|(m, s)| format!("\"{m}e-{s}\"")),
        // Deep nesting, beyond the parsers' recursion limits.
        1 => (1usize..3_000).prop_map(|d| format!("{}{}", "[".repeat(d), "]".repeat(d))),
        1 => (1usize..1_000).prop_map(|d| format!("{}1{}", "{\"a\":".repeat(d), "}".repeat(d))),
        // Long arrays and objects.
        1 => (1usize..12_000).prop_map(|n| format!("[{}1]", "1,".repeat(n))),
        1 => (1usize..2_000).prop_map(|n| {
            let body: Vec<String> = (0..n).map(|i| format!("\"k{i}\":{i}")).collect();
            format!("{{{}}}", body.join(","))
        }),
    ]
    .boxed()
}

/// Extra hostile values that only mean something to YAML.
pub fn hostile_yaml() -> BoxedStrategy<String> {
    const FIXED: &[&str] = &[
        "~",
        ".nan",
        ".inf",
        "-.inf",
        "0x1F",
        "0o17",
        "1_000",
        "yes",
        "no",
        "2026-01-01",
        "&a [1, 2]",
        "*a",
        "*undefined",
        "!!binary aGVsbG8=",
        "!!float 1",
        "!custom x",
        "!Rust {}",
        "!!set {a, b}",
        "? complex key",
        "'single ''quoted'''",
        "|\n  block\n  scalar",
        "@reserved",
        "`reserved",
        "{a: 1, a: 2}",
        "[a, [b, [c, [d]]]]",
    ];
    prop_oneof![
        3 => hostile_json(),
        1 => proptest::sample::select(FIXED).prop_map(str::to_string),
    ]
    .boxed()
}

/// Field names worth adding: real ones (as duplicates or at the wrong level) and junk.
const KEYS: &[&str] = &[
    "intentId",
    "agentId",
    "entityId",
    "amount",
    "currency",
    "category",
    "beneficiary",
    "purpose",
    "metadata",
    "approverId",
    "vote",
    "signature",
    "signedAt",
    "scope",
    "on",
    "actor",
    "reason",
    "sentAt",
    "name",
    "version",
    "caps",
    "perTxn",
    "rules",
    "if",
    "then",
    "effect",
    "approvals",
    "rego",
    "module",
    "apiVersion",
    "kind",
    "spec",
    "metadata",
    "agents",
    "entities",
    "default",
    "",
    "__proto__",
    "constructor",
    "\u{0}",
    "é",
    "AMOUNT",
];

/// One structure-aware edit. The node is picked among every node of the tree.
#[derive(Debug, Clone)]
pub enum TreeEdit {
    Replace(Index, String),
    Remove(Index),
    AddKey(Index, String, String),
    /// Repeats an existing key of an object with another value (textually: `Value` keeps
    /// one entry per key, so the duplicate is spliced in after serialization).
    DuplicateKey(Index, Index, String),
    /// Wraps the node in `depth` arrays.
    Wrap(Index, usize),
}

pub fn tree_edits(hostile: BoxedStrategy<String>) -> impl Strategy<Value = Vec<TreeEdit>> {
    let key = prop_oneof![
        4 => proptest::sample::select(KEYS).prop_map(str::to_string),
        1 => any::<String>(),
    ];
    let edit = prop_oneof![
        4 => (any::<Index>(), hostile.clone()).prop_map(|(i, h)| TreeEdit::Replace(i, h)),
        2 => any::<Index>().prop_map(TreeEdit::Remove),
        2 => (any::<Index>(), key, hostile.clone()).prop_map(|(i, k, h)| TreeEdit::AddKey(i, k, h)),
        2 => (any::<Index>(), any::<Index>(), hostile)
            .prop_map(|(i, k, h)| TreeEdit::DuplicateKey(i, k, h)),
        1 => (any::<Index>(), 1usize..200).prop_map(|(i, d)| TreeEdit::Wrap(i, d)),
    ];
    proptest::collection::vec(edit, 1..5)
}

#[derive(Debug, Clone)]
enum Seg {
    Key(String),
    Idx(usize),
}

fn paths(v: &Value, prefix: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
    out.push(prefix.clone());
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                prefix.push(Seg::Key(k.clone()));
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                prefix.push(Seg::Idx(i));
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

fn node_mut<'a>(v: &'a mut Value, path: &[Seg]) -> Option<&'a mut Value> {
    let mut cur = v;
    for seg in path {
        cur = match (seg, cur) {
            (Seg::Key(k), Value::Object(m)) => m.get_mut(k)?,
            (Seg::Idx(i), Value::Array(a)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn placeholder(i: usize) -> String {
    format!("@@HOSTILE{i}@@")
}

fn dup_key(i: usize) -> String {
    format!("@@DUPKEY{i}@@")
}

/// Text format to write the edited tree in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    Json,
    Yaml,
}

/// Applies the edits to the tree and writes it out, hostile raw text spliced in.
pub fn apply_tree_edits(seed: &Value, edits: &[TreeEdit], syntax: Syntax) -> String {
    let mut v = seed.clone();
    // (placeholder text, raw replacement)
    let mut splices: Vec<(String, String)> = Vec::new();
    for (n, edit) in edits.iter().enumerate() {
        let mut all = Vec::new();
        paths(&v, &mut Vec::new(), &mut all);
        let pick = |i: &Index| all[i.index(all.len())].clone();
        match edit {
            TreeEdit::Replace(i, raw) => {
                if let Some(node) = node_mut(&mut v, &pick(i)) {
                    *node = Value::String(placeholder(n));
                    splices.push((placeholder(n), raw.clone()));
                }
            }
            TreeEdit::Remove(i) => {
                let path = pick(i);
                if let Some((last, parent)) = path.split_last()
                    && let Some(p) = node_mut(&mut v, parent)
                {
                    match (last, p) {
                        (Seg::Key(k), Value::Object(m)) => {
                            m.remove(k);
                        }
                        (Seg::Idx(i), Value::Array(a)) if *i < a.len() => {
                            a.remove(*i);
                        }
                        _ => {}
                    }
                }
            }
            TreeEdit::AddKey(i, key, raw) => {
                if let Some(Value::Object(m)) = node_mut(&mut v, &pick(i)) {
                    m.insert(key.clone(), Value::String(placeholder(n)));
                    splices.push((placeholder(n), raw.clone()));
                } else if let Some(Value::Array(a)) = node_mut(&mut v, &pick(i)) {
                    a.push(Value::String(placeholder(n)));
                    splices.push((placeholder(n), raw.clone()));
                }
            }
            TreeEdit::DuplicateKey(i, k, raw) => {
                if let Some(Value::Object(m)) = node_mut(&mut v, &pick(i))
                    && !m.is_empty()
                {
                    let existing = m.keys().nth(k.index(m.len())).cloned().unwrap_or_default();
                    m.insert(dup_key(n), Value::String(placeholder(n)));
                    splices.push((placeholder(n), raw.clone()));
                    let quoted = Value::String(existing).to_string();
                    splices.push((dup_key(n), quoted));
                }
            }
            TreeEdit::Wrap(i, depth) => {
                if let Some(node) = node_mut(&mut v, &pick(i)) {
                    let mut wrapped = node.take();
                    for _ in 0..*depth {
                        wrapped = Value::Array(vec![wrapped]);
                    }
                    *node = wrapped;
                }
            }
        }
    }
    let mut text = match syntax {
        Syntax::Json => v.to_string(),
        Syntax::Yaml => serde_yaml::to_string(&v).unwrap_or_else(|_| v.to_string()),
    };
    for (ph, raw) in splices {
        for quoted in [format!("\"{ph}\""), format!("'{ph}'"), ph.clone()] {
            if text.contains(&quoted) {
                text = text.replacen(&quoted, &raw, 1);
                break;
            }
        }
    }
    text
}

/// A seed as a tree (JSON or YAML text); `None` for text that is neither.
pub fn tree_of(seed: &str) -> Option<Value> {
    serde_json::from_str(seed)
        .ok()
        .or_else(|| serde_yaml::from_str(seed).ok())
}

/// Hostile input derived from `seeds`: arbitrary bytes, byte edits of a seed, or tree
/// edits of a seed written as JSON or (when `yaml`) YAML.
pub fn hostile_input(seeds: Vec<String>, yaml: bool) -> BoxedStrategy<Vec<u8>> {
    let trees: Vec<(String, Value)> = seeds
        .iter()
        .filter_map(|s| tree_of(s).map(|t| (s.clone(), t)))
        .collect();
    assert!(!trees.is_empty(), "no parseable seed");
    let hostile = if yaml { hostile_yaml() } else { hostile_json() };
    let syntax = if yaml {
        prop_oneof![Just(Syntax::Json), Just(Syntax::Yaml)].boxed()
    } else {
        Just(Syntax::Json).boxed()
    };
    let seeds_b = seeds.clone();
    prop_oneof![
        1 => arbitrary_bytes(),
        // The seeds themselves, unchanged: Ok results get their invariants checked too.
        1 => proptest::sample::select(seeds).prop_map(String::into_bytes),
        3 => (proptest::sample::select(seeds_b), byte_edits())
            .prop_map(|(s, e)| apply_byte_edits(s.as_bytes(), &e)),
        5 => (proptest::sample::select(trees), tree_edits(hostile), syntax)
            .prop_map(|((_, t), e, syn)| apply_tree_edits(&t, &e, syn).into_bytes()),
    ]
    .boxed()
}
