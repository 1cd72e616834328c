//! Image → snapshot and snapshot → image, each through one CPU's layout (SDM Vol. 1 §13.4;
//! DESIGN.md §4, §5, §7).

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use super::{content_len, ControlRegs, Legacy, Snapshot, SnapshotError, SourceCpu, MXCSR_INIT};
use crate::components::{bits, mask, Component};
use crate::cpuid::CpuidDump;
use crate::layout::{Form, Layout, LayoutError, EXTENDED_START};

fn rd<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
    let mut v = [0u8; N];
    if let Some(s) = b.get(off..off + N) {
        v.copy_from_slice(s);
    }
    v
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(rd(b, off))
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(rd(b, off))
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(rd(b, off))
}

/// Offset of STi's 16-byte slot in the legacy area.
fn st_offset(i: usize) -> usize {
    32 + 16 * i
}

/// Offset of XMMi in the legacy area.
fn xmm_offset(i: usize) -> usize {
    160 + 16 * i
}

impl Snapshot {
    /// Builds a snapshot from an XSAVE image laid out by the CPU `cpu` describes, with the
    /// registers captured alongside it.
    ///
    /// The form comes from XCOMP_BV bit 63 (byte 527). Components whose XSTATE_BV bit is set
    /// are kept, each as its architectural content; the others are in their init state and
    /// left out. x87 fields are read when XSTATE_BV\[0\] = 1 (init otherwise). MXCSR is read the
    /// way a restore of the image would load it (SDM Vol. 1 §13.7–13.8, DESIGN.md §5): in the
    /// standard form whenever XCR0 enables SSE or AVX, in the compacted form only with
    /// XSTATE_BV\[1\] = 1 (0x1F80 otherwise).
    ///
    /// Errors name the component: an XSTATE_BV bit outside XCR0 | IA32_XSS (or, compacted,
    /// outside XCOMP_BV), a component the layout cannot place, an image too short.
    ///
    /// ```
    /// use xstate::cpuid::{CpuidDump, Regs};
    /// use xstate::snapshot::{ControlRegs, Snapshot};
    /// let mut d = CpuidDump::new("doc");
    /// d.insert(0xd, 0, Regs { eax: 0x3, ebx: 576, ecx: 576, edx: 0 });
    /// let mut img = vec![0u8; 576];
    /// img[160] = 7; // XMM0 = 7
    /// img[512] = 0x2; // XSTATE_BV = SSE
    /// img[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
    /// let s = Snapshot::from_image(&img, &d, &ControlRegs::with_xcr0(0x3)).unwrap();
    /// assert_eq!(s.xmm(0), Some(7));
    /// assert_eq!(s.xstate_bv(), 0x2);
    /// ```
    pub fn from_image(
        image: &[u8],
        cpu: &CpuidDump,
        regs: &ControlRegs,
    ) -> Result<Snapshot, SnapshotError> {
        let source = SourceCpu::from_dump(cpu);
        let layout = Layout::from_dump(cpu);
        Self::from_image_with(image, &layout, source, regs)
    }

