//! Per-process permissions for dynamic features, for the process itself (host) and for the
//! guests it runs — the `arch_prctl` interface of DESIGN.md §6:
//! `ARCH_GET_XCOMP_SUPP` ([`Permissions::supported`]), `ARCH_GET_XCOMP_PERM` /
//! `ARCH_GET_XCOMP_GUEST_PERM` ([`Permissions::get`]), `ARCH_REQ_XCOMP_PERM` /
//! `ARCH_REQ_XCOMP_GUEST_PERM` ([`Permissions::request`]).
//!
//! Request rules, exactly Linux's (`xstate_request_perm()` in arch/x86/kernel/fpu/xstate.c,
//! DESIGN.md §6), in the order Linux applies them:
//! 1. an index ≥ `XFEATURE_MAX` ([`XFEATURE_MAX`] = 20 in Linux 6.18: the last xfeature is
//!    APX, 19) → `einval`;
//! 2. a feature that is not a dynamic user feature (only TILEDATA, `XFEATURE_MASK_USER_DYNAMIC`)
//!    or that the host does not support (not in the user configuration's max features) →
//!    `eopnotsupp` — also for features that are always permitted (AVX, TILECFG): Linux never
//!    answers 0 for them;
//! 3. a feature already permitted → `Ok(Grant::AlreadyGranted)` (Linux: 0), even for the guest
//!    scope after the lock;
//! 4. a new guest grant after the first vCPU's state was allocated → `ebusy`
//!    (`FPU_GUEST_PERM_LOCKED`: the permissions size every vCPU container; seed 001);
//! 5. a host request whose grown signal frame no longer fits a thread's sigaltstack → `enospc`.
//!
//! Permissions belong to the process, not to a thread: one [`Permissions`] is shared (in an
//! `Arc`) by every [`Engine`](super::Engine) of the process (each host thread's), and its
//! state is atomic, so a grant made on one thread is seen by all (Linux keeps them in the
//! group leader's `fpu`).
//!
//! ```
//! use xstate::cpuid::{CpuidDump, Regs};
//! use xstate::layout::Layout;
//! use xstate::engine::config::Configs;
//! use xstate::strategy::SaveInsn;
//! use xstate::engine::perm::{Grant, Permissions, Scope};
//! use xstate::engine::ErrorKind;
//! let mut d = CpuidDump::new("doc");
//! d.insert(0xd, 0, Regs { eax: 0x60007, ebx: 0, ecx: 0x2b00, edx: 0 });
//! d.insert(0xd, 2, Regs { eax: 256, ebx: 576, ecx: 0, edx: 0 });
//! d.insert(0xd, 17, Regs { eax: 64, ebx: 2752, ecx: 2, edx: 0 });
//! d.insert(0xd, 18, Regs { eax: 8192, ebx: 2816, ecx: 6, edx: 0 });
//! let cfg = Configs::new(&Layout::from_dump(&d), 0x60007, 0, SaveInsn::Xsave).unwrap();
//! let p = Permissions::new(&cfg);
//! assert_eq!(p.get(Scope::Guest), 0x20007);
//! assert_eq!(p.request(Scope::Guest, 18).unwrap(), Grant::Granted);
//! assert_eq!(p.request(Scope::Guest, 18).unwrap(), Grant::AlreadyGranted);
//! assert_eq!(p.sizes(Scope::Guest, &cfg).unwrap().uabi_size, 11008);
//! assert_eq!(p.request(Scope::Host, 20).unwrap_err().kind, ErrorKind::Einval);
//! assert_eq!(p.request(Scope::Host, 19).unwrap_err().kind, ErrorKind::Eopnotsupp);
//! assert_eq!(p.request(Scope::Host, 2).unwrap_err().kind, ErrorKind::Eopnotsupp);
//! p.lock_guest();
//! assert_eq!(p.request(Scope::Host, 18).unwrap(), Grant::Granted); // host is never locked
//! ```

use alloc::format;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::config::Configs;
use super::error::{err, EngineError, ErrorKind};
use crate::components::{mask, mask_names, Component};

/// Whose permission: the process's own threads or the guests it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The process's threads (`ARCH_REQ_XCOMP_PERM`).
    Host,
    /// The process's guests (`ARCH_REQ_XCOMP_GUEST_PERM`).
    Guest,
}

/// The answer to a successful request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Grant {
    /// The permission was granted now.
    Granted,
    /// It was already granted (Linux returns 0 as well).
    AlreadyGranted,
}

/// The buffer sizes a permission set implies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PermSizes {
    /// Features of the largest buffer the permission allows (supervisor features included).
    pub features: u64,
    /// Size of that buffer in the engine's storage form.
    pub size: u32,
    /// Standard-form size of the permitted user features.
    pub user_size: u32,
    /// `KVM_CAP_XSAVE2`: max(4096, `user_size`) — the size of a `KVM_GET_XSAVE2` buffer.
    pub uabi_size: u32,
}

