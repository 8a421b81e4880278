//! [`Stamp`]: an alert's timestamps (`created`, `modified`, `clearedTime`) and its `eTag`, kept
//! in 16 bytes without a heap allocation when the text is one of OneView's usual forms.
//!
//! Every open alert carries three or four of these, and as `String`s they were a quarter of an
//! open alert's memory (BENCHMARKS.md, section 9): 24 bytes each plus a 32-byte allocation.
//! OneView writes its timestamps as `2024-01-01T00:00:00.000Z` and a real appliance's `eTag`
//! is its `modified` text, so both are kept as unix milliseconds; a plain decimal `eTag`
//! (the simulator's, other resources') as the number. Any other text is kept as sent. The form
//! is chosen so that the text reads back exactly as it was decoded: a `Stamp` compares,
//! serializes and displays as its text, and the PUT of a write-back sends the same `eTag`.

use std::borrow::Cow;
use std::fmt::{self, Write as _};

use chrono::{DateTime, Datelike, NaiveDate, Timelike};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// See the module docs. Equal stamps have equal texts and the reverse (one form per text).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Stamp(Repr);

#[derive(Clone, PartialEq, Eq, Hash)]
enum Repr {
    /// `YYYY-MM-DDTHH:MM:SS.mmmZ` exactly, a valid instant of the years 0 to 9999.
    Millis(i64),
    /// Decimal digits without a leading zero (or `0`), at most `u64::MAX`.
    Number(u64),
    /// Any other text. Boxed twice so that the rare case does not make every stamp wider.
    Text(Box<Box<str>>),
}

impl Stamp {
    /// The stamp of `text`, kept so that it reads back exactly.
    pub fn new(text: &str) -> Self {
        if let Some(ms) = canonical_millis(text) {
            return Stamp(Repr::Millis(ms));
        }
        if let Some(n) = canonical_number(text) {
            return Stamp(Repr::Number(n));
        }
        Stamp(Repr::Text(Box::new(Box::from(text))))
    }

    /// The instant, unix milliseconds, when the text is an RFC 3339 timestamp.
    pub fn millis(&self) -> Option<i64> {
        match &self.0 {
            Repr::Millis(ms) => Some(*ms),
            Repr::Number(_) => None,
            Repr::Text(t) => DateTime::parse_from_rfc3339(t)
                .ok()
                .map(|d| d.timestamp_millis()),
        }
    }

    /// The text as decoded.
    pub fn text(&self) -> Cow<'_, str> {
        match &self.0 {
            Repr::Text(t) => Cow::Borrowed(t),
            _ => Cow::Owned(self.to_string()),
        }
    }
}

impl fmt::Display for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Millis(ms) => {
                // `canonical_millis` only keeps instants of the years 0 to 9999.
                let Some(d) = DateTime::from_timestamp_millis(*ms) else {
                    return Err(fmt::Error);
                };
                write!(
                    f,
                    "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                    d.year(),
                    d.month(),
                    d.day(),
                    d.hour(),
                    d.minute(),
                    d.second(),
                    d.timestamp_subsec_millis()
                )
            }
            Repr::Number(n) => write!(f, "{n}"),
            Repr::Text(t) => f.write_str(t),
        }
    }
}

impl fmt::Debug for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_char('"')?;
        fmt::Display::fmt(self, f)?;
        f.write_char('"')
    }
}

impl From<&str> for Stamp {
    fn from(s: &str) -> Self {
        Stamp::new(s)
    }
}

impl From<String> for Stamp {
    fn from(s: String) -> Self {
        Stamp::new(&s)
    }
}

impl PartialEq<str> for Stamp {
    fn eq(&self, other: &str) -> bool {
        match &self.0 {
            Repr::Text(t) => ***t == *other,
            _ => *self == Stamp::new(other),
        }
    }
}

impl PartialEq<&str> for Stamp {
    fn eq(&self, other: &&str) -> bool {
        *self == **other
    }
}

impl Serialize for Stamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Repr::Text(t) => s.serialize_str(t),
            _ => s.collect_str(self),
        }
    }
}

