//! Flows (issue 15): tasks that wait for other tasks. A task with
//! unfinished parents is `waiting` and never claimed; the finish of its
//! last parent releases it; a parent that ends otherwise cancels it,
//! transitively; a parent's result outlives retention while a dependent
//! still needs it; cancel ends a waiting task; the sweep in `recover`
//! settles what a crash left waiting.

use crate::harness::*;
use ferroq_core::store::{Dep, FlowTask, PurgeParams, RecoverParams};
use ferroq_core::{Error, NewTask, Status};

crate::conformance!(
    a_chain_runs_step_by_step,
    a_group_and_its_callback_wait_for_every_member,
    a_failed_parent_cancels_its_dependents_transitively,
    dependencies_on_finished_tasks_settle_at_once,
    cancel_of_a_waiting_task_ends_it_and_its_dependents,
    parents_results_outlive_retention_until_the_dependent_finishes,
    a_missing_parent_or_a_later_index_is_refused,
    waiting_tasks_are_counted_and_listed,
);

fn step(queue: &str, after: Vec<Dep>) -> FlowTask {
    FlowTask { task: task(queue), after }
}

fn flow(env: &Env, tasks: &[FlowTask]) -> Vec<i64> {
    env.store.enqueue_flow(tasks).unwrap().into_iter().map(|e| e.id).collect()
}

fn sweep(env: &Env) {
    env.store.recover(&RecoverParams::default()).unwrap();
}

fn a_chain_runs_step_by_step(b: Backend) {
    let env = b.open();
    let ids = flow(&env, &[step("q", vec![]), step("q", vec![Dep::Earlier(0)]), step("q", vec![Dep::Earlier(1)])]);
    assert_eq!(env.get(ids[0]).status, Status::Queued);
    assert_eq!(env.get(ids[1]).status, Status::Waiting);
    assert_eq!(env.store.dependencies(&ids).unwrap(), vec![vec![], vec![ids[0]], vec![ids[1]]]);
    for (n, id) in ids.iter().enumerate() {
        let got = env.claim("q", "w", 10);
        assert_eq!(got.iter().map(|t| t.id).collect::<Vec<_>>(), vec![*id], "only step {n} is ready");
        env.complete(*id, "w", format!("r{n}").as_bytes()).unwrap();
    }
    assert!(env.claim("q", "w", 10).is_empty());
    assert_eq!(env.get(ids[2]).status, Status::Done);
}

fn a_group_and_its_callback_wait_for_every_member(b: Backend) {
    let env = b.open();
    let mut tasks: Vec<FlowTask> = (0..20).map(|_| step("g", vec![])).collect();
    tasks.push(step("g", (0..20).map(Dep::Earlier).collect()));
    let ids = flow(&env, &tasks);
    let callback = ids[20];
    assert_eq!(env.store.dependencies(&[callback]).unwrap()[0], ids[..20].to_vec(), "parents in order");
    let members = env.claim("g", "w", 100);
    assert_eq!(members.len(), 20, "the callback is not claimed while it waits");
    for t in &members[..19] {
        env.complete(t.id, "w", b"r").unwrap();
        sweep(&env);
        assert_eq!(env.get(callback).status, Status::Waiting);
    }
    env.complete(members[19].id, "w", b"r").unwrap();
    // Released by the finishing call itself, without a sweep.
    assert_eq!(env.get(callback).status, Status::Queued);
    assert_eq!(env.claim_one("g", "w").id, callback);
}

fn a_failed_parent_cancels_its_dependents_transitively(b: Backend) {
    let env = b.open();
    let other = env.add("side");
    let ids = flow(
        &env,
        &[
            step("q", vec![]),
            step("q", vec![Dep::Earlier(0), Dep::Task(other)]),
            step("q", vec![Dep::Earlier(1)]),
            step("q", vec![Dep::Task(other)]),
        ],
    );
    let first = env.claim_one("q", "w");
    assert_eq!(env.fail(first.id, "w", "boom", ferroq_core::store::Retry::Never).unwrap(), Status::Failed);
    let (b1, c2) = (env.get(ids[1]), env.get(ids[2]));
    assert_eq!((b1.status, c2.status), (Status::Cancelled, Status::Cancelled));
    assert_eq!(b1.error.unwrap(), format!("dependency {} ended failed", ids[0]));
    assert_eq!(c2.error.unwrap(), format!("dependency {} ended cancelled", ids[1]), "transitively");
    assert_eq!(env.get(ids[3]).status, Status::Waiting, "a task not downstream of the failure waits on");
    let side = env.claim_one("side", "w");
    env.complete(side.id, "w", b"r").unwrap();
    assert_eq!(env.get(ids[3]).status, Status::Queued);
}

