//! `sql.query` on real SQLite files created in a temporary directory (no mocks).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use beamline_testkit::blocks::{self, exec_ctx, Executor};
use beamline_worker::blocks::sql::{SqlBlock, INLINE_BUDGET};
use beamline_worker::config::{Cli, Config};
use beamline_worker::contract::{ErrorCode, TaskError};
use clap::Parser;
use rusqlite::Connection;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

struct Fixture {
    dir: tempfile::TempDir,
    root: PathBuf,
    block: SqlBlock,
}

impl Fixture {
    /// A root with `app.db` (users, typed, nums) and a block over it.
    fn new(flags: &[&str]) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("sql");
        std::fs::create_dir(&root).expect("mkdir");
        let root_s = root.to_str().expect("utf8").to_owned();
        let mut args = vec!["beamline_worker", "--sql-root", root_s.as_str()];
        args.extend_from_slice(flags);
        let config = Config::resolve(Cli::try_parse_from(args).expect("flags")).expect("config");
        let block = SqlBlock::new(&config).expect("block");
        create_app_db(&root.join("app.db"));
        Fixture { dir, root, block }
    }

    fn run(&self, job: Value) -> Result<Value, TaskError> {
        run_job(
            &self.block,
            job,
            Instant::now() + Duration::from_secs(5),
            &CancellationToken::new(),
        )
    }

    fn outside(&self) -> &Path {
        self.dir.path()
    }
}

fn create_app_db(path: &Path) {
    let c = Connection::open(path).expect("create db");
    c.execute_batch(
        "CREATE TABLE users(id TEXT PRIMARY KEY, name TEXT, email TEXT);
         INSERT INTO users VALUES ('123', 'John', 'john@example.com'),
                                  ('124', 'Jane', 'jane@example.com');
         CREATE INDEX users_name ON users(name);
         CREATE TABLE typed(i INTEGER, r REAL, t TEXT, b BLOB, n);
         INSERT INTO typed VALUES (42, 2.5, 'héllo', x'00ff10', NULL);
         CREATE TABLE nums(x INTEGER);
         WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100)
         INSERT INTO nums SELECT x FROM c;",
    )
    .expect("fill db");
}

fn run_job(
    block: &SqlBlock,
    job: Value,
    deadline: Instant,
    cancel: &CancellationToken,
) -> Result<Value, TaskError> {
    let ctx = exec_ctx("tenant-a", "a-1", deadline, cancel);
    blocks::run_with(block, &job, &ctx, Executor::Tokio).map(|out| out.result.into_value())
}

fn query(sql: &str) -> Value {
    json!({"type": "sql.query", "connection_string": "sqlite://app.db", "query": sql})
}

#[track_caller]
fn expect_err(result: Result<Value, TaskError>, code: ErrorCode) -> TaskError {
    match result {
        Ok(v) => panic!("expected {code:?}, got success {v}"),
        Err(e) => {
            assert_eq!(e.code, code, "{e}");
            e
        }
    }
}

#[test]
fn guide_example() {
    let f = Fixture::new(&[]);
    let out = f
        .run(json!({
            "type": "sql.query",
            "connection_string": "sqlite://app.db",
            "query": "SELECT * FROM users WHERE id = ?",
            "parameters": ["123"]
        }))
        .expect("runs");
    assert_eq!(
        out,
        json!({
            "rows": [{"id": "123", "name": "John", "email": "john@example.com"}],
            "row_count": 1,
            "columns": ["id", "name", "email"]
        })
    );
}

