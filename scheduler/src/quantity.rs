//! Resource quantities (`100m`, `1`, `1Gi`, `500Mi`, `1e3`, `1k`), parsed the way
//! apimachinery's `resource.Quantity` reads them, rounded up like its `MilliValue` and
//! `Value`.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// Not of the form `<sign><digits>[.<digits>]<suffix>`.
    #[error("quantity {0:?} is not a valid quantity")]
    Invalid(String),
}

/// The quantity in thousandths (millicores for cpu), rounded up, saturating at `i64::MAX`.
pub fn parse_milli(text: &str) -> Result<i64, QuantityError> {
    Ok(parse_milli_wide(text)?.clamp(i64::MIN as i128, i64::MAX as i128) as i64)
}

/// The quantity in whole units (bytes for memory), rounded up, saturating at `i64::MAX`.
pub fn parse_value(text: &str) -> Result<i64, QuantityError> {
    let milli = parse_milli_wide(text)?;
    let value = if milli >= 0 {
        milli / 1000 + i128::from(milli % 1000 != 0)
    } else {
        milli / 1000
    };
    Ok(value.clamp(i64::MIN as i128, i64::MAX as i128) as i64)
}

fn parse_milli_wide(text: &str) -> Result<i128, QuantityError> {
    let invalid = || QuantityError::Invalid(text.to_string());
    let s = text.trim();
    let (negative, s) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let number_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_end);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
        return Err(invalid());
    }
    // value = digits / 10^fraction_len * 2^binary * 10^decimal
    let (binary, decimal): (u32, i32) = match suffix {
        "" => (0, 0),
        "Ki" => (10, 0),
        "Mi" => (20, 0),
        "Gi" => (30, 0),
        "Ti" => (40, 0),
        "Pi" => (50, 0),
        "Ei" => (60, 0),
        "n" => (0, -9),
        "u" => (0, -6),
        "m" => (0, -3),
        "k" => (0, 3),
        "M" => (0, 6),
        "G" => (0, 9),
        "T" => (0, 12),
        "P" => (0, 15),
        "E" => (0, 18),
        exp if exp.starts_with(['e', 'E']) => {
            let e: i32 = exp[1..].parse().map_err(|_| invalid())?;
            (0, e)
        }
        _ => return Err(invalid()),
    };
    let digits = format!("{whole}{fraction}");
    let digits = digits.trim_start_matches('0');
    let saturated = if negative { i128::MIN } else { i128::MAX };
    if digits.is_empty() {
        return Ok(0);
    }
    // More than 38 significant digits cannot fit i128 and cannot be a sane request.
    let Ok(mantissa) = digits.parse::<i128>() else {
        return Ok(saturated);
    };
    let scale = decimal + 3 - fraction.len() as i32;
    let scaled = if scale >= 0 {
        10i128
            .checked_pow(scale as u32)
            .and_then(|p| mantissa.checked_mul(p))
    } else {
        let divisor = 10i128.checked_pow((-scale) as u32);
        // Beyond i128's range the quotient is below one: the rounded-up value is 1 (or 0 for zero).
        Some(match divisor {
            Some(d) => (mantissa + d - 1) / d,
            None => 1,
        })
    };
    let value = scaled.and_then(|v| v.checked_mul(1i128 << binary.min(100)));
    let Some(value) = value else {
        return Ok(saturated);
    };
    Ok(if negative { -value } else { value })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_forms() {
        assert_eq!(parse_milli("100m"), Ok(100));
        assert_eq!(parse_milli("1"), Ok(1000));
        assert_eq!(parse_milli("0.5"), Ok(500));
        assert_eq!(parse_milli(".5"), Ok(500));
        assert_eq!(parse_milli("2.25"), Ok(2250));
        assert_eq!(parse_milli("1e3"), Ok(1_000_000));
        assert_eq!(parse_milli("1k"), Ok(1_000_000));
        assert_eq!(parse_milli("1E-3"), Ok(1));
        assert_eq!(parse_milli("+3"), Ok(3000));
        assert_eq!(parse_milli("0"), Ok(0));
        assert_eq!(parse_milli("100n"), Ok(1), "rounds up like MilliValue");
        assert_eq!(parse_milli("-1"), Ok(-1000));
    }

    #[test]
    fn memory_forms() {
        assert_eq!(parse_value("1Gi"), Ok(1 << 30));
        assert_eq!(parse_value("500Mi"), Ok(500 << 20));
        assert_eq!(parse_value("1.5Gi"), Ok(3 << 29));
        assert_eq!(parse_value("128974848"), Ok(128_974_848));
        assert_eq!(parse_value("129e6"), Ok(129_000_000));
        assert_eq!(parse_value("123Mi"), Ok(123 * 1024 * 1024));
        assert_eq!(parse_value("1M"), Ok(1_000_000));
        assert_eq!(parse_value("1E"), Ok(1_000_000_000_000_000_000));
        assert_eq!(
            parse_value("1m"),
            Ok(1),
            "a thousandth of a byte rounds up to one"
        );
        assert_eq!(parse_value("1Ei"), Ok(1 << 60));
        assert_eq!(parse_value("100Ei"), Ok(i64::MAX), "saturates");
        assert_eq!(parse_value("1e400"), Ok(i64::MAX));
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "", "m", "abc", "1.2.3", "1Ki2", "1x", "--1", "1e", "1ee3", "Gi",
        ] {
            assert!(parse_milli(bad).is_err(), "{bad:?} accepted");
        }
    }
}
