//! xl's savefile header and the JSON domain config it carries, as
//! `kxl restore` and `kxl migrate-receive` read them from a hostile file
//! or pipe, followed by the libxl stream that comes after them.

use kxen_toolstack::savefile;

/// One fuzz input; panics on a broken invariant: a header that parses
/// took no more than the input, and the config it carried writes and
/// reads back to itself. True when the header and config parsed.
pub fn xl_savefile(data: &[u8]) -> bool {
    let mut rest = data;
    let Ok(config) = savefile::read_header(&mut rest) else {
        return false;
    };
    let taken = data.len() - rest.len();
    assert!(taken >= savefile::HEADER_LEN);
    assert!(taken - savefile::HEADER_LEN <= savefile::MAX_CONFIG as usize);
    // What follows is the stream, which kxend reads next.
    crate::migration_stream(rest);
    let mut written = Vec::new();
    if savefile::write_header(&mut written, &config).is_ok() {
        let again = savefile::read_header(&mut written.as_slice()).expect("written header reads");
        assert_eq!(again, config);
    }
    true
}