    /// Like [`from_image`](Self::from_image), with the layout and the source record given
    /// separately (the source record is stored; the layout places the components).
    pub fn from_image_with(
        image: &[u8],
        layout: &Layout,
        source: SourceCpu,
        regs: &ControlRegs,
    ) -> Result<Snapshot, SnapshotError> {
        if image.len() < EXTENDED_START as usize {
            return Err(SnapshotError::ImageTooSmall { len: image.len() });
        }
        let xstate_bv = u64_at(image, 512);
        let xcomp_bv = u64_at(image, 520);
        let compacted = xcomp_bv & mask::COMPACTED != 0;
        let enabled = regs.xcr0 | regs.xss;
        let bad_bv = |id: u8, why: String| SnapshotError::BadXstateBv {
            xstate_bv,
            id,
            name: Component::name_of(id),
            why,
        };
        for id in bits(xstate_bv) {
            if id == 63 {
                return Err(SnapshotError::BadXstateBv {
                    xstate_bv,
                    id,
                    name: String::from("bit 63"),
                    why: String::from("which is not a component (XRSTOR raises #GP)"),
                });
            }
            if enabled & (1u64 << id) == 0 {
                return Err(bad_bv(
                    id,
                    format!(
                        "which neither XCR0 ({:#x}) nor IA32_XSS ({:#x}) enables",
                        regs.xcr0, regs.xss
                    ),
                ));
            }
            if compacted && xcomp_bv & (1u64 << id) == 0 {
                return Err(bad_bv(
                    id,
                    format!("which XCOMP_BV ({xcomp_bv:#x}) does not place (compacted form)"),
                ));
            }
        }
        guard(layout, if compacted { xcomp_bv } else { xstate_bv }, false)?;
        let geometry = if compacted {
            layout.compacted(xcomp_bv)
        } else {
            layout.standard(xstate_bv)
        }
        .map_err(SnapshotError::SourceLayout)?;

        let mut snap = Snapshot {
            producer: String::from(concat!("xstate ", env!("CARGO_PKG_VERSION"))),
            source,
            xcr0: regs.xcr0,
            xss: regs.xss,
            xfd: regs.xfd,
            xfd_err: regs.xfd_err,
            legacy: Legacy::init(u32_at(image, 28)),
            components: Default::default(),
            msrs: regs.msrs.clone(),
        };
        // The dedicated fields win over duplicates in the MSR map.
        for idx in [
            super::MSR_IA32_XSS,
            super::MSR_IA32_XFD,
            super::MSR_IA32_XFD_ERR,
        ] {
            snap.msrs.remove(&idx);
        }

        let mxcsr_loaded = if compacted {
            xstate_bv & mask::SSE != 0
        } else {
            regs.xcr0 & (mask::SSE | mask::AVX) != 0
        };
        if mxcsr_loaded {
            snap.legacy.mxcsr = u32_at(image, 24);
        }

        for id in bits(xstate_bv) {
            let data = match id {
                0 => {
                    let l = &mut snap.legacy;
                    l.fcw = u16_at(image, 0);
                    l.fsw = u16_at(image, 2);
                    l.ftw = image[4];
                    l.fop = u16_at(image, 6);
                    l.fip = u64_at(image, 8);
                    l.fdp = u64_at(image, 16);
                    let mut v = Vec::with_capacity(80);
                    for i in 0..8 {
                        v.extend_from_slice(&image[st_offset(i)..st_offset(i) + 10]);
                    }
                    v
                }
                1 => image[xmm_offset(0)..xmm_offset(16)].to_vec(),
                _ => {
                    let Some(p) = geometry.placement(id) else {
                        return Err(bad_bv(id, String::from("which the layout does not place")));
                    };
                    let need = content_len(id, p.size);
                    if need > p.size {
                        return Err(SnapshotError::SourceTooSmall {
                            id,
                            name: Component::name_of(id),
                            size: p.size,
                            needed: need,
                        });
                    }
                    let start = p.offset as usize;
                    let end = start + need as usize;
                    match image.get(start..end) {
                        Some(b) => b.to_vec(),
                        None => {
                            return Err(SnapshotError::ImageTruncated {
                                id,
                                name: Component::name_of(id),
                                offset: p.offset,
                                end: p.end(),
                                len: image.len(),
                            })
                        }
                    }
                }
            };
            snap.components.insert(id, data);
        }
        Ok(snap)
    }

