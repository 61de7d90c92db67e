//! The 64-bit little-endian x86_64 ELF view the PV builder needs: the
//! program headers, and the note sections for images whose notes are not
//! in a PT_NOTE segment. The `object` crate reads the headers and checks
//! every table and segment against the image; the counts are capped here,
//! so a hostile image cannot make us walk an enormous table.

use std::ops::Range;

use object::elf::{
    FileHeader64, ProgramHeader64, ELFCLASS64, ELFDATA2LSB, EM_X86_64, PT_LOAD, PT_NOTE, SHT_NOTE,
};
use object::read::elf::{FileHeader as _, ProgramHeader as _, SectionHeader as _};
use object::LittleEndian;

const EHDR_SIZE: usize = 64;
/// More program headers than any kernel has; a bound on hostile tables.
const MAX_PHDRS: usize = 128;
/// More sections than any kernel has (vmlinux has about a hundred).
const MAX_SHDRS: usize = 16384;

type FileHeader = FileHeader64<LittleEndian>;
type ProgramHeader = ProgramHeader64<LittleEndian>;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ElfError {
    #[error("not an ELF image")]
    NotElf,
    #[error("not a 64-bit little-endian x86_64 ELF image")]
    WrongKind,
    #[error("ELF header is truncated")]
    Truncated,
    #[error("ELF program header table is bad: {0}")]
    BadProgramHeaders(&'static str),
    #[error("ELF section header table is bad: {0}")]
    BadSectionHeaders(&'static str),
    #[error("ELF segment {index} lies outside the image (offset {offset:#x}, size {size:#x})")]
    SegmentOutsideImage {
        index: usize,
        offset: u64,
        size: u64,
    },
    #[error("ELF segment {index} has a file size above its memory size")]
    FileSizeAboveMemSize { index: usize },
}

/// One PT_LOAD segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadSegment {
    pub vaddr: u64,
    pub paddr: u64,
    /// Where the segment's bytes start in the ELF image.
    pub offset: u64,
    pub filesz: u64,
    pub memsz: u64,
}

impl LoadSegment {
    /// The segment's file bytes, as a range of the image (checked at parse).
    pub fn file_range(&self) -> Range<usize> {
        self.offset as usize..(self.offset + self.filesz) as usize
    }
}

/// A parsed 64-bit ELF image, borrowing its bytes.
#[derive(Debug)]
pub struct Elf64<'a> {
    bytes: &'a [u8],
    header: &'a FileHeader,
    phdrs: &'a [ProgramHeader],
    /// The ELF header's entry point (the PV entry comes from the ENTRY note).
    pub entry: u64,
}

pub(crate) fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(off..off.checked_add(2)?)?.try_into().ok()?,
    ))
}

pub(crate) fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(off..off.checked_add(4)?)?.try_into().ok()?,
    ))
}

pub(crate) fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(off..off.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// `bytes[offset..offset + size]`, or `None` when any of it lies outside.
pub(crate) fn slice_at(bytes: &[u8], offset: u64, size: u64) -> Option<&[u8]> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(usize::try_from(size).ok()?)?;
    bytes.get(start..end)
}

