//! Small helpers shared by the agent, the CLI and the CNI plugin.
use std::{fmt::Display, time::Duration};

/// Parses a duration in Go's syntax, as flanneld and kube-proxy take them: a sequence of
/// decimal numbers each with a unit (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`), like `90s`,
/// `1h30m` or `1.5h`; `0` alone needs none. Hand-written because no kept crate parses Go's
/// format exactly (humantime accepts other units and spellings).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let text = s.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let bad = || format!("{s:?} is not a duration (like 30s, 5m, 1h30m)");
    if text.is_empty() || text.starts_with('-') {
        return Err(bad());
    }
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    let mut secs = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(|| format!("{s:?}: a number needs a unit (ns, us, ms, s, m or h)"))?;
        let n: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            unit => {
                return Err(format!(
                    "{s:?}: unknown unit {unit:?} (use ns, us, ms, s, m or h)"
                ));
            }
        };
        secs += n * scale;
        rest = &rest[unit_len..];
    }
    if !secs.is_finite() {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// flanneld's `--subnet-lease-renew-margin` is a number of minutes; a Go duration is
/// accepted as well.
pub fn parse_minutes(s: &str) -> Result<Duration, String> {
    match s.trim().parse::<u64>() {
        Ok(min) => Ok(Duration::from_secs(min * 60)),
        Err(_) => parse_duration(s),
    }
}

/// An error on one line: gRPC and io errors like to carry newlines.
pub fn one_line(e: &impl Display) -> String {
    e.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

pub use netdp_dataplane::util::{mac_string, parse_mac};

/// Hands the heap's free pages back to the system (glibc's `malloc_trim`): after a bulk
/// load (100,000 services listed, decoded, planned and programmed) the allocator keeps its
/// high-water mark resident otherwise, though the agent holds far less from then on.
pub fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: no preconditions; it only returns memory malloc has free.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2m3.5s"), Ok(Duration::from_millis(123_500)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        // As Go: a bare number other than 0 has no unit.
        assert!(parse_duration("7").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("").is_err());
        // flanneld's renew margin: minutes.
        assert_eq!(parse_minutes("60"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_minutes("90s"), Ok(Duration::from_secs(90)));
    }

    #[test]
    fn macs() {
        let mac = [0xaa, 0xbb, 0x0c, 0x0d, 0x0e, 0xff];
        assert_eq!(mac_string(&mac), "aa:bb:0c:0d:0e:ff");
        assert_eq!(parse_mac("aa:bb:0c:0d:0e:ff"), Some(mac));
        assert_eq!(parse_mac("aa:bb:0c:0d:0e"), None);
        assert_eq!(parse_mac("aa:bb:0c:0d:0e:ff:00"), None);
        assert_eq!(parse_mac("zz:bb:0c:0d:0e:ff"), None);
    }
}
