//! The one wall clock of the crate: seconds since the Unix epoch.

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// [`unix_now`] as the signed seconds X.509 arithmetic uses.
pub fn unix_now_signed() -> i64 {
    i64::try_from(unix_now()).unwrap_or(i64::MAX)
}
