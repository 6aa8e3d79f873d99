//! The run history: every [`RunRecord`] in an embedded SQLite database at
//! `<state dir>/history.sqlite`, written by `farmd` during and after each run and read by
//! `farmctl history`, `show` and `status`.
//!
//! It owns the schema ([`schema`]), the mapping between records and rows ([`codec`]) and the
//! per-machine questions a status display asks ([`summary`]). It does not decide what a run
//! contains (that is [`crate::run`]) nor how it is shown (that is [`crate::cli::history`]).
//!
//! The calls block on SQLite (milliseconds, or up to the busy timeout while another process
//! writes); async callers run them under `spawn_blocking`.

mod codec;
mod schema;
mod summary;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{params, Connection, ErrorCode, OptionalExtension, Row};

use crate::record::{MachineRecord, RunId, RunRecord, RunStatus, Trigger};
use codec::{ms_from_sql, ms_to_sql, Json, Kebab, Parsed};

pub(crate) use codec::enum_str;
pub use summary::{LastSuccess, MachineSummary};

/// The database's file name inside the state directory.
pub const FILE_NAME: &str = "history.sqlite";

/// How long a write waits for another process's write (a `farmctl` reading never blocks one in
/// WAL mode; two writers are only ever a daemon and a migration).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error(
        "cannot open the run history `{path}`: the state directory does not exist; \
         create it or point `state.dir` in the config elsewhere"
    )]
    NoStateDir { path: PathBuf },
    #[error("cannot open the run history `{path}`")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "`{path}` is not an SQLite database, so it cannot be the run history; \
         move it aside and a new, empty history is created"
    )]
    NotADatabase { path: PathBuf },
    #[error(
        "the run history `{path}` has schema version {found}, newer than this nixfarm knows \
         ({known}); upgrade nixfarm, or move the file aside to start a new history"
    )]
    TooNew {
        path: PathBuf,
        found: usize,
        known: usize,
    },
    #[error("run {id} is not in the run history `{path}`")]
    NoSuchRun { path: PathBuf, id: RunId },
    #[error("failed to {action} in the run history `{path}`")]
    Query {
        action: String,
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
}

