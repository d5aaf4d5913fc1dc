//! Token bucket with continuous refill, from an injected clock.
//!
//! The bucket starts full, refills at `rate` per second and never holds more than `capacity`.
//! A take of `cost` is allowed when the level is at least `cost` (a zero cost therefore only
//! requires the bucket not to be in debt). An after-the-fact charge may drive the level below
//! zero (debt), which blocks every take until it has refilled.

/// Time tolerance of a decision. Unix seconds near 1.7e9 have a resolution of ~2.4e-7 s, so a
/// request made exactly when its token is due can compute a level a hair under the cost (600/min
/// refilled for 0.1 s gives 0.99999905). A request within one microsecond of being due is
/// admitted, and `remaining` is not shown one lower for rounding: at most `rate × 1 µs` of extra
/// admission, once (the level then sits at most that far below zero).
pub const TOLERANCE_S: f64 = 1e-6;

/// The level tolerance of a bucket: one microsecond of refill, plus float noise.
pub fn tolerance(spec: BucketSpec) -> f64 {
    spec.rate * TOLERANCE_S + 1e-9
}

/// Whether a bucket at `level` allows taking `need`.
pub fn allows(spec: BucketSpec, level: f64, need: f64) -> bool {
    level + tolerance(spec) >= need
}

/// A bucket's parameters. They are given with every call, so a plan change applies at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BucketSpec {
    /// Maximum level (the burst).
    pub capacity: f64,
    /// Refill per second.
    pub rate: f64,
}

/// A bucket's state: its level at time `updated` (unix seconds), and the last spec used.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenBucket {
    level: f64,
    updated: f64,
    spec: BucketSpec,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn full(spec: BucketSpec, now: f64) -> Self {
        Self {
            level: spec.capacity,
            updated: now,
            spec,
        }
    }

    /// The level at `now` under `spec` (no refill for a clock that went backwards).
    pub fn level_at(&self, spec: BucketSpec, now: f64) -> f64 {
        let elapsed = (now - self.updated).max(0.0);
        (self.level + spec.rate * elapsed).min(spec.capacity)
    }

    /// Brings the state forward to `now` under `spec`.
    pub fn refill(&mut self, spec: BucketSpec, now: f64) {
        self.level = self.level_at(spec, now);
        self.updated = self.updated.max(now);
        self.spec = spec;
    }

    /// Takes `cost` if the level allows it; returns whether it did.
    pub fn try_take(&mut self, spec: BucketSpec, now: f64, cost: f64) -> bool {
        self.refill(spec, now);
        if allows(spec, self.level, cost) {
            self.level -= cost;
            true
        } else {
            false
        }
    }

    /// Subtracts `amount` unconditionally (may go into debt); a negative amount refunds, up to
    /// the capacity.
    pub fn charge(&mut self, spec: BucketSpec, now: f64, amount: f64) {
        self.refill(spec, now);
        self.level = (self.level - amount).min(spec.capacity);
    }

    /// The level as of the last update.
    pub fn level(&self) -> f64 {
        self.level
    }

    /// Equivalent to an absent (fresh, full) bucket at `now` under its last spec.
    pub fn is_full_at(&self, now: f64) -> bool {
        self.level_at(self.spec, now) >= self.spec.capacity
    }
}

/// Seconds until a bucket at `level` holds `need` (0 if it does; infinite if it never will).
pub fn wait_for(spec: BucketSpec, level: f64, need: f64) -> f64 {
    if allows(spec, level, need) {
        0.0
    } else if need > spec.capacity || spec.rate <= 0.0 {
        f64::INFINITY
    } else {
        (need - level) / spec.rate
    }
}

/// Seconds until a bucket at `level` is full again.
pub fn until_full(spec: BucketSpec, level: f64) -> f64 {
    wait_for(spec, level, spec.capacity)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: BucketSpec = BucketSpec {
        capacity: 10.0,
        rate: 2.0,
    };

    #[test]
    fn starts_full_and_refills_continuously_up_to_capacity() {
        let mut b = TokenBucket::full(SPEC, 100.0);
        assert!(b.try_take(SPEC, 100.0, 10.0));
        assert!(!b.try_take(SPEC, 100.0, 1.0));
        assert!((b.level_at(SPEC, 101.25) - 2.5).abs() < 1e-12);
        assert!((b.level_at(SPEC, 1000.0) - 10.0).abs() < 1e-12);
    }

    #[test]
    fn zero_cost_take_is_refused_only_in_debt() {
        let mut b = TokenBucket::full(SPEC, 0.0);
        assert!(b.try_take(SPEC, 0.0, 0.0));
        b.charge(SPEC, 0.0, 14.0);
        assert!(!b.try_take(SPEC, 0.0, 0.0));
        assert!(b.try_take(SPEC, 2.0, 0.0));
    }

    #[test]
    fn token_due_now_is_granted_despite_timestamp_rounding() {
        // 600/min, drained at a real unix time: 0.1 s later the computed level is 0.99999905.
        let spec = BucketSpec {
            capacity: 600.0,
            rate: 10.0,
        };
        let t0 = 1_764_115_000.123;
        let mut b = TokenBucket::full(spec, t0);
        assert!(b.try_take(spec, t0, 600.0));
        assert!(b.level_at(spec, t0 + 0.1) < 1.0);
        assert!(b.try_take(spec, t0 + 0.1, 1.0));
        assert!(!b.try_take(spec, t0 + 0.1, 1.0));
    }

    #[test]
    fn clock_going_backwards_does_not_refill() {
        let mut b = TokenBucket::full(SPEC, 50.0);
        assert!(b.try_take(SPEC, 50.0, 10.0));
        assert!(!b.try_take(SPEC, 40.0, 1.0));
        assert!(b.try_take(SPEC, 50.5, 1.0));
    }

    #[test]
    fn wait_is_infinite_when_cost_exceeds_capacity_or_no_refill() {
        assert!(wait_for(SPEC, 0.0, 11.0).is_infinite());
        let still = BucketSpec {
            capacity: 10.0,
            rate: 0.0,
        };
        assert!(wait_for(still, 0.0, 1.0).is_infinite());
        assert!((wait_for(SPEC, 4.0, 5.0) - 0.5).abs() < 1e-12);
        assert!((until_full(SPEC, -2.0) - 6.0).abs() < 1e-12);
    }
}
