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
}

impl AmountError {
    pub fn code(&self) -> &'static str {
        match self {
            AmountError::NotANumber(_) => "invalid_amount",
            AmountError::NotPositive(_) => "non_positive_amount",
            AmountError::TooPrecise { .. } => "amount_scale_exceeds_currency",
            AmountError::TooLarge(_) => "amount_too_large",
        }
    }
}

/// Parses decimal text ("250.00", "1e3", "250") exactly, without going through floats.
pub fn parse_decimal(text: &str) -> Result<Decimal, AmountError> {
    let t = text.trim();
    if t.is_empty() || t.len() > 64 {
        return Err(AmountError::NotANumber(truncate(t)));
    }
    let parsed = if t.contains(['e', 'E']) {
        Decimal::from_scientific(t)
    } else {
        Decimal::from_str(t)
    };
    parsed.map_err(|_| AmountError::NotANumber(truncate(t)))
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
}
