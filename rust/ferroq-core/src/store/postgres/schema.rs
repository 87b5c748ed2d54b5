//! Schema creation and migration, in one transaction under an advisory
//! lock, so that several processes opening a new store at once create it
//! exactly once.

use super::config::PgConfig;
use super::pool::{Fail, PgResult};
use super::sql;
use crate::error::Error;
use postgres::Client;

/// Migrations from version `i` to `i + 1` are `MIGRATIONS[i - 1]`; a new
/// store runs [`sql::SCHEMA_V1`] and then every migration.
const MIGRATIONS: &[&str] = &[sql::MIGRATE_V2, sql::MIGRATE_V3, sql::MIGRATE_V4];

/// Creates the store's schema and tables if they do not exist, migrates an
/// older store, and refuses a schema that holds something else or a
/// store written by a newer ferroq.
pub(super) fn prepare(client: &mut Client, cfg: &PgConfig) -> PgResult<()> {
    let mut tx = client.transaction()?;
    tx.execute(sql::MIGRATION_LOCK, &[&cfg.schema])?;
    let exists: i64 = tx.query_one(sql::SCHEMA_EXISTS, &[&cfg.schema])?.try_get(0)?;
    if exists == 0 {
        tx.batch_execute(&sql::CREATE_SCHEMA.replace("{schema}", &cfg.schema))?;
    }
    let has_meta: i64 = tx.query_one(sql::TABLE_EXISTS, &[&cfg.schema, &"meta"])?.try_get(0)?;
    let where_ = format!("schema {:?} of {}", cfg.schema, cfg.redacted());
    let created = has_meta == 0;
    let mut version: i64 = if created {
        let tables: i64 = tx.query_one(sql::TABLE_COUNT, &[&cfg.schema])?.try_get(0)?;
        if tables != 0 {
            return Err(Fail::Core(Error::NotAStore(format!(
                "{where_} holds {tables} table(s) but no ferroq store; choose another ?schema="
            ))));
        }
        tx.batch_execute(sql::SCHEMA_V1)?;
        tx.execute(sql::META_SET, &[&"app", &"ferroq"])?;
        1
    } else {
        let meta = |tx: &mut postgres::Transaction<'_>, name: &str| -> PgResult<Option<String>> {
            Ok(tx.query_opt(sql::META_GET, &[&name])?.map(|r| r.try_get(0)).transpose()?)
        };
        if meta(&mut tx, "app")?.as_deref() != Some("ferroq") {
            return Err(Fail::Core(Error::NotAStore(format!("{where_} has a meta table that is not ferroq's"))));
        }
        let v = meta(&mut tx, "schema_version")?;
        v.as_deref()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| Fail::Core(Error::Corrupt(format!("{where_} records no valid schema version ({v:?})"))))?
    };
    if version > sql::SCHEMA_VERSION {
        return Err(Fail::Core(Error::NotAStore(format!(
            "{where_} was written by a newer ferroq (schema version {version}; this build reads up to {})",
            sql::SCHEMA_VERSION
        ))));
    }
    let before = version;
    while version < sql::SCHEMA_VERSION {
        let step = MIGRATIONS
            .get((version - 1).max(0) as usize)
            .ok_or_else(|| Fail::Core(Error::Corrupt(format!("no migration from schema version {version}"))))?;
        tx.batch_execute(step)?;
        version += 1;
    }
    if created || version != before {
        tx.execute(sql::META_SET, &[&"schema_version", &version.to_string()])?;
    }
    super::events::prepare(&mut tx)?;
    tx.commit()?;
    Ok(())
}
