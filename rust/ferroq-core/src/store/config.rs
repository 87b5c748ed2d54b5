//! Store settings and the URL forms that carry them.

use crate::backoff::Backoff;
use crate::error::{Error, Result};
use std::path::PathBuf;
use std::time::Duration;

/// SQLite durability. `Normal` (the default) survives a crash of the
/// process; `Full` also survives power loss or an OS crash, at a cost of
/// roughly 3x fewer single-task commits per second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synchronous {
    /// `PRAGMA synchronous=NORMAL` in WAL mode.
    Normal,
    /// `PRAGMA synchronous=FULL`.
    Full,
}

/// Everything needed to open a store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Directory of shard files; None for an in-memory store.
    pub path: Option<PathBuf>,
    /// Shards to create; None opens an existing store at its own count (or
    /// creates one shard).
    pub shards: Option<u32>,
    /// Durability.
    pub synchronous: Synchronous,
    /// Largest payload or result, in bytes.
    pub max_payload: usize,
    /// How long a writer waits for another process's lock.
    pub busy_timeout: Duration,
    /// How often a waiting claimer checks for other processes' commits.
    pub poll_interval: Duration,
    /// How long finished tasks are kept when they set no TTL (None = forever).
    pub retention_ms: Option<i64>,
    /// Retry policy for tasks that set none.
    pub default_backoff: Backoff,
    /// Whether this handle records the event feed (`events=off` stops it).
    pub events: bool,
    /// How long events are kept (None = forever); pruned by `purge`.
    pub events_retention_ms: Option<i64>,
}

/// The largest number of shards a store may have.
pub const MAX_SHARDS: u32 = 64;

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: None,
            shards: None,
            synchronous: Synchronous::Normal,
            max_payload: 16 * 1024 * 1024,
            busy_timeout: Duration::from_secs(10),
            poll_interval: Duration::from_millis(1),
            retention_ms: Some(7 * 24 * 3_600_000),
            default_backoff: Backoff::default(),
            events: true,
            events_retention_ms: Some(super::events::DEFAULT_EVENTS_RETENTION_MS),
        }
    }
}

impl StoreConfig {
    /// Parses a store URL (see [`crate::store::open`]). Query parameters:
    /// `shards`, `synchronous` (`normal`/`full`), `max_payload` (bytes),
    /// `busy_timeout_ms`, `poll_ms`, `retention_s` (`0` or `none` = forever),
    /// `events` (`on`/`off`: whether this handle records the event feed),
    /// `events_retention_s` (default one day; `0` or `none` = forever).
    pub fn parse(url: &str) -> Result<Self> {
        let url = url.trim();
        if url.is_empty() {
            return Err(Error::InvalidArgument("store URL must not be empty".into()));
        }
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (url, None),
        };
        let mut config = StoreConfig::default();
        if base == "memory://" || base == "memory:" {
            config.path = None;
        } else if let Some(rest) = base.strip_prefix("sqlite://") {
            if rest.is_empty() {
                return Err(Error::InvalidArgument(format!("no path in store URL {url:?}")));
            }
            config.path = Some(PathBuf::from(decode(rest)?));
        } else if base.starts_with("postgres://") || base.starts_with("postgresql://") {
            return Err(Error::InvalidArgument(
                "a PostgreSQL URL is parsed by PgConfig::parse (store::open takes either)".into(),
            ));
        } else if let Some((scheme, _)) = base.split_once("://") {
            return Err(Error::InvalidArgument(format!(
                "unknown store scheme {scheme:?}: use a path, sqlite:///path, postgresql://... or memory://"
            )));
        } else {
            config.path = Some(PathBuf::from(base));
        }
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            config.apply(k, &decode(v)?)?;
        }
        Ok(config)
    }

    /// Applies one `key=value` option (shared with the PostgreSQL and
    /// Redis URL forms).
    pub(crate) fn apply(&mut self, key: &str, value: &str) -> Result<()> {
        let opt = OptionValue { key, value };
        match key {
            "shards" => {
                let n = opt.int()?;
                if !(1..=MAX_SHARDS as i64).contains(&n) {
                    return Err(opt.bad(&format!("shards must be within 1..={MAX_SHARDS}")));
                }
                self.shards = Some(n as u32);
            }
            "synchronous" | "durability" => {
                self.synchronous = match value.to_ascii_lowercase().as_str() {
                    "normal" => Synchronous::Normal,
                    "full" => Synchronous::Full,
                    _ => return Err(opt.bad("use normal or full")),
                }
            }
            "max_payload" => self.max_payload = opt.int_within(1, 1_000_000_000)? as usize,
            "busy_timeout_ms" => self.busy_timeout = Duration::from_millis(opt.int_within(0, 3_600_000)? as u64),
            "poll_ms" => self.poll_interval = Duration::from_millis(opt.int_within(1, 10_000)? as u64),
            "retention_s" => self.retention_ms = opt.seconds_as_ms_or_none()?,
            "events" => self.events = opt.on_off()?,
            "events_retention_s" => self.events_retention_ms = opt.seconds_as_ms_or_none()?,
            _ => return Err(Error::InvalidArgument(format!("unknown store option {key:?}"))),
        }
        Ok(())
    }
}

