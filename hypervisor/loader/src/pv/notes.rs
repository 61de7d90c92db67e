//! The Xen ELF notes of a PV kernel.
//!
//! Notes are read from the PT_NOTE segments; an image whose segments carry
//! no Xen note is searched again through its SHT_NOTE sections. The legacy
//! `__xen_guest` string section (pre-2006 kernels) is not read.

use xen_abi::pv as abi;

use super::elf::{u32_at, u64_at, Elf64, ElfError};

/// Longest string note kept; real ones are a few dozen bytes.
const MAX_STRING_NOTE: usize = 1024;
/// Unknown feature names kept for the error message; the rest are counted.
const MAX_UNKNOWN_FEATURES: usize = 16;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum NotesError {
    #[error(transparent)]
    Elf(#[from] ElfError),
    #[error("ELF note at offset {offset:#x} of a note area runs past its end")]
    Truncated { offset: usize },
    #[error("Xen note {kind} holds a {len}-byte value; numbers are 4 or 8 bytes")]
    BadNumber { kind: u32, len: usize },
    #[error("Xen FEATURES note requires \"{0}\", a feature this builder does not know")]
    UnknownRequiredFeature(String),
}

/// What the kernel's FEATURES note says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Features {
    /// XENFEAT_* bits the kernel can use (named without '!').
    pub supported: u32,
    /// XENFEAT_* bits the kernel cannot run without (named with '!').
    pub required: u32,
    /// Names this builder does not know, that the kernel does not require.
    pub unknown: Vec<String>,
}

/// Which Xen boot protocols a kernel's notes offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotesKind {
    /// Classic PV notes (ENTRY, VIRT_BASE or GUEST_OS); there may be a PVH
    /// entry too.
    Pv,
    /// Only the PVH entry (PHYS32_ENTRY): boot it as `type = "pvh"`.
    PvhOnly,
    /// No Xen notes at all.
    None,
}

/// The Xen notes of one kernel image. Absent notes are `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PvNotes {
    pub guest_os: Option<String>,
    pub guest_version: Option<String>,
    pub xen_version: Option<String>,
    pub loader: Option<String>,
    pub pae_mode: Option<String>,
    pub virt_base: Option<u64>,
    pub paddr_offset: Option<u64>,
    pub entry: Option<u64>,
    pub hypercall_page: Option<u64>,
    /// Virtual address the kernel wants its initial P2M list mapped at.
    pub init_p2m: Option<u64>,
    /// The kernel accepts `start_info.mod_start` as a PFN.
    pub mod_start_pfn: bool,
    /// The FEATURES string, parsed.
    pub features: Features,
    /// The SUPPORTED_FEATURES bitmap.
    pub supported_features: Option<u32>,
    /// The PVH entry point, when the kernel also (or only) boots as PVH.
    pub phys32_entry: Option<u64>,
}

impl PvNotes {
    pub fn kind(&self) -> NotesKind {
        if self.entry.is_some() || self.virt_base.is_some() || self.guest_os.is_some() {
            NotesKind::Pv
        } else if self.phys32_entry.is_some() {
            NotesKind::PvhOnly
        } else {
            NotesKind::None
        }
    }

    /// Every XENFEAT_* bit the kernel declares it can use: the FEATURES
    /// names, required or not, and the SUPPORTED_FEATURES bitmap.
    pub fn declared_features(&self) -> u32 {
        self.features.supported | self.features.required | self.supported_features.unwrap_or(0)
    }

    /// Required features outside `offered` (the XENFEAT_* bits the PV
    /// machine provides); zero when the kernel can run.
    pub fn missing_required(&self, offered: u32) -> u32 {
        self.features.required & !offered
    }

    /// The pseudo-physical address of a segment whose ELF `p_paddr` is
    /// `paddr`: `paddr - PADDR_OFFSET` (0 when the note is absent).
    pub fn pseudo_physical(&self, paddr: u64) -> Option<u64> {
        paddr.checked_sub(self.paddr_offset.unwrap_or(0))
    }
}