#[test]
fn typed_values_and_parameters() {
    let f = Fixture::new(&[]);
    let out = f
        .run(query("SELECT i, r, t, b, n FROM typed"))
        .expect("runs");
    assert_eq!(
        out["rows"],
        json!([{"i": 42, "r": 2.5, "t": "héllo", "b": "AP8Q", "n": null}])
    );
    let out = f
        .run(json!({
            "connection_string": "sqlite://app.db",
            "query": "SELECT ? AS s, ? AS i, ? AS r, ? AS yes, ? AS no, ? AS n, typeof(?) AS ti, typeof(?) AS tr, ? AS big",
            "parameters": ["x", 7, 1.5, true, false, null, -3, 0.25, 18446744073709551615u64]
        }))
        .expect("runs");
    assert_eq!(
        out["rows"],
        json!([{"s": "x", "i": 7, "r": 1.5, "yes": 1, "no": 0, "n": null, "ti": "integer", "tr": "real",
                "big": 18446744073709551615.0}])
    );
    assert_eq!(
        out["columns"],
        json!(["s", "i", "r", "yes", "no", "n", "ti", "tr", "big"])
    );
    // No rows: an empty list.
    let out = f.run(json!({
        "connection_string": "sqlite://app.db",
        "query": "SELECT * FROM users WHERE id = ?",
        "parameters": ["nobody"]
    }));
    assert_eq!(out.expect("runs")["row_count"], 0);
    for bad in [json!({"a": 1}), json!([1])] {
        let e = expect_err(
            f.run(json!({"connection_string": "sqlite://app.db", "query": "SELECT ?", "parameters": [1, bad]})),
            ErrorCode::InvalidFormat,
        );
        assert!(e.message.contains("job.parameters[1]"), "{e}");
    }
    expect_err(
        f.run(
            json!({"connection_string": "sqlite://app.db", "query": "SELECT 1", "parameters": "x"}),
        ),
        ErrorCode::InvalidFormat,
    );
    let e = expect_err(
        f.run(json!({"connection_string": "sqlite://app.db", "query": "SELECT ?, ?", "parameters": [1]})),
        ErrorCode::InvalidInput,
    );
    assert!(
        e.message.contains("job.parameters") && e.message.contains('2'),
        "{e}"
    );
    expect_err(
        f.run(
            json!({"connection_string": "sqlite://app.db", "query": "SELECT 1", "parameters": [1]}),
        ),
        ErrorCode::InvalidInput,
    );
}

#[test]
fn original_worker_field_names() {
    let f = Fixture::new(&[]);
    let out = f
        .run(json!({"connection": "sqlite:app.db", "query": "SELECT name FROM users WHERE id = ?", "params": ["124"]}))
        .expect("runs");
    assert_eq!(out["rows"], json!([{"name": "Jane"}]));
}

#[test]
fn missing_fields_and_bad_connection_strings() {
    let f = Fixture::new(&[]);
    let e = expect_err(
        f.run(json!({"query": "SELECT 1"})),
        ErrorCode::MissingRequiredField,
    );
    assert!(e.message.contains("job.connection_string"), "{e}");
    expect_err(
        f.run(json!({"connection_string": "sqlite://app.db"})),
        ErrorCode::MissingRequiredField,
    );
    expect_err(
        f.run(json!({"connection_string": "sqlite://app.db", "query": ""})),
        ErrorCode::MissingRequiredField,
    );
    expect_err(
        f.run(json!({"connection_string": "sqlite://app.db", "query": " -- nothing\n"})),
        ErrorCode::InvalidInput,
    );
    for conn in [
        "postgres://user:secret@db/app",
        "app.db",
        "sqlite://:memory:",
        "sqlite://app.db?mode=rwc",
        "sqlite://file:app.db",
    ] {
        let e = expect_err(
            f.run(json!({"connection_string": conn, "query": "SELECT 1"})),
            ErrorCode::InvalidInput,
        );
        assert!(e.message.contains("job.connection_string"), "{conn}: {e}");
        assert!(!e.message.contains("secret"), "{e}");
    }
    let e = expect_err(
        f.run(json!({"connection_string": "sqlite://app.db", "query": "SELECT 1", "max_rows": 0})),
        ErrorCode::InvalidInput,
    );
    assert!(e.message.contains("max_rows"), "{e}");
}

