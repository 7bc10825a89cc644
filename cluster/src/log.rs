//! The event log: one writer task per session appending in order, each publish fenced by
//! `Nats-Expected-Last-Subject-Sequence`; fetches of a range of a subject.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::warn;

use crate::engine::*;
use crate::types::*;

impl Engine {
    pub(crate) fn log_command(&mut self, cmd: ClusterCommand, t: Duration, out: Completer) {
        match cmd {
            ClusterCommand::OpenLog {
                token,
                tenant_id,
                session_id,
            } => self.writer(&session_id).send_job(
                WriterJob::Open {
                    token,
                    tenant_id,
                    session_id: session_id.clone(),
                },
                &out,
            ),
            ClusterCommand::CloseLog { session_id } => {
                self.writers.remove(&session_id);
            }
            ClusterCommand::Append {
                tenant_id: _,
                session_id,
                seq,
                epoch,
                payload,
            } => match self.writers.get(&session_id) {
                Some(w) => w.send_job(
                    WriterJob::Append {
                        session_id: session_id.clone(),
                        seq,
                        epoch,
                        payload,
                    },
                    &out,
                ),
                None => out.send(ClusterCompletion::Appended {
                    session_id,
                    seq,
                    result: Err(ClusterError::LogNotOpen),
                }),
            },
            ClusterCommand::Fetch {
                token,
                tenant_id,
                session_id,
                after_seq,
                from_stream_seq,
                limit,
            } => {
                let stream = self.nats.events.clone();
                let marks = self.marks.clone();
                let shared = self.shared.clone();
                let limit = limit.min(self.cfg.max_fetch) as usize;
                tokio::spawn(async move {
                    shared.stats.fetches.fetch_add(1, Ordering::Relaxed);
                    let start = from_stream_seq.or_else(|| {
                        marks.lock().ok().and_then(|m| {
                            m.get(&session_id)
                                .and_then(|b| b.range(..=after_seq.saturating_add(1)).next_back())
                                .map(|(_, s)| *s)
                        })
                    });
                    let subject = event_subject(&tenant_id, &session_id);
                    let result = bounded(t, fetch(&stream, subject, after_seq, start, limit)).await;
                    if let (Ok((events, _)), Ok(mut m)) = (&result, marks.lock()) {
                        let b = m.entry(session_id.clone()).or_default();
                        for e in events {
                            if let Some(s) = e.stream_seq {
                                if e.seq % MARK_EVERY == 0 {
                                    b.insert(e.seq, s);
                                }
                            }
                        }
                    }
                    out.send(ClusterCompletion::Fetched { token, result });
                });
            }
            ClusterCommand::PurgeLog {
                token,
                tenant_id,
                session_id,
            } => {
                let stream = self.nats.events.clone();
                if let Ok(mut m) = self.marks.lock() {
                    m.remove(&session_id);
                }
                self.writers.remove(&session_id);
                tokio::spawn(async move {
                    let result = bounded(t, async {
                        stream
                            .purge()
                            .filter(event_subject(&tenant_id, &session_id))
                            .await
                            .map(|r| r.purged)
                            .map_err(nats_err)
                    })
                    .await;
                    out.send(ClusterCompletion::Purged { token, result });
                });
            }
            _ => {}
        }
    }

    /// The session's writer task (started on first use).
    fn writer(&mut self, session_id: &str) -> &mpsc::UnboundedSender<WriterJob> {
        if self.writers.get(session_id).is_none_or(|w| w.is_closed()) {
            let (tx, rx) = mpsc::unbounded_channel();
            let w = Writer {
                nats: self.nats.clone(),
                out: self.out.clone(),
                shared: self.shared.clone(),
                marks: self.marks.clone(),
                timeout: self.cfg.op_timeout,
                subject: None,
                anchor: None,
                fenced: false,
            };
            tokio::spawn(w.run(rx));
            self.writers.insert(session_id.to_string(), tx);
        }
        // Inserted just above when missing.
        &self.writers[session_id]
    }
}

pub(crate) enum WriterJob {
    Open {
        token: u64,
        tenant_id: String,
        session_id: String,
    },
    Append {
        session_id: String,
        seq: u64,
        epoch: String,
        payload: Bytes,
    },
    /// The lease is lost: refuse every later append (as fenced) until the next `Open`.
    LeaseLost,
}

pub(crate) const SEQ_HEADER: &str = "Dim-Seq";

pub(crate) const EPOCH_HEADER: &str = "Dim-Epoch";

/// A position is remembered for every event whose seq is a multiple of this (and the latest).
pub(crate) const MARK_EVERY: u64 = 64;

pub(crate) fn parse_event(
    headers: Option<&HeaderMap>,
    payload: Bytes,
    stream_seq: Option<u64>,
) -> Result<LogEvent, ClusterError> {
    let seq = header(headers, SEQ_HEADER)
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| ClusterError::Corrupt("an event without a Dim-Seq header".into()))?;
    let epoch = header(headers, EPOCH_HEADER)
        .ok_or_else(|| ClusterError::Corrupt("an event without a Dim-Epoch header".into()))?
        .to_string();
    Ok(LogEvent {
        seq,
        epoch,
        stream_seq,
        payload,
    })
}

