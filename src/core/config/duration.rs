//! Durations as Cloud Build configs write them: the API's seconds form (`600s`, `3.5s`) and the
//! Go-style units that real configs also use and that run on Cloud Build (`45m`, `2h`, `1h30m`).
//! A bare number means seconds, as gcloud's `--timeout` flag reads it.

use std::time::Duration;

/// Parses a duration, or says what is wrong with it.
pub fn parse(text: &str) -> Result<Duration, String> {
    let invalid = || {
        format!(
            "invalid duration {text:?}; write seconds such as \"600s\" or units such as \"45m\" or \"2h\""
        )
    };
    let trimmed = text.trim();
    if trimmed.starts_with('-') {
        return Err(format!(
            "invalid duration {text:?}: it must not be negative"
        ));
    }
    if let Ok(seconds) = trimmed.parse::<f64>() {
        return bounded(seconds).ok_or_else(invalid);
    }
    let mut total = 0f64;
    let mut rest = trimmed;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(invalid)?;
        let number: f64 = rest[..number_len].parse().map_err(|_| invalid())?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(invalid()),
        };
        total += number * scale;
        rest = &rest[unit_len..];
    }
    if trimmed.is_empty() {
        return Err(invalid());
    }
    bounded(total).ok_or_else(invalid)
}

/// Seconds as a duration, unless they are not a number or absurdly large.
fn bounded(seconds: f64) -> Option<Duration> {
    (seconds <= 1e12)
        .then(|| Duration::try_from_secs_f64(seconds).ok())
        .flatten()
}

/// The API's seconds form: `600s`, `1.5s`.
pub fn format(duration: Duration) -> String {
    format!("{}s", duration.as_secs_f64())
}

/// Go's `time.Duration` text (`24h0m0s`, `1h30m0s`, `45m0s`, `1.5s`), in which Cloud Build's
/// timeout errors name durations. Below a second Go switches to `ms`; timeouts that short are
/// written here in seconds (`0.5s`).
pub fn go_format(duration: Duration) -> String {
    let total = duration.as_secs();
    let (hours, minutes, seconds) = (total / 3600, total / 60 % 60, total % 60);
    let seconds = match duration.subsec_nanos() {
        0 => seconds.to_string(),
        nanos => format!("{seconds}.{nanos:09}")
            .trim_end_matches('0')
            .to_string(),
    };
    match (hours, minutes) {
        (0, 0) => format!("{seconds}s"),
        (0, _) => format!("{minutes}m{seconds}s"),
        _ => format!("{hours}h{minutes}m{seconds}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_seconds_and_go_units() {
        for (text, seconds) in [
            ("600s", 600.0),
            ("1.5s", 1.5),
            ("45m", 2700.0),
            ("2h", 7200.0),
            ("2h15m5s", 8105.0),
            ("1h30m", 5400.0),
            ("1500", 1500.0),
            ("500ms", 0.5),
            ("0s", 0.0),
        ] {
            assert_eq!(parse(text), Ok(Duration::from_secs_f64(seconds)), "{text}");
        }
    }

    #[test]
    fn rejects_the_rest() {
        for text in [
            "", "s", "10x", "-5s", "1d", "m5", "1.2.3s", "abc", "nan", "inf", "1e30", "1e30s",
        ] {
            assert!(parse(text).is_err(), "{text}");
        }
        assert_eq!(format(Duration::from_secs(600)), "600s");
        assert_eq!(format(Duration::from_millis(1500)), "1.5s");
    }

    #[test]
    fn go_text_as_cloud_build_prints_it() {
        for (seconds, text) in [
            (86400.0, "24h0m0s"),
            (5400.0, "1h30m0s"),
            (2700.0, "45m0s"),
            (60.5, "1m0.5s"),
            (1.5, "1.5s"),
            (0.0, "0s"),
        ] {
            assert_eq!(go_format(Duration::from_secs_f64(seconds)), text);
        }
    }
}
