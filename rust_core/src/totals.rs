//! The request path's running totals (`gateway/observer.py`, `gateway/metrics_buffer.py`):
//! counters and histograms the observer keeps between two flushes, addressed by small integers
//! its memos hand out once per label set, and the one update a request makes at its end.
//!
//! Each counter slot adds its amounts as a Python float `+=` does (f64, in call order), each
//! histogram is a [`Pending`], so the flush adds into prometheus-client's children exactly what
//! the Python running totals added.

use crate::histogram::Pending;

/// What an HTTP request's end updates for its label set (route, method, status class,
/// streamed): its request counter, its duration histogram and its time-to-first-byte one.
#[derive(Clone, Copy)]
struct Requests {
    counter: usize,
    duration: usize,
    ttfb: usize,
}

/// The settlement's four counters (requests, prompt tokens, completion tokens, US dollars) sit
/// at `base..base + 4`.
pub const SETTLED_COUNTERS: usize = 4;

/// A request's end: what the observer gathered while it ran.
pub struct Ending {
    /// From [`Totals::requests`].
    pub requests: usize,
    pub duration_s: f64,
    pub ttfb_s: Option<f64>,
    /// The settlement counted with the end (its four counters' first slot), if any.
    pub settled: Option<Settled>,
}

/// A settlement's amounts, added into its four counters.
#[derive(Clone, Copy)]
pub struct Settled {
    pub base: usize,
    pub prompt_tokens: f64,
    pub completion_tokens: f64,
    pub cost_usd: f64,
}

#[derive(Default)]
pub struct Totals {
    counters: Vec<f64>,
    histograms: Vec<Pending>,
    requests: Vec<Requests>,
}

/// An index no slot of its kind has.
#[derive(Debug, PartialEq, Eq)]
pub struct NoSuchSlot;

impl Totals {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// `n` new counters, at zero: the first one's slot (the others follow it).
    pub fn counters(&mut self, n: usize) -> usize {
        let first = self.counters.len();
        self.counters.resize(first + n, 0.0);
        first
    }

    /// A new histogram with these upper bounds: its slot. None when `bounds` is empty.
    pub fn histogram(&mut self, bounds: Vec<f64>) -> Option<usize> {
        let pending = Pending::new(bounds)?;
        self.histograms.push(pending);
        Some(self.histograms.len() - 1)
    }

    /// A label set of HTTP requests (its counter and histograms made already): its slot.
    pub fn requests(
        &mut self,
        counter: usize,
        duration: usize,
        ttfb: usize,
    ) -> Result<usize, NoSuchSlot> {
        if counter >= self.counters.len()
            || duration >= self.histograms.len()
            || ttfb >= self.histograms.len()
        {
            return Err(NoSuchSlot);
        }
        self.requests.push(Requests {
            counter,
            duration,
            ttfb,
        });
        Ok(self.requests.len() - 1)
    }

    pub fn add(&mut self, counter: usize, amount: f64) -> Result<(), NoSuchSlot> {
        *self.counters.get_mut(counter).ok_or(NoSuchSlot)? += amount;
        Ok(())
    }

    pub fn observe(&mut self, histogram: usize, value: f64) -> Result<(), NoSuchSlot> {
        self.histograms
            .get_mut(histogram)
            .ok_or(NoSuchSlot)?
            .observe(value);
        Ok(())
    }

    /// One request billed: 1 request, its tokens and its cost.
    pub fn settle(&mut self, settled: Settled) -> Result<(), NoSuchSlot> {
        let slots = self
            .counters
            .get_mut(settled.base..settled.base + SETTLED_COUNTERS)
            .ok_or(NoSuchSlot)?;
        slots[0] += 1.0;
        slots[1] += settled.prompt_tokens;
        slots[2] += settled.completion_tokens;
        slots[3] += settled.cost_usd;
        Ok(())
    }

    /// A request's end: its request counted, its duration and time to first byte observed,
    /// and its settlement counted. Checked whole before anything is added: an index out of
    /// range adds nothing.
    pub fn end(&mut self, ending: &Ending) -> Result<(), NoSuchSlot> {
        let requests = *self.requests.get(ending.requests).ok_or(NoSuchSlot)?;
        if let Some(settled) = ending.settled {
            if settled.base + SETTLED_COUNTERS > self.counters.len() {
                return Err(NoSuchSlot);
            }
        }
        self.counters[requests.counter] += 1.0;
        self.histograms[requests.duration].observe(ending.duration_s);
        if let Some(ttfb_s) = ending.ttfb_s {
            self.histograms[requests.ttfb].observe(ttfb_s);
        }
        if let Some(settled) = ending.settled {
            self.settle(settled)?;
        }
        Ok(())
    }

