//! What the executor must do after a PV MMU call succeeds (or partly
//! succeeds): flush TLBs on some vCPUs, reload CR3, reload the LDT. The
//! crate never touches a CPU; it says what must happen.

/// Most vCPUs a PV domain may have here; [`VcpuMask`] is a fixed bitmap of
/// this size, so no guest-chosen vCPU count sizes an allocation.
pub const MAX_VCPUS: usize = 128;

/// Most single-page invalidations merged into one [`FlushScope::Pages`];
/// past that the flush becomes [`FlushScope::Full`].
pub const MAX_MERGED_PAGES: usize = 16;

/// A set of vCPU indices below [`MAX_VCPUS`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VcpuMask([u64; MAX_VCPUS / 64]);

impl VcpuMask {
    pub fn single(vcpu: usize) -> VcpuMask {
        let mut mask = VcpuMask::default();
        mask.insert(vcpu);
        mask
    }

    /// vCPUs `0..count` (capped at [`MAX_VCPUS`]).
    pub fn first(count: usize) -> VcpuMask {
        let mut mask = VcpuMask::default();
        for vcpu in 0..count.min(MAX_VCPUS) {
            mask.insert(vcpu);
        }
        mask
    }

    /// Add `vcpu`; out-of-range indices are ignored.
    pub fn insert(&mut self, vcpu: usize) {
        if vcpu < MAX_VCPUS {
            self.0[vcpu / 64] |= 1 << (vcpu % 64);
        }
    }

    pub fn contains(&self, vcpu: usize) -> bool {
        vcpu < MAX_VCPUS && self.0[vcpu / 64] & (1 << (vcpu % 64)) != 0
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|&word| word == 0)
    }

    pub fn union(self, other: VcpuMask) -> VcpuMask {
        let mut out = self;
        for (word, extra) in out.0.iter_mut().zip(other.0) {
            *word |= extra;
        }
        out
    }

    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        (0..MAX_VCPUS).filter(|&vcpu| self.contains(vcpu))
    }
}

/// What a TLB flush covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlushScope {
    /// Invalidate these linear addresses (at most [`MAX_MERGED_PAGES`]).
    Pages(Vec<u64>),
    /// Flush every translation.
    Full,
}

/// A TLB flush the executor must perform before the call returns to the
/// guest (Xen completes its flushes within the hypercall).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlbFlush {
    pub vcpus: VcpuMask,
    pub scope: FlushScope,
}

/// Everything a call asks of its executor. Several requests in one batch
/// merge conservatively: flushing more than asked is always correct.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Effects {
    pub flush: Option<TlbFlush>,
    /// The calling vCPU's kernel or user base pointer changed (or was
    /// reloaded): load CR3 from [`crate::VcpuMmuState`] for the mode it
    /// returns to. A CR3 load also flushes its non-global translations.
    pub base_changed: bool,
    /// The calling vCPU's LDT base or size changed: reload it.
    pub ldt_changed: bool,
    /// Write back and invalidate caches (MMUEXT_FLUSH_CACHE, only for a
    /// domain allowed to).
    pub flush_cache: bool,
    /// A segment base the calling vCPU runs on changed
    /// (`set_segment_base`): load it.
    pub segment_load: Option<crate::vcpu::SegmentLoad>,
    /// The calling vCPU's GDT frames changed (`set_gdt`): remap them.
    pub gdt_changed: bool,
}

impl Effects {
    /// Ask for a flush of `scope` on `vcpus`, merged with what is asked
    /// already.
    pub fn add_flush(&mut self, vcpus: VcpuMask, scope: FlushScope) {
        if vcpus.is_empty() {
            return;
        }
        let merged = match self.flush.take() {
            None => TlbFlush { vcpus, scope },
            Some(previous) => {
                let scope = match (previous.scope, scope) {
                    (FlushScope::Pages(mut pages), FlushScope::Pages(more)) => {
                        for va in more {
                            if !pages.contains(&va) {
                                pages.push(va);
                            }
                        }
                        if pages.len() > MAX_MERGED_PAGES {
                            FlushScope::Full
                        } else {
                            FlushScope::Pages(pages)
                        }
                    }
                    _ => FlushScope::Full,
                };
                TlbFlush {
                    vcpus: previous.vcpus.union(vcpus),
                    scope,
                }
            }
        };
        self.flush = Some(merged);
    }

    /// Fold another call's effects into these.
    pub fn merge(&mut self, other: Effects) {
        if let Some(flush) = other.flush {
            self.add_flush(flush.vcpus, flush.scope);
        }
        self.base_changed |= other.base_changed;
        self.ldt_changed |= other.ldt_changed;
        self.flush_cache |= other.flush_cache;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        let mut mask = VcpuMask::single(3);
        mask.insert(127);
        mask.insert(128); // ignored
        assert!(mask.contains(3) && mask.contains(127) && !mask.contains(128));
        assert_eq!(mask.iter().collect::<Vec<_>>(), vec![3, 127]);
        assert_eq!(VcpuMask::first(2).union(mask).iter().count(), 4);
        assert!(VcpuMask::default().is_empty());
        assert_eq!(VcpuMask::first(1000).iter().count(), MAX_VCPUS);
    }

    #[test]
    fn flushes_merge_conservatively() {
        let mut effects = Effects::default();
        effects.add_flush(VcpuMask::default(), FlushScope::Full);
        assert_eq!(effects.flush, None, "an empty mask flushes nothing");
        effects.add_flush(VcpuMask::single(0), FlushScope::Pages(vec![0x1000]));
        effects.add_flush(VcpuMask::single(1), FlushScope::Pages(vec![0x1000, 0x2000]));
        assert_eq!(
            effects.flush,
            Some(TlbFlush {
                vcpus: VcpuMask::first(2),
                scope: FlushScope::Pages(vec![0x1000, 0x2000]),
            })
        );
        for page in 0..=MAX_MERGED_PAGES as u64 {
            effects.add_flush(VcpuMask::single(0), FlushScope::Pages(vec![page << 12]));
        }
        assert_eq!(effects.flush.as_ref().unwrap().scope, FlushScope::Full);
        let mut other = Effects {
            base_changed: true,
            ..Effects::default()
        };
        other.add_flush(VcpuMask::single(5), FlushScope::Full);
        effects.merge(other);
        assert!(effects.base_changed && !effects.ldt_changed);
        assert!(effects.flush.unwrap().vcpus.contains(5));
    }
}
