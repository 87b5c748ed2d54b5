//! The storage and scheduling core of ferroq, a persistent task queue.
//!
//! Everything that touches storage and every decision about which task runs
//! next lives here, in pure Rust: the [`Store`] trait and its backends,
//! [`Backoff`] policies and the [`TokenBucket`] rate limiter. The Python
//! binding (`ferroq._core`) is a thin layer over this crate.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod backoff;
pub mod clock;
pub mod columns;
pub mod error;
pub mod ratelimit;
pub mod store;
pub mod task;

pub use backoff::{Backoff, BackoffStrategy};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{Error, Result};
pub use ratelimit::TokenBucket;
pub use store::{open, open_with_clock, Store, StoreConfig};
pub use task::{NewTask, Status, Task};
