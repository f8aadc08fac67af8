//! Waiting for a condition: polled until it holds, with a deadline and an error that names
//! what was awaited. Tests wait on what they need, never for a guessed time.
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// How often a condition is checked.
pub const POLL: Duration = Duration::from_millis(50);

/// Checks `f` until it returns true and returns how long that took; fails after `timeout`
/// with `timed out after <timeout> waiting for <what>`. An error from `f` ends the wait at
/// once (a condition that may fail while it does not hold yet turns its error into `false`).
pub fn wait_until(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Result<bool>,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        if f()? {
            return Ok(start.elapsed());
        }
        let elapsed = start.elapsed();
        if elapsed >= timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(POLL.min(timeout - elapsed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_once_the_condition_holds_and_names_what_timed_out() {
        let mut calls = 0;
        let took = wait_until("the third call", Duration::from_secs(5), || {
            calls += 1;
            Ok(calls == 3)
        });
        assert!(took.is_ok_and(|t| t < Duration::from_secs(5)));
        assert_eq!(calls, 3);

        let start = Instant::now();
        let err = wait_until("nothing", Duration::from_millis(120), || Ok(false))
            .expect_err("a condition that never holds timed out");
        assert!(start.elapsed() >= Duration::from_millis(120));
        assert_eq!(err.to_string(), "timed out after 120ms waiting for nothing");

        let err = wait_until("a failing check", Duration::from_secs(5), || {
            bail!("broken")
        })
        .expect_err("the check's error ends the wait");
        assert_eq!(err.to_string(), "broken");
    }
}
