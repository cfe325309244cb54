//! Go's duration and boolean syntax, and duration formatting.

use super::*;

#[test]
fn go_durations() {
    let ok = |s: &str, nanos: u64| {
        assert_eq!(parse_go_duration(s), Ok(Duration::from_nanos(nanos)), "{s}")
    };
    ok("0", 0);
    ok("-0", 0);
    ok("0s", 0);
    ok("30s", 30_000_000_000);
    ok("+5s", 5_000_000_000);
    ok("1m", 60_000_000_000);
    ok("1h0m0s", 3_600_000_000_000);
    ok("2h45m", 9_900_000_000_000);
    ok("1.5h", 5_400_000_000_000);
    ok(".5s", 500_000_000);
    ok("5.s", 5_000_000_000);
    ok("300ms", 300_000_000);
    ok("1us", 1_000);
    ok("1µs", 1_000);
    ok("1μs", 1_000);
    ok("7ns", 7);
    ok("1.0000000019s", 1_000_000_001);
    ok("1h1m1s1ms1us1ns", 3_661_001_001_001);
    ok("9223372036854775807ns", i64::MAX as u64);
    let bad = |s: &str, want: &str| assert_eq!(parse_go_duration(s), Err(want.to_string()));
    bad("", r#""" is not a duration (like 30s, 1m, 1h0m0s)"#);
    bad("-", r#""-" is not a duration (like 30s, 1m, 1h0m0s)"#);
    bad("s", r#""s" is not a duration (like 30s, 1m, 1h0m0s)"#);
    bad(".s", r#"".s" is not a duration (like 30s, 1m, 1h0m0s)"#);
    bad("1", r#""1" is not a duration: missing unit (like s, m, h)"#);
    bad(
        "1m30",
        r#""1m30" is not a duration: missing unit (like s, m, h)"#,
    );
    bad("1d", r#""1d" is not a duration: unknown unit "d""#);
    bad("1 s", r#""1 s" is not a duration: unknown unit " s""#);
    bad("-1s", r#""-1s": a negative duration is not allowed"#);
    bad(
        "9223372036854775808ns",
        r#""9223372036854775808ns" is too long a duration"#,
    );
    bad("3000000h", r#""3000000h" is too long a duration"#);
}

#[test]
fn go_bools() {
    for t in ["1", "t", "T", "TRUE", "true", "True"] {
        assert_eq!(parse_go_bool(t), Ok(true));
    }
    for f in ["0", "f", "F", "FALSE", "false", "False"] {
        assert_eq!(parse_go_bool(f), Ok(false));
    }
    assert_eq!(
        parse_go_bool("yes"),
        Err(r#""yes" is not a boolean (true or false)"#.to_string())
    );
}

#[test]
fn duration_formatting() {
    assert_eq!(format_duration(Duration::ZERO), "0s");
    assert_eq!(format_duration(Duration::from_millis(300)), "300ms");
    assert_eq!(format_duration(Duration::from_secs(30)), "30s");
    assert_eq!(format_duration(Duration::from_secs(60)), "1m0s");
    assert_eq!(format_duration(Duration::from_secs(3600)), "1h0m0s");
    assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
    assert_eq!(format_duration(Duration::from_nanos(1_500)), "1500ns");
    assert_eq!(format_duration(Duration::from_micros(2)), "2µs");
}
