//! Instants as the `db` interface carries them: microseconds since the Unix
//! epoch, UTC. They are read from RFC 3339 text or from epoch seconds,
//! milliseconds or microseconds, and written back as RFC 3339 text.
//!
//! Every reader keeps to one range, 0001-01-01T00:00:00Z to
//! 9999-12-31T23:59:59.999999Z: the instants an RFC 3339 timestamp (a
//! four-digit year) can name in UTC, which both backends store and the
//! TypeScript and Python SDKs read the same way. Anything outside is
//! refused rather than stored as a date nobody meant (an epoch value in
//! the wrong unit lands there: milliseconds read as seconds are 57 000
//! years away).

/// The earliest instant the readers accept, 0001-01-01T00:00:00Z, in
/// microseconds since the Unix epoch.
pub const MIN_TIMESTAMP_MICROS: i64 = -62_135_596_800_000_000;

/// The latest instant the readers accept, 9999-12-31T23:59:59.999999Z, in
/// microseconds since the Unix epoch.
pub const MAX_TIMESTAMP_MICROS: i64 = 253_402_300_799_999_999;

/// `micros` when it is within the readers' range.
fn in_range(micros: i64) -> Option<i64> {
    (MIN_TIMESTAMP_MICROS..=MAX_TIMESTAMP_MICROS)
        .contains(&micros)
        .then_some(micros)
}

/// An epoch value in `unit` as microseconds, when the instant is within
/// range.
pub(crate) fn epoch_micros(value: i64, unit: EpochUnit) -> Option<i64> {
    let micros = match unit {
        EpochUnit::Seconds => value.checked_mul(1_000_000)?,
        EpochUnit::Millis => value.checked_mul(1_000)?,
        EpochUnit::Micros => value,
    };
    in_range(micros)
}

/// The unit of an epoch value.
#[derive(Debug, Clone, Copy)]
pub(crate) enum EpochUnit {
    Seconds,
    Millis,
    Micros,
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01 (H. Hinnant's
/// `civil_from_days`): year, month, day.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// An RFC 3339 instant as microseconds since the Unix epoch: a date, `T`
/// (or `t` or a space), a time with optional fraction (digits past the
/// sixth are dropped), and `Z` or an offset `±HH:MM`. `None` for anything
/// else, and for an instant outside 0001-01-01T00:00:00Z ..
/// 9999-12-31T23:59:59.999999Z once the offset is applied.
pub fn rfc3339_micros(s: &str) -> Option<i64> {
    let two = |t: &str| -> Option<i64> {
        (t.len() == 2 && t.bytes().all(|b| b.is_ascii_digit()))
            .then(|| t.parse().ok())
            .flatten()
    };
    let (date, rest) = (s.get(..10)?, s.get(10..)?);
    let sep = rest.chars().next()?;
    if !matches!(sep, 'T' | 't' | ' ') {
        return None;
    }
    let rest = &rest[1..];
    let year = date.get(..4)?;
    if !year.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (y, m, d) = (
        year.parse::<i64>().ok()?,
        two(date.get(5..7)?)?,
        two(date.get(8..10)?)?,
    );
    if date.as_bytes()[4] != b'-' || date.as_bytes()[7] != b'-' {
        return None;
    }
    let (hh, mm, ss) = (
        two(rest.get(..2)?)?,
        two(rest.get(3..5)?)?,
        two(rest.get(6..8)?)?,
    );
    if rest.as_bytes()[2] != b':' || rest.as_bytes()[5] != b':' {
        return None;
    }
    let mut tail = &rest[8..];
    let mut micros = 0i64;
    if let Some(frac) = tail.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let kept = &frac[..digits.min(6)];
        micros = kept.parse::<i64>().ok()? * 10i64.pow(6 - kept.len() as u32);
        tail = &frac[digits..];
    }
    let offset_s = match tail {
        "Z" | "z" => 0,
        _ => {
            let sign = match tail.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            if tail.len() != 6 || tail.as_bytes()[3] != b':' {
                return None;
            }
            let (oh, om) = (two(&tail[1..3])?, two(&tail[4..6])?);
            if oh > 23 || om > 59 {
                return None;
            }
            sign * (oh * 3600 + om * 60)
        }
    };
    let days_in_month = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        _ => return None,
    };
    if d < 1 || d > days_in_month || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let days = days_from_civil(y, m, d);
    in_range((days * 86_400 + hh * 3_600 + mm * 60 + ss - offset_s) * 1_000_000 + micros)
}

/// An instant (microseconds since the Unix epoch) as RFC 3339 text in UTC,
/// the way the host stores a `timestamp` on SQLite:
/// `2026-11-30T09:30:00+00:00`, with `.250` or `.250123` when there is a
/// fraction of a second. A decoded row carries timestamps in this form on
/// both backends.
pub fn rfc3339_text(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    let (days, of_day) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (of_day / 3_600, of_day % 3_600 / 60, of_day % 60);
    // Years past 9999 (which only a value stored by someone else can
    // hold) get a sign, as RFC 3339's extended years do.
    let year = if (0..=9_999).contains(&y) {
        format!("{y:04}")
    } else {
        format!("{y:+05}")
    };
    let fraction = match frac {
        0 => String::new(),
        f if f % 1_000 == 0 => format!(".{:03}", f / 1_000),
        f => format!(".{f:06}"),
    };
    format!("{year}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}{fraction}+00:00")
}

