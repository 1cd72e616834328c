//! Linux/KVM glue for `xstate` (placeholder: implemented in the KVM change).
#![deny(missing_docs)]
