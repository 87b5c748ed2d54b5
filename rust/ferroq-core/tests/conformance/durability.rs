//! Durability: a closed store is self-contained in its shard files, and a
//! live store can be copied consistently with `backup` (issue 13).

use crate::harness::*;
use crate::wake::claim_params;
use ferroq_core::store::postgres::{PgConfig, PostgresStore};
use ferroq_core::store::sqlite::{shard_file, SqliteStore};
use ferroq_core::store::{BackupParams, CompleteParams, FailParams, ListParams, Retry};
use ferroq_core::{Error, Status, Store, StoreConfig};
use parking_lot::Mutex;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

crate::conformance!(a_backup_made_while_sending_holds_every_acknowledged_task, a_backup_needs_a_new_or_empty_directory);

/// The behaviours that need files (a module of their own: both macros
/// name their test modules after the backends).
mod files {
    use super::*;
    crate::conformance_on_disk!(closing_after_a_scheduler_leaves_every_commit_in_the_db_files);
}

/// Every task of a store, in id order.
fn all_tasks(store: &dyn Store) -> Vec<ferroq_core::Task> {
    store.list(&ListParams { limit: 100_000, ..Default::default() }).unwrap()
}

/// Copies only the shard files (`.db`, not `-wal` / `-shm`) of `from` into `to`.
fn copy_db_files_only(from: &Path, to: &Path, shards: u32) {
    std::fs::create_dir_all(to).unwrap();
    for i in 0..shards {
        std::fs::copy(from.join(shard_file(i)), to.join(shard_file(i))).unwrap();
    }
}

fn closing_after_a_scheduler_leaves_every_commit_in_the_db_files(b: Backend) {
    let env = b.open();
    let ids: Vec<i64> = (0..40).map(|_| env.add("q")).collect();
    // What a scheduler does: wait for changes (which reads each shard's
    // data_version on its second connection), claim, complete.
    let token = env.store.change_token().unwrap();
    env.store.wait_for_change(token, Duration::from_millis(1)).unwrap();
    let claimed = env.store.claim(&claim_params("q", "w")).unwrap();
    for t in &claimed {
        env.complete(t.id, "w", b"r").unwrap();
    }
    env.store.wait_for_change(env.store.change_token().unwrap(), Duration::from_millis(1)).unwrap();
    let before = all_tasks(env.store.as_ref());
    assert_eq!(before.len(), ids.len());

    let dir = env.path.clone().unwrap();
    let copy = dir.with_file_name("copy");
    drop(env.store);
    copy_db_files_only(&dir, &copy, b.shards());
    let reopened = ferroq_core::open_with_clock(&format!("sqlite://{}", copy.display()), env.clock.clone()).unwrap();
    let after = all_tasks(reopened.as_ref());
    assert_eq!(after.len(), before.len(), "the .db files alone hold every task");
    assert_eq!(after, before);
    assert!(after.iter().filter(|t| t.status == Status::Done).count() == claimed.len());
}

fn backup(store: &dyn Store, dest: &Path) -> Result<(), Error> {
    store.backup(&BackupParams { dest: dest.to_path_buf() })
}