pub(crate) trait SendJob {
    fn send_job(&self, job: WriterJob, out: &Completer);
}

impl SendJob for mpsc::UnboundedSender<WriterJob> {
    fn send_job(&self, job: WriterJob, out: &Completer) {
        if let Err(mpsc::error::SendError(job)) = self.send(job) {
            match job {
                WriterJob::Open {
                    token, session_id, ..
                } => out.send(ClusterCompletion::LogOpened {
                    token,
                    session_id,
                    result: Err(ClusterError::Closed),
                }),
                WriterJob::Append {
                    session_id, seq, ..
                } => out.send(ClusterCompletion::Appended {
                    session_id,
                    seq,
                    result: Err(ClusterError::Closed),
                }),
                WriterJob::LeaseLost => {}
            }
        }
    }
}

pub(crate) async fn last_event(
    stream: &stream::Stream,
    subject: &str,
) -> Result<Option<LogEvent>, ClusterError> {
    match stream.get_last_raw_message_by_subject(subject).await {
        Ok(m) => parse_event(Some(&m.headers), m.payload, Some(m.sequence)).map(Some),
        Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(nats_err(e)),
    }
}

pub(crate) async fn fetch(
    stream: &stream::Stream,
    subject: String,
    after_seq: u64,
    start: Option<u64>,
    limit: usize,
) -> Result<(Vec<LogEvent>, bool), ClusterError> {
    let read = |policy: DeliverPolicy| {
        let subject = subject.clone();
        async move {
            let (messages, more) = read_ordered(stream, subject, policy, limit, |m| {
                // A message without a readable seq is kept, and reported as corrupt below.
                header(m.headers.as_ref(), SEQ_HEADER)
                    .and_then(|s| s.parse::<u64>().ok())
                    .is_none_or(|seq| seq > after_seq)
            })
            .await?;
            let mut events = Vec::with_capacity(messages.len());
            for m in messages {
                let stream_seq = m.info().map_err(nats_err)?.stream_sequence;
                events.push(parse_event(
                    m.headers.as_ref(),
                    m.payload.clone(),
                    Some(stream_seq),
                )?);
            }
            Ok::<_, ClusterError>((events, more))
        }
    };
    if after_seq == 0 {
        return read(DeliverPolicy::All).await;
    }
    let Some(last) = last_event(stream, &subject).await? else {
        return Ok((Vec::new(), false));
    };
    if last.seq <= after_seq {
        return Ok((Vec::new(), false));
    }
    let start_sequence = locate(stream, &subject, after_seq, start, &last).await?;
    let (events, more) = read(DeliverPolicy::ByStartSequence { start_sequence }).await?;
    if events
        .first()
        .is_some_and(|first| first.seq == after_seq + 1)
    {
        return Ok((events, more));
    }
    // Only a log whose seqs are not contiguous along the subject gets here: read it from its
    // first message instead of trusting the search.
    read(DeliverPolicy::All).await
}

/// The seq and stream sequence of the subject's first message at or after stream sequence `at`.
async fn next_at(
    stream: &stream::Stream,
    subject: &str,
    at: u64,
) -> Result<Option<(u64, u64)>, ClusterError> {
    match stream.direct_get_next_for_subject(subject, Some(at)).await {
        Ok(m) => {
            let event = parse_event(Some(&m.headers), Bytes::new(), Some(m.sequence))?;
            Ok(Some((event.seq, m.sequence)))
        }
        Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => Ok(None),
        Err(e) => Err(nats_err(e)),
    }
}

/// Where to start reading events after `after_seq` (`0 < after_seq < last.seq`) without reading
/// the subject from its first message: a binary search over stream sequences with direct gets
/// ("the subject's next message at or after X"), O(log n) round trips. Seqs grow by one along
/// the subject, so the event after `after_seq` is at most `last.seq - after_seq - 1` messages
/// before the last one: that bounds the search from above; `hint` (a remembered position, may
/// be stale) from below once a probe confirms it.
async fn locate(
    stream: &stream::Stream,
    subject: &str,
    after_seq: u64,
    hint: Option<u64>,
    last: &LogEvent,
) -> Result<u64, ClusterError> {
    let last_stream_seq = last.stream_seq.unwrap_or(1);
    // Invariant: the first message at or after `hi` has a seq > after_seq, and every message
    // before `lo` has a seq <= after_seq.
    let mut hi = last_stream_seq
        .saturating_sub(last.seq - after_seq - 1)
        .max(1);
    let mut lo = 1;
    if let Some(h) = hint.filter(|h| *h >= 1 && *h <= hi) {
        if let Some((seq, at)) = next_at(stream, subject, h).await? {
            if seq == after_seq + 1 {
                return Ok(at);
            }
            if seq <= after_seq {
                lo = at + 1;
            } else {
                hi = h;
            }
        }
    }
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match next_at(stream, subject, mid).await? {
            Some((seq, at)) if seq == after_seq + 1 => return Ok(at),
            Some((seq, at)) if seq <= after_seq => lo = at + 1,
            _ => hi = mid,
        }
    }
    Ok(hi)
}

