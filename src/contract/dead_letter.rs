//! A DLQ entry that fits the broker. An entry holds the error result and a copy of the
//! original message, so one for a message near NATS `max_payload` is over it: the client
//! refuses it, and the entry was lost (an unparseable payload was even handed back and
//! redelivered forever, its entry refused each time). Here the copy of the original is
//! shortened until the entry fits, and the entry says what was left out (`truncated`):
//! - a `payload` / `payload_base64` keeps its start;
//! - an `assignment` keeps its members of up to [`SMALL`] bytes (inside objects too, one
//!   level down: `job.type` stays, `job.content` goes), else only its ids and `job.type`;
//! - when not even that fits (ids that large), the entry holds no copy at all.
//!
//! Only entries over the limit take this path; the others are encoded once, as before.

use bytes::Bytes;
use serde_json::{Map, Value};

use super::wire::{encode, DeadLetter, Original, Truncated};

/// A member of an assignment larger than this (encoded) is left out of a shortened copy.
pub const SMALL: usize = 1024;

/// What `truncated` itself may take (it is added after the copy was sized).
const MARKER_ROOM: usize = 256;

/// The members kept when the small ones alone do not fit: what identifies the assignment.
const ID_KEYS: [&str; 8] = [
    "version",
    "assignment_id",
    "tenant_id",
    "request_id",
    "trace_id",
    "run_id",
    "flow_id",
    "step_id",
];

/// `entry` as JSON of at most `limit` bytes where its copy of the original can be
/// shortened to that; otherwise as short as it gets (its result alone is over).
pub fn encode_dead_letter(mut entry: DeadLetter<'_>, limit: usize) -> Bytes {
    let body = encode(&entry);
    if body.len() <= limit {
        return body;
    }
    let Some(original) = entry.original.take() else {
        return body;
    };
    // The bytes the copy may take: what it takes now, less what the entry is over by.
    let over = body.len() - limit + MARKER_ROOM;
    let copy_now = encode(&original).len();
    let room = copy_now.saturating_sub(over);
    for (original, truncated) in shortened(original, room) {
        entry.original = original;
        entry.truncated = Some(truncated);
        let body = encode(&entry);
        if body.len() <= limit {
            return body;
        }
    }
    encode(&entry)
}

/// Ever shorter copies of `original` (the first sized to take about `room` bytes),
/// ending with none at all.
fn shortened(original: Original<'_>, room: usize) -> Vec<(Option<Original<'_>>, Truncated)> {
    let none = |original_bytes| {
        let kept_bytes = Some(0);
        let dropped = Vec::new();
        (
            None,
            Truncated {
                original_bytes,
                kept_bytes,
                dropped,
            },
        )
    };
    match original {
        Original::Text(text) => {
            let mut out = Vec::new();
            // The model of the escapes is exact; the halvings are a guard all the same.
            let mut budget = room;
            for _ in 0..3 {
                let kept = prefix_within(text, budget);
                let truncated = Truncated {
                    original_bytes: text.len(),
                    kept_bytes: Some(kept.len()),
                    dropped: Vec::new(),
                };
                out.push((Some(Original::Text(kept)), truncated));
                budget /= 2;
            }
            out.push(none(text.len()));
            out
        }
        Original::Base64(b64) => {
            let original_bytes = decoded_len(&b64);
            // Whole groups of four characters: the start of the base64 is the base64 of the
            // payload's start.
            let keep = room.saturating_sub(2).min(b64.len()) / 4 * 4;
            let kept = b64.get(..keep).unwrap_or_default().to_owned();
            let truncated = Truncated {
                original_bytes,
                kept_bytes: Some(decoded_len(&kept)),
                dropped: Vec::new(),
            };
            vec![
                (Some(Original::Base64(kept)), truncated),
                none(original_bytes),
            ]
        }
        Original::Assignment(raw) => shortened_assignment(raw.get()),
        Original::Shortened(value) => {
            let text = value.to_string();
            shortened_assignment(&text)
        }
    }
}

/// The assignment with only its small members, then with only its ids, then none.
fn shortened_assignment(text: &str) -> Vec<(Option<Original<'static>>, Truncated)> {
    let original_bytes = text.len();
    let Ok(Value::Object(top)) = serde_json::from_str::<Value>(text) else {
        let dropped = Vec::new();
        let kept_bytes = Some(0);
        return vec![(
            None,
            Truncated {
                original_bytes,
                kept_bytes,
                dropped,
            },
        )];
    };
    let copy = |kept: Map<String, Value>| {
        let mut dropped = Vec::new();
        left_out(&top, &kept, "", &mut dropped);
        let truncated = Truncated {
            original_bytes,
            kept_bytes: None,
            dropped,
        };
        (Some(Original::Shortened(Value::Object(kept))), truncated)
    };
    let everything = Truncated {
        original_bytes,
        kept_bytes: None,
        dropped: vec!["assignment".to_owned()],
    };
    vec![
        copy(small_members(&top, 1)),
        copy(id_members(&top)),
        (None, everything),
    ]
}

