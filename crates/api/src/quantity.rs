//! `resource.Quantity`: the fixed-point amounts of `resources.requests`, node capacity and
//! quotas (`100m`, `1.5`, `1Gi`, `129e6`), parsed, compared and printed as apimachinery does.
//!
//! A value is held exactly as `mantissa * 10^exponent` (no floating point). Parsing follows
//! upstream's scanner, so the odd inputs it accepts (`.`, `Gi`, `+`, all zero) are accepted
//! here too, and it keeps upstream's two lossy steps: a non-zero value finer than a nano is
//! rounded away from zero to the next nano (`0.9n` is `1n`), and a binary-suffixed amount is
//! capped at 2^63-1. What is printed is upstream's canonical form (`1.5` prints `1500m`,
//! `1024Mi` prints `1Gi`).

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// The regular expression upstream's format error quotes.
pub const QUANTITY_REGEX: &str = "^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$";

/// Why a quantity string was refused; the messages are upstream's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// Not `<sign><digits>.<digits><suffix>` (upstream's `ErrFormatWrong`).
    #[error("quantities must match the regular expression '{QUANTITY_REGEX}'")]
    Format,
    /// Scanned, but the suffix is none of the known ones (upstream's `ErrSuffix`).
    #[error("unable to parse quantity's suffix")]
    Suffix,
    /// Well formed, but more than 38 significant digits, which upstream keeps in a big
    /// decimal and rkube does not.
    #[error("unable to parse numeric part of quantity: too many significant digits")]
    Precision,
}

/// How a quantity is printed, remembered from its suffix when parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Format {
    /// `12e6`.
    DecimalExponent,
    /// `12Mi` (powers of 1024).
    BinarySI,
    /// `12M`, `12m`, `12` (powers of 1000).
    #[default]
    DecimalSI,
}

/// Upstream's `Nano` scale: no parsed quantity is finer than 10^-9.
const MIN_EXPONENT: i32 = -9;
/// Upstream caps binary-suffixed amounts at the largest int64.
const MAX_BINARY: i128 = i64::MAX as i128;
/// Decimal digits an i128 mantissa always holds.
const MAX_DIGITS: usize = 38;

/// An exact amount. Equality and ordering are by value (`1000m == 1`, `1Gi == 1073741824`);
/// the format only decides how it prints.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quantity {
    /// No trailing decimal zeros (they live in the exponent); zero is `0 * 10^0`.
    mantissa: i128,
    /// At least `MIN_EXPONENT`.
    exponent: i32,
    format: Format,
}

/// The pieces upstream's scanner splits a quantity into.
struct Scanned<'a> {
    negative: bool,
    /// Integer digits without leading zeros (may be empty).
    whole: &'a str,
    /// Digits after the point (may be empty).
    fraction: &'a str,
    suffix: &'a str,
}

/// Upstream's `parseQuantityString`: sign, digits, optional point and digits, then suffix
/// letters, an optional sign and digits. Anything left over is a format error.
fn scan(text: &str) -> Result<Scanned<'_>, QuantityError> {
    let bytes = text.as_bytes();
    let mut pos = 0;
    let negative = match bytes.first() {
        Some(b'-') => {
            pos += 1;
            true
        }
        Some(b'+') => {
            pos += 1;
            false
        }
        _ => false,
    };
    while bytes.get(pos) == Some(&b'0') {
        pos += 1;
    }
    let digits_from = |start: usize| {
        let mut end = start;
        while bytes.get(end).is_some_and(u8::is_ascii_digit) {
            end += 1;
        }
        end
    };
    let whole_end = digits_from(pos);
    let whole = &text[pos..whole_end];
    pos = whole_end;
    let mut fraction = "";
    if bytes.get(pos) == Some(&b'.') {
        let end = digits_from(pos + 1);
        fraction = &text[pos + 1..end];
        pos = end;
    }
    let suffix_start = pos;
    while bytes.get(pos).is_some_and(|b| b"eEinumkKMGTP".contains(b)) {
        pos += 1;
    }
    if matches!(bytes.get(pos), Some(b'-' | b'+')) {
        pos += 1;
    }
    pos = digits_from(pos);
    if pos != bytes.len() {
        return Err(QuantityError::Format);
    }
    Ok(Scanned {
        negative,
        whole,
        fraction,
        suffix: &text[suffix_start..],
    })
}

