//! kxen's CMOS clock ↔ Xen's RTC save record (`struct hvm_hw_rtc`).
//!
//! Both sides keep the same three things: the clock's registers 0x0..0xd
//! (`cmos_data`), the index register (`cmos_index`, 7 bits: port 0x70's
//! bit 7 is the NMI mask and is never stored) and the guest clock's offset
//! from the host's in seconds (`rtc_offset`; Xen's domain time offset,
//! kxen's [`CmosClockState::offset_secs`]). Xen's RTC owns only those 14
//! registers; the NVRAM above them (memory sizes, century) belongs to the
//! device model on Xen and is not in the record: kxen rebuilds the
//! memory-size bytes from the domain's configuration and the century from
//! the clock.
//!
//! On load, as Xen's `rtc_load` does, a record of the older 16-byte
//! layout (no `rtc_offset`) is taken zero-extended. A record of any other
//! length, an index beyond 7 bits, nonzero padding or an offset that puts
//! the clock outside the years a CMOS can show (0..=9999) is refused.
use kxen_devices::cmos::{CmosClockState, CLOCK_REGISTERS};
use thiserror::Error;
use xen_abi::hvm_save::{HwRtc, RTC_CMOS_SIZE};
use zerocopy::FromBytes;

/// The length of the RTC record before Xen added `rtc_offset`.
pub const RTC_RECORD_LEN_WITHOUT_OFFSET: usize = 16;
/// The largest clock offset accepted, in seconds: 10 000 years either way
/// covers every date the century and year registers can hold.
pub const MAX_RTC_OFFSET_SECS: i64 = 10_000 * 366 * 86_400;

const _: () = assert!(RTC_CMOS_SIZE == CLOCK_REGISTERS);

/// An RTC record refused on load.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RtcLoadError {
    #[error("RTC record is {0} bytes, not 16 or 24")]
    Length(usize),
    #[error("RTC cmos_index {0:#x} is wider than 7 bits")]
    Index(u8),
    #[error("RTC record padding is {0:#x}, not 0")]
    Padding(u8),
    #[error("RTC offset {0} s is beyond ±{MAX_RTC_OFFSET_SECS} s")]
    Offset(i64),
}

/// The CMOS clock as the RTC record.
pub fn save_rtc(clock: &CmosClockState) -> HwRtc {
    HwRtc {
        cmos_data: clock.registers,
        cmos_index: clock.index & 0x7f,
        pad0: 0,
        rtc_offset: clock.offset_secs,
    }
}

/// The RTC record as the CMOS clock.
pub fn load_rtc(record: &HwRtc) -> Result<CmosClockState, RtcLoadError> {
    if record.cmos_index > 0x7f {
        return Err(RtcLoadError::Index(record.cmos_index));
    }
    if record.pad0 != 0 {
        return Err(RtcLoadError::Padding(record.pad0));
    }
    if !(-MAX_RTC_OFFSET_SECS..=MAX_RTC_OFFSET_SECS).contains(&record.rtc_offset) {
        return Err(RtcLoadError::Offset(record.rtc_offset));
    }
    Ok(CmosClockState {
        registers: record.cmos_data,
        index: record.cmos_index,
        offset_secs: record.rtc_offset,
    })
}

/// An RTC entry's bytes, of either layout Xen has written, as the CMOS
/// clock.
pub fn load_rtc_entry(data: &[u8]) -> Result<CmosClockState, RtcLoadError> {
    let mut full = [0u8; core::mem::size_of::<HwRtc>()];
    if data.len() != full.len() && data.len() != RTC_RECORD_LEN_WITHOUT_OFFSET {
        return Err(RtcLoadError::Length(data.len()));
    }
    full[..data.len()].copy_from_slice(data);
    let record = HwRtc::read_from_bytes(&full).map_err(|_| RtcLoadError::Length(data.len()))?;
    load_rtc(&record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::IntoBytes;

    fn clock() -> CmosClockState {
        CmosClockState {
            registers: [
                0x56, 0, 0x34, 0, 0x12, 0, 3, 0x15, 0x06, 0x30, 0x26, 0x02, 0, 0x80,
            ],
            index: 0x0b,
            offset_secs: -86_400,
        }
    }

    #[test]
    fn clock_survives_the_record_and_its_bytes() {
        let record = save_rtc(&clock());
        assert_eq!(record.cmos_data, clock().registers);
        assert_eq!(record.cmos_index, 0x0b);
        assert_eq!(record.rtc_offset, -86_400);
        assert_eq!(load_rtc(&record), Ok(clock()));
        assert_eq!(load_rtc_entry(record.as_bytes()), Ok(clock()));
    }

    #[test]
    fn the_older_layout_is_zero_extended() {
        let record = save_rtc(&clock());
        let loaded = load_rtc_entry(&record.as_bytes()[..RTC_RECORD_LEN_WITHOUT_OFFSET]);
        assert_eq!(
            loaded,
            Ok(CmosClockState {
                offset_secs: 0,
                ..clock()
            })
        );
    }

    #[test]
    fn hostile_records_are_refused() {
        let good = save_rtc(&clock());
        for length in [0, 8, 15, 17, 23, 25, 4096] {
            let bytes = vec![0u8; length];
            assert_eq!(load_rtc_entry(&bytes), Err(RtcLoadError::Length(length)));
        }
        let record = HwRtc {
            cmos_index: 0x80,
            ..good
        };
        assert_eq!(load_rtc(&record), Err(RtcLoadError::Index(0x80)));
        let record = HwRtc { pad0: 1, ..good };
        assert_eq!(load_rtc(&record), Err(RtcLoadError::Padding(1)));
        for offset in [
            i64::MIN,
            -MAX_RTC_OFFSET_SECS - 1,
            MAX_RTC_OFFSET_SECS + 1,
            i64::MAX,
        ] {
            let record = HwRtc {
                rtc_offset: offset,
                ..good
            };
            assert_eq!(load_rtc(&record), Err(RtcLoadError::Offset(offset)));
        }
        for offset in [-MAX_RTC_OFFSET_SECS, MAX_RTC_OFFSET_SECS] {
            let record = HwRtc {
                rtc_offset: offset,
                ..good
            };
            assert!(load_rtc(&record).is_ok());
        }
    }
}
