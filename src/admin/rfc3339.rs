//! Timestamps as upstream's `/healthz` writes them: Go's `encoding/json` form of a
//! `time.Time`, i.e. RFC 3339 with nanoseconds, trailing zeros of the fraction dropped, in
//! UTC (`Z`; kube-proxy's container has no time zone), and Go's zero time for "never".
//!
//! Owns: only the formatting; no clock is read here.

use std::time::{SystemTime, UNIX_EPOCH};

/// Go's zero `time.Time`, what upstream reports as `lastUpdated` before the first sync.
pub const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// `t` as Go marshals a UTC `time.Time` to JSON, e.g. `2024-05-01T12:34:56.5Z`; `None` is
/// [`ZERO_TIME`]. Times before 1970 (a broken clock) are written as the epoch.
pub fn format(t: Option<SystemTime>) -> String {
    let Some(t) = t else {
        return ZERO_TIME.to_string();
    };
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let nanos = d.subsec_nanos();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    let mut out = format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}");
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
    out.push('Z');
    out
}

/// Days since 1970-01-01 → proleptic Gregorian (year, month, day).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Shift the epoch to 0000-03-01 so leap days fall at the end of a 400-year era.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, 0..=146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // 0..=399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of year from March 1st
    let mp = (5 * doy + 2) / 153; // month from March, 0..=11
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64, nanos: u32) -> Option<SystemTime> {
        Some(UNIX_EPOCH + Duration::new(secs, nanos))
    }

    #[test]
    fn go_json_forms() {
        assert_eq!(format(None), "0001-01-01T00:00:00Z");
        assert_eq!(format(at(0, 0)), "1970-01-01T00:00:00Z");
        // 2000-02-29 (a leap day of a century leap year).
        assert_eq!(format(at(951_782_400, 0)), "2000-02-29T00:00:00Z");
        assert_eq!(
            format(at(1_714_566_896, 123_456_789)),
            "2024-05-01T12:34:56.123456789Z"
        );
        assert_eq!(
            format(at(1_714_566_896, 500_000_000)),
            "2024-05-01T12:34:56.5Z"
        );
        assert_eq!(
            format(at(1_714_566_896, 1_000)),
            "2024-05-01T12:34:56.000001Z"
        );
        // 2100-03-01: 2100 is not a leap year.
        assert_eq!(format(at(4_107_542_400, 0)), "2100-03-01T00:00:00Z");
        assert_eq!(format(at(4_107_542_399, 0)), "2100-02-28T23:59:59Z");
    }
}
