//! [`NetBackend`]: the xenbus "vif" device. It publishes what netback
//! offers, and on connect reads the frontend's rings and channels, creates
//! the TAP device, runs the hotplug script and starts one I/O thread per
//! queue. Nothing runs before connect, so a frontend that never finishes
//! the handshake costs nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use kxen_foreign::xenbus::{BackendDevice, BackendError, DeviceContext};
use tracing::{info, warn};
use xen_abi::io::netif::*;

use crate::error::NetError;
use crate::queue::{Channels, FrontendFeatures, NetQueue};
use crate::ring::BackRing;
use crate::script::{run_hotplug, Action};
use crate::spec::VifSpec;
use crate::stats::VifStats;
use crate::tap::Tap;
use crate::worker::Worker;

/// One queue's rings and ports as the frontend published them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueRefs {
    pub tx_ring_ref: u32,
    pub rx_ring_ref: u32,
    /// (tx, rx) ports; equal when one channel serves both rings.
    pub ports: (u32, u32),
}

/// Everything `connect` reads from the frontend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontendConfig {
    pub features: FrontendFeatures,
    pub queues: Vec<QueueRefs>,
}

/// Read and check the frontend's nodes; `read(key)` reads one relative to
/// the frontend path. `max_queues` is what the backend offered.
pub fn read_frontend(
    read: &dyn Fn(&str) -> Option<String>,
    max_queues: u32,
) -> Result<FrontendConfig, NetError> {
    let bad = |m: String| NetError::Frontend(m);
    let flag = |key: &str| read(key).is_some_and(|v| v.trim() == "1");
    let num = |key: &str| -> Result<u32, NetError> {
        let v = read(key).ok_or_else(|| bad(format!("{key} is missing")))?;
        v.trim()
            .parse::<u32>()
            .map_err(|_| bad(format!("{key} = `{v}' is not a number")))
    };
    if !flag(XS_REQUEST_RX_COPY) {
        return Err(bad(
            "request-rx-copy is not 1 (page flipping is not supported)".into(),
        ));
    }
    let features = FrontendFeatures {
        sg: flag(XS_FEATURE_SG),
        gso_tcpv4: flag(XS_FEATURE_GSO_TCPV4),
        gso_tcpv6: flag(XS_FEATURE_GSO_TCPV6),
        csum_offload: !flag(XS_FEATURE_NO_CSUM_OFFLOAD),
        ipv6_csum_offload: flag(XS_FEATURE_IPV6_CSUM_OFFLOAD),
    };
    let prefixes: Vec<String> = match read(XS_MULTI_QUEUE_NUM_QUEUES) {
        None => vec![String::new()],
        Some(_) => {
            let n = num(XS_MULTI_QUEUE_NUM_QUEUES)?;
            if n == 0 || n > max_queues {
                return Err(bad(format!("{n} queues requested, {max_queues} offered")));
            }
            (0..n).map(|i| format!("queue-{i}/")).collect()
        }
    };
    let mut queues = Vec::with_capacity(prefixes.len());
    for p in &prefixes {
        let tx_ring_ref = num(&format!("{p}{XS_TX_RING_REF}"))?;
        let rx_ring_ref = num(&format!("{p}{XS_RX_RING_REF}"))?;
        let ports = match read(&format!("{p}{XS_EVENT_CHANNEL}")) {
            Some(_) => {
                let port = num(&format!("{p}{XS_EVENT_CHANNEL}"))?;
                (port, port)
            }
            None => (
                num(&format!("{p}{XS_EVENT_CHANNEL_TX}"))?,
                num(&format!("{p}{XS_EVENT_CHANNEL_RX}"))?,
            ),
        };
        queues.push(QueueRefs {
            tx_ring_ref,
            rx_ring_ref,
            ports,
        });
    }
    Ok(FrontendConfig { features, queues })
}

/// `TUN_F_*` offloads for the packets the TAP hands us: only what this
/// frontend can take, so the kernel finishes everything else itself.
pub fn tap_offloads(f: &FrontendFeatures) -> u32 {
    if !f.csum_offload {
        return 0;
    }
    let mut flags = libc::TUN_F_CSUM;
    if f.sg && f.gso_tcpv4 {
        flags |= libc::TUN_F_TSO4;
    }
    if f.sg && f.gso_tcpv6 && f.ipv6_csum_offload {
        flags |= libc::TUN_F_TSO6;
    }
    if flags & (libc::TUN_F_TSO4 | libc::TUN_F_TSO6) != 0 {
        flags |= libc::TUN_F_TSO_ECN;
    }
    flags
}

struct Connected {
    tap: Tap,
    workers: Vec<Worker>,
    /// Backend path, for the script's offline run.
    xenbus_path: String,
}

pub struct NetBackend {
    spec: VifSpec,
    stats: Arc<VifStats>,
    connected: Option<Connected>,
    /// Quiesced by the toolstack: I/O threads started meanwhile park.
    quiesced: bool,
}