/// A suffix as (base, exponent, format), as upstream's suffixer interprets it.
fn interpret(suffix: &str) -> Result<(u32, i32, Format), QuantityError> {
    let decimal = |e| Ok((10, e, Format::DecimalSI));
    let binary = |e| Ok((2, e, Format::BinarySI));
    match suffix {
        "" => decimal(0),
        "n" => decimal(-9),
        "u" => decimal(-6),
        "m" => decimal(-3),
        "k" => decimal(3),
        "M" => decimal(6),
        "G" => decimal(9),
        "T" => decimal(12),
        "P" => decimal(15),
        "E" => decimal(18),
        "Ki" => binary(10),
        "Mi" => binary(20),
        "Gi" => binary(30),
        "Ti" => binary(40),
        "Pi" => binary(50),
        "Ei" => binary(60),
        _ => {
            let exponent = suffix
                .strip_prefix(['e', 'E'])
                .filter(|e| !e.is_empty())
                .and_then(|e| e.parse::<i32>().ok())
                .ok_or(QuantityError::Suffix)?;
            Ok((10, exponent, Format::DecimalExponent))
        }
    }
}

/// `digits` (no leading zeros) as `(mantissa, extra exponent)`, trailing zeros moved into
/// the exponent.
fn digits_value(digits: &str) -> Result<(i128, i32), QuantityError> {
    let significant = digits.trim_end_matches('0');
    if significant.is_empty() {
        return Ok((0, 0));
    }
    if significant.len() > MAX_DIGITS {
        return Err(QuantityError::Precision);
    }
    let zeros =
        i32::try_from(digits.len() - significant.len()).map_err(|_| QuantityError::Precision)?;
    let mantissa = significant
        .parse::<i128>()
        .map_err(|_| QuantityError::Precision)?;
    Ok((mantissa, zeros))
}

fn pow10(n: u32) -> Option<i128> {
    10i128.checked_pow(n)
}

/// `ceil(value / 10^n)` for a non-negative value, saturating to 1 when 10^n is beyond i128.
fn div_pow10_up(value: i128, n: u32) -> i128 {
    match pow10(n) {
        Some(d) => value / d + i128::from(value % d != 0),
        None => i128::from(value != 0),
    }
}

impl Quantity {
    /// Parses upstream's quantity syntax. Surrounding whitespace is an error, as upstream;
    /// JSON decoding trims it first.
    pub fn parse(text: &str) -> Result<Quantity, QuantityError> {
        if text.is_empty() {
            return Err(QuantityError::Format);
        }
        let scanned = scan(text)?;
        let (base, suffix_exponent, mut format) = interpret(scanned.suffix)?;
        // Most quantities have no fraction; only join the digits when there is one.
        let joined;
        let digits = if scanned.fraction.is_empty() {
            scanned.whole
        } else {
            joined = format!("{}{}", scanned.whole, scanned.fraction);
            joined.trim_start_matches('0')
        };
        let (mantissa, zeros) = digits_value(digits)?;
        // |value| = mantissa * 10^exponent10 * 2^binary_exponent
        let fraction_len =
            i32::try_from(scanned.fraction.len()).map_err(|_| QuantityError::Precision)?;
        let exponent10 = zeros.saturating_sub(fraction_len);
        let (magnitude, exponent) = if base == 10 {
            Self::round_to_nano(mantissa, exponent10.saturating_add(suffix_exponent))
        } else {
            let nanos = Self::binary_nanos(mantissa, exponent10, suffix_exponent as u32)?;
            if nanos > 0 && nanos < pow10(9).unwrap_or(i128::MAX) {
                // Below one the binary form would have to round; upstream prints it decimal.
                format = Format::DecimalSI;
            }
            (nanos, MIN_EXPONENT)
        };
        let signed = if scanned.negative {
            -magnitude
        } else {
            magnitude
        };
        Ok(Quantity::normalized(signed, exponent, format))
    }

    /// `m * 10^e` rounded away from zero to whole nanos (for a non-negative `m`).
    fn round_to_nano(mantissa: i128, exponent: i32) -> (i128, i32) {
        if exponent >= MIN_EXPONENT || mantissa == 0 {
            return (mantissa, exponent);
        }
        let excess = (MIN_EXPONENT as i64 - exponent as i64).min(u32::MAX as i64) as u32;
        (div_pow10_up(mantissa, excess), MIN_EXPONENT)
    }

    /// `m * 10^e10 * 2^e2` in nanos, rounded up and capped at 2^63-1 units.
    fn binary_nanos(
        mantissa: i128,
        exponent10: i32,
        exponent2: u32,
    ) -> Result<i128, QuantityError> {
        let cap = MAX_BINARY * pow10(9).unwrap_or(i128::MAX);
        if mantissa == 0 {
            return Ok(0);
        }
        let scale = exponent10 as i64 + 9;
        if scale >= 0 {
            // An integer number of nanos: anything past i128 is far beyond the cap.
            let nanos = u32::try_from(scale)
                .ok()
                .and_then(pow10)
                .and_then(|p| mantissa.checked_mul(p))
                .and_then(|v| v.checked_mul(1i128 << exponent2));
            return Ok(nanos.map_or(cap, |n| n.min(cap)));
        }
        let shifted = mantissa
            .checked_mul(1i128 << exponent2)
            .ok_or(QuantityError::Precision)?;
        let down = u32::try_from(-scale).unwrap_or(u32::MAX);
        Ok(div_pow10_up(shifted, down).min(cap))
    }

