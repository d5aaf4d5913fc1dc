//! The keyed limiter: token buckets and daily quotas checked and consumed together.
//!
//! `acquire` admits only if every limit allows, then consumes from all of them; a denial
//! consumes nothing. Costs of limits that share a key within one call add up.
//!
//! **Memory.** When more than `max_keys` entries are held, entries equivalent to an absent one
//! are dropped first (a bucket refilled to full under its last parameters, a quota with nothing
//! used today): answers stay exact. If more than 90 % of `max_keys` are still held, the least
//! recently used entries are dropped down to 90 %, so that the O(n) sweep runs at most once per
//! `max_keys / 10` new keys.

use std::collections::HashMap;

use foldhash::fast::RandomState;
use smallvec::SmallVec;
use std::sync::{Mutex, PoisonError};

use crate::bucket::{self, BucketSpec, TokenBucket};
use crate::errors::CoreError;
use crate::quota::{self, DailyQuota};

/// One bucket limit of a call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BucketLimit<'a> {
    /// The key (e.g. `rpm:<account>`).
    pub key: &'a str,
    /// Capacity and refill rate.
    pub spec: BucketSpec,
    /// What this request takes.
    pub cost: f64,
}

/// One daily quota of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaLimit<'a> {
    /// The key (e.g. `rpd:<account>`).
    pub key: &'a str,
    /// Units per UTC day.
    pub limit: u64,
    /// What this request takes.
    pub cost: u64,
}

/// The answer to `acquire`/`peek`.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Every limit allowed (and, for `acquire`, all were consumed).
    pub allowed: bool,
    /// 0 when allowed; else the wait until every denying limit would admit this cost
    /// (infinite when one never will: cost above capacity or limit, or no refill).
    pub retry_after_s: f64,
    /// Per limit (buckets then quotas): what is left after this decision, floored at 0
    /// (`peek` reports what `acquire` would leave).
    pub remaining: Vec<i64>,
    /// Per limit: bucket → seconds until full again; quota → seconds until 00:00 UTC.
    pub reset_s: Vec<f64>,
}

#[derive(Debug)]
struct Entry<T> {
    state: T,
    last_used: u64,
}

#[derive(Debug, Default)]
struct Inner {
    // foldhash: several times faster than SipHash on short keys, and randomly seeded per map.
    buckets: HashMap<String, Entry<TokenBucket>, RandomState>,
    quotas: HashMap<String, Entry<DailyQuota>, RandomState>,
    tick: u64,
    /// Entries dropped by the LRU stage (the only inexact eviction).
    lru_evicted: u64,
}

/// Thread-safe keyed limiter with bounded memory.
#[derive(Debug)]
pub struct Limiter {
    max_keys: usize,
    inner: Mutex<Inner>,
}

fn invalid(what: &str) -> CoreError {
    CoreError::InvalidArgument(what.to_owned())
}

fn check_now(now: f64) -> Result<(), CoreError> {
    if now.is_finite() {
        Ok(())
    } else {
        Err(invalid("now_s must be a finite number"))
    }
}

fn check_bucket(spec: BucketSpec, cost: f64) -> Result<(), CoreError> {
    let ok = spec.capacity.is_finite()
        && spec.capacity >= 0.0
        && spec.rate.is_finite()
        && spec.rate >= 0.0
        && cost.is_finite()
        && cost >= 0.0;
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "bucket capacity, refill rate and cost must be finite and >= 0",
        ))
    }
}

fn floor_i64(x: f64) -> i64 {
    // Saturating float → int cast; the level is at most the capacity.
    x.floor().max(0.0) as i64
}

impl Inner {
    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    fn len(&self) -> usize {
        self.buckets.len() + self.quotas.len()
    }

    /// Charges a bucket (creating it full); returns whether a key was inserted.
    fn charge_bucket(&mut self, key: &str, spec: BucketSpec, now: f64, amount: f64) -> bool {
        let tick = self.next_tick();
        if let Some(e) = self.buckets.get_mut(key) {
            e.state.charge(spec, now, amount);
            e.last_used = tick;
            return false;
        }
        let mut state = TokenBucket::full(spec, now);
        state.charge(spec, now, amount);
        self.buckets.insert(
            key.to_owned(),
            Entry {
                state,
                last_used: tick,
            },
        );
        true
    }

