//! Debian's `verify-stream-v2` (xen-utils-4.17), the independent check
//! every image kxen writes must pass.

use std::path::Path;
use std::process::Command;

const VERIFY_STREAM_V2: &str = "/usr/lib/xen-4.17/bin/verify-stream-v2";
/// Debian installs the verifier's Python modules off Python's path.
const XEN_PYTHON_PATH: &str = "/usr/lib/xen-4.17/lib/python";

/// Run the verifier on `image` in `format` ("xl": a savefile or an xl
/// migration stream with its header; "libxl": libxl's stream alone),
/// insist that it accepts it, and that its report names every one of
/// `records` (such as "Page Data records").
pub fn verify_stream_v2(image: &Path, format: &str, records: &[&str]) {
    assert!(
        Path::new(VERIFY_STREAM_V2).exists(),
        "{VERIFY_STREAM_V2} is missing: install Debian's xen-utils-4.17"
    );
    let output = Command::new(VERIFY_STREAM_V2)
        .args(["--format", format, "--verbose", "--in"])
        .arg(image)
        .env("PYTHONPATH", XEN_PYTHON_PATH)
        .output()
        .expect("running verify-stream-v2");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "verify-stream-v2 refused {} ({}):\n{stdout}\n{}",
        image.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    for record in records {
        assert!(stdout.contains(record), "no {record:?} in:\n{stdout}");
    }
}

/// The libxc stream of the xl savefile `image`, opened with kxen's own
/// reader (past xl's header and libxl's LIBXC_CONTEXT), for tests that
/// look inside an image.
pub fn libxc_records(
    image: &Path,
) -> kxen_stream::libxc::LibxcReader<std::io::BufReader<std::fs::File>> {
    use kxen_stream::libxl::{LibxlReader, LibxlRecord};
    let mut input = std::io::BufReader::new(std::fs::File::open(image).unwrap());
    kxen_toolstack::savefile::read_header(&mut input).unwrap();
    let mut libxl = LibxlReader::new(input, kxen_stream::Limits::new(1 << 20)).unwrap();
    assert!(matches!(
        libxl.next_record().unwrap(),
        LibxlRecord::LibxcContext
    ));
    libxl.into_libxc().unwrap()
}
