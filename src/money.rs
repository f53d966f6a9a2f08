//! Money: ISO 4217 currencies with their minor-unit scale, and amount parsing.
//!
//! Amounts are `rust_decimal::Decimal` everywhere. A JSON number is never routed
//! through `f64`: callers hand us the literal text (see `intent`), so "0.1" stays 0.1.

use rust_decimal::Decimal;
use std::str::FromStr;

/// Largest amount accepted in any currency (in major units). Anything above is an
/// "absurd magnitude": no payment service legitimately asks for 10^12 of anything,
/// and bounding it keeps every sum of a window far from Decimal's 96-bit limit.
pub const MAX_AMOUNT_MAJOR: i64 = 1_000_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Currency {
    pub code: &'static str,
    /// Digits after the decimal point allowed by ISO 4217 (BRL: 2, JPY: 0, BHD: 3).
    pub minor_units: u32,
}

/// The ISO 4217 currencies we accept. Kept as a sorted table so lookup is a binary
/// search with no allocation.
static CURRENCIES: &[Currency] = &[
    c("AED", 2),
    c("ARS", 2),
    c("AUD", 2),
    c("BHD", 3),
    c("BRL", 2),
    c("CAD", 2),
    c("CHF", 2),
    c("CLP", 0),
    c("CNY", 2),
    c("COP", 2),
    c("CZK", 2),
    c("DKK", 2),
    c("EUR", 2),
    c("GBP", 2),
    c("HKD", 2),
    c("HUF", 2),
    c("IDR", 2),
    c("ILS", 2),
    c("INR", 2),
    c("ISK", 0),
    c("JOD", 3),
    c("JPY", 0),
    c("KRW", 0),
    c("KWD", 3),
    c("MXN", 2),
    c("MYR", 2),
    c("NOK", 2),
    c("NZD", 2),
    c("OMR", 3),
    c("PEN", 2),
    c("PHP", 2),
    c("PLN", 2),
    c("PYG", 0),
    c("RON", 2),
    c("SAR", 2),
    c("SEK", 2),
    c("SGD", 2),
    c("THB", 2),
    c("TND", 3),
    c("TRY", 2),
    c("TWD", 2),
    c("UAH", 2),
    c("USD", 2),
    c("UYU", 2),
    c("VND", 0),
    c("ZAR", 2),
];

const fn c(code: &'static str, minor_units: u32) -> Currency {
    Currency { code, minor_units }
}

/// Looks up an ISO 4217 code (upper case, exactly three letters).
pub fn currency(code: &str) -> Option<Currency> {
    CURRENCIES
        .binary_search_by(|probe| probe.code.cmp(code))
        .ok()
        .map(|i| CURRENCIES[i])
}

pub fn is_known_currency(code: &str) -> bool {
    currency(code).is_some()
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("amount {0:?} is not a decimal number")]
    NotANumber(String),
    #[error("amount must be positive, got {0}")]
    NotPositive(Decimal),
    #[error("amount {amount} has more decimal places than {currency} allows ({minor_units})")]
    TooPrecise {
        amount: Decimal,
        currency: &'static str,
        minor_units: u32,
    },
    #[error("amount {0} exceeds the maximum accepted magnitude of 1e12")]
    TooLarge(Decimal),
    /// More digits than `Decimal` holds exactly (28 after the point, 28 significant):
    /// refused, never rounded (SPEC §14). Such an amount has more decimals than any
    /// currency allows, hence its code.
    #[error(
        "amount {0:?} has more digits than can be held exactly (at most 28 significant digits and 28 decimals); it is refused, never rounded"
    )]
    Inexact(String),
}

impl AmountError {
    pub fn code(&self) -> &'static str {
        match self {
            AmountError::NotANumber(_) => "invalid_amount",
            AmountError::NotPositive(_) => "non_positive_amount",
            AmountError::TooPrecise { .. } | AmountError::Inexact(_) => {
                "amount_scale_exceeds_currency"
            }
            AmountError::TooLarge(_) => "amount_too_large",
        }
    }
}

