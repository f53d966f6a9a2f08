//! Inline SVG charts for the HTML report: plain `<svg>` elements with text labels, no
//! scripts or external resources. Every label is escaped.

use std::fmt::Write as _;

use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;

use super::render::{effect_colour, esc};
use crate::decision::Effect;

const WIDTH_PX: u32 = 900;
const EFFECTS: [Effect; 4] = [
    Effect::Allow,
    Effect::RequireHitl,
    Effect::RequireMsig,
    Effect::Deny,
];
/// Most days drawn as bars; a longer period keeps the last ones (the JSON has them all).
pub const MAX_DAY_BARS: usize = 120;

fn empty(title: &str) -> String {
    format!(
        "<svg role=\"img\" aria-label=\"{t}\" width=\"{WIDTH_PX}\" height=\"60\" viewBox=\"0 0 {WIDTH_PX} 60\">\
<text x=\"0\" y=\"18\" font-size=\"14\" font-weight=\"600\">{t}</text><text x=\"0\" y=\"45\" font-size=\"12\" fill=\"#777\">no data in period</text></svg>",
        t = esc(title)
    )
}

fn legend(s: &mut String, y: u32) {
    for (i, e) in EFFECTS.iter().enumerate() {
        let x = 60 + i as u32 * 150;
        let _ = write!(
            s,
            "<rect x=\"{x}\" y=\"{y}\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{}\" y=\"{}\" font-size=\"12\">{}</text>",
            effect_colour(*e),
            x + 16,
            y + 11,
            e.as_str()
        );
    }
}

/// Stacked bars: one per day, segments ALLOW / HITL / MSIG / DENY.
pub fn stacked_days(title: &str, days: &[(String, [u64; 4])]) -> String {
    if days.is_empty() {
        return empty(title);
    }
    let days = &days[days.len().saturating_sub(MAX_DAY_BARS)..];
    let (left, top, plot_h) = (60u32, 30u32, 220u32);
    let height = top + plot_h + 70;
    let max = days
        .iter()
        .map(|(_, c)| c.iter().sum::<u64>())
        .max()
        .unwrap_or(1)
        .max(1);
    let slot = (WIDTH_PX - left - 10) as f64 / days.len() as f64;
    let bar_w = (slot * 0.7).max(1.0);
    let mut s = format!(
        "<svg role=\"img\" aria-label=\"{t}\" width=\"{WIDTH_PX}\" height=\"{height}\" viewBox=\"0 0 {WIDTH_PX} {height}\">\
<text x=\"0\" y=\"18\" font-size=\"14\" font-weight=\"600\">{t}</text>",
        t = esc(title)
    );
    let base = top + plot_h;
    let _ = write!(
        s,
        "<line x1=\"{left}\" y1=\"{base}\" x2=\"{WIDTH_PX}\" y2=\"{base}\" stroke=\"#555\"/>"
    );
    let _ = write!(
        s,
        "<text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">{max}</text>",
        left - 6,
        top + 10
    );
    let _ = write!(
        s,
        "<text x=\"{}\" y=\"{base}\" font-size=\"11\" text-anchor=\"end\">0</text>",
        left - 6
    );
    let label_every = (days.len() / 15).max(1);
    for (i, (label, counts)) in days.iter().enumerate() {
        let x = left as f64 + i as f64 * slot + (slot - bar_w) / 2.0;
        let mut y = base as f64;
        for (e, n) in EFFECTS.iter().zip(counts) {
            if *n == 0 {
                continue;
            }
            let h = *n as f64 / max as f64 * plot_h as f64;
            y -= h;
            let _ = write!(
                s,
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{bar_w:.1}\" height=\"{h:.1}\" fill=\"{}\"><title>{} {}: {n}</title></rect>",
                effect_colour(*e),
                esc(label),
                e.as_str()
            );
        }
        if i % label_every == 0 {
            let _ = write!(
                s,
                "<text x=\"{:.1}\" y=\"{}\" font-size=\"10\" text-anchor=\"middle\">{}</text>",
                x + bar_w / 2.0,
                base + 14,
                esc(label)
            );
        }
    }
    legend(&mut s, base + 30);
    s.push_str("</svg>");
    s
}

/// One agent's bar in the spend-vs-caps chart.
pub struct CapBar {
    pub label: String,
    pub value: Decimal,
    pub cap: Option<Decimal>,
}

