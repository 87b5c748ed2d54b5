//! The PostgreSQL URL form and the settings it carries.
//!
//! `postgresql://user:password@host:port/database?schema=ferroq&pool=8&notify=on`
//! (`postgres://` works too). Options of every store (`max_payload`,
//! `retention_s`) apply as well. The password is kept out of every message
//! and description: [`PgConfig::redacted`] is what errors show.

use crate::error::{Error, Result};
use crate::store::config::{OptionValue, StoreConfig};
use std::time::Duration;

/// Everything needed to open a PostgreSQL store.
#[derive(Clone)]
pub struct PgConfig {
    /// Options shared with the other backends (payload limit, retention,
    /// default backoff).
    pub store: StoreConfig,
    /// Host name, IP address, or a Unix socket directory (starting with `/`).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Role to connect as.
    pub user: String,
    /// Its password, if any (never shown).
    password: Option<String>,
    /// Database name.
    pub dbname: String,
    /// Schema holding the store's tables (created if needed).
    pub schema: String,
    /// Most connections the store opens at once (the listener's excluded).
    pub pool_size: usize,
    /// Wake waiters by LISTEN/NOTIFY (true) or by polling only (false).
    pub notify: bool,
    /// How often a waiter polls when notifications are off or down.
    pub poll_interval: Duration,
    /// How long to wait for a connection to the server.
    pub connect_timeout: Duration,
    /// How long a caller waits for a free pooled connection.
    pub pool_timeout: Duration,
    /// How long a call keeps trying to reconnect while the server is
    /// restarting (refusing connections, starting up, shutting down).
    pub reconnect_wait: Duration,
    /// `application_name` shown in `pg_stat_activity`.
    pub application_name: String,
}

impl std::fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConfig")
            .field("url", &self.redacted())
            .field("pool_size", &self.pool_size)
            .field("notify", &self.notify)
            .finish_non_exhaustive()
    }
}

/// Longest schema name: `ferroq_<schema>` must fit PostgreSQL's 63-byte
/// identifiers, as it names the NOTIFY channel.
pub const MAX_SCHEMA_LEN: usize = 56;

impl PgConfig {
    /// True when `url` names a PostgreSQL store.
    pub fn is_postgres_url(url: &str) -> bool {
        let u = url.trim_start();
        u.starts_with("postgres://") || u.starts_with("postgresql://")
    }

    /// Parses a `postgresql://` URL. Query options: `schema` (default
    /// `ferroq`), `pool` (1..=1000, default 10), `notify` (`on`/`off`),
    /// `poll_ms`, `connect_timeout_s`, `pool_timeout_s`, `reconnect_s`
    /// (how long calls wait for a restarting server, default 10),
    /// `application_name`, `sslmode` (`disable`/`prefer`: this build speaks
    /// plain TCP), and the options of every store: `max_payload`,
    /// `retention_s`. A missing password is read from `PGPASSWORD`, a
    /// missing user from `PGUSER` (else `postgres`).
    pub fn parse(url: &str) -> Result<Self> {
        let url = url.trim();
        if !Self::is_postgres_url(url) {
            return Err(Error::InvalidArgument("not a postgresql:// URL".into()));
        }
        // Never echo the URL itself: it may hold a password.
        let parsed =
            url::Url::parse(url).map_err(|e| Error::InvalidArgument(format!("malformed PostgreSQL URL ({e})")))?;
        let host = parsed
            .host_str()
            .map(|h| decode(h.trim_start_matches('[').trim_end_matches(']')))
            .transpose()?
            .filter(|h| !h.is_empty())
            .ok_or_else(|| Error::InvalidArgument("no host in PostgreSQL URL".into()))?;
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let user = Some(decode(parsed.username())?)
            .filter(|u| !u.is_empty())
            .or_else(|| env("PGUSER"))
            .unwrap_or_else(|| "postgres".into());
        let password = parsed.password().map(decode).transpose()?.or_else(|| env("PGPASSWORD"));
        let dbname = decode(parsed.path().trim_start_matches('/'))?;
        if dbname.contains('/') {
            return Err(Error::InvalidArgument(format!("database name {dbname:?} contains '/'")));
        }
        let dbname = if dbname.is_empty() { user.clone() } else { dbname };
        let mut config = PgConfig {
            store: StoreConfig::default(),
            host,
            port: parsed.port().unwrap_or(5432),
            user,
            password,
            dbname,
            schema: "ferroq".into(),
            pool_size: 10,
            notify: true,
            poll_interval: Duration::from_millis(50),
            connect_timeout: Duration::from_secs(10),
            pool_timeout: Duration::from_secs(30),
            reconnect_wait: Duration::from_secs(10),
            application_name: "ferroq".into(),
        };
        for (k, v) in parsed.query_pairs() {
            config.apply(&k, &v)?;
        }
        Ok(config)
    }

