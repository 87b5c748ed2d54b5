//! Connections: how one is made, a small pool of them, the per-connection
//! cache of prepared statements, and the mapping of driver errors onto the
//! core's [`Error`] (without the password, ever).
//!
//! A pooled connection that sat idle for a while is checked with an empty
//! query before it is lent out, so one that the server closed meanwhile
//! (a restart, an idle timeout) is replaced instead of failing the call.
//! One that breaks while in use is dropped on return, and so is every idle
//! one with it, since they all went down with the same server; the next
//! call connects afresh.

use super::config::PgConfig;
use crate::error::Error;
use parking_lot::{Condvar, Mutex};
use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::{Client, GenericClient, NoTls, Row, Statement};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A failure inside the backend: a driver error (classified later, when
/// it is known whether to retry) or a core error to pass on as it is.
pub(super) enum Fail {
    /// From the driver.
    Pg(postgres::Error),
    /// Already a core error (bad input, a full queue, ...).
    Core(Error),
}

impl From<postgres::Error> for Fail {
    fn from(e: postgres::Error) -> Self {
        Fail::Pg(e)
    }
}

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Fail::Core(e)
    }
}

/// Result inside the backend.
pub(super) type PgResult<T> = std::result::Result<T, Fail>;

/// True when the connection that gave `e` is unusable: closed, an I/O
/// failure, or the server going away.
pub(super) fn connection_lost(e: &postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(code) = e.code() {
        let c = code.code();
        return c.starts_with("08") || matches!(c, "57P01" | "57P02" | "57P03");
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// True for errors after which the whole transaction may simply be run
/// again (nothing of it was committed).
pub(super) fn retryable(e: &postgres::Error) -> bool {
    matches!(e.code(), Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED)
}

/// What the server or the driver said, without the driver's prefixes.
fn reason(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = db.message().to_string();
            if let Some(d) = db.detail() {
                s.push_str(&format!(" ({d})"));
            }
            s
        }
        None => {
            // The driver's own text is terse ("error connecting to
            // server"): add the causes ("Connection refused ...").
            let mut s = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(c) = source {
                let c_text = c.to_string();
                if !s.contains(&c_text) {
                    s.push_str(&format!(": {c_text}"));
                }
                source = c.source();
            }
            s
        }
    }
}

/// Maps a driver error met while connecting.
pub(super) fn connect_error(cfg: &PgConfig, e: &postgres::Error) -> Error {
    let text = cfg.scrub(&reason(e));
    let at = cfg.redacted();
    let hint = match e.code().map(|c| c.code()) {
        Some("28P01") => " (wrong password?)",
        Some("3D000") => " (create the database first)",
        Some("28000") => " (the server's pg_hba.conf does not let this user in from here)",
        Some("57P03") => " (the server is starting up or shutting down)",
        Some("53300") => " (too many connections)",
        _ => "",
    };
    Error::Unavailable(format!("cannot connect to PostgreSQL at {at}: {text}{hint}"))
}

/// Maps a driver error met while running a statement.
pub(super) fn run_error(cfg: &PgConfig, e: &postgres::Error) -> Error {
    let text = cfg.scrub(&reason(e));
    let at = cfg.redacted();
    if connection_lost(e) {
        return Error::Unavailable(format!(
            "lost the connection to PostgreSQL at {at}: {text} (the next call reconnects)"
        ));
    }
    match e.code().map(|c| c.code()) {
        Some("42501") => Error::PermissionDenied(format!("PostgreSQL at {at}: {text}")),
        Some(c) if c.starts_with("53") => Error::Unavailable(format!("PostgreSQL at {at}: {text}")),
        Some("3F000") | Some("42P01") | Some("42703") => {
            Error::NotAStore(format!("schema {:?} of {at} no longer holds a complete ferroq store: {text}", cfg.schema))
        }
        _ => Error::Storage(format!("PostgreSQL at {at}: {text}")),
    }
}

/// Maps a backend failure onto the core error.
pub(super) fn to_error(cfg: &PgConfig, f: Fail) -> Error {
    match f {
        Fail::Core(e) => e,
        Fail::Pg(e) => run_error(cfg, &e),
    }
}