/// Most digits after the point and significant digits `Decimal` holds exactly.
const MAX_EXACT_DIGITS: usize = 28;

/// Parses decimal text ("250.00", "1e3", "250") exactly, without going through floats.
/// Strict (SPEC §14): only an optional sign, digits, at most one point and an optional
/// exponent — no `_` (which `Decimal::from_str` would skip), and nothing that `Decimal`
/// would have to round.
pub fn parse_decimal(text: &str) -> Result<Decimal, AmountError> {
    let t = text.trim();
    if t.is_empty() || t.len() > 64 {
        return Err(AmountError::NotANumber(truncate(t)));
    }
    let (digits, scale) = lexical_digits(t).ok_or_else(|| AmountError::NotANumber(truncate(t)))?;
    if scale > i64::try_from(MAX_EXACT_DIGITS).unwrap_or(i64::MAX) {
        return Err(AmountError::Inexact(truncate(t)));
    }
    // Integer digits beyond Decimal's range: an absurd magnitude, not a precision issue.
    let int_digits = digits.saturating_sub(usize::try_from(scale).unwrap_or(0));
    if int_digits > MAX_EXACT_DIGITS {
        return Err(AmountError::NotANumber(truncate(t)));
    }
    if digits > MAX_EXACT_DIGITS {
        return Err(AmountError::Inexact(truncate(t)));
    }
    let parsed = if t.contains(['e', 'E']) {
        Decimal::from_scientific(t)
    } else {
        Decimal::from_str(t)
    };
    parsed.map_err(|_| AmountError::NotANumber(truncate(t)))
}