impl NetBackend {
    pub fn new(spec: VifSpec) -> Result<NetBackend, NetError> {
        spec.validate()?;
        Ok(NetBackend {
            spec,
            stats: Arc::default(),
            connected: None,
            quiesced: false,
        })
    }

    pub fn spec(&self) -> &VifSpec {
        &self.spec
    }

    /// The host interface, while connected.
    pub fn tap_name(&self) -> Option<&str> {
        self.connected.as_ref().map(|c| c.tap.name())
    }

    pub fn is_connected(&self) -> bool {
        self.connected.is_some()
    }

    /// Shared counters (they survive reconnects).
    pub fn counters(&self) -> Arc<VifStats> {
        self.stats.clone()
    }

    /// Bring up the host side for queues that are already mapped: the TAP,
    /// the hotplug script, the I/O threads. Used by `connect`, and directly
    /// by tests that build the queues from a fake guest. Queues count into
    /// the `VifStats` they were built with ([`NetBackend::counters`] for
    /// `stats()` to see them).
    pub fn start(&mut self, queues: Vec<NetQueue>, xenbus_path: &str) -> Result<(), NetError> {
        self.disconnect_inner();
        let Some(features) = queues.first().map(|q| q.features()) else {
            return Err(NetError::Frontend("no queues".into()));
        };
        let name = self.spec.vifname();
        let tap = Tap::create(&name, queues.len())?;
        tap.set_offload(tap_offloads(&features))?;
        if let Some(script) = &self.spec.script {
            run_hotplug(script, Action::Online, &self.spec, &name, xenbus_path)?;
        }
        let mut workers = Vec::with_capacity(queues.len());
        for (i, q) in queues.into_iter().enumerate() {
            let Some(tq) = tap.queue(i) else {
                break;
            };
            match Worker::spawn(format!("{name}-q{i}"), q, tq, self.quiesced) {
                Ok(w) => workers.push(w),
                Err(e) => {
                    for w in workers {
                        w.stop();
                    }
                    self.script_offline(&name, xenbus_path);
                    return Err(NetError::Thread(e));
                }
            }
        }
        info!(vif = %name, queues = workers.len(), "vif connected");
        self.connected = Some(Connected {
            tap,
            workers,
            xenbus_path: xenbus_path.to_string(),
        });
        Ok(())
    }

    /// Stop moving packets and wait, until `deadline`, for every I/O
    /// thread to finish its loop (answers pushed). On a timeout the
    /// threads run again.
    pub fn quiesce(&mut self, deadline: std::time::Instant) -> Result<(), NetError> {
        self.quiesced = true;
        let Some(c) = &self.connected else {
            return Ok(());
        };
        if let Err(e) =
            kxen_foreign::quiesce::quiesce_all(c.workers.iter().map(Worker::gate), deadline)
        {
            self.resume();
            return Err(e.into());
        }
        Ok(())
    }

    /// Move packets again, starting with what waited meanwhile.
    pub fn resume(&mut self) {
        self.quiesced = false;
        for w in self.connected.iter().flat_map(|c| &c.workers) {
            w.gate().resume();
        }
    }

    fn script_offline(&self, name: &str, xenbus_path: &str) {
        if let Some(script) = &self.spec.script {
            if let Err(e) = run_hotplug(script, Action::Offline, &self.spec, name, xenbus_path) {
                warn!("{e}");
            }
        }
    }

    fn disconnect_inner(&mut self) {
        let Some(c) = self.connected.take() else {
            return;
        };
        for w in c.workers {
            w.stop();
        }
        self.script_offline(c.tap.name(), &c.xenbus_path);
        info!(vif = c.tap.name(), "vif disconnected");
        // Dropping the TAP's last fd deletes the interface.
        drop(c.tap);
    }

    fn map_queues(&self, ctx: &DeviceContext) -> Result<Vec<NetQueue>, NetError> {
        let cfg = read_frontend(&|k| ctx.read_frontend(k), self.spec.queues)?;
        let grants = Arc::new(ctx.domain.grant_table(0));
        let mut queues = Vec::with_capacity(cfg.queues.len());
        for r in &cfg.queues {
            let tx = BackRing::new(grants.map(r.tx_ring_ref, true)?, NET_TX_RING_ENTRY_SIZE)?;
            let rx = BackRing::new(grants.map(r.rx_ring_ref, true)?, NET_RX_RING_ENTRY_SIZE)?;
            let bind = |port: u32| {
                ctx.domain
                    .bind_interdomain(port)
                    .map_err(|e| NetError::EventChannel(format!("port {port}: {e}")))
            };
            let channels = if r.ports.0 == r.ports.1 {
                Channels::Shared(bind(r.ports.0)?)
            } else {
                Channels::Split {
                    tx: bind(r.ports.0)?,
                    rx: bind(r.ports.1)?,
                }
            };
            queues.push(NetQueue::new(
                grants.clone(),
                tx,
                rx,
                channels,
                cfg.features,
                self.stats.clone(),
            ));
        }
        Ok(queues)
    }
}

