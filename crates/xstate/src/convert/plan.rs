//! [`ConvertPlan`]: a conversion worked out once per (source geometry, target geometry), so
//! that converting an image is a geometry comparison, one read of its header and MXCSR, and
//! a few `memcpy`/`memset` calls.
//!
//! What depends only on the two geometries is computed when the plan is made: which
//! components the target places, each target component's source area (offset, size, the
//! bytes copied and the zero tail of a larger target area), the gaps between components, the
//! truncation checks (source areas larger than the target's, whose extra meaningful bytes
//! must be zero), whether the target can carry a non-default MXCSR, and — for the common case
//! where XSTATE_BV marks every component both images place — the list of copies, merged into
//! runs where components are adjacent in both images (legacy area and header included), and
//! of zeroed gaps.
//!
//! What depends on the image's bytes is read per call: XSTATE_BV (bit 63, components outside
//! a compacted source's XCOMP_BV), MXCSR, whether a present component the target cannot hold
//! is in its init state, and whether the truncated tails are zero. When XSTATE_BV is exactly
//! the planned set (plus any of x87/SSE), nothing else needs looking at and the precomputed
//! runs are issued; otherwise the per-component path copies or zeroes each component. Both
//! apply every rule of the module documentation of [`crate::convert`] and write nothing on
//! error.

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;

use super::{
    bit, copy, no_room, present, target_len, walk_into, zero, ConvertError, Run, RunSink, Writer,
    MXCSR_INIT,
};
use crate::components::{bits, mask};
use crate::image::{AlignedBuf, Geometry, Xsave, XsaveImage};
use crate::layout::{equal_placements, Form, FormLayout, EXTENDED_START, MAX_AREA_SIZE};

/// One component ≥ 2 of the target, in the target's placement order.
#[derive(Clone, Debug)]
struct Comp {
    id: u8,
    dst_off: usize,
    dst_size: usize,
    /// The source area (offset, size), when the source geometry places the component.
    src: Option<(usize, usize)>,
    /// Source bytes `.0..<.1` that do not fit the target and must be zero (meaningful bytes
    /// of a larger source area), with the two sizes for the error.
    trunc: Option<Trunc>,
}

#[derive(Clone, Copy, Debug)]
struct Trunc {
    from: usize,
    to: usize,
    src_size: u32,
    dst_size: u32,
}

/// What a plan compares of a geometry on every call, held in the plan itself so that the
/// comparison follows no pointer to reach the planned side: form, mask, size, the number of
/// placements, and the address of the planned placement list. The plan holds that list
/// (shared, [`crate::layout::Placements`]), and a shared list is copied before any change,
/// so a geometry whose list is at that address has the planned placements: the geometry the
/// plan was made with or a clone of it, an interned one (`layout::interned`), an image's
/// made from either.
#[derive(Clone, Copy, Debug)]
struct Key {
    form: Form,
    mask: u64,
    size: u32,
    n: usize,
    at: usize,
}

impl Key {
    fn of(g: &FormLayout) -> Key {
        Key {
            form: g.form,
            mask: g.mask,
            size: g.size,
            n: g.placements.len(),
            at: g.placements.as_ptr() as usize,
        }
    }

    /// Form, mask, size and number of placements of `g` are the planned ones.
    #[inline(always)]
    fn head_is(&self, g: &FormLayout) -> bool {
        self.form == g.form
            && self.mask == g.mask
            && self.size == g.size
            && self.n == g.placements.len()
    }

    /// `g`, whose head is the planned one, has the placements of `planned` (the geometry
    /// this key was made of): the same object, or equal field by field.
    #[inline(always)]
    fn placements_are(&self, g: &FormLayout, planned: &FormLayout) -> bool {
        self.at == g.placements.as_ptr() as usize || equal_placements(planned, g)
    }
}

/// A precomputed step of the full-XSTATE_BV path.
#[derive(Clone, Copy, Debug)]
enum Op {
    Copy { from: usize, to: usize, len: usize },
    Zero { from: usize, to: usize },
}

