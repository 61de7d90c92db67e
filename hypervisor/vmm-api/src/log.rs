//! The hypervisor log's line format, shared by kxend (its own lines) and
//! kxen-vmm (a guest's port 0xE9 lines), which append to the same file.

use std::time::SystemTime;

use time::OffsetDateTime;

/// Xen's `console_timestamps=datems` stamp, `[YYYY-MM-DD HH:MM:SS.mmm] `,
/// in UTC as Xen's wallclock keeps it.
pub fn datems_stamp(when: SystemTime) -> String {
    let t = OffsetDateTime::from(when);
    format!(
        "[{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:03}] ",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn stamps_read_as_xen_prints_them() {
        let at = |ms: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
        assert_eq!(datems_stamp(at(0)), "[1970-01-01 00:00:00.000] ");
        // A leap day, and milliseconds with leading zeros.
        assert_eq!(
            datems_stamp(at(1_709_214_307_089)),
            "[2024-02-29 13:45:07.089] "
        );
        assert_eq!(
            datems_stamp(at(1_796_566_183_668)),
            "[2026-12-06 14:09:43.668] "
        );
    }
}
