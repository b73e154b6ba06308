//! The contract end to end: acks, results and DLQ entries for valid, invalid and
//! unanswerable assignments; NATS headers; dedupe; cancel; timeouts; overload; sandbox;
//! heartbeat. Each test runs its own nats-server and worker.

use std::time::Duration;

use beamline_testkit::prelude::*;
use serde_json::{json, Value};

fn code(r: &Value) -> u64 {
    r["error"]["code"].as_u64().unwrap_or(0)
}

async fn expect_rejected(router: &Router, id: &str, want: u64, field: &str) {
    let ack = router.ack(id).await;
    assert_eq!(ack["status"], "rejected", "{ack}");
    assert_eq!(ack["error"]["code"], want, "{ack}");
    let msg = ack["message"].as_str().expect("message");
    assert!(
        msg.contains(field),
        "ack message {msg:?} should name {field}"
    );
    let r = router.result(id).await;
    assert_result_shape(&r);
    assert_eq!(
        (r["status"].as_str(), code(&r)),
        (Some("error"), want),
        "{r}"
    );
    assert_eq!(r["attempts"], 0);
    assert_eq!(r["error"]["retryable"], false);
    let d = router.dlq(id).await;
    assert_eq!(d["dlq_reason"], "invalid_assignment", "{d}");
    assert_eq!(d["assignment"]["assignment_id"], id, "{d}");
    assert!(d["failed_at"].is_u64() && d["worker_id"].is_string(), "{d}");
}

#[tokio::test]
async fn invalid_assignments_get_a_rejected_ack_an_error_result_and_a_dlq_entry() {
    let (_n, _w, router) = setup("jetstream", &[]).await;
    let cases: Vec<(&str, Value, u64, &str)> = vec![
        (
            "v-no-tenant",
            json!({"version":"1","assignment_id":"v-no-tenant","job":{"type":"fs.get","path":"x"}}),
            1002,
            "tenant_id",
        ),
        (
            "v-version",
            json!({"version":"2","assignment_id":"v-version","tenant_id":"t","job":{"type":"fs.get","path":"x"}}),
            1001,
            "version",
        ),
        (
            "v-type",
            json!({"version":"1","assignment_id":"v-type","tenant_id":"t","job":{"type":"quantum.compute"}}),
            1001,
            "job.type",
        ),
        (
            "v-no-job",
            json!({"version":"1","assignment_id":"v-no-job","tenant_id":"t"}),
            1002,
            "job",
        ),
        (
            "v-timeout",
            json!({"version":"1","assignment_id":"v-timeout","tenant_id":"t","job":{"type":"fs.get","path":"x","timeout_ms":"soon"}}),
            1003,
            "job.timeout_ms",
        ),
        (
            "v-path",
            json!({"version":"1","assignment_id":"v-path","tenant_id":"t","job":{"type":"fs.get"}}),
            1002,
            "job.path",
        ),
        (
            "v-path-type",
            json!({"version":"1","assignment_id":"v-path-type","tenant_id":"t","job":{"type":"fs.get","path":7}}),
            1003,
            "job.path",
        ),
        (
            "v-approvers",
            json!({"version":"1","assignment_id":"v-approvers","tenant_id":"t","job":{"type":"human.approval","prompt":"ok?"}}),
            1002,
            "job.approvers",
        ),
    ];
    for (_, a, _, _) in &cases {
        router.assign(a).await;
    }
    for (id, _, want, field) in cases {
        expect_rejected(&router, id, want, field).await;
    }
    let long = "x".repeat(129);
    router.assign(&json!({"version":"1","assignment_id": long,"tenant_id":"t","job":{"type":"fs.get","path":"x"}})).await;
    expect_rejected(&router, &long, 1001, "assignment_id").await;
    // JSON grammar, not Unicode text: simd-json alone would have read the high half as
    // U+0000 (simd-lite/simd-json#481) and run the job.
    let lone = r#"{"version":"1","assignment_id":"v-surrogate","tenant_id":"t","request_id":"r\ud800","job":{"type":"fs.get","path":"x\udc00"}}"#;
    router.publish(ASSIGN, lone).await;
    expect_rejected(&router, "v-surrogate", 1003, "surrogate").await;
    let r = router.result("v-surrogate").await;
    assert_eq!(r["request_id"], "r\u{fffd}", "{r}");
}

#[tokio::test]
async fn unanswerable_payloads_go_to_the_dlq_only() {
    let (_n, _w, router) = setup("jetstream", &[]).await;
    router.publish(ASSIGN, "this is not json").await;
    router
        .publish(
            ASSIGN,
            r#"{"version":"1","tenant_id":"t","job":{"type":"fs.get"}}"#,
        )
        .await;
    router.publish(ASSIGN, vec![0xffu8, 0xfe, 0x00]).await;
    router
        .publish(
            ASSIGN,
            r#"{"assignment_id": 42, "request_id": "r-42", "executor": {"provider_id": "p"}, "note": "a \"quoted\" \\ escape"}"#,
        )
        .await;
    // An id with a lone surrogate escape cannot be echoed as it was sent.
    let lone = r#"{"version":"1","assignment_id":"lone\ud800","tenant_id":"t","job":{"type":"fs.get","path":"/x"}}"#;
    router.publish(ASSIGN, lone).await;
    let dlq = router
        .seen
        .wait_count(DLQ, 5, Duration::from_secs(10))
        .await;
    let text = dlq
        .iter()
        .find(|d| d["payload"] == "this is not json")
        .expect("raw text kept");
    assert_eq!(text["error"]["code"], 1003, "{text}");
    assert_eq!(text["dlq_reason"], "unparseable");
    assert!(
        text.get("assignment_id").is_none() && text.get("tenant_id").is_none(),
        "{text}"
    );
    let no_id = dlq
        .iter()
        .find(|d| d["assignment"]["tenant_id"] == "t")
        .expect("object kept");
    assert_eq!(no_id["error"]["code"], 1002, "{no_id}");
    // An object still supplies its other ids and its job type to the entry.
    assert_eq!(
        (&no_id["tenant_id"], &no_id["job"]["type"]),
        (&json!("t"), &json!("fs.get")),
        "{no_id}"
    );
    assert!(
        no_id.get("assignment_id").is_none() && no_id.get("provider_id").is_none(),
        "{no_id}"
    );
    let bin = dlq
        .iter()
        .find(|d| d.get("payload_base64").is_some())
        .expect("binary kept");
    assert_eq!(bin["payload_base64"], "//4A");
    let wrong = dlq
        .iter()
        .find(|d| d["assignment"]["assignment_id"] == 42)
        .expect("escaped payload kept");
    assert_eq!(
        wrong["assignment"]["note"], "a \"quoted\" \\ escape",
        "{wrong}"
    );
    assert_eq!(wrong["error"]["code"], 1003);
    assert_eq!(
        (&wrong["request_id"], &wrong["provider_id"]),
        (&json!("r-42"), &json!("p")),
        "{wrong}"
    );
    assert!(wrong.get("tenant_id").is_none(), "{wrong}");
    let surrogate = dlq
        .iter()
        .find(|d| d["payload"] == lone)
        .expect("the payload of an id with a lone surrogate kept as text");
    assert_eq!(surrogate["error"]["code"], 1003, "{surrogate}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(router.seen.on(ACK).iter().all(|a| a["assignment_id"]
        .as_str()
        .is_some_and(|s| s.starts_with("ready-"))));
}

