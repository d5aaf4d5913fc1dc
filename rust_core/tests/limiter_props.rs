//! Limiter invariants under random call sequences, with an injected clock.
// Tests may unwrap/panic: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use _core::bucket::BucketSpec;
use _core::limiter::{BucketLimit, Decision, Limiter, QuotaLimit};
use proptest::prelude::*;

const T0: f64 = 1_764_115_000.0; // 2026-11-25 23:56:40 UTC
const SPEC: BucketSpec = BucketSpec {
    capacity: 5.0,
    rate: 0.5,
};

#[derive(Debug, Clone)]
enum Op {
    Acquire { key: u8, cost: f64, qcost: u64 },
    Peek { key: u8, cost: f64 },
    Charge { key: u8, amount: f64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..4, 0.0..3.0f64, 0u64..3).prop_map(|(key, cost, qcost)| Op::Acquire { key, cost, qcost }),
        1 => (0u8..4, 0.0..3.0f64).prop_map(|(key, cost)| Op::Peek { key, cost }),
        1 => (0u8..4, 0.0..4.0f64).prop_map(|(key, amount)| Op::Charge { key, amount }),
    ]
}

fn names(key: u8) -> (String, String) {
    (format!("b{key}"), format!("q{key}"))
}

fn call(lim: &Limiter, key: u8, cost: f64, qcost: u64, now: f64, consume: bool) -> Decision {
    let (b, q) = names(key);
    let buckets = [BucketLimit {
        key: &b,
        spec: SPEC,
        cost,
    }];
    let quotas = [QuotaLimit {
        key: &q,
        limit: 20,
        cost: qcost,
    }];
    if consume {
        lim.acquire(&buckets, &quotas, now).unwrap()
    } else {
        lim.peek(&buckets, &quotas, now).unwrap()
    }
}