#[test]
fn missing_database_is_2002_and_not_created() {
    let f = Fixture::new(&[]);
    for name in ["nope.db", ".nope.db"] {
        let e = expect_err(
            f.run(json!({"connection_string": format!("sqlite://{name}"), "query": "SELECT 1"})),
            ErrorCode::ResourceUnavailable,
        );
        assert!(!e.retryable);
        assert_eq!(e.message, format!("database {name} not found"));
        assert!(!f.root.join(name).exists());
    }
    std::fs::create_dir(f.root.join("dir.db")).expect("mkdir");
    expect_err(
        f.run(json!({"connection_string": "sqlite://dir.db", "query": "SELECT 1"})),
        ErrorCode::ResourceUnavailable,
    );
}

#[test]
fn paths_outside_the_root_are_refused() {
    let f = Fixture::new(&[]);
    let outside = f.outside().join("outside.db");
    create_app_db(&outside);
    let abs = format!("sqlite://{}", f.root.join("app.db").display());
    for conn in [
        "sqlite://../outside.db",
        "sqlite://x/../../outside.db",
        abs.as_str(),
    ] {
        let e = expect_err(
            f.run(json!({"connection_string": conn, "query": "SELECT * FROM users"})),
            ErrorCode::PermissionDenied,
        );
        assert!(!e.retryable, "{e}");
    }
    // A symlink inside the root that leads out of it.
    std::os::unix::fs::symlink(&outside, f.root.join("link.db")).expect("symlink");
    let e = expect_err(
        f.run(json!({"connection_string": "sqlite://link.db", "query": "SELECT * FROM users"})),
        ErrorCode::PermissionDenied,
    );
    assert!(e.message.contains("symlink"), "{e}");
    // A symlink that stays inside is refused too: SQLite opens by name, and only a name
    // without symlinks is known to reach the file that was checked (tests/sql_tenants.rs
    // has the tenant cases).
    std::os::unix::fs::symlink(f.root.join("app.db"), f.root.join("alias.db")).expect("symlink");
    expect_err(
        f.run(json!({"connection_string": "sqlite://alias.db", "query": "SELECT count(*) AS n FROM users"})),
        ErrorCode::PermissionDenied,
    );
    // A directory part is refused before anything is opened.
    expect_err(
        f.run(json!({"connection_string": "sqlite://sub/app.db", "query": "SELECT 1"})),
        ErrorCode::PermissionDenied,
    );
}

