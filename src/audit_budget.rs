//! How much junk input may add to the audit trail (SPEC §15, issue 16: "nothing bounds
//! what junk input adds to the ledger"). Pure: the caller passes the clock.
//!
//! The rule: per source (a Kafka topic partition, or the HTTP API of one instance) at
//! most [`FULL_AUDITS_PER_SOURCE_PER_WINDOW`] refused messages per
//! [`AUDIT_WINDOW_MS`] get their own audit event (`intent_invalid`, `vote_refused`,
//! `settlement_refused`, with the masked excerpt). Beyond that, within the same window,
//! a refused message is only counted by code; when the window ends the counts become one
//! `refusals_summarized` event. A Kafka message is dead-lettered either way, so nothing
//! is lost: the dead-letter topic keeps every message, the ledger keeps at most the bound
//! plus one summary per source and window.
//!
//! Windows are fixed and start with the first refusal of a source: a steady trickle of
//! junk below the bound is audited in full, a flood costs the ledger
//! `FULL_AUDITS_PER_SOURCE_PER_WINDOW + 1` events per source and minute.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

/// Refused messages of one source audited in full per window.
pub const FULL_AUDITS_PER_SOURCE_PER_WINDOW: u32 = 60;
/// Length of a window.
pub const AUDIT_WINDOW_MS: i64 = 60_000;

/// Where refused input comes from: a Kafka partition of a logical topic, or (no
/// partition) the HTTP API of this instance for that kind of body.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RefusalSource {
    /// `spend.intents`, `spend.approvals`, `spend.settlements`.
    pub topic: &'static str,
    pub partition: Option<i32>,
}

/// One budget for every source of an instance, shared by its workers and its API.
pub type SharedBudget = std::sync::Arc<std::sync::Mutex<AuditBudget<RefusalSource>>>;

/// [`AuditBudget::admit`] on a shared budget (the lock is held for the call only).
pub fn admit(
    budget: &SharedBudget,
    source: &RefusalSource,
    code: &str,
    now_ms: i64,
    position: Option<i64>,
) -> (Verdict, Option<Summary<RefusalSource>>) {
    // Plain counters: usable after a panic elsewhere.
    let mut b = budget.lock().unwrap_or_else(|e| e.into_inner());
    b.admit(source, code, now_ms, position)
}

/// [`AuditBudget::due`] on a shared budget.
pub fn due(budget: &SharedBudget, now_ms: i64) -> Vec<Summary<RefusalSource>> {
    budget.lock().unwrap_or_else(|e| e.into_inner()).due(now_ms)
}

/// [`AuditBudget::drain`] on a shared budget.
pub fn drain(budget: &SharedBudget) -> Vec<Summary<RefusalSource>> {
    budget.lock().unwrap_or_else(|e| e.into_inner()).drain()
}

/// What to do with one refused message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the bound: record its own audit event.
    Audit,
    /// Over the bound: counted, recorded in the window's summary.
    Count,
}

/// The refusals of one source and window that were counted instead of audited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary<S> {
    pub source: S,
    /// Start of the window and its end (exclusive), in the caller's clock (ms).
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    /// Refusals audited in full in this window (at most the bound).
    pub audited: u32,
    /// Counted refusals by stable code.
    pub counts: BTreeMap<String, u64>,
    /// The first and last position counted (Kafka offsets; the API has none).
    pub first_position: Option<i64>,
    pub last_position: Option<i64>,
}

impl<S> Summary<S> {
    /// Counted refusals in all.
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }
}

#[derive(Debug)]
struct Window {
    start_ms: i64,
    audited: u32,
    counts: BTreeMap<String, u64>,
    first_position: Option<i64>,
    last_position: Option<i64>,
}

/// The windows of every source seen (one entry per source with a window open).
#[derive(Debug)]
pub struct AuditBudget<S> {
    per_window: u32,
    window_ms: i64,
    windows: HashMap<S, Window>,
}

