//! Known deviations of the executor from the SDM, imitated on a second model run so that the
//! differential applies them narrowly: a case counts as a known difference only when the
//! imitation makes it agree completely, and a listed deviation whose precondition holds on this
//! CPU but that never occurred in a run fails the run (the list stays true). docs/ring0.md lists
//! each with its SDM section.

use xstate::model::ModelCpu;

use crate::program::Step;

/// One listed deviation.
#[derive(Clone, Copy)]
pub struct Entry {
    /// Identifier printed in the summary.
    pub id: &'static str,
    /// Whether the deviation can occur on this CPU (its feature is present).
    pub possible: bool,
    /// Cases it explained in this run.
    pub hits: u64,
    /// Set during one quirked model run when the imitation changed something.
    applied: bool,
}

/// The list and the imitation state of one model run.
#[derive(Clone)]
pub struct Quirks {
    /// The entries.
    pub entries: alloc::vec::Vec<Entry>,
}

impl Quirks {
    /// The list for a CPU with the given XCR0/IA32_XSS support.
    pub fn new(_xcr0_supported: u64, _xss_supported: u64) -> Quirks {
        Quirks { entries: alloc::vec::Vec::new() }
    }

    /// Called before a step runs on the quirked model.
    pub fn before(&mut self, _m: &mut ModelCpu, _s: &Step) {}

    /// Called after a step ran on the quirked model (`ok`: it did not fault; `mem`: the
    /// model's memory from the step's operand on).
    pub fn after(&mut self, _m: &mut ModelCpu, _s: &Step, _ok: bool, _mem: &mut [u8]) {}

    /// Whether any imitation changed the model's behaviour in this run.
    pub fn any_applied(&self) -> bool {
        self.entries.iter().any(|e| e.applied)
    }

    /// Adds the hits of a quirked run that explained a case.
    pub fn record(&mut self, run: &Quirks) {
        for (e, r) in self.entries.iter_mut().zip(&run.entries) {
            if r.applied {
                e.hits += 1;
            }
        }
    }
}
