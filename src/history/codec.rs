//! How record types become SQLite values and back: enums as their serde kebab-case names
//! (`build-failed`), nested values (`push`, `phases`) as JSON text, domain types re-parsed on
//! the way out so a hand-edited or corrupt row is refused instead of trusted.

use std::str::FromStr;

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, ValueRef};
use rusqlite::ToSql;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The serde name of a unit enum variant (`Trigger::CatchUp` → `catch-up`), the one spelling
/// the database, the JSON output and the rendered text share.
pub(crate) fn enum_str<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        // Only unit variants of our own enums come here; anything else is a programming error.
        other => panic!("`{other:?}` does not serialize to a plain string"),
    }
}

/// A unit enum stored as its kebab-case name.
pub(crate) struct Kebab<T>(pub T);

impl<T: Serialize> ToSql for Kebab<T> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(enum_str(&self.0)))
    }
}

impl<T: DeserializeOwned> FromSql for Kebab<T> {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let s = value.as_str()?;
        serde_json::from_value(serde_json::Value::String(s.to_owned()))
            .map(Kebab)
            .map_err(|_| other(format!("unknown value `{}`", s.escape_debug())))
    }
}

/// A structured value stored as JSON text.
pub(crate) struct Json<T>(pub T);

impl<T: Serialize> ToSql for Json<T> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        let text = serde_json::to_string(&self.0)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        Ok(ToSqlOutput::from(text))
    }
}

impl<T: DeserializeOwned> FromSql for Json<T> {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        serde_json::from_str(value.as_str()?)
            .map(Json)
            .map_err(|e| other(format!("invalid JSON: {e}")))
    }
}

/// A domain type (`MachineName`, `StorePath`) parsed again when read.
pub(crate) struct Parsed<T>(pub T);

impl<T> FromSql for Parsed<T>
where
    T: FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        value
            .as_str()?
            .parse()
            .map(Parsed)
            .map_err(|e| FromSqlError::Other(Box::new(e)))
    }
}

/// Durations are `u64` milliseconds in the record and SQLite integers are `i64`; 292 million
/// years do not fit, so saturating is exact for every real value.
pub(crate) fn ms_to_sql(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

pub(crate) fn ms_from_sql(ms: i64) -> u64 {
    u64::try_from(ms).unwrap_or(0)
}

fn other(message: String) -> FromSqlError {
    FromSqlError::Other(message.into())
}
