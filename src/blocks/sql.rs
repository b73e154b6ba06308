//! `sql.query`: one read-only statement on a SQLite database under `--sql-root`.
//!
//! # Job
//! - `connection_string` (or `connection`): `sqlite://NAME` or `sqlite:NAME`, NAME one
//!   file name. It opens the tenant's own `<sql-root>/<tenant_id>/NAME` when that file
//!   exists, else the shared `<sql-root>/NAME` (CONTRACT.md). Other schemes, `:memory:`,
//!   `file:` names and URI parameters are 1001; a NAME with a directory part (`/`, so also
//!   an absolute one or `..`) is 2003: it could name another tenant's directory.
//!
//! # Sandbox
//! The file is found with the IO crate's sandboxed lookup
//! (`beamline_io::locate_first_beneath`: `openat2` with `O_PATH` beneath the SQL root,
//! which the CPU thread keeps open, with `RESOLVE_NO_SYMLINKS`): a symlink anywhere under
//! the root (in a tenant's directory, in the shared one, or a tenant directory that is
//! itself a symlink) and a file with more than one hard link are 2003, as `fs.get`
//! refuses hard links. SQLite then opens the same name read-only with
//! `SQLITE_OPEN_NOFOLLOW` (it refuses a symlink on the way) below the root's real path,
//! and the (device, inode) it reached is checked against the one opened first. What this
//! cannot rule out is a host process with write access to the SQL root renaming
//! directories back and forth between the check and SQLite's open; no job can do that.
//! - `query`: one statement. Statements that write are 2003 `read-only: … is not allowed`
//!   (see [`crate::policy::sql_guard`] for the layers that enforce it); more than one
//!   statement is 1001. Schema pragmas (`PRAGMA table_info(t)` …) run, and the schema's
//!   own numbers may be read (`PRAGMA user_version`), never set.
//! - `parameters` (or `params`): JSON scalars bound to the `?` placeholders in order:
//!   string → TEXT, integer → INTEGER (beyond `i64` → REAL), other number → REAL,
//!   boolean → 0/1, null → NULL. An object or array element is 1003; a count that does
//!   not match the placeholders is 1001.
//! - `max_rows`: at most `--sql-max-rows` (the default).
//!
//! # Result
//! `{"rows": [{"col": value, …}], "row_count": n, "columns": ["col", …]}` plus
//! `"truncated": true` when the query had more than `max_rows` rows (the first `max_rows`
//! are returned). INTEGER and REAL are numbers (a non-finite REAL is `null`), TEXT a string
//! (invalid UTF-8 replaced), BLOB a standard base64 string, NULL `null`. Row objects are
//! keyed by column name (a repeated name keeps the later column's value); `columns` keeps
//! the statement's order and every name.
//!
//! # Errors
//! - missing database file (or not a regular file) → 2002, not retryable;
//! - database busy or locked by a writer → 2002, retryable (the busy timeout is only
//!   [`BUSY_TIMEOUT`], the runtime backs off between attempts);
//! - syntax error, no such table or column, wrong parameter count → 1001 with SQLite's
//!   message;
//! - the query ran longer than `--sql-time-limit-ms` → 2001 `query exceeded the N ms time
//!   limit`, not retryable (the same query would run as long again); when the job's own
//!   deadline comes first it is 5002, and a cancel while the query runs is 5001;
//! - anything else SQLite reports while running the query → 2001.
//!
//! # Execution model
//! The query starts synchronously on the CPU thread that took the assignment: SQLite
//! point selects take microseconds, and a hop to another thread would cost more than the
//! query. A progress handler (every [`PROGRESS_OPS`] VM steps) interrupts it once the time
//! limit, the job's deadline or a cancel comes, and also once it has run
//! [`INLINE_BUDGET`] on the CPU thread: the query is then run again, from the start, on
//! tokio's blocking pool (its connection moved there and back), and the task awaits it.
//! Running it again is harmless (the query only reads) and costs at most the budget. So a
//! slow query holds its CPU thread, whose other assignments, NATS intake and publishing
//! share it, for about [`INLINE_BUDGET`] (plus up to [`BUSY_TIMEOUT`] waiting for a lock),
//! not for up to `--sql-time-limit-ms` (5 s: every other assignment of the thread waited
//! that long, issue 12, nineteenth round).
//!
//! Each block (one per CPU thread) keeps up to [`MAX_CONNECTIONS`] open connections keyed
//! by the file they resolved to (`<tenant>/NAME` or `NAME`), least recently used evicted
//! first, each with a cache of prepared statements (`prepare_cached`). On every use the
//! name is resolved again (a private database created or removed since is seen at once)
//! and the connection reopened when the (device, inode) changed (the file was replaced)
//! or dropped when it is gone. A use of a cached connection costs two system calls for
//! that (`beamline_io::locate_first_beneath` with `Locate::Identify`: the private name's
//! `openat2` and a `statx` of the shared name, each of its whole path, which no symlink
//! may be on), three under a SQL root behind a symlink (the kept root's `statx` check,
//! then both names beneath it); only an open holds the file (`O_PATH`) until SQLite has
//! its own descriptor on it.
//! Sandbox mode changes nothing: reads have no side effects. (Reading a WAL-mode database
//! makes SQLite create its empty `-wal`/`-shm` coordination files next to it when no other
//! connection has; the database file itself is never created or written.)

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use beamline_io::cputime;
use beamline_io::{FsError, FsErrorKind, Locate, LocatedFile, OpenBeneath};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{params_from_iter, Connection, StatementStatus, ToSql};
use serde_json::{Map, Value};
use simd_json::prelude::*;
use simd_json::BorrowedValue;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::contract::{ErrorCode, Fields, TaskError};
use crate::policy::sql_guard::{self, Denials, NameRefusal, StatementRefusal};