/// One `key=value` store option from a URL: how its value is read, and the
/// error that names it. Shared by the SQLite, PostgreSQL and Redis parsers.
pub(crate) struct OptionValue<'a> {
    /// The option's name.
    pub key: &'a str,
    /// Its value, decoded.
    pub value: &'a str,
}

impl OptionValue<'_> {
    /// `InvalidArgument` naming the option, its value and `why`.
    pub fn bad(&self, why: &str) -> Error {
        Error::InvalidArgument(format!("store option {}={:?}: {why}", self.key, self.value))
    }

    /// The value as an integer.
    pub fn int(&self) -> Result<i64> {
        self.value.parse::<i64>().map_err(|_| self.bad("not an integer"))
    }

    /// The value as an integer within `lo..=hi`.
    pub fn int_within(&self, lo: i64, hi: i64) -> Result<i64> {
        let n = self.int()?;
        if !(lo..=hi).contains(&n) {
            return Err(self.bad(&format!("must be within {lo}..={hi}")));
        }
        Ok(n)
    }

    /// `on`/`true`/`1` or `off`/`false`/`0` (any case).
    pub fn on_off(&self) -> Result<bool> {
        match self.value.to_ascii_lowercase().as_str() {
            "on" | "true" | "1" => Ok(true),
            "off" | "false" | "0" => Ok(false),
            _ => Err(self.bad("use on or off")),
        }
    }

    /// A number of seconds >= 0 as milliseconds; `none` or `0`: None (kept
    /// for ever).
    pub fn seconds_as_ms_or_none(&self) -> Result<Option<i64>> {
        if self.value == "none" || self.value == "0" {
            return Ok(None);
        }
        let n = self.int()?;
        if n < 0 {
            return Err(self.bad("must be >= 0"));
        }
        Ok(Some(n.saturating_mul(1_000)))
    }
}

fn decode(s: &str) -> Result<String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| Error::InvalidArgument(format!("{s:?} is not valid UTF-8 once decoded")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_forms() {
        let c = StoreConfig::parse("tasks.db").unwrap();
        assert_eq!(c.path, Some(PathBuf::from("tasks.db")));
        assert_eq!(c.shards, None);
        let c = StoreConfig::parse("sqlite:///tmp/q?shards=4&synchronous=full").unwrap();
        assert_eq!(c.path, Some(PathBuf::from("/tmp/q")));
        assert_eq!(c.shards, Some(4));
        assert_eq!(c.synchronous, Synchronous::Full);
        assert!(StoreConfig::parse("memory://").unwrap().path.is_none());
        let c = StoreConfig::parse("sqlite://rel/dir%20x?retention_s=none").unwrap();
        assert_eq!(c.path, Some(PathBuf::from("rel/dir x")));
        assert_eq!(c.retention_ms, None);
    }

    #[test]
    fn option_values_are_read_and_refused_by_name() {
        let v = |value: &'static str| OptionValue { key: "k", value };
        assert_eq!(v("7").int_within(1, 9).unwrap(), 7);
        let err = v("10").int_within(1, 9).unwrap_err().to_string();
        assert!(err.contains("store option k=\"10\": must be within 1..=9"), "{err}");
        assert!(v("x").int().unwrap_err().to_string().contains("not an integer"));
        assert_eq!((v("ON").on_off().unwrap(), v("0").on_off().unwrap()), (true, false));
        assert!(v("maybe").on_off().is_err());
        assert_eq!(v("none").seconds_as_ms_or_none().unwrap(), None);
        assert_eq!(v("3").seconds_as_ms_or_none().unwrap(), Some(3_000));
        assert!(v("-1").seconds_as_ms_or_none().is_err());
    }

    #[test]
    fn bad_urls_say_why() {
        for bad in [
            "",
            "sqlite://",
            "ftp://x",
            "q?shards=0",
            "q?shards=65",
            "q?shards=two",
            "q?synchronous=sometimes",
            "q?colour=blue",
            "q?max_payload=0",
        ] {
            let err = StoreConfig::parse(bad).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{bad}: {err}");
        }
    }
}
