//! The spend records of one limit scope (an agent, or an entity) in acceptance order,
//! with running totals: what an unfiltered limit's window holds is the difference of two
//! prefix sums (a Fenwick tree), not a scan of the scope's history. SPEC §10 asks
//! deciding with limits to stay within 2 µs however long the history is; a scan grows
//! with it (and replay, which decides every intent again, grew quadratically).
//!
//! Filtered limits and records in another currency than the totals' are still summed by
//! scanning the window's entries: their attributes are kept here, interned, so the scan
//! reads no map and parses nothing.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use super::machine::IntentKey;
use crate::intent::Purpose;
use crate::policy::limits::{Attributes, CompiledLimit, SoFar, Span};

/// The texts a filter reads of a record, shared by every record with the same ones
/// (one pointer per entry instead of four: entries were 112 bytes, ~70 MB of replay's
/// peak at 100,000 records before round 2).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct RecordAttributes {
    pub currency: Box<str>,
    pub category: Box<str>,
    pub beneficiary: Box<str>,
    pub country: Option<Box<str>>,
}

/// One record as a limit sees it.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub at: DateTime<Utc>,
    pub intent: IntentKey,
    pub amount: Decimal,
    pub counts: bool,
    /// `None`: a purpose this build does not know; such a record counts toward nothing
    /// (as a filter could not be asked about it).
    pub purpose: Option<Purpose>,
    pub attributes: Arc<RecordAttributes>,
}

impl Entry {
    fn currency(&self) -> &str {
        &self.attributes.currency
    }

    fn attributes(&self) -> Option<Attributes<'_>> {
        Some(Attributes {
            category: &self.attributes.category,
            beneficiary: &self.attributes.beneficiary,
            country: self.attributes.country.as_deref(),
            purpose: self.purpose?,
        })
    }
}

/// Most timelines (one per agent) hold a record or two: up to this many entries, sums
/// are a scan and no running totals are kept (at 100,000 agents the tree, the total
/// and their allocations were ~10 MB of replay's peak). Above it, the Fenwick tree.
const SCANNED_MAX: usize = 16;

#[derive(Debug, Clone, Default)]
pub(crate) struct Timeline {
    /// In acceptance order (ties in arrival order).
    entries: Vec<Entry>,
    /// The currency of the running totals: the first record's. (A policy's records are
    /// all in its currency; another appears only if a policy changed currency.)
    /// (Kept as the first record's shared attributes: no allocation per timeline.)
    currency: Option<Arc<RecordAttributes>>,
    /// The running totals, once the timeline holds more than [`SCANNED_MAX`] entries.
    sums: Option<Box<Sums>>,
}

#[derive(Debug, Clone, Default)]
struct Sums {
    /// Fenwick tree, 1-based: `tree[i - 1]` sums what entries `(i − lowbit(i), i]` hold
    /// in `currency`.
    tree: Vec<SoFar>,
    /// What every entry holds (`prefix(len)`, kept so that a window reaching the newest
    /// record, the usual case, needs one prefix query).
    total: SoFar,
}

fn lowbit(i: usize) -> usize {
    i & i.wrapping_neg()
}

fn add(a: SoFar, b: SoFar) -> SoFar {
    SoFar {
        amount: a.amount + b.amount,
        count: a.count + b.count,
    }
}

fn sub(a: SoFar, b: SoFar) -> SoFar {
    debug_assert!(a.count >= b.count, "prefix counts only grow");
    SoFar {
        amount: a.amount - b.amount,
        count: a.count - b.count,
    }
}

/// The sum of the first `n` nodes' entries of a Fenwick tree.
fn tree_prefix(tree: &[SoFar], mut n: usize) -> SoFar {
    let mut sum = SoFar::default();
    while n > 0 {
        sum = add(sum, tree[n - 1]);
        n -= lowbit(n);
    }
    sum
}

impl Timeline {
    fn currency(&self) -> Option<&str> {
        self.currency.as_deref().map(|a| &*a.currency)
    }

    /// What one entry adds to the running totals.
    fn held(&self, e: &Entry) -> SoFar {
        let in_currency = self.currency() == Some(e.currency());
        if !in_currency || e.purpose.is_none() {
            return SoFar::default();
        }
        SoFar {
            amount: e.amount,
            count: u32::from(e.counts),
        }
    }