/// Digits and scale the value of a strictly formed decimal needs once trailing
/// fractional zeros are dropped (`250.00`: 3 digits, scale 0; `5e3`: 4 digits, scale 0;
/// `0.125`: 3 digits, scale 3). The form is `[+-]digits[.digits][(e|E)[+-]digits]`
/// with at least one mantissa digit; `None` for anything else.
fn lexical_digits(t: &str) -> Option<(usize, i64)> {
    let t = t.strip_prefix(['+', '-']).unwrap_or(t);
    let (mantissa, exponent) = match t.split_once(['e', 'E']) {
        Some((m, e)) => {
            let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
            if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                return None;
            }
            (m, e.parse::<i64>().ok()?)
        }
        None => (t, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !all_digits(int) || !all_digits(frac) {
        return None;
    }
    let joined = format!("{int}{frac}");
    let digits = joined.trim_start_matches('0');
    let mut scale = i64::try_from(frac.len()).ok()? - exponent;
    let mut len = i64::try_from(digits.len()).ok()?;
    if scale < 0 {
        // 5e3: the zeros the exponent adds are digits of the value.
        len -= scale;
        scale = 0;
    } else {
        let zeros = i64::try_from(digits.len() - digits.trim_end_matches('0').len()).ok()?;
        let dropped = zeros.min(scale);
        len -= dropped;
        scale -= dropped;
    }
    Some((usize::try_from(len).ok()?, scale))
}

/// Checks an amount against the rules every spend amount must satisfy in `cur`.
pub fn validate_amount(amount: Decimal, cur: Currency) -> Result<Decimal, AmountError> {
    if amount <= Decimal::ZERO {
        return Err(AmountError::NotPositive(amount));
    }
    if amount > Decimal::from(MAX_AMOUNT_MAJOR) {
        return Err(AmountError::TooLarge(amount));
    }
    let normalized = amount.normalize();
    if normalized.scale() > cur.minor_units {
        return Err(AmountError::TooPrecise {
            amount,
            currency: cur.code,
            minor_units: cur.minor_units,
        });
    }
    Ok(amount)
}

/// Formats an amount with exactly the currency's minor units ("600.00", "1500" for JPY).
pub fn format_amount(amount: Decimal, minor_units: u32) -> String {
    let mut a = amount;
    a.rescale(minor_units);
    a.to_string()
}

fn truncate(t: &str) -> String {
    t.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_for_binary_search() {
        assert!(CURRENCIES.windows(2).all(|w| w[0].code < w[1].code));
    }

    #[test]
    fn scale_is_checked_per_currency() {
        let brl = currency("BRL").unwrap();
        let jpy = currency("JPY").unwrap();
        assert!(validate_amount(parse_decimal("250.00").unwrap(), brl).is_ok());
        assert!(validate_amount(parse_decimal("250.001").unwrap(), brl).is_err());
        assert!(validate_amount(parse_decimal("250.5").unwrap(), jpy).is_err());
        assert!(validate_amount(parse_decimal("1e3").unwrap(), jpy).is_ok());
        assert!(matches!(
            validate_amount(parse_decimal("0").unwrap(), brl),
            Err(AmountError::NotPositive(_))
        ));
        assert!(matches!(
            validate_amount(parse_decimal("1000000000000.01").unwrap(), brl),
            Err(AmountError::TooLarge(_))
        ));
        assert_eq!(currency("XXX"), None);
        assert_eq!(format_amount(parse_decimal("600").unwrap(), 2), "600.00");
    }

    #[test]
    fn amounts_are_read_exactly_or_refused() {
        let brl = currency("BRL").unwrap();
        for bad in [
            "2_50.00", "_250", "250_", "1__0", " 2 50", "0x10", "1e", "e3", ".", "--1", "1.2.3",
            "1e99999",
        ] {
            assert!(
                matches!(parse_decimal(bad), Err(AmountError::NotANumber(_))),
                "{bad:?}: {:?}",
                parse_decimal(bad)
            );
        }
        // 30 decimals: Decimal would round it to 1; it is refused with its own code.
        let thirty = format!("1.{}1", "0".repeat(29));
        let err = parse_decimal(&thirty).unwrap_err();
        assert_eq!(err.code(), "amount_scale_exceeds_currency", "{err}");
        let err = parse_decimal("0.00000000000000000000000000001").unwrap_err();
        assert_eq!(err.code(), "amount_scale_exceeds_currency");
        assert_eq!(
            parse_decimal("12345678901.123456789012345678")
                .unwrap_err()
                .code(),
            "amount_scale_exceeds_currency"
        );
        // Held exactly, then judged by the currency.
        let err = validate_amount(parse_decimal("1.001").unwrap(), brl).unwrap_err();
        assert_eq!(err.code(), "amount_scale_exceeds_currency");
        for (ok, want) in [
            ("250.00", "250"),
            ("250.000000000000000000000000000000", "250"),
            ("1e3", "1000"),
            ("2.5E2", "250"),
            ("+7", "7"),
            ("0.1", "0.1"),
        ] {
            assert_eq!(
                parse_decimal(ok).map(|d| d.normalize().to_string()),
                Ok(want.to_string()),
                "{ok}"
            );
        }
    }
}

/// Most significant digits of an exchange rate (bounded input; `5.4321` has 5).
pub const MAX_FX_RATE_DIGITS: usize = 12;
/// Longest rate text accepted (leading zeros included).
pub const MAX_FX_RATE_TEXT_LEN: usize = 40;
/// Longest reason recorded with a rate (bytes).
pub const MAX_FX_REASON_LEN: usize = 1024;
/// Most digits after the point: what `Decimal` holds exactly (never rounded).
const MAX_FX_RATE_SCALE: usize = 28;

/// An exchange rate as an operator sets it (SPEC §12.3): `rate` units of `quote` per one
/// `base` (`USD/BRL 5.4321`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FxRate {
    pub base: Currency,
    pub quote: Currency,
    pub rate: Decimal,
}

impl FxRate {
    /// `USD/BRL`.
    pub fn pair(&self) -> String {
        format!("{}/{}", self.base.code, self.quote.code)
    }
}