/// Horizontal bars of spend with the cap drawn as a vertical marker.
pub fn spend_vs_caps(title: &str, bars: &[CapBar]) -> String {
    if bars.is_empty() {
        return empty(title);
    }
    let (left, top, row_h) = (220u32, 30u32, 34u32);
    let height = top + row_h * bars.len() as u32 + 40;
    let max = bars
        .iter()
        .map(|b| b.value.max(b.cap.unwrap_or(Decimal::ZERO)))
        .max()
        .unwrap_or(Decimal::ONE)
        .to_f64()
        .unwrap_or(1.0)
        .max(f64::MIN_POSITIVE);
    let plot_w = (WIDTH_PX - left - 90) as f64;
    let mut s = format!(
        "<svg role=\"img\" aria-label=\"{t}\" width=\"{WIDTH_PX}\" height=\"{height}\" viewBox=\"0 0 {WIDTH_PX} {height}\">\
<text x=\"0\" y=\"18\" font-size=\"14\" font-weight=\"600\">{t}</text>",
        t = esc(title)
    );
    for (i, b) in bars.iter().enumerate() {
        let y = top + i as u32 * row_h;
        let v = b.value.to_f64().unwrap_or(0.0);
        let w = v / max * plot_w;
        let over = b.cap.is_some_and(|c| b.value > c);
        let colour = if over { "#b3261e" } else { "#3b6fb6" };
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{}\" font-size=\"12\" text-anchor=\"end\">{}</text>\
<rect x=\"{left}\" y=\"{}\" width=\"{w:.1}\" height=\"20\" fill=\"{colour}\"><title>{}: {}</title></rect>\
<text x=\"{:.1}\" y=\"{}\" font-size=\"11\">{}</text>",
            left - 8,
            y + 15,
            esc(&b.label),
            y + 2,
            esc(&b.label),
            b.value.normalize(),
            left as f64 + w + 4.0,
            y + 16,
            b.value.normalize()
        );
        if let Some(cap) = b.cap {
            let cx = left as f64 + cap.to_f64().unwrap_or(0.0) / max * plot_w;
            let _ = write!(
                s,
                "<line x1=\"{cx:.1}\" y1=\"{}\" x2=\"{cx:.1}\" y2=\"{}\" stroke=\"#1d2430\" stroke-width=\"2\" stroke-dasharray=\"4 2\"><title>daily cap {}</title></line>",
                y,
                y + 24,
                cap.normalize()
            );
        }
    }
    let ly = top + row_h * bars.len() as u32 + 14;
    let _ = write!(
        s,
        "<rect x=\"{left}\" y=\"{ly}\" width=\"12\" height=\"12\" fill=\"#3b6fb6\"/><text x=\"{}\" y=\"{}\" font-size=\"12\">peak day committed</text>\
<line x1=\"{}\" y1=\"{ly}\" x2=\"{}\" y2=\"{}\" stroke=\"#1d2430\" stroke-width=\"2\" stroke-dasharray=\"4 2\"/><text x=\"{}\" y=\"{}\" font-size=\"12\">daily cap</text>",
        left + 16,
        ly + 11,
        left + 170,
        left + 170,
        ly + 12,
        left + 178,
        ly + 11
    );
    s.push_str("</svg>");
    s
}

/// Approval latency buckets, upper bounds in seconds, with labels.
pub const LATENCY_BUCKETS: [(i64, &str); 7] = [
    (60, "< 1 min"),
    (300, "1-5 min"),
    (900, "5-15 min"),
    (3_600, "15-60 min"),
    (14_400, "1-4 h"),
    (86_400, "4-24 h"),
    (i64::MAX, "> 24 h"),
];

pub fn bucket_counts(latencies_seconds: &[i64]) -> [u64; 7] {
    let mut counts = [0u64; 7];
    for l in latencies_seconds {
        let i = LATENCY_BUCKETS
            .iter()
            .position(|(upper, _)| l < upper)
            .unwrap_or(6);
        counts[i] += 1;
    }
    counts
}

/// Histogram of approval latency.
pub fn latency_histogram(title: &str, latencies_seconds: &[i64]) -> String {
    if latencies_seconds.is_empty() {
        return empty(title);
    }
    let counts = bucket_counts(latencies_seconds);
    let (left, top, plot_h) = (60u32, 30u32, 160u32);
    let height = top + plot_h + 40;
    let max = counts.iter().copied().max().unwrap_or(1).max(1);
    let slot = (WIDTH_PX - left - 10) as f64 / counts.len() as f64;
    let base = top + plot_h;
    let mut s = format!(
        "<svg role=\"img\" aria-label=\"{t}\" width=\"{WIDTH_PX}\" height=\"{height}\" viewBox=\"0 0 {WIDTH_PX} {height}\">\
<text x=\"0\" y=\"18\" font-size=\"14\" font-weight=\"600\">{t}</text>\
<line x1=\"{left}\" y1=\"{base}\" x2=\"{WIDTH_PX}\" y2=\"{base}\" stroke=\"#555\"/>",
        t = esc(title)
    );
    for (i, ((_, label), n)) in LATENCY_BUCKETS.iter().zip(counts).enumerate() {
        let x = left as f64 + i as f64 * slot + slot * 0.15;
        let w = slot * 0.7;
        let h = n as f64 / max as f64 * plot_h as f64;
        let _ = write!(
            s,
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"{h:.1}\" fill=\"#7570b3\"><title>{label}: {n}</title></rect>\
<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\">{n}</text>\
<text x=\"{:.1}\" y=\"{}\" font-size=\"11\" text-anchor=\"middle\">{label}</text>",
            base as f64 - h,
            x + w / 2.0,
            base as f64 - h - 4.0,
            x + w / 2.0,
            base + 16
        );
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_split_at_bounds() {
        assert_eq!(
            bucket_counts(&[0, 59, 60, 299, 3_600, 90_000]),
            [2, 2, 0, 0, 1, 0, 1]
        );
    }

    #[test]
    fn labels_are_escaped() {
        let svg = stacked_days("t", &[("<script>".into(), [1, 0, 0, 0])]);
        assert!(!svg.contains("<script>"));
        assert!(svg.contains("&lt;script&gt;"));
        let svg = spend_vs_caps(
            "t",
            &[CapBar {
                label: "a&b".into(),
                value: Decimal::ONE,
                cap: None,
            }],
        );
        assert!(svg.contains("a&amp;b"));
    }
}
