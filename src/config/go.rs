//! Go's value syntax, as kube-proxy's flags and config file spell values: booleans
//! (`strconv.ParseBool`) and durations (`time.ParseDuration`), and Go-style duration
//! formatting for messages.
//!
//! Owns: the three pure string ↔ value functions below.
//!
//! Must not: know any setting's name or default (callers attach the setting to an error),
//! or do any I/O.

use std::time::Duration;

/// Parses a boolean as Go's `strconv.ParseBool` (`1 t T TRUE true True`, `0 f F FALSE
/// false False`), the syntax of kube-proxy's boolean flags.
pub fn parse_go_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!("{s:?} is not a boolean (true or false)")),
    }
}

/// Parses a Go duration (`time.ParseDuration`): an optional sign, then one or more
/// decimal numbers with a unit each (`ns`, `us`/`µs`/`μs`, `ms`, `s`, `m`, `h`), like
/// `30s`, `1m`, `1h0m0s`, `1.5h`, `300ms`; the lone `0` needs no unit. Negative durations
/// are rejected (no kube-proxy period may be negative). Fractions are truncated to whole
/// nanoseconds.
pub fn parse_go_duration(input: &str) -> Result<Duration, String> {
    let bad = || format!("{input:?} is not a duration (like 30s, 1m, 1h0m0s)");
    let (negative, mut rest) = match input.as_bytes().first() {
        Some(b'-') => (true, &input[1..]),
        Some(b'+') => (false, &input[1..]),
        _ => (false, input),
    };
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    // Go limits durations to i64 nanoseconds.
    const MAX: u128 = i64::MAX as u128;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, after) = rest.split_at(int_len);
        let (frac_part, after) = match after.strip_prefix('.') {
            Some(a) => {
                let n = a.bytes().take_while(u8::is_ascii_digit).count();
                a.split_at(n)
            }
            None => ("", after),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(bad());
        }
        let unit_len = after
            .char_indices()
            .find(|(_, c)| *c == '.' || c.is_ascii_digit())
            .map_or(after.len(), |(i, _)| i);
        let (unit, after) = after.split_at(unit_len);
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3600 * 1_000_000_000,
            "" => {
                return Err(format!(
                    "{input:?} is not a duration: missing unit (like s, m, h)"
                ))
            }
            _ => {
                return Err(format!(
                    "{input:?} is not a duration: unknown unit {unit:?}"
                ))
            }
        };
        let too_long = || format!("{input:?} is too long a duration");
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| too_long())?
        };
        let mut value = int.checked_mul(scale).ok_or_else(too_long)?;
        if !frac_part.is_empty() {
            // Truncate fractions beyond nanosecond precision (at most 18 digits matter).
            let digits = &frac_part[..frac_part.len().min(18)];
            let frac: u128 = digits.parse().map_err(|_| bad())?;
            value += frac * scale / 10u128.pow(digits.len() as u32);
        }
        total = total.checked_add(value).ok_or_else(too_long)?;
        if total > MAX {
            return Err(too_long());
        }
        rest = after;
    }
    if negative && total != 0 {
        return Err(format!("{input:?}: a negative duration is not allowed"));
    }
    Ok(Duration::from_nanos(total as u64))
}

/// Formats a duration as Go does for whole seconds and above (`1h0m0s`, `30s`), else
/// `300ms` style: for messages.
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_string();
    }
    if nanos < 1_000_000_000 {
        return if nanos.is_multiple_of(1_000_000) {
            format!("{}ms", nanos / 1_000_000)
        } else if nanos.is_multiple_of(1_000) {
            format!("{}µs", nanos / 1_000)
        } else {
            format!("{nanos}ns")
        };
    }
    let secs = d.as_secs();
    let sub = d.subsec_nanos();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let s = if sub == 0 {
        format!("{s}s")
    } else {
        let frac = format!("{sub:09}");
        format!("{s}.{}s", frac.trim_end_matches('0'))
    };
    match (h, m) {
        (0, 0) => s,
        (0, m) => format!("{m}m{s}"),
        (h, m) => format!("{h}h{m}m{s}"),
    }
}