/// Records the steps of [`emit`] as [`Op`]s.
struct Recorder(Vec<Op>);

impl RunSink for Recorder {
    fn copy(&mut self, from: usize, to: usize, len: usize) {
        self.0.push(Op::Copy { from, to, len });
    }
    fn zero(&mut self, from: usize, to: usize) {
        if from < to {
            self.0.push(Op::Zero { from, to });
        }
    }
}

/// The bytes `EXTENDED_START..len` of a target whose placements are in offset order, and the
/// legacy area and header copied from the source (fixed afterwards by [`finish`]), for the
/// components ≥ 2 of `kept`: gaps before a placement zeroed, each kept component copied (as
/// many bytes as both areas hold) and the rest of its area zeroed, absent components zeroed,
/// the end after the last placement zeroed. Copies adjacent in both images are merged.
fn emit(comps: &[Comp], kept: u64, len: usize, sink: &mut impl RunSink) {
    let mut run = Run {
        from: 0,
        to: 0,
        len: EXTENDED_START as usize,
    };
    let mut cursor = EXTENDED_START as usize;
    for c in comps {
        let (off, size) = (c.dst_off, c.dst_size);
        if cursor < off {
            run.flush(sink);
            sink.zero(cursor, off);
        }
        cursor = cursor.max(off + size);
        let mut n = 0;
        if kept & bit(c.id) != 0 {
            if let Some((so, ss)) = c.src {
                n = ss.min(size);
                run.push(so, off, n, sink);
            }
        }
        if n < size {
            run.flush(sink);
            sink.zero(off + n, off + size);
        }
    }
    run.flush(sink);
    sink.zero(cursor, len);
}

/// The legacy area and header of the target (SDM Vol. 1 §10.5.1, §13.4.2), after the copies:
/// x87 in its init state when not carried, MXCSR as decided, XMM zero when SSE is not carried
/// or was absent from the source, XSTATE_BV = `kept`, the target's XCOMP_BV, zero reserved
/// bytes. `d` holds at least 576 bytes.
#[inline]
fn finish(d: &mut [u8], kept: u64, mxcsr: u32, src_sse: bool, xcomp_bv: u64) {
    if d.len() < EXTENDED_START as usize {
        return;
    }
    if kept & mask::X87 == 0 {
        d[..2].copy_from_slice(&crate::image::FCW_INIT.to_le_bytes());
        d[2..24].fill(0);
        d[32..160].fill(0);
    }
    d[24..28].copy_from_slice(&mxcsr.to_le_bytes());
    if kept & mask::SSE == 0 || !src_sse {
        d[160..416].fill(0);
    }
    d[512..520].copy_from_slice(&kept.to_le_bytes());
    d[520..528].copy_from_slice(&xcomp_bv.to_le_bytes());
    d[528..576].fill(0);
}

/// What the per-call checks decided.
#[derive(Clone, Copy)]
struct Decision {
    /// XSTATE_BV of the target.
    kept: u64,
    /// MXCSR written into the target.
    mxcsr: u32,
    /// XSTATE_BV\[1\] of the source.
    src_sse: bool,
    /// The precomputed runs apply (`kept` ≥ 2 is the planned set).
    fast: bool,
}