use super::{Block, BuildContext, BuildError, DecodeSettings, ExecCtx, Output};

/// How long SQLite waits for a lock before answering "busy" (then 2002, retryable).
pub const BUSY_TIMEOUT: Duration = Duration::from_millis(50);
/// Open connections kept per block (per CPU thread).
pub const MAX_CONNECTIONS: usize = 64;
/// Prepared statements kept per connection.
pub const STATEMENTS_PER_CONNECTION: usize = 32;
/// VM steps between two checks of the time limit.
pub const PROGRESS_OPS: i32 = 1000;

/// How long a query may run on the CPU thread before it is moved to the blocking pool.
pub const INLINE_BUDGET: Duration = Duration::from_millis(2);

const CONNECTION_FIELD: &str = "job.connection_string";
const QUERY_FIELD: &str = "job.query";

/// The `sql.query` block of one CPU thread.
#[derive(Debug)]
pub struct SqlBlock {
    root: PathBuf,
    max_rows: usize,
    time_limit: Duration,
    cache: RefCell<Cache>,
    last_statement_runs: Cell<i32>,
}

/// A decoded `sql.query` job.
#[derive(Debug)]
pub struct SqlJob<'a> {
    name: &'a str,
    /// The one statement of `query` (without the terminating `;`).
    statement: &'a str,
    /// Where `statement` starts in `query` (for error offsets).
    offset: usize,
    params: Vec<SqlParam<'a>>,
    max_rows: usize,
}

impl<'a> SqlJob<'a> {
    /// The database NAME, relative to `--sql-root`.
    pub fn name(&self) -> &'a str {
        self.name
    }

    /// The one statement that gets prepared (without the terminating `;`).
    pub fn statement(&self) -> &'a str {
        self.statement
    }

    pub fn params(&self) -> &[SqlParam<'a>] {
        &self.params
    }

    /// `max_rows`, capped at `--sql-max-rows`.
    pub fn max_rows(&self) -> usize {
        self.max_rows
    }
}

/// One bound parameter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SqlParam<'a> {
    Null,
    Integer(i64),
    Real(f64),
    Text(&'a str),
}

impl SqlParam<'_> {
    /// The parameter as an owned SQLite value (for a query moved to the blocking pool).
    fn owned_value(self) -> rusqlite::types::Value {
        use rusqlite::types::Value as V;
        match self {
            SqlParam::Null => V::Null,
            SqlParam::Integer(i) => V::Integer(i),
            SqlParam::Real(f) => V::Real(f),
            SqlParam::Text(t) => V::Text(t.to_owned()),
        }
    }
}

