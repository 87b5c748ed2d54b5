//! The settings of a Redis store and the URL that carries them.

use crate::error::{Error, Result};
use crate::store::config::OptionValue;
use crate::store::StoreConfig;
use std::fmt;
use std::time::Duration;

/// The longest key prefix, in bytes.
pub const MAX_PREFIX_LEN: usize = 100;

/// Everything needed to open a Redis store. `Debug` leaves the password out.
#[derive(Clone)]
pub struct RedisConfig {
    /// The options every store has (max_payload, retention, events).
    pub store: StoreConfig,
    /// Server host name or address.
    pub host: String,
    /// Server port (6379 when the URL names none).
    pub port: u16,
    /// ACL user name, if any (Redis 6+).
    pub user: Option<String>,
    password: Option<String>,
    /// The logical database (0..=15 on a default server).
    pub db: i64,
    /// Every key the store writes starts with this and a colon, so several
    /// stores share one Redis database.
    pub prefix: String,
    /// Connections kept open for reuse.
    pub pool_size: usize,
    /// How long a connection attempt may take.
    pub connect_timeout: Duration,
    /// How long one command may take before the call fails.
    pub io_timeout: Duration,
    /// How long a call keeps trying to reach a restarting server.
    pub reconnect_wait: Duration,
    /// Whether a thread subscribes to the store's wake-up channel.
    pub notify: bool,
    /// How often a waiter polls the change counter (also with `notify`,
    /// as a fallback for a lost message).
    pub poll_interval: Duration,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.redacted())
            .field("prefix", &self.prefix)
            .field("pool_size", &self.pool_size)
            .finish_non_exhaustive()
    }
}

impl RedisConfig {
    /// True when `url` names a Redis store.
    pub fn is_redis_url(url: &str) -> bool {
        let u = url.trim_start();
        u.starts_with("redis://") || u.starts_with("rediss://")
    }

