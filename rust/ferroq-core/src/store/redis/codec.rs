//! The stored form of a task record and of an event: a compact binary
//! layout (a version byte, then each field in a fixed order; numbers
//! little-endian, optional fields behind a presence byte, text and bytes
//! behind a u32 length). Encoding is deterministic, which the guarded
//! commits rely on: a record is "unchanged" when its bytes are.

use crate::backoff::Backoff;
use crate::error::{Error, Result};
use crate::task::{Status, Task};

/// The layout versions of a record (its first byte): 2 adds the home
/// queue of a dead letter; 1 is read as having none.
const RECORD_V1: u8 = 1;
const RECORD_V2: u8 = 2;

/// A task as stored: the task, when it may be purged (finished tasks),
/// and its home queue when it is filed in a dead-letter queue.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Record {
    pub task: Task,
    pub purge_at: Option<i64>,
    pub origin: Option<String>,
}

impl Record {
    /// A record of a task that is not finished (no purge time, at home).
    pub fn live(task: Task) -> Self {
        Record { task, purge_at: None, origin: None }
    }
}

/// Appends fields to a buffer.
#[derive(Default)]
pub(super) struct Writer(pub Vec<u8>);

impl Writer {
    pub fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn opt_i64(&mut self, v: Option<i64>) {
        match v {
            Some(v) => {
                self.0.push(1);
                self.i64(v);
            }
            None => self.0.push(0),
        }
    }
    pub fn bytes(&mut self, v: &[u8]) {
        self.0.extend_from_slice(&(v.len() as u32).to_le_bytes());
        self.0.extend_from_slice(v);
    }
    pub fn opt_bytes(&mut self, v: Option<&[u8]>) {
        match v {
            Some(v) => {
                self.0.push(1);
                self.bytes(v);
            }
            None => self.0.push(0),
        }
    }
    pub fn opt_str(&mut self, v: Option<&str>) {
        self.opt_bytes(v.map(str::as_bytes));
    }
    pub fn opt_f64(&mut self, v: Option<f64>) {
        self.opt_i64(v.map(|f| f.to_bits() as i64));
    }
}

/// Reads fields back in the order they were written.
pub(super) struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

fn damaged(what: &str) -> Error {
    Error::Corrupt(format!("a Redis record is damaged ({what})"))
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, at: 0 }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.buf.len()).ok_or_else(|| damaged("truncated"))?;
        let out = &self.buf[self.at..end];
        self.at = end;
        Ok(out)
    }
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    pub fn i64(&mut self) -> Result<i64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_le_bytes(a))
    }
    pub fn opt_i64(&mut self) -> Result<Option<i64>> {
        Ok(if self.u8()? == 1 { Some(self.i64()?) } else { None })
    }
    pub fn bytes(&mut self) -> Result<Vec<u8>> {
        let b = self.take(4)?;
        let mut a = [0u8; 4];
        a.copy_from_slice(b);
        let n = u32::from_le_bytes(a) as usize;
        Ok(self.take(n)?.to_vec())
    }
    pub fn opt_bytes(&mut self) -> Result<Option<Vec<u8>>> {
        Ok(if self.u8()? == 1 { Some(self.bytes()?) } else { None })
    }
    pub fn string(&mut self) -> Result<String> {
        String::from_utf8(self.bytes()?).map_err(|_| damaged("text is not UTF-8"))
    }
    pub fn opt_str(&mut self) -> Result<Option<String>> {
        self.opt_bytes()?.map(|b| String::from_utf8(b).map_err(|_| damaged("text is not UTF-8"))).transpose()
    }
    pub fn opt_f64(&mut self) -> Result<Option<f64>> {
        Ok(self.opt_i64()?.map(|b| f64::from_bits(b as u64)))
    }
}

