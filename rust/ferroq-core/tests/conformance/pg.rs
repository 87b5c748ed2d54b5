//! Behaviour only PostgreSQL has: several hosts on one database (here,
//! several store handles with their own connections), wake-ups by
//! LISTEN/NOTIFY or polling, connections replaced after the server drops
//! them, and clear, password-free errors when the server cannot be used.
//!
//! Each test skips (with a message) when `$FERROQ_TEST_PG_URL` is unset.

use crate::harness::*;
use crate::wake::{claim_params, LONG_WAIT};
use ferroq_core::store::postgres::{PgConfig, PostgresStore};
use ferroq_core::store::ClaimParams;
use ferroq_core::{Error, ManualClock, NewTask, Status, Store};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The test database's URL, or None (and a message) when there is none.
fn base() -> Option<String> {
    match Backend::Postgres.unavailable() {
        Some(why) => {
            eprintln!("{why}");
            None
        }
        None => std::env::var(PG_URL_VAR).ok(),
    }
}

/// A superuser connection to the test database, for setting the stage.
fn admin(base: &str) -> postgres::Client {
    postgres::Client::connect(base, postgres::NoTls).unwrap()
}

/// A second handle on `env`'s schema, as another host would open it.
fn other_host(env: &Env, options: &str) -> PostgresStore {
    let url = if options.is_empty() { env.url.clone() } else { format!("{}&{options}", env.url) };
    PostgresStore::open(PgConfig::parse(&url).unwrap(), env.clock.clone()).unwrap()
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn an_enqueue_on_one_host_wakes_a_claimer_on_another() {
    if base().is_none() {
        return;
    }
    for options in ["", "notify=off&poll_ms=20"] {
        let env = Backend::Postgres.open();
        let b = other_host(&env, options);
        if options.is_empty() {
            wait_until("the listener", || b.listening());
        } else {
            assert!(!b.listening());
        }
        let producer = env.store.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(150));
            producer.enqueue(&[task("q")]).unwrap()[0].id
        });
        let started = Instant::now();
        let got = b.claim_wait(&claim_params("q", "w"), LONG_WAIT).unwrap();
        let took = started.elapsed();
        let id = t.join().unwrap();
        assert_eq!(got.iter().map(|t| t.id).collect::<Vec<_>>(), vec![id], "{options}");
        // Woken by the other handle's commit, not by the end of the wait.
        assert!(took < Duration::from_secs(2), "{options:?}: claim_wait took {took:?}");
        // And a completion there ends a wait_finished here.
        let store = env.store.clone();
        let finisher = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            let p = ferroq_core::store::CompleteParams { id, worker: "w".into(), result: b"ok".to_vec(), force: false };
            store.complete(&[p]).unwrap().pop().unwrap().unwrap();
        });
        let t = b.wait_finished(id, LONG_WAIT).unwrap();
        finisher.join().unwrap();
        assert_eq!(t.status, Status::Done, "{options}");
    }
}

#[test]
fn concurrent_claimers_never_share_a_task() {
    if base().is_none() {
        return;
    }
    let env = Backend::Postgres.open();
    let tasks: Vec<NewTask> = (0..600u32).map(|i| NewTask::new("q", "job", i.to_le_bytes().to_vec())).collect();
    let ids: HashSet<i64> = env.store.enqueue(&tasks).unwrap().iter().map(|e| e.id).collect();
    let hosts: Vec<Arc<PostgresStore>> = (0..4).map(|_| Arc::new(other_host(&env, ""))).collect();
    let threads: Vec<_> = hosts
        .iter()
        .enumerate()
        .map(|(h, store)| {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                loop {
                    let p = ClaimParams {
                        queue: "q".into(),
                        worker: format!("w{h}"),
                        limit: 7,
                        lease_ms: 60_000,
                        resources: None,
                        home: None,
                    };
                    let got = store.claim(&p).unwrap();
                    if got.is_empty() {
                        return mine;
                    }
                    mine.extend(got.iter().map(|t| t.id));
                }
            })
        })
        .collect();
    let mut seen = Vec::new();
    for t in threads {
        seen.extend(t.join().unwrap());
    }
    let unique: HashSet<i64> = seen.iter().copied().collect();
    assert_eq!(seen.len(), unique.len(), "a task was claimed twice");
    assert_eq!(unique, ids);
}