impl ToSql for SqlParam<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match *self {
            SqlParam::Null => ValueRef::Null,
            SqlParam::Integer(i) => ValueRef::Integer(i),
            SqlParam::Real(f) => ValueRef::Real(f),
            SqlParam::Text(s) => ValueRef::Text(s.as_bytes()),
        }))
    }
}

impl<'a> SqlParam<'a> {
    fn from_json(v: &'a BorrowedValue<'a>) -> Option<Self> {
        if v.is_null() {
            return Some(SqlParam::Null);
        }
        if let Some(b) = v.as_bool() {
            return Some(SqlParam::Integer(i64::from(b)));
        }
        if let Some(i) = v.as_i64() {
            return Some(SqlParam::Integer(i));
        }
        if let Some(u) = v.as_u64() {
            // Beyond i64: SQLite itself reads such a literal as REAL.
            return Some(SqlParam::Real(u as f64));
        }
        if let Some(f) = v.as_f64() {
            return Some(SqlParam::Real(f));
        }
        v.as_str().map(SqlParam::Text)
    }
}

#[derive(Debug, Default)]
struct Cache {
    entries: HashMap<PathBuf, Entry>,
    tick: u64,
}

#[derive(Debug)]
struct Entry {
    conn: Connection,
    denials: Denials,
    watch: Arc<Watch>,
    /// (device, inode) of the file when it was opened.
    file: (u64, u64),
    last_used: u64,
}

/// Why the progress handler stopped a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Stop {
    TimeLimit = 1,
    Deadline = 2,
    Cancelled = 3,
    /// Ran its [`INLINE_BUDGET`] on the CPU thread: to be run on the blocking pool.
    Inline = 4,
}

#[derive(Debug)]
struct Run {
    until: Instant,
    cause: Stop,
    cancel: CancellationToken,
    /// Set on the CPU thread: when the query's [`INLINE_BUDGET`] ends.
    inline_until: Option<Instant>,
}

/// What the progress handler of one connection checks (it must be `Send`).
#[derive(Debug, Default)]
struct Watch {
    run: Mutex<Option<Run>>,
    fired: AtomicU8,
}

impl Watch {
    fn should_stop(&self) -> bool {
        let run = self.run.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(run) = run.as_ref() else {
            return false;
        };
        let now = Instant::now();
        let stop = if run.cancel.is_cancelled() {
            Stop::Cancelled
        } else if now >= run.until {
            run.cause
        } else if run.inline_until.is_some_and(|t| now >= t) {
            Stop::Inline
        } else {
            return false;
        };
        self.fired.store(stop as u8, Ordering::Relaxed);
        true
    }

    fn arm(&self, run: Run) -> Armed<'_> {
        self.fired.store(0, Ordering::Relaxed);
        *self.run.lock().unwrap_or_else(PoisonError::into_inner) = Some(run);
        Armed(self)
    }

    fn fired(&self) -> Option<Stop> {
        match self.fired.load(Ordering::Relaxed) {
            1 => Some(Stop::TimeLimit),
            2 => Some(Stop::Deadline),
            3 => Some(Stop::Cancelled),
            4 => Some(Stop::Inline),
            _ => None,
        }
    }
}

/// Disarms the watch when the query is done.
struct Armed<'w>(&'w Watch);

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        *self.0.run.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

/// Where a SQLite error came from: preparing and binding (the input is wrong) or running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Prepare,
    Step,
}

enum Failure {
    Sql(rusqlite::Error, Phase),
    Task(TaskError),
}

/// How [`SqlBlock::execute`] left the query.
enum Executed {
    Done(Result<Value, TaskError>),
    /// It ran its [`INLINE_BUDGET`]: to run again on the blocking pool.
    Offload(Box<Offload>),
}

/// A query to run on the blocking pool, with the connection taken out of the cache for it.
struct Offload {
    key: PathBuf,
    entry: Entry,
    statement: String,
    params: Vec<rusqlite::types::Value>,
    max_rows: usize,
    run: Run,
}

/// An error after which the cached connection is not used again.
fn broken(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(
            rusqlite::ErrorCode::NotADatabase
                | rusqlite::ErrorCode::DatabaseCorrupt
                | rusqlite::ErrorCode::CannotOpen
                | rusqlite::ErrorCode::SystemIoFailure
        )
    )
}