impl<S: Eq + Hash + Clone> Default for AuditBudget<S> {
    fn default() -> Self {
        AuditBudget::new(FULL_AUDITS_PER_SOURCE_PER_WINDOW, AUDIT_WINDOW_MS)
    }
}

impl<S: Eq + Hash + Clone> AuditBudget<S> {
    pub fn new(per_window: u32, window_ms: i64) -> Self {
        AuditBudget {
            per_window,
            window_ms: window_ms.max(1),
            windows: HashMap::new(),
        }
    }

    /// One refused message of `source` with `code` at `now_ms` (`position`: its Kafka
    /// offset). Returns what to do with it, and the summary of the source's previous
    /// window if that ended with counted refusals (record it first: it is older).
    pub fn admit(
        &mut self,
        source: &S,
        code: &str,
        now_ms: i64,
        position: Option<i64>,
    ) -> (Verdict, Option<Summary<S>>) {
        let mut closed = None;
        if let Some(w) = self.windows.get(source)
            && now_ms >= w.start_ms + self.window_ms
        {
            closed = self.close(source);
        }
        let w = self.windows.entry(source.clone()).or_insert(Window {
            start_ms: now_ms,
            audited: 0,
            counts: BTreeMap::new(),
            first_position: None,
            last_position: None,
        });
        if w.audited < self.per_window {
            w.audited += 1;
            return (Verdict::Audit, closed);
        }
        *w.counts.entry(code.to_string()).or_default() += 1;
        if w.first_position.is_none() {
            w.first_position = position;
        }
        if position.is_some() {
            w.last_position = position;
        }
        (Verdict::Count, closed)
    }

    /// Summaries of the windows that ended by `now_ms` (sources that went quiet), in
    /// source order of no significance; windows without counted refusals just close.
    pub fn due(&mut self, now_ms: i64) -> Vec<Summary<S>> {
        let ended: Vec<S> = self
            .windows
            .iter()
            .filter(|(_, w)| now_ms >= w.start_ms + self.window_ms)
            .map(|(s, _)| s.clone())
            .collect();
        ended.iter().filter_map(|s| self.close(s)).collect()
    }

    /// Every open window's summary now (shutting down): counted refusals are recorded
    /// before the instance stops.
    pub fn drain(&mut self) -> Vec<Summary<S>> {
        let all: Vec<S> = self.windows.keys().cloned().collect();
        all.iter().filter_map(|s| self.close(s)).collect()
    }

    /// When the earliest open window ends (to wake up for [`AuditBudget::due`]).
    pub fn next_due_ms(&self) -> Option<i64> {
        self.windows
            .values()
            .filter(|w| !w.counts.is_empty())
            .map(|w| w.start_ms + self.window_ms)
            .min()
    }