    /// Strips trailing zeros into the exponent so that equal values have equal fields.
    fn normalized(mut mantissa: i128, mut exponent: i32, format: Format) -> Quantity {
        if mantissa == 0 {
            return Quantity {
                mantissa: 0,
                exponent: 0,
                format,
            };
        }
        while mantissa % 10 == 0 {
            mantissa /= 10;
            exponent = exponent.saturating_add(1);
        }
        Quantity {
            mantissa,
            exponent,
            format,
        }
    }

    /// `value` whole units (`Quantity::new(5, Format::BinarySI)` prints `5`, `1024` `1Ki`).
    pub fn new(value: i64, format: Format) -> Quantity {
        Quantity::normalized(i128::from(value), 0, format)
    }

    /// `milli` thousandths, printed DecimalSI (`1500` prints `1500m`).
    pub fn from_milli(milli: i64) -> Quantity {
        Quantity::normalized(i128::from(milli), -3, Format::DecimalSI)
    }

    pub fn format(&self) -> Format {
        self.format
    }

    pub fn is_zero(&self) -> bool {
        self.mantissa == 0
    }

    pub fn is_negative(&self) -> bool {
        self.mantissa < 0
    }

    /// `ceil(self * 10^-scale)` as i128, or `None` when it does not fit.
    fn scaled_ceil(&self, scale: i32) -> Option<i128> {
        let shift = self.exponent as i64 - scale as i64;
        if shift >= 0 {
            let factor = u32::try_from(shift).ok().and_then(pow10)?;
            return self.mantissa.checked_mul(factor);
        }
        let down = u32::try_from(-shift).unwrap_or(u32::MAX);
        Some(match pow10(down) {
            Some(d) => {
                let quotient = self.mantissa / d;
                quotient + i128::from(self.mantissa % d > 0)
            }
            // Smaller than one unit of the scale: the ceiling is 1, or 0 for a negative value.
            None => i128::from(self.mantissa > 0),
        })
    }

    /// `ceil(self * 10^-scale)`, saturating at the i64 range (upstream overflows silently).
    /// Negative amounts round toward positive infinity.
    pub fn scaled_value(&self, scale: i32) -> i64 {
        let saturated = if self.is_negative() {
            i64::MIN
        } else {
            i64::MAX
        };
        match self.scaled_ceil(scale) {
            Some(v) => i64::try_from(v).unwrap_or(saturated),
            None => saturated,
        }
    }

    /// Thousandths, rounded up (`100n` is 1, `1.5` is 1500): millicores for cpu.
    pub fn milli_value(&self) -> i64 {
        self.scaled_value(-3)
    }

    /// Whole units, rounded up (`1m` is 1): bytes for memory.
    pub fn value(&self) -> i64 {
        self.scaled_value(0)
    }

    /// The exact sum, or `None` past what the representation holds. A zero left-hand side
    /// takes the other side's format, as upstream's `Add`.
    pub fn checked_add(&self, other: &Quantity) -> Option<Quantity> {
        let exponent = self.exponent.min(other.exponent);
        let align = |q: &Quantity| {
            let factor = u32::try_from(q.exponent as i64 - exponent as i64)
                .ok()
                .and_then(pow10)?;
            q.mantissa.checked_mul(factor)
        };
        let sum = align(self)?.checked_add(align(other)?)?;
        let format = if self.is_zero() {
            other.format
        } else {
            self.format
        };
        Some(Quantity::normalized(sum, exponent, format))
    }

    /// The decimal mantissa and an exponent that is a multiple of three, as upstream's
    /// `AsCanonicalBytes` gives them.
    fn canonical_decimal(&self) -> (i128, i32) {
        let mut mantissa = self.mantissa;
        let mut exponent = self.exponent;
        while exponent.rem_euclid(3) != 0 {
            match mantissa.checked_mul(10) {
                Some(m) => {
                    mantissa = m;
                    exponent -= 1;
                }
                // Cannot happen for parsed values (38 digits at most, two more needed); keep
                // the value right even if the suffix is then not a multiple of three.
                None => break,
            }
        }
        (mantissa, exponent)
    }

