//! Small helpers shared by the agent, the CLI and the CNI plugin.
use std::{fmt::Display, time::Duration};

/// Parses `90`, `90s`, `5m`, `2h`, `1500ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (like 30s, 5m, 24h)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{s:?} is not a valid duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// An error on one line: gRPC and io errors like to carry newlines.
pub fn one_line(e: &impl Display) -> String {
    e.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

pub use netdp_dataplane::util::{mac_string, parse_mac};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("abc").is_err());
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
