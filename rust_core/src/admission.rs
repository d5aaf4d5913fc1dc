//! The embedded store's admission decided in one call: the limits (`crate::limiter`), the credit
//! reservation and the API key's budgets, checked and taken together under the limiter's lock.
//!
//! The [`Book`] holds what the embedded store keeps in memory for admissions: per account the
//! stored balance as last read or written and the reservations of requests not settled yet; per
//! API key and period (`key|d:YYYY-MM-DD`, `key|m:YYYY-MM`, `key|t`) the settled spend as last
//! read or written and the reservations in flight. The store's thread updates it at settlement
//! (the same job as the SQL it mirrors); the event loop reserves from it.
//!
//! [`admit`] answers what the book alone can decide. What it cannot (a balance never read, or
//! one too short to refuse on without reading it again, since credits added by another process
//! land in the file; a key's spend never read) it names as [`Verdict::Read`]: the caller reads
//! those and asks again, saying which it has just read (`fresh`). Nothing is taken until every
//! check passes, so there is nothing to give back on a refusal or a read.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use foldhash::fast::RandomState;

use crate::errors::CoreError;
use crate::limiter::{BucketLimit, Decision, Limiter, QuotaLimit};

/// `fresh` / [`Verdict::Read`] bit: the account's balance.
pub const BALANCE: u8 = 1;
/// `fresh` / [`Verdict::Read`] bit: the key's spend.
pub const SPEND: u8 = 2;

/// Past this many spend entries, the settled spend is forgotten (read again when next needed).
const MAX_SPEND_ENTRIES: usize = 300_000;

#[derive(Debug, Default, Clone, Copy)]
struct Held {
    /// The stored value (balance, or settled spend) as last read or written; None: not read.
    stored: Option<i64>,
    /// Reserved by requests not settled yet.
    reserved: i64,
}

impl Held {
    fn release(&mut self, micros: i64) {
        self.reserved = (self.reserved - micros).max(0);
    }

    fn unused(&self) -> bool {
        self.stored.is_none() && self.reserved == 0
    }
}

#[derive(Debug, Default)]
struct Inner {
    credits: HashMap<String, Held, RandomState>,
    spend: HashMap<String, Held, RandomState>,
}

fn release_in(map: &mut HashMap<String, Held, RandomState>, name: &str, micros: i64) {
    if let Some(held) = map.get_mut(name) {
        held.release(micros);
        if held.unused() {
            map.remove(name);
        }
    }
}

/// A key's budgets as one admission counts them: its three periods' names and caps.
#[derive(Debug, Clone, Copy)]
pub struct Budget<'a> {
    /// `key|d:day`, `key|m:month`, `key|t`.
    pub names: [&'a str; 3],
    /// The cap of each (None: no cap on that period).
    pub caps: [Option<i64>; 3],
}

/// What one admission asks of the book.
#[derive(Debug, Clone, Copy)]
pub struct Claim<'a> {
    /// The account whose credit is reserved.
    pub account: &'a str,
    /// The worst-case cost; 0 reserves no credit (and needs no balance).
    pub micros: i64,
    /// The key's budgets, if it has any (checked even for 0 micros).
    pub budget: Option<Budget<'a>>,
    /// [`BALANCE`] | [`SPEND`]: read just now by the caller (a short balance then refuses).
    pub fresh: u8,
}

/// The book's answer to a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Reserved (credit and key budget).
    Admitted,
    /// The balance cannot cover it.
    Short,
    /// A key budget cannot cover it.
    OverBudget,
    /// Undecided until these are read ([`BALANCE`] | [`SPEND`]); nothing taken.
    Read(u8),
}

/// Credit balances and key spend held in memory, with their reservations.
#[derive(Debug, Default)]
pub struct Book {
    inner: Mutex<Inner>,
}

