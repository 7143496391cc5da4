//! A small `resource.Quantity` parser: enough to compare requests with limits and to reject
//! malformed values with upstream's message.

use std::cmp::Ordering;

pub const QUANTITY_FORMAT_ERROR: &str =
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'";

/// A parsed quantity, held exactly as `digits * 10^exp10 * 2^exp2` so that `1Gi`,
/// `1073741824` and `1.073741824e9` compare equal.
#[derive(Clone, Copy, Debug)]
pub struct Quantity {
    negative: bool,
    digits: u128,
    exp10: i32,
    exp2: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{QUANTITY_FORMAT_ERROR}")]
pub struct QuantityError;

impl Quantity {
    pub fn parse(text: &str) -> Result<Quantity, QuantityError> {
        let s = text.trim();
        let (negative, rest) = match s.as_bytes().first() {
            Some(b'-') => (true, &s[1..]),
            Some(b'+') => (false, &s[1..]),
            _ => (false, s),
        };
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, suffix) = rest.split_at(number_len);
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(QuantityError);
        }
        let mut digits: u128 = 0;
        let mut exp10: i32 = 0;
        let mut after_point = false;
        for c in number.chars() {
            if c == '.' {
                after_point = true;
                continue;
            }
            let d = u128::from(c as u8 - b'0');
            // Beyond ~38 significant digits precision no longer matters for comparisons.
            match digits.checked_mul(10).and_then(|v| v.checked_add(d)) {
                Some(v) => {
                    digits = v;
                    if after_point {
                        exp10 -= 1;
                    }
                }
                None => {
                    if !after_point {
                        exp10 += 1;
                    }
                }
            }
        }
        let mut exp2 = 0;
        match suffix {
            "" => {}
            "Ki" => exp2 = 10,
            "Mi" => exp2 = 20,
            "Gi" => exp2 = 30,
            "Ti" => exp2 = 40,
            "Pi" => exp2 = 50,
            "Ei" => exp2 = 60,
            "n" => exp10 -= 9,
            "u" => exp10 -= 6,
            "m" => exp10 -= 3,
            "k" => exp10 += 3,
            "M" => exp10 += 6,
            "G" => exp10 += 9,
            "T" => exp10 += 12,
            "P" => exp10 += 15,
            "E" => exp10 += 18,
            other => {
                let exp = other
                    .strip_prefix(['e', 'E'])
                    .filter(|e| !e.is_empty())
                    .ok_or(QuantityError)?;
                let parsed: i32 = exp.parse().map_err(|_| QuantityError)?;
                exp10 = exp10.checked_add(parsed).ok_or(QuantityError)?;
            }
        }
        Ok(Quantity {
            negative: negative && digits != 0,
            digits,
            exp10,
            exp2,
        })
    }

    pub fn is_negative(&self) -> bool {
        self.negative
    }

    /// The value as f64 (approximate; for display and heuristics).
    pub fn as_f64(&self) -> f64 {
        let v = self.digits as f64 * 10f64.powi(self.exp10) * 2f64.powi(self.exp2 as i32);
        if self.negative {
            -v
        } else {
            v
        }
    }

    /// Compares magnitudes exactly by scaling both sides to a common integer form.
    fn cmp_magnitude(&self, other: &Quantity) -> Ordering {
        // a * 10^ea * 2^pa  vs  b * 10^eb * 2^pb; move everything to non-negative exponents.
        let e = self.exp10.min(other.exp10);
        let p = self.exp2.min(other.exp2);
        let scale = |q: &Quantity| -> Option<u128> {
            let mut v = q.digits;
            for _ in 0..(q.exp10 - e) {
                v = v.checked_mul(10)?;
            }
            v.checked_mul(1u128.checked_shl(q.exp2 - p)?)
        };
        match (scale(self), scale(other)) {
            (Some(a), Some(b)) => a.cmp(&b),
            _ => self
                .as_f64()
                .abs()
                .partial_cmp(&other.as_f64().abs())
                .unwrap_or(Ordering::Equal),
        }
    }
}

impl PartialEq for Quantity {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Quantity {}

impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Quantity {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self.negative, other.negative) {
            (false, true) => Ordering::Greater,
            (true, false) => Ordering::Less,
            (false, false) => self.cmp_magnitude(other),
            (true, true) => other.cmp_magnitude(self),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity::parse(s).unwrap()
    }

    #[test]
    fn suffixes_compare_exactly() {
        assert_eq!(q("1Gi"), q("1073741824"));
        assert_eq!(q("100m"), q("0.1"));
        assert_eq!(q("1e3"), q("1k"));
        assert_eq!(q("1.5"), q("1500m"));
        assert!(q("129e6") > q("123Mi"));
        assert!(q("500m") < q("1"));
        assert!(q("1Mi") > q("1M"));
        assert!(q("-1") < q("0"));
        assert!(q("-2") < q("-1"));
        assert!(q("-1").is_negative());
        assert!(!q("-0").is_negative());
    }

    #[test]
    fn rejects_malformed() {
        for bad in ["", "abc", "1x", "1.2.3", "Gi", "1e", "1GiB", "."] {
            assert_eq!(Quantity::parse(bad), Err(QuantityError), "{bad}");
        }
    }
}
