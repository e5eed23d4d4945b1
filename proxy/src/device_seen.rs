//! When and where each device was last seen by this gateway (since it
//! started): the console's device list shows it. Updated as each access
//! record with a device is written; a sharded lock keeps the data path
//! from waiting on one mutex.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;

use crate::record::AccessRecord;

const SHARDS: usize = 16;
/// Devices remembered at most (per shard); certificates bound the real count.
const MAX_PER_SHARD: usize = 20_000;

/// The last record of a device: its time (RFC 3339) and site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub time: String,
    pub site: Option<String>,
}

pub struct DevicesSeen {
    shards: [Mutex<HashMap<String, Seen>>; SHARDS],
    hasher: std::collections::hash_map::RandomState,
}

impl Default for DevicesSeen {
    fn default() -> Self {
        DevicesSeen {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            hasher: Default::default(),
        }
    }
}

impl DevicesSeen {
    fn shard(&self, device: &str) -> &Mutex<HashMap<String, Seen>> {
        &self.shards[self.hasher.hash_one(device) as usize % SHARDS]
    }

    pub fn observe(&self, record: &AccessRecord) {
        let Some(device) = record.device.as_deref() else {
            return;
        };
        let seen = Seen {
            time: record.time.clone(),
            site: record.site.clone(),
        };
        let mut map = self.shard(device).lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = map.get_mut(device) {
            *s = seen;
        } else if map.len() < MAX_PER_SHARD {
            map.insert(device.to_string(), seen);
        }
    }

    pub fn get(&self, device: &str) -> Option<Seen> {
        self.shard(device)
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(device)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_record_wins() {
        let seen = DevicesSeen::default();
        let mut r = AccessRecord {
            time: "2026-04-01T08:00:00Z".into(),
            device: Some("PC-1".into()),
            site: Some("豊科南小学校".into()),
            ..Default::default()
        };
        seen.observe(&r);
        r.time = "2026-04-01T09:00:00Z".into();
        r.site = Some("offsite".into());
        seen.observe(&r);
        assert_eq!(
            seen.get("PC-1"),
            Some(Seen {
                time: "2026-04-01T09:00:00Z".into(),
                site: Some("offsite".into())
            })
        );
        assert_eq!(seen.get("PC-2"), None);
    }
}