    /// Parses `redis://[user][:password@]host[:port][/db][?options]`.
    /// Options: `prefix` (default `ferroq`), `pool` (1..=1000, default 8),
    /// `connect_timeout_s`, `timeout_s` (per command, default 30),
    /// `reconnect_s` (default 10), `notify` (`on`/`off`), `poll_ms`, and
    /// the options of every store: `max_payload`, `retention_s`, `events`,
    /// `events_retention_s`. `rediss://` (TLS) is refused: this build
    /// speaks plain TCP.
    pub fn parse(url: &str) -> Result<Self> {
        let url = url.trim();
        if url.starts_with("rediss://") {
            return Err(Error::InvalidArgument(
                "rediss:// (TLS) is not supported by this build: use redis:// (or a TLS tunnel such as stunnel)".into(),
            ));
        }
        if !url.starts_with("redis://") {
            return Err(Error::InvalidArgument("not a redis:// URL".into()));
        }
        // Never echo the URL itself: it may hold a password.
        let parsed = url::Url::parse(url).map_err(|e| Error::InvalidArgument(format!("malformed Redis URL ({e})")))?;
        let host = parsed
            .host_str()
            .map(|h| decode(h.trim_start_matches('[').trim_end_matches(']')))
            .transpose()?
            .filter(|h| !h.is_empty())
            .ok_or_else(|| Error::InvalidArgument("no host in Redis URL".into()))?;
        let user = Some(decode(parsed.username())?).filter(|u| !u.is_empty());
        let password = parsed.password().map(decode).transpose()?;
        let path = parsed.path().trim_start_matches('/');
        let db = if path.is_empty() {
            0
        } else {
            path.parse::<i64>()
                .ok()
                .filter(|d| *d >= 0)
                .ok_or_else(|| Error::InvalidArgument(format!("Redis database {path:?} is not a number >= 0")))?
        };
        let mut config = RedisConfig {
            store: StoreConfig::default(),
            host,
            port: parsed.port().unwrap_or(6379),
            user,
            password,
            db,
            prefix: "ferroq".into(),
            pool_size: 8,
            connect_timeout: Duration::from_secs(5),
            io_timeout: Duration::from_secs(30),
            reconnect_wait: Duration::from_secs(10),
            notify: true,
            poll_interval: Duration::from_millis(50),
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
            "prefix" => {
                let ok = !value.is_empty()
                    && value.len() <= MAX_PREFIX_LEN
                    && value.chars().all(|c| c.is_ascii_alphanumeric() || "_-.:".contains(c));
                if !ok {
                    return Err(bad(&format!("use 1..={MAX_PREFIX_LEN} letters, digits, '_', '-', '.' or ':'")));
                }
                self.prefix = value.to_string();
            }
            "pool" | "pool_size" => self.pool_size = int(1, 1_000)? as usize,
            "connect_timeout_s" => self.connect_timeout = Duration::from_secs(int(1, 3_600)? as u64),
            "timeout_s" => self.io_timeout = Duration::from_secs(int(1, 3_600)? as u64),
            "reconnect_s" => self.reconnect_wait = Duration::from_secs(int(0, 3_600)? as u64),
            "poll_ms" => self.poll_interval = Duration::from_millis(int(1, 60_000)? as u64),
            "notify" => {
                self.notify = match value.to_ascii_lowercase().as_str() {
                    "poll" => false,
                    _ => opt.on_off()?,
                }
            }
            "max_payload" | "retention_s" | "events" | "events_retention_s" => self.store.apply(key, value)?,
            "shards" | "synchronous" | "durability" | "busy_timeout_ms" | "schema" => {
                return Err(Error::InvalidArgument(format!("store option {key:?} does not apply to Redis stores")))
            }
            _ => return Err(Error::InvalidArgument(format!("unknown Redis store option {key:?}"))),
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
        let user = match (&self.user, &self.password) {
            (Some(u), Some(_)) => format!("{u}:***@"),
            (Some(u), None) => format!("{u}@"),
            (None, Some(_)) => ":***@".to_string(),
            (None, None) => String::new(),
        };
        format!("redis://{user}{host}:{}/{}", self.port, self.db)
    }

    /// Replaces the password wherever it appears in `text` (server
    /// messages never carry it; this is a second line of defence).
    pub fn scrub(&self, text: &str) -> String {
        match self.password.as_deref() {
            Some(p) if !p.is_empty() => text.replace(p, "***"),
            _ => text.to_string(),
        }
    }
}

fn decode(s: &str) -> Result<String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| Error::InvalidArgument("Redis URL part is not valid UTF-8 once decoded".into()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn url_forms() {
        let c = RedisConfig::parse("redis://:s3cret@cache.example:6380/3?prefix=jobs:a&pool=2").unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.db, c.prefix.as_str(), c.pool_size),
            ("cache.example", 6380, 3, "jobs:a", 2)
        );
        assert_eq!(c.password(), Some("s3cret"));
        assert_eq!(c.redacted(), "redis://:***@cache.example:6380/3");
        assert!(!format!("{c:?}").contains("s3cret"));
        let c = RedisConfig::parse("redis://al%40ice:p%2Fw@127.0.0.1").unwrap();
        assert_eq!((c.user.as_deref(), c.password(), c.port, c.db), (Some("al@ice"), Some("p/w"), 6379, 0));
        assert!(RedisConfig::is_redis_url("rediss://h"));
    }

    #[test]
    fn notify_takes_on_off_and_poll() {
        let notify = |v: &str| RedisConfig::parse(&format!("redis://h/0?notify={v}")).map(|c| c.notify);
        assert_eq!((notify("on").unwrap(), notify("poll").unwrap(), notify("FALSE").unwrap()), (true, false, false));
        assert!(notify("sometimes").is_err());
    }

    #[test]
    fn bad_urls_say_why_without_the_password() {
        for bad in [
            "redis://",
            "redis://u:hunter2@h/x",
            "redis://u:hunter2@h/-1",
            "redis://u:hunter2@h/0?prefix=",
            "redis://u:hunter2@h/0?prefix=a%20b",
            "redis://u:hunter2@h/0?pool=0",
            "redis://u:hunter2@h/0?shards=4",
            "redis://u:hunter2@h/0?colour=blue",
            "redis://u:hunter2@h:99999/0",
            "rediss://u:hunter2@h/0",
        ] {
            let err = RedisConfig::parse(bad).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{bad}: {err}");
            assert!(!err.to_string().contains("hunter2"), "{bad}: {err}");
        }
    }
}