/// One connection and its prepared statements.
pub(super) struct PgConn {
    pub(super) client: Client,
    stmts: HashMap<usize, Statement>,
    /// When it was last returned to the pool.
    idle_since: Instant,
}

/// A connection idle longer than this is checked before it is lent.
const CHECK_AFTER_IDLE: Duration = Duration::from_millis(500);

/// True for connection failures that a server restart or failover
/// causes (refused, starting up, shutting down, out of slots): worth
/// trying again shortly. A wrong password or a missing database is not.
fn transient(e: &postgres::Error) -> bool {
    match e.code().map(|c| c.code()) {
        Some(c) => c.starts_with("08") || matches!(c, "57P01" | "57P02" | "57P03" | "53300"),
        None => true,
    }
}

/// Makes a connection whose `search_path` is the store's schema.
pub(super) fn connect(cfg: &PgConfig) -> Result<Client, Error> {
    connect_raw(cfg).map_err(|e| connect_error(cfg, &e))
}

fn connect_raw(cfg: &PgConfig) -> Result<Client, postgres::Error> {
    let mut pg = postgres::Config::new();
    pg.host(&cfg.host)
        .port(cfg.port)
        .user(&cfg.user)
        .dbname(&cfg.dbname)
        .application_name(&cfg.application_name)
        .connect_timeout(cfg.connect_timeout)
        .keepalives(true)
        .options(&super::events::connection_options(cfg));
    if let Some(p) = cfg.password() {
        pg.password(p);
    }
    pg.connect(NoTls)
}

/// Connects, trying again for up to the configured reconnect window while
/// the failure is one a restart causes, so that calls ride through a
/// server restart instead of failing (nothing was sent yet: always safe).
fn reconnect(cfg: &PgConfig) -> Result<Client, Error> {
    let deadline = Instant::now() + cfg.reconnect_wait;
    let mut pause = Duration::from_millis(25);
    loop {
        match connect_raw(cfg) {
            Ok(c) => return Ok(c),
            Err(e) if transient(&e) && Instant::now() + pause < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(500));
            }
            Err(e) => return Err(connect_error(cfg, &e)),
        }
    }
}

/// Statements on one client (a connection or a transaction on it), each
/// prepared once per connection.
pub(super) struct Db<'a, C: GenericClient> {
    c: &'a mut C,
    stmts: &'a mut HashMap<usize, Statement>,
}

/// Parameters of a statement.
pub(super) type Params<'p> = [&'p (dyn ToSql + Sync)];

impl<C: GenericClient> Db<'_, C> {
    fn stmt(&mut self, sql: &'static str) -> PgResult<Statement> {
        // The SQL is a const: its address identifies it.
        let key = sql.as_ptr() as usize;
        if let Some(s) = self.stmts.get(&key) {
            return Ok(s.clone());
        }
        let s = self.c.prepare(sql)?;
        self.stmts.insert(key, s.clone());
        Ok(s)
    }

    /// Runs a statement; returns its rows.
    pub(super) fn query(&mut self, sql: &'static str, params: &Params<'_>) -> PgResult<Vec<Row>> {
        let s = self.stmt(sql)?;
        Ok(self.c.query(&s, params)?)
    }

    /// Runs a statement; returns its first row, if any.
    pub(super) fn query_opt(&mut self, sql: &'static str, params: &Params<'_>) -> PgResult<Option<Row>> {
        let s = self.stmt(sql)?;
        Ok(self.c.query_opt(&s, params)?)
    }

    /// Runs a statement; returns how many rows it changed.
    pub(super) fn execute(&mut self, sql: &'static str, params: &Params<'_>) -> PgResult<u64> {
        let s = self.stmt(sql)?;
        Ok(self.c.execute(&s, params)?)
    }
}

struct PoolState {
    idle: Vec<PgConn>,
    /// Connections in existence (idle + lent + being made).
    open: usize,
}

/// A fixed-size pool of connections, made as needed.
pub(super) struct Pool {
    cfg: Arc<PgConfig>,
    state: Mutex<PoolState>,
    freed: Condvar,
}

/// A connection lent by the pool; returned when dropped.
pub(super) struct Lease<'a> {
    pool: &'a Pool,
    conn: Option<PgConn>,
    broken: bool,
}