    /// The sum of the first `n` entries.
    fn prefix(&self, n: usize) -> SoFar {
        match &self.sums {
            Some(sums) => tree_prefix(&sums.tree, n),
            None => self.entries[..n]
                .iter()
                .fold(SoFar::default(), |sum, e| add(sum, self.held(e))),
        }
    }

    /// What every entry holds.
    fn total(&self) -> SoFar {
        match &self.sums {
            Some(sums) => sums.total,
            None => self.prefix(self.entries.len()),
        }
    }

    /// Recomputes tree nodes `from..` (1-based) after entries from there changed place.
    /// Node i holds entry i plus its children, the nodes i − 1, i − 2, i − 4, … above
    /// i − lowbit(i), which are already right: one addition per node on average (two
    /// prefix sums per node were 13 % of replay's CPU when records of one entity arrive
    /// slightly out of time order, as concurrent deciders commit them).
    fn rebuild_from(&self, sums: &mut Sums, from: usize) {
        sums.tree.truncate(from - 1);
        for i in from..=self.entries.len() {
            let mut node = self.held(&self.entries[i - 1]);
            let mut m = 1;
            while m < lowbit(i) {
                node = add(node, sums.tree[i - m - 1]);
                m <<= 1;
            }
            sums.tree.push(node);
        }
    }

    pub fn insert(&mut self, e: Entry) {
        if self.currency.is_none() {
            self.currency = Some(e.attributes.clone());
        }
        // Records mostly arrive in time order (the fold, a load ordered by time): then
        // this appends and updates O(log n) nodes.
        let at = self.entries.partition_point(|x| x.at <= e.at);
        let held = self.held(&e);
        // Most scopes (agents) hold one or two records, but `Vec`'s first growth
        // reserves room for 4 entries: grow by doubling from 1 instead (same amortised
        // cost for the large, entity timelines).
        if self.entries.len() == self.entries.capacity() {
            let more = self.entries.len().max(1);
            self.entries.reserve_exact(more);
        }
        self.entries.insert(at, e);
        let mut sums = match self.sums.take() {
            Some(mut sums) => {
                sums.total = add(sums.total, held);
                sums
            }
            None if self.entries.len() > SCANNED_MAX => Box::new(Sums {
                tree: Vec::with_capacity(self.entries.capacity()),
                total: self.prefix(self.entries.len()),
            }),
            None => return,
        };
        if sums.tree.capacity() < self.entries.capacity() {
            let more = self.entries.capacity() - sums.tree.len();
            sums.tree.reserve_exact(more);
        }
        // A tree built now starts from node 1; one kept, from the entry inserted.
        let from = if sums.tree.is_empty() { 1 } else { at + 1 };
        self.rebuild_from(&mut sums, from);
        self.sums = Some(sums);
    }

    /// A record's holds changed (settled, approved, expired, refunded).
    pub fn update(&mut self, intent: &IntentKey, at: DateTime<Utc>, amount: Decimal, counts: bool) {
        let first = self.entries.partition_point(|x| x.at < at);
        let Some(k) = self.entries[first..]
            .iter()
            .take_while(|x| x.at == at)
            .position(|x| &x.intent == intent)
            .map(|k| first + k)
        else {
            return;
        };
        let before = self.held(&self.entries[k]);
        self.entries[k].amount = amount;
        self.entries[k].counts = counts;
        let after = self.held(&self.entries[k]);
        if let Some(sums) = &mut self.sums {
            sums.total = add(sub(sums.total, before), after);
            let mut i = k + 1;
            while i <= sums.tree.len() {
                sums.tree[i - 1] = add(sub(sums.tree[i - 1], before), after);
                i += lowbit(i);
            }
        }
    }

    /// Entries `[lo, hi)` in `span`.
    fn range(&self, span: &Span) -> (usize, usize) {
        let lo = match span.from {
            None => 0,
            Some(f) if span.from_inclusive => self.entries.partition_point(|x| x.at < f),
            Some(f) => self.entries.partition_point(|x| x.at <= f),
        };
        // A record after the window's instant exists only when transactions overlap
        // (another instance accepted later but committed first); only then is the
        // window's end needed.
        let hi = match self.entries.last() {
            Some(last) if last.at > span.at => match span.until() {
                Some(until) => self.entries.partition_point(|x| x.at < until),
                None => self.entries.len(),
            },
            _ => self.entries.len(),
        };
        (lo, hi.max(lo))
    }

