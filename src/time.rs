//! XEP-0082 date-time strings (UTC), without a calendar crate.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// "2026-11-24T05:40:00.123Z" for a time since the Unix epoch.
pub fn xep82(since_epoch: Duration) -> String {
    let secs = since_epoch.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since_epoch.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(xep82(Duration::from_secs(0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            xep82(Duration::from_millis(951_782_400_500)),
            "2000-02-29T00:00:00.500Z"
        );
        assert_eq!(
            xep82(Duration::from_secs(1_795_412_400)),
            "2026-11-23T05:40:00.000Z"
        );
    }
}
