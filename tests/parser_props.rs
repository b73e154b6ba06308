//! Hostile input for the assignment parser and validator: whatever the bytes, no panic,
//! and every input is classified as answerable (ids echoed, a code chosen) or unanswerable
//! (DLQ only). Regression cases found while writing it are pinned below.

use beamline_worker::contract::assignment::{
    parse_value, Assignment, AssignmentHeaders, ParseLimits,
};
use beamline_worker::contract::ErrorCode;
use proptest::prelude::*;
use std::time::Duration;

const LIMITS: ParseLimits = ParseLimits {
    default_timeout: Duration::from_secs(30),
    max_timeout: Duration::from_secs(3600),
};

/// Some(code) for an answerable problem, Some(0) for valid, None for unanswerable.
fn classify(raw: &[u8]) -> Option<u16> {
    let mut buf = raw.to_vec();
    let v = parse_value(&mut buf).ok()?;
    let (a, problem) = Assignment::read(&v, &AssignmentHeaders::default(), LIMITS).ok()?;
    assert!(!a.assignment_id.is_empty());
    Some(problem.map_or(0, |e| e.code.code()))
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        ".{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map(".{0,8}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn field() -> impl Strategy<Value = Option<serde_json::Value>> {
    prop_oneof![
        Just(None),
        json_value().prop_map(Some),
        ".{0,140}".prop_map(|s| Some(s.into()))
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(raw in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = classify(&raw);
    }

    /// A value nested `depth` levels inside an otherwise valid assignment (one level for the
    /// assignment, one for the member): valid up to 64 levels in all; past them refused with
    /// 1001 in a member the worker reads (`correlation`), cut and harmless in one it ignores
    /// (`extra`), whatever brackets of either kind and whatever strings hold brackets.
    #[test]
    fn nesting_past_64_levels_is_answered_and_refused(
        kinds in prop::collection::vec(any::<bool>(), 1..200),
        noise in prop::collection::vec("[\\[\\]{}\"\\\\a]{0,6}", 1..200),
    ) {
        let mut open = String::new();
        let mut close = String::new();
        for (k, &object) in kinds.iter().enumerate() {
            let text = serde_json::to_string(&noise[k % noise.len()]).expect("json string");
            if object {
                open.push_str(&format!("{{{text}:"));
                close.insert(0, '}');
            } else {
                open.push_str(&format!("[{text},"));
                close.insert(0, ']');
            }
        }
        for (member, past) in [("correlation", 1001), ("extra", 0)] {
            let raw = format!(
                r#"{{"version":"1","assignment_id":"a","tenant_id":"t","{member}":{open}0{close},"job":{{"type":"fs.get"}}}}"#
            );
            let want = if kinds.len() + 1 > 64 { past } else { 0 };
            prop_assert_eq!(classify(raw.as_bytes()), Some(want), "{}", member);
        }
    }

    #[test]
    fn assignment_shaped_objects_get_a_contract_code(
        id in field(), version in field(), tenant in field(), job_type in field(),
        timeout in field(), extra in json_value(),
    ) {
        let mut o = serde_json::Map::new();
        let mut job = serde_json::Map::new();
        for (k, v) in [("assignment_id", id), ("version", version), ("tenant_id", tenant)] {
            if let Some(v) = v { o.insert(k.into(), v); }
        }
        for (k, v) in [("type", job_type), ("timeout_ms", timeout)] {
            if let Some(v) = v { job.insert(k.into(), v); }
        }
        o.insert("job".into(), job.into());
        o.insert("extra".into(), extra);
        let raw = serde_json::to_vec(&serde_json::Value::Object(o.clone())).expect("json");
        let answerable = o.get("assignment_id").and_then(|v| v.as_str()).is_some_and(|s| !s.is_empty());
        match classify(&raw) {
            None => prop_assert!(!answerable),
            Some(code) => {
                prop_assert!(answerable);
                let known = code == 0 || ErrorCode::ALL.iter().any(|c| c.code() == code);
                prop_assert!(known, "unknown code {}", code);
                prop_assert!(code == 0 || (1001..=1003).contains(&code), "validation codes only, got {}", code);
            }
        }
    }
}

#[test]
fn regression_deeply_nested_arrays_do_not_overflow_the_stack() {
    // Answered: the value past the limit is cut, not parsed. In a member the worker reads
    // that refuses the assignment (1001); in one it ignores (`x`), the assignment is judged
    // on the rest (here: no `version`, 1002).
    for (member, want) in [("correlation", 1001), ("x", 1002)] {
        let raw = format!(
            "{{\"assignment_id\":\"a\",\"{member}\":{}{}}}",
            "[".repeat(200_000),
            "]".repeat(200_000)
        );
        assert_eq!(classify(raw.as_bytes()), Some(want), "{member}");
    }
}

#[test]
fn regression_float_timeout_is_accepted_only_when_whole() {
    let ok = br#"{"version":"1","assignment_id":"a","tenant_id":"t","job":{"type":"fs.get","timeout_ms":5000.0}}"#;
    assert_eq!(classify(ok), Some(0));
    let bad = br#"{"version":"1","assignment_id":"a","tenant_id":"t","job":{"type":"fs.get","timeout_ms":1.5}}"#;
    assert_eq!(classify(bad), Some(1001));
}
