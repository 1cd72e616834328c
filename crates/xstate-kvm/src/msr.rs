//! The MSRs that hold extended state outside the XSAVE buffer KVM exchanges (DESIGN §6):
//! IA32_XSS, the XFD pair and CET's supervisor state. A complete vCPU xstate carries every one
//! of them that KVM lists in KVM_GET_MSR_INDEX_LIST.

/// IA32_XSS: the supervisor components XSAVES/XRSTORS manage.
pub const IA32_XSS: u32 = 0xDA0;
/// IA32_XFD: extended feature disable (arms #NM for dynamic components).
pub const IA32_XFD: u32 = 0x1C4;
/// IA32_XFD_ERR: the components whose use raised the last XFD #NM.
pub const IA32_XFD_ERR: u32 = 0x1C5;
/// IA32_U_CET: user-mode CET configuration.
pub const IA32_U_CET: u32 = 0x6A0;
/// IA32_S_CET: supervisor-mode CET configuration.
pub const IA32_S_CET: u32 = 0x6A2;
/// IA32_PL0_SSP: shadow stack pointer for CPL 0.
pub const IA32_PL0_SSP: u32 = 0x6A4;
/// IA32_PL1_SSP.
pub const IA32_PL1_SSP: u32 = 0x6A5;
/// IA32_PL2_SSP.
pub const IA32_PL2_SSP: u32 = 0x6A6;
/// IA32_PL3_SSP: the user shadow stack pointer.
pub const IA32_PL3_SSP: u32 = 0x6A7;
/// IA32_INTERRUPT_SSP_TABLE_ADDR.
pub const IA32_INT_SSP_TAB: u32 = 0x6A8;

/// One extended-state MSR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XstateMsr {
    /// The MSR index.
    pub index: u32,
    /// The SDM name.
    pub name: &'static str,
    /// The state component it belongs to (XSAVE component index), if any.
    pub component: Option<u8>,
}

/// Every extended-state MSR, in the order a restore writes them: IA32_XSS first (it decides
/// which supervisor components exist), then XFD and XFD_ERR (they decide which dynamic
/// components may be loaded, seed 001), then the CET registers.
pub const XSTATE_MSRS: [XstateMsr; 10] = [
    XstateMsr {
        index: IA32_XSS,
        name: "IA32_XSS",
        component: None,
    },
    XstateMsr {
        index: IA32_XFD,
        name: "IA32_XFD",
        component: None,
    },
    XstateMsr {
        index: IA32_XFD_ERR,
        name: "IA32_XFD_ERR",
        component: None,
    },
    XstateMsr {
        index: IA32_U_CET,
        name: "IA32_U_CET",
        component: Some(11),
    },
    XstateMsr {
        index: IA32_PL3_SSP,
        name: "IA32_PL3_SSP",
        component: Some(11),
    },
    XstateMsr {
        index: IA32_S_CET,
        name: "IA32_S_CET",
        component: Some(12),
    },
    XstateMsr {
        index: IA32_PL0_SSP,
        name: "IA32_PL0_SSP",
        component: Some(12),
    },
    XstateMsr {
        index: IA32_PL1_SSP,
        name: "IA32_PL1_SSP",
        component: Some(12),
    },
    XstateMsr {
        index: IA32_PL2_SSP,
        name: "IA32_PL2_SSP",
        component: Some(12),
    },
    XstateMsr {
        index: IA32_INT_SSP_TAB,
        name: "IA32_INTERRUPT_SSP_TABLE_ADDR",
        component: Some(12),
    },
];

/// The catalog entry of an MSR index, if it is an extended-state MSR.
///
/// ```
/// assert_eq!(xstate_kvm::msr::lookup(0xDA0).unwrap().name, "IA32_XSS");
/// assert!(xstate_kvm::msr::lookup(0x10).is_none());
/// ```
pub fn lookup(index: u32) -> Option<&'static XstateMsr> {
    XSTATE_MSRS.iter().find(|m| m.index == index)
}

/// The name of an MSR: the catalog name or `MSR_0x…`.
///
/// ```
/// assert_eq!(xstate_kvm::msr::name_of(0x1C4), "IA32_XFD");
/// assert_eq!(xstate_kvm::msr::name_of(0x10), "MSR_0x10");
/// ```
pub fn name_of(index: u32) -> String {
    lookup(index)
        .map(|m| m.name.to_string())
        .unwrap_or_else(|| format!("MSR_{index:#x}"))
}

/// Position of an MSR in the restore order (unknown MSRs last, by index).
pub(crate) fn restore_rank(index: u32) -> (usize, u32) {
    let pos = XSTATE_MSRS
        .iter()
        .position(|m| m.index == index)
        .unwrap_or(XSTATE_MSRS.len());
    (pos, index)
}

/// The extended-state MSRs among `listed` (KVM_GET_MSR_INDEX_LIST), in restore order.
///
/// ```
/// let v = xstate_kvm::msr::xstate_msrs_in(&[0x10, 0x6A0, 0xDA0]);
/// assert_eq!(v, vec![0xDA0, 0x6A0]);
/// ```
pub fn xstate_msrs_in(listed: &[u32]) -> Vec<u32> {
    XSTATE_MSRS
        .iter()
        .map(|m| m.index)
        .filter(|i| listed.contains(i))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_order_puts_xss_and_xfd_first() {
        let mut v = vec![IA32_PL3_SSP, IA32_XFD, 0x10, IA32_XSS, IA32_XFD_ERR];
        v.sort_by_key(|&i| restore_rank(i));
        assert_eq!(
            v,
            vec![IA32_XSS, IA32_XFD, IA32_XFD_ERR, IA32_PL3_SSP, 0x10]
        );
    }

    #[test]
    fn catalog_indices_are_unique() {
        for (i, a) in XSTATE_MSRS.iter().enumerate() {
            for b in &XSTATE_MSRS[i + 1..] {
                assert_ne!(a.index, b.index);
            }
        }
    }
}
