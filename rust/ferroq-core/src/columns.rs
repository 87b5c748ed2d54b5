//! Columns of a batch's outcomes, read page by page, so the binding can
//! hand them to Polars without a loop over rows in Python
//! (`Store.results_columns`). The paging policy lives here, beside the
//! store it reads, where Rust tests cover it.

use crate::store::ListParams;
use crate::{Status, Store, Task};

/// Bytes one page of `list` should hold (payloads and results included), so
/// rows of a few hundred KB do not turn a page into gigabytes.
const PAGE_BYTES: usize = 32 << 20;
/// Rows per page: the first page, and the bounds of later ones.
const FIRST_PAGE: u32 = 2_000;
const MIN_PAGE: u32 = 16;
const MAX_PAGE: u32 = 20_000;

/// A column of optional strings kept in one buffer: a million rows must
/// not mean a million live allocations (the allocator slows every later
/// page down when they pile up).
#[derive(Default)]
pub struct TextColumn {
    buf: String,
    /// (start, end) in `buf` of each row's text; None for null.
    spans: Vec<Option<(usize, usize)>>,
}

impl TextColumn {
    fn push(&mut self, text: Option<&str>) {
        self.spans.push(text.map(|t| {
            let start = self.buf.len();
            self.buf.push_str(t);
            (start, self.buf.len())
        }));
    }

    /// Each row's text, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Option<&str>> + '_ {
        self.spans.iter().map(|s| s.and_then(|(a, b)| self.buf.get(a..b)))
    }
}

/// One column per field, in id order.
#[derive(Default)]
pub struct ResultColumns {
    /// Task ids.
    pub id: Vec<i64>,
    /// Idempotency keys.
    pub key: TextColumn,
    /// Statuses.
    pub status: Vec<Status>,
    /// Attempts made.
    pub attempts: Vec<u32>,
    /// Stored errors.
    pub error: TextColumn,
    /// The JSON text of results stored as JSON (tag byte `J`), without the tag.
    pub result: TextColumn,
    /// Results in any other form (e.g. pickle), tag included.
    pub result_raw: Vec<Option<Vec<u8>>>,
}

impl ResultColumns {
    /// Rows held.
    pub fn len(&self) -> usize {
        self.id.len()
    }

    /// True when no row is held.
    pub fn is_empty(&self) -> bool {
        self.id.is_empty()
    }

    fn push(&mut self, t: Task) {
        let json = match t.result.as_deref() {
            Some([b'J', rest @ ..]) => std::str::from_utf8(rest).ok(),
            _ => None,
        };
        let raw = if json.is_none() { t.result.clone() } else { None };
        self.result.push(json);
        self.result_raw.push(raw);
        self.id.push(t.id);
        self.key.push(t.key.as_deref());
        self.status.push(t.status);
        self.attempts.push(t.attempts);
        self.error.push(t.error.as_deref());
    }
}

/// What to read: a batch and/or queue, and which statuses to keep.
pub struct ResultQuery {
    /// Only this batch.
    pub batch: Option<String>,
    /// Only this queue.
    pub queue: Option<String>,
    /// Empty means every status.
    pub statuses: Vec<Status>,
}

impl ResultQuery {
    /// A single status is filtered by the store; several are filtered here.
    fn store_status(&self) -> Option<Status> {
        match self.statuses.as_slice() {
            [one] => Some(*one),
            _ => None,
        }
    }

    fn keeps(&self, s: Status) -> bool {
        self.statuses.is_empty() || self.statuses.contains(&s)
    }
}

/// Reads one page after `after_id` into `out`; returns the last id seen and
/// the next page size, or None when this was the last page.
pub fn read_page(
    store: &dyn Store,
    q: &ResultQuery,
    after_id: Option<i64>,
    limit: u32,
    out: &mut ResultColumns,
) -> crate::Result<Option<(i64, u32)>> {
    let p = ListParams {
        queue: q.queue.clone(),
        status: q.store_status(),
        batch: q.batch.clone(),
        after_id,
        limit,
        ..Default::default()
    };
    let page = store.list(&p)?;
    let Some(last) = page.last().map(|t| t.id) else { return Ok(None) };
    let n = page.len();
    let more = n >= limit as usize;
    let mut bytes = 0usize;
    for t in page {
        bytes += t.payload.len() + t.result.as_ref().map_or(0, Vec::len) + t.error.as_ref().map_or(0, String::len);
        if q.keeps(t.status) {
            out.push(t);
        }
    }
    let per_row = (bytes / n).max(1);
    let next = u32::try_from(PAGE_BYTES / per_row).unwrap_or(MAX_PAGE).clamp(MIN_PAGE, MAX_PAGE);
    Ok(more.then_some((last, next)))
}

