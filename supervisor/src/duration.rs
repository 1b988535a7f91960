//! Durations on the command line: `30m`, `90s`, `1h`, `250ms`, or plain seconds.

use std::time::Duration;

/// Parses `<n>[ms|s|m|h]` (no unit: seconds); zero and overflow are errors.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?}: expected a number with an optional unit ms, s, m or h"))?;
    let millis = match unit {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (ms, s, m or h)")),
    }
    .ok_or_else(|| format!("{text:?}: too long"))?;
    if millis == 0 {
        return Err(format!("{text:?}: must be more than zero"));
    }
    Ok(Duration::from_millis(millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ok = [
            ("30m", 1_800_000),
            ("90s", 90_000),
            ("90", 90_000),
            ("1h", 3_600_000),
            ("250ms", 250),
            (" 5s ", 5_000),
        ];
        for (text, millis) in ok {
            assert_eq!(parse(text), Ok(Duration::from_millis(millis)), "{text}");
        }
        for bad in [
            "",
            "0",
            "0s",
            "s",
            "5d",
            "-5s",
            "1.5s",
            "5 s",
            "99999999999999999999h",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should not parse");
        }
    }
}