/// The members of `map` of at most [`SMALL`] bytes; a larger object is kept with its own
/// small members while `depth` allows.
fn small_members(map: &Map<String, Value>, depth: u32) -> Map<String, Value> {
    let mut kept = Map::new();
    for (key, value) in map {
        if encoded_len(value) <= SMALL {
            kept.insert(key.clone(), value.clone());
        } else if let (Value::Object(inner), true) = (value, depth > 0) {
            kept.insert(key.clone(), Value::Object(small_members(inner, depth - 1)));
        }
    }
    kept
}

/// The dotted paths of the members of `original` that `kept` lacks.
fn left_out(
    original: &Map<String, Value>,
    kept: &Map<String, Value>,
    path: &str,
    out: &mut Vec<String>,
) {
    for (key, value) in original {
        let here = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        match (value, kept.get(key)) {
            (_, None) => out.push(here),
            (Value::Object(inner), Some(Value::Object(kept_inner))) => {
                left_out(inner, kept_inner, &here, out)
            }
            _ => {}
        }
    }
}

/// The assignment's ids (strings of at most [`SMALL`] bytes) and its `job.type`.
fn id_members(top: &Map<String, Value>) -> Map<String, Value> {
    let mut kept = Map::new();
    for key in ID_KEYS {
        if let Some(v @ Value::String(s)) = top.get(key) {
            if s.len() <= SMALL {
                kept.insert(key.to_owned(), v.clone());
            }
        }
    }
    let job_type = top.get("job").and_then(|j| j.get("type"));
    if let Some(t @ Value::String(s)) = job_type {
        if s.len() <= SMALL {
            kept.insert("job".to_owned(), serde_json::json!({ "type": t }));
        }
    }
    kept
}

fn encoded_len(value: &Value) -> usize {
    serde_json::to_vec(value).map_or(usize::MAX, |v| v.len())
}