#[test]
fn concurrent_sends_of_one_key_store_one_task() {
    if base().is_none() {
        return;
    }
    let env = Backend::Postgres.open();
    let hosts: Vec<Arc<PostgresStore>> = (0..4).map(|_| Arc::new(other_host(&env, ""))).collect();
    let threads: Vec<_> = hosts
        .iter()
        .map(|store| {
            let store = store.clone();
            std::thread::spawn(move || {
                // Overlapping keys in different orders in every batch.
                let mut batch: Vec<NewTask> = (0..50).map(|i| keyed("q", &format!("k{i}"))).collect();
                batch.reverse();
                store.enqueue(&batch).unwrap()
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let inserted: usize = results.iter().flatten().filter(|e| e.inserted).count();
    assert_eq!(inserted, 50, "each key stored once");
    for r in &results[1..] {
        assert_eq!(r.iter().map(|e| e.id).collect::<Vec<_>>(), results[0].iter().map(|e| e.id).collect::<Vec<_>>());
    }
    assert_eq!(env.total(), 50);
}

#[test]
fn connections_dropped_by_the_server_are_replaced() {
    let Some(base) = base() else { return };
    let env = Backend::Postgres.open_with("application_name=ferroq-kill-test&pool=3");
    let store = PostgresStore::open(PgConfig::parse(&env.url).unwrap(), env.clock.clone()).unwrap();
    wait_until("the listener", || store.listening());
    // Three pooled connections in use at once, then idle.
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| store.enqueue(&[task("q")]).unwrap());
        }
    });
    let kill = "SELECT pid FROM pg_stat_activity, pg_terminate_backend(pid)
        WHERE application_name = 'ferroq-kill-test' AND pid <> pg_backend_pid()";
    let mut a = admin(&base);
    let pids: Vec<i32> = a.query(kill, &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert!(pids.len() >= 2, "terminated {} connections", pids.len());
    // Like a server shutting down: the call returns before the backends
    // are gone, so wait for them.
    wait_until("the terminated backends to exit", || {
        let left: i64 =
            a.query_one("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)", &[&pids]).unwrap().get(0);
        left == 0
    });
    // A restart takes longer than this; connections idle that long are
    // checked before use.
    std::thread::sleep(Duration::from_millis(600));
    // What a server restart does to idle connections: the next calls
    // notice before using them and connect afresh.
    assert_eq!(store.counts().unwrap().iter().map(|c| c.count).sum::<u64>(), 3);
    let id = store.enqueue(&[task("q")]).unwrap()[0].id;
    assert_eq!(store.get(&[id]).unwrap()[0].as_ref().map(|t| t.status), Some(Status::Queued));
    // The listener reconnects, and wake-ups work again.
    wait_until("the listener to reconnect", || store.listening());
    let other = env.store.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        other.enqueue(&[task("woken")]).unwrap();
    });
    let started = Instant::now();
    let got = store.claim_wait(&claim_params("woken", "w"), LONG_WAIT).unwrap();
    t.join().unwrap();
    assert_eq!(got.len(), 1);
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
}