fn dir_listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn every_write_form_is_refused_and_changes_nothing() {
    let f = Fixture::new(&[]);
    let db = f.root.join("app.db");
    let before = std::fs::read(&db).expect("read db");
    let root_before = dir_listing(&f.root);
    let outside_before = dir_listing(f.outside());
    let evil = f.outside().join("evil.db");
    let copy = f.outside().join("copy.db");
    let writes = [
        "INSERT INTO users VALUES ('9', 'x', 'y')".to_owned(),
        "insert into users values ('9', 'x', 'y')".to_owned(),
        "REPLACE INTO users VALUES ('123', 'x', 'y')".to_owned(),
        "UPDATE users SET name = 'x'".to_owned(),
        "DELETE FROM users".to_owned(),
        "CREATE TABLE z(a)".to_owned(),
        "CREATE TEMP TABLE z(a)".to_owned(),
        "CREATE TRIGGER tr AFTER INSERT ON users BEGIN DELETE FROM users; END".to_owned(),
        "DROP TABLE users".to_owned(),
        "ALTER TABLE users ADD COLUMN x".to_owned(),
        format!("ATTACH DATABASE '{}' AS evil", evil.display()),
        "DETACH main".to_owned(),
        "PRAGMA user_version = 5".to_owned(),
        "PRAGMA journal_mode = WAL".to_owned(),
        "PRAGMA query_only = OFF".to_owned(),
        "PRAGMA writable_schema = ON".to_owned(),
        "BEGIN".to_owned(),
        "BEGIN EXCLUSIVE".to_owned(),
        "COMMIT".to_owned(),
        "SAVEPOINT s".to_owned(),
        "RELEASE s".to_owned(),
        "VACUUM".to_owned(),
        format!("VACUUM INTO '{}'", copy.display()),
        "REINDEX".to_owned(),
        "ANALYZE".to_owned(),
        "SELECT load_extension('x')".to_owned(),
        "select LOAD_EXTENSION('/tmp/x.so', 'init')".to_owned(),
        "WITH x AS (SELECT 1) INSERT INTO users SELECT '9', 'x', 'y' FROM x".to_owned(),
        "WITH x AS (SELECT 1) DELETE FROM users".to_owned(),
        "/* hidden */ DELETE FROM users".to_owned(),
    ];
    for sql in &writes {
        let e = expect_err(f.run(query(sql)), ErrorCode::PermissionDenied);
        assert!(!e.retryable, "{sql}: {e}");
        assert!(
            e.message.starts_with("read-only: ") && e.message.ends_with(" is not allowed"),
            "{sql}: {e}"
        );
    }
    assert_eq!(
        std::fs::read(&db).expect("read db"),
        before,
        "database file changed"
    );
    assert_eq!(
        dir_listing(&f.root),
        root_before,
        "files appeared in the root"
    );
    assert_eq!(
        dir_listing(f.outside()),
        outside_before,
        "files appeared outside the root"
    );
    assert!(!evil.exists() && !copy.exists());
    let check = Connection::open(&db).expect("open");
    let (users, version, mode): (i64, i64, String) = check
        .query_row(
            "SELECT (SELECT count(*) FROM users), (SELECT user_version FROM pragma_user_version), (SELECT journal_mode FROM pragma_journal_mode)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("check");
    assert_eq!((users, version, mode.as_str()), (2, 0, "delete"));
    // Reads still work on the same (cached) connection afterwards.
    let out = f
        .run(query("SELECT count(*) AS n FROM users"))
        .expect("runs");
    assert_eq!(out["rows"], json!([{"n": 2}]));
}

#[test]
fn read_only_pragmas_are_allowed() {
    let f = Fixture::new(&[]);
    let out = f.run(query("PRAGMA table_info(users)")).expect("runs");
    let names: Vec<&str> = out["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["id", "name", "email"]);
    let out = f
        .run(query(
            "SELECT name FROM pragma_index_list('users') ORDER BY name",
        ))
        .expect("runs");
    assert_eq!(out["row_count"], 2);
    // The schema's own numbers may be read (a migration check), never set.
    let out = f.run(query("PRAGMA user_version")).expect("runs");
    assert_eq!(out["rows"], json!([{"user_version": 0}]));
    expect_err(
        f.run(query("PRAGMA user_version = 7")),
        ErrorCode::PermissionDenied,
    );
    // A setting of the connection is still outside the allow-list.
    expect_err(
        f.run(query("PRAGMA journal_mode")),
        ErrorCode::PermissionDenied,
    );
}

#[test]
fn multiple_statements_are_refused() {
    let f = Fixture::new(&[]);
    for sql in [
        "SELECT 1; SELECT 2",
        "SELECT 1; DROP TABLE users",
        "SELECT 1;;\nDELETE FROM users",
    ] {
        let e = expect_err(f.run(query(sql)), ErrorCode::InvalidInput);
        assert!(e.message.contains("single statement"), "{sql}: {e}");
    }
    for sql in [
        "SELECT 1 AS one;",
        "SELECT 1 AS one; -- done",
        "SELECT 1 AS one /* ; */ ;  ",
    ] {
        let out = f.run(query(sql)).expect(sql);
        assert_eq!(out["rows"], json!([{"one": 1}]), "{sql}");
    }
    let out = f.run(query("SELECT ';' AS semi")).expect("runs");
    assert_eq!(out["rows"], json!([{"semi": ";"}]));
    let out = f
        .run(query("SELECT count(*) AS n FROM users"))
        .expect("runs");
    assert_eq!(out["rows"], json!([{"n": 2}]));
}

#[test]
fn rows_are_capped() {
    let f = Fixture::new(&["--sql-max-rows", "50"]);
    let job = |max: Option<u64>| {
        let mut j = query("SELECT x FROM nums ORDER BY x");
        if let Some(m) = max {
            j["max_rows"] = json!(m);
        }
        j
    };
    let out = f.run(job(Some(10))).expect("runs");
    assert_eq!(out["row_count"], 10);
    assert_eq!(out["rows"].as_array().expect("rows").len(), 10);
    assert_eq!(out["rows"][9], json!({"x": 10}));
    assert_eq!(out["truncated"], true);
    // The job cannot ask for more than the configured cap.
    let out = f.run(job(Some(1000))).expect("runs");
    assert_eq!(
        (out["row_count"].as_u64(), out["truncated"].as_bool()),
        (Some(50), Some(true))
    );
    let out = f.run(job(None)).expect("runs");
    assert_eq!(out["row_count"], 50);
    // Exactly max_rows rows: not truncated.
    let out = f.run(job(Some(100))).expect("runs");
    assert_eq!(out["row_count"], 50);
    let mut exact = query("SELECT x FROM nums WHERE x <= 10");
    exact["max_rows"] = json!(10);
    let out = f.run(exact).expect("runs");
    assert_eq!(out["row_count"], 10);
    assert!(out.get("truncated").is_none(), "{out}");
}

const SLOW: &str =
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000000) SELECT count(*) FROM c";

#[test]
fn slow_query_stops_at_the_time_limit() {
    let f = Fixture::new(&["--sql-time-limit-ms", "300"]);
    let started = Instant::now();
    let e = expect_err(f.run(query(SLOW)), ErrorCode::ExecutionFailed);
    let took = started.elapsed();
    assert!(!e.retryable);
    assert_eq!(e.message, "query exceeded the 300 ms time limit");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(500),
        "took {took:?}"
    );
    // The connection is still good for the next query.
    let out = f
        .run(query("SELECT count(*) AS n FROM users"))
        .expect("runs");
    assert_eq!(out["rows"], json!([{"n": 2}]));
}