/// The DLQ entry that holds `payload` as sent (an unanswerable payload), within 15 s.
async fn dlq_entry_holding(router: &Router, payload: &str) -> Value {
    let end = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let dlq = router.seen.on(DLQ);
        if let Some(d) = dlq.into_iter().find(|d| d["payload"] == payload) {
            return d;
        }
        assert!(
            std::time::Instant::now() < end,
            "no DLQ entry holding the payload as sent within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// JSON nested deeper than the worker parses (64 levels) is JSON all the same: one with an
/// `assignment_id` is answered and refused (1001), the value past the limit cut in the
/// DLQ's copy; one that is not JSON at all goes to the DLQ as it was sent. (Before, both
/// went to the DLQ alone, unanswered.)
#[tokio::test]
async fn json_nested_too_deep_is_answered_and_refused() {
    let (_n, w, router) = setup("jetstream", &[]).await;
    let deep = format!(
        r#"{{"version":"1","assignment_id":"v-deep","tenant_id":"t","request_id":"r-deep","options":{{"x":{}{}}},"job":{{"type":"fs.get","path":"x"}}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    router.publish(ASSIGN, deep).await;
    expect_rejected(&router, "v-deep", 1001, "nested deeper than 64 levels").await;
    let r = router.result("v-deep").await;
    assert_eq!(r["request_id"], "r-deep", "{r}");
    assert_eq!(r["tenant_id"], "t", "{r}");
    let d = router.dlq("v-deep").await;
    assert_eq!(d["assignment"]["job"]["path"], "x", "{d}");
    // The copy keeps 64 levels (the assignment, `options`, 62 arrays), then the cut.
    let mut x = &d["assignment"]["options"]["x"];
    for _ in 0..61 {
        x = &x[0];
    }
    let cut = x[0].as_str().expect("the cut value, a string");
    assert!(cut.starts_with("(nested too deep)"), "{:.40}", cut);
    assert_eq!(cut.len(), (100_000 - 62) * 2 - 2);

    // In a member the worker ignores ("Unknown fields are ignored"), the cut harms
    // nothing: the assignment runs.
    std::fs::create_dir_all(w.fs_root.join("t")).expect("dir");
    std::fs::write(w.fs_root.join("t/x"), "ok").expect("file");
    let ignored = format!(
        r#"{{"version":"1","assignment_id":"v-deep-ignored","tenant_id":"t","metadata":{{"x":{}{}}},"job":{{"type":"fs.get","path":"x"}}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    router.publish(ASSIGN, ignored).await;
    let r = router.result("v-deep-ignored").await;
    assert_eq!(
        (r["status"].as_str(), &r["result"]["content"]),
        (Some("success"), &json!("ok")),
        "{r}"
    );

    let open = format!(
        r#"{{"assignment_id":"v-deep-open","x":{}"#,
        "[".repeat(1000)
    );
    router.publish(ASSIGN, open.clone()).await;
    let kept = dlq_entry_holding(&router, &open).await;
    assert_eq!(kept["error"]["code"], 1003, "{}", kept["error"]);
    assert_eq!(kept["dlq_reason"], "unparseable");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(router
        .seen
        .on(ACK)
        .iter()
        .all(|a| a["assignment_id"] != "v-deep-open"));
}

/// A number the parser cannot represent (beyond 64-bit integers, beyond `f64`) is JSON all
/// the same: the assignment is answered and refused (1001), the number cut in the DLQ's
/// copy. (It went to the DLQ alone, as "not valid JSON: InvalidNumber", even in a field
/// the worker ignores.)
#[tokio::test]
async fn numbers_beyond_what_the_parser_reads_are_answered_and_refused() {
    let (_n, w, router) = setup("core", &[]).await;
    for (id, number) in [
        ("n-big", "123456789012345678901234567890"),
        ("n-inf", "1e400"),
        ("n-neg", "-9223372036854775809"),
    ] {
        let raw = format!(
            r#"{{"version":"1","assignment_id":"{id}","tenant_id":"t","request_id":"r-{id}","job":{{"type":"fs.get","path":"x","x":{number}}}}}"#
        );
        router.publish(ASSIGN, raw).await;
        expect_rejected(&router, id, 1001, "number out of the range").await;
        let r = router.result(id).await;
        assert_eq!(r["request_id"], format!("r-{id}"), "{r}");
        let d = router.dlq(id).await;
        let cut = d["assignment"]["job"]["x"]
            .as_str()
            .expect("cut to a string");
        assert_eq!(cut.len(), number.len() - 2, "{cut}");
    }
    // In members the worker ignores (the Router's `decision` and `metadata`), such numbers
    // harm nothing: the assignment runs.
    std::fs::create_dir_all(w.fs_root.join("t")).expect("dir");
    std::fs::write(w.fs_root.join("t/x"), "ok").expect("file");
    let ignored = r#"{"version":"1","assignment_id":"n-ignored","tenant_id":"t","decision":{"expected_cost":1e400},"metadata":{"x":18446744073709551616},"job":{"type":"fs.get","path":"x"}}"#;
    router.publish(ASSIGN, ignored).await;
    let r = router.result("n-ignored").await;
    assert_eq!(
        (r["status"].as_str(), &r["result"]["content"]),
        (Some("success"), &json!("ok")),
        "{r}"
    );
    // Cut, and still not JSON: the DLQ alone, with the payload as it was sent.
    let broken = r#"{"assignment_id":"n-broken","x":1e400,}"#;
    router.publish(ASSIGN, broken).await;
    let kept = dlq_entry_holding(&router, broken).await;
    assert_eq!(kept["error"]["code"], 1003, "{}", kept["error"]);
    assert!(router.seen.for_id(ACK, "n-broken").is_empty());
}

/// A DLQ entry holds a copy of the original message, so for a message near NATS
/// `max_payload` it is over it: the copy is shortened to fit, and the entry says what was
/// left out. (Such entries were refused by the client and lost; an unparseable payload's
/// delivery was handed back each time and redelivered forever.)
#[tokio::test]
async fn dlq_entries_for_messages_near_max_payload_are_shortened_to_fit() {
    let (_n, worker, router) = setup("jetstream", &[]).await;
    let max_payload = 1 << 20;
    // Not UTF-8: its base64 (4/3 of it) is over the limit.
    let binary: Vec<u8> = (0..1_000_000u32).map(|i| 0x80 | (i % 127) as u8).collect();
    router.publish(ASSIGN, binary.clone()).await;
    // A put to a path outside the tenant's root (2003), the assignment just under the limit.
    let mut put = assignment(
        "big-put",
        "t",
        json!({"type": "fs.put", "path": "../outside.bin", "content": ""}),
    );
    let room = max_payload - 600 - put.to_string().len();
    put["job"]["content"] = json!("c".repeat(room));
    let put_len = put.to_string().len();
    assert!(
        put_len < max_payload && put_len > max_payload - 1024,
        "{put_len}"
    );
    router.assign(&put).await;

    let r = router.result("big-put").await;
    assert_eq!(r["error"]["code"], 2003, "{}", r["error"]);
    let d = router.dlq("big-put").await;
    let text = d.to_string();
    assert!(text.len() <= max_payload, "{}", text.len());
    assert_eq!(d["error"]["code"], 2003);
    assert_eq!(d["assignment"]["assignment_id"], "big-put");
    assert_eq!(d["assignment"]["job"]["type"], "fs.put");
    assert_eq!(d["assignment"]["job"]["path"], "../outside.bin");
    assert!(d["assignment"]["job"].get("content").is_none());
    assert_eq!(d["truncated"]["dropped"], json!(["job.content"]));
    assert_eq!(d["truncated"]["original_bytes"], put_len);

    let dlq = router
        .seen
        .wait_count(DLQ, 3, Duration::from_secs(15))
        .await;
    let bin = dlq
        .iter()
        .find(|d| d.get("payload_base64").is_some())
        .expect("the binary payload's entry");
    use base64::Engine as _;
    let kept = base64::engine::general_purpose::STANDARD
        .decode(bin["payload_base64"].as_str().expect("base64"))
        .expect("whole base64");
    assert!(kept.len() > 700_000, "as much as fits: {}", kept.len());
    assert_eq!(kept[..], binary[..kept.len()]);
    assert_eq!(bin["truncated"]["original_bytes"], binary.len());
    assert_eq!(bin["truncated"]["kept_bytes"], kept.len());
    assert_eq!(bin["error"]["code"], 1003);
    // Published once, and the delivery acked: not handed back and redelivered.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let binaries = router
        .seen
        .on(DLQ)
        .iter()
        .filter(|d| d.get("payload_base64").is_some())
        .count();
    assert_eq!(binaries, 1);
    let m = worker.metrics().await;
    assert_eq!(
        beamline_testkit::metrics::metric_sum(&m, "worker_publish_failures_total", &[]),
        0.0
    );
}

/// Large values where a result repeats them: a 600 KB unknown `job.type` (a result holds
/// it twice) and a 600 KB path quoted in an error message (an ack or result holds its
/// message twice). Whole, they made acks and results over NATS `max_payload`: refused by
/// the client, lost. The type is repeated as its first 128 bytes, a message is cut at 1 KiB.
#[tokio::test]
async fn large_values_repeated_in_an_answer_do_not_swell_it() {
    let (_n, _w, router) = setup("core", &[]).await;
    let job_type = "q".repeat(600_000);
    router
        .assign(&assignment("big-type", "t", json!({"type": job_type})))
        .await;
    let ack = router.ack("big-type").await;
    assert_eq!(ack["status"], "rejected");
    assert_eq!(ack["error"]["code"], 1001);
    let r = router.result("big-type").await;
    assert_eq!(r["error"]["code"], 1001);
    assert_eq!(r["job"]["type"], "q".repeat(128));
    let d = router.dlq("big-type").await;
    assert_eq!(d["assignment"]["assignment_id"], "big-type");

    let path = format!("/{}", "p".repeat(600_000));
    router
        .assign(&assignment(
            "big-path",
            "t",
            json!({"type": "fs.get", "path": path}),
        ))
        .await;
    let r = router.result("big-path").await;
    assert_eq!(r["status"], "error");
    assert_eq!(r["error"]["code"], 1001);
    let message = r["error"]["message"].as_str().expect("message");
    assert!(message.len() < 1200, "{} bytes", message.len());
    assert!(message.starts_with("open pppp"), "{}", &message[..64]);
    assert!(
        message.ends_with(" bytes in all)"),
        "{}",
        &message[message.len() - 64..]
    );
    assert_eq!(r["error_message"], message);
    assert_eq!(router.dlq("big-path").await["error"]["message"], message);
}

#[tokio::test]
async fn nats_headers_supply_tenant_version_and_trace() {
    let (_n, w, router) = setup("core", &[]).await;
    std::fs::create_dir_all(w.fs_root.join("acme")).expect("dir");
    std::fs::write(w.fs_root.join("acme/in.txt"), "hello").expect("file");
    let a = json!({"assignment_id": "hdr-1", "job": {"type": "fs.get", "path": "/in.txt"}});
    router
        .assign_with_headers(
            &a,
            &[
                ("tenant_id", "acme"),
                ("version", "1"),
                (
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                ),
            ],
        )
        .await;
    let r = router.result("hdr-1").await;
    assert_eq!(r["status"], "success", "{r}");
    assert_eq!(r["tenant_id"], "acme");
    assert_eq!(r["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(r["result"]["content"], "hello");
    assert_eq!(r["result"]["content_type"], "text/plain");
}

#[tokio::test]
async fn run_flow_and_step_are_top_level_only_together() {
    let (_n, w, router) = setup("core", &[]).await;
    std::fs::create_dir_all(w.fs_root.join("t")).expect("dir");
    std::fs::write(w.fs_root.join("t/f"), "x").expect("file");
    let mut a = assignment("ids-1", "t", json!({"type":"fs.get","path":"f"}));
    a["run_id"] = json!("run-1");
    router.assign(&a).await;
    let r = router.result("ids-1").await;
    assert!(r.get("run_id").is_none(), "{r}");
    assert_eq!(r["metadata"]["run_id"], "run-1");
    let mut b = assignment("ids-2", "t", json!({"type":"fs.get","path":"f"}));
    b["correlation"] = json!({"run_id": "run-2", "flow_id": "flow-2", "step_id": "step-2"});
    router.assign(&b).await;
    let r = router.result("ids-2").await;
    assert_eq!(
        (
            r["run_id"].as_str(),
            r["flow_id"].as_str(),
            r["step_id"].as_str()
        ),
        (Some("run-2"), Some("flow-2"), Some("step-2")),
        "{r}"
    );
}

async fn dedupe_in(mode: &str) {
    let (_n, mut w, router) = setup(mode, &[]).await;
    std::fs::create_dir_all(w.fs_root.join("t")).expect("dir");
    let file = w.fs_root.join("t/data.txt");
    std::fs::write(&file, "first").expect("file");
    let a = assignment("dup-1", "t", json!({"type":"fs.get","path":"data.txt"}));
    router.assign(&a).await;
    let first = router.result("dup-1").await;
    assert_eq!(first["result"]["content"], "first");
    // The file changes; a duplicate must not run again: the stored result comes back.
    std::fs::write(&file, "second").expect("file");
    router.assign(&a).await;
    router
        .seen
        .wait_count(
            RESULT,
            2 + router.seen.on(RESULT).len() - router.seen.for_id(RESULT, "dup-1").len(),
            Duration::from_secs(10),
        )
        .await;
    let results = router.seen.for_id(RESULT, "dup-1");
    assert_eq!(results.len(), 2);
    assert_eq!(results[0], results[1], "re-published byte for byte");
    // Another tenant with the same assignment_id is its own assignment.
    std::fs::create_dir_all(w.fs_root.join("u")).expect("dir");
    std::fs::write(w.fs_root.join("u/data.txt"), "tenant u").expect("file");
    router
        .assign(&assignment(
            "dup-1",
            "u",
            json!({"type":"fs.get","path":"data.txt"}),
        ))
        .await;
    router
        .seen
        .wait_count(
            RESULT,
            router.seen.on(RESULT).len().max(1),
            Duration::from_secs(1),
        )
        .await;
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while router.seen.for_id(RESULT, "dup-1").len() < 3 {
        assert!(
            std::time::Instant::now() < end,
            "no result for the other tenant"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        router.seen.for_id(RESULT, "dup-1")[2]["result"]["content"],
        "tenant u"
    );
    if mode == "jetstream" {
        // The completed-result record survives a kill -9 of the worker.
        w.restart();
        ready(&router).await;
        router.assign(&a).await;
        let end = std::time::Instant::now() + Duration::from_secs(10);
        while router.seen.for_id(RESULT, "dup-1").len() < 4 {
            assert!(
                std::time::Instant::now() < end,
                "no re-published result after restart"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let all = router.seen.for_id(RESULT, "dup-1");
        assert_eq!(
            all[3], all[0],
            "after a restart the stored result is re-published"
        );
    }
}

#[tokio::test]
async fn duplicates_are_not_executed_twice_jetstream() {
    dedupe_in("jetstream").await;
}

#[tokio::test]
async fn duplicates_are_not_executed_twice_core() {
    dedupe_in("core").await;
}

fn approval(id: &str, tenant: &str, timeout_ms: u64) -> Value {
    assignment(
        id,
        tenant,
        json!({"type":"human.approval","prompt":"Approve this request?","timeout_ms": timeout_ms,
        "approvers":["user1@example.com","user2@example.com"]}),
    )
}

#[tokio::test]
async fn cancel_stops_a_running_assignment_of_the_same_tenant_only() {
    let (_n, _w, router) = setup("jetstream", &[]).await;
    router.assign(&approval("c-1", "acme", 60_000)).await;
    router
        .seen
        .wait_for(APPROVAL_REQUEST, "c-1", Duration::from_secs(10))
        .await;
    router
        .publish(
            CANCEL,
            r#"{"assignment_id":"c-1","tenant_id":"intruder","reason":"x"}"#,
        )
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        router.seen.for_id(RESULT, "c-1").is_empty(),
        "another tenant's cancel changed nothing"
    );
    router
        .publish(
            CANCEL,
            r#"{"assignment_id":"c-1","tenant_id":"acme","reason":"user changed their mind"}"#,
        )
        .await;
    let r = router.result("c-1").await;
    assert_result_shape(&r);
    assert_eq!(
        (r["status"].as_str(), code(&r)),
        (Some("cancelled"), 5001),
        "{r}"
    );
    assert_eq!(r["error_code"], "CANCELLED_BY_USER");
    assert!(r["error"]["message"]
        .as_str()
        .expect("msg")
        .contains("user changed their mind"));
    assert_eq!(r["attempts"], 1);
    // A cancel that arrives first cancels the assignment on arrival, before it starts.
    router
        .publish(
            CANCEL,
            r#"{"assignment_id":"c-2","tenant_id":"acme","reason":"early"}"#,
        )
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    router.assign(&approval("c-2", "acme", 60_000)).await;
    let r = router.result("c-2").await;
    assert_eq!(
        (r["status"].as_str(), r["attempts"].as_u64()),
        (Some("cancelled"), Some(0)),
        "{r}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        router.seen.for_id(DLQ, "c-1").is_empty() && router.seen.for_id(DLQ, "c-2").is_empty(),
        "cancelled results are not dead letters"
    );
}

fn now_ms() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since.map_or(0, |d| d.as_millis() as u64)
}

/// A decision or cancel is read for the fields that steer (CONTRACT.md's shapes); an extra
/// field, a non-string `comment` or `reason`, or a `decided_at` that is not a time in ms
/// does not throw it away (they were "malformed" and ignored, and the approval ran on to
/// 5002), and a cancel may carry its tenant in a NATS header, as an assignment may.
#[tokio::test]
async fn decisions_and_cancels_with_extra_or_odd_fields_still_count() {
    let (_n, _w, router) = setup("core", &[]).await;
    let before = now_ms();
    for id in ["ap-odd", "ap-future", "c-odd"] {
        router.assign(&approval(id, "acme", 30_000)).await;
        router
            .seen
            .wait_for(APPROVAL_REQUEST, id, Duration::from_secs(10))
            .await;
    }
    router.publish(APPROVAL_DECISION, r#"{"assignment_id":"ap-odd","approver":"user1@example.com","approved":true,"comment":42,"decided_at":"2025-01-27T12:00:00Z","channel":{"kind":"slack"}}"#).await;
    let r = router.result("ap-odd").await;
    assert_eq!(r["status"], "success", "{r}");
    assert_eq!(r["result"]["approved"], true);
    assert_eq!(r["result"]["comment"], "42");
    let at = r["result"]["approved_at"].as_u64().expect("approved_at");
    assert!(before <= at && at <= now_ms(), "{at}");

    // A `decided_at` in the future is not what the result says.
    router.publish(APPROVAL_DECISION, r#"{"assignment_id":"ap-future","approver":"user2@example.com","approved":false,"decided_at":99999999999999}"#).await;
    let r = router.result("ap-future").await;
    assert_eq!(r["result"]["approved"], false, "{r}");
    let at = r["result"]["approved_at"].as_u64().expect("approved_at");
    assert!(before <= at && at <= now_ms(), "{at}");

    router
        .publish_with_headers(
            CANCEL,
            r#"{"assignment_id":"c-odd","reason":42,"extra":{"x":1}}"#,
            &[("tenant_id", "acme")],
        )
        .await;
    let r = router.result("c-odd").await;
    assert_eq!(
        (r["status"].as_str(), code(&r)),
        (Some("cancelled"), 5001),
        "{r}"
    );
    let message = r["error"]["message"].as_str().expect("message");
    assert!(message.contains("42"), "{message}");
}

/// The deadline counts from when the worker received the assignment: one that waited in
/// the queue past its deadline is answered 5002 with `attempts: 0`, and its block never
/// runs (it ran, and wrote its file, after the Router's deadline).
#[tokio::test]
async fn a_deadline_that_passes_in_the_queue_ends_in_5002_without_running() {
    let (_n, worker, router) = setup("core", &["--cpu-pool-size=1", "--max-in-flight=1"]).await;
    // Holds the only slot for 3 s (no decision comes).
    router.assign(&approval("q-hold", "acme", 3_000)).await;
    router
        .seen
        .wait_for(APPROVAL_REQUEST, "q-hold", Duration::from_secs(10))
        .await;
    router
        .assign(&assignment(
            "q-late",
            "acme",
            json!({"type": "fs.put", "path": "/late.txt", "content": "x", "timeout_ms": 1000}),
        ))
        .await;
    let r = router.result("q-late").await;
    assert_eq!(
        (r["status"].as_str(), code(&r), r["attempts"].as_u64()),
        (Some("timeout"), 5002, Some(0)),
        "{r}"
    );
    let latency = r["latency_ms"].as_u64().expect("latency_ms");
    assert!(
        latency >= 1000,
        "latency_ms counts the time queued: {latency}"
    );
    assert!(
        !worker.fs_root.join("acme/late.txt").exists(),
        "the block did not run"
    );
    assert_eq!(router.ack("q-late").await["status"], "accepted");
    assert_eq!(router.result("q-hold").await["status"], "timeout");
}

/// A cancel for an assignment queued behind `--max-in-flight` answers it at once
/// (`cancelled`, `attempts: 0`, its block not run): the answer waited for a free slot,
/// here the 30 s of an approval holding the only one.
#[tokio::test]
async fn a_cancel_answers_a_queued_assignment_at_once() {
    let (_n, worker, router) = setup("core", &["--cpu-pool-size=1", "--max-in-flight=1"]).await;
    router.assign(&approval("cq-hold", "acme", 30_000)).await;
    router
        .seen
        .wait_for(APPROVAL_REQUEST, "cq-hold", Duration::from_secs(10))
        .await;
    for (id, tenant) in [("cq-1", "acme"), ("cq-2", "acme"), ("cq-other", "beta")] {
        router
            .assign(&assignment(
                id,
                tenant,
                json!({"type": "fs.put", "path": format!("/{id}.txt"), "content": "x"}),
            ))
            .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(router.seen.for_id(ACK, "cq-2").is_empty(), "cq-2 is queued");
    let sent = std::time::Instant::now();
    router
        .publish(
            CANCEL,
            r#"{"assignment_id":"cq-2","tenant_id":"acme","reason":"not needed"}"#,
        )
        .await;
    let r = router.result("cq-2").await;
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "answered {:?} after the cancel",
        sent.elapsed()
    );
    assert_eq!(
        (r["status"].as_str(), code(&r), r["attempts"].as_u64()),
        (Some("cancelled"), 5001, Some(0)),
        "{r}"
    );
    assert!(!worker.fs_root.join("acme/cq-2.txt").exists(), "not run");
    // The others still wait for the slot, in their order; free it.
    assert!(router.seen.for_id(RESULT, "cq-1").is_empty());
    router
        .publish(CANCEL, r#"{"assignment_id":"cq-hold","tenant_id":"acme"}"#)
        .await;
    for id in ["cq-1", "cq-other"] {
        assert_eq!(router.result(id).await["status"], "success", "{id}");
    }
}

#[tokio::test]
async fn approvals_granted_denied_wrong_approver_and_timeout() {
    let (_n, w, router) = setup("jetstream", &[]).await;
    router.assign(&approval("ap-yes", "acme", 30_000)).await;
    let req = router
        .seen
        .wait_for(APPROVAL_REQUEST, "ap-yes", Duration::from_secs(10))
        .await;
    assert_eq!(req["tenant_id"], "acme");
    assert_eq!(req["prompt"], "Approve this request?");
    assert_eq!(
        req["approvers"],
        json!(["user1@example.com", "user2@example.com"])
    );
    assert!(req["expires_at"].as_u64().expect("expires_at") > 0);
    router.publish(APPROVAL_DECISION, r#"{"assignment_id":"ap-yes","approver":"mallory@example.com","approved":true,"comment":"let me in"}"#).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        router.seen.for_id(RESULT, "ap-yes").is_empty(),
        "a decision from a non-approver is ignored"
    );
    router.publish(APPROVAL_DECISION, r#"{"assignment_id":"ap-yes","approver":"user1@example.com","approved":true,"comment":"Looks good"}"#).await;
    let r = router.result("ap-yes").await;
    assert_eq!(r["status"], "success", "{r}");
    assert_eq!(r["result"]["approved"], true);
    assert_eq!(r["result"]["approver"], "user1@example.com");
    assert_eq!(r["result"]["comment"], "Looks good");
    assert!(r["result"]["approved_at"].is_u64());

    router.assign(&approval("ap-no", "acme", 30_000)).await;
    router
        .seen
        .wait_for(APPROVAL_REQUEST, "ap-no", Duration::from_secs(10))
        .await;
    router.publish(APPROVAL_DECISION, r#"{"assignment_id":"ap-no","approver":"user2@example.com","approved":false,"comment":"no"}"#).await;
    let r = router.result("ap-no").await;
    assert_eq!(
        (r["status"].as_str(), r["result"]["approved"].as_bool()),
        (Some("success"), Some(false)),
        "{r}"
    );

    router.assign(&approval("ap-late", "acme", 400)).await;
    let r = router.result("ap-late").await;
    assert_eq!(
        (r["status"].as_str(), code(&r)),
        (Some("timeout"), 5002),
        "{r}"
    );
    assert_eq!(r["error_code"], "CANCELLED_BY_TIMEOUT");
    assert_eq!(r["error_type"], "timeout");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        router.seen.for_id(DLQ, "ap-late").is_empty(),
        "timeouts are not dead letters"
    );
    let metrics = w.metrics().await;
    assert!(
        metrics.contains("worker_approval_decisions_ignored_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_decision_sent_while_no_worker_waits_is_not_lost() {
    let (_n, mut w, router) = setup("jetstream", &[]).await;
    router.assign(&approval("ap-restart", "acme", 60_000)).await;
    let first = router
        .seen
        .wait_for(APPROVAL_REQUEST, "ap-restart", Duration::from_secs(10))
        .await;
    w.kill9();
    router.publish(APPROVAL_DECISION, r#"{"assignment_id":"ap-restart","approver":"user2@example.com","approved":true,"comment":"while you were away"}"#).await;
    w.restart();
    // The redelivered approval re-sends its request with the original expires_at, then
    // finds the kept decision.
    let r = router
        .seen
        .wait_for(RESULT, "ap-restart", Duration::from_secs(45))
        .await;
    assert_eq!(
        (r["status"].as_str(), r["result"]["approved"].as_bool()),
        (Some("success"), Some(true)),
        "{r}\n{}",
        w.logs()
    );
    let requests = router.seen.for_id(APPROVAL_REQUEST, "ap-restart");
    assert!(
        requests
            .iter()
            .all(|q| q["expires_at"] == first["expires_at"]),
        "{requests:?}"
    );
}

#[tokio::test]
async fn core_mode_answers_4002_when_every_queue_is_full() {
    let (_n, _w, router) = setup(
        "core",
        &[
            "--cpu-pool-size=1",
            "--max-in-flight=1",
            "--queue-capacity=2",
        ],
    )
    .await;
    for i in 0..10 {
        router
            .assign(&approval(&format!("flood-{i}"), "t", 5_000))
            .await;
    }
    let end = std::time::Instant::now() + Duration::from_secs(10);
    let refused = loop {
        let r: Vec<Value> = router
            .seen
            .on(RESULT)
            .into_iter()
            .filter(|r| r["error"]["code"] == 4002)
            .collect();
        // 1 running + 1 taken off the queue + 2 queued are held; the rest are refused.
        if r.len() >= 6 {
            break r;
        }
        assert!(
            std::time::Instant::now() < end,
            "expected 4002 refusals, got {:?}",
            router.seen.summary()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let r = &refused[0];
    assert_eq!(r["error"]["retryable"], true, "{r}");
    assert_eq!(r["error_code"], "SYSTEM_OVERLOAD");
    let id = r["assignment_id"].as_str().expect("id");
    let ack = router.ack(id).await;
    assert_eq!(ack["status"], "rejected");
    assert_eq!(router.dlq(id).await["dlq_reason"], "overloaded");
}

#[tokio::test]
async fn sandbox_mode_has_no_external_side_effects() {
    let (_n, w, router) = setup("core", &["--sandbox-mode"]).await;
    router
        .assign(&assignment(
            "sb-http",
            "t",
            json!({"type":"http.request","method":"GET","url":"http://127.0.0.1:9/never"}),
        ))
        .await;
    let r = router.result("sb-http").await;
    assert_eq!(r["status"], "success", "{r}");
    assert_eq!(r["metadata"]["sandbox"], true);
    router
        .assign(&assignment(
            "sb-put",
            "t",
            json!({"type":"fs.put","path":"x.txt","content":"y"}),
        ))
        .await;
    assert_eq!(router.result("sb-put").await["status"], "success");
    assert!(
        !w.fs_root.join("t/x.txt").exists(),
        "sandbox writes go to a throw-away root"
    );
    router.assign(&approval("sb-ap", "t", 30_000)).await;
    let r = router.result("sb-ap").await;
    assert_eq!(r["result"]["approved"], true, "{r}");
}

#[tokio::test]
async fn heartbeats_report_liveness_and_capacity() {
    let (_n, w, router) = setup(
        "core",
        &["--heartbeat-interval-ms=200", "--worker-id=hb-worker"],
    )
    .await;
    let hb = router
        .seen
        .wait_count(HEARTBEAT, 2, Duration::from_secs(5))
        .await;
    let h = &hb[0];
    assert_eq!(h["version"], "1");
    assert_eq!(h["worker_id"], "hb-worker");
    assert!(
        ["ready", "busy", "degraded"].contains(&h["status"].as_str().expect("status")),
        "{h}"
    );
    let ts = h["timestamp"].as_str().expect("timestamp");
    assert!(ts.ends_with('Z') && ts.len() == 27, "{ts}");
    for k in ["cpu", "gpu", "mem_bytes", "jobs_in_flight"] {
        assert!(h["resources"][k].is_u64(), "{k} in {h}");
    }
    drop(w);
}

#[tokio::test]
async fn a_job_deadline_ends_in_timeout_5002() {
    let (_n, _w, router) = setup("core", &[]).await;
    let mut a = approval("dl-1", "t", 60_000);
    a["job"].as_object_mut().expect("job").remove("timeout_ms");
    a["options"] = json!({"deadline_ms": 300});
    let started = std::time::Instant::now();
    router.assign(&a).await;
    let r = router.result("dl-1").await;
    assert_eq!(
        (r["status"].as_str(), code(&r)),
        (Some("timeout"), 5002),
        "{r}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn results_and_acks_are_kept_in_jetstream_with_msg_ids() {
    let (n, w, router) = setup("jetstream", &[]).await;
    std::fs::create_dir_all(w.fs_root.join("t")).expect("dir");
    std::fs::write(w.fs_root.join("t/f"), "x").expect("file");
    router
        .assign(&assignment(
            "js-1",
            "t",
            json!({"type":"fs.get","path":"f"}),
        ))
        .await;
    router.result("js-1").await;
    let headers = router.seen.headers_for(RESULT, "js-1");
    let id = headers[0]
        .as_ref()
        .and_then(|h| h.get("Nats-Msg-Id"))
        .map(|v| v.as_str().to_owned())
        .expect("Nats-Msg-Id");
    assert!(id.contains("js-1") && id.starts_with("result"), "{id}");
    // A Router that was away reads them from the stream.
    let js = async_nats::jetstream::new(router.client.clone());
    let name = js
        .stream_by_subject(RESULT)
        .await
        .expect("a stream keeps results");
    let mut stream = js.get_stream(&name).await.expect("stream");
    let info = stream.info().await.expect("info");
    assert!(
        info.state.messages >= 2,
        "ready probe and js-1 results are stored"
    );
    let last = stream
        .get_last_raw_message_by_subject(RESULT)
        .await
        .expect("last result");
    let v: Value = serde_json::from_slice(&last.payload).expect("json");
    assert_eq!(v["assignment_id"], "js-1");
    drop(n);
}

/// A tenant id may hold `:`. Tenant `x` with id `y:msg` and tenant `x:y` with id `msg`
/// are two assignments: both pairs of ack and result are kept in the output stream
/// (`<tenant>:<id>` made one `Nats-Msg-Id` of both, and the stream dropped the second).
#[tokio::test]
async fn msg_ids_of_tenants_holding_a_colon_do_not_collide() {
    let (_n, w, router) = setup("jetstream", &[]).await;
    for tenant in ["x", "x:y"] {
        std::fs::create_dir_all(w.fs_root.join(tenant)).expect("dir");
        std::fs::write(w.fs_root.join(tenant).join("f"), tenant).expect("file");
    }
    let js = async_nats::jetstream::new(router.client.clone());
    let name = js.stream_by_subject(RESULT).await.expect("output stream");
    let mut stream = js.get_stream(&name).await.expect("stream");
    let before = stream.info().await.expect("info").state.messages;
    router
        .assign(&assignment(
            "y:msg",
            "x",
            json!({"type":"fs.get","path":"f"}),
        ))
        .await;
    assert_eq!(router.result("y:msg").await["result"]["content"], "x");
    router
        .assign(&assignment(
            "msg",
            "x:y",
            json!({"type":"fs.get","path":"f"}),
        ))
        .await;
    assert_eq!(router.result("msg").await["result"]["content"], "x:y");
    let ids: Vec<String> = router
        .seen
        .headers_for(RESULT, "y:msg")
        .into_iter()
        .chain(router.seen.headers_for(RESULT, "msg"))
        .map(|h| {
            h.and_then(|h| h.get("Nats-Msg-Id").map(|v| v.as_str().to_owned()))
                .expect("Nats-Msg-Id")
        })
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert_ne!(ids[0], ids[1]);
    let after = stream.info().await.expect("info").state.messages;
    assert_eq!(after - before, 4, "two acks and two results kept ({ids:?})");
}

#[tokio::test]
async fn a_tenant_over_its_quota_gets_2004_and_other_tenants_still_run() {
    let (_n, _w, router) = setup("core", &["--tenant-max-in-flight=1"]).await;
    router.assign(&approval("q-a1", "flood", 30_000)).await;
    router
        .seen
        .wait_for(APPROVAL_REQUEST, "q-a1", Duration::from_secs(10))
        .await;
    router.assign(&approval("q-a2", "flood", 30_000)).await;
    let r = router.result("q-a2").await;
    assert_eq!(
        (r["status"].as_str(), code(&r)),
        (Some("error"), 2004),
        "{r}"
    );
    assert_eq!(r["error_code"], "QUOTA_EXCEEDED");
    assert_eq!(router.dlq("q-a2").await["dlq_reason"], "quota_exceeded");
    router.assign(&approval("q-b1", "quiet", 30_000)).await;
    router
        .seen
        .wait_for(APPROVAL_REQUEST, "q-b1", Duration::from_secs(10))
        .await;
}

async fn health(port: u16) -> (u16, Value) {
    let (status, ctype, body) = http_get(port, "/_health").await;
    assert_eq!(ctype, "application/json");
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn health_names_full_pools_and_recovers() {
    let (_n, w, router) = setup(
        "core",
        &[
            "--cpu-pool-size=1",
            "--max-in-flight=1",
            "--queue-capacity=2",
        ],
    )
    .await;
    assert_eq!(health(w.health_port).await.0, 200);
    // Keep the single CPU thread busy and its queue topped up until health says so.
    let end = std::time::Instant::now() + Duration::from_secs(10);
    let mut i = 0;
    let body = loop {
        router
            .assign(&approval(&format!("hp-{i}"), "t", 3_000))
            .await;
        i += 1;
        tokio::time::sleep(Duration::from_millis(30)).await;
        let (status, body) = health(w.health_port).await;
        if status == 503 {
            break body;
        }
        assert!(
            std::time::Instant::now() < end,
            "never unhealthy while the queues were full: {body}"
        );
    };
    assert!(
        body["failing"]
            .as_array()
            .expect("failing")
            .contains(&json!("resource_pools")),
        "{body}"
    );
    assert_eq!(body["status"], "unhealthy");
    // Each check in the platform schema's shape.
    assert_eq!(body["checks"]["resource_pools"]["status"], "fail", "{body}");
    assert!(
        body["checks"]["resource_pools"]["message"].is_string(),
        "{body}"
    );
    assert_eq!(body["checks"]["nats_connection"]["status"], "ok", "{body}");
    // The approvals time out, the queues drain, health comes back.
    let end = std::time::Instant::now() + Duration::from_secs(20);
    while health(w.health_port).await.0 != 200 {
        assert!(std::time::Instant::now() < end, "health did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn over_the_memory_budget_health_says_so_and_core_mode_refuses() {
    // A budget below what the process needs just to run: the indicator fails and intake
    // pauses (core mode answers 4002).
    let nats = Nats::start();
    let w = Worker::builder(&nats.url())
        .args(&["--consumer=core", "--max-memory-mb=1"])
        .start();
    let router = Router::connect(&nats.url()).await;
    let end = std::time::Instant::now() + Duration::from_secs(5);
    let body = loop {
        let (status, body) = health(w.health_port).await;
        if status == 503 {
            break body;
        }
        assert!(
            std::time::Instant::now() < end,
            "memory indicator never failed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        body["failing"]
            .as_array()
            .expect("failing")
            .contains(&json!("memory")),
        "{body}"
    );
    // The subscription may still be starting: send until one is answered.
    let end = std::time::Instant::now() + Duration::from_secs(10);
    let r = loop {
        let id = format!("mem-{}", router.seen.on(ACK).len());
        router
            .assign(&assignment(&id, "t", json!({"type":"fs.get","path":"x"})))
            .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        if let Some(r) = router.seen.on(RESULT).into_iter().next() {
            break r;
        }
        assert!(std::time::Instant::now() < end, "no answer");
    };
    assert_eq!(
        (
            r["error"]["code"].as_u64(),
            r["error"]["retryable"].as_bool()
        ),
        (Some(4002), Some(true)),
        "{r}"
    );
}

/// Publishes `payload` on `subject` with `header` as its raw header block, over a bare TCP
/// connection (no client library sends a malformed block), and waits for the server's
/// PONG, so the message has been taken when this returns.
async fn raw_hpub(port: u16, subject: &str, header: &[u8], payload: &[u8]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let mut msg = format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"headers\":true,\"protocol\":1}}\r\nHPUB {subject} {} {}\r\n",
        header.len(),
        header.len() + payload.len()
    )
    .into_bytes();
    msg.extend_from_slice(header);
    msg.extend_from_slice(payload);
    msg.extend_from_slice(b"\r\nPING\r\n");
    s.write_all(&msg).await.expect("write");
    let mut seen = Vec::new();
    while !seen.windows(4).any(|w| w == b"PONG") {
        let mut chunk = [0u8; 1024];
        let n = s.read(&mut chunk).await.expect("read");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&chunk[..n]);
    }
    assert!(
        !seen.windows(4).any(|w| w == b"-ERR"),
        "{}",
        String::from_utf8_lossy(&seen)
    );
}

/// Header blocks that do not parse: a line without `:`, a name with a space, a value that
/// is not UTF-8, a status line that is not `NATS/1.0`.
const BAD_HEADERS: [&[u8]; 3] = [
    b"NATS/1.0\r\nfoo\r\ntenant_id : t9\r\n\r\n",
    b"NATS/1.0\r\nx-odd: \xff\xfe\r\n\r\n",
    b"HTTP/1.1 200\r\ntenant_id: t\r\n\r\n",
];

/// A malformed NATS header block dropped the worker's connection (the client failed the
/// read): the message went unanswered, the ones right behind it in the buffer were lost,
/// and JetStream redelivered it to do it again. Now it is one more assignment, answered
/// by what its payload says, and what follows it is answered too.
#[tokio::test]
async fn a_malformed_nats_header_block_loses_nothing() {
    for mode in ["core", "jetstream"] {
        let (n, w, router) = setup(mode, &[]).await;
        std::fs::create_dir_all(w.fs_root.join("t")).expect("dir");
        std::fs::write(w.fs_root.join("t/f"), "x").expect("file");
        let get = json!({"type":"fs.get","path":"f"});
        for (i, header) in BAD_HEADERS.iter().enumerate() {
            let bad = format!("hdr-{mode}-{i}");
            let body = serde_json::to_vec(&assignment(&bad, "t", get.clone())).expect("json");
            raw_hpub(n.port, ASSIGN, header, &body).await;
            let next = format!("hdr-{mode}-{i}-next");
            router.assign(&assignment(&next, "t", get.clone())).await;
            for id in [&bad, &next] {
                let r = router.result(id).await;
                assert_eq!(r["status"], "success", "{mode}: {r}");
                assert_result_shape(&r);
            }
        }
        // Nothing came twice (JetStream would have redelivered an unacked one).
        tokio::time::sleep(Duration::from_millis(500)).await;
        for i in 0..BAD_HEADERS.len() {
            let id = format!("hdr-{mode}-{i}");
            assert_eq!(router.seen.for_id(RESULT, &id).len(), 1, "{mode}: {id}");
        }
    }
}

/// A decision with a malformed header block sat in the decision stream and dropped the
/// control connection each time it was read: every later approval of every tenant ran to
/// 5002, across restarts. Cancels share that connection.
#[tokio::test]
async fn a_malformed_header_on_a_control_subject_breaks_no_approval_or_cancel() {
    for mode in ["jetstream", "core"] {
        let (n, _w, router) = setup(mode, &[]).await;
        for header in BAD_HEADERS {
            raw_hpub(
                n.port,
                APPROVAL_DECISION,
                header,
                br#"{"assignment_id":"nobody","approver":"user1@example.com","approved":true}"#,
            )
            .await;
            raw_hpub(
                n.port,
                CANCEL,
                header,
                br#"{"assignment_id":"nobody","tenant_id":"acme"}"#,
            )
            .await;
        }
        for id in ["hdr-ap", "hdr-c"] {
            let id = format!("{id}-{mode}");
            router.assign(&approval(&id, "acme", 20_000)).await;
            router
                .seen
                .wait_for(APPROVAL_REQUEST, &id, Duration::from_secs(10))
                .await;
        }
        router
            .publish(
                APPROVAL_DECISION,
                format!(r#"{{"assignment_id":"hdr-ap-{mode}","approver":"user2@example.com","approved":true}}"#),
            )
            .await;
        router
            .publish(
                CANCEL,
                format!(r#"{{"assignment_id":"hdr-c-{mode}","tenant_id":"acme","reason":"x"}}"#),
            )
            .await;
        let r = router.result(&format!("hdr-ap-{mode}")).await;
        assert_eq!(
            (r["status"].as_str(), &r["result"]["approved"]),
            (Some("success"), &json!(true)),
            "{mode}: {r}"
        );
        let r = router.result(&format!("hdr-c-{mode}")).await;
        assert_eq!(r["status"], "cancelled", "{mode}: {r}");
    }
}
