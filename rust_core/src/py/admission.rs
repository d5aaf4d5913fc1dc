//! The embedded store's admission in one crossing (`crate::admission`): the credit book the
//! `SQLite` store keeps its balances and key spend in, the admission plan of an account and key
//! (built once per distinct limits), and `Limiter.admit`'s body.

use std::collections::HashMap;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyList;

use super::{extract_list, limits, BucketArg, QuotaArg};
use crate::admission::{self, Admitted, Book, Budget, Claim, Layout, Outcome};
use crate::limiter::{BucketLimit, Limiter, QuotaLimit};

type Names = (String, String, String);

fn names(n: &Names) -> [&str; 3] {
    [&n.0, &n.1, &n.2]
}

fn pairs(map: &HashMap<String, i64>) -> Vec<(&str, i64)> {
    map.iter().map(|(k, v)| (k.as_str(), *v)).collect()
}

/// Credit balances and key spend held in memory, with the reservations of requests in flight.
#[pyclass(module = "gateway._core", name = "CreditBook", frozen)]
pub struct PyCreditBook {
    inner: Book,
}

#[pymethods]
#[allow(clippy::needless_pass_by_value)] // PyO3 extracts these arguments as owned values
impl PyCreditBook {
    #[new]
    fn new() -> Self {
        Self { inner: Book::new() }
    }

    fn load_balance(&self, account_id: &str, balance: i64) -> i64 {
        self.inner.load_balance(account_id, balance)
    }

    fn reserve_credits(&self, account_id: &str, micros: i64) -> Option<bool> {
        self.inner.reserve_credits(account_id, micros)
    }

    fn release_credits(&self, account_id: &str, micros: i64) {
        self.inner.release_credits(account_id, micros);
    }

    fn reserved_credits(&self, account_id: &str) -> i64 {
        self.inner.reserved_credits(account_id)
    }

    fn settled_credits(&self, released: HashMap<String, i64>, balances: HashMap<String, i64>) {
        self.inner
            .settled_credits(&pairs(&released), &pairs(&balances));
    }

    fn forget_balances(&self) {
        self.inner.forget_balances();
    }

    fn load_spend(&self, names: Names, spent: (i64, i64, i64)) {
        self.inner
            .load_spend(self::names(&names), [spent.0, spent.1, spent.2]);
    }

    fn settled_spend(&self, released: HashMap<String, i64>, totals: HashMap<String, i64>) {
        self.inner.settled_spend(&pairs(&released), &pairs(&totals));
    }

    fn forget_spend(&self) {
        self.inner.forget_spend();
    }
}

/// One account's (and key's) admission arguments, made once per distinct limits: the limits
/// as `Limiter.acquire` takes them, which of them are the key's, the key's budgets, and the
/// type the answer is made as (`gateway.limits.Admission`).
#[pyclass(module = "gateway._core", name = "AdmitPlan", frozen)]
pub struct PyAdmitPlan {
    account_id: String,
    buckets: Vec<BucketArg>,
    quotas: Vec<QuotaArg>,
    layout: Layout,
    budget: Option<(Names, [Option<i64>; 3])>,
    admission: Py<PyAny>,
}

#[pymethods]
impl PyAdmitPlan {
    #[new]
    #[pyo3(signature = (
        account_id, buckets, quotas, requests_per_minute, requests_per_day,
        key_requests_per_minute, key_requests_per_day, budget_names, budget_caps, admission
    ))]
    #[allow(clippy::too_many_arguments)] // the plan's parts, by name
    fn new(
        account_id: String,
        buckets: &Bound<'_, PyList>,
        quotas: &Bound<'_, PyList>,
        requests_per_minute: i64,
        requests_per_day: i64,
        key_requests_per_minute: Option<i64>,
        key_requests_per_day: Option<i64>,
        budget_names: Option<Names>,
        budget_caps: Option<(Option<i64>, Option<i64>, Option<i64>)>,
        admission: Py<PyAny>,
    ) -> PyResult<Self> {
        let caps = budget_caps.unwrap_or_default();
        Ok(Self {
            account_id,
            buckets: extract_list(buckets)?,
            quotas: extract_list(quotas)?,
            layout: Layout {
                requests_per_minute,
                requests_per_day,
                key_requests_per_minute,
                key_requests_per_day,
            },
            budget: budget_names.map(|n| (n, [caps.0, caps.1, caps.2])),
            admission,
        })
    }
}