fn a_backup_made_while_sending_holds_every_acknowledged_task(b: Backend) {
    let env = b.open();
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("backup");
    if b == Backend::Postgres {
        let e = backup(env.store.as_ref(), &dest).unwrap_err();
        assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("pg_dump")), "{e:?}");
        assert!(!dest.exists());
        return;
    }
    if b == Backend::Redis {
        // Backed up by the server's own tools (BGSAVE), never half-written here.
        let e = backup(env.store.as_ref(), &dest).unwrap_err();
        assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("BGSAVE")), "{e:?}");
        assert!(!dest.exists());
        return;
    }
    for _ in 0..30 {
        env.add("q");
    }
    let claimed = env.claim("q", "w", 10);
    for t in &claimed[..5] {
        env.complete(t.id, "w", b"r").unwrap();
    }
    // Another thread keeps sending, before, during and after the backup.
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (store, acked, stop) = (env.store.clone(), acked.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let id = store.enqueue(&[task("sent")]).unwrap()[0].id;
                acked.lock().push(id);
            }
        })
    };
    while acked.lock().len() < 50 {
        std::thread::yield_now();
    }
    let before = all_tasks(env.store.as_ref());
    let acked_before = acked.lock().clone();
    backup(env.store.as_ref(), &dest).unwrap();
    while acked.lock().len() < acked_before.len() + 50 {
        std::thread::yield_now();
    }
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();

    // Only shard files: the copy is self-contained.
    let mut names: Vec<String> =
        std::fs::read_dir(&dest).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, (0..b.shards()).map(shard_file).collect::<Vec<_>>());

    let url = format!("sqlite://{}", dest.display());
    let copy = SqliteStore::open(StoreConfig::parse(&url).unwrap(), env.clock.clone()).unwrap();
    assert_eq!(copy.shard_count(), b.shards());
    let copied = all_tasks(&copy);
    let by_id: std::collections::HashMap<i64, &ferroq_core::Task> = copied.iter().map(|t| (t.id, t)).collect();
    for t in &before {
        // Everything before the backup, exactly as it was (no task moved
        // but by the sender, which only adds).
        assert_eq!(by_id.get(&t.id), Some(&t), "task {} as it was before the backup", t.id);
    }
    for id in &acked_before {
        assert!(by_id.contains_key(id), "acknowledged task {id} is in the copy");
    }
    let now = all_tasks(env.store.as_ref());
    assert!(copied.len() < now.len(), "the copy is a snapshot, not the store after the sends");
    let source: std::collections::HashMap<i64, &ferroq_core::Task> = now.iter().map(|t| (t.id, t)).collect();
    for t in &copied {
        assert_eq!(source.get(&t.id), Some(&t), "the copy holds only what the store holds");
    }
    // The copy is a working store: new ids do not collide with copied ones.
    let next = copy.enqueue(&[task("q")]).unwrap()[0].id;
    assert!(!by_id.contains_key(&next));
    assert!(!copy.claim(&claim_params("sent", "w2")).unwrap().is_empty());
}

fn a_backup_needs_a_new_or_empty_directory(b: Backend) {
    let env = b.open();
    env.add("q");
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("keep.txt"), b"mine").unwrap();
    assert_invalid(backup(env.store.as_ref(), &full));
    assert_eq!(std::fs::read_dir(&full).unwrap().count(), 1, "nothing written into a non-empty directory");
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    assert_invalid(backup(env.store.as_ref(), &file));
    assert_invalid(backup(env.store.as_ref(), Path::new("")));
    if b == Backend::Postgres || b == Backend::Redis {
        return;
    }
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    backup(env.store.as_ref(), &empty).unwrap();
    assert_invalid(backup(env.store.as_ref(), &empty));
    let copy = ferroq_core::open_with_clock(&format!("sqlite://{}", empty.display()), env.clock.clone()).unwrap();
    assert_eq!(all_tasks(copy.as_ref()), all_tasks(env.store.as_ref()));
}

/// Which client message the proxy cuts after.
type Trigger = Box<dyn Fn(&[u8]) -> bool + Send>;

/// A TCP proxy to the test PostgreSQL server that can lose one reply: when
/// armed, it passes on the first client message the trigger accepts, lets
/// the server act on it (commit), swallows the answer and cuts that
/// connection — a commit whose acknowledgement never arrived.
struct LosingProxy {
    port: u16,
    trigger: Arc<Mutex<Option<Trigger>>>,
    cuts: Arc<AtomicUsize>,
}

impl LosingProxy {
    fn start(server: String) -> LosingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let trigger: Arc<Mutex<Option<Trigger>>> = Arc::new(Mutex::new(None));
        let cuts = Arc::new(AtomicUsize::new(0));
        let (t, c) = (trigger.clone(), cuts.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(upstream) = TcpStream::connect(&server) else { return };
                Self::pump(client, upstream, t.clone(), c.clone());
            }
        });
        LosingProxy { port, trigger, cuts }
    }

    fn pump(client: TcpStream, upstream: TcpStream, trigger: Arc<Mutex<Option<Trigger>>>, cuts: Arc<AtomicUsize>) {
        let cut = Arc::new(AtomicBool::new(false));
        let (mut c_in, mut u_out) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
        let c = cut.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n @ 1..) = c_in.read(&mut buf) {
                let mut armed = trigger.lock();
                if armed.as_ref().is_some_and(|t| t(&buf[..n])) {
                    *armed = None;
                    c.store(true, Ordering::SeqCst);
                }
                drop(armed);
                if u_out.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
        let (mut u_in, mut c_out) = (upstream, client);
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n @ 1..) = u_in.read(&mut buf) {
                if cut.load(Ordering::SeqCst) {
                    // The server has answered, so it has committed: the
                    // reply is lost on its way back.
                    cuts.fetch_add(1, Ordering::SeqCst);
                    let _ = c_out.shutdown(Shutdown::Both);
                    let _ = u_in.shutdown(Shutdown::Both);
                    return;
                }
                if c_out.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
    }

    /// Loses the reply to the next client message `trigger` accepts.
    fn arm(&self, trigger: impl Fn(&[u8]) -> bool + Send + 'static) {
        *self.trigger.lock() = Some(Box::new(trigger));
    }

    fn cuts(&self) -> usize {
        self.cuts.load(Ordering::SeqCst)
    }
}