/// Encodes a record.
pub(super) fn encode(r: &Record) -> Vec<u8> {
    let t = &r.task;
    let mut w = Writer(Vec::with_capacity(96 + t.payload.len()));
    w.0.push(RECORD_V2);
    w.i64(t.id);
    w.bytes(t.queue.as_bytes());
    w.bytes(t.name.as_bytes());
    w.bytes(&t.payload);
    w.i64(t.priority);
    w.i64(t.status.code());
    w.i64(t.run_at);
    w.i64(t.attempts as i64);
    w.i64(t.max_attempts as i64);
    w.opt_i64(t.lease_until);
    w.opt_str(t.worker.as_deref());
    w.opt_str(t.key.as_deref());
    w.opt_str(t.batch.as_deref());
    w.opt_f64(t.progress);
    w.opt_bytes(t.result.as_deref());
    w.opt_str(t.error.as_deref());
    w.i64(t.created_at);
    w.opt_i64(t.started_at);
    w.opt_i64(t.finished_at);
    w.opt_i64(t.expires_at);
    w.opt_str(t.metadata.as_deref());
    w.0.push(t.cancel_requested as u8);
    w.opt_str(t.backoff.as_ref().map(Backoff::encode).as_deref());
    w.opt_i64(t.result_ttl_ms);
    w.opt_str(t.requires.as_deref());
    w.opt_i64(r.purge_at);
    w.opt_str(r.origin.as_deref());
    w.0
}

/// Decodes a record.
pub(super) fn decode(buf: &[u8]) -> Result<Record> {
    let mut r = Reader::new(buf);
    let version = r.u8()?;
    if version != RECORD_V1 && version != RECORD_V2 {
        return Err(damaged("unknown layout version"));
    }
    let u32_of = |v: i64| u32::try_from(v).map_err(|_| damaged("attempts out of range"));
    let task = Task {
        id: r.i64()?,
        queue: r.string()?,
        name: r.string()?,
        payload: r.bytes()?,
        priority: r.i64()?,
        status: Status::from_code(r.i64()?)?,
        run_at: r.i64()?,
        attempts: u32_of(r.i64()?)?,
        max_attempts: u32_of(r.i64()?)?,
        lease_until: r.opt_i64()?,
        worker: r.opt_str()?,
        key: r.opt_str()?,
        batch: r.opt_str()?,
        progress: r.opt_f64()?,
        result: r.opt_bytes()?,
        error: r.opt_str()?,
        created_at: r.i64()?,
        started_at: r.opt_i64()?,
        finished_at: r.opt_i64()?,
        expires_at: r.opt_i64()?,
        metadata: r.opt_str()?,
        cancel_requested: r.u8()? == 1,
        backoff: r.opt_str()?.and_then(|s| Backoff::decode(&s).ok()),
        result_ttl_ms: r.opt_i64()?,
        requires: r.opt_str()?,
    };
    let purge_at = r.opt_i64()?;
    let origin = if version >= RECORD_V2 { r.opt_str()? } else { None };
    Ok(Record { task, purge_at, origin })
}

/// One row of the event feed as stored in the stream.
pub(super) fn encode_event(row: &crate::store::events::EventRow) -> Vec<u8> {
    let mut w = Writer::default();
    w.i64(row.at);
    w.i64(row.task_id);
    w.bytes(row.queue.as_bytes());
    w.bytes(row.name.as_bytes());
    w.i64(row.code);
    w.opt_i64(row.from);
    w.opt_i64(row.to);
    w.opt_str(row.worker.as_deref());
    w.opt_str(row.error_type.as_deref());
    w.0
}

/// Decodes an event stored at position `seq`.
pub(super) fn decode_event(seq: i64, buf: &[u8]) -> Result<crate::store::events::EventRow> {
    let mut r = Reader::new(buf);
    Ok(crate::store::events::EventRow {
        seq,
        at: r.i64()?,
        task_id: r.i64()?,
        queue: r.string()?,
        name: r.string()?,
        code: r.i64()?,
        from: r.opt_i64()?,
        to: r.opt_i64()?,
        worker: r.opt_str()?,
        error_type: r.opt_str()?,
    })
}