/// A query that runs past its inline budget is run again, to the end, on the blocking pool
/// (SQLite ran the statement twice), with its result; a fast one runs once, in line.
#[test]
fn a_query_past_its_inline_budget_finishes_on_the_blocking_pool() {
    let f = Fixture::new(&["--sql-time-limit-ms", "5000"]);
    let out = f
        .run(query("SELECT count(*) AS n FROM users"))
        .expect("runs");
    assert_eq!(out["rows"], json!([{"n": 2}]));
    assert_eq!(f.block.last_statement_runs(), 1, "in line, once");
    let slow = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 200000) SELECT count(*) AS n FROM c";
    let started = Instant::now();
    let out = f.run(query(slow)).expect("runs");
    assert!(started.elapsed() > INLINE_BUDGET, "{:?}", started.elapsed());
    assert_eq!(out["rows"], json!([{"n": 200_000}]));
    assert_eq!(
        f.block.last_statement_runs(),
        2,
        "stopped in line after the budget, then run again to the end"
    );
    // Its connection came back: the next query still works.
    let out = f
        .run(query("SELECT count(*) AS n FROM users"))
        .expect("runs");
    assert_eq!(out["rows"], json!([{"n": 2}]));
}

#[test]
fn slow_query_stops_at_the_job_deadline_or_cancel() {
    let f = Fixture::new(&["--sql-time-limit-ms", "5000"]);
    let started = Instant::now();
    let e = expect_err(
        run_job(
            &f.block,
            query(SLOW),
            Instant::now() + Duration::from_millis(200),
            &CancellationToken::new(),
        ),
        ErrorCode::CancelledByTimeout,
    );
    assert!(started.elapsed() < Duration::from_millis(400), "{e}");

    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    let canceller = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(150));
        trigger.cancel();
    });
    let started = Instant::now();
    let e = expect_err(
        run_job(
            &f.block,
            query(SLOW),
            Instant::now() + Duration::from_secs(5),
            &cancel,
        ),
        ErrorCode::CancelledByUser,
    );
    assert!(started.elapsed() < Duration::from_millis(400), "{e}");
    canceller.join().expect("join");
}