/// A conversion from images of one geometry to another, computed once and reused: the
/// matched components, the copies merged into runs, the gaps to zero, the truncation checks
/// and the MXCSR rule. The hot call compares the image's geometry with the planned one,
/// reads XSTATE_BV and MXCSR once and, when XSTATE_BV marks every component both geometries
/// place (the common case), issues the precomputed copies; otherwise it copies or zeroes
/// component by component. Nothing is allocated per call ([`ConvertPlan::convert_into`]).
///
/// Every rule of [`crate::convert`] holds, and the results are those of
/// [`convert`](super::convert) byte for byte and error for error. An image of another
/// geometry is refused ([`ConvertError::GeometryMismatch`]), never converted with the wrong
/// offsets.
///
/// ```
/// # use xstate::cpuid::{CpuidDump, Regs};
/// # use xstate::image::XsaveImage;
/// # use xstate::layout::Layout;
/// use xstate::convert::{convert, ConvertError, ConvertPlan};
/// # let mut d = CpuidDump::new("doc");
/// # d.insert(0xd, 0, Regs { eax: 0xe7, ebx: 0x980, ecx: 0x980, edx: 0 });
/// # d.insert(0xd, 1, Regs { eax: 0xf, ebx: 0, ecx: 0, edx: 0 });
/// # d.insert(0xd, 2, Regs { eax: 256, ebx: 576, ecx: 0, edx: 0 });
/// # d.insert(0xd, 5, Regs { eax: 64, ebx: 832, ecx: 0, edx: 0 });
/// # d.insert(0xd, 6, Regs { eax: 512, ebx: 896, ecx: 0, edx: 0 });
/// # d.insert(0xd, 7, Regs { eax: 1024, ebx: 1408, ecx: 0, edx: 0 });
/// # let l = Layout::from_dump(&d);
/// let (sg, tg) = (l.standard(0xe7).unwrap(), l.compacted(0xe7).unwrap());
/// let plan = ConvertPlan::new(&sg, &tg).unwrap();   // once
/// let mut img = XsaveImage::new(&sg);
/// img.set_k(3, 0xff).unwrap();
/// img.set_xstate_bv(0xe7);
/// let mut out = vec![0u8; plan.len()];               // reused
/// let n = plan.convert_into(&img, &mut out).unwrap(); // per image
/// assert_eq!(&out[..n], convert(&img, &tg).unwrap().as_bytes());
/// // An image of another geometry is refused.
/// let other = XsaveImage::new(&l.standard(0x7).unwrap());
/// assert!(matches!(
///     plan.convert_into(&other, &mut out),
///     Err(ConvertError::GeometryMismatch { .. })
/// ));
/// ```
#[derive(Clone, Debug)]
pub struct ConvertPlan {
    /// The geometries, shared: the images [`ConvertPlan::convert`] makes hold `dst` without a
    /// copy, and the cache lets plans share equal geometries (so an image converted with one
    /// plan is recognised by identity by the next, see [`ConvertPlan::is_for`]).
    src: Arc<FormLayout>,
    dst: Arc<FormLayout>,
    src_key: Key,
    dst_key: Key,
    /// The target's XCOMP_BV.
    xcomp_bv: u64,
    len: usize,
    /// Components the target places: x87/SSE of its mask, the ids of its placements in it.
    placed: u64,
    /// The target's placements are in offset order, without overlap (every layout `Layout`
    /// builds); otherwise every call takes the component walk of [`walk_into`].
    sorted: bool,
    /// Components ≥ 2 the target places and the source geometry has an area for: the
    /// XSTATE_BV (bits ≥ 2) of the precomputed runs.
    full: u64,
    /// XSTATE_BV bits that need no closer look: placed by the target, and (compacted source)
    /// within the source's XCOMP_BV.
    allowed: u64,
    /// A non-default MXCSR has a place in the target (SSE in a compacted mask, SSE or AVX in
    /// a standard one).
    mxcsr_room: bool,
    /// The source bytes the precomputed copies read.
    src_need: usize,
    comps: Vec<Comp>,
    /// Truncation checks of the components of `full` (indices into `comps`).
    full_trunc: Vec<usize>,
    ops: Vec<Op>,
    /// `ops` write target bytes `0..len` each once, in order.
    ops_tile: bool,
}

