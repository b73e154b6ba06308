//! Hostile input for the blocks' job decoders (what runs before the ack): whatever the job
//! holds, decoding never panics and answers Ok or a non-retryable rejection with one of
//! the codes a decoder may give (1001–1003, 2002–2004); an assignment as a whole ends in
//! an accepted job, a rejection with a code, or a DLQ entry. For each block, a valid
//! generated job decodes to what was generated, and values over a limit get the
//! contract's code. Regression cases are pinned below, named after the bug.

use base64::Engine as _;
use beamline_worker::blocks::{self, decode_job, BlockKind, DecodeSettings};
use beamline_worker::config::{Cli, Config};
use beamline_worker::contract::assignment::{
    parse_value, Assignment, AssignmentHeaders, ParseLimits,
};
use beamline_worker::contract::{ErrorCode, Fields, TaskError};
use beamline_worker::policy::ssrf::SsrfPolicy;
use proptest::prelude::*;
use serde_json::{json, Map, Value};
use std::time::Duration;

/// The default configuration's policy and limits, with a small file limit so that the
/// oversize cases stay small.
const FS_MAX_BYTES: u64 = 4096;
const SQL_MAX_ROWS: usize = 500;

fn settings() -> DecodeSettings {
    let config = Config::resolve(Cli::default()).expect("default configuration");
    DecodeSettings {
        fs_max_bytes: FS_MAX_BYTES,
        sql_max_rows: SQL_MAX_ROWS,
        ..DecodeSettings::from_config(&config)
    }
}

/// `job` through the typed decoder `f`, as the pipeline hands it over (parsed in place).
fn with_job<R>(job: &Value, f: impl FnOnce(Fields<'_, '_>) -> R) -> R {
    let mut buf = serde_json::to_vec(job).expect("json");
    let parsed = parse_value(&mut buf).expect("parses");
    f(Fields::new(&parsed.value, "job"))
}

fn decode(kind: BlockKind, job: &Value, s: &DecodeSettings) -> Result<(), TaskError> {
    with_job(job, |f| decode_job(kind, f, "assignment-1", s))
}

/// The promise of every decoder: Ok, or a rejection the Router can act on.
fn assert_contract(kind: BlockKind, r: &Result<(), TaskError>) -> Result<(), TestCaseError> {
    if let Err(e) = r {
        let code = e.code.code();
        prop_assert!(
            matches!(code, 1001..=1003 | 2002..=2004),
            "{} decoder gave {}: {}",
            kind.as_str(),
            code,
            e
        );
        prop_assert!(!e.retryable, "a rejection is never retryable: {}", e);
    }
    Ok(())
}

fn code_of(r: Result<(), TaskError>) -> u16 {
    r.err().map_or(0, |e| e.code.code())
}

/// Every `job.type` the registry accepts (canonical names and aliases), then two it does
/// not.
fn job_types() -> Vec<&'static str> {
    let known = BlockKind::ALL
        .iter()
        .flat_map(|k| std::iter::once(k.as_str()).chain(k.aliases().iter().copied()));
    known.chain(["quantum.compute", ""]).collect()
}

/// Every field name some decoder reads, plus a few it does not.
const KEYS: &[&str] = &[
    "type",
    "url",
    "method",
    "headers",
    "body",
    "timeout_ms",
    "path",
    "content",
    "content_base64",
    "content_type",
    "connection_string",
    "connection",
    "query",
    "parameters",
    "params",
    "max_rows",
    "prompt",
    "approvers",
    "model",
    "inputs",
    "device",
    "priority",
    "normalize",
    "",
    "extra",
];