#[test]
fn exclusive_lock_is_retryable_then_succeeds() {
    let f = Fixture::new(&[]);
    let writer = Connection::open(f.root.join("app.db")).expect("writer");
    // Warm the cache first so the lock is met by a cached connection too.
    f.run(query("SELECT count(*) AS n FROM users"))
        .expect("runs");

    // RESERVED (a write in progress, not yet committing): readers still read the old data.
    writer
        .execute_batch("BEGIN IMMEDIATE; INSERT INTO users VALUES ('200', 'New', 'n@example.com');")
        .expect("reserved");
    let out = f
        .run(query("SELECT count(*) AS n FROM users"))
        .expect("reads under RESERVED");
    assert_eq!(out["rows"], json!([{"n": 2}]));
    writer.execute_batch("ROLLBACK").expect("rollback");

    // EXCLUSIVE: readers are locked out → 2002, retryable, answered within the busy timeout.
    writer.execute_batch("BEGIN EXCLUSIVE").expect("exclusive");
    let started = Instant::now();
    let e = expect_err(
        f.run(query("SELECT count(*) AS n FROM users")),
        ErrorCode::ResourceUnavailable,
    );
    assert!(e.retryable, "{e}");
    assert!(e.message.contains("locked"), "{e}");
    assert!(started.elapsed() < Duration::from_millis(500));
    writer
        .execute_batch("INSERT INTO users VALUES ('201', 'Late', 'l@example.com'); COMMIT;")
        .expect("commit");
    let out = f
        .run(query("SELECT count(*) AS n FROM users"))
        .expect("runs after release");
    assert_eq!(out["rows"], json!([{"n": 3}]));
}

#[test]
fn wal_database_reads_during_a_write_transaction() {
    let f = Fixture::new(&[]);
    let path = f.root.join("wal.db");
    create_app_db(&path);
    let writer = Connection::open(&path).expect("writer");
    let mode: String = writer
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .expect("wal");
    assert_eq!(mode, "wal");
    let job =
        json!({"connection_string": "sqlite://wal.db", "query": "SELECT count(*) AS n FROM users"});
    writer
        .execute_batch("BEGIN EXCLUSIVE; INSERT INTO users VALUES ('300', 'W', 'w@example.com');")
        .expect("write txn");
    // In WAL mode a writer does not block readers: the snapshot before the write.
    assert_eq!(f.run(job.clone()).expect("runs")["rows"], json!([{"n": 2}]));
    writer.execute_batch("COMMIT").expect("commit");
    assert_eq!(f.run(job.clone()).expect("runs")["rows"], json!([{"n": 3}]));
    drop(writer);

    // A WAL database with no writer left (its -wal/-shm removed on close): the read-only
    // connection still reads it.
    let g = Fixture::new(&[]);
    let path = g.root.join("wal.db");
    create_app_db(&path);
    {
        let w = Connection::open(&path).expect("writer");
        w.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))
            .expect("wal");
        w.execute_batch("INSERT INTO users VALUES ('300', 'W', 'w@example.com')")
            .expect("insert");
    }
    assert_eq!(dir_listing(&g.root), ["app.db", "wal.db"]);
    assert_eq!(g.run(job).expect("runs")["rows"], json!([{"n": 3}]));
    // SQLite's own coordination files appear (a WAL reader needs the -shm); no data is
    // written to them.
    assert_eq!(
        dir_listing(&g.root),
        ["app.db", "wal.db", "wal.db-shm", "wal.db-wal"]
    );
    assert_eq!(
        std::fs::metadata(g.root.join("wal.db-wal"))
            .expect("wal")
            .len(),
        0
    );
}

#[test]
fn sql_errors_are_invalid_input() {
    let f = Fixture::new(&[]);
    let e = expect_err(f.run(query("SELEC * FROM users")), ErrorCode::InvalidInput);
    assert!(e.message.contains("syntax error"), "{e}");
    let e = expect_err(
        f.run(query("SELECT * FROM nosuch")),
        ErrorCode::InvalidInput,
    );
    assert!(e.message.contains("no such table: nosuch"), "{e}");
    let e = expect_err(
        f.run(query("SELECT nosuch FROM users")),
        ErrorCode::InvalidInput,
    );
    assert!(e.message.contains("no such column"), "{e}");
    // Failing while running (not while preparing) is 2001.
    let e = expect_err(
        f.run(query("SELECT abs(-9223372036854775807 - 1) AS v")),
        ErrorCode::ExecutionFailed,
    );
    assert!(e.message.contains("integer overflow"), "{e}");
    assert!(!e.retryable);
}

