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

use bytes::BytesMut;

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
            write_value(&mut *text, self.0);
            // Only `str`s and ASCII were written: valid UTF-8.
            let Ok(json) = std::str::from_utf8(&text) else {
                return self.0.serialize(s);
            };
            let done = raw(s, json);
            if text.capacity() > 1 << 20 {
                *text = Vec::new(); // one huge result does not pin its size per thread
            }
            done
        })
    }
}

/// Where JSON is written: a `Vec` (the raw value above) or a message's `BytesMut`.
pub trait Out {
    fn bytes(&mut self, b: &[u8]);
    fn byte(&mut self, b: u8);
    fn room(&mut self, n: usize);
}

impl Out for Vec<u8> {
    fn bytes(&mut self, b: &[u8]) {
        self.extend_from_slice(b);
    }
    fn byte(&mut self, b: u8) {
        self.push(b);
    }
    fn room(&mut self, n: usize) {
        self.reserve(n);
    }
}

impl Out for BytesMut {
    fn bytes(&mut self, b: &[u8]) {
        self.extend_from_slice(b);
    }
    fn byte(&mut self, b: u8) {
        self.extend_from_slice(&[b]);
    }
    fn room(&mut self, n: usize) {
        self.reserve(n);
    }
}

/// `json` handed to serde_json's serializer as a raw value: written as it is.
pub fn raw<S: Serializer>(s: S, json: &str) -> Result<S::Ok, S::Error> {
    let mut raw = s.serialize_struct(RAW_VALUE_TOKEN, 1)?;
    raw.serialize_field(RAW_VALUE_TOKEN, json)?;
    raw.end()
}

/// `v` as compact JSON, as serde_json writes it (object keys in the map's order).
pub fn write_value<O: Out>(out: &mut O, v: &Value) {
    match v {
        Value::Null => out.bytes(b"null"),
        Value::Bool(true) => out.bytes(b"true"),
        Value::Bool(false) => out.bytes(b"false"),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            out.byte(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.byte(b',');
                }
                write_value(out, item);
            }
            out.byte(b']');
        }
        Value::Object(map) => {
            out.byte(b'{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.byte(b',');
                }
                write_str(out, k);
                out.byte(b':');
                write_value(out, item);
            }
            out.byte(b'}');
        }
    }
}

/// A number as serde_json writes it.
fn write_number<O: Out>(out: &mut O, n: &serde_json::Number) {
    if let Some(u) = n.as_u64() {
        write_u64(out, u);
    } else if let Some(i) = n.as_i64() {
        write_i64(out, i);
    } else if let Some(f) = n.as_f64() {
        write_f64(out, f);
    }
}

pub fn write_u64<O: Out>(out: &mut O, v: u64) {
    out.bytes(itoa::Buffer::new().format(v).as_bytes());
}

pub fn write_i64<O: Out>(out: &mut O, v: i64) {
    out.bytes(itoa::Buffer::new().format(v).as_bytes());
}

/// An `f64` as serde_json writes it (`null` when not finite), by serde_json itself: its
/// float format is its own (an exponent's sign, for one), and floats are rare here.
pub fn write_f64<O: Out>(out: &mut O, v: f64) {
    let _ = serde_json::to_writer(Writer(out), &v);
}

/// An [`Out`] as an `io::Write`, for serde_json's own formatting.
struct Writer<'o, O: Out>(&'o mut O);

impl<O: Out> std::io::Write for Writer<'_, O> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.bytes(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A JSON object written field by field, as serde's derive writes a struct: keys in the
/// order they are written, a field skipped when the caller skips it. Keys are the wire
/// types' own names (ASCII, nothing to escape).
#[derive(Debug)]
pub struct Object<'o, O: Out> {
    out: &'o mut O,
    first: bool,
}

impl<'o, O: Out> Object<'o, O> {
    pub fn new(out: &'o mut O) -> Self {
        out.byte(b'{');
        Object { out, first: true }
    }

    fn key(&mut self, key: &'static str) {
        debug_assert!(!key.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\'));
        if !self.first {
            self.out.byte(b',');
        }
        self.first = false;
        self.out.byte(b'"');
        self.out.bytes(key.as_bytes());
        self.out.bytes(b"\":");
    }

    pub fn str(&mut self, key: &'static str, v: &str) {
        self.key(key);
        write_str(self.out, v);
    }

    /// Skipped when `None` (`skip_serializing_if = "Option::is_none"`).
    pub fn opt_str(&mut self, key: &'static str, v: Option<&str>) {
        if let Some(v) = v {
            self.str(key, v);
        }
    }

    pub fn u64(&mut self, key: &'static str, v: u64) {
        self.key(key);
        write_u64(self.out, v);
    }

    pub fn i64(&mut self, key: &'static str, v: i64) {
        self.key(key);
        write_i64(self.out, v);
    }

    pub fn f64(&mut self, key: &'static str, v: f64) {
        self.key(key);
        write_f64(self.out, v);
    }

    pub fn bool(&mut self, key: &'static str, v: bool) {
        self.key(key);
        self.out.bytes(if v { b"true" } else { b"false" });
    }

    pub fn value(&mut self, key: &'static str, v: &Value) {
        self.key(key);
        write_value(self.out, v);
    }

    /// JSON text the caller vouches for, written as it is.
    pub fn json(&mut self, key: &'static str, text: &[u8]) {
        self.key(key);
        self.out.bytes(text);
    }

    /// A string the caller writes itself between the quotes, with nothing to escape
    /// (base64, say): `fill` gets the output.
    pub fn str_with(&mut self, key: &'static str, fill: impl FnOnce(&mut O)) {
        self.key(key);
        self.out.byte(b'"');
        fill(self.out);
        self.out.byte(b'"');
    }

    /// A nested object, written by `fill`.
    pub fn object(&mut self, key: &'static str, fill: impl FnOnce(&mut Object<'_, O>)) {
        self.key(key);
        let mut inner = Object::new(&mut *self.out);
        fill(&mut inner);
        inner.end();
    }

    pub fn end(self) {
        self.out.byte(b'}');
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
pub fn write_str<O: Out>(out: &mut O, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    out.room(bytes.len() + 2);
    out.byte(b'"');
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
        out.bytes(&bytes[run..i]);
        match escape_of(b) {
            Some(e) => out.bytes(e),
            None => out.bytes(&[
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
    out.bytes(&bytes[run..]);
    out.byte(b'"');
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