    /// Consumes from a quota (creating it); returns whether a key was inserted.
    fn consume_quota(&mut self, key: &str, now: f64, cost: u64) -> bool {
        let tick = self.next_tick();
        if let Some(e) = self.quotas.get_mut(key) {
            e.state.consume(now, cost);
            e.last_used = tick;
            return false;
        }
        let mut state = DailyQuota::new(now);
        state.consume(now, cost);
        self.quotas.insert(
            key.to_owned(),
            Entry {
                state,
                last_used: tick,
            },
        );
        true
    }

    /// Marks existing keys as used (unique ticks: the eviction relies on it).
    fn touch(&mut self, buckets: &[BucketLimit<'_>], quotas: &[QuotaLimit<'_>]) {
        for b in buckets {
            let tick = self.next_tick();
            if let Some(e) = self.buckets.get_mut(b.key) {
                e.last_used = tick;
            }
        }
        for q in quotas {
            let tick = self.next_tick();
            if let Some(e) = self.quotas.get_mut(q.key) {
                e.last_used = tick;
            }
        }
    }

    fn evict(&mut self, max_keys: usize, now: f64) {
        if self.len() <= max_keys {
            return;
        }
        self.buckets.retain(|_, e| !e.state.is_full_at(now));
        self.quotas.retain(|_, e| !e.state.is_empty_at(now));
        let low_water = max_keys - max_keys / 10;
        let excess = self.len().saturating_sub(low_water);
        if excess == 0 {
            return;
        }
        let mut ticks: Vec<u64> = self
            .buckets
            .values()
            .map(|e| e.last_used)
            .chain(self.quotas.values().map(|e| e.last_used))
            .collect();
        // Ticks are unique, so exactly `excess` entries are below the threshold.
        let (_, &mut threshold, _) = ticks.select_nth_unstable(excess - 1);
        let before = self.len();
        self.buckets.retain(|_, e| e.last_used > threshold);
        self.quotas.retain(|_, e| e.last_used > threshold);
        self.lru_evicted += (before - self.len()) as u64;
    }
}

