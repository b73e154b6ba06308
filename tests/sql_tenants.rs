//! Tenant-private SQLite databases (issue 13, item 2; CONTRACT.md): `sqlite://NAME` opens
//! `<sql-root>/<tenant_id>/NAME` when that file exists, else the shared `<sql-root>/NAME`,
//! read-only either way, and one tenant never reaches another tenant's directory. Real
//! SQLite files in a temporary directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use beamline_testkit::blocks::{self, Executor};
use beamline_worker::blocks::sql::SqlBlock;
use beamline_worker::config::{Cli, Config};
use beamline_worker::contract::{ErrorCode, TaskError};
use clap::Parser;
use rusqlite::Connection;
use serde_json::{json, Value};

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    block: SqlBlock,
}

/// A database with one table `who(name)` holding one row.
fn create_db(path: &Path, name: &str) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("mkdir");
    }
    let c = Connection::open(path).expect("create db");
    c.execute_batch("CREATE TABLE who(name TEXT);")
        .expect("table");
    c.execute("INSERT INTO who VALUES (?1)", [name])
        .expect("row");
}

impl Fixture {
    /// `<root>/app.db` (shared, "shared"); `<root>/tenant-b/app.db` ("private b").
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("sql");
        create_db(&root.join("app.db"), "shared");
        create_db(&root.join("tenant-b/app.db"), "private b");
        let root_s = root.to_str().expect("utf8").to_owned();
        let config = Config::resolve(
            Cli::try_parse_from(["beamline_worker", "--sql-root", root_s.as_str()]).expect("flags"),
        )
        .expect("config");
        let block = SqlBlock::new(&config).expect("block");
        Fixture {
            _dir: dir,
            root,
            block,
        }
    }

    fn query(&self, tenant: &str, connection: &str, sql: &str) -> Result<Value, TaskError> {
        let job = json!({"type": "sql.query", "connection_string": connection, "query": sql});
        blocks::run(
            &self.block,
            tenant,
            &job,
            Duration::from_secs(5),
            Executor::Tokio,
        )
        .map(|o| o.result.into_value())
    }

    /// Whose database `tenant` reads under `sqlite://NAME`.
    fn who(&self, tenant: &str, name: &str) -> Result<String, TaskError> {
        self.query(tenant, &format!("sqlite://{name}"), "SELECT name FROM who")
            .map(|v| v["rows"][0]["name"].as_str().unwrap_or("?").to_owned())
    }
}

#[track_caller]
fn refused(r: Result<String, TaskError>, code: ErrorCode) -> TaskError {
    match r {
        Ok(v) => panic!("expected {code:?}, read the database of {v:?}"),
        Err(e) => {
            assert_eq!(e.code, code, "{e}");
            assert!(!e.retryable, "{e}");
            e
        }
    }
}

#[test]
fn a_tenants_own_database_is_used_else_the_shared_one() {
    let f = Fixture::new();
    assert_eq!(f.who("tenant-b", "app.db").expect("b"), "private b");
    // No directory of its own: the shared database.
    assert_eq!(f.who("tenant-a", "app.db").expect("a"), "shared");
    // A directory of its own without that name: still the shared database.
    std::fs::create_dir(f.root.join("tenant-c")).expect("mkdir");
    create_db(&f.root.join("tenant-c/other.db"), "private c");
    assert_eq!(f.who("tenant-c", "app.db").expect("c"), "shared");
    assert_eq!(f.who("tenant-c", "other.db").expect("c"), "private c");
    // Only tenant-c has other.db; others get "not found", not tenant-c's file.
    let e = refused(
        f.who("tenant-a", "other.db"),
        ErrorCode::ResourceUnavailable,
    );
    assert_eq!(e.message, "database other.db not found");
}

#[test]
fn a_private_database_created_or_removed_later_is_seen_at_once() {
    let f = Fixture::new();
    assert_eq!(f.who("tenant-a", "app.db").expect("a"), "shared");
    create_db(&f.root.join("tenant-a/app.db"), "private a");
    assert_eq!(f.who("tenant-a", "app.db").expect("a"), "private a");
    // The shared one is unchanged for everybody else, on the same block (cache).
    assert_eq!(f.who("tenant-x", "app.db").expect("x"), "shared");
    assert_eq!(f.who("tenant-b", "app.db").expect("b"), "private b");
    std::fs::remove_file(f.root.join("tenant-a/app.db")).expect("rm");
    assert_eq!(f.who("tenant-a", "app.db").expect("a"), "shared");
}