impl Book {
    /// An empty book (every balance and spend unread).
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // No code path panics while holding the lock; if one did, the state is still valid.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The account's stored balance as just read; returns what requests in flight reserve.
    pub fn load_balance(&self, account: &str, balance: i64) -> i64 {
        let mut inner = self.lock();
        let held = inner.credits.entry(account.to_owned()).or_default();
        held.stored = Some(balance);
        held.reserved
    }

    /// Reserve credit alone (no limits): None when the balance was never read.
    pub fn reserve_credits(&self, account: &str, micros: i64) -> Option<bool> {
        let mut inner = self.lock();
        let held = inner.credits.get_mut(account)?;
        let balance = held.stored?;
        if balance - held.reserved < micros {
            return Some(false);
        }
        held.reserved += micros;
        Some(true)
    }

    /// Give back a reservation of credit.
    pub fn release_credits(&self, account: &str, micros: i64) {
        release_in(&mut self.lock().credits, account, micros);
    }

    /// A settled batch: its reservations given back, the balances as now stored.
    pub fn settled_credits(&self, released: &[(&str, i64)], balances: &[(&str, i64)]) {
        let mut inner = self.lock();
        for &(account, micros) in released {
            release_in(&mut inner.credits, account, micros);
        }
        for &(account, balance) in balances {
            inner.credits.entry(account.to_owned()).or_default().stored = Some(balance);
        }
    }

    /// Every balance read again when next needed (another process changed the file).
    pub fn forget_balances(&self) {
        let mut inner = self.lock();
        inner.credits.retain(|_, held| {
            held.stored = None;
            held.reserved != 0
        });
    }

    /// A key's settled spend of its three periods, as just read.
    pub fn load_spend(&self, names: [&str; 3], spent: [i64; 3]) {
        let mut inner = self.lock();
        if inner.spend.len() > MAX_SPEND_ENTRIES {
            forget_spent(&mut inner);
        }
        for (name, value) in names.into_iter().zip(spent) {
            inner.spend.entry(name.to_owned()).or_default().stored = Some(value);
        }
    }

    /// Reserve against a key's budgets alone (no limits): None when its spend was never read.
    pub fn reserve_spend(&self, budget: Budget<'_>, micros: i64) -> Option<bool> {
        let mut inner = self.lock();
        match spend_fits(&inner, budget, micros) {
            None => None,
            Some(false) => Some(false),
            Some(true) => {
                take_spend(&mut inner, budget, micros);
                Some(true)
            }
        }
    }

    /// Give back a reservation against a key's budgets.
    pub fn release_spend(&self, names: [&str; 3], micros: i64) {
        let mut inner = self.lock();
        for name in names {
            release_in(&mut inner.spend, name, micros);
        }
    }

    /// A settled batch: reservations given back per period, the spend totals as now stored.
    pub fn settled_spend(&self, released: &[(&str, i64)], totals: &[(&str, i64)]) {
        let mut inner = self.lock();
        for &(name, micros) in released {
            release_in(&mut inner.spend, name, micros);
        }
        for &(name, total) in totals {
            inner.spend.entry(name.to_owned()).or_default().stored = Some(total);
        }
    }

    /// Every key's settled spend read again when next needed.
    pub fn forget_spend(&self) {
        forget_spent(&mut self.lock());
    }

    /// What requests in flight reserve of the account's credit.
    pub fn reserved_credits(&self, account: &str) -> i64 {
        self.lock()
            .credits
            .get(account)
            .map_or(0, |held| held.reserved)
    }

