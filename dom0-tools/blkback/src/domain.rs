//! Reaching the frontend domain's grant table and binding its event
//! channels, through kxen-backends' ForeignDomain.

use std::sync::Arc;

use kxen_backends::evtchn::Dom0Channel;
use kxen_backends::grant::GrantTable;
use kxen_backends::xenbus::DeviceContext;

use crate::error::BlkError;
use crate::frontend::FrontendConfig;

/// The grant table (as Dom0) and one bound channel per queue.
#[allow(clippy::type_complexity)]
pub fn attach(
    ctx: &DeviceContext,
    config: &FrontendConfig,
) -> Result<(Arc<GrantTable>, Vec<(Vec<u32>, Dom0Channel)>), BlkError> {
    let _ = (ctx, config);
    // ForeignDomain does not hand out its grant table or bind channels
    // yet (kxen-backends is adding grant_table/bind_interdomain).
    Err(BlkError::EventChannel(
        "this kxend cannot bind Dom0 event channels yet".into(),
    ))
}