/// Runs `statement` on `entry`'s connection under `run`: the result object and how many
/// times SQLite ran the statement (`last_statement_runs`, for tests). Free of the block, so
/// that the blocking pool can run it too.
fn run_query(
    entry: &Entry,
    statement: &str,
    params: impl rusqlite::Params,
    max_rows: usize,
    run: Run,
) -> Result<(Value, i32), Failure> {
    entry.denials.clear();
    let _armed = entry.watch.arm(run);
    let prepare = |e| Failure::Sql(e, Phase::Prepare);
    let mut stmt = entry.conn.prepare_cached(statement).map_err(prepare)?;
    if !stmt.readonly() {
        return Err(Failure::Task(read_only("a statement that writes")));
    }
    let columns: Vec<String> = stmt.column_names().into_iter().map(str::to_owned).collect();
    let mut out = Vec::new();
    let mut truncated = false;
    {
        let mut rows = stmt.query(params).map_err(prepare)?;
        while let Some(row) = rows.next().map_err(|e| Failure::Sql(e, Phase::Step))? {
            if out.len() == max_rows {
                truncated = true;
                break;
            }
            let mut obj = Map::new();
            for (i, name) in columns.iter().enumerate() {
                let v = row.get_ref(i).map_err(|e| Failure::Sql(e, Phase::Step))?;
                obj.insert(name.clone(), json_value(v));
            }
            out.push(Value::Object(obj));
        }
    }
    let runs = stmt.get_status(StatementStatus::Run);
    let mut result = Map::new();
    result.insert("row_count".into(), Value::from(out.len()));
    result.insert("rows".into(), Value::Array(out));
    result.insert(
        "columns".into(),
        Value::Array(columns.into_iter().map(Value::String).collect()),
    );
    if truncated {
        result.insert("truncated".into(), Value::Bool(true));
    }
    Ok((Value::Object(result), runs))
}

fn not_found(name: &str) -> TaskError {
    TaskError::new(
        ErrorCode::ResourceUnavailable,
        format!("database {name} not found"),
    )
}

fn read_only(what: &str) -> TaskError {
    TaskError::new(
        ErrorCode::PermissionDenied,
        format!("read-only: {what} is not allowed"),
    )
}

/// A sandboxed open's error → the contract's code. Paths are the job's NAME only, never
/// the host's root.
fn open_error(e: FsError, name: &str) -> TaskError {
    match e.kind {
        FsErrorKind::NotFound => not_found(name),
        FsErrorKind::Escape => TaskError::new(
            ErrorCode::PermissionDenied,
            format!(
                "database {name}: a symlink or a file with more than one hard link is not allowed under the SQL root"
            ),
        ),
        FsErrorKind::IsADirectory | FsErrorKind::InvalidPath => TaskError::new(
            ErrorCode::ResourceUnavailable,
            format!("database {name} is not a file"),
        ),
        FsErrorKind::Overloaded | FsErrorKind::Shutdown => TaskError::retryable(
            ErrorCode::ResourceUnavailable,
            format!("database {name} cannot be opened now: {e}"),
        ),
        _ => TaskError::new(
            ErrorCode::ResourceUnavailable,
            format!("database {name} cannot be read: {e}"),
        ),
    }
}

fn file_id(meta: &std::fs::Metadata) -> (u64, u64) {
    (meta.dev(), meta.ino())
}

