//! Parsing durations (`0s`, `90m`, `7d`, `1h30m`), sizes (`512M`, `20G`, `1.5GiB`) and
//! RFC 3339 timestamps for flags.

use std::time::Duration;

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {text:?} (expected e.g. 0s, 90m, 7d, 1h30m)");
    let text = text.trim();
    if text.is_empty() {
        return Err(bad());
    }
    if let Ok(secs) = text.parse::<f64>() {
        return if secs >= 0.0 && secs.is_finite() {
            Ok(Duration::from_secs_f64(secs))
        } else {
            Err(bad())
        };
    }
    let mut total = 0f64;
    let mut number = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            number.push(c);
            continue;
        }
        let mut unit = c.to_string();
        if c == 'm' && chars.peek() == Some(&'s') {
            unit.push('s');
            chars.next();
        }
        let value: f64 = number.parse().map_err(|_| bad())?;
        number.clear();
        let scale = match unit.as_str() {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            "w" => 7.0 * 86400.0,
            _ => return Err(bad()),
        };
        total += value * scale;
    }
    if !number.is_empty() {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(total))
}

pub fn parse_size(text: &str) -> Result<u64, String> {
    let bad = || format!("invalid size {text:?} (expected e.g. 512M, 20G, 1.5GiB, 1000000)");
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number.parse().map_err(|_| bad())?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" | "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(bad()),
    };
    if !value.is_finite() || value < 0.0 {
        return Err(bad());
    }
    Ok((value * scale) as u64)
}

/// The smallest `--memory` accepted: Docker's floor, 6 MiB. The runtime's own init process
/// runs in the step's cgroup before the command starts, and runc 1.1 (measured on Debian 12)
/// fails below that obscurely: at 1-2 MiB the kernel refuses the limit ("unable to set memory
/// limit ... current usage: 2232320"), at 3 MiB `runc init` is OOM-killed ("container process
/// is already dead"), at 4 MiB a busybox `echo` barely runs. Refused when the flag is read
/// instead, with the reason.
pub const MIN_MEMORY: u64 = 6 << 20;

/// The smallest `--cpus`: a CFS quota below 1 ms per 100 ms period is refused by the kernel.
pub const MIN_CPUS: f64 = 0.01;

/// `--memory`: a size of at least [`MIN_MEMORY`].
pub fn parse_memory(text: &str) -> Result<u64, String> {
    let bytes = parse_size(text)?;
    if bytes < MIN_MEMORY {
        return Err(format!(
            "memory limit {text:?} is below the minimum of 6M (a step cannot start with less: the \
             runtime's init and the shell count against it)"
        ));
    }
    Ok(bytes)
}

/// `--cpus`: a finite number of CPUs, at least [`MIN_CPUS`].
pub fn parse_cpus(text: &str) -> Result<f64, String> {
    let bad = |why: &str| format!("invalid cpu limit {text:?}: {why}");
    let cpus: f64 = text.trim().parse().map_err(|_| bad("expected a number such as 1.5"))?;
    if !cpus.is_finite() {
        return Err(bad("not a finite number"));
    }
    if cpus < MIN_CPUS {
        return Err(bad("must be at least 0.01"));
    }
    if cpus > 1_000_000.0 {
        return Err(bad("must be at most 1000000"));
    }
    Ok(cpus)
}

/// A duration that is not zero (`--timeout`, `--step-timeout`: a zero limit would kill
/// everything at once).
pub fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    if d.is_zero() {
        return Err(format!(
            "duration {text:?} must be more than 0 (leave the flag out for no limit)"
        ));
    }
    Ok(d)
}

/// A size that is not zero (`--log-limit`).
pub fn parse_positive_size(text: &str) -> Result<u64, String> {
    let bytes = parse_size(text)?;
    if bytes == 0 {
        return Err(format!("size {text:?} must be more than 0"));
    }
    Ok(bytes)
}