/// Parse the Xen notes of `elf`.
pub fn parse(elf: &Elf64<'_>) -> Result<PvNotes, NotesError> {
    let mut notes = PvNotes::default();
    let mut found = false;
    for area in elf.note_segments() {
        found |= parse_area(area, &mut notes)?;
    }
    if !found {
        for area in elf.note_sections()? {
            parse_area(area, &mut notes)?;
        }
    }
    Ok(notes)
}

/// Parse the Xen notes of a raw ELF image (the fuzz targets' entry).
pub fn parse_image(image: &[u8]) -> Result<PvNotes, NotesError> {
    parse(&Elf64::parse(image)?)
}

/// Parse one note area (a PT_NOTE segment or SHT_NOTE section) into
/// `notes`. True when the area held at least one Xen note.
pub fn parse_area(area: &[u8], notes: &mut PvNotes) -> Result<bool, NotesError> {
    let mut found = false;
    let mut offset = 0usize;
    while offset < area.len() {
        let truncated = NotesError::Truncated { offset };
        let header = area.get(offset..).filter(|rest| rest.len() >= 12);
        let Some(header) = header else {
            // Trailing padding shorter than a header ends the area.
            if area[offset..].iter().all(|&b| b == 0) {
                break;
            }
            return Err(truncated);
        };
        let namesz = u32_at(header, 0).unwrap_or(0) as usize;
        let descsz = u32_at(header, 4).unwrap_or(0) as usize;
        let kind = u32_at(header, 8).unwrap_or(0);
        let name_start = offset + 12;
        let desc_start = namesz
            .checked_next_multiple_of(4)
            .and_then(|padded| name_start.checked_add(padded))
            .ok_or(truncated.clone())?;
        let desc_end = desc_start.checked_add(descsz).ok_or(truncated.clone())?;
        let name = name_start
            .checked_add(namesz)
            .and_then(|name_end| area.get(name_start..name_end));
        let desc = area.get(desc_start..desc_end);
        let (Some(name), Some(desc)) = (name, desc) else {
            return Err(truncated);
        };
        let name = name.strip_suffix(b"\0").unwrap_or(name);
        if name == abi::XEN_ELFNOTE_NAME {
            found = true;
            apply_note(kind, desc, notes)?;
        }
        offset = match descsz
            .checked_next_multiple_of(4)
            .and_then(|padded| desc_start.checked_add(padded))
        {
            Some(next) => next,
            None => break,
        };
    }
    Ok(found)
}

fn number(kind: u32, desc: &[u8]) -> Result<u64, NotesError> {
    match desc.len() {
        4 => Ok(u64::from(u32_at(desc, 0).unwrap_or(0))),
        8 => Ok(u64_at(desc, 0).unwrap_or(0)),
        len => Err(NotesError::BadNumber { kind, len }),
    }
}

/// A string note: up to its first NUL, at most [`MAX_STRING_NOTE`] bytes,
/// invalid UTF-8 replaced.
fn string(desc: &[u8]) -> String {
    let end = desc.iter().position(|&b| b == 0).unwrap_or(desc.len());
    String::from_utf8_lossy(&desc[..end.min(MAX_STRING_NOTE)]).into_owned()
}