impl Pool {
    /// A pool for `cfg`, holding `first` (the connection that opened the store).
    pub(super) fn new(cfg: Arc<PgConfig>, first: Client) -> Self {
        let conn = PgConn { client: first, stmts: HashMap::new(), idle_since: Instant::now() };
        Pool { cfg, state: Mutex::new(PoolState { idle: vec![conn], open: 1 }), freed: Condvar::new() }
    }

    /// Lends a live connection, making one when none is idle and the pool
    /// has room, else waiting up to the pool timeout for one to come back.
    pub(super) fn get(&self) -> Result<Lease<'_>, Error> {
        let deadline = Instant::now() + self.cfg.pool_timeout;
        let mut st = self.state.lock();
        loop {
            while let Some(mut conn) = st.idle.pop() {
                if conn.idle_since.elapsed() < CHECK_AFTER_IDLE && !conn.client.is_closed() {
                    return Ok(Lease { pool: self, conn: Some(conn), broken: false });
                }
                drop(st);
                if alive(&mut conn.client, self.cfg.connect_timeout) {
                    return Ok(Lease { pool: self, conn: Some(conn), broken: false });
                }
                drop(conn);
                st = self.state.lock();
                st.open -= 1;
            }
            if st.open < self.cfg.pool_size {
                st.open += 1;
                drop(st);
                return match reconnect(&self.cfg) {
                    Ok(client) => Ok(Lease {
                        pool: self,
                        conn: Some(PgConn { client, stmts: HashMap::new(), idle_since: Instant::now() }),
                        broken: false,
                    }),
                    Err(e) => {
                        self.state.lock().open -= 1;
                        self.freed.notify_one();
                        Err(e)
                    }
                };
            }
            if self.freed.wait_until(&mut st, deadline).timed_out() {
                return Err(Error::Unavailable(format!(
                    "all {} connections to PostgreSQL at {} stayed busy for {:?} (raise ?pool=)",
                    self.cfg.pool_size,
                    self.cfg.redacted(),
                    self.cfg.pool_timeout
                )));
            }
        }
    }

    /// Drops every idle connection (they went down with the one that broke).
    fn drop_idle(&self) {
        let mut st = self.state.lock();
        st.open -= st.idle.len();
        st.idle.clear();
        self.freed.notify_all();
    }
}

/// Checks a connection with an empty query (one round trip).
fn alive(client: &mut Client, timeout: Duration) -> bool {
    !client.is_closed() && client.is_valid(timeout).is_ok()
}

impl Lease<'_> {
    /// Statements on the connection, outside any transaction.
    pub(super) fn db(&mut self) -> PgResult<Db<'_, Client>> {
        let conn =
            self.conn.as_mut().ok_or_else(|| Fail::Core(Error::Storage("connection already returned".into())))?;
        Ok(Db { c: &mut conn.client, stmts: &mut conn.stmts })
    }

    /// Runs `f` in one transaction, committed when it returns Ok and
    /// rolled back otherwise. `begun` is set once BEGIN went through
    /// (before that, nothing can have happened on the server).
    pub(super) fn transaction<T>(
        &mut self,
        begun: &mut bool,
        f: &mut dyn FnMut(&mut Db<'_, postgres::Transaction<'_>>) -> PgResult<T>,
    ) -> PgResult<T> {
        let conn =
            self.conn.as_mut().ok_or_else(|| Fail::Core(Error::Storage("connection already returned".into())))?;
        let mut tx = conn.client.transaction()?;
        *begun = true;
        let out = f(&mut Db { c: &mut tx, stmts: &mut conn.stmts })?;
        tx.commit()?;
        Ok(out)
    }

    /// Marks the connection as unusable after `e`, when it is: it is then
    /// dropped on return, along with every idle one.
    pub(super) fn check(&mut self, f: &Fail) {
        if let Fail::Pg(e) = f {
            if connection_lost(e) {
                self.broken = true;
            }
        }
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        if self.broken || conn.client.is_closed() {
            drop(conn);
            self.pool.state.lock().open -= 1;
            self.pool.drop_idle();
        } else {
            let mut conn = conn;
            conn.idle_since = Instant::now();
            self.pool.state.lock().idle.push(conn);
            self.pool.freed.notify_one();
        }
    }
}