#[test]
fn no_name_reaches_another_tenants_directory() {
    let f = Fixture::new();
    // Names with a directory part: refused before anything is opened (2003).
    for name in [
        "tenant-b/app.db",
        "./tenant-b/app.db",
        "../sql/tenant-b/app.db",
        "tenant-a/../tenant-b/app.db",
    ] {
        refused(f.who("tenant-a", name), ErrorCode::PermissionDenied);
    }
    let abs = f.root.join("tenant-b/app.db");
    refused(
        f.who("tenant-a", abs.to_str().expect("utf8")),
        ErrorCode::PermissionDenied,
    );
    // A tenant's directory name as a database name: a directory, not a database.
    refused(
        f.who("tenant-a", "tenant-b"),
        ErrorCode::ResourceUnavailable,
    );
}

#[test]
fn symlinks_and_hard_links_into_another_tenants_directory_are_refused() {
    let f = Fixture::new();
    let theirs = f.root.join("tenant-b/app.db");
    std::fs::create_dir(f.root.join("tenant-a")).expect("mkdir");
    // In the tenant's own directory: absolute and relative symlinks, a hard link.
    std::os::unix::fs::symlink(&theirs, f.root.join("tenant-a/abs.db")).expect("ln");
    std::os::unix::fs::symlink("../tenant-b/app.db", f.root.join("tenant-a/rel.db")).expect("ln");
    std::fs::hard_link(&theirs, f.root.join("tenant-a/hard.db")).expect("ln");
    // In the shared directory: a symlink every tenant would otherwise read through.
    std::os::unix::fs::symlink("tenant-b/app.db", f.root.join("shared-link.db")).expect("ln");
    for name in ["abs.db", "rel.db", "hard.db", "shared-link.db"] {
        refused(f.who("tenant-a", name), ErrorCode::PermissionDenied);
    }
    // tenant-b's database has two names now: refused for tenant-b too, as fs.get does.
    refused(f.who("tenant-b", "app.db"), ErrorCode::PermissionDenied);
    std::fs::remove_file(f.root.join("tenant-a/hard.db")).expect("rm");
    assert_eq!(f.who("tenant-b", "app.db").expect("b"), "private b");
    // A tenant directory that is itself a symlink to another tenant's directory.
    std::os::unix::fs::symlink("tenant-b", f.root.join("tenant-z")).expect("ln");
    refused(f.who("tenant-z", "app.db"), ErrorCode::PermissionDenied);
    // Nothing of tenant-b's was read by anyone but tenant-b; its file is unchanged.
    assert_eq!(f.who("tenant-b", "app.db").expect("b"), "private b");
}

#[test]
fn private_databases_are_read_only_and_cannot_attach_others() {
    let f = Fixture::new();
    let path = f.root.join("tenant-b/app.db");
    let before = std::fs::read(&path).expect("read");
    for sql in [
        "DELETE FROM who",
        "INSERT INTO who VALUES ('x')",
        "ATTACH 'app.db' AS s",
        "ATTACH '../app.db' AS s",
        "PRAGMA journal_mode = DELETE",
    ] {
        let e = f.query("tenant-b", "sqlite://app.db", sql).expect_err(sql);
        assert_eq!(e.code, ErrorCode::PermissionDenied, "{sql}: {e}");
    }
    // A shared read through tenant-a cannot attach tenant-b's database either.
    let attach = format!("ATTACH '{}' AS b", path.display());
    let e = f
        .query("tenant-a", "sqlite://app.db", &attach)
        .expect_err("attach");
    assert_eq!(e.code, ErrorCode::PermissionDenied, "{e}");
    assert_eq!(std::fs::read(&path).expect("read"), before);
    assert_eq!(f.who("tenant-b", "app.db").expect("b"), "private b");
}
