//! Enqueue with [`OnDuplicate::Error`](crate::store::OnDuplicate::Error): a
//! key that is taken refuses the whole batch. The write transactions of
//! every shard the batch touches are begun first (in shard order, the
//! order every other multi-shard writer locks in), the keys are checked
//! under them, and only then is anything inserted: nothing of a refused
//! batch is stored, and no concurrent send can take a key in between.

use super::super::tx::WriteTx;
use super::super::{sql, SqliteStore};
use crate::error::Result;
use crate::store::{rules, Enqueued};
use crate::task::NewTask;
use rusqlite::OptionalExtension;
use std::sync::atomic::Ordering;

/// [`Store::enqueue_with`](crate::store::Store::enqueue_with) refusing taken keys.
pub(in super::super) fn enqueue_strict(store: &SqliteStore, tasks: &[NewTask]) -> Result<Vec<Enqueued>> {
    for t in tasks {
        t.validate(store.config.max_payload)?;
    }
    if let Some((queue, key)) = rules::repeated_key(tasks) {
        return Err(rules::duplicate_key(queue, key, None));
    }
    store.check_capacity(tasks)?;
    let now = store.clock.now_ms();
    let groups = super::route(store, tasks);
    let busy: Vec<usize> = (0..groups.len()).filter(|s| !groups[*s].is_empty()).collect();
    for &s in &busy {
        store.check_healthy(s)?;
    }
    let first_local = store.last_local.fetch_add(tasks.len() as i64, Ordering::Relaxed) + 1;
    let guards: Vec<_> = busy.iter().map(|&s| (s, store.shards[s].conn.lock())).collect();
    let mut txs = Vec::with_capacity(guards.len());
    for (s, conn) in &guards {
        txs.push((*s, WriteTx::begin(conn).map_err(|e| store.shard_err(*s, e))?));
    }
    for (s, tx) in &txs {
        for &i in &groups[*s] {
            let t = &tasks[i];
            let Some(key) = &t.key else { continue };
            let taken: Option<i64> = tx
                .prepare_cached(sql::FIND_KEY)
                .and_then(|mut st| st.query_row((&t.queue, key), |r| r.get(0)).optional())
                .map_err(|e| store.shard_err(*s, e.into()))?;
            if let Some(local) = taken {
                return Err(rules::duplicate_key(&t.queue, key, Some(store.global(*s, local))));
            }
        }
    }
    let mut out = vec![Enqueued { id: 0, inserted: false }; tasks.len()];
    for (s, tx) in &txs {
        let got =
            store.insert_tasks(tx, *s, tasks, &groups[*s], first_local, now).map_err(|e| store.shard_err(*s, e))?;
        for (&i, e) in groups[*s].iter().zip(got) {
            out[i] = e;
        }
    }
    for (s, tx) in txs {
        tx.commit().map_err(|e| store.shard_err(s, e))?;
    }
    if !tasks.is_empty() {
        store.wake.bump();
    }
    Ok(out)
}