fn json_value(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::from(i),
        ValueRef::Real(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        ValueRef::Text(t) => Value::String(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::String(base64::engine::general_purpose::STANDARD.encode(b)),
    }
}

impl SqlBlock {
    pub fn new(config: &Config) -> Result<SqlBlock, BuildError> {
        Ok(SqlBlock {
            root: config.sql_root.clone(),
            max_rows: config.sql_max_rows.max(1),
            time_limit: config.sql_time_limit,
            cache: RefCell::new(Cache::default()),
            last_statement_runs: Cell::new(0),
        })
    }

    /// Open connections in this block's cache.
    #[doc(hidden)]
    pub fn cached_connections(&self) -> usize {
        self.cache.borrow().entries.len()
    }

    /// How many times the statement of the last successful query has run
    /// (`SQLITE_STMTSTATUS_RUN`): above 1 when the prepared statement was reused.
    #[doc(hidden)]
    pub fn last_statement_runs(&self) -> i32 {
        self.last_statement_runs.get()
    }

    /// Finds the database file a job names, beneath the SQL root, with the IO crate's
    /// sandboxed lookup: the tenant's own `<tenant>/NAME` when it exists, else the shared
    /// `NAME`. No symlink anywhere (`RESOLVE_NO_SYMLINKS`: SQLite opens the file again by
    /// name, and only a name without symlinks is known to reach the file checked here),
    /// no file with more than one hard link. Returns the path relative to the root and
    /// the file found (with [`Locate::Hold`], an `O_PATH` descriptor that holds its inode).
    fn resolve(
        &self,
        tenant: &str,
        name: &str,
        how: Locate,
    ) -> Result<(PathBuf, LocatedFile), TaskError> {
        if !sql_guard::is_file_name(tenant) {
            return Err(TaskError::new(
                ErrorCode::PermissionDenied,
                "the tenant id is not usable as a directory name under the SQL root",
            ));
        }
        let strict = OpenBeneath { no_symlinks: true };
        let private = format!("{tenant}/{name}");
        let (at, found) =
            beamline_io::locate_first_beneath(&self.root, &[private.as_str(), name], strict, how)
                .map_err(|e| open_error(e, name))?;
        let rel = if at == 0 { private } else { name.to_owned() };
        Ok((PathBuf::from(rel), found))
    }

    /// The open connection to the database `tenant` reaches under `name`: resolved on
    /// every use (a private database created or removed since is seen at once), opened on
    /// a miss or when the file was replaced since. Returns the cache key too.
    fn connection<'c>(
        &self,
        cache: &'c mut Cache,
        tenant: &str,
        name: &str,
    ) -> Result<(PathBuf, &'c mut Entry), TaskError> {
        let gone = |cache: &mut Cache, e: TaskError| {
            cache.entries.remove(&Path::new(tenant).join(name));
            cache.entries.remove(Path::new(name));
            e
        };
        // Which file the name reaches now (SQLite's open descriptor keeps the cached
        // connection's inode alive, so an equal (device, inode) is that very file).
        let (mut rel, found) = self
            .resolve(tenant, name, Locate::Identify)
            .map_err(|e| gone(cache, e))?;
        if cache.entries.get(&rel).is_none_or(|e| e.file != found.id) {
            cache.entries.remove(&rel);
            // Resolved again holding the file: it stays the same inode until SQLite has
            // its own descriptor on it.
            let (held_rel, held) = self
                .resolve(tenant, name, Locate::Hold)
                .map_err(|e| gone(cache, e))?;
            let entry = self.open(&held_rel, name, held.id)?;
            drop(held);
            cache.entries.remove(&held_rel);
            if cache.entries.len() >= MAX_CONNECTIONS {
                let oldest = cache
                    .entries
                    .iter()
                    .min_by_key(|(_, e)| e.last_used)
                    .map(|(p, _)| p.clone());
                if let Some(oldest) = oldest {
                    cache.entries.remove(&oldest);
                }
            }
            cache.entries.insert(held_rel.clone(), entry);
            rel = held_rel;
        }
        cache.tick += 1;
        let tick = cache.tick;
        let entry = cache
            .entries
            .get_mut(&rel)
            .ok_or_else(|| TaskError::internal("sql connection cache lost an entry"))?;
        entry.last_used = tick;
        Ok((rel, entry))
    }

    /// Opens the checked file `rel` (relative to the root) read-only, by a name with no
    /// symlink in it (`SQLITE_OPEN_NOFOLLOW` refuses any), and makes sure SQLite's file is
    /// still the one `resolve` checked.
    fn open(&self, rel: &Path, name: &str, id: (u64, u64)) -> Result<Entry, TaskError> {
        // The root as configured may sit behind symlinks of the host (`/var` → …): use its
        // real path, so that the only symlinks refused are those under it.
        let root = self.root.canonicalize().map_err(|_| not_found(name))?;
        let real = root.join(rel);
        let (conn, denials) =
            sql_guard::open_read_only(&real, BUSY_TIMEOUT).map_err(|e| {
                match e.sqlite_error_code() {
                    Some(
                        rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked,
                    ) => TaskError::retryable(
                        ErrorCode::ResourceUnavailable,
                        format!("database {name} is locked: {e}"),
                    ),
                    _ => TaskError::new(
                        ErrorCode::ResourceUnavailable,
                        format!("database {name} cannot be opened: {e}"),
                    ),
                }
            })?;
        // Checked through a descriptor, opened by name: make sure it is still that file.
        match std::fs::symlink_metadata(&real) {
            Ok(meta) if file_id(&meta) == id => {}
            _ => {
                return Err(TaskError::retryable(
                    ErrorCode::ResourceUnavailable,
                    format!("database {name} changed while it was being opened"),
                ))
            }
        }
        conn.set_prepared_statement_cache_capacity(STATEMENTS_PER_CONNECTION);
        let watch = Arc::new(Watch::default());
        let check = Arc::clone(&watch);
        conn.progress_handler(PROGRESS_OPS, Some(move || check.should_stop()));
        Ok(Entry {
            conn,
            denials,
            watch,
            file: id,
            last_used: 0,
        })
    }

    /// Runs the query on this thread for at most [`INLINE_BUDGET`].
    fn execute(&self, job: &SqlJob<'_>, ctx: &ExecCtx<'_>) -> Executed {
        match self.execute_inline(job, ctx) {
            Ok(executed) => executed,
            Err(error) => Executed::Done(Err(error)),
        }
    }

    fn execute_inline(&self, job: &SqlJob<'_>, ctx: &ExecCtx<'_>) -> Result<Executed, TaskError> {
        if ctx.cancel.is_cancelled() {
            return Err(TaskError::new(ErrorCode::CancelledByUser, "cancelled"));
        }
        let started = Instant::now();
        if started >= ctx.deadline {
            return Err(TaskError::new(
                ErrorCode::CancelledByTimeout,
                "the job's deadline passed before the query ran",
            ));
        }
        let mut cache = self
            .cache
            .try_borrow_mut()
            .map_err(|_| TaskError::internal("sql connection cache is in use"))?;
        let (path_key, entry) = self.connection(&mut cache, ctx.tenant, job.name)?;
        let limit_end = started + self.time_limit;
        let (until, cause) = if ctx.deadline < limit_end {
            (ctx.deadline, Stop::Deadline)
        } else {
            (limit_end, Stop::TimeLimit)
        };
        let run = |inline_until| Run {
            until,
            cause,
            cancel: ctx.cancel.clone(),
            inline_until,
        };
        let params = params_from_iter(job.params.iter());
        let inline = run(Some(started + INLINE_BUDGET));
        let (e, phase) = match run_query(entry, job.statement, params, job.max_rows, inline) {
            Ok((value, runs)) => {
                self.last_statement_runs.set(runs);
                return Ok(Executed::Done(Ok(value)));
            }
            Err(Failure::Task(e)) => return Err(e),
            Err(Failure::Sql(e, phase)) => (e, phase),
        };
        let fired = entry.watch.fired();
        let denial = entry.denials.take();
        if fired == Some(Stop::Inline) {
            if let Some(entry) = cache.entries.remove(&path_key) {
                return Ok(Executed::Offload(Box::new(Offload {
                    key: path_key,
                    entry,
                    statement: job.statement.to_owned(),
                    params: job.params.iter().map(|p| p.owned_value()).collect(),
                    max_rows: job.max_rows,
                    run: run(None),
                })));
            }
        }
        if broken(&e) {
            cache.entries.remove(&path_key);
        }
        Err(self.sql_error(e, phase, job, fired, denial))
    }

    /// The rest of a query that ran past its [`INLINE_BUDGET`]: run again, from the start,
    /// on tokio's blocking pool (its CPU time charged to the assignment), then its
    /// connection back into this thread's cache unless another took its place meanwhile.
    async fn finish_offloaded(
        &self,
        off: Box<Offload>,
        job: &SqlJob<'_>,
    ) -> Result<Value, TaskError> {
        let Offload {
            key,
            entry,
            statement,
            params,
            max_rows,
            run,
        } = *off;
        let ((result, entry), cpu_ns) = tokio::task::spawn_blocking(move || {
            cputime::measured(|| {
                let params = params_from_iter(params.iter());
                let result = run_query(&entry, &statement, params, max_rows, run);
                (result, entry)
            })
        })
        .await
        .map_err(|e| TaskError::internal(format!("the query on the blocking pool: {e}")))?;
        cputime::charge(cpu_ns);
        let (outcome, keep) = match result {
            Ok((value, runs)) => {
                self.last_statement_runs.set(runs);
                (Ok(value), true)
            }
            Err(Failure::Task(e)) => (Err(e), true),
            Err(Failure::Sql(e, phase)) => {
                let keep = !broken(&e);
                let (fired, denial) = (entry.watch.fired(), entry.denials.take());
                (Err(self.sql_error(e, phase, job, fired, denial)), keep)
            }
        };
        if let Ok(mut cache) = self.cache.try_borrow_mut() {
            if keep && cache.entries.len() < MAX_CONNECTIONS {
                cache.entries.entry(key).or_insert(entry);
            }
        }
        outcome
    }

    fn sql_error(
        &self,
        e: rusqlite::Error,
        phase: Phase,
        job: &SqlJob<'_>,
        fired: Option<Stop>,
        denial: Option<String>,
    ) -> TaskError {
        use rusqlite::ErrorCode as C;
        let name = job.name;
        let input = |msg: String| input_error(phase, msg);
        // Functions are denied with SQLITE_ERROR ("not authorized to use function"), the
        // other actions with SQLITE_AUTH: whatever the code, a denial makes it a 2003.
        if let (Phase::Prepare, Some(what)) = (phase, denial.as_deref()) {
            return read_only(what);
        }
        match e {
            rusqlite::Error::InvalidParameterCount(given, expected) => TaskError::invalid(
                "job.parameters",
                format!(
                    "the query has {expected} placeholder(s) but {given} parameter(s) were given"
                ),
            ),
            rusqlite::Error::MultipleStatement => {
                TaskError::invalid(QUERY_FIELD, "must be a single statement")
            }
            rusqlite::Error::NulError(_) => TaskError::invalid(QUERY_FIELD, "contains a NUL byte"),
            rusqlite::Error::SqlInputError {
                error, msg, offset, ..
            } => match error.code {
                C::AuthorizationForStatementDenied => {
                    read_only(denial.as_deref().unwrap_or("this statement"))
                }
                _ => {
                    let at = usize::try_from(offset).map_or(0, |o| o + job.offset);
                    input(format!("{msg} (at byte {at})"))
                }
            },
            rusqlite::Error::SqliteFailure(error, msg) => {
                let msg = msg.unwrap_or_else(|| error.to_string());
                match error.code {
                    C::AuthorizationForStatementDenied => {
                        read_only(denial.as_deref().unwrap_or("this statement"))
                    }
                    C::ReadOnly => read_only("writing"),
                    C::DatabaseBusy | C::DatabaseLocked => TaskError::retryable(
                        ErrorCode::ResourceUnavailable,
                        format!("database {name} is locked by a writer ({msg})"),
                    ),
                    C::OperationInterrupted => self.interrupted(fired),
                    C::NotADatabase => TaskError::new(
                        ErrorCode::ExecutionFailed,
                        format!("{name} is not a SQLite database"),
                    ),
                    C::DatabaseCorrupt => TaskError::new(
                        ErrorCode::ExecutionFailed,
                        format!("database {name} is corrupt ({msg})"),
                    ),
                    C::CannotOpen => TaskError::new(
                        ErrorCode::ResourceUnavailable,
                        format!("database {name} cannot be opened ({msg})"),
                    ),
                    C::TooBig if phase == Phase::Prepare => {
                        TaskError::invalid(QUERY_FIELD, format!("too long ({msg})"))
                    }
                    C::Unknown
                    | C::TypeMismatch
                    | C::ParameterOutOfRange
                    | C::ConstraintViolation => input(msg),
                    _ => TaskError::new(ErrorCode::ExecutionFailed, format!("query failed: {msg}")),
                }
            }
            other => TaskError::new(ErrorCode::ExecutionFailed, format!("query failed: {other}")),
        }
    }

    /// SQLite stopped the query: which of the time limit, the deadline or a cancel did.
    fn interrupted(&self, fired: Option<Stop>) -> TaskError {
        match fired {
            Some(Stop::TimeLimit | Stop::Inline) | None => TaskError::new(
                ErrorCode::ExecutionFailed,
                format!(
                    "query exceeded the {} ms time limit",
                    self.time_limit.as_millis()
                ),
            ),
            Some(Stop::Deadline) => TaskError::new(
                ErrorCode::CancelledByTimeout,
                "the job's deadline passed while the query ran",
            ),
            Some(Stop::Cancelled) => {
                TaskError::new(ErrorCode::CancelledByUser, "cancelled while the query ran")
            }
        }
    }
}

