//! The sliding-window rule every store applies: windows, and the decision (with what the
//! headers report) computed from each window's counts. A check asks for `need` units of room
//! and, when it passes, counts `cost` units: `rate_limit` asks for and counts one request,
//! `token_limit` asks for its estimate (at least one token) and counts the estimate.

/// One window: at most `max` units (requests, tokens) per `ms` milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    /// Window length in milliseconds.
    pub ms: u64,
    /// Units allowed per window.
    pub max: u64,
}

/// The windows of a limit's `second`/`minute`/`hour`/`day` keys (at least one, each from 1 to
/// `max`); errors carry the key's name.
pub fn windows(
    [second, minute, hour, day]: [Option<u64>; 4],
    max: u64,
    errors: &mut Vec<crate::ConfigError>,
) -> Vec<Window> {
    use crate::ConfigError;
    let mut out = Vec::new();
    for (name, ms, v) in [
        ("second", 1_000, second),
        ("minute", 60_000, minute),
        ("hour", 3_600_000, hour),
        ("day", 86_400_000, day),
    ] {
        match v {
            Some(0) => errors.push(ConfigError::new(
                name,
                "must be at least 1 (remove it for no limit)",
            )),
            Some(n) if n > max => {
                errors.push(ConfigError::new(name, format!("must be at most {max}")))
            }
            Some(n) => out.push(Window { ms, max: n }),
            None => {}
        }
    }
    if out.is_empty() && errors.is_empty() {
        errors.push(ConfigError::new(
            "",
            "set at least one of second, minute, hour, day",
        ));
    }
    out
}

/// The identity of a limit's counters: where it is configured (`scope`), what it counts by
/// (`key_spec`) and its windows. The same definition after a reload (or on another instance)
/// gets the same number, so it finds the same counters; a changed one starts fresh.
pub fn counter_scope(scope: &str, key_spec: &str, windows: &[Window]) -> u64 {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(scope.as_bytes());
    h.update([0]);
    h.update(key_spec.as_bytes());
    for w in windows {
        h.update(w.ms.to_le_bytes());
        h.update(w.max.to_le_bytes());
    }
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

/// The outcome of one check, with what the headers report (the tightest window).
#[derive(Debug, Clone, Copy)]
pub struct Decision {
    /// The request may pass (and its cost was counted).
    pub allowed: bool,
    /// Limit of the tightest window.
    pub limit: u64,
    /// Units left in the tightest window after this one.
    pub remaining: u64,
    /// Milliseconds until the tightest window's current period ends.
    pub reset_ms: u64,
    /// Window length of the tightest window (for the IETF policy header).
    pub window_ms: u64,
    /// When refused: milliseconds until a request could pass again.
    pub retry_after_ms: u64,
}

impl Decision {
    /// Decide from each window's `(estimate, current, previous, ms into the window)` whether
    /// `need` units fit every window; `cost` is what is counted when they do.
    pub(crate) fn from_states(
        windows: &[Window],
        states: &[(f64, u64, u64, u64)],
        cost: u64,
        need: u64,
    ) -> Self {
        let allowed = windows
            .iter()
            .zip(states)
            .all(|(w, s)| s.0 + need as f64 <= w.max as f64 + 1e-9);
        let mut best: Option<(u64, usize)> = None;
        let mut retry = 0u64;
        for (i, (w, &(est, current, previous, into))) in windows.iter().zip(states).enumerate() {
            let used = est + if allowed { cost as f64 } else { 0.0 };
            let remaining = (w.max as f64 - used).floor().max(0.0) as u64;
            if best.is_none_or(|(r, _)| remaining < r) {
                best = Some((remaining, i));
            }
            if est + need as f64 > w.max as f64 + 1e-9 {
                retry = retry.max(wait_ms(w, current, previous, into, need));
            }
        }
        let (remaining, i) = best.unwrap_or((0, 0));
        let w = windows
            .get(i)
            .copied()
            .unwrap_or(Window { ms: 1000, max: 0 });
        let into = states.get(i).map_or(0, |s| s.3);
        Decision {
            allowed,
            limit: w.max,
            remaining,
            reset_ms: w.ms - into,
            window_ms: w.ms,
            retry_after_ms: if allowed { 0 } else { retry.max(1) },
        }
    }
}

/// How long until `previous × unelapsed share + current + need ≤ max` (a need larger than the
/// window never fits: one window length is reported).
fn wait_ms(w: &Window, current: u64, previous: u64, into: u64, need: u64) -> u64 {
    let ms = w.ms as f64;
    if need > w.max {
        return w.ms;
    }
    if current + need > w.max {
        // Not before this window ends; then the current count becomes the previous one.
        let rest = w.ms - into;
        if current == 0 {
            return rest;
        }
        let r = (ms - (w.max - need) as f64 * ms / current as f64).max(0.0);
        rest + r.ceil() as u64
    } else if previous == 0 {
        1
    } else {
        let r = ms - (w.max - need - current) as f64 * ms / previous as f64;
        (r.ceil() as u64).saturating_sub(into).max(1)
    }
}
