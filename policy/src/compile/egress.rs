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
        cx.keys(
            t,
            &what,
            &["name", "source", "seen_as", "hosts", "description"],
        );
        // `source` binds the upstream socket (the address is on this host);
        // `seen_as` alone names the address a NAT or egress gateway gives
        // the traffic (Kubernetes, where the pod cannot hold the public IP).
        let mut address = |key: &str| match cx.str(t, key, &what) {
            Some((s, sp)) => match s.parse::<IpAddr>() {
                Ok(ip) => Ok(Some(ip)),
                Err(_) => {
                    cx.err(
                        &sp,
                        format!("invalid IP address `{s}` for `{key}` in {what}"),
                    );
                    Err(())
                }
            },
            None => Ok(None),
        };
        let (Ok(source), Ok(seen_as)) = (address("source"), address("seen_as")) else {
            continue;
        };
        if source.is_none() && seen_as.is_none() {
            cx.err(
                &tsp,
                format!("{what} needs `source` (an address on this host to bind) or `seen_as` (the address a NAT or egress gateway translates to)"),
            );
            continue;
        }
        let (hosts, patterns) = host_list(cx, t, &what);
        if egress_index.contains_key(&name) {
            cx.err(&nsp, format!("duplicate egress pool `{name}`"));
            continue;
        }
        egress_index.insert(name.clone(), egress.len());
        egress.push(EgressPool {
            name,
            source,
            seen_as,
            hosts,
            patterns,
        });
    }
    (egress, egress_index)
}
