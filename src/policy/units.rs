//! Parsers for the policy's unit strings: Go durations plus `d` (`"90s"`, `"1h30m"`, `"7d"`),
//! byte sizes (`"512KB"`, `"10MB"`, 1024-based) and rate limits (`"10/minute"`).
//!
//! Must not: accept negative, fractional-count or overflowing values silently.

use std::time::Duration;

/// Parses a Go duration string extended with a `d` (24 h) unit: one or more `<number><unit>`
/// groups, units `ns`, `us`/`µs`/`μs`, `ms`, `s`, `m`, `h`, `d`; `"0"` alone is allowed.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("`{s}` is not a duration; write it like `30s`, `5m`, `1h30m` or `7d`");
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() || s.starts_with('-') || s.starts_with('+') {
        return Err(bad());
    }
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (num, tail) = rest.split_at(num_len);
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return Err(bad());
        }
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let nanos_per: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "d" => 86_400_000_000_000,
            _ => return Err(bad()),
        };
        let (int, frac) = num.split_once('.').unwrap_or((num, ""));
        let int: u128 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| bad())?
        };
        let mut nanos = int.checked_mul(nanos_per).ok_or_else(bad)?;
        // The fraction contributes frac/10^len of a unit; digits beyond nanosecond precision
        // are dropped, as Go does.
        let mut scale = nanos_per;
        for d in frac.chars().take(20) {
            scale /= 10;
            nanos += u128::from(d.to_digit(10).unwrap_or(0)) * scale;
        }
        total = total.checked_add(nanos).ok_or_else(bad)?;
        rest = tail;
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| bad())?;
    Ok(Duration::new(secs, (total % 1_000_000_000) as u32))
}

/// Renders a duration in the shortest Go-like form (`"5m"`, `"1h30m"`, `"7d"`, `"250ms"`).
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    if d.subsec_nanos() != 0 {
        let ms = d.as_nanos();
        if ms.is_multiple_of(1_000_000) {
            return format!("{}ms", ms / 1_000_000);
        }
        return format!("{}ns", ms);
    }
    let mut secs = d.as_secs();
    let mut out = String::new();
    for (unit, len) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if secs >= len {
            out.push_str(&format!("{}{unit}", secs / len));
            secs %= len;
        }
    }
    out
}

/// Parses a byte size: `<integer>[B|KB|MB|GB|KiB|MiB|GiB]` (case-insensitive, 1024-based;
/// no unit means bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || format!("`{s}` is not a size; write it like `512KB`, `1MB` or `4096`");
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mul: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "kib" | "k" => 1 << 10,
        "mb" | "mib" | "m" => 1 << 20,
        "gb" | "gib" | "g" => 1 << 30,
        _ => return Err(bad()),
    };
    n.checked_mul(mul).ok_or_else(bad)
}

/// Renders a byte size with the largest exact unit (`"1MB"`, `"512KB"`, `"100B"`).
pub fn format_size(n: u64) -> String {
    for (unit, len) in [("GB", 1u64 << 30), ("MB", 1 << 20), ("KB", 1 << 10)] {
        if n >= len && n.is_multiple_of(len) {
            return format!("{}{unit}", n / len);
        }
    }
    format!("{n}B")
}

/// A `<count>/<period>` rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub count: u32,
    pub period: Duration,
}

impl RateLimit {
    /// Parses `<count>/<period>`, periods `second|sec|s`, `minute|min|m`, `hour|hr|h`.
    pub fn parse(s: &str) -> Result<RateLimit, String> {
        let bad = || {
            format!(
                "`{s}` is not a rate limit; write `<count>/<period>` with period second, minute or hour (for example `10/minute`)"
            )
        };
        let (count, period) = s.split_once('/').ok_or_else(bad)?;
        if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let count: u32 = count.parse().map_err(|_| bad())?;
        let period = match period {
            "second" | "sec" | "s" => Duration::from_secs(1),
            "minute" | "min" | "m" => Duration::from_secs(60),
            "hour" | "hr" | "h" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        if count == 0 {
            return Err(format!(
                "`{s}` allows no call at all; use `action: block` to forbid a tool"
            ));
        }
        Ok(RateLimit { count, period })
    }
}

impl std::fmt::Display for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = match self.period.as_secs() {
            1 => "second",
            60 => "minute",
            _ => "hour",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_and_days_parse() {
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert_eq!(parse_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("2us"), Ok(Duration::from_micros(2)));
    }

    #[test]
    fn malformed_durations_are_rejected() {
        for s in [
            "",
            "5",
            "-5m",
            "5 m",
            "m",
            "5x",
            "1..5s",
            "99999999999999999999999d",
            "+1s",
        ] {
            assert!(parse_duration(s).is_err(), "{s}");
        }
    }

    #[test]
    fn durations_format_back() {
        for s in ["5m", "1h30m", "7d", "250ms", "0s", "1d1h1m1s"] {
            assert_eq!(format_duration(parse_duration(s).unwrap()), s);
        }
    }

    #[test]
    fn sizes_are_1024_based_and_case_insensitive() {
        assert_eq!(parse_size("1MB"), Ok(1 << 20));
        assert_eq!(parse_size("512kb"), Ok(512 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert!(parse_size("1.5MB").is_err());
        assert!(parse_size("MB").is_err());
        assert!(parse_size("1TB").is_err());
        assert_eq!(format_size(1 << 20), "1MB");
        assert_eq!(format_size(1000), "1000B");
    }

    #[test]
    fn rate_limits_parse_all_period_spellings() {
        for (s, secs) in [
            ("1/s", 1),
            ("2/sec", 1),
            ("3/second", 1),
            ("4/m", 60),
            ("5/min", 60),
            ("6/minute", 60),
            ("7/h", 3600),
            ("8/hr", 3600),
            ("9/hour", 3600),
        ] {
            let r = RateLimit::parse(s).unwrap();
            assert_eq!(r.period, Duration::from_secs(secs), "{s}");
        }
        for s in [
            "0/minute",
            "-1/minute",
            "1/day",
            "1 / minute",
            "a/minute",
            "1/",
            "/m",
            "1.5/m",
        ] {
            assert!(RateLimit::parse(s).is_err(), "{s}");
        }
    }
}
