//! The store conformance suite: one backend-blind description of how a
//! ferroq store behaves, run against every backend.
//!
//! Each behaviour is a plain function taking a [`Backend`]; the
//! `conformance!` macro turns it into one `#[test]` per backend
//! (`memory`, `memory_4` = `memory://?shards=4`, `sqlite_1`, `sqlite_4`, and
//! `postgres` when `$FERROQ_TEST_PG_URL` names a test database).
//! Time is a [`ManualClock`], so lease expiry, backoff and deadlines are
//! checked without sleeping. Tests that only make sense on disk (files,
//! reopening, permissions) live in `on_disk.rs` and run on the SQLite
//! backends only.
//!
//! A new store behaviour lands with a test here (STYLE.md habit 4).

// A failed expectation is a failed test: the helpers unwrap freely.
#![allow(clippy::unwrap_used, clippy::expect_used)]

// Each module is a group of behaviours.
mod bad_input;
mod concurrency;
mod durability;
mod events;
mod flow;
mod harness;
mod home;
mod identity;
mod integrity;
mod limits;
mod on_disk;
mod ordering;
mod pg;
mod queue_flow;
mod redis_server;
mod serial;
mod steer;
mod verbs;
mod wake;

/// Expands to one `#[test]` per backend for each named behaviour
/// function of the enclosing module (`fn name(b: Backend)`).
#[macro_export]
macro_rules! conformance {
    (@backend $mod:ident, $backend:expr, $($name:ident),* $(,)?) => {
        mod $mod {
            $(
                #[test]
                fn $name() {
                    if let Some(why) = $backend.unavailable() {
                        eprintln!("{why}");
                        return;
                    }
                    super::$name($backend)
                }
            )*
        }
    };
    ($($name:ident),* $(,)?) => {
        $crate::conformance!(@backend memory, $crate::harness::Backend::Memory, $($name),*);
        $crate::conformance!(@backend memory_4, $crate::harness::Backend::Memory4, $($name),*);
        $crate::conformance!(@backend sqlite_1, $crate::harness::Backend::Sqlite1, $($name),*);
        $crate::conformance!(@backend sqlite_4, $crate::harness::Backend::Sqlite4, $($name),*);
        $crate::conformance!(@backend postgres, $crate::harness::Backend::Postgres, $($name),*);
        $crate::conformance!(@backend redis, $crate::harness::Backend::Redis, $($name),*);
    };
}

/// Like `conformance!`, for behaviours that need files: SQLite backends only.
#[macro_export]
macro_rules! conformance_on_disk {
    ($($name:ident),* $(,)?) => {
        $crate::conformance!(@backend sqlite_1, $crate::harness::Backend::Sqlite1, $($name),*);
        $crate::conformance!(@backend sqlite_4, $crate::harness::Backend::Sqlite4, $($name),*);
    };
}