/// Microseconds since the Unix epoch, from the WASI wall clock.
pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rfc3339_instants_in_utc() {
        assert_eq!(rfc3339_micros("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            rfc3339_micros("2026-11-30T09:30:00.5Z"),
            Some(1_796_031_000_500_000)
        );
        assert_eq!(
            rfc3339_micros("2026-11-30T14:00:00+03:00"),
            Some(1_796_036_400_000_000)
        );
        assert_eq!(
            rfc3339_micros("2024-02-29T00:00:00.123456789-00:30"),
            Some(1_709_166_600_123_456)
        );
        for bad in [
            "",
            "yesterday",
            "2026-11-30",
            "2026-11-30T09:30:00",
            "2026-02-30T00:00:00Z",
            "2026-11-30T24:00:00Z",
            "2026-11-30T09:30:00.Z",
            "2026-11-30T09:30:00+3:00",
            "2026-11-30T09:30:00+99:99",
            "+999-11-30T09:30:00Z",
        ] {
            assert_eq!(rfc3339_micros(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_range_is_years_0001_to_9999_in_utc() {
        assert_eq!(
            rfc3339_micros("0001-01-01T00:00:00Z"),
            Some(MIN_TIMESTAMP_MICROS)
        );
        assert_eq!(
            rfc3339_micros("9999-12-31T23:59:59.999999Z"),
            Some(MAX_TIMESTAMP_MICROS)
        );
        // Years below 100 are themselves (JavaScript's Date.UTC would
        // read 0050 as 1950; the TypeScript and Python SDKs test this too).
        assert_eq!(
            rfc3339_micros("0050-06-01T00:00:00Z"),
            Some(-60_576_249_600_000_000)
        );
        // Year 0, and offsets that carry an edge instant over the edge.
        for out in [
            "0000-12-31T23:59:59Z",
            "0001-01-01T00:30:00+01:00",
            "9999-12-31T23:30:00-01:00",
            "9999-12-31T23:59:60Z",
        ] {
            assert_eq!(rfc3339_micros(out), None, "{out}");
        }
        // The constants are the dates they say.
        assert_eq!(
            days_from_civil(1, 1, 1) * 86_400_000_000,
            MIN_TIMESTAMP_MICROS
        );
        assert_eq!(
            (days_from_civil(9_999, 12, 31) + 1) * 86_400_000_000 - 1,
            MAX_TIMESTAMP_MICROS
        );
    }

    #[test]
    fn epoch_values_in_each_unit_and_out_of_range() {
        use EpochUnit::*;
        assert_eq!(
            epoch_micros(1_796_031_000, Seconds),
            Some(1_796_031_000_000_000)
        );
        assert_eq!(
            epoch_micros(1_796_031_000_500, Millis),
            Some(1_796_031_000_500_000)
        );
        assert_eq!(epoch_micros(-1, Micros), Some(-1));
        assert_eq!(
            epoch_micros(253_402_300_799, Seconds),
            Some(253_402_300_799_000_000)
        );
        assert_eq!(epoch_micros(253_402_300_800, Seconds), None);
        assert_eq!(
            epoch_micros(-62_135_596_800, Seconds),
            Some(MIN_TIMESTAMP_MICROS)
        );
        assert_eq!(epoch_micros(-62_135_596_801, Seconds), None);
        // Milliseconds given as seconds: refused, not 57 000 years away.
        assert_eq!(epoch_micros(1_796_031_000_500, Seconds), None);
        assert_eq!(epoch_micros(i64::MAX, Seconds), None);
        assert_eq!(epoch_micros(i64::MIN, Millis), None);
        assert_eq!(epoch_micros(i64::MAX, Micros), None);
    }

    #[test]
    fn writes_rfc3339_text_as_sqlite_holds_it() {
        assert_eq!(rfc3339_text(0), "1970-01-01T00:00:00+00:00");
        assert_eq!(
            rfc3339_text(1_796_031_000_500_000),
            "2026-11-30T09:30:00.500+00:00"
        );
        assert_eq!(
            rfc3339_text(1_709_166_600_123_456),
            "2024-02-29T00:30:00.123456+00:00"
        );
        assert_eq!(rfc3339_text(-1), "1969-12-31T23:59:59.999999+00:00");
        assert_eq!(
            rfc3339_text(MIN_TIMESTAMP_MICROS),
            "0001-01-01T00:00:00+00:00"
        );
        assert_eq!(
            rfc3339_text(MAX_TIMESTAMP_MICROS),
            "9999-12-31T23:59:59.999999+00:00"
        );
        assert_eq!(
            rfc3339_text(MAX_TIMESTAMP_MICROS + 1),
            "+10000-01-01T00:00:00+00:00"
        );
        // Text and reader agree, every 997th day of the range.
        for day in (-719_162i64..2_932_897).step_by(997) {
            let micros = day * 86_400_000_000 + 45_296_789_000;
            assert_eq!(
                rfc3339_micros(&rfc3339_text(micros)),
                Some(micros),
                "{micros}"
            );
        }
    }
}