/// Everything observable about every key: what a zero-cost peek reports.
fn snapshot(lim: &Limiter, now: f64) -> Vec<(bool, Vec<i64>, Vec<u64>)> {
    (0..4)
        .map(|k| {
            let d = call(lim, k, 0.0, 0, now, false);
            (
                d.allowed,
                d.remaining,
                d.reset_s.iter().map(|r| r.to_bits()).collect(),
            )
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 500,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn admitted_cost_never_exceeds_capacity_plus_refill(
        steps in proptest::collection::vec((0.0..3.0f64, op()), 0..60),
    ) {
        let lim = Limiter::new(1000);
        let mut now = T0;
        let mut admitted = [0.0f64; 4];
        for (dt, op) in steps {
            now += dt;
            match op {
                Op::Acquire { key, cost, qcost } => {
                    if call(&lim, key, cost, qcost, now, true).allowed {
                        admitted[usize::from(key)] += cost;
                    }
                }
                Op::Peek { key, cost } => { call(&lim, key, cost, 0, now, false); }
                Op::Charge { key, amount } => lim.charge(&names(key).0, SPEC, amount, now).unwrap(),
            }
            for a in admitted {
                // The tolerance admits at most one microsecond of refill early, once.
                let slack = _core::bucket::tolerance(SPEC) + 1e-9;
                prop_assert!(a <= SPEC.capacity + SPEC.rate * (now - T0) + slack);
            }
        }
    }

    #[test]
    fn a_denied_acquire_changes_nothing_and_peek_predicts_acquire(
        steps in proptest::collection::vec((0.0..2.0f64, op()), 0..60),
    ) {
        let lim = Limiter::new(1000);
        let mut now = T0;
        for (dt, op) in steps {
            now += dt;
            match op {
                Op::Acquire { key, cost, qcost } => {
                    let predicted = call(&lim, key, cost, qcost, now, false);
                    let before = snapshot(&lim, now);
                    let d = call(&lim, key, cost, qcost, now, true);
                    prop_assert_eq!(&d, &predicted);
                    if !d.allowed {
                        prop_assert!(d.retry_after_s > 0.0);
                        prop_assert_eq!(snapshot(&lim, now), before);
                    }
                }
                Op::Peek { key, cost } => {
                    let before = snapshot(&lim, now);
                    call(&lim, key, cost, 1, now, false);
                    prop_assert_eq!(snapshot(&lim, now), before);
                }
                Op::Charge { key, amount } => lim.charge(&names(key).0, SPEC, amount, now).unwrap(),
            }
        }
    }

    #[test]
    fn waiting_retry_after_is_enough_to_be_admitted(
        steps in proptest::collection::vec((0.0..2.0f64, op()), 1..40),
    ) {
        let lim = Limiter::new(1000);
        let mut now = T0;
        for (dt, op) in steps {
            now += dt;
            if let Op::Acquire { key, cost, qcost } = op {
                let d = call(&lim, key, cost, qcost, now, false);
                if !d.allowed && d.retry_after_s.is_finite() {
                    let later = call(&lim, key, cost, qcost, now + d.retry_after_s + 1e-6, false);
                    prop_assert!(later.allowed, "{d:?} then {later:?}");
                }
                call(&lim, key, cost, qcost, now, true);
            }
        }
    }

    #[test]
    fn eviction_keeps_answers_exact_until_lru_is_needed(
        steps in proptest::collection::vec((0.0..6.0f64, 0u8..40, 0.0..3.0f64), 0..200),
    ) {
        let small = Limiter::new(8);
        let big = Limiter::new(1_000_000);
        let mut now = T0;
        for (dt, key, cost) in steps {
            now += dt;
            let k = format!("k{key}");
            let b = [BucketLimit { key: &k, spec: SPEC, cost }];
            let a = small.acquire(&b, &[], now).unwrap();
            let e = big.acquire(&b, &[], now).unwrap();
            prop_assert!(small.len() <= 8);
            if small.lru_evictions() == 0 {
                prop_assert_eq!(a, e);
            }
        }
    }
}

#[test]
fn quota_resets_at_midnight_utc_and_reports_the_wait() {
    let lim = Limiter::new(10);
    let midnight = 1_764_115_200.0;
    let q = [QuotaLimit {
        key: "q",
        limit: 1,
        cost: 1,
    }];
    assert!(lim.acquire(&[], &q, midnight - 10.0).unwrap().allowed);
    let d = lim.acquire(&[], &q, midnight - 4.0).unwrap();
    assert!(!d.allowed);
    assert!((d.retry_after_s - 4.0).abs() < 1e-6);
    assert!(lim.acquire(&[], &q, midnight).unwrap().allowed);
}

#[test]
fn full_buckets_and_old_quotas_are_evicted_first() {
    let lim = Limiter::new(10);
    for i in 0..10 {
        let k = format!("k{i}");
        lim.acquire(
            &[BucketLimit {
                key: &k,
                spec: SPEC,
                cost: 1.0,
            }],
            &[],
            T0,
        )
        .unwrap();
    }
    assert_eq!(lim.len(), 10);
    // 2 s later every bucket has refilled to full: adding one key drops them all, exactly.
    lim.acquire(
        &[BucketLimit {
            key: "new",
            spec: SPEC,
            cost: 1.0,
        }],
        &[],
        T0 + 2.0,
    )
    .unwrap();
    assert_eq!(lim.len(), 1);
    assert_eq!(lim.lru_evictions(), 0);
}

#[test]
fn lru_eviction_drops_the_least_recently_used_keys() {
    let lim = Limiter::new(10);
    for i in 0..11 {
        let k = format!("k{i}");
        lim.acquire(
            &[BucketLimit {
                key: &k,
                spec: SPEC,
                cost: 5.0,
            }],
            &[],
            T0,
        )
        .unwrap();
    }
    assert_eq!(lim.len(), 9); // down to 90 %
    assert_eq!(lim.lru_evictions(), 2);
    // k0 and k1 were dropped (they look full again); k2 is still empty.
    let d = lim
        .peek(
            &[BucketLimit {
                key: "k0",
                spec: SPEC,
                cost: 5.0,
            }],
            &[],
            T0,
        )
        .unwrap();
    assert!(d.allowed);
    let d = lim
        .peek(
            &[BucketLimit {
                key: "k2",
                spec: SPEC,
                cost: 5.0,
            }],
            &[],
            T0,
        )
        .unwrap();
    assert!(!d.allowed);
}

#[test]
fn costs_of_limits_sharing_a_key_add_up() {
    let lim = Limiter::new(10);
    let b = BucketLimit {
        key: "k",
        spec: SPEC,
        cost: 3.0,
    };
    let d = lim.acquire(&[b, b], &[], T0).unwrap();
    assert!(!d.allowed);
    assert!(lim.acquire(&[b], &[], T0).unwrap().allowed);
}

#[test]
fn concurrent_acquires_never_over_admit() {
    let lim = std::sync::Arc::new(Limiter::new(100));
    let spec = BucketSpec {
        capacity: 1000.0,
        rate: 0.0,
    };
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let lim = lim.clone();
            std::thread::spawn(move || {
                (0..500)
                    .filter(|_| {
                        lim.acquire(
                            &[BucketLimit {
                                key: "k",
                                spec,
                                cost: 1.0,
                            }],
                            &[],
                            T0,
                        )
                        .unwrap()
                        .allowed
                    })
                    .count()
            })
        })
        .collect();
    let total: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(total, 1000);
}

#[test]
fn invalid_numbers_are_rejected_not_panicking() {
    let lim = Limiter::new(10);
    let bad = BucketSpec {
        capacity: f64::NAN,
        rate: 1.0,
    };
    assert!(lim
        .acquire(
            &[BucketLimit {
                key: "k",
                spec: bad,
                cost: 1.0
            }],
            &[],
            T0
        )
        .is_err());
    assert!(lim.acquire(&[], &[], f64::INFINITY).is_err());
    assert!(lim.charge("k", SPEC, f64::NAN, T0).is_err());
    assert!(lim.is_empty());
}
