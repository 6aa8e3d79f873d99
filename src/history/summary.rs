//! Per-machine answers across all runs: the last outcome, the last success and since when a
//! machine has been failing — what `farmctl status` shows so that a machine failing for two
//! months stands out. Computed in SQL over the `machines` columns, not by loading every record.

use rusqlite::{named_params, Connection};

use crate::record::{MachineKind, MachineStatus, RunId};
use crate::types::{MachineName, StorePath};

use super::codec::{enum_str, Kebab, Parsed};

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MachineSummary {
    pub name: MachineName,
    /// As of its latest run.
    pub kind: MachineKind,
    /// The outcome in the newest run that got as far as deciding one; `pending` only when no
    /// run has yet (the first run is still going). A machine dropped from the flake keeps its
    /// old entry: compare `last_run` with the newest run to tell.
    pub last_status: MachineStatus,
    pub last_run: RunId,
    /// When `last_run` started (unix seconds).
    pub last_run_at: i64,
    pub last_success: Option<LastSuccess>,
    /// When the first run that failed it (evaluation, build or timeout) after its last success
    /// started; `None` when no failure came after the last success. Cancelled, pending and
    /// building outcomes neither start nor end a failure streak.
    pub failing_since: Option<i64>,
    /// How many runs failed it since the last success.
    pub failures_since_success: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LastSuccess {
    pub run: RunId,
    /// When that run started (unix seconds).
    pub at: i64,
    pub toplevel: Option<StorePath>,
}

/// The statuses that count as a failure of the machine itself.
const FAILURES: [MachineStatus; 3] = [
    MachineStatus::EvalFailed,
    MachineStatus::BuildFailed,
    MachineStatus::TimedOut,
];

pub(super) fn query(conn: &Connection) -> rusqlite::Result<Vec<MachineSummary>> {
    // Run ids grow with start time (`begin` hands them out), so "after" is `run_id >`.
    let mut stmt = conn.prepare_cached(
        "WITH per_machine AS (
            SELECT name,
                   COALESCE(MAX(run_id) FILTER (WHERE status NOT IN (:pending, :building)), MAX(run_id))
                       AS last_run,
                   MAX(run_id) FILTER (WHERE status = :built) AS ok_run
            FROM machines GROUP BY name
        ),
        failing AS (
            SELECT m.name, MIN(m.run_id) AS first_run, COUNT(*) AS runs
            FROM machines m JOIN per_machine p ON p.name = m.name
            WHERE m.status IN (:eval_failed, :build_failed, :timed_out)
              AND m.run_id > COALESCE(p.ok_run, 0)
            GROUP BY m.name
        )
        SELECT p.name, last.kind, last.status, p.last_run, last_run.started_at,
               p.ok_run, ok_run.started_at, ok.toplevel,
               first_fail.started_at, COALESCE(f.runs, 0)
        FROM per_machine p
        JOIN machines last ON last.run_id = p.last_run AND last.name = p.name
        JOIN runs last_run ON last_run.id = p.last_run
        LEFT JOIN machines ok ON ok.run_id = p.ok_run AND ok.name = p.name
        LEFT JOIN runs ok_run ON ok_run.id = p.ok_run
        LEFT JOIN failing f ON f.name = p.name
        LEFT JOIN runs first_fail ON first_fail.id = f.first_run
        ORDER BY p.name",
    )?;
    let [eval_failed, build_failed, timed_out] = FAILURES.map(|s| enum_str(&s));
    let rows = stmt.query_map(
        named_params! {
            ":pending": enum_str(&MachineStatus::Pending),
            ":building": enum_str(&MachineStatus::Building),
            ":built": enum_str(&MachineStatus::Built),
            ":eval_failed": eval_failed,
            ":build_failed": build_failed,
            ":timed_out": timed_out,
        },
        |row| {
            let ok_run: Option<RunId> = row.get(5)?;
            let last_success = match ok_run {
                Some(run) => Some(LastSuccess {
                    run,
                    at: row.get(6)?,
                    toplevel: row.get::<_, Option<Parsed<_>>>(7)?.map(|p| p.0),
                }),
                None => None,
            };
            Ok(MachineSummary {
                name: row.get::<_, Parsed<_>>(0)?.0,
                kind: row.get::<_, Kebab<_>>(1)?.0,
                last_status: row.get::<_, Kebab<_>>(2)?.0,
                last_run: row.get(3)?,
                last_run_at: row.get(4)?,
                last_success,
                failing_since: row.get(8)?,
                failures_since_success: row.get(9)?,
            })
        },
    )?;
    rows.collect()
}
