//! What the `sql.query` block may run: one read-only statement on a SQLite file inside
//! `--sql-root`.
//!
//! Read-only is enforced by SQLite itself, in layers, so that no single check (and in
//! particular not `sqlite3_stmt_readonly`, which is true for `ATTACH` and `BEGIN`) carries
//! it alone:
//!
//! 1. the statement's first keyword: the statements that change something (`INSERT`,
//!    `CREATE`, `ATTACH`, `BEGIN`, `VACUUM` …) are refused before SQLite sees them
//!    ([`check_statement`]); `VACUUM` in particular has no authorizer action, and
//!    `VACUUM INTO` would write a new file even from a read-only connection;
//! 2. the connection is opened `SQLITE_OPEN_READ_ONLY` (without `SQLITE_OPEN_URI`, so a
//!    name can carry no `?mode=rwc`), with `PRAGMA query_only = ON`, the defensive flag
//!    on, an untrusted schema and `SQLITE_LIMIT_ATTACHED = 0` ([`open_read_only`]);
//! 3. an authorizer that allows reads, `SELECT`, recursive CTEs, functions other than
//!    [`DENIED_FUNCTIONS`], the [`READ_ONLY_PRAGMAS`] and reads of the
//!    [`READABLE_SETTINGS`], and denies every other action
//!    while the statement is prepared ([`authorize`]), so a `WITH … INSERT` is refused too;
//! 4. the block refuses a prepared statement that is not `stmt_readonly` as a last check.
//!
//! Extension loading stays off: rusqlite's `load_extension` feature is not enabled, so
//! `sqlite3_enable_load_extension` is never called, and the `load_extension()` SQL
//! function is denied by the authorizer as well.
//!
//! Only one statement runs per query: text after the first statement (other than blanks,
//! comments and semicolons) is refused ([`StatementRefusal::Multiple`]).

use std::fmt;
use std::ops::Range;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization, TransactionOperation};
use rusqlite::limits::Limit;
use rusqlite::{Connection, OpenFlags};

/// Pragmas a query may run: they only describe the schema and have no write form.
pub const READ_ONLY_PRAGMAS: &[&str] = &[
    "table_info",
    "table_xinfo",
    "table_list",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
];

/// Settings a query may read (`PRAGMA user_version`, never `PRAGMA user_version = 5`): the
/// schema's own numbers and the file's layout. Settings of the connection itself
/// (`query_only`, `journal_mode` …) and what names files (`database_list`) stay denied.
pub const READABLE_SETTINGS: &[&str] = &[
    "user_version",
    "application_id",
    "schema_version",
    "data_version",
    "page_count",
    "page_size",
    "freelist_count",
    "encoding",
];

/// SQL functions a query may not call.
pub const DENIED_FUNCTIONS: &[&str] = &["load_extension", "fts3_tokenizer"];

/// First keywords of the statements that change a database, a connection or a file.
const WRITE_KEYWORDS: &[&str] = &[
    "ALTER",
    "ANALYZE",
    "ATTACH",
    "BEGIN",
    "COMMIT",
    "CREATE",
    "DELETE",
    "DETACH",
    "DROP",
    "END",
    "INSERT",
    "REINDEX",
    "RELEASE",
    "REPLACE",
    "ROLLBACK",
    "SAVEPOINT",
    "UPDATE",
    "VACUUM",
];

/// Largest string or blob a query may read or build (`SQLITE_LIMIT_LENGTH`).
pub const MAX_VALUE_BYTES: i32 = 16 << 20;
/// Longest query text (`SQLITE_LIMIT_SQL_LENGTH`).
pub const MAX_SQL_BYTES: i32 = 1 << 20;

/// Why a connection string names no database this worker may open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameRefusal {
    /// Not `sqlite://NAME` / `sqlite:NAME`, or a NAME this worker does not accept
    /// (`:memory:`, URI parameters, empty): invalid input.
    Unsupported(&'static str),
    /// NAME would leave `--sql-root` (absolute, or a `..` component): permission denied.
    Escapes(&'static str),
}

impl fmt::Display for NameRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameRefusal::Unsupported(why) | NameRefusal::Escapes(why) => f.write_str(why),
        }
    }
}