impl<'de> Deserialize<'de> for Stamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Read borrowed where the format allows: an ordinary stamp allocates nothing.
        struct V;
        impl Visitor<'_> for V {
            type Value = Stamp;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Stamp, E> {
                Ok(Stamp::new(s))
            }
        }
        d.deserialize_str(V)
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` with a valid date and time, as unix milliseconds.
fn canonical_millis(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 24 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return None;
    }
    if b[16] != b':' || b[19] != b'.' || b[23] != b'Z' {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<u32> {
        b[from..to].iter().try_fold(0u32, |n, c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    };
    let year = i32::try_from(num(0, 4)?).ok()?;
    let t = NaiveDate::from_ymd_opt(year, num(5, 7)?, num(8, 10)?)?.and_hms_milli_opt(
        num(11, 13)?,
        num(14, 16)?,
        num(17, 19)?,
        num(20, 23)?,
    )?;
    Some(t.and_utc().timestamp_millis())
}

/// Decimal digits as `u64` writes them.
fn canonical_number(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > 20 || (b[0] == b'0' && b.len() > 1) {
        return None;
    }
    if !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_text_reads_back_exactly() {
        for text in [
            "2018-02-12T20:12:03.207Z",
            "2024-01-01T00:00:00.000Z",
            "1970-01-01T00:00:00.000Z",
            "1969-12-31T23:59:59.999Z",
            "0000-01-01T00:00:00.000Z",
            "9999-12-31T23:59:59.999Z",
            "2024-02-29T12:00:00.000Z",
            // Valid RFC 3339 in other forms: kept as text, still an instant.
            "2018-02-12T20:12:03Z",
            "2018-02-12T20:12:03.2071Z",
            "2018-02-12T21:12:03.207+01:00",
            "2018-02-12t20:12:03.207z",
            // Not instants at all.
            "2023-02-29T12:00:00.000Z",
            "2018-02-12T24:00:00.000Z",
            "2018-02-12T23:59:60.000Z",
            "",
            "0",
            "7",
            "42",
            "007",
            "-1",
            "+1",
            "18446744073709551615",
            "18446744073709551616",
            "3d0c5a2f",
            "W/\"abc\"",
            "2018-02-12T20:12:03.207Zx",
            "２０１８-02-12T20:12:03.207Z",
        ] {
            let s = Stamp::new(text);
            assert_eq!(s.to_string(), text, "{text:?}");
            assert_eq!(s.text(), text, "{text:?}");
            assert_eq!(s, *text);
            assert_eq!(format!("{s:?}"), format!("\"{text}\""));
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, serde_json::to_string(text).unwrap());
            let back: Stamp = serde_json::from_str(&json).unwrap();
            assert_eq!(back, s, "{text:?}");
            assert_eq!(
                s.millis(),
                DateTime::parse_from_rfc3339(text)
                    .ok()
                    .map(|d| d.timestamp_millis()),
                "{text:?}"
            );
        }
    }

    #[test]
    fn oneview_forms_take_no_heap_and_sixteen_bytes() {
        assert_eq!(std::mem::size_of::<Option<Stamp>>(), 16);
        assert!(matches!(
            Stamp::new("2018-02-12T20:12:03.207Z").0,
            Repr::Millis(1_518_466_323_207)
        ));
        assert!(matches!(Stamp::new("1234567").0, Repr::Number(1_234_567)));
        assert!(matches!(Stamp::new("007").0, Repr::Text(_)));
    }

    #[test]
    fn every_instant_of_the_oneview_form_is_kept_as_millis() {
        // Spread over the years 0..=9999, and the edges.
        let (lo, hi) = (-62_167_219_200_000i64, 253_402_300_799_999i64);
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut values = vec![lo, hi, 0, -1, 1, 1_518_466_323_207];
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            values.push(lo + (x % (hi - lo) as u64) as i64);
        }
        for ms in values {
            let text = DateTime::from_timestamp_millis(ms)
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            let s = Stamp::new(&text);
            assert!(matches!(s.0, Repr::Millis(m) if m == ms), "{text}");
            assert_eq!(s.to_string(), text);
            assert_eq!(s.millis(), Some(ms));
        }
    }
}
