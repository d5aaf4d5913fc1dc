//! Daily quota that resets at 00:00 UTC, from an injected clock (unix seconds).

const DAY: f64 = 86_400.0;

/// The UTC day number (days since the epoch) of `now`.
pub fn utc_day(now: f64) -> i64 {
    (now / DAY).floor() as i64
}

/// Seconds from `now` until the next 00:00 UTC.
pub fn until_midnight(now: f64) -> f64 {
    (utc_day(now) + 1) as f64 * DAY - now
}

/// Units used on one UTC day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DailyQuota {
    day: i64,
    used: u64,
}

impl DailyQuota {
    /// Nothing used on `now`'s day.
    pub fn new(now: f64) -> Self {
        Self {
            day: utc_day(now),
            used: 0,
        }
    }

    /// Units used on `now`'s day. A clock that went back to an earlier day keeps the count
    /// (never resets early).
    pub fn used_at(&self, now: f64) -> u64 {
        if utc_day(now) > self.day {
            0
        } else {
            self.used
        }
    }

    /// Adds `cost` to `now`'s day.
    pub fn consume(&mut self, now: f64, cost: u64) {
        let today = utc_day(now);
        if today > self.day {
            self.day = today;
            self.used = 0;
        }
        self.used = self.used.saturating_add(cost);
    }

    /// Equivalent to an absent quota at `now` (nothing used today).
    pub fn is_empty_at(&self, now: f64) -> bool {
        self.used_at(now) == 0
    }
}

/// Whether `used + cost` fits in `limit`.
pub fn allows(limit: u64, used: u64, cost: u64) -> bool {
    used.checked_add(cost).is_some_and(|total| total <= limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resets_at_midnight_utc() {
        // 2026-11-25 23:59:59 UTC and one second later.
        let before = 1_764_115_199.0;
        let mut q = DailyQuota::new(before);
        q.consume(before, 5);
        assert_eq!(q.used_at(before), 5);
        assert_eq!(q.used_at(before + 1.0), 0);
        assert!((until_midnight(before) - 1.0).abs() < 1e-9);
        assert!((until_midnight(before + 1.0) - DAY).abs() < 1e-9);
    }

    #[test]
    fn earlier_day_keeps_the_count() {
        let mut q = DailyQuota::new(2.0 * DAY);
        q.consume(2.0 * DAY, 3);
        assert_eq!(q.used_at(DAY), 3);
    }

    #[test]
    fn allows_up_to_the_limit_without_overflow() {
        assert!(allows(10, 9, 1));
        assert!(!allows(10, 9, 2));
        assert!(!allows(u64::MAX, u64::MAX, 1));
        assert!(allows(0, 0, 0));
    }
}