/// `Limiter.peek_admission`: what an admission on `plan`'s limits alone would answer now,
/// taking nothing: admitted or rate limited with its Retry-After, and the headers of what is
/// left (a peek at no cost), made by the plan's layout as `admit`'s are. No credit, no budget.
pub fn peek(
    py: Python<'_>,
    limiter: &Limiter,
    plan: &PyAdmitPlan,
    now_s: f64,
) -> PyResult<Py<PyAny>> {
    let (buckets, quotas) = limits(&plan.buckets, &plan.quotas);
    let one = limiter.peek(&buckets, &quotas, now_s)?;
    let free_buckets: Vec<_> = buckets
        .iter()
        .map(|b| BucketLimit { cost: 0.0, ..*b })
        .collect();
    let free_quotas: Vec<_> = quotas
        .iter()
        .map(|q| QuotaLimit { cost: 0, ..*q })
        .collect();
    let left = limiter.peek(&free_buckets, &free_quotas, now_s)?;
    let h = plan.layout.headers(&left, buckets.len());
    let name = if one.allowed {
        intern!(py, "admitted")
    } else {
        intern!(py, "rate_limited")
    };
    let made = plan.admission.bind(py).call1((
        name,
        one.retry_after_s,
        h.limit,
        h.remaining,
        h.reset_s,
        h.limit_day,
        h.remaining_day,
        0i64,
        h.by_key && !one.allowed,
        0i64,
    ))?;
    Ok(made.unbind())
}

/// `Limiter.admit`: the Admission, or the reads it needs first (`admission::BALANCE |
/// admission::SPEND`, an int).
pub fn admit(
    py: Python<'_>,
    limiter: &Limiter,
    plan: &PyAdmitPlan,
    book: &PyCreditBook,
    reserve_micros: i64,
    now_s: f64,
    fresh: u8,
) -> PyResult<Py<PyAny>> {
    let (buckets, quotas) = limits(&plan.buckets, &plan.quotas);
    let claim = Claim {
        account: &plan.account_id,
        micros: reserve_micros,
        budget: plan.budget.as_ref().map(|(n, caps)| Budget {
            names: names(n),
            caps: *caps,
        }),
        fresh,
    };
    let answer = admission::admit(
        limiter,
        &book.inner,
        &buckets,
        &quotas,
        &plan.layout,
        &claim,
        now_s,
    )?;
    let (outcome, decision, h) = match answer {
        Admitted::Read(read) => return Ok(read.into_pyobject(py)?.into_any().unbind()),
        Admitted::Decided(outcome, decision, headers) => (outcome, decision, headers),
    };
    let name = match outcome {
        Outcome::Admitted => intern!(py, "admitted"),
        Outcome::RateLimited => intern!(py, "rate_limited"),
        Outcome::InsufficientCredits => intern!(py, "insufficient_credits"),
        Outcome::KeyBudgetExceeded => intern!(py, "key_budget_exceeded"),
    };
    let admitted = outcome == Outcome::Admitted;
    let reserved = if admitted { reserve_micros } else { 0 };
    let key_reserved = if admitted && plan.budget.is_some() {
        reserve_micros
    } else {
        0
    };
    let made = plan.admission.bind(py).call1((
        name,
        decision.retry_after_s,
        h.limit,
        h.remaining,
        h.reset_s,
        h.limit_day,
        h.remaining_day,
        reserved,
        h.by_key,
        key_reserved,
    ))?;
    Ok(made.unbind())
}