/// The database NAME of `sqlite://NAME` (or `sqlite:NAME`): one file name, looked up in
/// the tenant's directory under the SQL root, then in the root itself. Nothing is decoded
/// (`%xx` is literal) and no file is looked at.
pub fn database_name(connection: &str) -> Result<&str, NameRefusal> {
    let rest = match connection.split_once(':') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("sqlite") => rest,
        _ => {
            return Err(NameRefusal::Unsupported(
                "only sqlite://NAME connection strings are supported",
            ))
        }
    };
    let name = rest.strip_prefix("//").unwrap_or(rest);
    if name.is_empty() || name == "." {
        return Err(NameRefusal::Unsupported("names no database"));
    }
    if name == ":memory:" || name.starts_with("file:") {
        return Err(NameRefusal::Unsupported(
            "in-memory and URI databases are not supported",
        ));
    }
    if name.contains(['?', '#']) {
        return Err(NameRefusal::Unsupported(
            "URI parameters (`?…`) are not supported",
        ));
    }
    if name.contains('\0') {
        return Err(NameRefusal::Unsupported("contains a NUL byte"));
    }
    if name.starts_with('/') {
        return Err(NameRefusal::Escapes(
            "absolute paths are not allowed; NAME is relative to the SQL root",
        ));
    }
    if name == ".." || name.starts_with("../") || name.contains("/../") || name.ends_with("/..") {
        return Err(NameRefusal::Escapes(
            "`..` is not allowed; NAME must stay under the SQL root",
        ));
    }
    if name.contains('/') {
        return Err(NameRefusal::Escapes(
            "NAME must be one file name: a directory part could reach another tenant's databases (a tenant's own databases are found in its directory by the worker)",
        ));
    }
    Ok(name)
}

/// One plain file name: not empty, no `/`, no NUL, not `.` or `..`.
pub fn is_file_name(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains(['/', '\0'])
}

/// Why a query text is refused before it is prepared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatementRefusal {
    /// Only blanks, comments or semicolons.
    Empty,
    /// More than one statement.
    Multiple,
    /// A statement that writes; the keyword is named (`INSERT`).
    Write(String),
}

/// Checks the query text and returns the byte range of its one statement (without the
/// terminating `;`), which is what gets prepared.
///
/// The scan knows SQLite's quoting (`'…'`, `"…"`, `` `…` ``, `[…]`) and comments (`--`,
/// `/* */`), so a `;` inside them does not end the statement. A `;` it mistakes for a
/// terminator can only make a query fail (SQLite then sees a truncated statement), never
/// run a second statement.
pub fn check_statement(sql: &str) -> Result<Range<usize>, StatementRefusal> {
    let s = sql.as_bytes();
    let start = skip_blank(s, 0, true);
    if start == s.len() {
        return Err(StatementRefusal::Empty);
    }
    let word_end = s[start..]
        .iter()
        .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_'))
        .map_or(s.len(), |p| start + p);
    let keyword = sql[start..word_end].to_ascii_uppercase();
    if WRITE_KEYWORDS.contains(&keyword.as_str()) {
        return Err(StatementRefusal::Write(keyword));
    }
    let end = statement_end(s, start);
    if skip_blank(s, end, true) != s.len() {
        return Err(StatementRefusal::Multiple);
    }
    Ok(start..end)
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r')
}

/// Index of the first byte at or after `i` that is not whitespace, a comment, or (when
/// `semicolons`) a `;`.
fn skip_blank(s: &[u8], mut i: usize, semicolons: bool) -> usize {
    loop {
        match s.get(i) {
            Some(&b) if is_space(b) || (semicolons && b == b';') => i += 1,
            Some(b'-') if s.get(i + 1) == Some(&b'-') => {
                i = find(s, i + 2, b"\n").map_or(s.len(), |p| p + 1);
            }
            Some(b'/') if s.get(i + 1) == Some(&b'*') => {
                i = find(s, i + 2, b"*/").map_or(s.len(), |p| p + 2);
            }
            _ => return i,
        }
    }
}

fn find(s: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    s.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| from + p)
}

/// Index of the `;` that ends the statement starting at `i`, or the end of the text.
fn statement_end(s: &[u8], mut i: usize) -> usize {
    while let Some(&b) = s.get(i) {
        match b {
            b';' => return i,
            b'\'' | b'"' | b'`' => {
                // A doubled quote inside is the same as two adjacent quoted tokens here.
                i = find(s, i + 1, &[b]).map_or(s.len(), |p| p + 1);
            }
            b'[' => i = find(s, i + 1, b"]").map_or(s.len(), |p| p + 1),
            b'-' if s.get(i + 1) == Some(&b'-') => i = skip_blank(s, i, false),
            b'/' if s.get(i + 1) == Some(&b'*') => i = skip_blank(s, i, false),
            _ => i += 1,
        }
    }
    s.len()
}