    /// The counters' amounts since the last take, by slot, each zeroed: only those that are
    /// not zero (a zero adds nothing to a child, as the Python flush skipped it).
    pub fn take_counters(&mut self) -> Vec<(usize, f64)> {
        let mut taken = Vec::new();
        for (slot, amount) in self.counters.iter_mut().enumerate() {
            if *amount != 0.0 {
                taken.push((slot, std::mem::take(amount)));
            }
        }
        taken
    }

    /// Each histogram observed into since the last take: its slot, counts per bucket and sum,
    /// zeroed.
    pub fn take_histograms(&mut self) -> Vec<(usize, Vec<u64>, f64)> {
        self.histograms
            .iter_mut()
            .enumerate()
            .filter_map(|(slot, pending)| pending.take().map(|(counts, sum)| (slot, counts, sum)))
            .collect()
    }
}

/// A log line's milliseconds to the microsecond, as Python's `round(ms * 1000) / 1000`:
/// `round()` of a float rounds half to even, and the integer it gives came from a double, so
/// its true division by 1000 is the f64 division.
#[must_use]
pub fn to_the_microsecond(ms: f64) -> f64 {
    (ms * 1000.0).round_ties_even() / 1000.0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::float_cmp)] // tests: exact floats are the point
    use super::*;

    const BOUNDS: [f64; 3] = [0.1, 1.0, f64::INFINITY];

    fn http(totals: &mut Totals) -> usize {
        let counter = totals.counters(1);
        let duration = totals.histogram(BOUNDS.to_vec()).unwrap();
        let ttfb = totals.histogram(BOUNDS.to_vec()).unwrap();
        totals.requests(counter, duration, ttfb).unwrap()
    }

    #[test]
    fn an_end_counts_the_request_observes_its_times_and_adds_its_settlement() {
        let mut totals = Totals::new();
        let requests = http(&mut totals);
        let base = totals.counters(SETTLED_COUNTERS);
        let settled = Settled {
            base,
            prompt_tokens: 12.0,
            completion_tokens: 7.0,
            cost_usd: 0.000_026,
        };
        for ttfb_s in [Some(0.05), None] {
            totals
                .end(&Ending {
                    requests,
                    duration_s: 0.5,
                    ttfb_s,
                    settled: Some(settled),
                })
                .unwrap();
        }
        assert_eq!(
            totals.take_counters(),
            vec![(0, 2.0), (1, 2.0), (2, 24.0), (3, 14.0), (4, 0.000_052)]
        );
        assert_eq!(
            totals.take_histograms(),
            vec![(0, vec![0, 2, 0], 1.0), (1, vec![1, 0, 0], 0.05)]
        );
        assert!(totals.take_counters().is_empty());
        assert!(totals.take_histograms().is_empty());
    }

    #[test]
    fn a_counter_adds_in_call_order_as_a_python_float_does() {
        let mut totals = Totals::new();
        let slot = totals.counters(1);
        let mut expected = 0.0;
        for amount in [0.1, 0.2, 0.3, 1e-9, 1e16, -3.0] {
            totals.add(slot, amount).unwrap();
            expected += amount;
        }
        assert_eq!(totals.take_counters(), vec![(slot, expected)]);
    }

    #[test]
    fn a_gauge_back_where_it_was_is_not_taken() {
        let mut totals = Totals::new();
        let slot = totals.counters(1);
        totals.add(slot, 1.0).unwrap();
        totals.add(slot, -1.0).unwrap();
        assert!(totals.take_counters().is_empty());
    }

    #[test]
    fn an_index_out_of_range_adds_nothing() {
        let mut totals = Totals::new();
        let requests = http(&mut totals);
        assert_eq!(totals.add(1, 1.0), Err(NoSuchSlot));
        assert_eq!(totals.observe(2, 1.0), Err(NoSuchSlot));
        assert_eq!(totals.requests(0, 0, 2), Err(NoSuchSlot));
        let settled = Settled {
            base: 0,
            prompt_tokens: 1.0,
            completion_tokens: 1.0,
            cost_usd: 1.0,
        };
        assert_eq!(totals.settle(settled), Err(NoSuchSlot));
        let ending = Ending {
            requests,
            duration_s: 0.5,
            ttfb_s: Some(0.1),
            settled: Some(settled),
        };
        assert_eq!(totals.end(&ending), Err(NoSuchSlot));
        assert!(totals.take_counters().is_empty());
        assert!(totals.take_histograms().is_empty());
    }

    #[test]
    fn milliseconds_round_half_to_even_at_the_microsecond() {
        assert_eq!(to_the_microsecond(17.229_4), 17.229);
        assert_eq!(to_the_microsecond(0.000_5), 0.0); // 0.5 µs: to the even 0
        assert_eq!(to_the_microsecond(0.001_5), 0.002); // 1.5 µs: to the even 2
        assert_eq!(to_the_microsecond(500.0), 500.0);
    }
}