    /// The whole number this is, if it is one and fits.
    fn as_integer(&self) -> Option<i128> {
        if self.exponent < 0 {
            return None;
        }
        let factor = u32::try_from(self.exponent).ok().and_then(pow10)?;
        self.mantissa.checked_mul(factor)
    }
}

fn decimal_suffix(exponent: i32) -> Option<&'static str> {
    Some(match exponent {
        -9 => "n",
        -6 => "u",
        -3 => "m",
        0 => "",
        3 => "k",
        6 => "M",
        9 => "G",
        12 => "T",
        15 => "P",
        18 => "E",
        _ => return None,
    })
}

const BINARY_SUFFIXES: [&str; 7] = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];

/// Upstream's canonical form (`Quantity.String()`): no fractional digits, the largest
/// suffix that loses nothing, in the format the quantity was written in.
impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_zero() {
            return f.write_str("0");
        }
        if self.format == Format::BinarySI {
            // Binary is used only for whole amounts of at least 1024 (in magnitude).
            if let Some(mut value) = self.as_integer().filter(|v| v.abs() >= 1024) {
                let mut power = 0;
                while value % 1024 == 0 && power + 1 < BINARY_SUFFIXES.len() {
                    value /= 1024;
                    power += 1;
                }
                return write!(f, "{value}{}", BINARY_SUFFIXES[power]);
            }
        }
        let (mantissa, exponent) = self.canonical_decimal();
        let si = (self.format != Format::DecimalExponent)
            .then(|| decimal_suffix(exponent))
            .flatten();
        match si {
            Some(suffix) => write!(f, "{mantissa}{suffix}"),
            None if exponent == 0 => write!(f, "{mantissa}"),
            None => write!(f, "{mantissa}e{exponent}"),
        }
    }
}

impl FromStr for Quantity {
    type Err = QuantityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Quantity::parse(s)
    }
}

impl PartialEq for Quantity {
    fn eq(&self, other: &Self) -> bool {
        // Normalized, so equal values have equal fields.
        self.mantissa == other.mantissa && self.exponent == other.exponent
    }
}

impl Eq for Quantity {}

impl std::hash::Hash for Quantity {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.mantissa.hash(state);
        self.exponent.hash(state);
    }
}

impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Quantity {
    fn cmp(&self, other: &Self) -> Ordering {
        let sign = self.mantissa.signum().cmp(&other.mantissa.signum());
        if sign != Ordering::Equal || self.mantissa == 0 {
            return sign;
        }
        // Same sign, both non-zero: bring the larger exponent down to the smaller one. If
        // that overflows, the scaled side is beyond anything the other side can hold.
        let (high, low, flipped) = if self.exponent >= other.exponent {
            (self, other, false)
        } else {
            (other, self, true)
        };
        let scaled = u32::try_from(high.exponent as i64 - low.exponent as i64)
            .ok()
            .and_then(pow10)
            .and_then(|f| high.mantissa.checked_mul(f));
        let ordering = match scaled {
            Some(h) => h.cmp(&low.mantissa),
            None if high.mantissa > 0 => Ordering::Greater,
            None => Ordering::Less,
        };
        if flipped {
            ordering.reverse()
        } else {
            ordering
        }
    }
}

impl Serialize for Quantity {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A string (surrounding whitespace ignored) or, as upstream also accepts, a JSON number.
impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct QuantityVisitor;

        impl Visitor<'_> for QuantityVisitor {
            type Value = Quantity;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a quantity string such as \"100m\" or \"1Gi\", or a number")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Quantity, E> {
                Quantity::parse(v.trim()).map_err(E::custom)
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Quantity, E> {
                Ok(Quantity::new(v, Format::DecimalSI))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Quantity, E> {
                Quantity::parse(&v.to_string()).map_err(E::custom)
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Quantity, E> {
                // Rust prints the shortest text that reads back as the same double, which
                // is what the client wrote for any sane number.
                Quantity::parse(&v.to_string()).map_err(E::custom)
            }
        }

        deserializer.deserialize_any(QuantityVisitor)
    }
}

impl TryFrom<&k8s_openapi::apimachinery::pkg::api::resource::Quantity> for Quantity {
    type Error = QuantityError;

    fn try_from(
        q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity,
    ) -> Result<Self, Self::Error> {
        Quantity::parse(q.0.trim())
    }
}

/// A quantity written in a JSON object as a string or a number, as the API server stores
/// what clients send.
pub fn from_json(value: &serde_json::Value) -> Result<Quantity, QuantityError> {
    match value {
        serde_json::Value::String(s) => Quantity::parse(s.trim()),
        serde_json::Value::Number(n) => Quantity::parse(&n.to_string()),
        _ => Err(QuantityError::Format),
    }
}

#[cfg(test)]
mod tests;
