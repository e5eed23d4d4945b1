//! This process's counters for the dashboard (read from the Prometheus
//! registry; nothing on the data path).

use prometheus::core::Collector;

/// Sum of a metric's samples whose label `label` (if given) has `value`.
pub fn sum(c: &dyn Collector, label: Option<(&str, &str)>) -> u64 {
    c.collect()
        .iter()
        .flat_map(|mf| mf.get_metric().iter())
        .filter(|m| {
            label.is_none_or(|(name, value)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == name && l.value() == value)
            })
        })
        .map(|m| m.get_counter().get_value() + m.get_gauge().get_value())
        .sum::<f64>() as u64
}
