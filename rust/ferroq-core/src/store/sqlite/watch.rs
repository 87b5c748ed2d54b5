//! Cross-process wake-ups without polling (Linux): every commit in WAL mode
//! appends to a shard's `-wal` file, so an inotify watch on the store
//! directory sees another process's enqueue the moment it commits, and wakes
//! this process's waiting claimers. Where inotify is unavailable the store
//! falls back to polling `PRAGMA data_version`.

use super::Wake;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A running directory watch; dropping it stops the watching thread.
pub struct DirWatch {
    #[cfg(target_os = "linux")]
    inner: Option<linux::Inner>,
    stop: Arc<AtomicBool>,
}

impl DirWatch {
    /// Watches `dir` and bumps `wake` on every write to a file in it.
    /// Returns a watch that does nothing when inotify cannot be used.
    pub fn start(dir: &Path, wake: Arc<Wake>) -> DirWatch {
        let stop = Arc::new(AtomicBool::new(false));
        #[cfg(target_os = "linux")]
        {
            let inner = linux::start(dir, wake, stop.clone());
            DirWatch { inner, stop }
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = (dir, wake);
            DirWatch { stop }
        }
    }

    /// True when commits are seen without polling.
    pub fn active(&self) -> bool {
        #[cfg(target_os = "linux")]
        {
            self.inner.is_some()
        }
        #[cfg(not(target_os = "linux"))]
        {
            false
        }
    }
}

impl Drop for DirWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        #[cfg(target_os = "linux")]
        if let Some(inner) = self.inner.take() {
            inner.shutdown();
        }
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use super::super::Wake;
    use inotify::{Inotify, WatchDescriptor, WatchMask, Watches};
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    pub struct Inner {
        watches: Watches,
        wd: WatchDescriptor,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Inner {
        /// Removing the watch makes the kernel send IN_IGNORED, which wakes
        /// the thread's blocking read so it can see the stop flag.
        pub fn shutdown(mut self) {
            let _ = self.watches.remove(self.wd.clone());
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    pub fn start(dir: &Path, wake: Arc<Wake>, stop: Arc<AtomicBool>) -> Option<Inner> {
        let mut inotify = Inotify::init().ok()?;
        let mut watches = inotify.watches();
        let wd = watches.add(dir, WatchMask::MODIFY | WatchMask::CREATE | WatchMask::MOVED_TO).ok()?;
        let thread = std::thread::Builder::new()
            .name("ferroq-watch".into())
            .spawn(move || {
                let mut buf = [0u8; 4096];
                while !stop.load(Ordering::SeqCst) {
                    match inotify.read_events_blocking(&mut buf) {
                        Ok(events) => {
                            // Nobody waiting: nobody to wake (a new waiter reads
                            // data_version first, so it sees this commit anyway).
                            if events.count() > 0 && wake.has_waiters() {
                                // The event comes with the WAL write, a moment before
                                // SQLite publishes the commit in its shared index:
                                // wake now, and once more just after.
                                wake.bump();
                                std::thread::sleep(std::time::Duration::from_micros(200));
                                wake.bump();
                            }
                        }
                        Err(_) => return,
                    }
                }
            })
            .ok()?;
        Some(Inner { watches, wd, thread: Some(thread) })
    }
}
