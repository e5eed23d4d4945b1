//! `[[egress]]`: source-address pools for upstream connections.

use std::collections::HashMap;
use std::net::IpAddr;

use toml_edit::TableLike;

use super::cx::{host_list, Cx};
use crate::EgressPool;

/// The pools and their names → index.
pub(super) fn section(
    cx: &mut Cx<'_>,
    root: &dyn TableLike,
) -> (Vec<EgressPool>, HashMap<String, usize>) {
    let mut egress: Vec<EgressPool> = Vec::new();
    let mut egress_index = HashMap::new();
    for (t, tsp) in cx.tables(root, "egress", "egress") {
        let Some((name, nsp)) = cx.req_str(t, "name", "[[egress]]", &tsp) else {
            continue;
        };
        let what = format!("egress pool `{name}`");
        cx.keys(t, &what, &["name", "source", "hosts", "description"]);
        let source = match cx.req_str(t, "source", &what, &tsp) {
            Some((s, sp)) => match s.parse::<IpAddr>() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    cx.err(&sp, format!("invalid IP address `{s}` in {what}"));
                    None
                }
            },
            None => None,
        };
        let (hosts, patterns) = host_list(cx, t, &what);
        if egress_index.contains_key(&name) {
            cx.err(&nsp, format!("duplicate egress pool `{name}`"));
            continue;
        }
        if let Some(source) = source {
            egress_index.insert(name.clone(), egress.len());
            egress.push(EgressPool {
                name,
                source,
                hosts,
                patterns,
            });
        }
    }
    (egress, egress_index)
}
