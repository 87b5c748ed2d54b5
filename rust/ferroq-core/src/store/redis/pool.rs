//! Connections: a small pool of our own (a mutex-guarded stack of open
//! connections; the `redis` crate's r2d2 feature would pull in a second
//! pool crate for what is twenty lines here), and the mapping of client
//! errors onto the store's typed errors.
//!
//! A connection that met an I/O error is dropped, not returned. A call
//! whose connection broke (a restarting server) retries on a new one for
//! up to `reconnect_wait` when it is safe to: reads always, and commits
//! too, because every commit is guarded by the values it read (a commit
//! that did apply before the break fails its guards the second time, and
//! the verb re-reads and sees its own write; see `tx.rs`).

use super::config::RedisConfig;
use crate::error::{Error, Result};
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Open connections to one Redis server and database.
pub(super) struct Pool {
    cfg: Arc<RedisConfig>,
    client: redis::Client,
    idle: Mutex<Vec<redis::Connection>>,
}

/// The client's connection info, with the password given apart from the URL.
fn connection_info(cfg: &RedisConfig) -> redis::ConnectionInfo {
    redis::ConnectionInfo {
        addr: redis::ConnectionAddr::Tcp(cfg.host.clone(), cfg.port),
        redis: redis::RedisConnectionInfo {
            db: cfg.db,
            username: cfg.user.clone(),
            password: cfg.password().map(str::to_string),
            ..Default::default()
        },
    }
}

impl Pool {
    /// Opens the pool and one connection, checking that the server answers
    /// and the database can be selected.
    pub(super) fn open(cfg: Arc<RedisConfig>) -> Result<Self> {
        let client = redis::Client::open(connection_info(&cfg)).map_err(|e| to_error(&cfg, &e))?;
        let pool = Pool { cfg, client, idle: Mutex::new(Vec::new()) };
        let conn = pool.connect()?;
        pool.idle.lock().push(conn);
        Ok(pool)
    }

    /// A new connection (for the pool, or for a subscriber).
    pub(super) fn connect(&self) -> Result<redis::Connection> {
        let conn =
            self.client.get_connection_with_timeout(self.cfg.connect_timeout).map_err(|e| to_error(&self.cfg, &e))?;
        conn.set_read_timeout(Some(self.cfg.io_timeout)).map_err(|e| to_error(&self.cfg, &e))?;
        conn.set_write_timeout(Some(self.cfg.io_timeout)).map_err(|e| to_error(&self.cfg, &e))?;
        Ok(conn)
    }

    /// Runs `f` on a pooled connection. A broken connection is replaced and
    /// `f` run again until `reconnect_wait` has passed.
    pub(super) fn run<T>(&self, mut f: impl FnMut(&mut redis::Connection) -> redis::RedisResult<T>) -> Result<T> {
        let deadline = Instant::now() + self.cfg.reconnect_wait;
        loop {
            let conn = self.idle.lock().pop();
            let mut conn = match conn {
                Some(c) => c,
                None => match self.connect() {
                    Ok(c) => c,
                    Err(e @ Error::Unavailable(_)) if Instant::now() < deadline && !is_auth_error(&e) => {
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                    Err(e) => return Err(e),
                },
            };
            match f(&mut conn) {
                Ok(v) => {
                    let mut idle = self.idle.lock();
                    if idle.len() < self.cfg.pool_size {
                        idle.push(conn);
                    }
                    return Ok(v);
                }
                Err(e) if broken(&e) => {
                    // Every idle connection went down with the server too.
                    self.idle.lock().clear();
                    if Instant::now() >= deadline {
                        return Err(to_error(&self.cfg, &e));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    let mut idle = self.idle.lock();
                    if idle.len() < self.cfg.pool_size {
                        idle.push(conn);
                    }
                    return Err(to_error(&self.cfg, &e));
                }
            }
        }
    }
}

/// True for errors after which the connection cannot be used again.
fn broken(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || matches!(e.kind(), redis::ErrorKind::BusyLoadingError | redis::ErrorKind::TryAgain)
}

fn is_auth_error(e: &Error) -> bool {
    matches!(e, Error::Unavailable(m) if m.contains("password") || m.contains("database"))
}

/// The store error for a client error; the password never appears.
pub(super) fn to_error(cfg: &RedisConfig, e: &redis::RedisError) -> Error {
    let text = cfg.scrub(&e.to_string());
    let at = cfg.redacted();
    match e.kind() {
        redis::ErrorKind::AuthenticationFailed => {
            Error::Unavailable(format!("Redis at {at} refused the password or user ({text})"))
        }
        _ if text.contains("WRONGPASS")
            || text.contains("NOAUTH")
            || text.contains("AUTH") && text.contains("password") =>
        {
            Error::Unavailable(format!("Redis at {at} refused the password or user ({text})"))
        }
        _ if text.contains("DB index is out of range") || text.contains("invalid DB index") => {
            Error::Unavailable(format!("Redis at {at}: database {} does not exist on the server ({text})", cfg.db))
        }
        _ if broken(e) => Error::Unavailable(format!("cannot reach Redis at {at} ({text})")),
        redis::ErrorKind::ResponseError if text.contains("OOM") => {
            Error::Storage(format!("Redis at {at} is out of memory ({text})"))
        }
        _ => Error::Storage(format!("Redis at {at}: {text}")),
    }
}