/// The page size to start with.
pub fn first_page() -> u32 {
    FIRST_PAGE
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ClaimParams, CompleteParams, FailParams, Retry};
    use crate::NewTask;

    fn store_with(n: usize, result_bytes: usize) -> std::sync::Arc<dyn Store> {
        let store = crate::open("memory://").unwrap();
        let tasks: Vec<NewTask> = (0..n)
            .map(|i| NewTask {
                batch: Some("b".into()),
                key: Some(format!("k{i}")),
                max_attempts: 1,
                ..NewTask::new("q", "t", b"J[]".to_vec())
            })
            .collect();
        store.enqueue(&tasks).unwrap();
        let claimed = store
            .claim(&ClaimParams {
                queue: "q".into(),
                worker: "w".into(),
                limit: n as u32,
                lease_ms: 60_000,
                resources: None,
                home: None,
            })
            .unwrap();
        let (fail, done): (Vec<_>, Vec<_>) = claimed.into_iter().partition(|t| t.id % 3 == 0);
        let mut result = b"J\"".to_vec();
        result.extend(vec![b'x'; result_bytes]);
        result.push(b'"');
        let c: Vec<_> = done
            .iter()
            .map(|t| CompleteParams { id: t.id, worker: "w".into(), result: result.clone(), force: false })
            .collect();
        store.complete(&c).unwrap().into_iter().collect::<crate::Result<Vec<()>>>().unwrap();
        let f: Vec<_> = fail
            .iter()
            .map(|t| FailParams {
                id: t.id,
                worker: "w".into(),
                error: "boom".into(),
                retry: Retry::Never,
                force: false,
            })
            .collect();
        store.fail(&f).unwrap().into_iter().collect::<crate::Result<Vec<_>>>().unwrap();
        store
    }

    fn read_all(store: &dyn Store, q: &ResultQuery) -> (ResultColumns, Vec<u32>) {
        let (mut out, mut sizes, mut at, mut limit) = (ResultColumns::default(), vec![], None, first_page());
        loop {
            sizes.push(limit);
            match read_page(store, q, at, limit, &mut out).unwrap() {
                Some((last, next)) => (at, limit) = (Some(last), next),
                None => return (out, sizes),
            }
        }
    }

    #[test]
    fn every_row_comes_once_in_id_order_with_its_columns() {
        let store = store_with(5_000, 10);
        let q = ResultQuery { batch: Some("b".into()), queue: None, statuses: vec![] };
        let (out, _) = read_all(store.as_ref(), &q);
        assert_eq!(out.len(), 5_000);
        assert!(out.id.windows(2).all(|w| w[0] < w[1]));
        for (i, id) in out.id.iter().enumerate() {
            let failed = id % 3 == 0;
            assert_eq!(out.status[i], if failed { Status::Failed } else { Status::Done });
            let result: Vec<_> = out.result.iter().collect();
            assert_eq!(result[i].is_some(), !failed);
            assert!(out.result_raw[i].is_none());
        }
        assert_eq!(out.error.iter().flatten().count(), out.id.iter().filter(|id| *id % 3 == 0).count());
    }

    #[test]
    fn statuses_are_filtered_and_non_json_results_kept_raw() {
        let store = store_with(30, 10);
        let q = ResultQuery { batch: None, queue: Some("q".into()), statuses: vec![Status::Failed] };
        let (out, _) = read_all(store.as_ref(), &q);
        assert!(!out.is_empty());
        assert!(out.status.iter().all(|s| *s == Status::Failed));
        let mut cols = ResultColumns::default();
        let mut t = store.get(&[out.id[0]]).unwrap().pop().flatten().unwrap();
        t.result = Some(b"P\x80\x04".to_vec());
        cols.push(t);
        assert_eq!(cols.result.iter().next(), Some(None));
        assert_eq!(cols.result_raw[0].as_deref(), Some(&b"P\x80\x04"[..]));
    }

    #[test]
    fn pages_shrink_for_large_rows_within_bounds() {
        let store = store_with(600, 300_000);
        let q = ResultQuery { batch: Some("b".into()), queue: None, statuses: vec![] };
        let (out, sizes) = read_all(store.as_ref(), &q);
        assert_eq!(out.len(), 600);
        assert_eq!(sizes[0], FIRST_PAGE);
        assert!(sizes[1..].iter().all(|s| (MIN_PAGE..FIRST_PAGE).contains(s)), "{sizes:?}");
    }
}
