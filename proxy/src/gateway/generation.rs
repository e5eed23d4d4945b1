//! One generation of the hot-reloadable state: the decision state (policy,
//! categories, registry), the IPS rules and threat-intel lists, and the
//! sites. A reload builds a whole new [`Generation`] and swaps it in with
//! one store, so a request (which loads the generation once, at its start)
//! never sees half of a reload.

use std::sync::Arc;

use crate::beacon::SiteDirectory;
use crate::config::Config;
use crate::ips::Security;
use crate::stages::decide::Runtime;

pub struct Generation {
    /// The decision state; its `generation` number is the generation's.
    pub runtime: Arc<Runtime>,
    /// IPS rules and threat-intel lists.
    pub security: Arc<Security>,
    /// Sites (site assertions, PAC files), from the policy.
    pub sites: Arc<SiteDirectory>,
}

impl Generation {
    /// The policy generation number (1 at start, +1 per successful reload).
    pub fn number(&self) -> u64 {
        self.runtime.generation
    }

    /// The first generation: every part must load.
    pub fn first(config: &Config) -> Result<Generation, String> {
        let runtime = Runtime::build(config, 1).map_err(|e| {
            format!("the policy is not valid; komugate will not start with it:\n{e}")
        })?;
        let security = Security::from_config(config).map_err(|e| format!("{e:#}"))?;
        Ok(Generation::assemble(Arc::new(runtime), Arc::new(security)))
    }

    /// Puts a runtime and a security state together; the sites come from
    /// the runtime's policy.
    pub fn assemble(runtime: Arc<Runtime>, security: Arc<Security>) -> Generation {
        let sites = Arc::new(SiteDirectory::from_policy(&runtime.policy));
        Generation {
            runtime,
            security,
            sites,
        }
    }
}
