//! The engine's vCPUs, by id: a vector sorted by id with a hint at the last one looked up, so
//! that the attach/detach hot path finds the vCPU it keeps re-entering with one comparison
//! (a `vcpu_run` loop re-enters the same vCPU), and any other id with a binary search.

use alloc::vec::Vec;

use super::vcpu::Vcpu;

/// vCPUs sorted by id (no two with the same id) and the index of the last one found.
#[derive(Default)]
pub(crate) struct VcpuTable {
    by_id: Vec<Vcpu>,
    hint: usize,
}

impl VcpuTable {
    /// The index of vCPU `id`: the hint when it names it, a binary search otherwise.
    #[inline(always)]
    fn index(&self, id: u32) -> Result<usize, usize> {
        match self.by_id.get(self.hint) {
            Some(v) if v.id == id => Ok(self.hint),
            _ => self.by_id.binary_search_by_key(&id, |v| v.id),
        }
    }

    pub(crate) fn contains(&self, id: u32) -> bool {
        self.index(id).is_ok()
    }

    pub(crate) fn get(&self, id: u32) -> Option<&Vcpu> {
        self.index(id).ok().map(|i| &self.by_id[i])
    }

    /// vCPU `id` when the hint names it (the hot path: one comparison, nothing else);
    /// `None` otherwise, whether or not the table holds it (the caller then takes the path
    /// that calls [`get_mut`](Self::get_mut), which moves the hint).
    #[inline(always)]
    pub(crate) fn get_mut_hinted(&mut self, id: u32) -> Option<&mut Vcpu> {
        self.by_id.get_mut(self.hint).filter(|v| v.id == id)
    }

    /// vCPU `id`, remembered as the hint for the next lookup.
    #[inline(always)]
    pub(crate) fn get_mut(&mut self, id: u32) -> Option<&mut Vcpu> {
        if self.by_id.get(self.hint).is_some_and(|v| v.id == id) {
            return self.by_id.get_mut(self.hint);
        }
        self.get_mut_searched(id)
    }

    fn get_mut_searched(&mut self, id: u32) -> Option<&mut Vcpu> {
        let i = self.by_id.binary_search_by_key(&id, |v| v.id).ok()?;
        self.hint = i;
        self.by_id.get_mut(i)
    }

    /// Inserts `v` (its id must not be present: the caller checked) and returns it.
    pub(crate) fn insert(&mut self, v: Vcpu) -> &mut Vcpu {
        let i = match self.index(v.id) {
            Ok(i) => {
                self.by_id[i] = v;
                i
            }
            Err(i) => {
                self.by_id.insert(i, v);
                i
            }
        };
        self.hint = i;
        &mut self.by_id[i]
    }

    pub(crate) fn remove(&mut self, id: u32) -> Option<Vcpu> {
        let i = self.index(id).ok()?;
        self.hint = 0;
        Some(self.by_id.remove(i))
    }

    pub(crate) fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.by_id.iter().map(|v| v.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_lookup_with_hint() {
        use crate::cpuid::CpuidDump;
        use crate::engine::{Engine, GuestPolicy, Options};
        use crate::model::{CpuProfile, ModelCpu};
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/cpuid/hwloc/Intel-SapphireRapids-2xXeonMax9460.txt"
        );
        let d = CpuidDump::parse(&std::fs::read_to_string(path).unwrap(), "spr").unwrap();
        let mut e =
            Engine::new(ModelCpu::new(CpuProfile::from_dump(&d)), Options::default()).unwrap();
        let p = GuestPolicy {
            xcr0_max: e.config().xcr0 & 0x7,
            xss: 0,
        };
        for id in [5, 1, 9, 3] {
            e.create_vcpu(id, p, false).unwrap();
        }
        let mut t = VcpuTable::default();
        for id in [5, 1, 9, 3] {
            t.insert(e.take_vcpu(id).unwrap());
        }
        assert_eq!(t.ids().collect::<Vec<_>>(), [1, 3, 5, 9]);
        for id in [9, 9, 1, 5, 3, 3] {
            assert_eq!(t.get_mut(id).unwrap().id, id);
            assert_eq!(t.get(id).unwrap().id, id);
        }
        assert!(t.get_mut(4).is_none() && !t.contains(4) && t.contains(3));
        assert_eq!(t.remove(3).unwrap().id, 3);
        assert!(t.remove(3).is_none() && t.get(3).is_none());
        assert_eq!(t.ids().collect::<Vec<_>>(), [1, 5, 9]);
        assert_eq!(t.get_mut(9).unwrap().id, 9);
        // The hinted lookup finds only the vCPU last found, present or not otherwise.
        assert_eq!(t.get_mut_hinted(9).unwrap().id, 9);
        assert!(t.get_mut_hinted(1).is_none() && t.get_mut_hinted(4).is_none());
        assert_eq!(t.get_mut(1).unwrap().id, 1);
        assert_eq!(t.get_mut_hinted(1).unwrap().id, 1);
    }
}
