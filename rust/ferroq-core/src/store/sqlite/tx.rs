//! Write transactions begun and committed through cached statements.
//! rusqlite's `Transaction` parses `BEGIN IMMEDIATE` and `COMMIT` afresh on
//! every use, which on a one-task send is a measurable share of the call.

use super::sql;
use crate::error::Result;
use rusqlite::Connection;
use std::ops::Deref;

/// An IMMEDIATE transaction on a connection: rolled back when dropped
/// without [`WriteTx::commit`].
pub struct WriteTx<'c> {
    conn: &'c Connection,
    open: bool,
}

impl<'c> WriteTx<'c> {
    /// Begins the transaction, taking the write lock now (waiting up to the
    /// connection's busy timeout).
    pub fn begin(conn: &'c Connection) -> Result<Self> {
        conn.prepare_cached(sql::BEGIN_IMMEDIATE)?.execute([])?;
        Ok(WriteTx { conn, open: true })
    }

    /// Commits; on failure the transaction is rolled back when dropped.
    pub fn commit(mut self) -> Result<()> {
        self.conn.prepare_cached(sql::COMMIT)?.execute([])?;
        self.open = false;
        Ok(())
    }
}

impl Drop for WriteTx<'_> {
    fn drop(&mut self) {
        if self.open && !self.conn.is_autocommit() {
            // A failed rollback leaves nothing more to undo here: SQLite
            // rolls back itself when it cannot continue the transaction.
            let _ = self.conn.execute_batch(sql::ROLLBACK);
        }
    }
}

impl Deref for WriteTx<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn
    }
}
