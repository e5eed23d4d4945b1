//! Per-device limits on UDP flows (`[udp]` in the gateway config): how many
//! flows a device holds open, and how many datagrams per second its flows
//! carry together (a token bucket shared by the device's flows).
//!
//! The map lock is taken when a flow opens or closes; a datagram touches
//! only its device's bucket.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::config::UdpConfig;

/// Devices whose state is kept while they hold no flow, before idle ones
/// (no flow, bucket full again) are pruned.
const PRUNE_AT: usize = 4096;

/// The per-device UDP state of the gateway.
pub struct UdpLimits {
    max_flows: usize,
    rate: f64,
    burst: f64,
    devices: Mutex<HashMap<String, Arc<Device>>>,
}

struct Device {
    flows: AtomicUsize,
    bucket: Mutex<Bucket>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Refills for the time since the last call, capped at `burst`.
    fn refill(&mut self, rate: f64, burst: f64, now: Instant) {
        let earned = now.saturating_duration_since(self.at).as_secs_f64() * rate;
        self.tokens = (self.tokens + earned).min(burst);
        self.at = now;
    }
}

/// One open flow of a device; the device's count drops when it is dropped.
pub struct FlowSlot {
    limits: Arc<UdpLimits>,
    device: Arc<Device>,
}

impl UdpLimits {
    pub fn new(config: &UdpConfig) -> UdpLimits {
        UdpLimits {
            max_flows: config.max_flows_per_device,
            rate: f64::from(config.datagrams_per_second),
            burst: f64::from(config.datagram_burst),
            devices: Mutex::new(HashMap::new()),
        }
    }

    /// A slot for a new flow of `device`, or `None` when the device holds
    /// `max_flows_per_device` flows already.
    pub fn open(self: &Arc<Self>, device: &str) -> Option<FlowSlot> {
        let mut devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        if devices.len() >= PRUNE_AT && !devices.contains_key(device) {
            let now = Instant::now();
            devices.retain(|_, d| !self.idle(d, now));
        }
        let entry = devices.entry(device.to_string()).or_insert_with(|| {
            Arc::new(Device {
                flows: AtomicUsize::new(0),
                bucket: Mutex::new(Bucket {
                    tokens: self.burst,
                    at: Instant::now(),
                }),
            })
        });
        // Under the map lock: opens of one device cannot race past the limit.
        if entry.flows.load(Ordering::Relaxed) >= self.max_flows {
            return None;
        }
        entry.flows.fetch_add(1, Ordering::Relaxed);
        Some(FlowSlot {
            limits: self.clone(),
            device: entry.clone(),
        })
    }

    /// Flows `device` holds open now.
    pub fn flows(&self, device: &str) -> usize {
        let devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        devices
            .get(device)
            .map_or(0, |d| d.flows.load(Ordering::Relaxed))
    }

    /// No flow, and the bucket would be full: forgetting it changes nothing.
    fn idle(&self, d: &Device, now: Instant) -> bool {
        if d.flows.load(Ordering::Relaxed) > 0 {
            return false;
        }
        let mut b = d.bucket.lock().unwrap_or_else(|e| e.into_inner());
        b.refill(self.rate, self.burst, now);
        b.tokens >= self.burst
    }
}

impl FlowSlot {
    /// Takes one datagram from the device's budget: false = over the rate,
    /// drop it.
    pub fn take_datagram(&self) -> bool {
        let mut b = self.device.bucket.lock().unwrap_or_else(|e| e.into_inner());
        b.refill(self.limits.rate, self.limits.burst, Instant::now());
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Drop for FlowSlot {
    fn drop(&mut self) {
        // Under the map lock, like `open`, so a prune never sees a half count.
        let _devices = self
            .limits
            .devices
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        self.device.flows.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits(flows: usize, rate: u32, burst: u32) -> Arc<UdpLimits> {
        Arc::new(UdpLimits::new(&UdpConfig {
            max_flows_per_device: flows,
            datagrams_per_second: rate,
            datagram_burst: burst,
            ..Default::default()
        }))
    }

    #[test]
    fn flows_per_device_are_capped_and_released() {
        let l = limits(2, 100, 100);
        let a = l.open("PC-1").unwrap();
        let _b = l.open("PC-1").unwrap();
        assert!(l.open("PC-1").is_none());
        // Another device has its own count.
        assert!(l.open("PC-2").is_some());
        drop(a);
        assert_eq!(l.flows("PC-1"), 1);
        assert!(l.open("PC-1").is_some());
    }

    #[test]
    fn datagram_rate_is_a_shared_token_bucket() {
        let l = limits(8, 1000, 5);
        let a = l.open("PC-1").unwrap();
        let b = l.open("PC-1").unwrap();
        // The burst is shared by the device's flows.
        let taken = (0..10)
            .filter(|i| {
                if i % 2 == 0 {
                    a.take_datagram()
                } else {
                    b.take_datagram()
                }
            })
            .count();
        assert_eq!(taken, 5);
        // 1000/s: a few milliseconds earn a few datagrams back.
        std::thread::sleep(Duration::from_millis(20));
        assert!(a.take_datagram());
        // Another device is not affected.
        let c = l.open("PC-2").unwrap();
        assert!((0..5).all(|_| c.take_datagram()));
    }

    #[test]
    fn idle_devices_are_pruned_busy_ones_kept() {
        let l = limits(1, 1_000_000, 1);
        let keep = l.open("busy").unwrap();
        for i in 0..PRUNE_AT {
            drop(l.open(&format!("d{i}")).unwrap());
        }
        // The open that found PRUNE_AT devices dropped the idle ones.
        let devices = l.devices.lock().unwrap();
        assert!(devices.len() <= 2, "{}", devices.len());
        assert!(devices.contains_key("busy"));
        drop(devices);
        drop(keep);
    }
}