/// An error the job's input caused: 1001 while preparing, 2001 once running.
fn input_error(phase: Phase, msg: String) -> TaskError {
    if phase == Phase::Prepare {
        TaskError::invalid(QUERY_FIELD, msg)
    } else {
        TaskError::new(ErrorCode::ExecutionFailed, msg)
    }
}

/// Reads and validates a `sql.query` job: what [`Block::decode`] does, without opening
/// anything. `max_rows` is `--sql-max-rows`, the most a job may ask for.
pub fn decode_job<'a>(job: Fields<'a, 'a>, max_rows: usize) -> Result<SqlJob<'a>, TaskError> {
    let connection = job
        .opt_str_any(&["connection_string", "connection"])?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| TaskError::missing(CONNECTION_FIELD))?;
    let name = sql_guard::database_name(connection).map_err(|r| match r {
        NameRefusal::Unsupported(why) => TaskError::invalid(CONNECTION_FIELD, why),
        NameRefusal::Escapes(why) => TaskError::new(
            ErrorCode::PermissionDenied,
            format!("field `{CONNECTION_FIELD}`: {why}"),
        ),
    })?;
    let query = job.req_nonempty("query")?;
    let range = sql_guard::check_statement(query).map_err(|r| match r {
        StatementRefusal::Empty => TaskError::invalid(QUERY_FIELD, "contains no SQL statement"),
        StatementRefusal::Multiple => TaskError::invalid(
            QUERY_FIELD,
            "must be a single statement (text follows the first `;`)",
        ),
        StatementRefusal::Write(keyword) => read_only(&keyword),
    })?;
    let key = if job.has("parameters") {
        "parameters"
    } else {
        "params"
    };
    let params = job
        .opt_array(key)?
        .unwrap_or(&[])
        .iter()
        .enumerate()
        .map(|(i, v)| {
            SqlParam::from_json(v).ok_or_else(|| {
                TaskError::format(
                    &format!("job.{key}[{i}]"),
                    "a string, number, boolean or null",
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let max_rows = match job.opt_u64("max_rows")? {
        None => max_rows,
        Some(0) => return Err(TaskError::invalid("job.max_rows", "must be at least 1")),
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX).min(max_rows),
    };
    Ok(SqlJob {
        name,
        statement: &query[range.clone()],
        offset: range.start,
        params,
        max_rows,
    })
}

impl Block for SqlBlock {
    type Job<'a> = SqlJob<'a>;

    fn build(ctx: &BuildContext) -> Result<Self, BuildError> {
        SqlBlock::new(ctx.config)
    }

    fn decode_with<'a>(
        job: Fields<'a, 'a>,
        settings: &DecodeSettings,
        _assignment_id: &str,
    ) -> Result<SqlJob<'a>, TaskError> {
        decode_job(job, settings.sql_max_rows)
    }

    fn decode<'a>(&self, job: Fields<'a, 'a>, _ctx: &ExecCtx<'_>) -> Result<SqlJob<'a>, TaskError> {
        decode_job(job, self.max_rows)
    }

    /// Starts the query on this thread, and finishes one that runs past its
    /// [`INLINE_BUDGET`] on the blocking pool (see the module docs).
    async fn attempt(&self, job: &Self::Job<'_>, ctx: &ExecCtx<'_>) -> Result<Output, TaskError> {
        match self.execute(job, ctx) {
            Executed::Done(result) => result.map(Output::new),
            Executed::Offload(off) => self.finish_offloaded(off, job).await.map(Output::new),
        }
    }
}