/// The open history. One connection behind a mutex: every call is short, and the daemon
/// shares one `History` between its run and its control socket.
pub struct History {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl History {
    /// Opens (creating if needed) `<state_dir>/history.sqlite` and brings its schema up to date.
    pub fn open(state_dir: &Path) -> Result<History, HistoryError> {
        let path = state_dir.join(FILE_NAME);
        if !state_dir.is_dir() {
            return Err(HistoryError::NoStateDir { path });
        }
        let open_err = |source: rusqlite::Error| match source.sqlite_error_code() {
            Some(ErrorCode::NotADatabase) => HistoryError::NotADatabase { path: path.clone() },
            _ => HistoryError::Open {
                path: path.clone(),
                source,
            },
        };
        let mut conn = Connection::open(&path).map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        // The first statement that reads the file: a file that is not a database fails here.
        // WAL lets `farmctl` read while `farmd` writes; with it, `synchronous = NORMAL` can lose
        // the last write on power loss but never corrupts the file.
        conn.pragma_update_and_check(None, "journal_mode", "wal", |_| Ok(()))
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "normal")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(open_err)?;
        match schema::migrate(&mut conn).map_err(open_err)? {
            schema::Migrated::Current { from } if from < schema::MIGRATIONS.len() => {
                tracing::info!(path = %path.display(), from, to = schema::MIGRATIONS.len(),
                    "run history schema updated");
            }
            schema::Migrated::Current { .. } => {}
            schema::Migrated::TooNew { found } => {
                return Err(HistoryError::TooNew {
                    path,
                    found,
                    known: schema::MIGRATIONS.len(),
                })
            }
        }
        Ok(History {
            path,
            conn: Mutex::new(conn),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records the start of a run (status `running`) and returns its id.
    pub fn begin(
        &self,
        trigger: Trigger,
        requested_by: Option<&str>,
        started_at: i64,
    ) -> Result<RunId, HistoryError> {
        self.with_conn("record the start of a run", |conn| {
            conn.execute(
                "INSERT INTO runs (trigger, requested_by, started_at, status)
                 VALUES (?1, ?2, ?3, ?4)",
                params![
                    Kebab(trigger),
                    requested_by,
                    started_at,
                    Kebab(RunStatus::Running)
                ],
            )?;
            Ok(conn.last_insert_rowid())
        })
    }

    /// Writes the whole record over what is stored for `record.id`: the run's row and, replaced
    /// as a set, its machines. One transaction, so a reader sees the old or the new record.
    /// Called as the run progresses and once at its end.
    pub fn save(&self, record: &RunRecord) -> Result<(), HistoryError> {
        let action = format!("save run {}", record.id);
        let found = self.with_conn(&action, |conn| {
            let tx = conn.transaction()?;
            let updated = tx.execute(
                "UPDATE runs SET trigger = ?2, requested_by = ?3, started_at = ?4,
                    finished_at = ?5, status = ?6, rev_before = ?7, rev_after = ?8,
                    lock_changed = ?9, push = ?10, error = ?11, phases = ?12, publish = ?13,
                    generations = ?14, gc = ?15
                 WHERE id = ?1",
                params![
                    record.id,
                    Kebab(record.trigger),
                    record.requested_by,
                    record.started_at,
                    record.finished_at,
                    Kebab(record.status),
                    record.rev_before,
                    record.rev_after,
                    record.lock_changed,
                    record.push.as_ref().map(Json),
                    record.error,
                    Json(&record.phases),
                    record.publish.as_ref().map(Json),
                    Json(&record.generations),
                    record.gc.as_ref().map(Json),
                ],
            )?;
            if updated == 0 {
                return Ok(false);
            }
            tx.execute("DELETE FROM machines WHERE run_id = ?1", [record.id])?;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO machines (run_id, name, position, kind, status, attribute,
                        drv_path, toplevel, duration_ms, error, log_tail, log_path, publish)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                )?;
                for (position, m) in record.machines.iter().enumerate() {
                    insert.execute(params![
                        record.id,
                        m.name.as_str(),
                        position as i64,
                        Kebab(m.kind),
                        Kebab(m.status),
                        m.attribute,
                        m.drv_path.as_ref().map(|p| p.as_str()),
                        m.toplevel.as_ref().map(|p| p.as_str()),
                        ms_to_sql(m.duration_ms),
                        m.error,
                        m.log_tail,
                        m.log_path,
                        m.publish.as_ref().map(Json),
                    ])?;
                }
            }
            tx.commit()?;
            Ok(true)
        })?;
        if !found {
            return Err(self.no_such_run(record.id));
        }
        Ok(())
    }

    /// The run with this id, with its machines.
    pub fn get(&self, id: RunId) -> Result<Option<RunRecord>, HistoryError> {
        self.with_conn(&format!("read run {id}"), |conn| {
            let run = conn
                .query_row(
                    &format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"),
                    [id],
                    run_from_row,
                )
                .optional()?;
            run.map(|run| with_machines(conn, run)).transpose()
        })
    }