#[test]
fn unusable_servers_get_clear_errors_without_the_password() {
    let Some(base) = base() else { return };
    let clock = || Arc::new(ManualClock::new(T0));
    let open = |url: &str| ferroq_core::open_with_clock(url, clock()).map(|_| ());
    let cfg = PgConfig::parse(&base).unwrap();
    let host = format!("{}:{}", cfg.host, cfg.port);
    let secret = "Sw0rdf1sh-not-for-logs";
    let mut a = admin(&base);
    a.batch_execute(&format!(
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ferroq_pw_test')
         THEN CREATE ROLE ferroq_pw_test LOGIN; END IF; END $$;
         ALTER ROLE ferroq_pw_test PASSWORD '{secret}'; DROP SCHEMA IF EXISTS t_pw_test CASCADE;"
    ))
    .unwrap();
    let cases = [
        // Nothing listens on port 1.
        (format!("postgresql://u:{secret}@127.0.0.1:1/db"), "refused"),
        (format!("postgresql://ferroq_pw_test:wrong-{secret}@{host}/{}", cfg.dbname), "password authentication failed"),
        (format!("postgresql://{}:{secret}@{host}/no_such_db_here", cfg.user), "does not exist"),
    ];
    for (url, want) in &cases {
        match open(url) {
            Err(Error::Unavailable(m)) => {
                assert!(m.contains(want), "{url}: {m}");
                assert!(!m.contains(secret), "the password leaked: {m}");
            }
            other => panic!("{want}: expected Unavailable, got {other:?}"),
        }
    }
    // The right password gets in, and the description does not show it.
    let good = format!("postgresql://ferroq_pw_test:{secret}@{host}/{}?schema=t_pw_test", cfg.dbname);
    a.batch_execute(&format!("GRANT CREATE ON DATABASE {} TO ferroq_pw_test", cfg.dbname)).unwrap();
    let store = ferroq_core::open_with_clock(&good, clock()).unwrap();
    assert!(store.describe().contains("ferroq_pw_test@"), "{}", store.describe());
    assert!(!store.describe().contains(secret));
    drop(store);
    a.batch_execute("DROP SCHEMA t_pw_test CASCADE").unwrap();
    a.batch_execute(&format!("REVOKE CREATE ON DATABASE {} FROM ferroq_pw_test", cfg.dbname)).unwrap();
    // Malformed URLs are refused before connecting.
    for bad in [format!("postgresql://u:{secret}@h/db?pool=many"), format!("postgresql://u:{secret}@/db")] {
        match open(&bad) {
            Err(Error::InvalidArgument(m)) => assert!(!m.contains(secret), "{m}"),
            other => panic!("{bad}: {other:?}"),
        }
    }
}

#[test]
fn a_schema_holding_something_else_is_not_a_store() {
    let Some(base) = base() else { return };
    let mut a = admin(&base);
    a.batch_execute(
        "DROP SCHEMA IF EXISTS t_other_app CASCADE; CREATE SCHEMA t_other_app;
         CREATE TABLE t_other_app.invoices (id int); INSERT INTO t_other_app.invoices VALUES (7);",
    )
    .unwrap();
    let r = ferroq_core::open(&format!("{base}?schema=t_other_app"));
    assert!(matches!(r, Err(Error::NotAStore(_))), "{:?}", r.err());
    let n: i64 = a.query_one("SELECT count(*) FROM t_other_app.invoices", &[]).unwrap().get(0);
    assert_eq!(n, 1, "the other schema was left as it was");
    a.batch_execute("DROP SCHEMA t_other_app CASCADE").unwrap();

    // A store written by a newer ferroq is refused too.
    let env = Backend::Postgres.open();
    let schema = env.pg_schema.clone().unwrap();
    a.batch_execute(&format!("UPDATE {schema}.meta SET value = '99' WHERE name = 'schema_version'")).unwrap();
    let r = ferroq_core::open(&env.url);
    assert!(matches!(r, Err(Error::NotAStore(ref m)) if m.contains("newer")), "{:?}", r.err());
}

#[test]
fn two_hosts_opening_a_new_store_at_once_create_it_once() {
    if base().is_none() {
        return;
    }
    let env = Backend::Postgres.open();
    let url = env.url.replace("schema=t_", "schema=t_race_");
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || ferroq_core::open(&url).map(|s| s.enqueue(&[task("q")]).unwrap().len()))
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap().unwrap(), 1);
    }
    let s = ferroq_core::open(&url).unwrap();
    assert_eq!(s.counts().unwrap().iter().map(|c| c.count).sum::<u64>(), 4);
    drop(s);
    let schema = url.split("schema=").nth(1).unwrap();
    admin(&base().unwrap_or_default()).batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).unwrap();
}