impl ConvertPlan {
    /// Plans conversions from images of geometry `source` to images of geometry `target`
    /// (any forms, masks and CPUs' layouts). The only error is a target larger than
    /// [`MAX_AREA_SIZE`] (CPUID data that cannot be right). Trust as for
    /// [`convert`](super::convert): `target` comes from [`crate::layout::Layout`].
    pub fn new(source: &FormLayout, target: &FormLayout) -> Result<ConvertPlan, ConvertError> {
        Self::new_shared(shared(source), shared(target))
    }

    /// [`ConvertPlan::new`] with geometries shared with their other holders.
    pub(crate) fn new_shared(
        source_arc: Arc<FormLayout>,
        target_arc: Arc<FormLayout>,
    ) -> Result<ConvertPlan, ConvertError> {
        let (source, target) = (&*source_arc, &*target_arc);
        if target.size > MAX_AREA_SIZE {
            return Err(ConvertError::TargetTooLarge(target.size));
        }
        let (placed, sorted) = super::placed_and_sorted(target);
        let allowed = match source.form {
            Form::Compacted => placed & source.mask,
            Form::Standard => placed,
        };
        let mut comps = Vec::new();
        let mut full = 0u64;
        let mut src_need = EXTENDED_START as usize;
        for d in target.placements.iter().filter(|d| d.id >= 2) {
            let sp = source.placement(d.id);
            let trunc = sp.and_then(|sp| {
                let m = super::meaningful_len(d.id, sp.size);
                (sp.size > d.size && m > d.size).then_some(Trunc {
                    from: sp.offset as usize + d.size as usize,
                    to: sp.offset as usize + m as usize,
                    src_size: sp.size,
                    dst_size: d.size,
                })
            });
            if let Some(sp) = sp {
                if placed & bit(d.id) != 0 {
                    full |= bit(d.id);
                    src_need = src_need.max(sp.end() as usize);
                }
            }
            comps.push(Comp {
                id: d.id,
                dst_off: d.offset as usize,
                dst_size: d.size as usize,
                src: sp.map(|p| (p.offset as usize, p.size as usize)),
                trunc,
            });
        }
        let full_trunc = comps
            .iter()
            .enumerate()
            .filter(|(_, c)| c.trunc.is_some() && full & bit(c.id) != 0)
            .map(|(i, _)| i)
            .collect();
        let len = target_len(target);
        let mut rec = Recorder(Vec::new());
        if sorted {
            emit(&comps, full, len, &mut rec);
        }
        let mxcsr_room = match target.form {
            Form::Compacted => target.mask & mask::SSE != 0,
            Form::Standard => target.mask & (mask::SSE | mask::AVX) != 0,
        };
        let mut pos = 0usize;
        let mut ops_tile = sorted;
        for op in &rec.0 {
            let (at, end) = match *op {
                Op::Copy { to, len, .. } => (to, to + len),
                Op::Zero { from, to } => (from, to),
            };
            ops_tile &= at == pos;
            pos = end;
        }
        let ops_tile = ops_tile && pos == len;
        Ok(ConvertPlan {
            src_key: Key::of(source),
            dst_key: Key::of(target),
            xcomp_bv: target.xcomp_bv(),
            src: source_arc.clone(),
            dst: target_arc.clone(),
            len,
            placed,
            sorted,
            full,
            allowed,
            mxcsr_room,
            src_need,
            comps,
            full_trunc,
            ops: rec.0,
            ops_tile,
        })
    }

    /// The source geometry planned for.
    pub fn source(&self) -> &FormLayout {
        &self.src
    }

    /// The target geometry.
    pub fn target(&self) -> &FormLayout {
        &self.dst
    }

    /// The length of the images this plan writes (the target's size, at least 576).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a target image holds at least 576 bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The shared source and target geometries (for the cache, to share them with new plans).
    #[cfg_attr(not(feature = "std"), allow(dead_code))]
    pub(crate) fn shared(&self) -> (&Arc<FormLayout>, &Arc<FormLayout>) {
        (&self.src, &self.dst)
    }