impl<'a> Elf64<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Elf64<'a>, ElfError> {
        if bytes.get(..4) != Some(b"\x7fELF".as_slice()) {
            return Err(ElfError::NotElf);
        }
        if bytes.len() < EHDR_SIZE {
            return Err(ElfError::Truncated);
        }
        // `object` checks magic, class and ELF version; we also want
        // little-endian x86_64, which its 64-bit header type leaves open.
        let header = FileHeader::parse(bytes).map_err(|_| ElfError::WrongKind)?;
        let endian = LittleEndian;
        let ident = header.e_ident();
        if ident.class != ELFCLASS64
            || ident.data != ELFDATA2LSB
            || header.e_machine(endian) != EM_X86_64
        {
            return Err(ElfError::WrongKind);
        }
        // The raw count is capped before `object` walks the table; the cap
        // is below PN_XNUM, so extended counts are refused here too.
        if usize::from(header.e_phnum(endian)) > MAX_PHDRS {
            return Err(ElfError::BadProgramHeaders("too many program headers"));
        }
        let phdrs = header.program_headers(endian, bytes).map_err(|_| {
            ElfError::BadProgramHeaders("table lies outside the image or has a bad entry size")
        })?;
        for (index, ph) in phdrs.iter().enumerate() {
            let kind = ph.p_type(endian);
            if kind != PT_LOAD && kind != PT_NOTE {
                continue;
            }
            if ph.data(endian, bytes).is_err() {
                return Err(ElfError::SegmentOutsideImage {
                    index,
                    offset: ph.p_offset(endian),
                    size: ph.p_filesz(endian),
                });
            }
            if kind == PT_LOAD && ph.p_filesz(endian) > ph.p_memsz(endian) {
                return Err(ElfError::FileSizeAboveMemSize { index });
            }
        }
        Ok(Elf64 {
            bytes,
            header,
            phdrs,
            entry: header.e_entry(endian),
        })
    }

    /// The PT_LOAD segments that occupy memory, in table order.
    pub fn load_segments(&self) -> Vec<LoadSegment> {
        let endian = LittleEndian;
        self.phdrs
            .iter()
            .filter(|ph| ph.p_type(endian) == PT_LOAD && ph.p_memsz(endian) > 0)
            .map(|ph| LoadSegment {
                vaddr: ph.p_vaddr(endian),
                paddr: ph.p_paddr(endian),
                offset: ph.p_offset(endian),
                filesz: ph.p_filesz(endian),
                memsz: ph.p_memsz(endian),
            })
            .collect()
    }

    /// The contents of every PT_NOTE segment (bounds checked at parse).
    pub fn note_segments(&self) -> impl Iterator<Item = &'a [u8]> + '_ {
        let endian = LittleEndian;
        self.phdrs
            .iter()
            .filter(move |ph| ph.p_type(endian) == PT_NOTE)
            .filter_map(move |ph| ph.data(endian, self.bytes).ok())
    }

    /// The contents of every SHT_NOTE section.
    pub fn note_sections(&self) -> Result<Vec<&'a [u8]>, ElfError> {
        let endian = LittleEndian;
        // A zero count means no sections to us: the extended count it
        // could announce would be far above the cap anyway.
        let count = usize::from(self.header.e_shnum(endian));
        if count == 0 {
            return Ok(Vec::new());
        }
        if count > MAX_SHDRS {
            return Err(ElfError::BadSectionHeaders("too many section headers"));
        }
        let sections = self
            .header
            .section_headers(endian, self.bytes)
            .map_err(|_| {
                ElfError::BadSectionHeaders("table lies outside the image or has a bad entry size")
            })?;
        sections
            .iter()
            .filter(|sh| sh.sh_type(endian) == SHT_NOTE)
            .map(|sh| {
                sh.data(endian, self.bytes)
                    .map_err(|_| ElfError::BadSectionHeaders("note section lies outside the image"))
            })
            .collect()
    }
}