/// `XFEATURE_MAX` of Linux 6.18 (`enum xfeature`: the last feature is XFEATURE_APX = 19): a
/// request for an index at or above it is `EINVAL`.
pub const XFEATURE_MAX: u32 = 20;

/// The lock bit of the guest permissions (Linux's `FPU_GUEST_PERM_LOCKED`).
const GUEST_PERM_LOCKED: u64 = 1 << 63;

/// The permissions of one process, shared by its host threads' engines (atomic state; see
/// the module documentation).
#[derive(Debug)]
pub struct Permissions {
    supported: u64,
    host: AtomicU64,
    guest: AtomicU64,
    /// Smallest sigaltstack of the process's threads; 0 = none installed.
    sigaltstack: AtomicU32,
}

impl Permissions {
    /// The initial permissions: every supported non-dynamic user feature, for both scopes.
    pub fn new(cfg: &Configs) -> Self {
        Permissions {
            supported: cfg.user.max_features,
            host: AtomicU64::new(cfg.user.default_features),
            guest: AtomicU64::new(cfg.user.default_features),
            sigaltstack: AtomicU32::new(0),
        }
    }

    /// `ARCH_GET_XCOMP_SUPP`: the user features the host supports.
    pub fn supported(&self) -> u64 {
        self.supported
    }

    /// `ARCH_GET_XCOMP_PERM` / `ARCH_GET_XCOMP_GUEST_PERM`: the permitted user features.
    pub fn get(&self, scope: Scope) -> u64 {
        match scope {
            Scope::Host => self.host.load(Ordering::Acquire),
            Scope::Guest => self.guest.load(Ordering::Acquire) & !GUEST_PERM_LOCKED,
        }
    }

    /// True once the first vCPU's state was allocated.
    pub fn is_guest_locked(&self) -> bool {
        self.guest.load(Ordering::Acquire) & GUEST_PERM_LOCKED != 0
    }

    /// Locks the guest permissions (done when the first vCPU's container is allocated).
    pub fn lock_guest(&self) {
        self.guest.fetch_or(GUEST_PERM_LOCKED, Ordering::AcqRel);
    }

    /// The smallest sigaltstack of the process's threads, when one is installed: host
    /// requests that would grow the signal frame's XSAVE area beyond it fail with `enospc`.
    pub fn set_sigaltstack_size(&self, size: Option<u32>) {
        self.sigaltstack.store(size.unwrap_or(0), Ordering::Release);
    }

    /// `ARCH_REQ_XCOMP_PERM` / `ARCH_REQ_XCOMP_GUEST_PERM` for component `idx` (rules in the
    /// module documentation).
    pub fn request(&self, scope: Scope, idx: u32) -> Result<Grant, EngineError> {
        let name = |i: u32| Component::name_of(i as u8);
        // Rule 1: EINVAL for an index beyond Linux's xfeatures.
        if idx >= XFEATURE_MAX {
            return err(
                ErrorKind::Einval,
                format!("feature index {idx} is not below XFEATURE_MAX ({XFEATURE_MAX})"),
            );
        }
        let bit = 1u64 << idx;
        // Rule 2: only a supported dynamic user feature can be requested.
        if bit & mask::DYNAMIC == 0 {
            return err(
                ErrorKind::Eopnotsupp,
                format!(
                    "component {idx} ({}) is not a dynamic user feature (only {:#x}, {}, can be requested)",
                    name(idx),
                    mask::DYNAMIC,
                    mask_names(mask::DYNAMIC)
                ),
            );
        }
        if self.supported & bit == 0 {
            return err(
                ErrorKind::Eopnotsupp,
                format!(
                    "component {idx} ({}) is not a user feature this host supports (ARCH_GET_XCOMP_SUPP = {:#x}: {})",
                    name(idx),
                    self.supported,
                    mask_names(self.supported)
                ),
            );
        }
        // Rule 3: already granted answers 0.
        if self.get(scope) & bit != 0 {
            return Ok(Grant::AlreadyGranted);
        }
        match scope {
            Scope::Guest => {
                // Rule 4: the lock bit lives in the same word as the grants (Linux's
                // FPU_GUEST_PERM_LOCKED, bit 63), so checking it and granting is one step.
                let mut cur = self.guest.load(Ordering::Acquire);
                loop {
                    if cur & GUEST_PERM_LOCKED != 0 {
                        let held = cur & !GUEST_PERM_LOCKED;
                        return err(
                            ErrorKind::Ebusy,
                            format!(
                                "guest permissions are locked: a vCPU's state was already allocated with {held:#x} ({}); request component {idx} ({}) before creating the first vCPU",
                                mask_names(held),
                                name(idx)
                            ),
                        );
                    }
                    match self.guest.compare_exchange(
                        cur,
                        cur | bit,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => break,
                        Err(now) => cur = now,
                    }
                }
            }
            Scope::Host => {
                // Rule 5: the grown signal frame must fit every sigaltstack.
                let stack = self.sigaltstack.load(Ordering::Acquire);
                if stack != 0 {
                    let needed = self.frame_bytes(self.get(Scope::Host) | bit);
                    if needed > stack {
                        return err(
                            ErrorKind::Enospc,
                            format!("a thread's sigaltstack ({stack} bytes) is smaller than the XSAVE area of the signal frame once component {idx} ({}) is permitted ({needed} bytes)", name(idx)),
                        );
                    }
                }
                self.host.fetch_or(bit, Ordering::AcqRel);
            }
        }
        Ok(Grant::Granted)
    }

