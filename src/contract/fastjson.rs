//! A `serde_json::Value` written as JSON, byte for byte as serde_json writes it, with a
//! faster string escaper: serde_json looks at every byte of a string through a table; this
//! looks at eight at a time (SWAR) for the bytes that need an escape (`"`, `\` and the
//! controls below 0x20) and copies the runs between them whole. A result's largest string
//! is usually a file's content (1.4 KB of base64 for a 1 KiB `fs.get`): escaping it was
//! 5 % of the worker's CPU per task in issue 12's profile.
//!
//! The text is handed to serde_json as a raw value (its `RawValue` token), so it is copied
//! into the message as is. Same bytes as `serde_json::to_vec` (property test below); the
//! golden examples check the messages around it.

use std::cell::RefCell;

use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};
use serde_json::Value;

/// The struct name serde_json's serializer takes for a raw JSON value (what
/// `serde_json::value::RawValue` serialises as): its text is written verbatim.
const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

/// Serialises a [`Value`] through [`write_value`].
#[derive(Debug, Clone, Copy)]
pub struct FastJson<'a>(pub &'a Value);

thread_local! {
    static TEXT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl Serialize for FastJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        TEXT.with(|cell| {
            let Ok(mut text) = cell.try_borrow_mut() else {
                return self.0.serialize(s); // re-entered: the plain way
            };
            text.clear();
            write_value(&mut text, self.0);
            // Only `str`s and ASCII were written: valid UTF-8.
            let Ok(json) = std::str::from_utf8(&text) else {
                return self.0.serialize(s);
            };
            let mut raw = s.serialize_struct(RAW_VALUE_TOKEN, 1)?;
            raw.serialize_field(RAW_VALUE_TOKEN, json)?;
            let done = raw.end();
            if text.capacity() > 1 << 20 {
                *text = Vec::new(); // one huge result does not pin its size per thread
            }
            done
        })
    }
}

/// `v` as compact JSON, as serde_json writes it (object keys in the map's order).
pub fn write_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        // Short and rare next to strings: serde_json's own formatting (itoa, ryu).
        Value::Number(n) => {
            let _ = serde_json::to_writer(&mut *out, n);
        }
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            out.push(b'{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(out, k);
                out.push(b':');
                write_value(out, item);
            }
            out.push(b'}');
        }
    }
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Whether any of the eight bytes in `x` needs an escape: below 0x20, `"` or `\`. Exact
/// (no false positives): each test is the classic "has a zero byte" trick, whose high bit
/// per byte is set only for a byte that matches (bytes ≥ 0x80 have `!x`'s high bit clear).
fn needs_escape(x: u64) -> bool {
    let below_space = x.wrapping_sub(ONES * 0x20) & !x;
    let quote = (x ^ (ONES * u64::from(b'"'))).wrapping_sub(ONES) & !(x ^ (ONES * u64::from(b'"')));
    let backslash =
        (x ^ (ONES * u64::from(b'\\'))).wrapping_sub(ONES) & !(x ^ (ONES * u64::from(b'\\')));
    (below_space | quote | backslash) & HIGHS != 0
}

fn escape_of(b: u8) -> Option<&'static [u8]> {
    Some(match b {
        b'"' => b"\\\"",
        b'\\' => b"\\\\",
        0x08 => b"\\b",
        0x0c => b"\\f",
        b'\n' => b"\\n",
        b'\r' => b"\\r",
        b'\t' => b"\\t",
        _ => return None,
    })
}

/// `s` as a JSON string, escaped as serde_json escapes (`\uXXXX` in lower-case hex for
/// the other controls; nothing else escaped).
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut run = 0; // start of the bytes not yet copied
    let mut i = 0;
    while i < bytes.len() {
        // Eight bytes at a time while none of them needs an escape.
        if let Some(chunk) = bytes.get(i..i + 8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            if !needs_escape(u64::from_le_bytes(word)) {
                i += 8;
                continue;
            }
        }
        let b = bytes[i];
        if b >= 0x20 && b != b'"' && b != b'\\' {
            i += 1;
            continue;
        }
        out.extend_from_slice(&bytes[run..i]);
        match escape_of(b) {
            Some(e) => out.extend_from_slice(e),
            None => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]),
        }
        i += 1;
        run = i;
    }
    out.extend_from_slice(&bytes[run..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fast(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        write_value(&mut out, v);
        out
    }

    #[test]
    fn escapes_as_serde_json_does() {
        let mut all = String::new();
        for c in (0u8..0x80).map(char::from) {
            all.push(c);
        }
        all.push_str("é€😀\u{2028}\u{7f}");
        for s in [
            String::new(),
            all.clone(),
            "a\"b\\c\nd".repeat(9),
            "x".repeat(17),
            "\u{1f}".repeat(8),
        ] {
            let v = Value::String(s);
            assert_eq!(fast(&v), serde_json::to_vec(&v).expect("json"));
        }
    }

    #[test]
    fn a_message_with_a_fast_value_is_the_same_bytes() {
        #[derive(Serialize)]
        struct Outer<'a> {
            before: u8,
            result: FastJson<'a>,
            after: &'a str,
        }
        #[derive(Serialize)]
        struct Plain<'a> {
            before: u8,
            result: &'a Value,
            after: &'a str,
        }
        let v = serde_json::json!({"path": "a/\"b\".bin", "n": [1, -2, 3.5, null, true],
            "content_base64": "AAEC\u{0}", "nested": {"k": "\t"}});
        let fast = serde_json::to_vec(&Outer {
            before: 1,
            result: FastJson(&v),
            after: "z",
        });
        let plain = serde_json::to_vec(&Plain {
            before: 1,
            result: &v,
            after: "z",
        });
        assert_eq!(fast.expect("fast"), plain.expect("plain"));
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<u64>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            any::<String>().prop_map(Value::String),
            proptest::collection::vec(0u8..0x80, 0..40)
                .prop_map(|b| Value::String(b.into_iter().map(char::from).collect())),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                proptest::collection::vec((any::<String>(), inner), 0..8)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn any_value_is_written_as_serde_json_writes_it(v in arb_value()) {
            prop_assert_eq!(fast(&v), serde_json::to_vec(&v).expect("json"));
        }
    }
}
