//! Columns of a batch's outcomes, built in Rust so Python can hand them to
//! Polars without a loop over rows (`Store.results_columns`).

use ferroq_core::store::ListParams;
use ferroq_core::{Status, Store, Task};

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
    pub id: Vec<i64>,
    pub key: TextColumn,
    pub status: Vec<Status>,
    pub attempts: Vec<u32>,
    pub error: TextColumn,
    /// The JSON text of results stored as JSON (tag byte `J`), without the tag.
    pub result: TextColumn,
    /// Results in any other form (e.g. pickle), tag included.
    pub result_raw: Vec<Option<Vec<u8>>>,
}

impl ResultColumns {
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
    pub batch: Option<String>,
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
) -> ferroq_core::Result<Option<(i64, u32)>> {
    let p = ListParams {
        queue: q.queue.clone(),
        status: q.store_status(),
        batch: q.batch.clone(),
        after_id,
        limit,
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