    fn close(&mut self, source: &S) -> Option<Summary<S>> {
        let w = self.windows.remove(source)?;
        (!w.counts.is_empty()).then(|| Summary {
            source: source.clone(),
            window_start_ms: w.start_ms,
            window_end_ms: w.start_ms + self.window_ms,
            audited: w.audited,
            counts: w.counts,
            first_position: w.first_position,
            last_position: w.last_position,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_flood_is_audited_up_to_the_bound_then_counted() {
        let mut b: AuditBudget<i32> = AuditBudget::new(3, 1_000);
        let verdicts: Vec<Verdict> = (0..5)
            .map(|i| b.admit(&7, "invalid_json", 10 + i, Some(100 + i)).0)
            .collect();
        assert_eq!(
            verdicts,
            [
                Verdict::Audit,
                Verdict::Audit,
                Verdict::Audit,
                Verdict::Count,
                Verdict::Count
            ]
        );
        // Another source has its own budget.
        assert_eq!(b.admit(&8, "invalid_json", 20, None).0, Verdict::Audit);
        assert!(b.due(500).is_empty(), "the window is still open");
        assert_eq!(b.next_due_ms(), Some(1_010));
        // The next refusal after the window closes it: its summary comes back.
        let (v, closed) = b.admit(&7, "missing_field", 1_010, Some(200));
        assert_eq!(v, Verdict::Audit, "a new window, a new budget");
        let s = closed.expect("summary of the first window");
        assert_eq!(s.source, 7);
        assert_eq!((s.window_start_ms, s.window_end_ms), (10, 1_010));
        assert_eq!(s.audited, 3);
        assert_eq!(s.counts, BTreeMap::from([("invalid_json".to_string(), 2)]));
        assert_eq!((s.first_position, s.last_position), (Some(103), Some(104)));
        // Source 8 never went over: its window closes without a summary.
        assert!(b.due(5_000).is_empty());
        assert!(b.drain().is_empty());
    }

    #[test]
    fn quiet_sources_are_summarized_when_due_or_at_shutdown() {
        let mut b: AuditBudget<&str> = AuditBudget::new(1, 60_000);
        b.admit(&"api", "invalid_json", 0, None);
        b.admit(&"api", "invalid_amount", 1, None);
        b.admit(&"p0", "invalid_json", 2, Some(5));
        b.admit(&"p0", "invalid_json", 3, Some(6));
        let due = b.due(60_000);
        assert_eq!(due.len(), 1, "only api's window has ended: {due:?}");
        assert_eq!(due[0].source, "api");
        assert_eq!(due[0].total(), 1);
        let rest = b.drain();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].source, "p0");
        assert_eq!(rest[0].first_position, Some(6));
        assert!(b.drain().is_empty());
    }

    proptest! {
        /// Whatever the arrival times and codes: per source and window at most the bound
        /// is audited; audited + summarized counts = every refusal, per code too.
        #[test]
        fn audits_are_bounded_and_counts_add_up(
            per_window in 1u32..8,
            window_ms in 1i64..5_000,
            arrivals in proptest::collection::vec((0u8..3, 0i64..400, 0usize..4), 0..400),
        ) {
            const CODES: [&str; 4] = ["invalid_json", "missing_field", "invalid_amount", "key_not_agent_id"];
            let mut b: AuditBudget<u8> = AuditBudget::new(per_window, window_ms);
            let mut now = 0i64;
            let mut audited: BTreeMap<(u8, String), u64> = BTreeMap::new();
            let mut summarized: BTreeMap<(u8, String), u64> = BTreeMap::new();
            let mut sent: BTreeMap<(u8, String), u64> = BTreeMap::new();
            let mut audits_per_window: BTreeMap<(u8, i64), u32> = BTreeMap::new();
            let mut window_of: HashMap<u8, i64> = HashMap::new();
            let mut summaries = Vec::new();
            for (i, (source, gap, code)) in arrivals.into_iter().enumerate() {
                now += gap;
                let code = CODES[code];
                *sent.entry((source, code.into())).or_default() += 1;
                let (v, closed) = b.admit(&source, code, now, Some(i as i64));
                summaries.extend(closed);
                let start = *window_of
                    .entry(source)
                    .and_modify(|s| if now >= *s + window_ms { *s = now })
                    .or_insert(now);
                if v == Verdict::Audit {
                    *audited.entry((source, code.into())).or_default() += 1;
                    *audits_per_window.entry((source, start)).or_default() += 1;
                }
                if i % 7 == 0 {
                    summaries.extend(b.due(now));
                    window_of.retain(|_, s| now < *s + window_ms);
                }
            }
            summaries.extend(b.drain());
            for n in audits_per_window.values() {
                prop_assert!(*n <= per_window);
            }
            for s in &summaries {
                prop_assert!(s.total() > 0);
                prop_assert!(s.audited == per_window, "a summary exists only past the bound");
                for (code, n) in &s.counts {
                    *summarized.entry((s.source, code.clone())).or_default() += n;
                }
            }
            for (key, n) in &sent {
                let got = audited.get(key).copied().unwrap_or(0) + summarized.get(key).copied().unwrap_or(0);
                prop_assert_eq!(got, *n, "{:?}", key);
            }
        }
    }
}