    fn apply(&mut self, key: &str, value: &str) -> Result<()> {
        let opt = OptionValue { key, value };
        let bad = |why: &str| opt.bad(why);
        let int = |lo: i64, hi: i64| opt.int_within(lo, hi);
        match key {
            "schema" => {
                check_schema(value).map_err(|why| bad(&why))?;
                self.schema = value.to_string();
            }
            "pool" | "pool_size" => self.pool_size = int(1, 1_000)? as usize,
            "notify" => {
                self.notify = match value.to_ascii_lowercase().as_str() {
                    "listen" => true,
                    "poll" => false,
                    _ => opt.on_off()?,
                }
            }
            "poll_ms" => self.poll_interval = Duration::from_millis(int(1, 60_000)? as u64),
            "connect_timeout_s" | "connect_timeout" => {
                self.connect_timeout = Duration::from_secs(int(1, 3_600)? as u64)
            }
            "pool_timeout_s" => self.pool_timeout = Duration::from_secs(int(1, 3_600)? as u64),
            "reconnect_s" => self.reconnect_wait = Duration::from_secs(int(0, 3_600)? as u64),
            "application_name" => {
                if value.len() > 63 || !value.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
                    return Err(bad("must be up to 63 printable ASCII characters"));
                }
                self.application_name = value.to_string();
            }
            "sslmode" => match value {
                "disable" | "allow" | "prefer" => {}
                _ => return Err(bad("this build connects without TLS: use disable or prefer")),
            },
            "max_payload" | "retention_s" | "events" | "events_retention_s" => self.store.apply(key, value)?,
            "shards" | "synchronous" | "durability" | "busy_timeout_ms" => {
                return Err(Error::InvalidArgument(format!(
                    "store option {key:?} applies to SQLite stores, not PostgreSQL"
                )))
            }
            _ => return Err(Error::InvalidArgument(format!("unknown PostgreSQL store option {key:?}"))),
        }
        Ok(())
    }

    /// The password, for connecting.
    pub(super) fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The URL without its password: what messages and `describe()` show.
    pub fn redacted(&self) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        format!("postgresql://{}@{}:{}/{}", self.user, host, self.port, self.dbname)
    }

    /// Replaces the password wherever it appears in `text` (server
    /// messages never carry it; this is a second line of defence).
    pub fn scrub(&self, text: &str) -> String {
        match self.password.as_deref() {
            Some(p) if p.len() >= 3 => text.replace(p, "***"),
            _ => text.to_string(),
        }
    }
}

/// A schema name ferroq accepts: a plain lower-case identifier, so that it
/// never needs quoting in SQL or in the NOTIFY channel name.
fn check_schema(name: &str) -> std::result::Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
        return Err("use lower-case letters, digits and _, not starting with a digit".into());
    }
    if name.len() > MAX_SCHEMA_LEN {
        return Err(format!("at most {MAX_SCHEMA_LEN} characters"));
    }
    if name.starts_with("pg_") || name == "information_schema" || name == "public" {
        return Err("that schema belongs to PostgreSQL".into());
    }
    Ok(())
}

fn decode(s: &str) -> Result<String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| Error::InvalidArgument("PostgreSQL URL part is not valid UTF-8 once decoded".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_forms() {
        let c = PgConfig::parse("postgresql://bob:s3cret@db.example:6543/jobs?schema=q1&pool=3&notify=off").unwrap();
        assert_eq!((c.host.as_str(), c.port, c.user.as_str(), c.dbname.as_str()), ("db.example", 6543, "bob", "jobs"));
        assert_eq!(c.password(), Some("s3cret"));
        assert_eq!((c.schema.as_str(), c.pool_size, c.notify), ("q1", 3, false));
        assert_eq!(c.redacted(), "postgresql://bob@db.example:6543/jobs");
        assert!(!format!("{c:?}").contains("s3cret"));
        let c = PgConfig::parse("postgres://al%40ice:p%2Fw@127.0.0.1/?retention_s=none").unwrap();
        assert_eq!((c.user.as_str(), c.password(), c.port), ("al@ice", Some("p/w"), 5432));
        assert_eq!(c.dbname, "al@ice", "the database defaults to the user's name");
        assert_eq!(c.store.retention_ms, None);
        let c = PgConfig::parse("postgresql://u@%2Fvar%2Frun%2Fpostgresql/db").unwrap();
        assert_eq!(c.host, "/var/run/postgresql");
        let c = PgConfig::parse("postgresql://u@[::1]:5/db").unwrap();
        assert_eq!((c.host.as_str(), c.port), ("::1", 5));
    }

    #[test]
    fn notify_takes_on_off_listen_and_poll() {
        let notify = |v: &str| PgConfig::parse(&format!("postgresql://h/db?notify={v}")).map(|c| c.notify);
        assert_eq!((notify("listen").unwrap(), notify("1").unwrap()), (true, true));
        assert_eq!((notify("poll").unwrap(), notify("off").unwrap()), (false, false));
        assert!(notify("sometimes").is_err());
    }

    #[test]
    fn bad_urls_say_why_without_the_password() {
        for bad in [
            "postgresql://",
            "postgresql://u:hunter2@h/db?schema=Bad",
            "postgresql://u:hunter2@h/db?schema=1x",
            "postgresql://u:hunter2@h/db?schema=pg_catalog",
            "postgresql://u:hunter2@h/db?pool=0",
            "postgresql://u:hunter2@h/db?notify=maybe",
            "postgresql://u:hunter2@h/db?shards=4",
            "postgresql://u:hunter2@h/db?colour=blue",
            "postgresql://u:hunter2@h/db?sslmode=require",
            "postgresql://u:hunter2@h:99999/db",
            "postgresql://u:hunter2@h/a/b",
        ] {
            let err = PgConfig::parse(bad).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{bad}: {err}");
            assert!(!err.to_string().contains("hunter2"), "{bad}: {err}");
        }
        let long = format!("postgresql://h/db?schema={}", "s".repeat(MAX_SCHEMA_LEN + 1));
        assert!(PgConfig::parse(&long).is_err());
    }
}
