//! When a certificate expires: its `notAfter`, read from the DER, and how many days are left.

/// Certificates with fewer days left than this are warned about (`pki check`, the agent's start).
pub const WARN_DAYS: i64 = 30;

/// The certificate's `notAfter` in Unix seconds, or `None` when `der` is not a certificate.
pub fn not_after(der: &[u8]) -> Option<i64> {
    let (0x30, certificate, _) = super::tlv(der)? else {
        return None;
    };
    let (0x30, tbs, _) = super::tlv(certificate)? else {
        return None;
    };
    // version [0] (optional), serial, signature, issuer, then validity.
    let mut rest = tbs;
    let (mut tag, mut body, mut after) = super::tlv(rest)?;
    if tag == 0xa0 {
        rest = after;
        (tag, body, after) = super::tlv(rest)?;
    }
    let _serial = (tag, body);
    let (_, _, after) = super::tlv(after)?; // signature algorithm
    let (_, _, after) = super::tlv(after)?; // issuer
    let (0x30, validity, _) = super::tlv(after)? else {
        return None;
    };
    let (_, _, validity) = super::tlv(validity)?; // notBefore
    let (tag, time, _) = super::tlv(validity)?;
    parse_time(tag, std::str::from_utf8(time).ok()?)
}

/// UTCTime (`YYMMDDHHMMSSZ`, 1950-2049) or GeneralizedTime (`YYYYMMDDHHMMSSZ`), as X.509 writes
/// them, to Unix seconds.
fn parse_time(tag: u8, text: &str) -> Option<i64> {
    let digits = text.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 if digits.len() == 12 => {
            let yy: i64 = digits[..2].parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &digits[2..])
        }
        0x18 if digits.len() == 14 => (digits[..4].parse().ok()?, &digits[4..]),
        _ => return None,
    };
    let field = |i: usize| rest.get(i..i + 2)?.parse::<i64>().ok();
    let (month, day, hour, minute, second) =
        (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Whole days from `now` (Unix seconds) to `not_after`; negative once expired.
pub fn days_left(not_after: i64, now: i64) -> i64 {
    (not_after - now).div_euclid(86_400)
}

/// Now, in Unix seconds.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The `notAfter` of the first certificate in a PEM file.
pub fn of_pem_file(path: &std::path::Path) -> Option<i64> {
    use rustls_pki_types::pem::PemObject;
    let cert = rustls_pki_types::CertificateDer::pem_file_iter(path)
        .ok()?
        .next()?
        .ok()?;
    not_after(&cert)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_as_x509_writes_them() {
        assert_eq!(parse_time(0x17, "700101000000Z"), Some(0));
        assert_eq!(parse_time(0x17, "290101000000Z"), Some(1_861_920_000));
        assert_eq!(parse_time(0x18, "20290101000000Z"), Some(1_861_920_000));
        assert_eq!(parse_time(0x17, "491231235959Z"), Some(2_524_607_999));
        assert_eq!(parse_time(0x17, "2901010000Z"), None);
    }

    #[test]
    fn an_issued_certificate_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        crate::pki::init(dir.path()).unwrap();
        let issued = crate::pki::issue_client(dir.path(), "ci").unwrap();
        let at = of_pem_file(&issued.cert).unwrap();
        assert!(days_left(at, now()) > 365, "{at}");
    }
}