    /// Whether this plan was made for images of geometry `g` and target `t`: the cheap
    /// fields of both first (form, mask, size, number of placements: what tells the plans of
    /// a cache apart), then each geometry is the planned object itself (same address) or
    /// equal to it placement by placement.
    #[cfg(feature = "std")]
    #[inline(always)]
    pub(crate) fn is_for(&self, g: &FormLayout, t: &FormLayout) -> bool {
        self.src_key.head_is(g)
            && self.dst_key.head_is(t)
            && self.src_key.placements_are(g, &self.src)
            && self.dst_key.placements_are(t, &self.dst)
    }

    /// Converts `src` into `out` (reused across calls): writes bytes `0..self.len()` of
    /// `out` and returns that length; bytes after it are not touched. The same result as
    /// [`convert_into`](super::convert_into) with this plan's target, byte for byte and
    /// error for error; nothing is written when an error is returned. `src` must have the
    /// planned source geometry ([`ConvertError::GeometryMismatch`] otherwise).
    #[inline]
    pub fn convert_into<B: AsRef<[u8]>>(
        &self,
        src: &Xsave<B>,
        out: &mut [u8],
    ) -> Result<usize, ConvertError> {
        self.check_geometry(src.geometry())?;
        self.convert_into_unchecked_geometry(src, out)
    }

    /// [`ConvertPlan::convert_into`] into a new image of the target geometry. The image
    /// shares the plan's target geometry (no copy of it); with the `std` feature its buffer
    /// comes from the thread's pool of dropped image buffers when one of the size is there,
    /// so converting and dropping images in a loop allocates nothing in steady state.
    pub fn convert<B: AsRef<[u8]>>(&self, src: &Xsave<B>) -> Result<XsaveImage, ConvertError> {
        self.check_geometry(src.geometry())?;
        self.convert_unchecked_geometry(src, || Geometry::Shared(self.dst.clone()))
    }

    /// `convert_into` for a caller that compared the geometries.
    #[inline(always)]
    pub(crate) fn convert_into_unchecked_geometry<B: AsRef<[u8]>>(
        &self,
        src: &Xsave<B>,
        out: &mut [u8],
    ) -> Result<usize, ConvertError> {
        let s = src.as_bytes();
        match self.decide_fast(src) {
            Some(dec) if out.len() >= self.len => {
                self.write(s, &mut out[..self.len], dec, false);
                Ok(self.len)
            }
            _ => self.convert_into_slow(src, out),
        }
    }

    #[cold]
    #[inline(never)]
    fn convert_into_slow<B: AsRef<[u8]>>(
        &self,
        src: &Xsave<B>,
        out: &mut [u8],
    ) -> Result<usize, ConvertError> {
        if !self.sorted {
            return walk_into(src, &self.dst, out);
        }
        let dec = self.decide_slow(src, src.mxcsr())?;
        let Some(d) = out.get_mut(..self.len) else {
            return Err(ConvertError::OutTooSmall {
                have: out.len(),
                need: self.len,
            });
        };
        self.write(src.as_bytes(), d, dec, false);
        Ok(self.len)
    }

    /// `convert` for a caller that compared the geometries; `geometry` makes the target
    /// geometry as the new image holds it (this plan's, shared or static). It is called where
    /// the image is made, not before the checks: a `Geometry` made first was kept on the
    /// stack, written in pieces (an 8-byte pointer, a 1-byte tag) and later read back whole
    /// by the move into the image, a load that could not be forwarded from those stores and
    /// waited behind the previous conversion's copies (`perf annotate`: half of `convert`'s
    /// own samples on it; host image 26 → 25 ns in a scratch loop, bench 1.33-1.61 →
    /// 1.24-1.52 ×).
    #[inline(always)]
    pub(crate) fn convert_unchecked_geometry<B: AsRef<[u8]>>(
        &self,
        src: &Xsave<B>,
        geometry: impl FnOnce() -> Geometry,
    ) -> Result<XsaveImage, ConvertError> {
        match self.decide_fast(src) {
            Some(dec) if self.ops_tile => {
                // The precomputed steps write every byte once, in order: a buffer of any
                // content will do (a recycled one: no zeroing, no allocation in steady
                // state). The image is made first and filled last, so that its fields are
                // stored before the copies, not read back behind them. `self.len` is the
                // target's size and at least 576: the image's length rules hold.
                let mut img = Xsave::from_parts(AlignedBuf::for_overwrite(self.len), geometry());
                debug_assert!(*img.geometry() == *self.dst);
                self.write(src.as_bytes(), img.as_mut_bytes(), dec, false);
                Ok(img)
            }
            _ => self.convert_slow(src, geometry()),
        }
    }