/// Strings the decoders branch on, mixed with arbitrary text.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,24}",
        prop::sample::select(vec![
            "fs.put",
            "fs.get",
            "fs.blob_put",
            "GET",
            "post",
            "CONNECT",
            "http://example.com/a",
            "https://[::1]:8443/",
            "http://169.254.169.254/",
            "http://u:p@h/",
            "sqlite://app.db",
            "sqlite://../x.db",
            "sqlite:///abs.db",
            "sqlite://:memory:",
            "SELECT 1",
            "select ?; select 2",
            "INSERT INTO t VALUES (1)",
            "-- only a comment",
            "cuda",
            "cpu",
            "a/b.safetensors",
            "dir/",
            "AAEC/w==",
            "{\"X-A\":\"b\"}",
        ])
        .prop_map(str::to_owned),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        text().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::from),
            prop::collection::btree_map(text(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A job object: some of the decoders' field names with arbitrary values.
fn job_object() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(prop::sample::select(KEYS), json_value(), 0..8)
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
}

/// A job shaped for `kind`, each field present or not, any value.
fn shaped_job(keys: &'static [&'static str]) -> impl Strategy<Value = Value> {
    prop::collection::vec(prop::option::of(json_value()), keys.len()).prop_map(move |vals| {
        let mut o = Map::new();
        for (k, v) in keys.iter().zip(vals) {
            if let Some(v) = v {
                o.insert((*k).to_owned(), v);
            }
        }
        Value::Object(o)
    })
}

const HTTP_KEYS: &[&str] = &["url", "method", "headers", "body", "timeout_ms"];
const FS_KEYS: &[&str] = &["type", "path", "content", "content_base64", "content_type"];
const SQL_KEYS: &[&str] = &[
    "connection_string",
    "connection",
    "query",
    "parameters",
    "params",
    "max_rows",
];
const HUMAN_KEYS: &[&str] = &["prompt", "approvers"];
const INFERENCE_KEYS: &[&str] = &["model", "inputs", "device", "priority"];
const EMBED_KEYS: &[&str] = &["model", "inputs", "normalize", "device", "priority"];

/// Each block's fields, for its `*_shaped_jobs_*` property below.
const SHAPES: [(&str, &[&str]); 6] = [
    ("http", HTTP_KEYS),
    ("fs", FS_KEYS),
    ("sql", SQL_KEYS),
    ("human", HUMAN_KEYS),
    ("inference", INFERENCE_KEYS),
    ("embed", EMBED_KEYS),
];

/// A new block gets a shaped-job property (and its fields join `KEYS`): this fails until
/// it does.
#[test]
fn every_block_has_a_shaped_job_property() {
    for kind in BlockKind::ALL {
        let shape = SHAPES.iter().find(|(block, _)| *block == kind.block());
        let Some((_, keys)) = shape else {
            panic!(
                "no shaped-job property for block {:?} ({})",
                kind.block(),
                kind.as_str()
            );
        };
        for key in *keys {
            assert!(KEYS.contains(key), "KEYS lacks {key:?} of {}", kind.block());
        }
    }
}

/// The order the pipeline takes an assignment in: parse → envelope (DLQ when no answer
/// is possible) → validation → `job.type` → the block's decoder.
#[derive(Debug, PartialEq)]
enum Outcome {
    DeadLetter,
    Rejected(u16),
    Accepted,
}

