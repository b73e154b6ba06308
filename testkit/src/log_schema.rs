//! The platform's log schema and a checker for the subset of JSON Schema it uses (type,
//! required, properties, enum, additionalProperties, format date-time).

use serde_json::Value;

/// The platform's log schema: the copy in tests/fixtures/, checked against shared/spec when
/// that folder is there (the CI clone has it beside the repository).
pub fn log_schema() -> Value {
    let here: Value = serde_json::from_str(include_str!(
        "../../tests/fixtures/platform-logging.schema.json"
    ))
    .expect("schema copy is JSON");
    let shared = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/spec/platform-logging.schema.json"
    );
    if let Ok(text) = std::fs::read_to_string(shared) {
        let spec: Value = serde_json::from_str(&text).expect("shared schema is JSON");
        assert_eq!(
            here, spec,
            "tests/fixtures/platform-logging.schema.json differs from {shared}: copy it again"
        );
    }
    here
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`, RFC 3339.
pub fn is_date_time(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|x| x.iter().all(u8::is_ascii_digit));
    if b.len() < 20
        || !digits(0..4)
        || b[4] != b'-'
        || !digits(5..7)
        || b[7] != b'-'
        || !digits(8..10)
    {
        return false;
    }
    if !(b[10] == b'T' || b[10] == b't')
        || !digits(11..13)
        || b[13] != b':'
        || !digits(14..16)
        || b[16] != b':'
        || !digits(17..19)
    {
        return false;
    }
    let mut i = 19;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    match &s[i..] {
        "Z" | "z" => true,
        off => {
            off.len() == 6 && (off.starts_with('+') || off.starts_with('-')) && &off[3..4] == ":"
        }
    }
}

/// The guide's timestamp: UTC with exactly microseconds, `2025-01-27T12:00:00.123456Z`.
pub fn is_utc_micros(s: &str) -> bool {
    is_date_time(s) && s.len() == 27 && s.as_bytes()[19] == b'.' && s.ends_with('Z')
}

/// Violations of `schema` by `v` (type, required, properties, enum, additionalProperties,
/// format date-time); empty when valid.
pub fn schema_errors(schema: &Value, v: &Value, at: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if let Some(t) = schema.get("type").and_then(Value::as_str) {
        let ok = match t {
            "object" => v.is_object(),
            "string" => v.is_string(),
            "number" => v.is_number(),
            "integer" => v.is_i64() || v.is_u64(),
            "boolean" => v.is_boolean(),
            "array" => v.is_array(),
            "null" => v.is_null(),
            _ => true,
        };
        if !ok {
            errs.push(format!("{at}: expected {t}, got {v}"));
            return errs;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(v) {
            errs.push(format!("{at}: {v} not one of {allowed:?}"));
        }
    }
    if schema.get("format").and_then(Value::as_str) == Some("date-time") {
        if let Some(s) = v.as_str() {
            if !is_date_time(s) {
                errs.push(format!("{at}: {s:?} is not an RFC 3339 date-time"));
            }
        }
    }
    if let Some(obj) = v.as_object() {
        for req in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = req.as_str().unwrap_or_default();
            if !obj.contains_key(name) {
                errs.push(format!("{at}: missing required {name:?}"));
            }
        }
        let props = schema.get("properties").and_then(Value::as_object);
        for (k, val) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(sub) => errs.extend(schema_errors(sub, val, &format!("{at}.{k}"))),
                None => match schema.get("additionalProperties") {
                    Some(Value::Bool(false)) => {
                        errs.push(format!("{at}: unexpected property {k:?}"))
                    }
                    Some(sub @ Value::Object(_)) => {
                        errs.extend(schema_errors(sub, val, &format!("{at}.{k}")))
                    }
                    _ => {}
                },
            }
        }
    }
    errs
}