fn dependencies_on_finished_tasks_settle_at_once(b: Backend) {
    let env = b.open();
    let done = env.add("q");
    let failed = env.add("q");
    let t = env.claim_one("q", "w");
    env.complete(t.id, "w", b"r").unwrap();
    let t = env.claim_one("q", "w");
    env.fail(t.id, "w", "no", ferroq_core::store::Retry::Never).unwrap();
    let ids = flow(&env, &[step("q", vec![Dep::Task(done)]), step("q", vec![Dep::Task(done), Dep::Task(failed)])]);
    assert_eq!(env.get(ids[0]).status, Status::Queued, "its parent is done already");
    let c = env.get(ids[1]);
    assert_eq!(c.status, Status::Cancelled);
    assert_eq!(c.error.unwrap(), format!("dependency {failed} ended failed"));
}

fn cancel_of_a_waiting_task_ends_it_and_its_dependents(b: Backend) {
    let env = b.open();
    let ids = flow(&env, &[step("q", vec![]), step("q", vec![Dep::Earlier(0)]), step("q", vec![Dep::Earlier(1)])]);
    assert_eq!(env.cancel(ids[1], None).unwrap(), Status::Cancelled);
    assert_eq!(env.get(ids[2]).status, Status::Cancelled);
    assert_eq!(env.get(ids[2]).error.unwrap(), format!("dependency {} ended cancelled", ids[1]));
    assert_eq!(env.get(ids[0]).status, Status::Queued, "upstream steps are left alone");
    assert_finished(env.cancel(ids[2], None), ids[2], Status::Cancelled);
}

fn parents_results_outlive_retention_until_the_dependent_finishes(b: Backend) {
    let env = b.open();
    let ids = flow(&env, &[step("q", vec![]), step("q", vec![Dep::Earlier(0)])]);
    let first = env.claim_one("q", "w");
    env.complete(first.id, "w", b"parent result").unwrap();
    env.advance(1_000_000);
    let purge = || env.store.purge(&PurgeParams { finished_before: Some(env.now()) }).unwrap();
    purge();
    sweep(&env);
    assert_eq!(env.get(ids[0]).result.as_deref(), Some(&b"parent result"[..]), "kept while its dependent needs it");
    let child = env.claim_one("q", "w");
    assert_eq!(child.id, ids[1]);
    env.complete(child.id, "w", b"r").unwrap();
    sweep(&env);
    env.advance(1);
    purge();
    assert!(!env.exists(ids[0]), "purged once no dependent needs it");
}

fn a_missing_parent_or_a_later_index_is_refused(b: Backend) {
    let env = b.open();
    assert!(matches!(env.store.enqueue_flow(&[step("q", vec![Dep::Task(1_000_000_007)])]), Err(Error::NotFound(_))));
    assert_invalid(env.store.enqueue_flow(&[step("q", vec![Dep::Earlier(0)])]));
    assert_invalid(env.store.enqueue_flow(&[step("q", vec![]), step("q", vec![Dep::Earlier(2)]), step("q", vec![])]));
    assert_eq!(env.total(), 0, "nothing stored");
    let bad = FlowTask { task: NewTask { max_attempts: 0, ..task("q") }, after: vec![] };
    assert_invalid(env.store.enqueue_flow(&[step("q", vec![]), bad]));
    assert_eq!(env.total(), 0);
}

fn waiting_tasks_are_counted_and_listed(b: Backend) {
    let env = b.open();
    flow(&env, &[step("q", vec![]), step("q", vec![Dep::Earlier(0)]), step("q", vec![Dep::Earlier(0)])]);
    assert_eq!(env.count("q", Status::Waiting), 2);
    assert_eq!(env.store.unfinished("q").unwrap(), 3);
    let listed = env
        .store
        .list(&ferroq_core::store::ListParams { status: Some(Status::Waiting), limit: 10, ..Default::default() })
        .unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|t| t.status == Status::Waiting));
}
