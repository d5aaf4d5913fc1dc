//! A histogram child's pending observations (`gateway/metrics_buffer.py`): the count per bucket
//! and the sum, added to by the request path and taken by the once-a-second flush, which adds
//! them into prometheus-client's child as `Histogram.observe` would have.

/// Upper bounds (ascending, prometheus-client's `_upper_bounds`, the last `+Inf`), the count
/// observed into each bucket since the last `take`, and their sum.
pub struct Pending {
    bounds: Vec<f64>,
    counts: Vec<u64>,
    sum: f64,
}

impl Pending {
    /// None when `bounds` is empty.
    pub fn new(bounds: Vec<f64>) -> Option<Self> {
        if bounds.is_empty() {
            return None;
        }
        let counts = vec![0; bounds.len()];
        Some(Self {
            bounds,
            counts,
            sum: 0.0,
        })
    }

    /// The bucket of `value` is the first whose bound is not below it (Python's
    /// `bisect_left(bounds, value)`: a NaN compares below nothing, so it goes to the first);
    /// past every bound (no `+Inf` last), the last. The sum adds `value` as a float `+=` does.
    pub fn observe(&mut self, value: f64) {
        let index = self.bounds.partition_point(|bound| *bound < value);
        let last = self.counts.len() - 1;
        self.counts[index.min(last)] += 1;
        self.sum += value;
    }

    /// The counts and the sum since the last take, zeroed; None when nothing was observed.
    pub fn take(&mut self) -> Option<(Vec<u64>, f64)> {
        if self.counts.iter().all(|count| *count == 0) {
            return None;
        }
        let counts = std::mem::replace(&mut self.counts, vec![0; self.bounds.len()]);
        Some((counts, std::mem::take(&mut self.sum)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a failure is the test failing
    use super::*;

    #[test]
    fn a_value_goes_to_the_first_bucket_whose_bound_is_not_below_it() {
        let mut pending = Pending::new(vec![0.1, 0.5, f64::INFINITY]).unwrap();
        for value in [0.05, 0.1, 0.2, 0.5, 7.0, f64::NAN] {
            pending.observe(value);
        }
        let (counts, sum) = pending.take().unwrap();
        assert_eq!(counts, vec![3, 2, 1]);
        assert!(sum.is_nan());
        assert_eq!(pending.take(), None);
    }

    #[test]
    fn the_sum_adds_in_order_as_python_floats_do() {
        let mut pending = Pending::new(vec![f64::INFINITY]).unwrap();
        let values = [0.1, 0.2, 0.3, 1e-9, 12.5];
        let mut expected = 0.0;
        for value in values {
            pending.observe(value);
            expected += value;
        }
        assert_eq!(pending.take(), Some((vec![5], expected)));
    }

    #[test]
    fn no_bounds_no_histogram() {
        assert!(Pending::new(Vec::new()).is_none());
    }
}