    /// The signal frame's XSAVE area for `features`: the standard form places the highest
    /// component last, and tile data alone is 8 KiB; a conservative bound is the sum of the
    /// catalog sizes plus the legacy area and header.
    fn frame_bytes(&self, features: u64) -> u32 {
        crate::components::bits(features)
            .filter(|&i| i >= 2)
            .map(|i| Component::get(i).map(|c| c.arch_size).unwrap_or(0))
            .sum::<u32>()
            + crate::layout::EXTENDED_START
    }

    /// The buffer sizes the permissions of `scope` imply under `cfg`.
    pub fn sizes(&self, scope: Scope, cfg: &Configs) -> Result<PermSizes, EngineError> {
        let user = self.get(scope) & cfg.user.max_features;
        let features = match scope {
            Scope::Host => cfg.host.default_features | (user & cfg.host.max_features),
            Scope::Guest => cfg.guest.default_features | (user & cfg.guest.max_features),
        };
        let user_size = cfg.user_size_of(user)?;
        Ok(PermSizes {
            features,
            size: cfg.size_of(features)?,
            user_size,
            uabi_size: user_size.max(4096),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::SaveInsn;

    fn cfg() -> Configs {
        Configs::new(
            &crate::engine::config::tests::spr_like(),
            0x602e7,
            0x1800,
            SaveInsn::Xsaves,
        )
        .unwrap()
    }

    #[test]
    fn request_rules_in_order() {
        let c = cfg();
        let p = Permissions::new(&c);
        assert_eq!(p.supported(), 0x602e7);
        assert_eq!(p.get(Scope::Host), 0x202e7);
        for idx in [20, 63, 64, u32::MAX] {
            assert_eq!(
                p.request(Scope::Host, idx).unwrap_err().kind,
                ErrorKind::Einval
            );
        }
        // Not dynamic: EOPNOTSUPP even when the feature is permitted from the start.
        for idx in [0, 2, 17, 19] {
            assert_eq!(
                p.request(Scope::Guest, idx).unwrap_err().kind,
                ErrorKind::Eopnotsupp,
                "{idx}"
            );
        }
        // CET_S is supervisor: never an arch_prctl feature.
        assert_eq!(
            p.request(Scope::Guest, 12).unwrap_err().kind,
            ErrorKind::Eopnotsupp
        );
        let before = p.sizes(Scope::Guest, &c).unwrap();
        assert_eq!(before.size, 2560);
        assert_eq!(before.uabi_size, 4096);
        assert_eq!(p.request(Scope::Guest, 18).unwrap(), Grant::Granted);
        let after = p.sizes(Scope::Guest, &c).unwrap();
        assert_eq!(after.features, 0x61ae7);
        assert_eq!(after.size, 10752);
        assert_eq!(after.user_size, 0x2b00);
        assert_eq!(after.uabi_size, 0x2b00);
        // Host permission is separate.
        assert_eq!(p.get(Scope::Host) & mask::XTILEDATA, 0);
        p.lock_guest();
        assert_eq!(p.request(Scope::Guest, 18).unwrap(), Grant::AlreadyGranted);
        let q = Permissions::new(&c);
        q.lock_guest();
        let e = q.request(Scope::Guest, 18).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Ebusy);
        assert!(e.message.contains("xtiledata"), "{e}");
    }

    #[test]
    fn sigaltstack_too_small_is_enospc() {
        let c = cfg();
        let p = Permissions::new(&c);
        p.set_sigaltstack_size(Some(8192));
        let e = p.request(Scope::Host, 18).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Enospc);
        assert_eq!(p.get(Scope::Host) & mask::XTILEDATA, 0);
        p.set_sigaltstack_size(Some(16384));
        assert_eq!(p.request(Scope::Host, 18).unwrap(), Grant::Granted);
    }
}