    /// Rebuilds an XSAVE image for a destination layout: `form` and `mask` (the XCR0 of a
    /// standard image, XCOMP_BV\[62:0\] of a compacted one; bit 63 is ignored) choose the
    /// geometry, every offset comes from the destination's CPUID (DESIGN.md §7).
    ///
    /// Components absent from the snapshot get XSTATE_BV = 0 and, in the standard form, their
    /// init value (DESIGN.md §5). In the compacted form an MXCSR other than 0x1F80 needs the
    /// SSE component (compacted restores load MXCSR only with it), so XSTATE_BV\[1\] is then set
    /// with XMM registers at init when the snapshot had none. The image is exactly the
    /// geometry's size; pad it with zeros for a bigger buffer (KVM_GET_XSAVE2's size).
    ///
    /// Every component present in the snapshot must be in `mask` with a destination size at
    /// least its content length; otherwise the error names it (never a silent drop).
    ///
    /// ```
    /// use xstate::cpuid::{CpuidDump, Regs};
    /// use xstate::layout::{Form, Layout};
    /// use xstate::snapshot::{Snapshot, SnapshotError};
    /// let mut d = CpuidDump::new("doc");
    /// d.insert(0xd, 0, Regs { eax: 0x7, ebx: 832, ecx: 832, edx: 0 });
    /// d.insert(0xd, 2, Regs { eax: 256, ebx: 576, ecx: 0, edx: 0 });
    /// let mut s = Snapshot::default();
    /// s.xcr0 = 0x7;
    /// s.components.insert(2, vec![1; 256]);
    /// let img = s.to_image(&Layout::from_dump(&d), Form::Standard, 0x7).unwrap();
    /// assert_eq!(img[576], 1);
    /// // A destination XCR0 without AVX cannot hold the AVX registers.
    /// let e = s.to_image(&Layout::from_dump(&d), Form::Standard, 0x3).unwrap_err();
    /// assert!(matches!(e, SnapshotError::CannotHold { id: 2, .. }));
    /// ```
    pub fn to_image(
        &self,
        layout: &Layout,
        form: Form,
        mask: u64,
    ) -> Result<Vec<u8>, SnapshotError> {
        let m = mask & !crate::components::mask::COMPACTED;
        let present = self.xstate_bv();
        if let Some(&id) = self.components.keys().find(|&&id| id >= 63) {
            return Err(SnapshotError::Malformed {
                location: format!("components[{id}]"),
                message: String::from("component numbers are 0..=62"),
            });
        }
        let mut xstate_bv = present;
        let mxcsr_needs_sse = self.legacy.mxcsr != MXCSR_INIT;
        match form {
            Form::Standard => {
                if mxcsr_needs_sse && m & (mask::SSE | mask::AVX) == 0 {
                    return Err(SnapshotError::CannotHold {
                        id: 1,
                        name: Component::name_of(1),
                        why: format!(
                            "MXCSR is {:#x} but the destination XCR0 {m:#x} enables neither SSE nor AVX, so XRSTOR would not load it",
                            self.legacy.mxcsr
                        ),
                    });
                }
            }
            Form::Compacted => {
                if mxcsr_needs_sse {
                    xstate_bv |= mask::SSE;
                }
            }
        }
        let supported = layout.xcr0_supported() | layout.xss_supported() | mask::LEGACY;
        for id in bits(xstate_bv) {
            if supported & (1u64 << id) == 0 {
                return Err(SnapshotError::CannotHold {
                    id,
                    name: Component::name_of(id),
                    why: format!(
                        "the destination CPU does not support it (CPUID.(0xD,0):EDX:EAX = {:#x}, CPUID.(0xD,1):EDX:ECX = {:#x})",
                        layout.xcr0_supported(),
                        layout.xss_supported()
                    ),
                });
            }
            if m & (1u64 << id) == 0 {
                let why = if id == 1 && present & mask::SSE == 0 {
                    format!(
                        "MXCSR is {:#x} and a compacted image loads MXCSR only with SSE, which the destination mask {m:#x} lacks",
                        self.legacy.mxcsr
                    )
                } else {
                    format!("the destination mask {m:#x} ({form} form) does not include it")
                };
                return Err(SnapshotError::CannotHold {
                    id,
                    name: Component::name_of(id),
                    why,
                });
            }
        }
        guard(layout, m, true)?;
        let geometry = layout.form(form, m).map_err(|e| match e {
            LayoutError::UnknownSize { id, name } => SnapshotError::CannotHold {
                id,
                name,
                why: format!("the destination's CPUID.(0xD,{id}).EAX reports size 0"),
            },
            LayoutError::SupervisorInStandard { id, name } => SnapshotError::CannotHold {
                id,
                name,
                why: String::from(
                    "it is a supervisor component and the standard form has no place for it",
                ),
            },
            other => SnapshotError::DestinationLayout(other),
        })?;
        let mut img = vec![0u8; geometry.size as usize];
        if img.len() < EXTENDED_START as usize {
            img.resize(EXTENDED_START as usize, 0);
        }
        // Legacy area: x87 fields (init when absent), MXCSR and MXCSR_MASK.
        let l = if present & mask::X87 != 0 {
            self.legacy
        } else {
            Legacy {
                mxcsr: self.legacy.mxcsr,
                mxcsr_mask: self.legacy.mxcsr_mask,
                ..Legacy::init(0)
            }
        };
        img[0..2].copy_from_slice(&l.fcw.to_le_bytes());
        img[2..4].copy_from_slice(&l.fsw.to_le_bytes());
        img[4] = l.ftw;
        img[6..8].copy_from_slice(&l.fop.to_le_bytes());
        img[8..16].copy_from_slice(&l.fip.to_le_bytes());
        img[16..24].copy_from_slice(&l.fdp.to_le_bytes());
        img[24..28].copy_from_slice(&l.mxcsr.to_le_bytes());
        img[28..32].copy_from_slice(&l.mxcsr_mask.to_le_bytes());

        for (&id, data) in &self.components {
            let want = content_len(id, self.source.size_of(id)) as usize;
            match id {
                0 => {
                    if data.len() != 80 {
                        return Err(bad_len(id, data.len(), 80));
                    }
                    for i in 0..8 {
                        img[st_offset(i)..st_offset(i) + 10]
                            .copy_from_slice(&data[i * 10..i * 10 + 10]);
                    }
                }
                1 => {
                    if data.len() != 256 {
                        return Err(bad_len(id, data.len(), 256));
                    }
                    img[xmm_offset(0)..xmm_offset(16)].copy_from_slice(data);
                }
                _ => {
                    if data.len() != want {
                        return Err(bad_len(id, data.len(), want));
                    }
                    let Some(p) = geometry.placement(id) else {
                        return Err(SnapshotError::CannotHold {
                            id,
                            name: Component::name_of(id),
                            why: String::from("the destination layout does not place it"),
                        });
                    };
                    if (p.size as usize) < data.len() {
                        return Err(SnapshotError::CannotHold {
                            id,
                            name: Component::name_of(id),
                            why: format!(
                                "the destination's CPUID.(0xD,{id}).EAX reports {} bytes, the content is {}",
                                p.size,
                                data.len()
                            ),
                        });
                    }
                    let start = p.offset as usize;
                    match img.get_mut(start..start + data.len()) {
                        Some(dst) => dst.copy_from_slice(data),
                        None => {
                            return Err(SnapshotError::CannotHold {
                                id,
                                name: Component::name_of(id),
                                why: format!(
                                "its destination bytes {start}..{} lie outside the {}-byte image",
                                start + data.len(),
                                img.len()
                            ),
                            })
                        }
                    }
                }
            }
        }
        img[512..520].copy_from_slice(&xstate_bv.to_le_bytes());
        img[520..528].copy_from_slice(&geometry.xcomp_bv().to_le_bytes());
        Ok(img)
    }