impl BackendDevice for NetBackend {
    fn kind(&self) -> &'static str {
        "vif"
    }

    fn publish(&mut self, ctx: &DeviceContext) -> Result<(), BackendError> {
        let mut nodes = vec![
            (XS_FEATURE_RX_COPY, "1".to_string()),
            (XS_FEATURE_RX_FLIP, "0".to_string()),
            (XS_FEATURE_SG, "1".to_string()),
            (XS_FEATURE_GSO_TCPV4, "1".to_string()),
            (XS_FEATURE_GSO_TCPV6, "1".to_string()),
            (XS_FEATURE_IPV6_CSUM_OFFLOAD, "1".to_string()),
            (XS_FEATURE_SPLIT_EVENT_CHANNELS, "1".to_string()),
            (XS_MULTI_QUEUE_MAX_QUEUES, self.spec.queues.to_string()),
            (XS_MAC, self.spec.mac_string()),
            (XS_BRIDGE, self.spec.bridge.clone()),
            (XS_HANDLE, self.spec.devid.to_string()),
            (XS_MTU, self.spec.mtu.to_string()),
        ];
        if let Some(s) = &self.spec.script {
            nodes.push(("script", s.display().to_string()));
        }
        for (k, v) in nodes {
            ctx.write_backend(k, &v)?;
        }
        Ok(())
    }

    fn connect(&mut self, ctx: &DeviceContext) -> Result<(), BackendError> {
        let queues = self.map_queues(ctx)?;
        self.start(queues, &ctx.backend_path)?;
        Ok(())
    }

    fn disconnect(&mut self) {
        self.disconnect_inner();
    }

    fn quiesce(&mut self, deadline: std::time::Instant) -> Result<(), BackendError> {
        Ok(NetBackend::quiesce(self, deadline)?)
    }

    fn resume(&mut self) {
        NetBackend::resume(self);
    }

    fn stats(&self) -> BTreeMap<String, u64> {
        self.stats.snapshot()
    }
}

impl Drop for NetBackend {
    fn drop(&mut self) {
        self.disconnect_inner();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn reader(nodes: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = nodes
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn single_queue_frontend() {
        let r = reader(&[
            ("tx-ring-ref", "8"),
            ("rx-ring-ref", "9"),
            ("event-channel", "5"),
            ("request-rx-copy", "1"),
            ("feature-sg", "1"),
            ("feature-gso-tcpv4", "1"),
            ("feature-no-csum-offload", "0"),
        ]);
        let c = read_frontend(&r, 1).unwrap();
        assert_eq!(
            c.queues,
            vec![QueueRefs {
                tx_ring_ref: 8,
                rx_ring_ref: 9,
                ports: (5, 5)
            }]
        );
        assert!(c.features.sg && c.features.gso_tcpv4 && !c.features.gso_tcpv6);
        assert!(c.features.csum_offload && !c.features.ipv6_csum_offload);
        assert_eq!(
            tap_offloads(&c.features),
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO_ECN
        );
    }

    #[test]
    fn multi_queue_split_channels() {
        let r = reader(&[
            ("multi-queue-num-queues", "2"),
            ("queue-0/tx-ring-ref", "1"),
            ("queue-0/rx-ring-ref", "2"),
            ("queue-0/event-channel-tx", "3"),
            ("queue-0/event-channel-rx", "4"),
            ("queue-1/tx-ring-ref", "5"),
            ("queue-1/rx-ring-ref", "6"),
            ("queue-1/event-channel", "7"),
            ("request-rx-copy", "1"),
            ("feature-no-csum-offload", "1"),
        ]);
        let c = read_frontend(&r, 4).unwrap();
        assert_eq!(c.queues.len(), 2);
        assert_eq!(c.queues[0].ports, (3, 4));
        assert_eq!(c.queues[1].ports, (7, 7));
        assert_eq!(tap_offloads(&c.features), 0);
        // More queues than offered.
        assert!(matches!(read_frontend(&r, 1), Err(NetError::Frontend(_))));
    }

    #[test]
    fn bad_frontends_are_refused() {
        let base = [
            ("tx-ring-ref", "8"),
            ("rx-ring-ref", "9"),
            ("event-channel", "5"),
        ];
        // No rx-copy.
        assert!(read_frontend(&reader(&base), 1).is_err());
        let mut nodes = base.to_vec();
        nodes.push(("request-rx-copy", "1"));
        assert!(read_frontend(&reader(&nodes), 1).is_ok());
        for (key, val) in [
            ("tx-ring-ref", "x"),
            ("rx-ring-ref", "-1"),
            ("event-channel", "99999999999"),
        ] {
            let mut n = nodes.clone();
            n.retain(|(k, _)| *k != key);
            n.push((key, val));
            assert!(read_frontend(&reader(&n), 1).is_err(), "{key}={val}");
        }
        let mut n = nodes.clone();
        n.push(("multi-queue-num-queues", "0"));
        assert!(read_frontend(&reader(&n), 1).is_err());
    }
}