fn apply_note(kind: u32, desc: &[u8], notes: &mut PvNotes) -> Result<(), NotesError> {
    match kind {
        abi::XEN_ELFNOTE_GUEST_OS => notes.guest_os = Some(string(desc)),
        abi::XEN_ELFNOTE_GUEST_VERSION => notes.guest_version = Some(string(desc)),
        abi::XEN_ELFNOTE_XEN_VERSION => notes.xen_version = Some(string(desc)),
        abi::XEN_ELFNOTE_LOADER => notes.loader = Some(string(desc)),
        abi::XEN_ELFNOTE_PAE_MODE => notes.pae_mode = Some(string(desc)),
        abi::XEN_ELFNOTE_VIRT_BASE => notes.virt_base = Some(number(kind, desc)?),
        abi::XEN_ELFNOTE_PADDR_OFFSET => notes.paddr_offset = Some(number(kind, desc)?),
        abi::XEN_ELFNOTE_ENTRY => notes.entry = Some(number(kind, desc)?),
        abi::XEN_ELFNOTE_HYPERCALL_PAGE => notes.hypercall_page = Some(number(kind, desc)?),
        abi::XEN_ELFNOTE_INIT_P2M => notes.init_p2m = Some(number(kind, desc)?),
        abi::XEN_ELFNOTE_MOD_START_PFN => notes.mod_start_pfn = number(kind, desc)? != 0,
        abi::XEN_ELFNOTE_PHYS32_ENTRY => notes.phys32_entry = Some(number(kind, desc)?),
        abi::XEN_ELFNOTE_SUPPORTED_FEATURES => {
            // A 32-bit bitmap of submap 0; an 8-byte value keeps its low half.
            notes.supported_features = Some(number(kind, desc)? as u32);
        }
        abi::XEN_ELFNOTE_FEATURES => notes.features = parse_features(&string(desc))?,
        _ => tracing::trace!(kind, len = desc.len(), "Xen ELF note ignored"),
    }
    Ok(())
}

/// Parse a FEATURES string: names separated by '|', a leading '!' marking
/// a feature the kernel requires.
pub fn parse_features(list: &str) -> Result<Features, NotesError> {
    let mut features = Features::default();
    for item in list.split('|').map(str::trim).filter(|s| !s.is_empty()) {
        let (required, name) = match item.strip_prefix('!') {
            Some(name) => (true, name),
            None => (false, item),
        };
        match abi::feature_bit(name) {
            Some(bit) if required => features.required |= 1 << bit,
            Some(bit) => features.supported |= 1 << bit,
            None if required => {
                let shown: String = name.chars().take(64).collect();
                return Err(NotesError::UnknownRequiredFeature(shown));
            }
            None => {
                tracing::debug!(feature = name, "unknown optional Xen feature ignored");
                if features.unknown.len() < MAX_UNKNOWN_FEATURES {
                    features.unknown.push(name.chars().take(64).collect());
                }
            }
        }
    }
    Ok(features)
}

#[cfg(test)]
mod tests {
    use super::super::elf::test_image::{elf, note, Seg};
    use super::*;

    /// The notes a Linux 6.1 x86_64 PV kernel carries, in its order.
    pub(crate) fn linux_like_notes() -> Vec<u8> {
        let mut n = Vec::new();
        n.extend(note(b"Xen\0", 6, b"linux\0"));
        n.extend(note(b"Xen\0", 7, b"2.6\0"));
        n.extend(note(b"Xen\0", 5, b"xen-3.0\0"));
        n.extend(note(b"Xen\0", 3, &0xffff_ffff_8000_0000u64.to_le_bytes()));
        n.extend(note(b"Xen\0", 15, &0x80_0000_0000u64.to_le_bytes()));
        n.extend(note(b"Xen\0", 1, &0xffff_ffff_8100_1000u64.to_le_bytes()));
        n.extend(note(
            b"Xen\0",
            10,
            b"!writable_page_tables|pae_pgdir_above_4gb",
        ));
        n.extend(note(b"Xen\0", 17, &0x8801u32.to_le_bytes()));
        n.extend(note(b"Xen\0", 9, b"yes\0"));
        n.extend(note(b"Xen\0", 8, b"generic\0"));
        n.extend(note(b"Xen\0", 16, &1u32.to_le_bytes()));
        n.extend(note(b"GNU\0", 3, &[0xab; 20]));
        n.extend(note(b"Xen\0", 18, &0x100_0000u32.to_le_bytes()));
        n
    }