/// `env`'s PostgreSQL store again, through `proxy`, on one connection.
fn through(proxy: &LosingProxy, env: &Env) -> PostgresStore {
    let mut url = url::Url::parse(&env.url).unwrap();
    url.set_host(Some("127.0.0.1")).unwrap();
    url.set_port(Some(proxy.port)).unwrap();
    let url = format!("{url}&pool=1&notify=off");
    PostgresStore::open(PgConfig::parse(&url).unwrap(), env.clock.clone()).unwrap()
}

fn upstream_addr() -> Option<String> {
    if let Some(why) = Backend::Postgres.unavailable() {
        eprintln!("{why}");
        return None;
    }
    let url = url::Url::parse(&std::env::var(PG_URL_VAR).ok()?).ok()?;
    Some(format!("{}:{}", url.host_str()?, url.port().unwrap_or(5432)))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn postgres_a_completion_whose_reply_was_lost_is_not_reported_as_already_finished() {
    let Some(server) = upstream_addr() else { return };
    let env = Backend::Postgres.open();
    let proxy = LosingProxy::start(server);
    let store = through(&proxy, &env);
    let (a, b) = (env.add("q"), env.add("q"));
    assert_eq!(store.claim(&claim_params("q", "w")).unwrap().len(), 2);
    let complete = |id: i64, result: &[u8]| {
        store
            .complete(&[CompleteParams { id, worker: "w".into(), result: result.to_vec(), force: false }])
            .unwrap()
            .pop()
            .unwrap()
    };
    // Prepares the statement on the one connection, so that the next
    // message sent is the completion itself.
    complete(a, b"ra").unwrap();
    proxy.arm(|_| true);
    let replayed = complete(b, b"rb");
    assert_eq!(proxy.cuts(), 1, "the reply was lost and the call replayed");
    replayed.unwrap();
    let t = env.get(b);
    assert_eq!((t.status, t.worker.as_deref(), t.result.as_deref()), (Status::Done, Some("w"), Some(&b"rb"[..])));
    // Without a lost reply, completing twice is still refused...
    assert_finished(complete(b, b"rb"), b, Status::Done);
    // ...and a replay does not hide a different outcome.
    let c = env.add("q");
    assert_eq!(store.claim(&claim_params("q", "w")).unwrap().len(), 1);
    env.complete(c, "w", b"first").unwrap();
    proxy.arm(|_| true);
    assert_finished(complete(c, b"second"), c, Status::Done);
}

#[test]
fn postgres_a_failure_whose_reply_was_lost_is_not_reported_as_lost() {
    let Some(server) = upstream_addr() else { return };
    let env = Backend::Postgres.open();
    let proxy = LosingProxy::start(server);
    let store = through(&proxy, &env);
    let retried = env.enqueue(attempts("q", 3)).id;
    let failed = env.add("q");
    assert_eq!(store.claim(&claim_params("q", "w")).unwrap().len(), 2);
    let fail = |id: i64, error: &str, retry: Retry| {
        store
            .fail(&[FailParams { id, worker: "w".into(), error: error.into(), retry, force: false }])
            .unwrap()
            .pop()
            .unwrap()
    };
    for (id, retry, want) in [(retried, Retry::After(60_000), Status::Queued), (failed, Retry::Never, Status::Failed)] {
        // The COMMIT goes through; its acknowledgement does not.
        proxy.arm(|m| contains(m, b"COMMIT"));
        let before = proxy.cuts();
        let got = fail(id, "boom", retry);
        assert_eq!(proxy.cuts(), before + 1, "the reply was lost and the call replayed");
        assert_eq!(got.unwrap(), want);
        let t = env.get(id);
        assert_eq!((t.status, t.error.as_deref()), (want, Some("boom")));
    }
    assert_finished(fail(failed, "boom", Retry::Never), failed, Status::Failed);
}