    /// The newest `limit` runs (by id, which is start order), newest first, with their machines.
    pub fn list(&self, limit: usize) -> Result<Vec<RunRecord>, HistoryError> {
        self.with_conn("list runs", |conn| {
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let runs = conn
                .prepare_cached(&format!(
                    "SELECT {RUN_COLUMNS} FROM runs ORDER BY id DESC LIMIT ?1"
                ))?
                .query_map([limit], run_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            runs.into_iter()
                .map(|run| with_machines(conn, run))
                .collect()
        })
    }

    /// The newest run, if any.
    pub fn last(&self) -> Result<Option<RunRecord>, HistoryError> {
        Ok(self.list(1)?.pop())
    }

    /// Marks every `running` run as `interrupted` and returns their ids, oldest first. Called at
    /// daemon start, before any run begins: a run still `running` then was cut off by a crash,
    /// a kill or a power loss. Its machines keep the status they had reached.
    pub fn mark_interrupted(&self) -> Result<Vec<RunId>, HistoryError> {
        self.with_conn("mark interrupted runs", |conn| {
            let mut ids = conn
                .prepare("UPDATE runs SET status = ?1 WHERE status = ?2 RETURNING id")?
                .query_map(
                    params![Kebab(RunStatus::Interrupted), Kebab(RunStatus::Running)],
                    |row| row.get(0),
                )?
                .collect::<rusqlite::Result<Vec<RunId>>>()?;
            ids.sort_unstable();
            Ok(ids)
        })
    }

    /// For every machine that appears in any run: how it did last, when it last built and
    /// since when it has been failing. Sorted by name.
    pub fn machine_summaries(&self) -> Result<Vec<MachineSummary>, HistoryError> {
        self.with_conn("summarize machines", |conn| summary::query(conn))
    }

    fn with_conn<T>(
        &self,
        action: &str,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, HistoryError> {
        f(&mut self.lock()).map_err(|source| HistoryError::Query {
            action: action.to_owned(),
            path: self.path.clone(),
            source,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock dropped its transaction, which rolled back: the
        // connection is as good as before.
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn no_such_run(&self, id: RunId) -> HistoryError {
        HistoryError::NoSuchRun {
            path: self.path.clone(),
            id,
        }
    }
}

const RUN_COLUMNS: &str = "id, trigger, requested_by, started_at, finished_at, status, \
    rev_before, rev_after, lock_changed, push, error, phases, publish, generations, gc";

/// A run row as selected with [`RUN_COLUMNS`]; its machines are read by [`with_machines`].
fn run_from_row(row: &Row<'_>) -> rusqlite::Result<RunRecord> {
    Ok(RunRecord {
        id: row.get(0)?,
        trigger: row.get::<_, Kebab<_>>(1)?.0,
        requested_by: row.get(2)?,
        started_at: row.get(3)?,
        finished_at: row.get(4)?,
        status: row.get::<_, Kebab<_>>(5)?.0,
        rev_before: row.get(6)?,
        rev_after: row.get(7)?,
        lock_changed: row.get(8)?,
        push: row.get::<_, Option<Json<_>>>(9)?.map(|j| j.0),
        error: row.get(10)?,
        phases: row.get::<_, Json<_>>(11)?.0,
        machines: Vec::new(),
        publish: row.get::<_, Option<Json<_>>>(12)?.map(|j| j.0),
        generations: row.get::<_, Json<_>>(13)?.0,
        gc: row.get::<_, Option<Json<_>>>(14)?.map(|j| j.0),
    })
}

fn with_machines(conn: &Connection, mut run: RunRecord) -> rusqlite::Result<RunRecord> {
    run.machines = conn
        .prepare_cached(
            "SELECT name, kind, status, attribute, drv_path, toplevel, duration_ms, error,
                log_tail, log_path, publish
             FROM machines WHERE run_id = ?1 ORDER BY position",
        )?
        .query_map([run.id], |row| {
            Ok(MachineRecord {
                name: row.get::<_, Parsed<_>>(0)?.0,
                kind: row.get::<_, Kebab<_>>(1)?.0,
                status: row.get::<_, Kebab<_>>(2)?.0,
                attribute: row.get(3)?,
                drv_path: row.get::<_, Option<Parsed<_>>>(4)?.map(|p| p.0),
                toplevel: row.get::<_, Option<Parsed<_>>>(5)?.map(|p| p.0),
                duration_ms: ms_from_sql(row.get(6)?),
                error: row.get(7)?,
                log_tail: row.get(8)?,
                log_path: row.get(9)?,
                publish: row.get::<_, Option<Json<_>>>(10)?.map(|j| j.0),
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(run)
}