/// What the authorizer denied last, for the error message (`INSERT into users`).
#[derive(Debug, Clone, Default)]
pub struct Denials(Arc<Mutex<Option<String>>>);

impl Denials {
    /// Forgets an earlier denial (call before preparing).
    pub fn clear(&self) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// The first denial since [`Denials::clear`].
    pub fn take(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    /// Keeps the first denial, except that a statement-level one (`CREATE TABLE`) replaces
    /// the write to the schema table SQLite authorizes before it.
    fn record(&self, what: String) {
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.as_deref().is_none_or(|w| w == SCHEMA_CHANGE) {
            *slot = Some(what);
        }
    }
}

/// How a write to `sqlite_master` (part of `CREATE`/`DROP`/`ALTER`) is named.
const SCHEMA_CHANGE: &str = "a schema change";

fn is_schema_table(table: &str) -> bool {
    [
        "sqlite_master",
        "sqlite_schema",
        "sqlite_temp_master",
        "sqlite_temp_schema",
    ]
    .iter()
    .any(|t| t.eq_ignore_ascii_case(table))
}

/// The authorizer's decision for one action: `Err(what)` names what is not allowed.
pub fn authorize(action: &AuthAction<'_>) -> Result<(), String> {
    let what = match *action {
        AuthAction::Read { .. } | AuthAction::Select | AuthAction::Recursive => return Ok(()),
        AuthAction::Function { function_name } => {
            if DENIED_FUNCTIONS
                .iter()
                .any(|f| f.eq_ignore_ascii_case(function_name))
            {
                format!("function {function_name}()")
            } else {
                return Ok(());
            }
        }
        AuthAction::Pragma {
            pragma_name,
            pragma_value,
        } => {
            let named = |list: &[&str]| list.iter().any(|p| p.eq_ignore_ascii_case(pragma_name));
            if named(READ_ONLY_PRAGMAS) || (pragma_value.is_none() && named(READABLE_SETTINGS)) {
                return Ok(());
            }
            format!("PRAGMA {pragma_name}")
        }
        AuthAction::Insert { table_name }
        | AuthAction::Update { table_name, .. }
        | AuthAction::Delete { table_name }
            if is_schema_table(table_name) =>
        {
            SCHEMA_CHANGE.into()
        }
        AuthAction::Insert { table_name } => format!("INSERT into {table_name}"),
        AuthAction::Update { table_name, .. } => format!("UPDATE of {table_name}"),
        AuthAction::Delete { table_name } => format!("DELETE from {table_name}"),
        AuthAction::CreateIndex { .. } => "CREATE INDEX".into(),
        AuthAction::CreateTable { .. } => "CREATE TABLE".into(),
        AuthAction::CreateTempIndex { .. } => "CREATE TEMP INDEX".into(),
        AuthAction::CreateTempTable { .. } => "CREATE TEMP TABLE".into(),
        AuthAction::CreateTempTrigger { .. } => "CREATE TEMP TRIGGER".into(),
        AuthAction::CreateTempView { .. } => "CREATE TEMP VIEW".into(),
        AuthAction::CreateTrigger { .. } => "CREATE TRIGGER".into(),
        AuthAction::CreateView { .. } => "CREATE VIEW".into(),
        AuthAction::CreateVtable { .. } => "CREATE VIRTUAL TABLE".into(),
        AuthAction::DropIndex { .. } => "DROP INDEX".into(),
        AuthAction::DropTable { .. } => "DROP TABLE".into(),
        AuthAction::DropTempIndex { .. } => "DROP TEMP INDEX".into(),
        AuthAction::DropTempTable { .. } => "DROP TEMP TABLE".into(),
        AuthAction::DropTempTrigger { .. } => "DROP TEMP TRIGGER".into(),
        AuthAction::DropTempView { .. } => "DROP TEMP VIEW".into(),
        AuthAction::DropTrigger { .. } => "DROP TRIGGER".into(),
        AuthAction::DropView { .. } => "DROP VIEW".into(),
        AuthAction::DropVtable { .. } => "DROP VIRTUAL TABLE".into(),
        AuthAction::AlterTable { .. } => "ALTER TABLE".into(),
        AuthAction::Attach { .. } => "ATTACH".into(),
        AuthAction::Detach { .. } => "DETACH".into(),
        AuthAction::Reindex { .. } => "REINDEX".into(),
        AuthAction::Analyze { .. } => "ANALYZE".into(),
        AuthAction::Transaction { operation } => match operation {
            TransactionOperation::Begin => "BEGIN".into(),
            TransactionOperation::Rollback => "ROLLBACK".into(),
            _ => "COMMIT".into(),
        },
        AuthAction::Savepoint { operation, .. } => match operation {
            TransactionOperation::Release => "RELEASE".into(),
            TransactionOperation::Rollback => "ROLLBACK TO".into(),
            _ => "SAVEPOINT".into(),
        },
        AuthAction::Unknown { code, .. } => format!("action {code}"),
        _ => "this statement".into(),
    };
    Err(what)
}

/// Opens `path` read-only with every guard of this module in place. The file must exist
/// (SQLite never creates it without `SQLITE_OPEN_CREATE`). Denials are reported through
/// the returned [`Denials`].
pub fn open_read_only(
    path: &Path,
    busy_timeout: Duration,
) -> rusqlite::Result<(Connection, Denials)> {
    // NOFOLLOW: SQLite refuses a name with a symlink anywhere in it (it resolves names
    // itself); the caller checked the file through a descriptor opened without symlinks.
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_NOFOLLOW;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.set_limit(Limit::SQLITE_LIMIT_ATTACHED, 0);
    conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES);
    conn.set_limit(Limit::SQLITE_LIMIT_SQL_LENGTH, MAX_SQL_BYTES);
    conn.set_limit(Limit::SQLITE_LIMIT_WORKER_THREADS, 0);
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false)?;
    conn.pragma_update(None, "query_only", true)?;
    conn.busy_timeout(busy_timeout)?;
    let denials = Denials::default();
    let record = denials.clone();
    conn.authorizer(Some(move |ctx: AuthContext<'_>| {
        match authorize(&ctx.action) {
            Ok(()) => Authorization::Allow,
            Err(what) => {
                record.record(what);
                Authorization::Deny
            }
        }
    }));
    Ok((conn, denials))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_names_resolve_or_are_refused() {
        assert_eq!(database_name("sqlite://db.sqlite"), Ok("db.sqlite"));
        assert_eq!(database_name("sqlite:db.sqlite"), Ok("db.sqlite"));
        assert_eq!(database_name("SQLITE://b.db"), Ok("b.db"));
        assert_eq!(database_name("sqlite://.hidden.db"), Ok(".hidden.db"));
        for bad in [
            "postgres://u@h/db",
            "db.sqlite",
            "sqlite://",
            "sqlite://:memory:",
            "sqlite::memory:",
            "sqlite://file:x.db",
            "sqlite://x.db?mode=rwc",
            "sqlite://x.db#frag",
            "sqlite://.",
        ] {
            assert!(
                matches!(database_name(bad), Err(NameRefusal::Unsupported(_))),
                "{bad}"
            );
        }
        for escape in [
            "sqlite:///etc/passwd",
            "sqlite://../x.db",
            "sqlite://a/../../x.db",
            "sqlite:/x.db",
            "sqlite://..",
            "sqlite://a/b.db",
            "sqlite://./a.db",
            "sqlite://tenant-b/app.db",
        ] {
            assert!(
                matches!(database_name(escape), Err(NameRefusal::Escapes(_))),
                "{escape}"
            );
        }
    }

    #[test]
    fn sql_statement_scan() {
        let one = |q: &str| check_statement(q).map(|r| q[r].to_owned());
        assert_eq!(one("SELECT 1").as_deref(), Ok("SELECT 1"));
        assert_eq!(one("  select 1 ; ").as_deref(), Ok("select 1 "));
        assert_eq!(
            one("-- c\n;SELECT ';' -- x;y\n ;; /* ; */").as_deref(),
            Ok("SELECT ';' -- x;y\n ")
        );
        let quoted = "SELECT \"a;b\", [c;d], `e;f`, 'it''s;' FROM t";
        assert_eq!(one(quoted).as_deref(), Ok(quoted));
        assert_eq!(
            check_statement(" -- only\n /* c */ ;"),
            Err(StatementRefusal::Empty)
        );
        assert_eq!(
            check_statement("SELECT 1; SELECT 2"),
            Err(StatementRefusal::Multiple)
        );
        assert_eq!(
            check_statement("SELECT 1;DROP TABLE t"),
            Err(StatementRefusal::Multiple)
        );
        assert_eq!(
            check_statement("/*x*/ insert into t values(1)"),
            Err(StatementRefusal::Write("INSERT".into()))
        );
        assert_eq!(
            check_statement("vacuum into 'x'"),
            Err(StatementRefusal::Write("VACUUM".into()))
        );
        assert_eq!(
            check_statement("CREATE TRIGGER t AFTER INSERT ON u BEGIN DELETE FROM u; END"),
            Err(StatementRefusal::Write("CREATE".into()))
        );
        // Unterminated quote or comment: one statement up to the end (SQLite reports it).
        assert_eq!(one("SELECT 'a;b").as_deref(), Ok("SELECT 'a;b"));
        assert_eq!(one("SELECT 1 /* ; ").as_deref(), Ok("SELECT 1 /* ; "));
    }

    fn fixture() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("g.db");
        let w = Connection::open(&path).expect("create");
        w.execute_batch(
            "CREATE TABLE t(a INTEGER, b TEXT); CREATE INDEX t_b ON t(b); INSERT INTO t VALUES (1, 'x');",
        )
            .expect("fill");
        (dir, path)
    }

    #[test]
    fn sql_authorizer_denies_writes_at_prepare() {
        let (_dir, path) = fixture();
        let (conn, denials) = open_read_only(&path, Duration::from_millis(10)).expect("open");
        let n: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .expect("read");
        assert_eq!(n, 1);
        conn.prepare("PRAGMA table_info(t)")
            .expect("allowed pragma");
        conn.prepare("SELECT * FROM pragma_table_info('t')")
            .expect("allowed pragma function");
        for sql in [
            "PRAGMA user_version",
            "PRAGMA main.application_id",
            "SELECT * FROM pragma_user_version",
        ] {
            conn.prepare(sql).expect(sql);
        }
        conn.prepare("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<3) SELECT * FROM c")
            .expect("recursive");
        // Statements the keyword scan would already refuse reach the authorizer here.
        for (sql, what) in [
            ("INSERT INTO t VALUES (2, 'y')", "INSERT into t"),
            (
                "WITH x AS (SELECT 1) INSERT INTO t SELECT 3, 'z' FROM x",
                "INSERT into t",
            ),
            ("UPDATE t SET b = 'q'", "UPDATE of t"),
            ("DELETE FROM t", "DELETE from t"),
            ("CREATE TABLE u(a)", SCHEMA_CHANGE),
            ("CREATE TEMP TABLE u(a)", SCHEMA_CHANGE),
            ("DROP TABLE t", SCHEMA_CHANGE),
            ("ATTACH 'other.db' AS o", "ATTACH"),
            ("DETACH main", "DETACH"),
            ("PRAGMA user_version = 5", "PRAGMA user_version"),
            ("PRAGMA user_version(5)", "PRAGMA user_version"),
            ("PRAGMA journal_mode", "PRAGMA journal_mode"),
            ("PRAGMA database_list", "PRAGMA database_list"),
            ("PRAGMA journal_mode = WAL", "PRAGMA journal_mode"),
            ("PRAGMA query_only = OFF", "PRAGMA query_only"),
            ("PRAGMA writable_schema = ON", "PRAGMA writable_schema"),
            ("BEGIN", "BEGIN"),
            ("COMMIT", "COMMIT"),
            ("SAVEPOINT s", "SAVEPOINT"),
            ("ANALYZE", "ANALYZE"),
            ("SELECT load_extension('x')", "function load_extension()"),
        ] {
            denials.clear();
            let err = conn.prepare(sql).expect_err(sql);
            // SQLITE_AUTH, or SQLITE_ERROR "not authorized to use function" for functions.
            assert_eq!(denials.take().as_deref(), Some(what), "{sql}: {err}");
        }
        let n: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .expect("read");
        assert_eq!(n, 1);
    }

    #[test]
    fn sql_read_only_holds_without_the_authorizer() {
        let (_dir, path) = fixture();
        let (conn, _denials) = open_read_only(&path, Duration::from_millis(10)).expect("open");
        conn.authorizer(None::<fn(AuthContext<'_>) -> Authorization>);
        for sql in [
            "INSERT INTO t VALUES (2, 'y')",
            "CREATE TABLE u(a)",
            "PRAGMA user_version = 5",
            "VACUUM",
            "REINDEX",
        ] {
            assert!(conn.execute_batch(sql).is_err(), "{sql} ran");
        }
        let copy = path.with_file_name("copy.db");
        let vacuum_into = conn.execute_batch(&format!("VACUUM INTO '{}'", copy.display()));
        assert!(
            vacuum_into.is_err() && !copy.exists(),
            "VACUUM INTO: {vacuum_into:?}"
        );
        let other = path.with_file_name("other.db");
        assert!(conn
            .execute_batch(&format!("ATTACH '{}' AS o", other.display()))
            .is_err());
        assert!(!other.exists());
        assert!(conn.execute_batch("SELECT load_extension('x')").is_err());
        let n: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .expect("read");
        assert_eq!(n, 1);
    }
}