/// The longest start of `text` (ending on a character boundary) whose JSON string escape
/// takes at most `budget` bytes.
fn prefix_within(text: &str, budget: usize) -> &str {
    let mut used = 0usize;
    let mut end = 0;
    for (i, b) in text.bytes().enumerate() {
        used += escaped_len(b);
        if used > budget {
            break;
        }
        end = i + 1;
    }
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// What one byte of a string takes in JSON as serde_json writes it: `"` `\` and the
/// short-escaped controls two, other controls six (`\u00XX`), every other byte itself.
fn escaped_len(b: u8) -> usize {
    match b {
        b'"' | b'\\' | b'\x08' | b'\t' | b'\n' | b'\x0c' | b'\r' => 2,
        0..=0x1f => 6,
        _ => 1,
    }
}

/// The number of bytes `b64` (standard, padded, as the worker wrote it) decodes to.
fn decoded_len(b64: &str) -> usize {
    let padding = b64.bytes().rev().take_while(|&b| b == b'=').count().min(2);
    (b64.len() / 4 * 3).saturating_sub(padding)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::codes::{ErrorCode, Status};
    use crate::contract::error::TaskError;
    use crate::contract::wire::{ExecResult, Ids, Outcome, WorkerFacts};
    use proptest::prelude::*;
    use serde_json::json;

    const WORKER: WorkerFacts<'static> = WorkerFacts {
        worker_id: "worker-1",
        sandbox: false,
    };

    /// Encodes a DLQ entry for `original` under `limit` and reads it back.
    fn fitted(original: Original<'_>, limit: usize) -> (usize, Value) {
        let error = TaskError::new(ErrorCode::InvalidFormat, "assignment is not valid JSON");
        let outcome = Outcome {
            status: Status::Error,
            result: None,
            error: Some(&error),
            attempts: 0,
            latency_ms: 0,
            cost: 0.0,
            device: None,
        };
        let entry = DeadLetter {
            result: ExecResult::new(&Ids::default(), None, &outcome, WORKER, 1),
            dlq_reason: "unparseable",
            worker_id: "worker-1",
            failed_at: 1,
            original: Some(original),
            truncated: None,
        };
        let body = encode_dead_letter(entry, limit);
        let value = serde_json::from_slice(&body).expect("a DLQ entry is JSON");
        (body.len(), value)
    }

    fn raw(v: &Value) -> Box<serde_json::value::RawValue> {
        serde_json::value::RawValue::from_string(v.to_string()).expect("json")
    }

    #[test]
    fn an_entry_that_fits_is_left_whole() {
        let (_, v) = fitted(Original::Text("not json"), 1 << 20);
        assert_eq!(v["payload"], "not json");
        assert!(v.get("truncated").is_none(), "{v}");
    }

    #[test]
    fn a_long_payload_keeps_as_much_of_its_start_as_fits() {
        // Quotes and control characters take two and six bytes in JSON.
        let text = "ab\"c\u{1}é\n".repeat(40_000);
        let limit = 100_000;
        let (len, v) = fitted(Original::Text(&text), limit);
        assert!(len <= limit, "{len}");
        assert!(len > limit - MARKER_ROOM - 64, "as much as fits: {len}");
        let kept = v["payload"].as_str().expect("payload kept as text");
        assert!(text.starts_with(kept));
        assert_eq!(v["truncated"]["original_bytes"], text.len());
        assert_eq!(v["truncated"]["kept_bytes"], kept.len());
    }

    #[test]
    fn a_long_binary_payload_keeps_the_base64_of_its_start() {
        use base64::Engine as _;
        let bytes: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8 | 0x80).collect();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
        let limit = 64 << 10;
        let (len, v) = fitted(Original::Base64(b64), limit);
        assert!(len <= limit && len > limit - MARKER_ROOM - 64, "{len}");
        let kept = base64::engine::general_purpose::STANDARD
            .decode(v["payload_base64"].as_str().expect("base64 kept"))
            .expect("whole base64");
        assert_eq!(kept[..], bytes[..kept.len()]);
        assert_eq!(v["truncated"]["original_bytes"], bytes.len());
        assert_eq!(v["truncated"]["kept_bytes"], kept.len());
    }

    #[test]
    fn a_large_assignment_keeps_its_small_members_and_names_the_others() {
        let a = json!({
            "version": "1", "assignment_id": "a-1", "tenant_id": "t",
            "job": {"type": "fs.put", "path": "/x", "content": "x".repeat(900_000)},
            "note": "y".repeat(5_000),
        });
        let (len, v) = fitted(Original::Assignment(&raw(&a)), 64 << 10);
        assert!(len <= 64 << 10, "{len}");
        let kept = &v["assignment"];
        let want = json!({"version": "1", "assignment_id": "a-1", "tenant_id": "t",
                          "job": {"type": "fs.put", "path": "/x"}});
        assert!(kept == &want, "kept {} bytes", kept.to_string().len());
        assert_eq!(v["truncated"]["dropped"], json!(["job.content", "note"]));
        assert_eq!(v["truncated"]["original_bytes"], a.to_string().len());
        assert!(
            v["truncated"].get("kept_bytes").is_none(),
            "{}",
            v["truncated"]
        );
    }

    #[test]
    fn many_small_members_give_way_to_the_ids() {
        let mut a = json!({"version": "1", "assignment_id": "a-2", "tenant_id": "t",
                           "request_id": "r", "job": {"type": "http.request"}});
        for i in 0..5_000 {
            a[format!("k{i}")] = json!("z".repeat(100));
        }
        let (len, v) = fitted(Original::Assignment(&raw(&a)), 64 << 10);
        assert!(len <= 64 << 10, "{len}");
        assert_eq!(
            v["assignment"],
            json!({"version": "1", "assignment_id": "a-2", "tenant_id": "t",
                   "request_id": "r", "job": {"type": "http.request"}})
        );
        let dropped = v["truncated"]["dropped"].as_array().expect("dropped");
        assert_eq!(dropped.len(), 5_000);
    }

    #[test]
    fn ids_too_large_for_any_copy_leave_none() {
        let a =
            json!({"assignment_id": "a-3", "request_id": "r".repeat(500), "x": "y".repeat(200)});
        let (len, v) = fitted(Original::Assignment(&raw(&a)), 700);
        assert!(v.get("assignment").is_none(), "{v}");
        assert_eq!(
            v["truncated"]["dropped"],
            json!(["assignment"]),
            "{v} ({len} bytes)"
        );
    }

    proptest! {
        /// Whatever the payload and the limit, the entry fits whenever its result alone does,
        /// and what it keeps is the payload's start.
        #[test]
        fn a_text_payload_is_cut_to_fit_any_limit(
            text in "(\\PC|[\"\\\\\u{0}-\u{1f}]){0,3000}",
            limit in 600usize..8000,
        ) {
            let (len, v) = fitted(Original::Text(&text), limit);
            prop_assert!(len <= limit, "{} > {}", len, limit);
            let kept = v.get("payload").and_then(Value::as_str).unwrap_or_default();
            prop_assert!(text.starts_with(kept));
        }
    }
}
