//! Timestamps as upstream's `/healthz` writes them: Go's `encoding/json` form of a
//! `time.Time`, i.e. RFC 3339 with nanoseconds, trailing zeros of the fraction dropped, in
//! UTC (`Z`; kube-proxy's container has no time zone), and Go's zero time for "never".
//!
//! Owns: only the formatting; no clock is read here.

use k8s_openapi::jiff::Timestamp;
use std::time::{SystemTime, UNIX_EPOCH};

/// Go's zero `time.Time`, what upstream reports as `lastUpdated` before the first sync.
pub const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// `t` as Go marshals a UTC `time.Time` to JSON, e.g. `2024-05-01T12:34:56.5Z`; `None` is
/// [`ZERO_TIME`]. Times before 1970 (a broken clock) are written as the epoch, times past
/// 9999 (beyond RFC 3339's four-digit year) as the last instant of 9999.
pub fn format(t: Option<SystemTime>) -> String {
    let Some(t) = t else {
        return ZERO_TIME.to_string();
    };
    let since_epoch = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    // jiff writes UTC with `Z` and the fraction at its shortest (trailing zeros dropped),
    // exactly Go's form.
    Timestamp::try_from(UNIX_EPOCH + since_epoch)
        .unwrap_or(Timestamp::MAX)
        .to_string()
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
