//! Cases from apimachinery's `quantity_test.go` (values only), plus what rkube's callers rely on.

use super::*;

fn q(text: &str) -> Quantity {
    Quantity::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

/// `mantissa * 10^exponent` in `format`, the way upstream's `decQuantity` builds expectations.
fn dec(mantissa: i128, exponent: i32, format: Format) -> Quantity {
    Quantity::normalized(mantissa, exponent, format)
}

use Format::{BinarySI as Bin, DecimalExponent as Exp, DecimalSI as Si};

#[test]
fn parses_upstream_table() {
    let table: &[(&str, Quantity)] = &[
        ("0", dec(0, 0, Si)),
        ("0n", dec(0, 0, Si)),
        ("0u", dec(0, 0, Si)),
        ("0m", dec(0, 0, Si)),
        ("0Ki", dec(0, 0, Bin)),
        ("0k", dec(0, 0, Si)),
        ("0Mi", dec(0, 0, Bin)),
        ("0M", dec(0, 0, Si)),
        ("0Gi", dec(0, 0, Bin)),
        ("0G", dec(0, 0, Si)),
        ("0Ti", dec(0, 0, Bin)),
        ("0T", dec(0, 0, Si)),
        ("1", dec(1, 0, Si)),
        ("1Ki", dec(1024, 0, Bin)),
        ("8Ki", dec(8 * 1024, 0, Bin)),
        ("7Mi", dec(7 << 20, 0, Bin)),
        ("6Gi", dec(6 << 30, 0, Bin)),
        ("5Ti", dec(5 << 40, 0, Bin)),
        ("4Pi", dec(4 << 50, 0, Bin)),
        ("3Ei", dec(3 << 60, 0, Bin)),
        ("10Ti", dec(10 << 40, 0, Bin)),
        ("100Ti", dec(100 << 40, 0, Bin)),
        ("5n", dec(5, -9, Si)),
        ("4u", dec(4, -6, Si)),
        ("3m", dec(3, -3, Si)),
        ("9", dec(9, 0, Si)),
        ("8k", dec(8, 3, Si)),
        ("50k", dec(5, 4, Si)),
        ("7M", dec(7, 6, Si)),
        ("6G", dec(6, 9, Si)),
        ("5T", dec(5, 12, Si)),
        ("40T", dec(4, 13, Si)),
        ("300T", dec(3, 14, Si)),
        ("2P", dec(2, 15, Si)),
        ("1E", dec(1, 18, Si)),
        ("1E-3", dec(1, -3, Exp)),
        ("1e3", dec(1, 3, Exp)),
        ("1E6", dec(1, 6, Exp)),
        ("1e9", dec(1, 9, Exp)),
        ("1E12", dec(1, 12, Exp)),
        ("1e15", dec(1, 15, Exp)),
        ("1E18", dec(1, 18, Exp)),
        ("1e14", dec(1, 14, Exp)),
        ("1e13", dec(1, 13, Exp)),
        ("100.035k", dec(100035, 0, Si)),
        ("0.001", dec(1, -3, Si)),
        ("0.0005k", dec(5, -1, Si)),
        ("0.005", dec(5, -3, Si)),
        ("0.05", dec(5, -2, Si)),
        ("0.5", dec(5, -1, Si)),
        ("0.00050k", dec(5, -1, Si)),
        ("0.00500", dec(5, -3, Si)),
        ("0.05000", dec(5, -2, Si)),
        ("0.50000", dec(5, -1, Si)),
        ("0.5e0", dec(5, -1, Exp)),
        ("0.5e-1", dec(5, -2, Exp)),
        ("0.5e-2", dec(5, -3, Exp)),
        ("10.035M", dec(10035, 3, Si)),
        ("1.2e3", dec(12, 2, Exp)),
        ("1.3E+6", dec(13, 5, Exp)),
        ("1.40e9", dec(14, 8, Exp)),
        ("1.53E12", dec(153, 10, Exp)),
        ("1.6e15", dec(16, 14, Exp)),
        ("1.7E18", dec(17, 17, Exp)),
        ("9.01", dec(901, -2, Si)),
        ("8.1k", dec(81, 2, Si)),
        ("7.123456M", dec(7123456, 0, Si)),
        ("6.987654321G", dec(6987654321, 0, Si)),
        ("5.444T", dec(5444, 9, Si)),
        ("40.1T", dec(401, 11, Si)),
        ("300.2T", dec(3002, 11, Si)),
        ("2.5P", dec(25, 14, Si)),
        ("1.01E", dec(101, 16, Si)),
        // Finer than a nano rounds up; binary amounts are capped at 2^63-1.
        ("3.001n", dec(4, -9, Si)),
        ("1.1E-9", dec(2, -9, Exp)),
        ("0.0000000001", dec(1, -9, Si)),
        ("0.0000000005", dec(1, -9, Si)),
        ("0.00000000050", dec(1, -9, Si)),
        ("0.5e-9", dec(1, -9, Exp)),
        ("0.9n", dec(1, -9, Si)),
        ("0.00000012345", dec(124, -9, Si)),
        ("0.00000012354", dec(124, -9, Si)),
        ("9Ei", dec(i64::MAX.into(), 0, Bin)),
        ("9223372036854775807Ki", dec(i64::MAX.into(), 0, Bin)),
        ("12E", dec(12, 18, Si)),
        ("100.035Ki", dec(10243584, -2, Bin)),
        ("0.5Mi", dec(512 * 1024, 0, Bin)),
        ("0.05Gi", dec(536870912, -1, Bin)),
        ("0.025Ti", dec(274877906944, -1, Bin)),
        // Below one, a binary amount becomes decimal.
        ("0.000000000001Ki", dec(2, -9, Si)),
        (".001", dec(1, -3, Si)),
        (".0001k", dec(100, -3, Si)),
        ("1.", dec(1, 0, Si)),
        ("1.G", dec(1, 9, Si)),
    ];
    for (text, want) in table {
        for (prefix, sign) in [("", 1), ("+", 1), ("-", -1)] {
            let input = format!("{prefix}{text}");
            let got = q(&input);
            let want = dec(want.mantissa * sign, want.exponent, want.format);
            assert_eq!(got, want, "{input}: got {got}, want {want}");
            assert_eq!(got.format(), want.format(), "{input}");
        }
    }
}

#[test]
fn upstream_scanner_oddities_are_zero() {
    // Upstream's scanner reads an absent number as 0; rkube accepts what it accepts.
    for text in [".", "-.", "+", "-", "Gi", "m", "e3"] {
        assert!(q(text).is_zero(), "{text}");
    }
}

#[test]
fn rejects_upstream_invalid_table() {
    let table = [
        ("", QuantityError::Format),
        ("1.1.M", QuantityError::Format),
        ("1+1.0M", QuantityError::Format),
        ("0.1mi", QuantityError::Suffix),
        ("0.1am", QuantityError::Format),
        ("aoeu", QuantityError::Format),
        (".5i", QuantityError::Suffix),
        ("1i", QuantityError::Suffix),
        ("-3.01i", QuantityError::Suffix),
        ("-3.01e-", QuantityError::Suffix),
        (" 1", QuantityError::Format),
        ("1 ", QuantityError::Format),
        ("lots", QuantityError::Format),
        ("1GiB", QuantityError::Format),
        ("1e", QuantityError::Suffix),
        ("1ki", QuantityError::Suffix),
    ];
    for (text, want) in table {
        assert_eq!(Quantity::parse(text), Err(want), "{text:?}");
    }
    assert_eq!(
        QuantityError::Format.to_string(),
        "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
    );
}

#[test]
fn canonical_strings_follow_upstream() {
    // (value, canonical, another spelling that canonicalises to it)
    let table: &[(Quantity, &str, &str)] = &[
        (dec(1 << 30, 0, Bin), "1Gi", "1024Mi"),
        (dec(300 << 20, 0, Bin), "300Mi", "307200Ki"),
        (dec(6 * 1024, 0, Bin), "6Ki", ""),
        (dec(1001 << 30, 0, Bin), "1001Gi", "1025024Mi"),
        (dec(1 << 40, 0, Bin), "1Ti", "1024Gi"),
        (dec(5, 0, Bin), "5", "5000m"),
        (dec(500, -3, Bin), "500m", "0.5"),
        (dec(1, 9, Si), "1G", "1000M"),
        (dec(1000, 6, Si), "1G", "0.001T"),
        (dec(1000000, 3, Si), "1G", ""),
        (dec(1000000000, 0, Si), "1G", ""),
        (dec(1, -3, Si), "1m", "1000u"),
        (dec(80, -3, Si), "80m", ""),
        (dec(1080, -3, Si), "1080m", "1.08"),
        (dec(108, -2, Si), "1080m", "1080000000n"),
        (dec(10800, -4, Si), "1080m", ""),
        (dec(300, 6, Si), "300M", ""),
        (dec(1, 12, Si), "1T", ""),
        (dec(1, 18, Si), "1E", ""),
        (dec(1, 21, Si), "1e21", "1000E"),
        (dec(5, 21, Si), "5e21", "5000E"),
        (dec(1, 24, Si), "1e24", "1000000E"),
        (dec(1234567, 6, Si), "1234567M", ""),
        (dec(1234567, -3, Bin), "1234567m", ""),
        (dec(3, 3, Si), "3k", ""),
        (dec(1025, 0, Bin), "1025", ""),
        (dec(0, 0, Si), "0", ""),
        (dec(0, 0, Bin), "0", ""),
        (dec(1, 9, Exp), "1e9", ".001e12"),
        (dec(1, -3, Exp), "1e-3", "0.001e0"),
        (dec(1, -9, Exp), "1e-9", "1000e-12"),
        (dec(80, -3, Exp), "80e-3", ""),
        (dec(300, 6, Exp), "300e6", ""),
        (dec(1, 12, Exp), "1e12", ""),
        (dec(1, 3, Exp), "1e3", ""),
        (dec(3, 3, Exp), "3e3", ""),
        (dec(0, 0, Exp), "0", "00"),
        (dec(1, -9, Si), "1n", ""),
        (dec(80, -9, Si), "80n", ""),
        (dec(1080, -9, Si), "1080n", ""),
        (dec(108, -8, Si), "1080n", ""),
        (dec(10800, -10, Si), "1080n", ""),
        (dec(1, -6, Si), "1u", ""),
        (dec(80, -6, Si), "80u", ""),
        (dec(1080, -6, Si), "1080u", ""),
    ];
    for (value, canonical, alternate) in table {
        assert_eq!(value.to_string(), *canonical, "{value:?}");
        assert_eq!(q(canonical).to_string(), *canonical, "round trip");
        if !alternate.is_empty() {
            assert_eq!(q(alternate).to_string(), *canonical, "{alternate}");
        }
        if !value.is_zero() {
            let negated = dec(-value.mantissa, value.exponent, value.format);
            assert_eq!(negated.to_string(), format!("-{canonical}"));
        }
    }
}

#[test]
fn parse_then_emit_follows_upstream() {
    for (text, emitted) in [
        ("1Ki", "1Ki"),
        ("1Mi", "1Mi"),
        ("1Gi", "1Gi"),
        ("1024Mi", "1Gi"),
        ("1000M", "1G"),
        (".001Ki", "1024m"),
        (".000001Ki", "1024u"),
        (".000000001Ki", "1024n"),
        (".000000000001Ki", "2n"),
        ("1.5", "1500m"),
        ("1.5Gi", "1536Mi"),
    ] {
        assert_eq!(q(text).to_string(), emitted, "{text}");
        assert_eq!(q(&format!("-{text}")).to_string(), format!("-{emitted}"));
    }
}

#[test]
fn compares_by_value() {
    assert_eq!(q("0").cmp(&q("0")), Ordering::Equal);
    assert_eq!(q("100m").cmp(&q("50m")), Ordering::Greater);
    assert_eq!(q("50m").cmp(&q("100m")), Ordering::Less);
    assert_eq!(q("10000T").cmp(&q("100Gi")), Ordering::Greater);
    assert_eq!(q("1000m"), q("1"));
    assert_eq!(q("1Gi"), q("1073741824"));
    assert_eq!(q("1e3"), q("1k"));
    assert!(q("129e6") > q("123Mi"));
    assert!(q("1Mi") > q("1M"));
    assert!(q("-2") < q("-1"));
    assert!(q("-1") < q("0"));
    assert!(q("1e400") > q("9Ei"));
    assert!(q("-1e400") < q("-1n"));
    assert!(!q("-0").is_negative());
    let mut sorted = [q("1"), q("999m"), q("1n"), q("-1"), q("1Ki")];
    sorted.sort();
    let printed: Vec<String> = sorted.iter().map(Quantity::to_string).collect();
    assert_eq!(printed, ["-1", "1n", "999m", "1", "1Ki"]);
}

#[test]
fn milli_value_and_value_round_up() {
    // Upstream's TestScaledValue: 1 at one scale read at another.
    let scales = [-9, -6, -3, 0];
    for from in scales {
        for to in scales {
            let one = dec(1, from, Si);
            let want = if from >= to {
                10i64.pow((from - to) as u32)
            } else {
                1
            };
            assert_eq!(one.scaled_value(to), want, "1e{from} at 1e{to}");
        }
    }
    assert_eq!(dec(1, 2, Si).scaled_value(-2), 100 * 100);
    for (text, milli, value) in [
        ("100m", 100, 1),
        ("1", 1000, 1),
        ("0.5", 500, 1),
        (".5", 500, 1),
        ("2.25", 2250, 3),
        ("1e3", 1_000_000, 1000),
        ("1E-3", 1, 1),
        ("+3", 3000, 3),
        ("0", 0, 0),
        ("100n", 1, 1),
        ("1m", 1, 1),
        ("1Gi", 1_073_741_824_000, 1 << 30),
        ("1.5Gi", 1610612736000, 3 << 29),
        ("129e6", 129_000_000_000, 129_000_000),
        ("1E", i64::MAX, 1_000_000_000_000_000_000),
        ("1Ei", i64::MAX, 1 << 60),
        ("100Ei", i64::MAX, i64::MAX),
        ("1e400", i64::MAX, i64::MAX),
        ("-1", -1000, -1),
        ("-1500m", -1500, -1),
    ] {
        assert_eq!(q(text).milli_value(), milli, "{text} milli");
        assert_eq!(q(text).value(), value, "{text} value");
    }
}

#[test]
fn adds_exactly() {
    let sum = |a: &str, b: &str| q(a).checked_add(&q(b)).map(|s| s.to_string());
    assert_eq!(sum("10", "1e1").as_deref(), Some("20"));
    assert_eq!(sum("10", "1Ki").as_deref(), Some("1034"));
    assert_eq!(sum("1Ki", "1Ki").as_deref(), Some("2Ki"));
    assert_eq!(
        sum("0", "50Mi").as_deref(),
        Some("50Mi"),
        "zero takes the other format"
    );
    assert_eq!(sum("500m", "500m").as_deref(), Some("1"));
    assert_eq!(sum("1n", "1"), Some("1000000001n".to_string()));
    assert_eq!(sum("1e400", "1n"), None);
}

#[test]
fn serde_reads_strings_and_numbers_and_writes_canonical_strings() {
    let read = |json: &str| serde_json::from_str::<Quantity>(json).map(|q| q.to_string());
    assert_eq!(read(r#"" 1""#).unwrap(), "1");
    assert_eq!(read(r#""1 ""#).unwrap(), "1");
    assert_eq!(read("1").unwrap(), "1");
    assert_eq!(read(" -1").unwrap(), "-1");
    assert_eq!(read("10").unwrap(), "10");
    assert_eq!(read("0.5").unwrap(), "500m");
    assert_eq!(
        read("18446744073709551615").unwrap(),
        "18446744073709551615"
    );
    assert!(read(r#""lots""#).is_err());
    assert!(read("true").is_err());
    assert_eq!(serde_json::to_string(&q("1.5Gi")).unwrap(), r#""1536Mi""#);
    assert_eq!(
        from_json(&serde_json::json!(2)).map(|q| q.milli_value()),
        Ok(2000)
    );
    let k8s = k8s_openapi::apimachinery::pkg::api::resource::Quantity("250m".into());
    assert_eq!(Quantity::try_from(&k8s), Ok(q("0.25")));
}

#[test]
fn too_many_digits_is_a_typed_error() {
    let digits = "1".repeat(40);
    assert_eq!(Quantity::parse(&digits), Err(QuantityError::Precision));
    // Trailing zeros are not significant.
    let big = format!("1{}", "0".repeat(60));
    assert_eq!(q(&big), q("1e60"));
}