/// Appends one session's events in order, each anchored on the previous one's stream sequence.
pub(crate) struct Writer {
    nats: Nats,
    out: Completer,
    shared: Arc<Shared>,
    marks: Arc<Mutex<HashMap<String, BTreeMap<u64, u64>>>>,
    timeout: Duration,
    subject: Option<String>,
    /// Stream sequence of the subject's last message as this owner knows it (0: none); `None`
    /// when the log is not open (never opened, or an append's outcome is unknown).
    anchor: Option<u64>,
    /// The last append was refused: later ones are refused without publishing until reopened.
    fenced: bool,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<WriterJob>) {
        while let Some(job) = rx.recv().await {
            match job {
                WriterJob::LeaseLost => {
                    self.anchor = None;
                    self.fenced = true;
                }
                WriterJob::Open {
                    token,
                    tenant_id,
                    session_id,
                } => {
                    let subject = event_subject(&tenant_id, &session_id);
                    let result =
                        bounded(self.timeout, last_event(&self.nats.events, &subject)).await;
                    match &result {
                        Ok(last) => {
                            self.anchor =
                                Some(last.as_ref().and_then(|e| e.stream_seq).unwrap_or(0));
                            self.fenced = false;
                            self.subject = Some(subject);
                        }
                        Err(_) => self.anchor = None,
                    }
                    self.out.send(ClusterCompletion::LogOpened {
                        token,
                        session_id,
                        result,
                    });
                }
                WriterJob::Append {
                    session_id,
                    seq,
                    epoch,
                    payload,
                } => {
                    let result = self.append(seq, epoch, payload).await;
                    if let (Ok(stream_seq), Ok(mut m)) = (&result, self.marks.lock()) {
                        let b = m.entry(session_id.clone()).or_default();
                        if seq % MARK_EVERY == 0 || b.is_empty() {
                            b.insert(seq, *stream_seq);
                        }
                    }
                    self.out.send(ClusterCompletion::Appended {
                        session_id,
                        seq,
                        result,
                    });
                }
            }
        }
    }

    async fn append(
        &mut self,
        seq: u64,
        epoch: String,
        payload: Bytes,
    ) -> Result<u64, ClusterError> {
        let (Some(anchor), Some(subject)) = (self.anchor, self.subject.clone()) else {
            return Err(if self.fenced {
                ClusterError::Fenced { last: None }
            } else {
                ClusterError::LogNotOpen
            });
        };
        if state_from(self.shared.state.load(Ordering::Acquire)) != ConnectionState::Connected {
            return Err(ClusterError::Unavailable);
        }
        let started = Instant::now();
        let mut headers = HeaderMap::new();
        headers.insert(SEQ_HEADER, seq.to_string());
        headers.insert(EPOCH_HEADER, epoch);
        let publish = jetstream::message::PublishMessage::build()
            .payload(payload)
            .headers(headers)
            .expected_last_subject_sequence(anchor);
        let js = self.nats.js.clone();
        let sent = bounded(self.timeout, async {
            let ack = js
                .send_publish(subject.clone(), publish)
                .await
                .map_err(|e| match e.kind() {
                    jetstream::context::PublishErrorKind::MaxPayloadExceeded => {
                        ClusterError::TooLarge(e.to_string())
                    }
                    _ => nats_err(e),
                });
            match ack {
                Ok(ack) => ack.await.map_err(|e| {
                    if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence {
                        ClusterError::Fenced { last: None }
                    } else {
                        nats_err(e)
                    }
                }),
                Err(e) => Err(e),
            }
        })
        .await;
        match sent {
            Ok(ack) => {
                self.anchor = Some(ack.sequence);
                let stats = &self.shared.stats;
                let nanos = started.elapsed().as_nanos() as u64;
                stats.appends.fetch_add(1, Ordering::Relaxed);
                stats.append_nanos_total.fetch_add(nanos, Ordering::Relaxed);
                stats.append_nanos_max.fetch_max(nanos, Ordering::Relaxed);
                Ok(ack.sequence)
            }
            Err(ClusterError::Fenced { .. }) => {
                self.anchor = None;
                self.fenced = true;
                self.shared
                    .stats
                    .appends_fenced
                    .fetch_add(1, Ordering::Relaxed);
                let last = bounded(self.timeout, last_event(&self.nats.events, &subject))
                    .await
                    .ok()
                    .flatten()
                    .map(Box::new);
                warn!(subject, seq, "append refused: fenced");
                Err(ClusterError::Fenced { last })
            }
            // Refused by the client before sending: the anchor still holds.
            Err(e @ ClusterError::TooLarge(_)) => Err(e),
            Err(e) => {
                // Whether it landed is unknown: the next append must not guess an anchor.
                self.anchor = None;
                Err(e)
            }
        }
    }
}

pub(crate) fn header<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    headers.and_then(|h| h.get(name)).map(|v| v.as_str())
}
