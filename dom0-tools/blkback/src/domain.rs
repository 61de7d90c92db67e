//! Reaching the frontend domain: its grant table (as Dom0) and one bound
//! event channel per queue.

use std::sync::Arc;

use kxen_foreign::evtchn::Dom0Channel;
use kxen_foreign::grant::GrantTable;
use kxen_foreign::xenbus::DeviceContext;

use crate::error::BlkError;
use crate::frontend::FrontendConfig;

/// A ring to serve: its pages' grant refs in order, and its channel.
pub type RingSetup = (Vec<u32>, Dom0Channel);

/// The grant table and one bound channel per queue. Channels bound before
/// a failure are dropped (closed) again.
pub fn attach(
    ctx: &DeviceContext,
    config: &FrontendConfig,
) -> Result<(Arc<GrantTable>, Vec<RingSetup>), BlkError> {
    let grants = Arc::new(ctx.domain.grant_table(0));
    let mut rings = Vec::with_capacity(config.queues.len());
    for q in &config.queues {
        let channel = ctx
            .domain
            .bind_interdomain(q.event_channel)
            .map_err(|e| BlkError::EventChannel(format!("port {}: {e}", q.event_channel)))?;
        rings.push((q.ring_refs.clone(), channel));
    }
    Ok((grants, rings))
}