    #[test]
    fn linux_notes_parse() {
        let image = elf(&[], &linux_like_notes(), false);
        let notes = parse_image(&image).unwrap();
        assert_eq!(notes.kind(), NotesKind::Pv);
        assert_eq!(notes.guest_os.as_deref(), Some("linux"));
        assert_eq!(notes.guest_version.as_deref(), Some("2.6"));
        assert_eq!(notes.xen_version.as_deref(), Some("xen-3.0"));
        assert_eq!(notes.loader.as_deref(), Some("generic"));
        assert_eq!(notes.pae_mode.as_deref(), Some("yes"));
        assert_eq!(notes.virt_base, Some(0xffff_ffff_8000_0000));
        assert_eq!(notes.entry, Some(0xffff_ffff_8100_1000));
        assert_eq!(notes.init_p2m, Some(0x80_0000_0000));
        assert_eq!(notes.hypercall_page, None);
        assert_eq!(notes.paddr_offset, None);
        assert!(notes.mod_start_pfn);
        assert_eq!(notes.phys32_entry, Some(0x100_0000));
        assert_eq!(notes.supported_features, Some(0x8801));
        assert_eq!(notes.features.required, 1 << 0);
        assert_eq!(notes.features.supported, 1 << 4);
        assert_eq!(notes.declared_features(), 0x8811);
        assert_eq!(notes.missing_required(0), 1);
        assert_eq!(notes.missing_required(1), 0);
        assert_eq!(notes.pseudo_physical(0x100_0000), Some(0x100_0000));
    }

    #[test]
    fn notes_in_sections_are_found() {
        let image = elf(&[], &linux_like_notes(), true);
        assert_eq!(
            parse_image(&image).unwrap().guest_os.as_deref(),
            Some("linux")
        );
    }

    #[test]
    fn pvh_only_and_no_notes_are_told_apart() {
        let pvh = elf(&[], &note(b"Xen\0", 18, &0x10_0000u32.to_le_bytes()), false);
        assert_eq!(parse_image(&pvh).unwrap().kind(), NotesKind::PvhOnly);
        let none = elf(
            &[Seg {
                vaddr: 0,
                paddr: 0,
                data: vec![0; 8],
                memsz: 8,
            }],
            &note(b"GNU\0", 3, &[1; 20]),
            false,
        );
        assert_eq!(parse_image(&none).unwrap().kind(), NotesKind::None);
    }

    #[test]
    fn hostile_notes_are_errors() {
        // A descriptor size that runs past the area.
        let mut area = note(b"Xen\0", 1, &[0; 8]);
        area[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            parse_area(&area, &mut PvNotes::default()),
            Err(NotesError::Truncated { offset: 0 })
        ));
        // A name size that runs past the area.
        let mut area = note(b"Xen\0", 1, &[0; 8]);
        area[0..4].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
        assert!(parse_area(&area, &mut PvNotes::default()).is_err());
        // A 3-byte number.
        let area = note(b"Xen\0", 1, &[1, 2, 3]);
        assert_eq!(
            parse_area(&area, &mut PvNotes::default()),
            Err(NotesError::BadNumber { kind: 1, len: 3 })
        );
        // A header cut short, with non-zero bytes.
        let area = [1u8, 0, 0, 0, 4];
        assert!(parse_area(&area, &mut PvNotes::default()).is_err());
        // Zero padding after the last note is fine.
        let mut area = note(b"Xen\0", 6, b"linux\0");
        area.extend([0; 8]);
        let mut notes = PvNotes::default();
        assert_eq!(parse_area(&area, &mut notes), Ok(true));
    }

    #[test]
    fn features_string() {
        let f = parse_features("writable_descriptor_tables|!auto_translated_physmap|frob").unwrap();
        assert_eq!(f.supported, 1 << 1);
        assert_eq!(f.required, 1 << 2);
        assert_eq!(f.unknown, vec!["frob".to_string()]);
        assert_eq!(
            parse_features("!frob"),
            Err(NotesError::UnknownRequiredFeature("frob".into()))
        );
        assert_eq!(parse_features("").unwrap(), Features::default());
    }
}
