//! Cross-process wake-ups without polling (Linux). Every commit in WAL mode
//! appends to a shard's `-wal` file, so an inotify watch on the store
//! directory becomes readable the moment another process commits. A thread
//! waiting for a change blocks on that descriptor (with a timeout) instead
//! of polling `PRAGMA data_version`; nothing runs while nobody waits. Where
//! inotify is unavailable the store falls back to polling.

use std::path::Path;
use std::time::Duration;

/// A watch on the store directory.
pub struct DirWatch {
    #[cfg(target_os = "linux")]
    inner: parking_lot::Mutex<inotify::Inotify>,
}

impl DirWatch {
    /// Watches `dir` for writes to the files in it; None when inotify cannot
    /// be used (then waiters poll).
    pub fn start(dir: &Path) -> Option<DirWatch> {
        #[cfg(target_os = "linux")]
        {
            use inotify::{Inotify, WatchMask};
            let inotify = Inotify::init().ok()?;
            inotify.watches().add(dir, WatchMask::MODIFY | WatchMask::CREATE | WatchMask::MOVED_TO).ok()?;
            Some(DirWatch { inner: parking_lot::Mutex::new(inotify) })
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = dir;
            None
        }
    }

    /// Blocks until a file in the directory is written or `timeout` passes;
    /// true when something was written. Returns None at once when another
    /// thread is already watching (that thread wakes the rest).
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
                let ts = Timespec {
                    tv_sec: timeout.as_secs() as _,
                    tv_nsec: timeout.subsec_nanos() as _,
                };
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
