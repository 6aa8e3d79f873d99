//! The database schema and its migrations. `PRAGMA user_version` holds how many entries of
//! [`MIGRATIONS`] have been applied; a later change appends a step (e.g. `ALTER TABLE machines
//! ADD COLUMN closure_bytes INTEGER`) and never edits one that has shipped.

use rusqlite::{Connection, TransactionBehavior};

/// Step `i` takes the schema from version `i` to `i + 1`.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: runs and their machines. What `farmctl status` asks ("last success per machine",
    // "failing since") are columns with an index, not fields inside a JSON blob; only values
    // that are always read whole (`push`, `phases`) are JSON.
    "CREATE TABLE runs (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        trigger      TEXT    NOT NULL,
        requested_by TEXT,
        started_at   INTEGER NOT NULL,
        finished_at  INTEGER,
        status       TEXT    NOT NULL,
        rev_before   TEXT,
        rev_after    TEXT,
        lock_changed INTEGER NOT NULL DEFAULT 0,
        push         TEXT,
        error        TEXT,
        phases       TEXT    NOT NULL DEFAULT '[]'
    );
    CREATE INDEX runs_by_status ON runs (status);
    CREATE TABLE machines (
        run_id      INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
        name        TEXT    NOT NULL,
        position    INTEGER NOT NULL,
        kind        TEXT    NOT NULL,
        status      TEXT    NOT NULL,
        attribute   TEXT    NOT NULL,
        drv_path    TEXT,
        toplevel    TEXT,
        duration_ms INTEGER NOT NULL,
        error       TEXT,
        log_tail    TEXT,
        log_path    TEXT,
        PRIMARY KEY (run_id, name)
    );
    CREATE INDEX machines_by_name ON machines (name, run_id);",
    // 2: what the publish phase did, per run and per machine (always read whole: JSON).
    "ALTER TABLE runs ADD COLUMN publish TEXT;
    ALTER TABLE machines ADD COLUMN publish TEXT;",
    // 3: the generation records a run wrote to the cache and what its GC did (JSON).
    "ALTER TABLE runs ADD COLUMN generations TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE runs ADD COLUMN gc TEXT;",
];

/// What [`migrate`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Migrated {
    /// The schema is at [`MIGRATIONS`]`.len()`, having been at `from`.
    Current { from: usize },
    /// A newer farmd wrote this database; nothing was changed.
    TooNew { found: usize },
}

/// Brings the schema up to date. Runs under an immediate (write-locking) transaction that reads
/// the version again, so a `farmctl` and a `farmd` opening a fresh database at once cannot both
/// apply step 1.
pub(crate) fn migrate(conn: &mut Connection) -> rusqlite::Result<Migrated> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found: i64 = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
    // A negative user_version is no version we ever wrote; treat it as too new to touch.
    let found = usize::try_from(found).unwrap_or(usize::MAX);
    if found > MIGRATIONS.len() {
        return Ok(Migrated::TooNew { found });
    }
    for step in &MIGRATIONS[found..] {
        tx.execute_batch(step)?;
    }
    tx.pragma_update(None, "user_version", MIGRATIONS.len() as i64)?;
    tx.commit()?;
    Ok(Migrated::Current { from: found })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_database_is_migrated_to_the_latest_version() {
        let mut conn = Connection::open_in_memory().unwrap();
        assert_eq!(migrate(&mut conn).unwrap(), Migrated::Current { from: 0 });
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
    }

    #[test]
    fn migrating_twice_changes_nothing() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        assert_eq!(
            migrate(&mut conn).unwrap(),
            Migrated::Current {
                from: MIGRATIONS.len()
            }
        );
    }

    #[test]
    fn database_from_a_newer_farmd_is_left_alone() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        assert_eq!(migrate(&mut conn).unwrap(), Migrated::TooNew { found: 99 });
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .unwrap();
        assert_eq!(tables, 0);
    }
}
