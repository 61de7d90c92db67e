//! A slow test's time budget for its whole run.
//!
//! CI stops the README's test command after 90 minutes, and
//! `examples/test.sh` gives each slow test a step limit under that. A test
//! killed by that limit says nothing about where it was; so a slow test
//! starts a budget a little shorter than its step limit, and every wait
//! loop of the helpers in this crate checks it, failing with a message that
//! names the budget and what the test was waiting for.

use std::fmt::Display;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

struct Budget {
    test: &'static str,
    total: Duration,
    start: Instant,
}

static BUDGET: OnceLock<Budget> = OnceLock::new();

/// Start the budget of the slow test `test` (once per test process: the
/// slow tests run one test per binary).
pub fn start(test: &'static str, total: Duration) {
    let started = BUDGET.set(Budget {
        test,
        total,
        start: Instant::now(),
    });
    assert!(started.is_ok(), "{test}: a budget was already started");
}

/// Time left in the running slow test's budget (`None` outside slow tests).
pub fn remaining() -> Option<Duration> {
    BUDGET
        .get()
        .map(|b| b.total.saturating_sub(b.start.elapsed()))
}

/// Fail the running slow test, naming its budget, once the budget is
/// spent. Wait loops call it on every round; outside slow tests it does
/// nothing.
#[track_caller]
pub fn check(waiting_for: impl Display) {
    if let Some(b) = BUDGET.get() {
        b.check(waiting_for);
    }
}

impl Budget {
    #[track_caller]
    fn check(&self, waiting_for: impl Display) {
        assert!(
            self.start.elapsed() < self.total,
            "{}: its {}-second budget ran out while waiting for {waiting_for}",
            self.test,
            self.total.as_secs()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "slow: its 0-second budget ran out while waiting for the guest")]
    fn a_spent_budget_fails_naming_what_was_awaited() {
        let spent = Budget {
            test: "slow",
            total: Duration::ZERO,
            start: Instant::now(),
        };
        spent.check("the guest");
    }

    #[test]
    fn a_budget_with_time_left_passes() {
        let fresh = Budget {
            test: "slow",
            total: Duration::from_secs(60),
            start: Instant::now(),
        };
        fresh.check("the guest");
    }
}