fn classify(raw: &mut [u8], s: &DecodeSettings) -> Outcome {
    let limits = ParseLimits {
        default_timeout: Duration::from_secs(30),
        max_timeout: Duration::from_secs(3600),
    };
    let Ok(value) = parse_value(raw) else {
        return Outcome::DeadLetter;
    };
    let Ok((a, problem)) = Assignment::read(&value, &AssignmentHeaders::default(), limits) else {
        return Outcome::DeadLetter;
    };
    if let Some(e) = problem {
        return Outcome::Rejected(e.code.code());
    }
    let Some(kind) = a.job_type.and_then(BlockKind::parse) else {
        return Outcome::Rejected(ErrorCode::InvalidInput.code());
    };
    let Some(job) = a.job else {
        return Outcome::Rejected(ErrorCode::MissingRequiredField.code());
    };
    match decode_job(kind, job, a.assignment_id, s) {
        Ok(()) => Outcome::Accepted,
        Err(e) => Outcome::Rejected(e.code.code()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_job_object_gets_ok_or_a_contract_code_from_every_decoder(job in job_object()) {
        let s = settings();
        for kind in BlockKind::ALL {
            assert_contract(kind, &decode(kind, &job, &s))?;
        }
    }

    #[test]
    fn arbitrary_bytes_as_a_job_get_ok_or_a_contract_code(
        raw in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let s = settings();
        for kind in BlockKind::ALL {
            let r = blocks::decode_job_json(kind, &mut raw.clone(), "a", &s);
            assert_contract(kind, &r)?;
        }
    }

    #[test]
    fn http_shaped_jobs_get_ok_or_a_contract_code(job in shaped_job(HTTP_KEYS)) {
        assert_contract(BlockKind::Http, &decode(BlockKind::Http, &job, &settings()))?;
    }

    #[test]
    fn fs_shaped_jobs_get_ok_or_a_contract_code(job in shaped_job(FS_KEYS)) {
        assert_contract(BlockKind::FsPut, &decode(BlockKind::FsPut, &job, &settings()))?;
    }

    #[test]
    fn sql_shaped_jobs_get_ok_or_a_contract_code(job in shaped_job(SQL_KEYS)) {
        assert_contract(BlockKind::Sql, &decode(BlockKind::Sql, &job, &settings()))?;
    }

    #[test]
    fn human_shaped_jobs_get_ok_or_a_contract_code(job in shaped_job(HUMAN_KEYS)) {
        assert_contract(BlockKind::Human, &decode(BlockKind::Human, &job, &settings()))?;
    }

    #[test]
    fn inference_shaped_jobs_get_ok_or_a_contract_code(job in shaped_job(INFERENCE_KEYS)) {
        let s = settings();
        assert_contract(BlockKind::Inference, &decode(BlockKind::Inference, &job, &s))?;
    }

    #[test]
    fn embed_shaped_jobs_get_ok_or_a_contract_code(job in shaped_job(EMBED_KEYS)) {
        let s = settings();
        assert_contract(BlockKind::Embed, &decode(BlockKind::Embed, &job, &s))?;
    }

    #[test]
    fn every_assignment_is_accepted_rejected_with_a_code_or_dead_lettered(
        id in prop_oneof![Just(Value::Null), Just(json!("a-1")), json_value()],
        job_type in prop::sample::select(job_types()),
        job in job_object(),
    ) {
        let mut job = job;
        if let Value::Object(o) = &mut job {
            o.insert("type".into(), json!(job_type));
        }
        let a = json!({"version": "1", "assignment_id": id, "tenant_id": "t", "job": job});
        let mut raw = serde_json::to_vec(&a).expect("json");
        let answerable = id.as_str().is_some_and(|s| !s.is_empty());
        match classify(&mut raw, &settings()) {
            Outcome::DeadLetter => prop_assert!(!answerable),
            Outcome::Accepted => prop_assert!(answerable),
            Outcome::Rejected(code) => {
                prop_assert!(answerable);
                prop_assert!(
                    matches!(code, 1001..=1003 | 2002..=2004),
                    "code {} before the ack", code
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn a_valid_http_job_decodes_to_what_was_sent(
        method in prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"]),
        scheme in prop::sample::select(vec!["http", "https"]),
        host in "[a-z][a-z0-9]{0,10}(\\.[a-z]{2,6}){0,2}",
        path in "(/[a-zA-Z0-9._~-]{0,8}){1,3}",
        headers in prop::collection::btree_map(
            "x-[a-z0-9-]{1,12}", "[!-~]([ -~]{0,18}[!-~])?", 0..6),
        body in prop::option::of(".{0,40}"),
        timeout_ms in prop::option::of(1u64..=3_600_000),
    ) {
        let url = format!("{scheme}://{host}{path}");
        let mut job = json!({"url": url, "method": method, "headers": headers});
        if let Some(b) = &body { job["body"] = json!(b); }
        if let Some(t) = timeout_ms { job["timeout_ms"] = json!(t); }
        let decoded = with_job(&job, |f| {
            blocks::http::decode_job(f, &SsrfPolicy::default(), "assignment-1")
        });
        let decoded = decoded.map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(decoded.method.as_str(), method);
        prop_assert_eq!(decoded.uri.to_string(), url);
        prop_assert_eq!(decoded.headers.len(), headers.len());
        for (name, value) in &headers {
            prop_assert_eq!(decoded.headers.get(name.as_str()).map(|v| v.as_bytes()),
                Some(value.as_bytes()));
        }
        prop_assert_eq!(decoded.body.as_deref(), body.as_deref().map(str::as_bytes));
        prop_assert_eq!(decoded.timeout, timeout_ms.map(Duration::from_millis));
    }

    #[test]
    fn http_headers_as_a_json_string_decode_like_an_object(
        headers in prop::collection::btree_map("x-[a-z0-9-]{1,12}", "[!-~]{1,12}", 0..6),
    ) {
        let object = json!({"url": "http://example.com/", "headers": headers});
        let text = serde_json::to_string(&headers).expect("json");
        let string = json!({"url": "http://example.com/", "headers": text});
        let policy = SsrfPolicy::default();
        let a = with_job(&object, |f| blocks::http::decode_job(f, &policy, "a").map(|j| j.headers));
        let b = with_job(&string, |f| blocks::http::decode_job(f, &policy, "a").map(|j| j.headers));
        prop_assert_eq!(a.map_err(|e| e.to_string()), b.map_err(|e| e.to_string()));
    }

    #[test]
    fn a_url_naming_a_denied_address_is_2003(
        a in 0u8..=255, b in 0u8..=255,
        spelled in prop::sample::select(vec!["dotted", "mapped"]),
    ) {
        let host = match spelled {
            "dotted" => format!("169.254.{a}.{b}"),
            _ => format!("[::ffff:169.254.{a}.{b}]"),
        };
        let job = json!({"url": format!("http://{host}/latest/meta-data")});
        prop_assert_eq!(code_of(decode(BlockKind::Http, &job, &settings())), 2003);
    }

    #[test]
    fn a_valid_fs_put_decodes_to_the_bytes_sent(
        path in "[a-z0-9_-]{1,8}(/[a-z0-9_.-]{1,8}){0,3}",
        content in prop::collection::vec(any::<u8>(), 0..=FS_MAX_BYTES as usize),
        as_text in any::<bool>(),
    ) {
        let text = String::from_utf8_lossy(&content).into_owned();
        let job = if as_text {
            json!({"type": "fs.put", "path": path, "content": text})
        } else {
            let b64 = base64::engine::general_purpose::STANDARD.encode(&content);
            json!({"type": "fs.put", "path": path, "content_base64": b64})
        };
        let expected: &[u8] = if as_text { text.as_bytes() } else { &content };
        let fits = expected.len() as u64 <= FS_MAX_BYTES;
        let r = with_job(&job, |f| match blocks::fs::decode_job(f, FS_MAX_BYTES) {
            Ok(blocks::fs::FsJob::Put { path: p, content: c, content_type: None }) => {
                Ok(p == path && c.as_ref() == expected)
            }
            Ok(other) => Err(format!("decoded as {other:?}")),
            Err(e) => Err(e.to_string()),
        });
        if fits {
            prop_assert_eq!(r, Ok(true));
        } else {
            // Lossy text can grow past the limit: that is the oversize case.
            prop_assert!(r.is_err_and(|e| e.starts_with("2004")));
        }
    }

    #[test]
    fn fs_content_over_the_limit_is_2004(
        extra in 1usize..64,
        base64 in any::<bool>(),
    ) {
        let content = vec![b'x'; FS_MAX_BYTES as usize + extra];
        let job = if base64 {
            let b64 = base64::engine::general_purpose::STANDARD.encode(&content);
            json!({"type": "fs.put", "path": "big", "content_base64": b64})
        } else {
            json!({"type": "fs.put", "path": "big", "content": String::from_utf8(content).expect("ascii")})
        };
        prop_assert_eq!(code_of(decode(BlockKind::FsPut, &job, &settings())), 2004);
    }

    #[test]
    fn a_valid_sql_query_decodes_to_its_statement_and_parameters(
        name in "[a-z][a-z0-9_]{0,8}\\.db",
        column in "[a-z][a-z0-9_]{0,8}",
        params in prop::collection::vec(prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            (-1e12f64..1e12).prop_map(Value::from),
            ".{0,12}".prop_map(Value::from),
        ], 0..6),
        max_rows in prop::option::of(1u64..10_000),
        trailer in prop::sample::select(vec!["", ";", ";  -- done\n", "; /* end */ ;"]),
    ) {
        let marks = vec!["?"; params.len()].join(", ");
        let statement = format!("SELECT {column} FROM t WHERE x IN ({marks})");
        let mut job = json!({
            "connection_string": format!("sqlite://{name}"),
            "query": format!("{statement}{trailer}"),
            "parameters": params,
        });
        if let Some(n) = max_rows { job["max_rows"] = json!(n); }
        let r = with_job(&job, |f| {
            blocks::sql::decode_job(f, SQL_MAX_ROWS).map(|j| {
                let ps: Vec<String> = j.params().iter().map(|p| format!("{p:?}")).collect();
                (j.name().to_owned(), j.statement().to_owned(), ps, j.max_rows())
            })
        });
        let (n, st, ps, mr) = r.map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(n, name);
        prop_assert_eq!(st, statement);
        prop_assert_eq!(ps.len(), params.len());
        for (p, v) in ps.iter().zip(&params) {
            let kind = match v {
                Value::Null => "Null",
                Value::Bool(_) => "Integer",
                Value::Number(n) if n.is_i64() => "Integer",
                Value::Number(_) => "Real",
                _ => "Text",
            };
            prop_assert!(p.starts_with(kind), "{:?} bound as {}", v, p);
        }
        let cap = max_rows.map_or(SQL_MAX_ROWS, |n| (n as usize).min(SQL_MAX_ROWS));
        prop_assert_eq!(mr, cap);
    }

    #[test]
    fn sql_writes_and_escaping_names_are_2003(
        keyword in prop::sample::select(vec![
            "INSERT INTO t VALUES (1)", "delete from t", "Drop table t", "ATTACH 'x' AS y",
            "VACUUM", "vacuum into 'x'", "BEGIN", "create table u(a)", "UPDATE t SET a=1",
        ]),
        prefix in prop::sample::select(vec!["", "  ", "\n;", "-- c\n", "/* c */ "]),
        name in prop::sample::select(vec!["../x.db", "a/../../x.db", "/etc/x.db", "//abs.db", "tenant-b/app.db", "./x.db"]),
    ) {
        let write = json!({"connection_string": "sqlite://app.db", "query": format!("{prefix}{keyword}")});
        prop_assert_eq!(code_of(decode(BlockKind::Sql, &write, &settings())), 2003);
        let escape = json!({"connection_string": format!("sqlite://{name}"), "query": "SELECT 1"});
        prop_assert_eq!(code_of(decode(BlockKind::Sql, &escape, &settings())), 2003);
    }

    #[test]
    fn a_valid_approval_decodes_to_its_prompt_and_approvers(
        prompt in ".{1,40}",
        approvers in prop::collection::vec(".{1,12}", 1..6),
        empty_at in prop::option::of(0usize..6),
    ) {
        let mut approvers = approvers;
        let broken = empty_at.filter(|i| *i < approvers.len());
        if let Some(i) = broken { approvers[i].clear(); }
        let job = json!({"prompt": prompt, "approvers": approvers});
        let r = with_job(&job, |f| blocks::human::decode_job(f).map(|j| {
            (j.prompt().to_owned(), j.approvers().iter().map(|a| a.to_string()).collect::<Vec<_>>())
        }));
        match broken {
            Some(_) => prop_assert_eq!(r.map_err(|e| e.code.code()), Err(1001)),
            None => prop_assert_eq!(r.map_err(|e| e.to_string()), Ok((prompt, approvers))),
        }
    }

    #[test]
    fn valid_inference_inputs_decode_to_the_same_rows(
        width in 1usize..8,
        values in prop::collection::vec(-1e30f32..1e30, 1..64),
        device in prop::sample::select(vec!["auto", "cpu"]),
        priority in -1000i64..1000,
    ) {
        let rows: Vec<Vec<f32>> = values.chunks(width).filter(|c| c.len() == width)
            .map(<[f32]>::to_vec).collect();
        prop_assume!(!rows.is_empty());
        let job = json!({"model": "m/mlp.safetensors", "inputs": rows, "device": device,
            "priority": priority});
        let r = with_job(&job, |f| blocks::inference::decode_job(f, Some("none")).map(|j| {
            (j.model().to_owned(), j.inputs().to_vec(), j.rows(), j.width(), j.priority())
        }));
        let (model, inputs, n, w, p) = r.map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(model, "m/mlp.safetensors");
        prop_assert_eq!(inputs, rows.concat());
        prop_assert_eq!((n, w, p), (rows.len(), width, priority));
    }

    #[test]
    fn ragged_or_non_finite_inference_inputs_are_1001(
        width in 1usize..6,
        short in 0usize..5,
        huge in prop::sample::select(vec![1e39f64, -1e39, 3.5e38]),
    ) {
        let ragged = json!({"model": "m", "inputs": [vec![0.5; width], vec![0.5; short % width]]});
        prop_assert_eq!(code_of(decode(BlockKind::Inference, &ragged, &settings())), 1001);
        let non_finite = json!({"model": "m", "inputs": [[huge]]});
        prop_assert_eq!(code_of(decode(BlockKind::Inference, &non_finite, &settings())), 1001);
    }
}

#[test]
fn cuda_only_jobs_are_2002_without_a_device_and_accepted_with_one() {
    let job = json!({"model": "m", "inputs": [[1.0]], "device": "cuda"});
    let mut s = settings();
    assert_eq!(code_of(decode(BlockKind::Inference, &job, &s)), 2002);
    s.no_cuda = None;
    assert_eq!(code_of(decode(BlockKind::Inference, &job, &s)), 0);
}

#[test]
fn inference_rows_over_the_limit_are_2004() {
    let rows = vec![json!([0]); blocks::inference::MAX_ROWS + 1];
    let job = json!({"model": "m", "inputs": rows});
    assert_eq!(
        code_of(decode(BlockKind::Inference, &job, &settings())),
        2004
    );
    let wide = vec![0u8; blocks::inference::MAX_VALUES / 2 + 1];
    let job = json!({"model": "m", "inputs": [wide.clone(), wide]});
    assert_eq!(
        code_of(decode(BlockKind::Inference, &job, &settings())),
        2004
    );
}

#[test]
fn a_job_that_is_not_an_object_is_1003() {
    for raw in [&b"[]"[..], b"\"x\"", b"5", b"null"] {
        for kind in BlockKind::ALL {
            let r = blocks::decode_job_json(kind, &mut raw.to_vec(), "a", &settings());
            assert_eq!(code_of(r), 1003, "{}", String::from_utf8_lossy(raw));
        }
    }
}

#[test]
fn an_assignment_id_with_control_characters_cannot_be_an_idempotency_key() {
    let job = json!({"url": "http://example.com/"});
    let r = with_job(&job, |f| {
        decode_job(BlockKind::Http, f, "a\nb", &settings())
    });
    assert_eq!(code_of(r), 1001);
    let own_key = json!({"url": "http://example.com/", "headers": {"Idempotency-Key": "k"}});
    let r = with_job(&own_key, |f| {
        decode_job(BlockKind::Http, f, "a\nb", &settings())
    });
    assert_eq!(code_of(r), 0);
}

#[test]
fn regression_http_tens_of_thousands_of_headers_do_not_panic() {
    // `http::HeaderMap` panics ("size overflows MAX_SIZE") past 24 576 distinct names; a
    // 300 KB job fits in one NATS message.
    let headers: Map<String, Value> = (0..30_000)
        .map(|i| (format!("x-h{i}"), json!("v")))
        .collect();
    let object = json!({"url": "http://example.com/", "headers": headers});
    let r = decode(BlockKind::Http, &object, &settings());
    assert_eq!(code_of(r), 2004);
    let text = serde_json::to_string(&headers).expect("json");
    let string = json!({"url": "http://example.com/", "headers": text});
    assert_eq!(code_of(decode(BlockKind::Http, &string, &settings())), 2004);
    // The limit itself.
    for (n, code) in [
        (blocks::http::MAX_HEADERS, 0),
        (blocks::http::MAX_HEADERS + 1, 2004),
    ] {
        let headers: Map<String, Value> = (0..n).map(|i| (format!("x-h{i}"), json!("v"))).collect();
        let job = json!({"url": "http://example.com/", "headers": headers});
        assert_eq!(
            code_of(decode(BlockKind::Http, &job, &settings())),
            code,
            "{n} headers"
        );
    }
}