    /// `convert` when XSTATE_BV is not the planned set (or the target's placements are not in
    /// offset order): the component checks, a zeroed buffer.
    #[cold]
    #[inline(never)]
    fn convert_slow<B: AsRef<[u8]>>(
        &self,
        src: &Xsave<B>,
        geometry: Geometry,
    ) -> Result<XsaveImage, ConvertError> {
        if !self.sorted {
            return super::walk_convert(src, &self.dst);
        }
        let dec = match self.decide_fast(src) {
            Some(dec) => dec,
            None => self.decide_slow(src, src.mxcsr())?,
        };
        let mut img = Xsave::with_geometry_of(AlignedBuf::new(self.len), geometry)?;
        self.write(src.as_bytes(), img.as_mut_bytes(), dec, true);
        Ok(img)
    }

    #[inline]
    fn check_geometry(&self, g: &FormLayout) -> Result<(), ConvertError> {
        if self.src_key.head_is(g) && self.src_key.placements_are(g, &self.src) {
            return Ok(());
        }
        Err(self.mismatch(g))
    }

    #[cold]
    #[inline(never)]
    fn mismatch(&self, g: &FormLayout) -> ConvertError {
        ConvertError::GeometryMismatch {
            planned: describe(&self.src, g),
            given: describe(g, &self.src),
        }
    }

    /// The checks of the conversion on one read of XSTATE_BV and MXCSR, when XSTATE_BV is
    /// the planned set (with any of x87/SSE), nothing it marks needs a closer look and the
    /// truncated tails are zero: no error is possible then. `None`: the per-component checks
    /// decide.
    #[inline(always)]
    fn decide_fast<B: AsRef<[u8]>>(&self, src: &Xsave<B>) -> Option<Decision> {
        if !self.sorted {
            return None;
        }
        let s = src.as_bytes();
        let bv = crate::image::raw_xstate_bv(s);
        let raw = crate::image::raw_mxcsr(s);
        // MXCSR as a restore of the source would load it (`Xsave::mxcsr`).
        let mxcsr = match self.src_key.form {
            Form::Compacted if bv & mask::SSE == 0 => MXCSR_INIT,
            _ => raw,
        };
        let ok = bv & !self.allowed == 0
            && bv & !mask::LEGACY == self.full
            && (mxcsr == MXCSR_INIT || self.mxcsr_room)
            && s.len() >= self.src_need
            && self.full_trunc.iter().all(|&i| {
                self.comps[i].trunc.map_or(true, |t| {
                    s.get(t.from..t.to)
                        .map_or(true, |b| b.iter().all(|&x| x == 0))
                })
            });
        if !ok {
            return None;
        }
        let kept = match self.dst_key.form {
            Form::Compacted if mxcsr != MXCSR_INIT => bv | mask::SSE,
            _ => bv,
        };
        Some(Decision {
            kept,
            mxcsr: self.written_mxcsr(kept, mxcsr),
            src_sse: bv & mask::SSE != 0,
            fast: true,
        })
    }