#[test]
fn connections_and_statements_are_reused() {
    let f = Fixture::new(&[]);
    assert_eq!(f.block.cached_connections(), 0);
    let job = json!({"connection_string": "sqlite://app.db", "query": "SELECT name FROM users WHERE id = ?", "parameters": ["123"]});
    f.run(job.clone()).expect("first");
    assert_eq!(f.block.cached_connections(), 1);
    assert_eq!(f.block.last_statement_runs(), 1);
    let mut other = job.clone();
    other["parameters"] = json!(["124"]);
    let out = f.run(other).expect("second");
    assert_eq!(out["rows"], json!([{"name": "Jane"}]));
    assert_eq!(f.block.cached_connections(), 1, "connection reused");
    assert_eq!(
        f.block.last_statement_runs(),
        2,
        "prepared statement reused"
    );
    // `sqlite:` and `sqlite://` name the same file: same connection.
    f.run(json!({"connection": "sqlite:app.db", "query": "SELECT name FROM users WHERE id = ?", "params": ["123"]}))
        .expect("alias");
    assert_eq!(f.block.cached_connections(), 1);
    assert_eq!(f.block.last_statement_runs(), 3);

    create_app_db(&f.root.join("second.db"));
    f.run(json!({"connection_string": "sqlite://second.db", "query": "SELECT 1"}))
        .expect("second db");
    assert_eq!(f.block.cached_connections(), 2);

    // Replaced file (new inode): the connection is reopened and sees the new content.
    let tmp = f.root.join("replacement.tmp");
    let c = Connection::open(&tmp).expect("create");
    c.execute_batch(
        "CREATE TABLE users(id TEXT, name TEXT); INSERT INTO users VALUES ('123', 'Replaced');",
    )
    .expect("fill");
    drop(c);
    std::fs::rename(&tmp, f.root.join("app.db")).expect("rename");
    let out = f.run(job.clone()).expect("after replace");
    assert_eq!(out["rows"], json!([{"name": "Replaced"}]));
    assert_eq!(f.block.cached_connections(), 2);
    assert_eq!(
        f.block.last_statement_runs(),
        1,
        "fresh statement on the new connection"
    );

    // Deleted file: 2002, and the connection is dropped.
    std::fs::remove_file(f.root.join("app.db")).expect("rm");
    expect_err(f.run(job), ErrorCode::ResourceUnavailable);
    assert_eq!(f.block.cached_connections(), 1);
}

#[test]
fn sandbox_mode_reads_normally() {
    let f = Fixture::new(&["--sandbox-mode", "true"]);
    let out = f
        .run(query("SELECT name FROM users ORDER BY id"))
        .expect("runs");
    assert_eq!(out["rows"], json!([{"name": "John"}, {"name": "Jane"}]));
    expect_err(
        f.run(query("DELETE FROM users")),
        ErrorCode::PermissionDenied,
    );
}

#[test]
fn connection_cache_is_bounded() {
    use beamline_worker::blocks::sql::MAX_CONNECTIONS;
    let f = Fixture::new(&[]);
    for i in 0..=MAX_CONNECTIONS {
        let name = format!("db{i}.db");
        Connection::open(f.root.join(&name))
            .expect("create")
            .execute_batch("CREATE TABLE t(a); INSERT INTO t VALUES (1);")
            .expect("fill");
        let out = f
            .run(json!({"connection_string": format!("sqlite://{name}"), "query": "SELECT a FROM t"}))
            .expect("runs");
        assert_eq!(out["rows"], json!([{"a": 1}]));
    }
    assert_eq!(f.block.cached_connections(), MAX_CONNECTIONS);
    // The least recently used (db0) was evicted; it reopens on demand.
    f.run(json!({"connection_string": "sqlite://db0.db", "query": "SELECT a FROM t"}))
        .expect("reopens");
    assert_eq!(f.block.cached_connections(), MAX_CONNECTIONS);
}