/// Human-readable bytes (`1.5 GiB`).
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Milliseconds since the epoch as RFC 3339 UTC (`2026-11-23T18:43:51.123Z`).
pub fn format_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Parses an RFC 3339 timestamp (`2026-11-23T18:43:51Z`, with optional fraction and offset)
/// into milliseconds since the epoch.
pub fn parse_time(text: &str) -> Result<i64, String> {
    let bad = || format!("invalid timestamp {text:?} (expected RFC 3339, e.g. 2026-11-23T18:43:51Z)");
    let t = text.trim();
    if t.len() < 19 || !t.is_char_boundary(19) {
        return Err(bad());
    }
    let num = |s: &str| s.parse::<i64>().map_err(|_| bad());
    let (date, rest) = t.split_at(10);
    let parts: Vec<&str> = date.split('-').collect();
    if parts.len() != 3 || !matches!(&rest[..1], "T" | "t" | " ") {
        return Err(bad());
    }
    let (y, mo, d) = (num(parts[0])?, num(parts[1])?, num(parts[2])?);
    let time: Vec<&str> = rest[1..9].split(':').collect();
    if time.len() != 3 || !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return Err(bad());
    }
    let (h, mi, s) = (num(time[0])?, num(time[1])?, num(time[2])?);
    let mut tail = &rest[9..];
    let mut millis = 0i64;
    if let Some(frac) = tail.strip_prefix('.') {
        let digits: String = frac.chars().take_while(|c| c.is_ascii_digit()).collect();
        let ms: String = digits.chars().chain("000".chars()).take(3).collect();
        millis = num(&ms)?;
        tail = &frac[digits.len()..];
    }
    let offset_secs = match tail {
        "Z" | "z" => 0,
        _ if tail.len() == 6 && (tail.starts_with('+') || tail.starts_with('-')) => {
            let sign = if tail.starts_with('-') { -1 } else { 1 };
            sign * (num(&tail[1..3])? * 3600 + num(&tail[4..6])? * 60)
        }
        _ => return Err(bad()),
    };
    let days = days_from_civil(y, mo, d);
    Ok((days * 86400 + h * 3600 + mi * 60 + s - offset_secs) * 1000 + millis)
}

// Howard Hinnant's civil-calendar algorithms (public domain), days since 1970-01-01.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("90m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(7 * 86400));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("12").unwrap(), Duration::from_secs(12));
        for bad in ["", "x", "5y", "-1s", "1h30"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert!(parse_size("12 parsecs").is_err());
        assert_eq!(format_size(1536), "1.5 KiB");
    }

    #[test]
    fn limits_are_validated() {
        assert_eq!(parse_memory("6M").unwrap(), 6 << 20);
        assert_eq!(parse_memory("2G").unwrap(), 2 << 30);
        for bad in ["0", "1M", "5.9M", "4096", "x"] {
            assert!(parse_memory(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_cpus("1.5").unwrap(), 1.5);
        assert_eq!(parse_cpus("0.01").unwrap(), 0.01);
        for bad in ["0", "nan", "NaN", "inf", "-1", "0.001", "1e9", "", "two"] {
            assert!(parse_cpus(bad).is_err(), "{bad}");
        }
        assert!(parse_positive_duration("0s").is_err());
        assert!(parse_positive_duration("0").is_err());
        assert_eq!(parse_positive_duration("1s").unwrap(), Duration::from_secs(1));
        assert!(parse_positive_size("0").is_err());
        assert!(parse_positive_size("0M").is_err());
        assert_eq!(parse_positive_size("1K").unwrap(), 1024);
    }

    #[test]
    fn times_round_trip() {
        let ms = parse_time("2026-11-23T18:43:51.123Z").unwrap();
        assert_eq!(format_time(ms), "2026-11-23T18:43:51.123Z");
        assert_eq!(parse_time("1970-01-01T01:00:00+01:00").unwrap(), 0);
        assert_eq!(parse_time("2000-03-01T00:00:00Z").unwrap(), 951868800000);
        for bad in ["", "yesterday", "2026-13-01T00:00:00Z", "2026-11-23T18:43:51"] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
    }
}