    /// What counted toward `limit` in `span`, in `currency`, passing its filter.
    pub fn sum(&self, limit: &CompiledLimit, span: &Span, currency: &str) -> SoFar {
        let (lo, hi) = self.range(span);
        if limit.filter.is_any() && self.currency() == Some(currency) {
            let upper = if hi == self.entries.len() {
                self.total()
            } else {
                self.prefix(hi)
            };
            let lower = if lo == 0 {
                SoFar::default()
            } else {
                self.prefix(lo)
            };
            return sub(upper, lower);
        }
        self.entries[lo..hi]
            .iter()
            .filter_map(|e| toward(e, limit, currency))
            .fold(SoFar::default(), add)
    }

    /// When the earliest entry that counts toward `limit` in `span` was accepted (a
    /// trailing window frees up as it ages out).
    pub fn earliest(
        &self,
        limit: &CompiledLimit,
        span: &Span,
        currency: &str,
    ) -> Option<DateTime<Utc>> {
        let (lo, hi) = self.range(span);
        self.entries[lo..hi]
            .iter()
            .find(|e| {
                toward(e, limit, currency).is_some_and(|s| s.count > 0 || !s.amount.is_zero())
            })
            .map(|e| e.at)
    }
}

/// What one entry holds toward `limit` in `currency` (`None`: it does not count). The
/// running totals hold the same for an unfiltered limit in the timeline's currency.
fn toward(e: &Entry, limit: &CompiledLimit, currency: &str) -> Option<SoFar> {
    let attrs = e.attributes()?;
    (e.currency() == currency && limit.filter.matches(&attrs)).then(|| SoFar {
        amount: e.amount,
        count: u32::from(e.counts),
    })
}

impl Timeline {}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(k: u8, at_s: i64, amount: i64, counts: bool, currency: &str) -> Entry {
        Entry {
            at: DateTime::from_timestamp(1_800_000_000 + at_s, 0).unwrap(),
            intent: [k; 16],
            amount: Decimal::new(amount, 2),
            counts,
            purpose: Some(Purpose::Card),
            attributes: Arc::new(RecordAttributes {
                currency: currency.into(),
                category: "travel".into(),
                beneficiary: "airline:latam".into(),
                country: None,
            }),
        }
    }

    /// The same sum by scanning every entry (the definition).
    fn scanned(t: &Timeline, lo: usize, hi: usize, currency: &str) -> SoFar {
        let mut s = SoFar::default();
        for e in &t.entries[lo..hi] {
            if e.currency() == currency {
                s.amount += e.amount;
                s.count += u32::from(e.counts);
            }
        }
        s
    }

    proptest! {
        /// Inserting in any order and updating any entry keeps every prefix equal to a
        /// scan of the entries.
        #[test]
        fn prefix_sums_equal_a_scan(
            records in prop::collection::vec((0i64..50, -500i64..50_000, any::<bool>(), 0u8..8), 1..60),
            updates in prop::collection::vec((any::<prop::sample::Index>(), -500i64..50_000, any::<bool>()), 0..20),
        ) {
            let mut t = Timeline::default();
            for (k, (at, amount, counts, cur)) in records.iter().enumerate() {
                let currency = if *cur == 0 { "USD" } else { "BRL" };
                t.insert(entry(k as u8, *at, *amount, *counts, currency));
            }
            prop_assert!(t.entries.windows(2).all(|w| w[0].at <= w[1].at));
            for (ix, amount, counts) in updates {
                let e = &t.entries[ix.index(t.entries.len())];
                let (intent, at) = (e.intent, e.at);
                t.update(&intent, at, Decimal::new(amount, 2), counts);
            }
            let currency = t.currency().unwrap().to_string();
            for hi in 0..=t.entries.len() {
                let want = scanned(&t, 0, hi, &currency);
                prop_assert_eq!(t.prefix(hi), want);
            }
            prop_assert_eq!(t.total(), scanned(&t, 0, t.entries.len(), &currency));
            prop_assert_eq!(t.sums.is_some(), t.entries.len() > SCANNED_MAX);
        }
    }
}