    /// The claim decided, and taken if admitted (credit first, then the key's budgets).
    pub fn claim(&self, claim: &Claim<'_>) -> Verdict {
        let mut inner = self.lock();
        let mut read = 0;
        if claim.micros > 0 {
            let balance = inner.credits.get(claim.account).and_then(|held| {
                held.stored
                    .map(|stored| stored - held.reserved >= claim.micros)
            });
            match balance {
                Some(true) => {}
                _ if claim.fresh & BALANCE != 0 => return Verdict::Short,
                _ => read |= BALANCE,
            }
        }
        if let Some(budget) = claim.budget {
            // An unread balance is read before a budget refuses (a short balance comes first).
            match spend_fits(&inner, budget, claim.micros) {
                Some(false) if read == 0 => return Verdict::OverBudget,
                None if claim.fresh & SPEND != 0 && read == 0 => return Verdict::OverBudget,
                None => read |= SPEND,
                Some(_) => {}
            }
        }
        if read != 0 {
            return Verdict::Read(read);
        }
        if claim.micros > 0 {
            if let Some(held) = inner.credits.get_mut(claim.account) {
                held.reserved += claim.micros;
            }
        }
        if let Some(budget) = claim.budget {
            take_spend(&mut inner, budget, claim.micros);
        }
        Verdict::Admitted
    }
}

fn forget_spent(inner: &mut Inner) {
    inner.spend.retain(|_, held| {
        held.stored = None;
        held.reserved != 0
    });
}

fn spend_fits(inner: &Inner, budget: Budget<'_>, micros: i64) -> Option<bool> {
    let mut fits = true;
    for (name, cap) in budget.names.into_iter().zip(budget.caps) {
        let held = inner.spend.get(name)?;
        let spent = held.stored?;
        if let Some(cap) = cap {
            fits &= spent.saturating_add(held.reserved).saturating_add(micros) <= cap;
        }
    }
    Some(fits)
}

fn take_spend(inner: &mut Inner, budget: Budget<'_>, micros: i64) {
    if micros == 0 {
        return;
    }
    for name in budget.names {
        if let Some(held) = inner.spend.get_mut(name) {
            held.reserved += micros;
        }
    }
}

/// How an admission ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every limit, the credit and the key's budgets allowed: all taken.
    Admitted,
    /// A limit refused (nothing taken).
    RateLimited,
    /// The balance cannot cover the reservation (nothing taken).
    InsufficientCredits,
    /// A key budget cannot cover the reservation (nothing taken).
    KeyBudgetExceeded,
}

/// What one admission asks of the limits besides the book: which of the limits are the key's
/// own (their positions in the call: buckets `[rpm, key rpm?, tpm?]`, quotas `[rpd, key rpd?]`).
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    /// The account's requests per minute and per day.
    pub requests_per_minute: i64,
    /// (see `requests_per_minute`)
    pub requests_per_day: i64,
    /// The key's own requests per minute (the call's second bucket), if any.
    pub key_requests_per_minute: Option<i64>,
    /// The key's own requests per day (the call's second quota), if any.
    pub key_requests_per_day: Option<i64>,
}

/// The rate headers of an admission: the tighter of the account's and the key's limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Headers {
    /// Requests per minute: the limit, what is left, seconds until full.
    pub limit: i64,
    /// (see `limit`)
    pub remaining: i64,
    /// (see `limit`)
    pub reset_s: f64,
    /// Requests per day: the limit and what is left.
    pub limit_day: i64,
    /// (see `limit_day`)
    pub remaining_day: i64,
    /// The key's own limits are the ones that refused (or are spent).
    pub by_key: bool,
}

impl Layout {
    /// The headers of `decision` (a call laid out as this layout says).
    pub fn headers(&self, decision: &Decision, buckets: usize) -> Headers {
        let at = |i: usize| decision.remaining.get(i).copied().unwrap_or(0);
        let reset = |i: usize| decision.reset_s.get(i).copied().unwrap_or(0.0);
        let (mut limit, mut remaining, mut reset_s, mut by_key) =
            (self.requests_per_minute, at(0), reset(0), false);
        if let Some(key_rpm) = self.key_requests_per_minute {
            if at(1) < remaining {
                (limit, remaining, reset_s, by_key) = (key_rpm, at(1), reset(1), true);
            }
        }
        let (mut limit_day, mut remaining_day) = (self.requests_per_day, at(buckets));
        if let Some(key_rpd) = self.key_requests_per_day {
            if at(buckets + 1) < remaining_day {
                (limit_day, remaining_day) = (key_rpd, at(buckets + 1));
                by_key = by_key || remaining_day == 0;
            }
        }
        Headers {
            limit,
            remaining,
            reset_s,
            limit_day,
            remaining_day,
            by_key,
        }
    }
}