/// Why a pair or rate was refused (the CLI and the API show the message as is).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FxRateError {
    #[error("the pair is written BASE/QUOTE in upper case, e.g. USD/BRL; got {0:?}")]
    PairShape(String),
    #[error("{0:?} is not a supported ISO 4217 currency code")]
    UnknownCurrency(String),
    #[error("a rate converts between two different currencies; got {0}/{0}")]
    SameCurrency(String),
    #[error(
        "rate {0:?} is not a plain decimal like 5.4321 (digits and at most one point; no sign, exponent, spaces or _)"
    )]
    NotADecimal(String),
    #[error("rate {0} must be positive")]
    NotPositive(String),
    #[error(
        "rate {0} has more than {MAX_FX_RATE_DIGITS} significant digits or {MAX_FX_RATE_SCALE} decimal places (refused, never rounded)"
    )]
    TooPrecise(String),
    #[error(
        "the reason must be 1..={MAX_FX_REASON_LEN} bytes of text without control characters: say why (e.g. the fixing's source), it goes into the audit trail"
    )]
    Reason,
}

/// The reason recorded with a rate: present, bounded, one line.
pub fn check_fx_reason(reason: &str) -> Result<(), FxRateError> {
    if reason.trim().is_empty()
        || reason.len() > MAX_FX_REASON_LEN
        || reason.chars().any(char::is_control)
    {
        return Err(FxRateError::Reason);
    }
    Ok(())
}

/// `USD/BRL` checked: two known, different ISO 4217 codes.
pub fn parse_fx_pair(pair: &str) -> Result<(Currency, Currency), FxRateError> {
    let shape = || FxRateError::PairShape(truncate(pair));
    let (base, quote) = pair.split_once('/').ok_or_else(shape)?;
    if pair.len() != 7 {
        return Err(shape());
    }
    let known = |c: &str| currency(c).ok_or_else(|| FxRateError::UnknownCurrency(truncate(c)));
    let (base, quote) = (known(base)?, known(quote)?);
    if base == quote {
        return Err(FxRateError::SameCurrency(base.code.to_string()));
    }
    Ok((base, quote))
}

/// A rate's text read exactly: plain decimal digits with at most one point, positive, at
/// most [`MAX_FX_RATE_DIGITS`] significant digits. Nothing is rounded: what is refused
/// is refused, what is accepted is the number written.
pub fn parse_fx_rate_text(text: &str) -> Result<Decimal, FxRateError> {
    let shown = truncate(text);
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if text.is_empty()
        || text.len() > MAX_FX_RATE_TEXT_LEN
        || (int.is_empty() && frac.is_empty())
        || !digits(int)
        || !digits(frac)
    {
        return Err(FxRateError::NotADecimal(shown));
    }
    // The digits of the value without trailing fractional zeros: its normalized
    // mantissa (integer trailing zeros count, as in `5000`).
    let frac = frac.trim_end_matches('0');
    let mantissa = format!("{int}{frac}");
    let mantissa = mantissa.trim_start_matches('0');
    if mantissa.is_empty() {
        return Err(FxRateError::NotPositive(shown));
    }
    if mantissa.len() > MAX_FX_RATE_DIGITS || frac.len() > MAX_FX_RATE_SCALE {
        return Err(FxRateError::TooPrecise(shown));
    }
    let m: i128 = mantissa
        .parse()
        .map_err(|_| FxRateError::NotADecimal(shown.clone()))?;
    let scale = u32::try_from(frac.len()).map_err(|_| FxRateError::TooPrecise(shown.clone()))?;
    Decimal::try_from_i128_with_scale(m, scale).map_err(|_| FxRateError::TooPrecise(shown))
}

/// `spendguard fx set USD/BRL 5.4321` and `POST /v1/fx-rates` both go through this.
pub fn parse_fx_rate(pair: &str, rate: &str) -> Result<FxRate, FxRateError> {
    let (base, quote) = parse_fx_pair(pair)?;
    let rate = parse_fx_rate_text(rate)?;
    Ok(FxRate { base, quote, rate })
}