    /// The checks component by component (the order and the errors of the component walk).
    #[cold]
    #[inline(never)]
    fn decide_slow<B: AsRef<[u8]>>(
        &self,
        src: &Xsave<B>,
        mxcsr: u32,
    ) -> Result<Decision, ConvertError> {
        let t = &self.dst;
        let mut p = present(src)?;
        let src_sse = p & mask::SSE != 0;
        // A component the target cannot hold may be left out only when it is in its init
        // state.
        for id in bits(p & !self.placed) {
            if !src.is_init(id)? {
                return Err(no_room(id, t));
            }
        }
        if mxcsr != MXCSR_INIT {
            if !self.mxcsr_room {
                return Err(no_room(1, t));
            }
            if t.form == Form::Compacted {
                p |= mask::SSE;
            }
        }
        let kept = p & self.placed;
        let s = src.as_bytes();
        for c in self.comps.iter().filter(|c| kept & bit(c.id) != 0) {
            if !c.src.is_some_and(|(o, n)| o + n <= s.len()) {
                return Err(src
                    .placement(c.id)
                    .err()
                    .map_or_else(|| no_room(c.id, t), Into::into));
            }
            if let Some(tr) = c.trunc {
                let tail = s.get(tr.from..tr.to).unwrap_or(&[]);
                if tail.iter().any(|&b| b != 0) {
                    return Err(ConvertError::Truncation {
                        id: c.id,
                        name: crate::components::Component::name_of(c.id),
                        src_size: tr.src_size,
                        dst_size: tr.dst_size,
                        offset: tr.from as u32,
                    });
                }
            }
        }
        Ok(Decision {
            kept,
            mxcsr: self.written_mxcsr(kept, mxcsr),
            src_sse,
            fast: kept & !mask::LEGACY == self.full,
        })
    }

    #[inline]
    fn written_mxcsr(&self, kept: u64, mxcsr: u32) -> u32 {
        match self.dst_key.form {
            Form::Standard => mxcsr,
            Form::Compacted if kept & mask::SSE != 0 => mxcsr,
            Form::Compacted => MXCSR_INIT,
        }
    }

    /// Writes the decided image into `d` (exactly `self.len` bytes; `zeroed`: `d` is all
    /// zero).
    #[inline(always)]
    fn write(&self, s: &[u8], d: &mut [u8], dec: Decision, zeroed: bool) {
        if dec.fast {
            for op in &self.ops {
                match *op {
                    Op::Copy { from, to, len } => copy(s, d, from, to, len),
                    Op::Zero { from, to } => {
                        if !zeroed {
                            zero(d, from, to)
                        }
                    }
                }
            }
        } else {
            let mut w = Writer { s, d, zeroed };
            emit(&self.comps, dec.kept, self.len, &mut w);
        }
        finish(d, dec.kept, dec.mxcsr, dec.src_sse, self.xcomp_bv);
    }
}

/// `g` shared with the images of that geometry when the process's table of geometries keeps
/// it (`layout::interned`: a plan then recognises those images by identity), or a copy.
fn shared(g: &FormLayout) -> Arc<FormLayout> {
    #[cfg(feature = "std")]
    if let Some(k) = crate::layout::interned::intern(g) {
        return k.clone();
    }
    Arc::new(g.clone())
}

/// `g` in words, with the first placement where it differs from `other` when form, mask and
/// size are the same.
fn describe(g: &FormLayout, other: &FormLayout) -> String {
    let mut s = alloc::format!(
        "{} form of components {:#x}, {} bytes",
        g.form,
        g.mask,
        g.size
    );
    if (g.form, g.mask, g.size) == (other.form, other.mask, other.size) {
        let n = g.placements.len().max(other.placements.len());
        if let Some(i) = (0..n).find(|&i| g.placements.get(i) != other.placements.get(i)) {
            match g.placements.get(i) {
                Some(p) => s.push_str(&alloc::format!(
                    ", component {} at offset {} ({} bytes)",
                    p.id,
                    p.offset,
                    p.size
                )),
                None => s.push_str(&alloc::format!(", {} placements", g.placements.len())),
            }
        }
    }
    s
}

#[cfg(test)]
mod tests;
