//! The two messages that steer a running assignment: `CancelRequest` and
//! `ApprovalDecision` (CONTRACT.md). Read leniently: the fields the worker acts on must be
//! there with their types, and everything else is ignored, as an assignment's unknown
//! fields are. Before, both were read as strict serde structs, so an extra or odd field
//! (a `decided_at` in ISO-8601, a numeric `reason`) threw away a real decision or cancel.

use serde_json::{Map, Value};

/// `{"assignment_id", "tenant_id", "reason"}`.
#[derive(Debug, Clone, PartialEq)]
pub struct CancelRequest {
    pub assignment_id: String,
    pub tenant_id: String,
    pub reason: Option<String>,
}

/// `{"assignment_id", "approver", "approved": bool, "comment"}`, with an optional
/// `tenant_id` (restricts it to that tenant's request) and `decided_at` (ms).
#[derive(Debug, Clone, PartialEq)]
pub struct ApprovalDecision {
    pub assignment_id: String,
    pub tenant_id: Option<String>,
    pub approver: String,
    pub approved: bool,
    pub comment: Option<String>,
    /// When the approver decided, in ms since the epoch, when sent as a whole number;
    /// whoever shows it checks it against the request's own times.
    pub decided_at: Option<u64>,
}

/// Why a control message was ignored (logged, and counted as malformed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub String);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A cancel request; the tenant may come from the message's `tenant_id` NATS header, as
/// it may for an assignment (a `tenant_id` in the payload wins).
pub fn read_cancel(
    payload: &[u8],
    header_tenant: Option<&str>,
) -> Result<CancelRequest, Malformed> {
    let object = object_of(payload)?;
    let tenant_id = match optional_string(&object, "tenant_id")? {
        Some(tenant) => tenant,
        None => header_tenant
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| missing("tenant_id"))?,
    };
    Ok(CancelRequest {
        assignment_id: required_string(&object, "assignment_id")?,
        tenant_id,
        reason: text_of(object.get("reason")),
    })
}

/// An approval decision.
pub fn read_decision(payload: &[u8]) -> Result<ApprovalDecision, Malformed> {
    let object = object_of(payload)?;
    let approved = match object.get("approved") {
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(Malformed("field `approved` must be true or false".into())),
        None => return Err(missing("approved")),
    };
    Ok(ApprovalDecision {
        assignment_id: required_string(&object, "assignment_id")?,
        tenant_id: optional_string(&object, "tenant_id")?,
        approver: required_string(&object, "approver")?,
        approved,
        comment: text_of(object.get("comment")),
        decided_at: object.get("decided_at").and_then(Value::as_u64),
    })
}

fn object_of(payload: &[u8]) -> Result<Map<String, Value>, Malformed> {
    match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(Malformed("not a JSON object".into())),
        Err(e) => Err(Malformed(format!("not valid JSON: {e}"))),
    }
}

fn missing(key: &str) -> Malformed {
    Malformed(format!("missing required field `{key}`"))
}

/// A non-empty string: the fields that pick what is steered.
fn required_string(object: &Map<String, Value>, key: &str) -> Result<String, Malformed> {
    optional_string(object, key)?.ok_or_else(|| missing(key))
}

/// Absent, null or empty: `None`; any type but a string: malformed (a field that picks
/// what is steered is never guessed at).
fn optional_string(object: &Map<String, Value>, key: &str) -> Result<Option<String>, Malformed> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Malformed(format!("field `{key}` must be a string"))),
    }
}

/// Free text for a person (`reason`, `comment`): a string as it is, any other value as its
/// JSON text; absent or null is none.
fn text_of(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancel_with_extra_and_odd_fields_is_read() {
        let c = read_cancel(
            br#"{"assignment_id":"a","tenant_id":"t","reason":42,"extra":{"x":1}}"#,
            None,
        )
        .expect("read");
        assert_eq!(
            c,
            CancelRequest {
                assignment_id: "a".into(),
                tenant_id: "t".into(),
                reason: Some("42".into()),
            }
        );
        let plain = read_cancel(br#"{"assignment_id":"a","tenant_id":"t"}"#, None).expect("read");
        assert_eq!(plain.reason, None);
    }

    #[test]
    fn a_cancel_takes_its_tenant_from_the_header_when_the_payload_has_none() {
        let c = read_cancel(br#"{"assignment_id":"a"}"#, Some("t1")).expect("read");
        assert_eq!(c.tenant_id, "t1");
        let both =
            read_cancel(br#"{"assignment_id":"a","tenant_id":"t2"}"#, Some("t1")).expect("read");
        assert_eq!(both.tenant_id, "t2", "the payload's tenant wins");
        let none = read_cancel(br#"{"assignment_id":"a"}"#, Some("")).expect_err("no tenant");
        assert!(none.0.contains("tenant_id"), "{none}");
    }

    #[test]
    fn a_cancel_without_what_it_steers_is_malformed() {
        for (raw, why) in [
            (&b"not json"[..], "not valid JSON"),
            (b"[1]", "not a JSON object"),
            (br#"{"tenant_id":"t"}"#, "assignment_id"),
            (br#"{"assignment_id":7,"tenant_id":"t"}"#, "assignment_id"),
            (br#"{"assignment_id":"","tenant_id":"t"}"#, "assignment_id"),
            (br#"{"assignment_id":"a","tenant_id":["t"]}"#, "tenant_id"),
        ] {
            let e = read_cancel(raw, Some("h")).expect_err(why);
            assert!(e.0.contains(why), "{e} should name {why}");
        }
    }

    #[test]
    fn a_decision_with_extra_and_odd_fields_is_read() {
        let d = read_decision(
            br#"{"assignment_id":"a","approver":"u@x","approved":true,"comment":42,"decided_at":"2025-01-27T12:00:00Z","channel":"slack"}"#,
        )
        .expect("read");
        assert_eq!(
            d,
            ApprovalDecision {
                assignment_id: "a".into(),
                tenant_id: None,
                approver: "u@x".into(),
                approved: true,
                comment: Some("42".into()),
                decided_at: None,
            }
        );
        let at = read_decision(
            br#"{"assignment_id":"a","approver":"u","approved":false,"decided_at":1700000000000,"comment":null}"#,
        )
        .expect("read");
        assert_eq!(
            (at.decided_at, at.comment, at.approved),
            (Some(1_700_000_000_000), None, false)
        );
        let negative = read_decision(
            br#"{"assignment_id":"a","approver":"u","approved":true,"decided_at":-1}"#,
        )
        .expect("read");
        assert_eq!(negative.decided_at, None);
    }

    #[test]
    fn a_decision_without_a_verdict_or_approver_is_malformed() {
        for (raw, why) in [
            (&br#"{"assignment_id":"a","approver":"u"}"#[..], "approved"),
            (
                br#"{"assignment_id":"a","approver":"u","approved":"yes"}"#,
                "approved",
            ),
            (br#"{"assignment_id":"a","approved":true}"#, "approver"),
            (
                br#"{"assignment_id":"a","approver":7,"approved":true}"#,
                "approver",
            ),
            (br#"{"approver":"u","approved":true}"#, "assignment_id"),
            (
                br#"{"assignment_id":"a","approver":"u","approved":true,"tenant_id":3}"#,
                "tenant_id",
            ),
        ] {
            let e = read_decision(raw).expect_err(why);
            assert!(e.0.contains(why), "{e} should name {why}");
        }
    }
}
