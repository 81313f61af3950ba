//! MAC addresses as every part of the crate writes them: six bytes, or their lower-case text
//! `02:00:00:00:00:01` (OVS's MAC table, FRR's routes, status).

/// `aa:bb:cc:dd:ee:ff`.
pub fn text(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The six bytes of a MAC's text (either case), if it is one.
pub fn parse(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in out.iter_mut() {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_bytes_round_trip() {
        let m = [0x02, 0, 0, 0xab, 0, 1];
        assert_eq!(text(&m), "02:00:00:ab:00:01");
        assert_eq!(parse("02:00:00:AB:00:01"), Some(m));
        for bad in [
            "02:00:00:ab:00",
            "02:00:00:ab:00:01:02",
            "02:00:00:ab:00:1",
            "zz:00:00:ab:00:01",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