/// Builders of small ELF images for the module's and its siblings' tests.
#[cfg(test)]
pub(crate) mod test_image {
    /// One ELF note: sizes, type, name and descriptor, each padded to 4.
    pub fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
        let mut n = Vec::new();
        n.extend((name.len() as u32).to_le_bytes());
        n.extend((desc.len() as u32).to_le_bytes());
        n.extend(kind.to_le_bytes());
        n.extend(name);
        n.resize(n.len().next_multiple_of(4), 0);
        n.extend(desc);
        n.resize(n.len().next_multiple_of(4), 0);
        n
    }

    /// A segment for [`elf`]: vaddr, paddr, contents and memory size.
    pub struct Seg {
        pub vaddr: u64,
        pub paddr: u64,
        pub data: Vec<u8>,
        pub memsz: u64,
    }

    /// A 64-bit x86_64 ELF image with `segs` as PT_LOAD segments and
    /// `notes` as one PT_NOTE segment (or, with `notes_in_section`, as one
    /// SHT_NOTE section and no PT_NOTE).
    pub fn elf(segs: &[Seg], notes: &[u8], notes_in_section: bool) -> Vec<u8> {
        let phnum = segs.len() + usize::from(!notes_in_section);
        let phoff = 64usize;
        let mut data_off = (phoff + 56 * phnum).next_multiple_of(16);
        let mut body = Vec::new();
        let mut phdrs = Vec::new();
        let mut place = |bytes: &[u8], body: &mut Vec<u8>| {
            let at = data_off;
            body.extend_from_slice(bytes);
            data_off += bytes.len();
            at
        };
        for s in segs {
            let at = place(&s.data, &mut body);
            phdrs.push((
                1u32,
                at as u64,
                s.vaddr,
                s.paddr,
                s.data.len() as u64,
                s.memsz,
            ));
        }
        let notes_at = place(notes, &mut body);
        if !notes_in_section {
            phdrs.push((
                4,
                notes_at as u64,
                0,
                0,
                notes.len() as u64,
                notes.len() as u64,
            ));
        }
        let shoff = data_off.next_multiple_of(8);
        let mut out = vec![0u8; 64];
        out[..4].copy_from_slice(b"\x7fELF");
        out[4] = 2;
        out[5] = 1;
        out[6] = 1;
        out[16..18].copy_from_slice(&2u16.to_le_bytes());
        out[18..20].copy_from_slice(&62u16.to_le_bytes());
        out[32..40].copy_from_slice(&(phoff as u64).to_le_bytes());
        out[52..54].copy_from_slice(&64u16.to_le_bytes());
        out[54..56].copy_from_slice(&56u16.to_le_bytes());
        out[56..58].copy_from_slice(&(phnum as u16).to_le_bytes());
        out[58..60].copy_from_slice(&64u16.to_le_bytes());
        if notes_in_section {
            out[40..48].copy_from_slice(&(shoff as u64).to_le_bytes());
            out[60..62].copy_from_slice(&2u16.to_le_bytes());
        }
        for (kind, off, vaddr, paddr, filesz, memsz) in phdrs {
            out.extend(kind.to_le_bytes());
            out.extend(7u32.to_le_bytes());
            out.extend(off.to_le_bytes());
            out.extend(vaddr.to_le_bytes());
            out.extend(paddr.to_le_bytes());
            out.extend(filesz.to_le_bytes());
            out.extend(memsz.to_le_bytes());
            out.extend(0x1000u64.to_le_bytes());
        }
        out.resize((phoff + 56 * phnum).next_multiple_of(16), 0);
        out.extend(body);
        if notes_in_section {
            out.resize(shoff, 0);
            out.extend([0u8; 64]); // the null section
            let mut sh = vec![0u8; 64];
            sh[4..8].copy_from_slice(&7u32.to_le_bytes());
            sh[24..32].copy_from_slice(&(notes_at as u64).to_le_bytes());
            sh[32..40].copy_from_slice(&(notes.len() as u64).to_le_bytes());
            out.extend(sh);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::test_image::{elf, Seg};
    use super::*;

    #[test]
    fn reads_segments_and_notes() {
        let image = elf(
            &[Seg {
                vaddr: 0xffff_ffff_8000_0000,
                paddr: 0,
                data: vec![0x90; 100],
                memsz: 0x2000,
            }],
            b"notes!!!",
            false,
        );
        let parsed = Elf64::parse(&image).unwrap();
        let segs = parsed.load_segments();
        assert_eq!(segs.len(), 1);
        assert_eq!(segs[0].vaddr, 0xffff_ffff_8000_0000);
        assert_eq!(segs[0].memsz, 0x2000);
        assert_eq!(&image[segs[0].file_range()], &[0x90; 100][..]);
        assert_eq!(
            parsed.note_segments().collect::<Vec<_>>(),
            vec![b"notes!!!"]
        );
        assert!(parsed.note_sections().unwrap().is_empty());

        let in_section = elf(&[], b"sectnote", true);
        let parsed = Elf64::parse(&in_section).unwrap();
        assert_eq!(parsed.note_segments().count(), 0);
        assert_eq!(parsed.note_sections().unwrap(), vec![b"sectnote"]);
    }

    #[test]
    fn refuses_bad_images() {
        assert_eq!(Elf64::parse(b"MZ").unwrap_err(), ElfError::NotElf);
        assert_eq!(
            Elf64::parse(b"\x7fELF\x02\x01").unwrap_err(),
            ElfError::Truncated
        );
        let good = elf(
            &[Seg {
                vaddr: 0x1000,
                paddr: 0x1000,
                data: vec![1; 16],
                memsz: 16,
            }],
            &[],
            false,
        );
        let mut class32 = good.clone();
        class32[4] = 1;
        assert_eq!(Elf64::parse(&class32).unwrap_err(), ElfError::WrongKind);
        // A segment whose file range runs off the end of the image.
        let mut outside = good.clone();
        outside[64 + 32..64 + 40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            Elf64::parse(&outside),
            Err(ElfError::SegmentOutsideImage { index: 0, .. })
        ));
        // filesz > memsz.
        let mut fat = good.clone();
        fat[64 + 40..64 + 48].copy_from_slice(&1u64.to_le_bytes());
        assert_eq!(
            Elf64::parse(&fat).unwrap_err(),
            ElfError::FileSizeAboveMemSize { index: 0 }
        );
        // A program header table past the end, and one with absurd count.
        let mut far = good.clone();
        far[32..40].copy_from_slice(&(u64::MAX - 8).to_le_bytes());
        assert!(matches!(
            Elf64::parse(&far),
            Err(ElfError::BadProgramHeaders(_))
        ));
        let mut many = good.clone();
        many[56..58].copy_from_slice(&0xffffu16.to_le_bytes());
        assert!(matches!(
            Elf64::parse(&many),
            Err(ElfError::BadProgramHeaders(_))
        ));
    }

    #[test]
    fn image_at_an_odd_offset_parses() {
        // The reader must not need the buffer aligned: a payload can start
        // anywhere inside a bzImage.
        let image = elf(
            &[Seg {
                vaddr: 0x1000,
                paddr: 0x1000,
                data: vec![7; 24],
                memsz: 24,
            }],
            b"odd!",
            true,
        );
        let mut shifted = vec![0u8; 3];
        shifted.extend_from_slice(&image);
        let parsed = Elf64::parse(&shifted[3..]).unwrap();
        assert_eq!(parsed.load_segments()[0].memsz, 24);
        assert_eq!(parsed.note_sections().unwrap(), vec![b"odd!"]);
    }

    #[test]
    fn refuses_bad_entry_sizes_and_section_tables() {
        let good = elf(
            &[Seg {
                vaddr: 0x1000,
                paddr: 0x1000,
                data: vec![1; 8],
                memsz: 8,
            }],
            b"sectnote",
            true,
        );
        // Program header entries of another size than Elf64_Phdr.
        let mut wide = good.clone();
        wide[54..56].copy_from_slice(&64u16.to_le_bytes());
        assert!(matches!(
            Elf64::parse(&wide),
            Err(ElfError::BadProgramHeaders(_))
        ));
        // An ELF version other than 1.
        let mut version = good.clone();
        version[6] = 2;
        assert_eq!(Elf64::parse(&version).unwrap_err(), ElfError::WrongKind);
        // Another machine.
        let mut arm = good.clone();
        arm[18..20].copy_from_slice(&183u16.to_le_bytes());
        assert_eq!(Elf64::parse(&arm).unwrap_err(), ElfError::WrongKind);
        // A section table past the end, then one with too many entries.
        let mut far = good.clone();
        far[40..48].copy_from_slice(&(u64::MAX - 64).to_le_bytes());
        let parsed = Elf64::parse(&far).unwrap();
        assert!(matches!(
            parsed.note_sections(),
            Err(ElfError::BadSectionHeaders(_))
        ));
        let mut many = good.clone();
        many[60..62].copy_from_slice(&0xfff0u16.to_le_bytes());
        let parsed = Elf64::parse(&many).unwrap();
        assert_eq!(
            parsed.note_sections().unwrap_err(),
            ElfError::BadSectionHeaders("too many section headers")
        );
        // A note section whose body runs off the end of the image.
        let mut body_outside = good.clone();
        let shdr = body_outside.len() - 64;
        body_outside[shdr + 32..shdr + 40].copy_from_slice(&0x10_0000u64.to_le_bytes());
        let parsed = Elf64::parse(&body_outside).unwrap();
        assert_eq!(
            parsed.note_sections().unwrap_err(),
            ElfError::BadSectionHeaders("note section lies outside the image")
        );
    }
}