/// An admission's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Admitted {
    /// Decided: the outcome, the limits' decision (the headers' source) and its headers.
    Decided(Outcome, Decision, Headers),
    /// Undecided until these are read ([`BALANCE`] | [`SPEND`]); nothing taken.
    Read(u8),
}

/// The limits, the credit and the key's budgets decided together and, if all allow, taken
/// together. A refusal (or a read asked for) takes nothing.
pub fn admit(
    limiter: &Limiter,
    book: &Book,
    buckets: &[BucketLimit<'_>],
    quotas: &[QuotaLimit<'_>],
    layout: &Layout,
    claim: &Claim<'_>,
    now: f64,
) -> Result<Admitted, CoreError> {
    let mut verdict = None;
    let (decision, _) = limiter.acquire_if(buckets, quotas, now, || {
        let v = book.claim(claim);
        verdict = Some(v);
        v == Verdict::Admitted
    })?;
    let outcome = match verdict {
        None => Outcome::RateLimited,
        Some(Verdict::Admitted) => Outcome::Admitted,
        Some(Verdict::Short) => Outcome::InsufficientCredits,
        Some(Verdict::OverBudget) => Outcome::KeyBudgetExceeded,
        Some(Verdict::Read(read)) => return Ok(Admitted::Read(read)),
    };
    let mut headers = layout.headers(&decision, buckets.len());
    headers.by_key &= outcome == Outcome::RateLimited;
    Ok(Admitted::Decided(outcome, decision, headers))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bucket::BucketSpec;

    const T0: f64 = 1_764_547_200.0; // 2025-12-01 00:00 UTC

    fn rpm(key: &str, per_minute: f64) -> BucketLimit<'_> {
        BucketLimit {
            key,
            spec: BucketSpec {
                capacity: per_minute,
                rate: per_minute / 60.0,
            },
            cost: 1.0,
        }
    }

    fn rpd(key: &str, limit: u64) -> QuotaLimit<'_> {
        QuotaLimit {
            key,
            limit,
            cost: 1,
        }
    }

    const PLAN: Layout = Layout {
        requests_per_minute: 5,
        requests_per_day: 100,
        key_requests_per_minute: None,
        key_requests_per_day: None,
    };

    fn claim(micros: i64, fresh: u8) -> Claim<'static> {
        Claim {
            account: "a",
            micros,
            budget: None,
            fresh,
        }
    }

    fn outcome(answer: &Admitted) -> Option<Outcome> {
        match answer {
            Admitted::Decided(outcome, _, _) => Some(*outcome),
            Admitted::Read(_) => None,
        }
    }

    fn admit_plan(limiter: &Limiter, book: &Book, claim: &Claim<'_>) -> Admitted {
        let buckets = [rpm("rpm:a", 5.0)];
        let quotas = [rpd("rpd:a", 100)];
        admit(limiter, book, &buckets, &quotas, &PLAN, claim, T0).unwrap_or(Admitted::Read(0))
    }

    #[test]
    fn a_balance_never_read_is_asked_for_and_nothing_is_taken() {
        let (limiter, book) = (Limiter::new(100), Book::new());
        assert_eq!(
            admit_plan(&limiter, &book, &claim(10, 0)),
            Admitted::Read(BALANCE)
        );
        let left = limiter
            .peek(&[rpm("rpm:a", 5.0)], &[rpd("rpd:a", 100)], T0)
            .map(|d| d.remaining);
        assert_eq!(left, Ok(vec![4, 99]), "no token, no quota taken");
        book.load_balance("a", 100);
        let answer = admit_plan(&limiter, &book, &claim(10, BALANCE));
        assert_eq!(outcome(&answer), Some(Outcome::Admitted));
        assert_eq!(book.reserved_credits("a"), 10);
    }

    #[test]
    fn a_short_balance_is_read_again_before_it_refuses() {
        let (limiter, book) = (Limiter::new(100), Book::new());
        book.load_balance("a", 5);
        assert_eq!(
            admit_plan(&limiter, &book, &claim(10, 0)),
            Admitted::Read(BALANCE)
        );
        let refused = admit_plan(&limiter, &book, &claim(10, BALANCE));
        assert_eq!(outcome(&refused), Some(Outcome::InsufficientCredits));
        book.load_balance("a", 50); // grown meanwhile (credits added by another process)
        let admitted = admit_plan(&limiter, &book, &claim(10, BALANCE));
        assert_eq!(outcome(&admitted), Some(Outcome::Admitted));
    }

    #[test]
    fn a_zero_reservation_needs_no_balance() {
        let (limiter, book) = (Limiter::new(100), Book::new());
        let answer = admit_plan(&limiter, &book, &claim(0, 0));
        assert_eq!(outcome(&answer), Some(Outcome::Admitted));
        assert_eq!(book.reserved_credits("a"), 0);
    }

    #[test]
    fn the_last_credit_goes_to_one_admission_of_two() {
        let (limiter, book) = (Limiter::new(100), Book::new());
        book.load_balance("a", 10);
        let first = admit_plan(&limiter, &book, &claim(10, 0));
        let second = admit_plan(&limiter, &book, &claim(10, BALANCE));
        assert_eq!(outcome(&first), Some(Outcome::Admitted));
        assert_eq!(outcome(&second), Some(Outcome::InsufficientCredits));
        let left = limiter
            .peek(&[rpm("rpm:a", 5.0)], &[rpd("rpd:a", 100)], T0)
            .map(|d| d.remaining);
        assert_eq!(left, Ok(vec![3, 98]), "the refused one took no token");
    }

    #[test]
    fn the_last_credit_across_threads_goes_to_exactly_one() {
        let (limiter, book) = (Limiter::new(100), Book::new());
        book.load_balance("a", 10);
        let admitted = std::thread::scope(|s| {
            let runs: Vec<_> = (0..8)
                .map(|_| s.spawn(|| admit_plan(&limiter, &book, &claim(10, BALANCE))))
                .collect();
            runs.into_iter()
                .filter_map(|h| h.join().ok())
                .filter(|a| outcome(a) == Some(Outcome::Admitted))
                .count()
        });
        assert_eq!(admitted, 1);
        assert_eq!(book.reserved_credits("a"), 10);
    }

    #[test]
    fn a_rate_limit_refuses_first_and_reserves_nothing() {
        let (limiter, book) = (Limiter::new(100), Book::new());
        book.load_balance("a", 1_000);
        for _ in 0..5 {
            let answer = admit_plan(&limiter, &book, &claim(10, 0));
            assert_eq!(outcome(&answer), Some(Outcome::Admitted));
        }
        // Unread balance or not, the limit speaks first (no read asked for).
        let answer = admit_plan(&limiter, &book, &claim(10, 0));
        let Admitted::Decided(Outcome::RateLimited, decision, headers) = answer else {
            unreachable!("expected a rate limit, got {answer:?}")
        };
        assert!(decision.retry_after_s > 0.0);
        assert_eq!((headers.limit, headers.remaining), (5, 0));
        assert_eq!(book.reserved_credits("a"), 50);
    }

    fn budget(cap_day: Option<i64>) -> Budget<'static> {
        Budget {
            names: ["k|d:2025-12-01", "k|m:2025-12", "k|t"],
            caps: [cap_day, None, Some(1_000)],
        }
    }

    #[test]
    fn a_key_budget_is_read_then_decides() {
        let (limiter, book) = (Limiter::new(100), Book::new());
        book.load_balance("a", 1_000);
        let mut c = claim(30, 0);
        c.budget = Some(budget(Some(50)));
        assert_eq!(admit_plan(&limiter, &book, &c), Admitted::Read(SPEND));
        book.load_spend(budget(None).names, [30, 30, 30]);
        c.fresh = SPEND;
        let refused = admit_plan(&limiter, &book, &c);
        assert_eq!(outcome(&refused), Some(Outcome::KeyBudgetExceeded));
        assert_eq!(
            book.reserved_credits("a"),
            0,
            "no credit held for a refused key"
        );
        c.micros = 20;
        let admitted = admit_plan(&limiter, &book, &c);
        assert_eq!(outcome(&admitted), Some(Outcome::Admitted));
        assert_eq!(
            book.reserve_spend(budget(Some(50)), 1),
            Some(false),
            "the day is spent"
        );
        book.release_spend(budget(None).names, 20);
        assert_eq!(book.reserve_spend(budget(Some(50)), 20), Some(true));
    }

    #[test]
    fn an_unread_balance_is_read_before_a_key_budget_refuses() {
        let (limiter, book) = (Limiter::new(100), Book::new());
        book.load_spend(budget(None).names, [50, 50, 50]);
        let mut c = claim(30, 0);
        c.budget = Some(budget(Some(50)));
        assert_eq!(admit_plan(&limiter, &book, &c), Admitted::Read(BALANCE));
        c.fresh = BALANCE; // the account is gone: no balance after the read
        let short = admit_plan(&limiter, &book, &c);
        assert_eq!(
            outcome(&short),
            Some(Outcome::InsufficientCredits),
            "credit first"
        );
    }

    #[test]
    fn both_unread_are_asked_for_at_once() {
        let (limiter, book) = (Limiter::new(100), Book::new());
        let mut c = claim(30, 0);
        c.budget = Some(budget(Some(50)));
        assert_eq!(
            admit_plan(&limiter, &book, &c),
            Admitted::Read(BALANCE | SPEND)
        );
    }

    #[test]
    fn the_keys_own_limits_go_into_the_headers_when_tighter() {
        let (limiter, book) = (Limiter::new(100), Book::new());
        let layout = Layout {
            key_requests_per_minute: Some(2),
            key_requests_per_day: Some(3),
            ..PLAN
        };
        let buckets = [rpm("rpm:a", 5.0), rpm("krpm:k", 2.0)];
        let quotas = [rpd("rpd:a", 100), rpd("krpd:k", 3)];
        let run = || {
            admit(
                &limiter,
                &book,
                &buckets,
                &quotas,
                &layout,
                &claim(0, 0),
                T0,
            )
        };
        let first = run();
        let Ok(Admitted::Decided(Outcome::Admitted, _, h)) = first else {
            unreachable!("{first:?}")
        };
        assert_eq!(
            (h.limit, h.remaining, h.limit_day, h.remaining_day),
            (2, 1, 3, 2)
        );
        assert!(!h.by_key, "only a refusal says who refused");
        let _ = run();
        let third = run();
        let Ok(Admitted::Decided(Outcome::RateLimited, _, h)) = third else {
            unreachable!("{third:?}")
        };
        assert!(h.by_key);
        assert_eq!((h.limit, h.remaining), (2, 0));
    }

    #[test]
    fn settlement_releases_and_stores_what_the_batch_says() {
        let book = Book::new();
        book.load_balance("a", 100);
        assert_eq!(book.reserve_credits("a", 60), Some(true));
        assert_eq!(book.reserve_credits("a", 60), Some(false));
        book.settled_credits(&[("a", 60)], &[("a", 90)]);
        assert_eq!(book.reserved_credits("a"), 0);
        assert_eq!(book.reserve_credits("a", 90), Some(true));
        book.forget_balances();
        assert_eq!(
            book.reserve_credits("a", 0),
            None,
            "read again after a forget"
        );
        assert_eq!(
            book.reserved_credits("a"),
            90,
            "reservations outlive a forget"
        );
        assert_eq!(book.reserve_credits("b", 1), None);
    }
}