impl Limiter {
    /// A limiter that holds at most about `max_keys` keys (see the module docs).
    pub fn new(max_keys: usize) -> Self {
        Self {
            max_keys: max_keys.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Keys currently held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// How many entries the LRU stage has dropped so far (0 means every answer was exact).
    pub fn lru_evictions(&self) -> u64 {
        self.lock().lru_evicted
    }

    /// No key held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // No code path panics while holding the lock; if one did, the state is still valid.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits if every limit allows, then consumes from all; a denial consumes nothing.
    pub fn acquire(
        &self,
        buckets: &[BucketLimit<'_>],
        quotas: &[QuotaLimit<'_>],
        now: f64,
    ) -> Result<Decision, CoreError> {
        Ok(self.decide(buckets, quotas, now, true, || true)?.0)
    }

    /// `acquire` with one more condition decided under the limiter's lock (the credit and key
    /// budget reservations of an admission: `crate::admission`): `gate` runs only when every
    /// limit allows, and the limits are consumed only if it returns true. Returns the decision
    /// (the limits' own: `allowed` with a refusing gate is a peek's answer) and whether the
    /// limits were consumed.
    pub fn acquire_if(
        &self,
        buckets: &[BucketLimit<'_>],
        quotas: &[QuotaLimit<'_>],
        now: f64,
        gate: impl FnOnce() -> bool,
    ) -> Result<(Decision, bool), CoreError> {
        self.decide(buckets, quotas, now, true, gate)
    }

    /// The answer `acquire` would give, consuming nothing.
    pub fn peek(
        &self,
        buckets: &[BucketLimit<'_>],
        quotas: &[QuotaLimit<'_>],
        now: f64,
    ) -> Result<Decision, CoreError> {
        Ok(self.decide(buckets, quotas, now, false, || true)?.0)
    }

    /// An after-the-fact charge (e.g. tokens per minute from actual usage); may drive the level
    /// negative (debt). A negative amount refunds, up to the capacity.
    pub fn charge(
        &self,
        key: &str,
        spec: BucketSpec,
        amount: f64,
        now: f64,
    ) -> Result<(), CoreError> {
        check_now(now)?;
        check_bucket(spec, 0.0)?;
        if !amount.is_finite() {
            return Err(invalid("charge amount must be finite"));
        }
        let mut inner = self.lock();
        if inner.charge_bucket(key, spec, now, amount) {
            inner.evict(self.max_keys, now);
        }
        Ok(())
    }

    fn decide(
        &self,
        buckets: &[BucketLimit<'_>],
        quotas: &[QuotaLimit<'_>],
        now: f64,
        consume: bool,
        gate: impl FnOnce() -> bool,
    ) -> Result<(Decision, bool), CoreError> {
        check_now(now)?;
        for b in buckets {
            check_bucket(b.spec, b.cost)?;
        }
        let n = buckets.len() + quotas.len();
        let mut remaining = Vec::with_capacity(n);
        let mut reset_s = Vec::with_capacity(n);
        let mut inner = self.lock();

        // Check every limit, with the costs of limits sharing a key added up.
        // Calls carry a handful of limits: keep the scratch space on the stack.
        let mut levels: SmallVec<[(f64, f64); 4]> = SmallVec::new();
        let mut allowed = true;
        let mut retry_after: f64 = 0.0;
        for (i, b) in buckets.iter().enumerate() {
            let level = inner
                .buckets
                .get(b.key)
                .map_or(b.spec.capacity, |e| e.state.level_at(b.spec, now));
            let need: f64 = buckets[..=i]
                .iter()
                .filter(|o| o.key == b.key)
                .map(|o| o.cost)
                .sum();
            if !bucket::allows(b.spec, level, need) {
                allowed = false;
                retry_after = retry_after.max(bucket::wait_for(b.spec, level, need));
            }
            levels.push((level, need));
        }
        let mut used: SmallVec<[(u64, u64); 4]> = SmallVec::new();
        for (i, q) in quotas.iter().enumerate() {
            let u = inner.quotas.get(q.key).map_or(0, |e| e.state.used_at(now));
            let need = quotas[..=i]
                .iter()
                .filter(|o| o.key == q.key)
                .fold(0_u64, |acc, o| acc.saturating_add(o.cost));
            if !quota::allows(q.limit, u, need) {
                allowed = false;
                let wait = if need > q.limit {
                    f64::INFINITY
                } else {
                    quota::until_midnight(now)
                };
                retry_after = retry_after.max(wait);
            }
            used.push((u, need));
        }
        // (the gate runs under the lock: what it reserves and the limits move together)
        let consumed = allowed && consume && gate();

        for (b, &(level, need)) in buckets.iter().zip(&levels) {
            let after = if allowed { level - need } else { level };
            remaining.push(floor_i64(after + bucket::tolerance(b.spec)));
            reset_s.push(bucket::until_full(b.spec, after));
        }
        for (q, &(u, need)) in quotas.iter().zip(&used) {
            let after = if allowed { u.saturating_add(need) } else { u };
            remaining.push(i64::try_from(q.limit.saturating_sub(after)).unwrap_or(i64::MAX));
            reset_s.push(quota::until_midnight(now));
        }

        if consumed {
            let mut inserted = false;
            for b in buckets {
                inserted |= inner.charge_bucket(b.key, b.spec, now, b.cost);
            }
            for q in quotas {
                inserted |= inner.consume_quota(q.key, now, q.cost);
            }
            if inserted {
                inner.evict(self.max_keys, now);
            }
        } else {
            // Reading is use: keep recently checked keys away from LRU eviction.
            inner.touch(buckets, quotas);
        }
        drop(inner);
        let decision = Decision {
            allowed,
            retry_after_s: if allowed { 0.0 } else { retry_after },
            remaining,
            reset_s,
        };
        Ok((decision, consumed))
    }
}