    /// The image for the source CPU itself, in the form the snapshot's registers imply: the
    /// standard form of XCR0 when no supervisor component is present, otherwise the compacted
    /// form of XCR0 | IA32_XSS.
    pub fn to_source_image(&self) -> Result<Vec<u8>, SnapshotError> {
        let layout = self.source.layout();
        if self.xstate_bv() & !self.xcr0 & self.xss != 0 {
            self.to_image(&layout, Form::Compacted, self.xcr0 | self.xss)
        } else {
            self.to_image(&layout, Form::Standard, self.xcr0)
        }
    }
}

/// Largest component size or standard offset accepted from CPUID data (1 MiB): far above any
/// real CPU (AMX tile data is 8 KiB; a whole Sapphire Rapids image is 11008 bytes), low enough
/// that an image of 63 such components stays a 64 MiB allocation at most.
pub(crate) const MAX_GEOMETRY: u32 = 1 << 20;

/// Refuses CPUID geometry so large that placing it would overflow or allocate absurdly: data
/// from a damaged dump or snapshot must give an error, never a panic.
fn guard(layout: &Layout, m: u64, dest: bool) -> Result<(), SnapshotError> {
    for id in bits(m & !mask::LEGACY & !mask::COMPACTED) {
        let g = layout.geometry(id);
        let off = g.standard_offset.unwrap_or(0);
        if g.size > MAX_GEOMETRY || off > MAX_GEOMETRY {
            let why = format!(
                "CPUID.(0xD,{id}) reports size {} at offset {off}, beyond any real CPU ({MAX_GEOMETRY} bytes)",
                g.size
            );
            return Err(if dest {
                SnapshotError::CannotHold {
                    id,
                    name: Component::name_of(id),
                    why,
                }
            } else {
                SnapshotError::Malformed {
                    location: format!("source.components[{id}]"),
                    message: why,
                }
            });
        }
    }
    Ok(())
}

fn bad_len(id: u8, got: usize, want: usize) -> SnapshotError {
    SnapshotError::Malformed {
        location: format!("components[{id}]"),
        message: format!(
            "component {id} ({}) holds {got} bytes, its architectural content is {want}",
            Component::name_of(id)
        ),
    }
}
