//! Cross-process wake-ups without polling (Linux). Every commit in WAL mode
//! appends to a shard's `-wal` file, so an inotify watch on the store
//! directory becomes readable the moment another process commits. A thread
//! waiting for a change blocks on that descriptor (with a timeout) instead
//! of polling `PRAGMA data_version`; nothing runs while nobody waits. Where
//! inotify is unavailable the store falls back to polling.
//!
//! The watch is on the directory only while some thread of this process
//! waits ([`DirWatch::arm`]): a watch makes the kernel queue an event on
//! every write to every file in the directory, which costs each commit
//! (any process's) about a tenth of its time. A sender that nobody in this
//! process is waiting on pays nothing for it.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// A watch on the store directory.
pub struct DirWatch {
    #[cfg(target_os = "linux")]
    inner: parking_lot::Mutex<inotify::Inotify>,
    #[cfg(target_os = "linux")]
    armed: parking_lot::Mutex<Armed>,
    dir: PathBuf,
}

/// How many threads wait, and the watch they keep on the directory.
#[cfg(target_os = "linux")]
struct Armed {
    waiters: usize,
    watches: inotify::Watches,
    wd: Option<inotify::WatchDescriptor>,
}

/// Keeps the directory watched while held (see [`DirWatch::arm`]).
pub struct ArmGuard<'a> {
    watch: &'a DirWatch,
    /// False when the watch could not be added: waiters then poll.
    pub watching: bool,
    /// True when this guard added the watch. A commit whose WAL write came
    /// just before that but which SQLite had not yet published is in
    /// neither the caller's first read nor the watch: such a waiter looks
    /// again after [`FRESH_RECHECK`] rather than a whole slice.
    pub fresh: bool,
}

/// How soon a waiter that just added the watch looks at the store again.
pub const FRESH_RECHECK: Duration = Duration::from_millis(1);

impl Drop for ArmGuard<'_> {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        {
            let mut armed = self.watch.armed.lock();
            armed.waiters = armed.waiters.saturating_sub(1);
            if armed.waiters == 0 {
                if let Some(wd) = armed.wd.take() {
                    // Fails only when the directory is gone, which removed the watch.
                    let _ = armed.watches.remove(wd);
                }
            }
        }
    }
}

impl DirWatch {
    /// A watch for `dir`, not yet armed; None when inotify cannot be used
    /// (then waiters poll).
    pub fn start(dir: &Path) -> Option<DirWatch> {
        #[cfg(target_os = "linux")]
        {
            let inotify = inotify::Inotify::init().ok()?;
            let watches = inotify.watches();
            Some(DirWatch {
                inner: parking_lot::Mutex::new(inotify),
                armed: parking_lot::Mutex::new(Armed { waiters: 0, watches, wd: None }),
                dir: dir.to_path_buf(),
            })
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = dir;
            None
        }
    }

    /// Watches the directory until the guard drops. A caller arms first and
    /// only then reads the state it waits to see change, so a commit made in
    /// between is seen either by that read or by the watch.
    pub fn arm(&self) -> ArmGuard<'_> {
        #[cfg(target_os = "linux")]
        {
            use inotify::WatchMask;
            let mut armed = self.armed.lock();
            armed.waiters += 1;
            let mut fresh = false;
            if armed.wd.is_none() {
                // Events left from the last watch (its removal queues one)
                // would wake the first wait for nothing: drop them. Safe
                // because the caller reads the store's state after this.
                if let Some(mut inotify) = self.inner.try_lock() {
                    let mut buf = [0u8; 4096];
                    // Non-blocking: an empty queue ends the loop with WouldBlock.
                    while let Ok(mut events) = inotify.read_events(&mut buf) {
                        if events.next().is_none() {
                            break;
                        }
                    }
                }
                let mask = WatchMask::MODIFY | WatchMask::CREATE | WatchMask::MOVED_TO;
                armed.wd = armed.watches.add(&self.dir, mask).ok();
                fresh = true;
            }
            let watching = armed.wd.is_some();
            ArmGuard { watch: self, watching, fresh }
        }
        #[cfg(not(target_os = "linux"))]
        {
            ArmGuard { watch: self, watching: false, fresh: false }
        }
    }

    /// Blocks until a file in the directory is written or `timeout` passes;
    /// true when something was written. Returns None at once when another
    /// thread is already watching (that thread wakes the rest). Only
    /// meaningful while armed.
    pub fn wait(&self, timeout: Duration) -> Option<bool> {
        #[cfg(target_os = "linux")]
        {
            use rustix::event::{poll, PollFd, PollFlags, Timespec};
            use std::os::fd::AsFd;
            let mut inotify = self.inner.try_lock()?;
            let mut buf = [0u8; 4096];
            // Events left from before return at once; the caller re-reads
            // data_version and comes back to wait on an empty queue. (Draining
            // them first could swallow a commit made since its last look.)
            let ready = {
                let fd = inotify.as_fd();
                let mut fds = [PollFd::new(&fd, PollFlags::IN)];
                let ts = Timespec { tv_sec: timeout.as_secs() as _, tv_nsec: timeout.subsec_nanos() as _ };
                poll(&mut fds, Some(&ts)).unwrap_or(0) > 0
            };
            if ready {
                let _ = inotify.read_events(&mut buf);
            }
            Some(ready)
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = timeout;
            None
        }
    }
}