/// `amount` × `rate` in the target currency, rounded half-up (away from zero at the
/// midpoint; amounts are positive) to its minor unit (SPEC §12.3).
pub fn convert(amount: Decimal, rate: Decimal, target_minor_units: u32) -> Option<Decimal> {
    let mut out = amount.checked_mul(rate)?.round_dp_with_strategy(
        target_minor_units,
        rust_decimal::RoundingStrategy::MidpointAwayFromZero,
    );
    out.rescale(target_minor_units);
    Some(out)
}

#[cfg(test)]
mod convert_tests {
    use super::*;

    #[test]
    fn conversion_rounds_half_up_to_the_target_minor_unit() {
        let d = |s: &str| s.parse::<Decimal>().unwrap();
        assert_eq!(convert(d("100.00"), d("5.4321"), 2), Some(d("543.21")));
        assert_eq!(
            convert(d("0.05"), d("0.5"), 2),
            Some(d("0.03")),
            "0.025 -> 0.03"
        );
        assert_eq!(convert(d("1"), d("150.5"), 0), Some(d("151")));
    }

    #[test]
    fn rates_are_read_exactly_or_refused() {
        let ok = parse_fx_rate("USD/BRL", "5.4321").unwrap();
        assert_eq!(
            (ok.pair(), ok.rate.to_string()),
            ("USD/BRL".into(), "5.4321".into())
        );
        for (rate, want) in [
            ("5", "5"),
            ("0.5", "0.5"),
            (".5", "0.5"),
            ("5.", "5"),
            ("5.43210", "5.4321"),
            ("5000", "5000"),
            ("123456789012", "123456789012"),
            (
                "0.000000000000000000000000001",
                "0.000000000000000000000000001",
            ),
            ("0000123.4500", "123.45"),
        ] {
            assert_eq!(
                parse_fx_rate_text(rate).map(|r| r.to_string()),
                Ok(want.into()),
                "{rate}"
            );
        }
        let err = |pair: &str, rate: &str| parse_fx_rate(pair, rate).unwrap_err();
        assert!(matches!(err("USDBRL", "1"), FxRateError::PairShape(_)));
        assert!(matches!(
            err("usd/brl", "1"),
            FxRateError::UnknownCurrency(_)
        ));
        assert!(matches!(
            err("USD/XXX", "1"),
            FxRateError::UnknownCurrency(_)
        ));
        assert!(matches!(err("USD/BRL/EUR", "1"), FxRateError::PairShape(_)));
        assert!(matches!(err(" USD/BRL", "1"), FxRateError::PairShape(_)));
        assert!(matches!(err("BRL/BRL", "1"), FxRateError::SameCurrency(_)));
        for bad in [
            "", ".", "-5", "+5", "5e2", "1_000", " 5", "5 ", "5,4", "0x10", "NaN", "5..4", "٥",
        ] {
            assert!(
                matches!(err("USD/BRL", bad), FxRateError::NotADecimal(_)),
                "{bad:?}"
            );
        }
        for zero in ["0", "0.000", "00"] {
            assert!(
                matches!(err("USD/BRL", zero), FxRateError::NotPositive(_)),
                "{zero:?}"
            );
        }
        for long in [
            "1234567890123",
            "1234567890120",
            "1.000000000001",
            "0.00000000000000000000000000001",
        ] {
            assert!(
                matches!(err("USD/BRL", long), FxRateError::TooPrecise(_)),
                "{long:?}"
            );
        }
        assert!(matches!(
            err("USD/BRL", &"1".repeat(41)),
            FxRateError::NotADecimal(_)
        ));
        assert_eq!(check_fx_reason("daily fixing (BCB PTAX)"), Ok(()));
        for bad in ["", "  ", "a\nb", "a\u{0}"] {
            assert_eq!(check_fx_reason(bad), Err(FxRateError::Reason), "{bad:?}");
        }
        assert_eq!(check_fx_reason(&"r".repeat(MAX_FX_REASON_LEN)), Ok(()));
        assert_eq!(
            check_fx_reason(&"r".repeat(MAX_FX_REASON_LEN + 1)),
            Err(FxRateError::Reason)
        );
    }
}
