//! Time as kpki reads and writes it, in one place: the present (to the second, as certificates
//! hold it) and RFC 3339 text (the manifest, reports, `--at`).

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Now, in whole seconds: certificates carry no fractions, and equal inputs should give equal
/// times.
pub fn now() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc() + offset();
    now.replace_nanosecond(0).unwrap_or(now)
}

/// A test-only clock switch: with `KPKI_CLOCK_OFFSET=SECONDS` in a debug build, kpki's present
/// is that far from the real one, so a test sees a certificate expire without waiting for it.
/// Release builds have no switch.
#[cfg(debug_assertions)]
fn offset() -> time::Duration {
    let seconds = std::env::var("KPKI_CLOCK_OFFSET")
        .ok()
        .and_then(|s| s.parse().ok());
    time::Duration::seconds(seconds.unwrap_or(0))
}

#[cfg(not(debug_assertions))]
fn offset() -> time::Duration {
    time::Duration::ZERO
}

/// A timestamp as RFC 3339.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// The date of a timestamp, `2027-11-26`.
pub fn date(t: OffsetDateTime) -> String {
    rfc3339(t).chars().take(10).collect()
}
