//! # xstate
//!
//! x86 extended processor state (the XSAVE feature set: x87, SSE, AVX, AVX-512, PKRU, CET, AMX,
//! APX …) as values a hypervisor can reason about: CPUID leaf 0xD, exact layouts in the
//! standard and compacted forms, typed images, validation, conversion, an executable model of
//! the XSAVE instructions and the guest FPU engine.
//!
//! The crate is `no_std` + `alloc`. The `std` feature (default) adds what needs an operating
//! system: the fork-based sandbox of [`hw`] and the CBOR codec of [`snapshot`]. The hardware
//! wrappers ([`hw`]) need x86-64 but no OS; the `ring0` feature adds the CPL-0 backend.
//!
//! Module map (one concept each):
//! - [`components`]: the catalog of state components and their roles;
//! - [`cpuid`]: raw CPUID tables, dump parsers, the typed leaf 0xD view;
//! - [`layout`]: standard and compacted layouts, XCR0 rules, consistency of CPUID data (the one
//!   place that decides whether CPUID data can be trusted: `Layout::trusted`);
//! - [`filekind`]: what an input file is (snapshot, damaged snapshot, XSAVE image, FXSAVE area,
//!   CPUID dump, text), told by its content;
//! - [`hw`]: safe wrappers of CPUID, XGETBV and the XSAVE family on the real CPU, and a
//!   fork-based sandbox for restores that may fault;
//! - [`model`]: the executable model of the XSAVE instructions and the backend trait;
//! - [`image`]: XSAVE images as values (owned aligned buffer, views, typed registers);
//! - [`validate`]: the XRSTOR, XRSTORS and KVM_SET_XSAVE acceptance rules, every violation,
//!   and how many bytes each restore reads (the size rule);
//! - [`convert`]: lossless conversion between forms, layouts and FXSAVE;
//! - [`diff`]: register-by-register comparison by meaning;
//! - [`snapshot`]: portable `.xsnap` snapshots of a vCPU's extended state;
//! - [`compat`]: can a snapshot be restored on a destination (every reason it cannot);
//! - [`guest_cpuid`]: a guest's CPUID leaf 0xD for a chosen set of components;
//! - [`engine`]: the guest FPU engine — host/user/guest configurations, permissions, per-vCPU
//!   state containers swapped on entry and exit, lazy reallocation, policy resizing, UABI.
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

extern crate alloc;

pub mod compat;
pub mod components;
pub mod convert;
pub mod cpuid;
pub mod diff;
pub mod engine;
pub mod filekind;
pub mod guest_cpuid;
#[cfg(target_arch = "x86_64")]
pub mod hw;
pub mod image;
pub mod layout;
pub mod model;
pub mod snapshot;
pub mod strategy;
#[cfg(test)]
mod testutil;
pub mod validate;
